//===- ThreadPool.h - a persistent pool handing out fixed chunks -*- C++ -*-===//
//
// parallelFor(begin, end, fn) splits [begin, end) into a fixed set of
// contiguous chunks (about kChunksPerThread per thread, chunk i = [begin +
// len*i/C, begin + len*(i+1)/C)) that the threads, the caller included,
// claim one at a time from a shared counter. The chunks depend only on the
// range and the thread count, and every kernel computes each index of its
// range on its own, so results do not depend on which thread ran which
// chunk (they are bitwise the same for any --threads). Claiming instead of
// a static chunk per thread keeps a busy machine from stalling a call: a
// worker that shares its core with another process runs fewer chunks, and
// one that is not scheduled at all runs none, instead of the whole call
// waiting for its share. A pool of one thread runs everything inline.
//
// A worker preempted in the middle of a chunk (its core is shared with a
// busy process) still holds up the call until it runs again, a scheduler
// time slice later. So the pool also watches itself, per call site (a
// kernel): a call that took longer than its chunks would have taken on the
// caller alone (estimated from the caller's own chunks) counts as slower;
// when 4 of the site's last 16 calls were, its next calls run on the
// caller alone (kInlineCalls of them, twice as many each time a retry on
// the threads is slower again, up to kMaxInlineCalls), then the threads are
// tried again (and one more slower call sends the site back). On an idle
// machine only calls too short to gain from a second thread are slower, and
// those are better inline.
//
// A busy machine shows pool-wide first: when the last kWindowCalls calls
// of at least kWindowMinNs took longer on the threads than their
// caller-alone estimates add up to, every call runs inline for
// kContendedCalls calls (doubling while the machine stays busy, up to
// kMaxContendedCalls), then a window of calls on the threads measures
// again. A process that takes a core now and then (a low-priority one)
// costs the threads a stall here and there, less than they gain, and
// they stay in use.
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

  /// Calls of a site that run on the caller alone after the threads were
  /// found slower there, at first and at most.
  static constexpr int kInlineCalls = 64;
  static constexpr int kMaxInlineCalls = 4096;
  /// Pool-wide: calls per measured window, and the inline stretch after a
  /// window slower than the caller alone, at first and at most.
  static constexpr int kWindowCalls = 32;
  /// Calls shorter than this on the caller alone stay out of the windows.
  static constexpr int64_t kWindowMinNs = 50000;
  static constexpr int kContendedCalls = 4096;
  static constexpr int kMaxContendedCalls = 65536;

  /// Whether the pool runs every call inline for now (a busy machine).
  bool contended() const { return contendedLeft_ > 0; }

  /// Chunk `index` of `chunks` over [begin, end).
  static void chunk(int64_t begin, int64_t end, int chunks, int index,
                    int64_t &chunkBegin, int64_t &chunkEnd);

  /// The number of chunks parallelFor splits `length` indices into.
  int chunksFor(int64_t length) const;

  /// What the pool remembers of one call site's calls: whether they ran
  /// slower on the threads than on the caller alone.
  struct CallSite {
    /// The last 16 calls, one bit each: set if it was slower.
    uint32_t slowerHistory = 0;
    /// Calls left to run on the caller alone.
    int inlineLeft = 0;
    /// Calls the next inline stretch lasts.
    int inlineCalls = kInlineCalls;
    bool runningInline() const { return inlineLeft > 0; }
  };

  /// Runs fn over [begin, end) split as described above; returns when every
  /// chunk is done. `site` (default: one shared by all callers without
  /// one) keeps the statistics that decide whether the call runs on the
  /// caller alone. Not reentrant: one parallelFor at a time per pool.
  void parallelFor(int64_t begin, int64_t end, ChunkFn fn, void *context,
                   CallSite *site = nullptr);

  /// Chunks per thread: enough that a thread slowed down by another
  /// process leaves little of the call to wait for (at most 1/4 of its
  /// even share), few enough that claiming costs nothing measurable.
  static constexpr int kChunksPerThread = 4;

private:
  void workerLoop();
  /// Claims and runs chunks of job `job` until none is left; returns how
  /// many it ran.
  int runChunks(uint32_t job, ChunkFn fn, void *context, int64_t begin,
                 int64_t end, int chunks);
  void stop();

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  /// Bumped (under mutex_, release) for every job; workers compare.
  std::atomic<uint64_t> generation_{0};
  /// The current job's id (low 32 bits of its generation) in the high
  /// half and the next unclaimed chunk in the low half: a worker that
  /// read an older job fails to claim from this one.
  std::atomic<uint64_t> next_{0};
  /// Chunks of the current job that have finished.
  std::atomic<int> finished_{0};
  /// The call site of callers that name none (caller-only state).
  CallSite defaultSite_;
  /// The current pool-wide window (caller-only state).
  struct Window {
    int calls = 0;
    int64_t wallNs = 0, aloneNs = 0;
  } window_;
  int contendedLeft_ = 0;
  int contendedCalls_ = kContendedCalls;
  bool stopping_ = false;
  // The current job (read and written under mutex_).
  ChunkFn fn_ = nullptr;
  void *context_ = nullptr;
  int64_t begin_ = 0, end_ = 0;
  int chunks_ = 0;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_THREADPOOL_H
