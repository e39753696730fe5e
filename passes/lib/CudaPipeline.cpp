//===- CudaPipeline.cpp - the CUDA target's codegen pipeline --------------===//
//
// moe-cuda-codegen: the kernels of a plan (the same plan the CPU target
// compiles) -> bufferized -> moe-gpu-tile -> moe-gpu-map-kernels -> the
// NVVM dialect with an #nvvm.target, ready for gpu-module-to-binary.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/GPU/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

bool moec::isSupportedGpuArch(llvm::StringRef arch) {
  return arch == "sm_80" || arch == "sm_90a";
}

void moec::buildCudaCodegenPipeline(OpPassManager &pm,
                                    const CudaPipelineOptions &options) {
  pm.addPass(createDropPlanPass());
  auto perKernel = [&pm](std::unique_ptr<Pass> pass) {
    pm.addNestedPass<func::FuncOp>(std::move(pass));
  };
  perKernel(createCanonicalizerPass());
  perKernel(createCSEPass());
  addKernelBufferization(pm);
  perKernel(createExpandCopiesPass());
  perKernel(createGpuTilePass());
  perKernel(createCanonicalizerPass());
  perKernel(createCSEPass());
  GpuMapKernelsPassOptions map;
  map.blockThreads = options.blockThreads;
  pm.addPass(createGpuMapKernelsPass(map));

  OpPassManager &device = pm.nest<gpu::GPUModuleOp>();
  device.addPass(createLowerAffinePass());
  device.addPass(createSCFToControlFlowPass());
  device.addPass(memref::createExpandStridedMetadataPass());
  device.addPass(createLowerAffinePass());
  ConvertGpuOpsToNVVMOpsOptions nvvm;
  nvvm.useBarePtrCallConv = true;
  nvvm.indexBitwidth = 64;
  device.addPass(createConvertGpuOpsToNVVMOps(nvvm));
  device.addPass(createCanonicalizerPass());
  device.addPass(createCSEPass());
  device.addPass(createReconcileUnrealizedCastsPass());

  GpuNVVMAttachTargetOptions target;
  target.chip = options.gpuArch;
  // sm_90a needs PTX 8.0; CUDA 13's ptxas and driver take it for sm_80 too.
  target.features = "+ptx80";
  target.optLevel = 3;
  pm.addPass(createGpuNVVMAttachTarget(target));
}
