//===- CpuTarget.h - native code for the CPU kernels ------------*- C++ -*-===//
//
// Turns the kernels of a plan (lowered to the LLVM dialect by
// moe-cpu-codegen) into an x86-64 ELF shared object: translation to LLVM IR,
// the `void kernel(void **args, int64_t begin, int64_t end)` entry wrappers
// the runtime calls, LLVM's -O3 pipeline for the host CPU, object emission
// through LLVM's TargetMachine and an in-process lld link. No external tool
// runs.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_CPUTARGET_H
#define MOEC_PASSES_CPUTARGET_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LLVM.h"

#include <string>
#include <vector>

namespace moec {

struct CpuTargetOptions {
  /// LLVM CPU name; "native" means the machine moec runs on.
  std::string cpu = "native";
  /// If set, the optimized LLVM IR is written here (debugging; the kernels
  /// are then compiled as one module on one thread).
  std::string dumpLLVMIRPath;
  /// If set, the kernels' assembly for `cpu` is written here (what the
  /// hot loops became: their FMAs, shuffles and spills; one module on one
  /// thread, as for the IR).
  std::string dumpAsmPath;
  /// Threads for LLVM's optimization and code generation (the kernels are
  /// split into that many modules); 0: one per core, at most 8.
  unsigned threads = 0;
};

struct CpuKernelLibrary {
  /// The ELF shared object.
  std::string sharedObject;
  /// The CPU the code was generated for and the ISA extensions it may use
  /// (LLVM names such as "avx512f"); the manifest records them so the
  /// runtime can refuse a CPU that lacks one instead of faulting.
  std::string cpu;
  std::vector<std::string> features;
};

/// The vector register file of the target CPU, for register tiling.
struct CpuRegisterFile {
  int64_t registerBits = 128;
  int64_t registers = 16;
  /// AVX512-BF16 (vdpbf16ps: dot products of bf16 pairs into f32).
  bool bf16Dot = false;
};

/// Succeeds if LLVM knows `cpu` ("native" or an x86-64 CPU or level name);
/// otherwise fails with a message in `error`.
mlir::LogicalResult checkCpuName(llvm::StringRef cpu, std::string &error);

/// The register file of `options.cpu` (with the host's features for
/// "native"): AVX-512 512 bits x 32, AVX/AVX2 256 x 16, else SSE 128 x 16.
/// Fails with a message in `error` when LLVM has no target for this machine.
mlir::FailureOr<CpuRegisterFile>
getCpuRegisterFile(const CpuTargetOptions &options, std::string &error);

/// Builds the kernel library, or fails after emitting a diagnostic on
/// `module`.
mlir::FailureOr<CpuKernelLibrary>
buildCpuKernelLibrary(mlir::ModuleOp module, const CpuTargetOptions &options);

} // namespace moec

#endif // MOEC_PASSES_CPUTARGET_H
