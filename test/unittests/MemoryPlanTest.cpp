//===- MemoryPlanTest.cpp - arena offset assignment ----------------------===//
//
// Property tests of moec::assignArenaOffsets (moe-plan-memory's planner) on
// random lifetimes: buffers alive at the same step never share a byte, every
// offset is aligned, and the peak lies between the largest live set and the
// sum of all buffers.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/MemoryPlan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

using moec::alignBytes;
using moec::ArenaBuffer;
using moec::assignArenaOffsets;
using moec::kBufferAlignment;

namespace {
void checkPlan(std::vector<ArenaBuffer> buffers) {
  int64_t peak = assignArenaOffsets(buffers);
  int64_t lastStep = 0, total = 0, end = 0;
  for (const ArenaBuffer &b : buffers) {
    EXPECT_EQ(b.offset % kBufferAlignment, 0);
    EXPECT_GE(b.offset, 0);
    lastStep = std::max(lastStep, b.lastUse);
    total += alignBytes(b.bytes);
    end = std::max(end, b.offset + alignBytes(b.bytes));
  }
  EXPECT_EQ(peak, end);
  EXPECT_LE(peak, total);
  for (size_t i = 0; i < buffers.size(); ++i)
    for (size_t j = i + 1; j < buffers.size(); ++j) {
      const ArenaBuffer &a = buffers[i], &b = buffers[j];
      bool alive = a.firstUse <= b.lastUse && b.firstUse <= a.lastUse;
      bool overlap = a.offset < b.offset + alignBytes(b.bytes) &&
                     b.offset < a.offset + alignBytes(a.bytes);
      EXPECT_FALSE(alive && overlap)
          << "buffers " << i << " and " << j << " are alive together and "
          << "share bytes";
    }
  for (int64_t step = 0; step <= lastStep; ++step) {
    int64_t live = 0;
    for (const ArenaBuffer &b : buffers)
      if (b.firstUse <= step && step <= b.lastUse)
        live += alignBytes(b.bytes);
    EXPECT_GE(peak, live) << "at step " << step;
  }
}
} // namespace

TEST(MemoryPlan, Chain) {
  // x -> a -> b -> c: b reuses x's bytes, c reuses a's.
  std::vector<ArenaBuffer> buffers = {
      {256, 0, 0, 0}, {256, 0, 1, 0}, {256, 1, 2, 0}, {256, 2, 3, 0}};
  EXPECT_EQ(assignArenaOffsets(buffers), 512);
  EXPECT_EQ(buffers[0].offset, 0);
  EXPECT_EQ(buffers[1].offset, 256);
  EXPECT_EQ(buffers[2].offset, 0);
  EXPECT_EQ(buffers[3].offset, 256);
}

TEST(MemoryPlan, OddSizesAreAligned) {
  std::vector<ArenaBuffer> buffers = {{1, 0, 1, 0}, {100, 0, 1, 0}, {65, 1, 2, 0}};
  checkPlan(buffers);
}

TEST(MemoryPlan, RandomLifetimes) {
  std::mt19937_64 rng(20261123);
  for (int trial = 0; trial < 300; ++trial) {
    int n = 1 + static_cast<int>(rng() % 40);
    int steps = 1 + static_cast<int>(rng() % 30);
    std::vector<ArenaBuffer> buffers;
    for (int i = 0; i < n; ++i) {
      int64_t first = static_cast<int64_t>(rng() % steps);
      int64_t last = first + static_cast<int64_t>(rng() % (steps - first));
      int64_t bytes = 1 + static_cast<int64_t>(rng() % 5000);
      buffers.push_back({bytes, first, last, 0});
    }
    checkPlan(buffers);
    if (HasFailure())
      return;
  }
}
