//===- MemoryPlan.h - arena offset assignment -------------------*- C++ -*-===//
//
// The offset assignment behind moe-plan-memory, usable on its own (unit
// tests, other planners): buffers with lifetimes [firstUse, lastUse] (plan
// steps, inclusive) get offsets such that buffers alive at the same step
// never overlap.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_MEMORYPLAN_H
#define MOEC_PASSES_MEMORYPLAN_H

#include "mlir/Support/LLVM.h"
#include "llvm/ADT/ArrayRef.h"

#include <cstdint>

namespace moec {

/// Every buffer starts at a multiple of this many bytes.
inline constexpr int64_t kBufferAlignment = 64;

struct ArenaBuffer {
  int64_t bytes;
  int64_t firstUse;
  int64_t lastUse;
  /// Output of assignArenaOffsets.
  int64_t offset;
};

int64_t alignBytes(int64_t bytes);

/// Greedy best-fit: largest buffers first, each at the lowest aligned offset
/// that overlaps no already placed buffer alive at the same time. Returns
/// the peak (arena size in bytes).
int64_t assignArenaOffsets(mlir::MutableArrayRef<ArenaBuffer> buffers);

} // namespace moec

#endif // MOEC_PASSES_MEMORYPLAN_H
