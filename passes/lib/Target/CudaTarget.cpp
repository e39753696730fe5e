//===- CudaTarget.cpp - gpu.module -> PTX for the cuda target -------------===//

#include "moec/Passes/CudaTarget.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/GpuTiling.h"

#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/GPU/GPUToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/NVVM/NVVMToLLVMIRTranslation.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/raw_ostream.h"

#include <optional>

using namespace mlir;

void moec::registerCudaTranslations(DialectRegistry &registry) {
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  registerGPUDialectTranslation(registry);
  registerNVVMDialectTranslation(registry);
}

namespace {
constexpr const char *kLibdevice = "nvvm/libdevice/libdevice.10.bc";

/// The CUDA toolkit whose libdevice (the GPU's math functions: expf, erff,
/// rsqrtf, ...) the kernels link: $CUDA_HOME, $CUDA_PATH, $CUDA_ROOT or
/// /usr/local/cuda, the first that has it.
std::optional<std::string> findCudaToolkit(std::string &tried) {
  SmallVector<std::string> candidates;
  for (const char *var : {"CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"})
    if (std::optional<std::string> value = llvm::sys::Process::GetEnv(var))
      if (!value->empty())
        candidates.push_back(*value);
  candidates.push_back("/usr/local/cuda");
  for (const std::string &root : candidates) {
    SmallString<256> path(root);
    llvm::sys::path::append(path, kLibdevice);
    if (llvm::sys::fs::exists(path))
      return root;
    if (!tried.empty())
      tried += ", ";
    tried += path.str().str();
  }
  return std::nullopt;
}
} // namespace

FailureOr<moec::CudaKernels> moec::buildCudaKernels(ModuleOp kernels,
                                                    StringRef dumpPtxPath) {
  CudaKernels result;
  std::string tried;
  std::optional<std::string> toolkit = findCudaToolkit(tried);
  if (!toolkit)
    return kernels.emitError("cuda target: cannot find CUDA's libdevice (")
           << tried
           << "); install the CUDA toolkit or set CUDA_HOME to it";
  auto scratch = moe::MoEDialect::KernelScratchAttrHelper(kernels.getContext())
                     .getAttr(kernels);
  if (scratch)
    for (NamedAttribute entry : scratch)
      result.scratchBytes[entry.getName().str()] =
          cast<IntegerAttr>(entry.getValue()).getInt();

  PassManager pm(kernels.getContext());
  GpuModuleToBinaryPassOptions binary;
  binary.compilationTarget = "isa";
  binary.toolkitPath = *toolkit;
  pm.addPass(createGpuModuleToBinaryPass(binary));
  if (failed(pm.run(kernels)))
    return failure();
  auto module = kernels.lookupSymbol<gpu::BinaryOp>(kCudaKernelModule);
  if (!module || module.getObjects().size() != 1)
    return kernels.emitError("cuda target: expected one gpu.binary @")
           << kCudaKernelModule << " with one object";
  auto object = cast<gpu::ObjectAttr>(module.getObjects()[0]);
  if (object.getFormat() != gpu::CompilationTarget::Assembly)
    return kernels.emitError("cuda target: the kernels are not PTX");
  result.ptx = object.getObject().str();
  // Every function the kernels call must be in the module: an unresolved
  // one would only fail when the driver loads the PTX.
  StringRef ptx(result.ptx);
  if (size_t at = ptx.find(".extern .func"); at != StringRef::npos)
    return kernels.emitError("cuda target: the PTX calls a function it does "
                             "not define: ")
           << ptx.substr(at, ptx.find('\n', at) - at);
  if (!dumpPtxPath.empty()) {
    std::error_code ec;
    llvm::raw_fd_ostream os(dumpPtxPath, ec, llvm::sys::fs::OF_Text);
    if (ec)
      return kernels.emitError("cannot write '")
             << dumpPtxPath << "': " << ec.message();
    os << result.ptx;
  }
  return result;
}
