//===- ThreadPoolTest.cpp - fixed chunks claimed by the pool's threads ----===//

#include "moec/Runtime/ThreadPool.h"
#include "moec/Runtime/Device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

using namespace moec::rt;

namespace {

TEST(ThreadPool, ChunksAreContiguousAndCoverTheRange) {
  for (int threads : {1, 2, 3, 7})
    for (int64_t n : {0, 1, 2, 5, 128, 1001}) {
      int64_t next = 0;
      for (int i = 0; i < threads; ++i) {
        int64_t b, e;
        ThreadPool::chunk(0, n, threads, i, b, e);
        EXPECT_EQ(b, next);
        EXPECT_LE(b, e);
        EXPECT_LE(e - b, n / threads + 1);
        next = e;
      }
      EXPECT_EQ(next, n);
    }
}

struct Record {
  std::mutex mutex;
  std::set<std::pair<int64_t, int64_t>> chunks;
  std::set<std::thread::id> threads;
  std::atomic<int64_t> covered{0};
};

TEST(ThreadPool, RunsEveryChunkOnce) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {1, 3, 97}) {
      // Calls this short stay out of the pool-wide windows.
      ASSERT_FALSE(pool.contended());
      int chunks = threads == 1 ? 1 : pool.chunksFor(n);
      EXPECT_EQ(chunks, threads == 1 ? 1
                                     : std::min<int64_t>(
                                           n, threads *
                                                  ThreadPool::kChunksPerThread));
      for (int round = 0; round < 50; ++round) {
        Record record;
        // A fresh call site: calls this short can be slower on two
        // threads than on one, and a site that saw that runs inline.
        ThreadPool::CallSite site;
        pool.parallelFor(
            10, 10 + n,
            [](void *context, int64_t begin, int64_t end) {
              auto *r = static_cast<Record *>(context);
              std::lock_guard<std::mutex> lock(r->mutex);
              EXPECT_TRUE(r->chunks.insert({begin, end}).second);
              r->threads.insert(std::this_thread::get_id());
              r->covered += end - begin;
            },
            &record, &site);
        EXPECT_EQ(record.covered, n);
        std::set<std::pair<int64_t, int64_t>> expected;
        for (int i = 0; i < chunks; ++i) {
          int64_t b, e;
          ThreadPool::chunk(10, 10 + n, chunks, i, b, e);
          expected.insert({b, e});
        }
        EXPECT_EQ(record.chunks, expected);
      }
    }
  }
}

// A thread that cannot run (here: one stuck in its first chunk, as a worker
// on a core taken by another process would be) holds up only its own
// chunk: the others claim the rest of the range.
TEST(ThreadPool, AStalledThreadHoldsOnlyItsChunk) {
  ThreadPool pool(2);
  struct State {
    std::atomic<bool> release{false};
    std::atomic<int> stalledChunks{0}, otherChunks{0};
    std::thread::id stalled;
    std::mutex mutex;
  } state;
  std::thread releaser([&] {
    // Let go of the stalled chunk once the other thread ran all the rest.
    while (state.otherChunks.load() < pool.chunksFor(64) - 1)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    state.release = true;
  });
  pool.parallelFor(
      0, 64,
      [](void *context, int64_t, int64_t) {
        auto *st = static_cast<State *>(context);
        bool stall;
        {
          std::lock_guard<std::mutex> lock(st->mutex);
          if (st->stalled == std::thread::id())
            st->stalled = std::this_thread::get_id();
          stall = st->stalled == std::this_thread::get_id();
        }
        if (!stall) {
          ++st->otherChunks;
          return;
        }
        ++st->stalledChunks;
        while (!st->release.load())
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
      },
      &state);
  releaser.join();
  EXPECT_EQ(state.stalledChunks.load(), 1);
  EXPECT_EQ(state.otherChunks.load(), pool.chunksFor(64) - 1);
}

// Calls that a stalled worker makes slower than the caller alone would be
// send their call site inline after 4 of them: the next calls run whole on
// the caller; another site is not affected.
TEST(ThreadPool, ASiteSlowerOnTheThreadsRunsInline) {
  ThreadPool pool(2);
  ThreadPool::CallSite slow, other;
  std::thread::id caller = std::this_thread::get_id();
  struct Context {
    std::thread::id caller;
    std::atomic<int> calls{0};
  } context;
  context.caller = caller;
  auto stallOffCaller = [](void *c, int64_t, int64_t) {
    auto *ctx = static_cast<Context *>(c);
    ++ctx->calls;
    if (std::this_thread::get_id() != ctx->caller)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  };
  for (int i = 0; i < 16 && !slow.runningInline(); ++i)
    pool.parallelFor(0, 64, stallOffCaller, &context, &slow);
  EXPECT_TRUE(slow.runningInline());
  EXPECT_FALSE(other.runningInline());
  struct Seen {
    std::thread::id caller;
    bool elsewhere = false;
    std::vector<std::pair<int64_t, int64_t>> ranges;
  } seen;
  seen.caller = caller;
  pool.parallelFor(
      0, 64,
      [](void *c, int64_t b, int64_t e) {
        auto *s = static_cast<Seen *>(c);
        if (std::this_thread::get_id() != s->caller)
          s->elsewhere = true;
        s->ranges.push_back({b, e});
      },
      &seen, &slow);
  EXPECT_FALSE(seen.elsewhere);
  ASSERT_EQ(seen.ranges.size(), 1u);
  EXPECT_EQ(seen.ranges[0], std::make_pair(int64_t{0}, int64_t{64}));
}

TEST(ThreadPool, OneThreadRunsInline) {
  ThreadPool pool(1);
  std::thread::id caller = std::this_thread::get_id(), ran;
  pool.parallelFor(
      0, 5,
      [](void *context, int64_t, int64_t) {
        *static_cast<std::thread::id *>(context) = std::this_thread::get_id();
      },
      &ran);
  EXPECT_EQ(ran, caller);
}

TEST(ThreadPool, ThreadCounts) {
  EXPECT_EQ(resolveThreads(3), 3);
  EXPECT_GE(resolveThreads(0), 1);
  Expected<std::unique_ptr<Device>> device = createDevice("cpu", 2);
  ASSERT_TRUE(device);
  EXPECT_EQ((*device)->threads(), 2);
  EXPECT_EQ((*device)->name(), "cpu");
  void *p = (*device)->allocate(100);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  EXPECT_EQ(static_cast<unsigned char *>(p)[99], 0);
  (*device)->free(p);

  Expected<std::unique_ptr<Device>> bad = createDevice("tpu", 1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::Argument);
  EXPECT_EQ(bad.error().message(),
            "unknown device 'tpu' (this runtime has: cpu, cuda)");
  bad = createDevice("cpu", -1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(),
            "threads must be >= 0 (0 = every core), got -1");
}

} // namespace
