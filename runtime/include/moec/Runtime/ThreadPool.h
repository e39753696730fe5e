//===- ThreadPool.h - a persistent pool with static splitting ---*- C++ -*-===//
//
// parallelFor(begin, end, fn) splits [begin, end) into size() contiguous
// chunks, chunk i = [begin + len*i/T, begin + len*(i+1)/T), and runs chunk i
// on thread i (thread 0 is the caller). The split depends only on the range
// and the thread count, so results are reproducible for a given --threads.
// A pool of one thread runs everything inline.
//
// Kernels are short (tens of microseconds to a few milliseconds) and a
// model runs dozens of them per batch, so waking a sleeping thread through
// the kernel on every dispatch would cost a noticeable share. Workers and
// the caller therefore spin on atomics for a short while (kSpinIterations)
// before falling back to the condition variables.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_THREADPOOL_H
#define MOEC_RUNTIME_THREADPOOL_H

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace moec::rt {

class ThreadPool {
public:
  /// A chunk of work: fn(context, begin, end).
  using ChunkFn = void (*)(void *context, int64_t begin, int64_t end);

  /// Starts `threads - 1` workers (threads >= 1); throws std::system_error
  /// when a thread cannot start.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int size() const { return threads_; }

  /// Chunk `index` of `chunks` over [begin, end).
  static void chunk(int64_t begin, int64_t end, int chunks, int index,
                    int64_t &chunkBegin, int64_t &chunkEnd);

  /// Runs fn over [begin, end) split as described above; returns when every
  /// chunk is done. Not reentrant: one parallelFor at a time per pool.
  void parallelFor(int64_t begin, int64_t end, ChunkFn fn, void *context);

private:
  void workerLoop(int index);
  void stop();

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  /// Bumped (under mutex_, release) for every job; workers compare.
  std::atomic<uint64_t> generation_{0};
  /// Workers still running the current job.
  std::atomic<int> pending_{0};
  bool stopping_ = false;
  // The current job.
  ChunkFn fn_ = nullptr;
  void *context_ = nullptr;
  int64_t begin_ = 0, end_ = 0;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_THREADPOOL_H
