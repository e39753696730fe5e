//===- Passes.h - moec passes -----------------------------------*- C++ -*-===//

#ifndef MOEC_PASSES_PASSES_H
#define MOEC_PASSES_PASSES_H

#include "mlir/Pass/Pass.h"

#include <cstdint>

namespace moec {

/// Whole-batch kernels split into at most this many tiles
/// (moe-lower-to-kernels), and sums over the batch into as many partials
/// (moe-split-batch-reductions).
inline constexpr int64_t kMaxBatchTiles = 16;

/// The smallest divisor of `extent` that splits it into at most
/// kMaxBatchTiles tiles.
inline int64_t batchTileSize(int64_t extent) {
  for (int64_t t = 1; t < extent; ++t)
    if (extent % t == 0 && extent / t <= kMaxBatchTiles)
      return t;
  return extent;
}

#define GEN_PASS_DECL
#include "moec/Passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moec/Passes/Passes.h.inc"

} // namespace moec

#endif // MOEC_PASSES_PASSES_H
