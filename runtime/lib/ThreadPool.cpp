//===- ThreadPool.cpp - a persistent pool with static splitting -----------===//

#include "moec/Runtime/ThreadPool.h"

namespace moec::rt {

namespace {
/// About 20-100 microseconds of polling before a thread blocks.
constexpr int kSpinIterations = 20000;

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}
} // namespace

ThreadPool::ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
  workers_.reserve(threads_ - 1);
  try {
    for (int i = 1; i < threads_; ++i)
      workers_.emplace_back([this, i] { workerLoop(i); });
  } catch (...) {
    // Join the workers that did start before reporting the failure.
    stop();
    throw;
  }
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread &t : workers_)
    t.join();
  workers_.clear();
}

void ThreadPool::chunk(int64_t begin, int64_t end, int chunks, int index,
                       int64_t &chunkBegin, int64_t &chunkEnd) {
  int64_t length = end > begin ? end - begin : 0;
  // length * index stays far from overflow: ranges are image or tile counts.
  chunkBegin = begin + length * index / chunks;
  chunkEnd = begin + length * (index + 1) / chunks;
}

void ThreadPool::parallelFor(int64_t begin, int64_t end, ChunkFn fn,
                             void *context) {
  if (end <= begin)
    return;
  if (threads_ == 1) {
    fn(context, begin, end);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = fn;
    context_ = context;
    begin_ = begin;
    end_ = end;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  int64_t b, e;
  chunk(begin, end, threads_, 0, b, e);
  if (b < e)
    fn(context, b, e);
  for (int i = 0; i < kSpinIterations; ++i) {
    if (pending_.load(std::memory_order_acquire) == 0)
      return;
    cpuRelax();
  }
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [this] {
    return pending_.load(std::memory_order_acquire) == 0;
  });
}

void ThreadPool::workerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    ChunkFn fn;
    void *context;
    int64_t begin, end;
    // Poll for the next job first; sleep only if none comes soon.
    bool polled = false;
    for (int i = 0; i < kSpinIterations; ++i) {
      if (generation_.load(std::memory_order_acquire) != seen) {
        polled = true;
        break;
      }
      cpuRelax();
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!polled)
        wake_.wait(lock, [&] {
          return stopping_ ||
                 generation_.load(std::memory_order_acquire) != seen;
        });
      if (stopping_)
        return;
      seen = generation_.load(std::memory_order_relaxed);
      fn = fn_;
      context = context_;
      begin = begin_;
      end = end_;
    }
    int64_t b, e;
    chunk(begin, end, threads_, index, b, e);
    if (b < e)
      fn(context, b, e);
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      // Take the lock so the caller cannot miss the notification between
      // testing its predicate and blocking.
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

} // namespace moec::rt
