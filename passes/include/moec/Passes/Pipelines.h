//===- Pipelines.h - moec's named pass pipelines ----------------*- C++ -*-===//

#ifndef MOEC_PASSES_PIPELINES_H
#define MOEC_PASSES_PIPELINES_H

#include "mlir/Pass/PassOptions.h"
#include "llvm/ADT/StringRef.h"

namespace mlir {
class OpPassManager;
} // namespace mlir

namespace moec {

struct CpuPipelineOptions : public mlir::PassPipelineOptions<CpuPipelineOptions> {
  Option<std::string> entry{*this, "entry",
                            llvm::cl::desc("The entry function to compile"),
                            llvm::cl::init("infer")};
  Option<std::string> kernelPrefix{
      *this, "kernel-prefix",
      llvm::cl::desc("Kernel names are this prefix plus a number"),
      llvm::cl::init("moec_k")};
  Option<int64_t> maxStackBufferBytes{
      *this, "max-stack-buffer-bytes",
      llvm::cl::desc("Kernel temporaries up to this size live on the stack"),
      llvm::cl::init(256 * 1024)};
  Option<bool> vectorize{
      *this, "vectorize",
      llvm::cl::desc("Tile and vectorize the kernels' linalg ops"),
      llvm::cl::init(true)};
  Option<int64_t> registerBits{
      *this, "register-bits",
      llvm::cl::desc("Vector register width of the target CPU in bits "
                     "(512: AVX-512, 256: AVX2)"),
      llvm::cl::init(512)};
  Option<int64_t> vectorRegisters{
      *this, "vector-registers",
      llvm::cl::desc("Vector registers of the target CPU"),
      llvm::cl::init(32)};
  Option<bool> bf16{
      *this, "bf16",
      llvm::cl::desc("Matmul-like contractions on bf16 pairs accumulated in "
                     "f32 (moe-bf16-contractions); everything else f32"),
      llvm::cl::init(false)};
  Option<bool> bf16Dot{
      *this, "bf16-dot",
      llvm::cl::desc("With bf16: the target has AVX512-BF16 (vdpbf16ps); "
                     "otherwise the bf16 values are multiplied in f32"),
      llvm::cl::init(false)};
  Option<bool> fuseRouting{
      *this, "fuse-routing",
      llvm::cl::desc("Fuse every MoE layer's routing with its grouped expert "
                     "GEMMs first (moe-fuse-routing)"),
      llvm::cl::init(true)};
  Option<bool> gpuTiling{
      *this, "gpu-tiling",
      llvm::cl::desc("Tile the kernels as the CUDA target does (moe-gpu-tile: "
                     "warp tiles with bf16 tensor-core numerics, parallel "
                     "loops) instead of vectorizing them: the GPU tiling, "
                     "run on the CPU"),
      llvm::cl::init(false)};
};

/// The CUDA target's code generation (moe-cuda-codegen).
struct CudaPipelineOptions
    : public mlir::PassPipelineOptions<CudaPipelineOptions> {
  Option<std::string> gpuArch{
      *this, "gpu-arch",
      llvm::cl::desc("The GPU the kernels are compiled for: sm_80 (A100) or "
                     "sm_90a (H100, H200)"),
      llvm::cl::init("sm_80")};
  Option<int64_t> blockThreads{
      *this, "block-threads",
      llvm::cl::desc("Threads per block of every kernel"),
      llvm::cl::init(256)};
};

/// The GPU architectures moe-cuda-codegen accepts.
bool isSupportedGpuArch(llvm::StringRef arch);

/// moe -> per-image kernels + a plan function with arena offsets.
void buildCpuPlanPipeline(mlir::OpPassManager &pm,
                          const CpuPipelineOptions &options);
/// Kernels -> LLVM dialect: bufferization, loops, LLVM conversion. Kernels
/// take their buffers as bare pointers.
void buildCpuCodegenPipeline(mlir::OpPassManager &pm,
                             const CpuPipelineOptions &options);
/// The kernels of a plan -> gpu.module @moec_kernels in the NVVM dialect
/// with an #nvvm.target for options.gpuArch (gpu-module-to-binary turns it
/// into PTX).
void buildCudaCodegenPipeline(mlir::OpPassManager &pm,
                              const CudaPipelineOptions &options);
/// The kernels bufferized with their results written in place and their
/// temporaries hoisted out of loops (both codegen pipelines).
void addKernelBufferization(mlir::OpPassManager &pm);

/// Registers moe-cpu-plan, moe-cpu-codegen and moe-cuda-codegen.
void registerMoEPipelines();

} // namespace moec

#endif // MOEC_PASSES_PIPELINES_H
