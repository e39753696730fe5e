//===- CudaTarget.h - PTX for the cuda target -------------------*- C++ -*-===//
//
// The last step of `moec compile --target=cuda`: moe-cuda-codegen's
// gpu.module (NVVM dialect, #nvvm.target attached) -> PTX through
// gpu-module-to-binary, with each kernel's scratch size.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_CUDATARGET_H
#define MOEC_PASSES_CUDATARGET_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LLVM.h"

#include <cstdint>
#include <map>
#include <string>

namespace mlir {
class DialectRegistry;
} // namespace mlir

namespace moec {

struct CudaKernels {
  /// One PTX module with every kernel as an .entry.
  std::string ptx;
  /// Scratch bytes per unit of each kernel's range (moe.kernel_scratch).
  std::map<std::string, int64_t> scratchBytes;
};

/// Serializes `kernels` (moe-cuda-codegen's output; consumed) to PTX.
/// `dumpPtxPath`, if not empty, also gets the PTX.
mlir::FailureOr<CudaKernels> buildCudaKernels(mlir::ModuleOp kernels,
                                              llvm::StringRef dumpPtxPath);

/// The LLVM IR translations gpu-module-to-binary needs for a gpu.module of
/// the NVVM dialect.
void registerCudaTranslations(mlir::DialectRegistry &registry);

} // namespace moec

#endif // MOEC_PASSES_CUDATARGET_H
