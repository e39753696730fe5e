//===- GpuTiling.h - the CUDA target's tiling contract ----------*- C++ -*-===//
//
// The values of the attributes moe-gpu-tile leaves for moe-gpu-map-kernels
// (moe.gpu_map, moe.gpu_mma), and the shapes of the tensor-core tiles.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_GPUTILING_H
#define MOEC_PASSES_GPUTILING_H

#include <cstdint>

namespace moec {

/// One mma.sync.m16n8k16: a warp's 16 x 8 tile of C, 16 steps of K.
inline constexpr int64_t kMmaTileM = 16;
inline constexpr int64_t kMmaTileN = 8;
inline constexpr int64_t kMmaTileK = 16;

/// moe.gpu_map on an scf.parallel: one warp per iteration (absent: one
/// thread per iteration).
inline constexpr const char *kGpuMapWarps = "warps";
/// moe.gpu_mma on a tile matmul: the tensor-core instruction it stands for.
inline constexpr const char *kGpuMmaM16N8K16Bf16 = "m16n8k16.bf16";
/// The gpu.module moe-gpu-map-kernels builds.
inline constexpr const char *kCudaKernelModule = "moec_kernels";

} // namespace moec

#endif // MOEC_PASSES_GPUTILING_H
