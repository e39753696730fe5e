//===- ThreadPool.cpp - a persistent pool handing out fixed chunks --------===//

#include "moec/Runtime/ThreadPool.h"

#include <algorithm>
#include <chrono>

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
      workers_.emplace_back([this] { workerLoop(); });
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

int ThreadPool::chunksFor(int64_t length) const {
  int64_t wanted = static_cast<int64_t>(threads_) * kChunksPerThread;
  return static_cast<int>(length < wanted ? length : wanted);
}

int ThreadPool::runChunks(uint32_t job, ChunkFn fn, void *context,
                          int64_t begin, int64_t end, int chunks) {
  uint64_t tag = static_cast<uint64_t>(job) << 32;
  for (int ran = 0;; ++ran) {
    uint64_t current = next_.load(std::memory_order_acquire);
    uint32_t index;
    do {
      if ((current & ~uint64_t{0xffffffff}) != tag)
        return ran; // a later job: this one is done
      index = static_cast<uint32_t>(current);
      if (index >= static_cast<uint32_t>(chunks))
        return ran; // every chunk claimed
    } while (!next_.compare_exchange_weak(current, current + 1,
                                          std::memory_order_acq_rel,
                                          std::memory_order_acquire));
    int64_t b, e;
    chunk(begin, end, chunks, static_cast<int>(index), b, e);
    if (b < e)
      fn(context, b, e);
    if (finished_.fetch_add(1, std::memory_order_acq_rel) + 1 == chunks) {
      // Take the lock so the caller cannot miss the notification between
      // testing its predicate and blocking.
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

void ThreadPool::parallelFor(int64_t begin, int64_t end, ChunkFn fn,
                             void *context, CallSite *site) {
  if (end <= begin)
    return;
  int chunks = chunksFor(end - begin);
  if (threads_ == 1 || chunks == 1) {
    fn(context, begin, end);
    return;
  }
  if (!site)
    site = &defaultSite_;
  if (contendedLeft_ > 0) {
    // The whole pool runs inline for a stretch: the last window's calls
    // were slower on the threads than on the caller alone.
    if (--contendedLeft_ == 0)
      window_ = {};
    fn(context, begin, end);
    return;
  }
  if (site->inlineLeft > 0) {
    // The last inline call leaves three slower calls in the history, so
    // one more slower call sends the site back inline.
    if (--site->inlineLeft == 0)
      site->slowerHistory = 0x7;
    fn(context, begin, end);
    return;
  }
  using Clock = std::chrono::steady_clock;
  Clock::time_point start = Clock::now();
  uint32_t job;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = fn;
    context_ = context;
    begin_ = begin;
    end_ = end;
    chunks_ = chunks;
    job = static_cast<uint32_t>(generation_.load(std::memory_order_relaxed) +
                                1);
    finished_.store(0, std::memory_order_relaxed);
    next_.store(static_cast<uint64_t>(job) << 32, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  int ran = runChunks(job, fn, context, begin, end, chunks);
  Clock::time_point own = Clock::now();
  bool waited = true;
  for (int i = 0; i < kSpinIterations; ++i) {
    if (finished_.load(std::memory_order_acquire) == chunks) {
      waited = false;
      break;
    }
    cpuRelax();
  }
  if (waited) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] {
      return finished_.load(std::memory_order_acquire) == chunks;
    });
  }
  // Slower than the caller alone: the whole call took longer than all the
  // chunks at the caller's own pace.
  if (ran > 0) {
    auto ns = [](Clock::duration d) {
      return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    };
    int64_t callerAlone = ns(own - start) / ran * chunks;
    int64_t wall = ns(Clock::now() - start);
    bool slower = wall > callerAlone;
    // Pool-wide: the calls' time against their caller-alone estimates, over
    // windows of kWindowCalls calls long enough that waking a worker costs
    // little next to them (shorter ones are the sites' business).
    if (callerAlone >= kWindowMinNs) {
      window_.wallNs += wall;
      window_.aloneNs += callerAlone;
      ++window_.calls;
    }
    if (window_.calls == kWindowCalls) {
      if (window_.wallNs > window_.aloneNs) {
        contendedLeft_ = contendedCalls_;
        contendedCalls_ = std::min(2 * contendedCalls_, kMaxContendedCalls);
      } else {
        contendedCalls_ = kContendedCalls;
      }
      window_ = {};
    }
    site->slowerHistory =
        (site->slowerHistory << 1 | (slower ? 1u : 0u)) & 0xffffu;
    if (__builtin_popcount(site->slowerHistory) >= 4) {
      site->inlineLeft = site->inlineCalls;
      site->inlineCalls = std::min(2 * site->inlineCalls, kMaxInlineCalls);
      site->slowerHistory = 0;
    } else if (site->slowerHistory == 0) {
      site->inlineCalls = kInlineCalls; // 16 calls in a row not slower
    }
  }
}

void ThreadPool::workerLoop() {
  uint64_t seen = 0;
  for (;;) {
    ChunkFn fn;
    void *context;
    int64_t begin, end;
    int chunks;
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
      chunks = chunks_;
    }
    // The job may already be finished (the caller and the other workers
    // claimed every chunk); then nothing is claimed and this returns.
    runChunks(static_cast<uint32_t>(seen), fn, context, begin, end, chunks);
  }
}

} // namespace moec::rt
