//===- ThreadPoolTest.cpp - static splitting on the thread pool -----------===//

#include "moec/Runtime/ThreadPool.h"
#include "moec/Runtime/Device.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

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
    for (int round = 0; round < 50; ++round) {
      Record record;
      pool.parallelFor(
          10, 10 + 97,
          [](void *context, int64_t begin, int64_t end) {
            auto *r = static_cast<Record *>(context);
            std::lock_guard<std::mutex> lock(r->mutex);
            r->chunks.insert({begin, end});
            r->threads.insert(std::this_thread::get_id());
            r->covered += end - begin;
          },
          &record);
      EXPECT_EQ(record.covered, 97);
      EXPECT_EQ(record.chunks.size(), size_t(threads));
      std::set<std::pair<int64_t, int64_t>> expected;
      for (int i = 0; i < threads; ++i) {
        int64_t b, e;
        ThreadPool::chunk(10, 107, threads, i, b, e);
        expected.insert({b, e});
      }
      EXPECT_EQ(record.chunks, expected);
    }
  }
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

  Expected<std::unique_ptr<Device>> bad = createDevice("cuda", 1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), ErrorCode::Argument);
  EXPECT_EQ(bad.error().message(),
            "unknown device 'cuda' (this runtime has: cpu)");
  bad = createDevice("cpu", -1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(),
            "threads must be >= 0 (0 = every core), got -1");
}

} // namespace
