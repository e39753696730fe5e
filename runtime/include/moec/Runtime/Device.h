//===- Device.h - where kernels run -----------------------------*- C++ -*-===//
//
// A Device owns the memory the arena and parameter block live in, loads an
// artifact's kernels, and runs dispatches. The runtime has two: "cpu"
// (kernels from the artifact's ELF section, run on a persistent thread pool,
// ThreadPool.h; its memory is host memory) and "cuda" (PTX kernels loaded
// through the CUDA driver API, launched on one stream, each entry point
// replayed as a CUDA graph; its memory is device memory the host reaches
// only through upload and download).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_DEVICE_H
#define MOEC_RUNTIME_DEVICE_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Error.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moec::rt {

/// The kernel ABI: args[i] is the base pointer of the dispatch's i-th buffer
/// argument; the kernel computes [begin, end) of its parallel range.
using KernelFn = void (*)(void **args, int64_t begin, int64_t end);

class Device {
public:
  virtual ~Device();

  /// "cpu" or "cuda": the artifact target the device runs.
  virtual std::string_view name() const = 0;
  /// The host threads a dispatch is split over (1 for cuda).
  virtual int threads() const = 0;
  /// Whether the host may read and write memory from allocate() directly
  /// (true for cpu). Otherwise only upload() and download() reach it, and
  /// a Session keeps host copies of what its callers read and write.
  virtual bool hostAccessible() const { return true; }

  /// `bytes` of zeroed device memory, 64-byte aligned (256 on cuda);
  /// nullptr when out of memory. allocate(0) returns a valid, unique
  /// pointer.
  virtual void *allocate(size_t bytes) = 0;
  virtual void free(void *ptr) = 0;
  /// Synchronous copies between host memory and memory from allocate():
  /// ordered after every dispatch run before, finished on return. A device
  /// whose copies can fail reports the failure from its next runDispatch,
  /// runEntry or synchronize.
  virtual void upload(void *device, const void *host, size_t bytes) = 0;
  virtual void download(void *host, const void *device, size_t bytes) = 0;

  /// Loads the artifact's kernels and resolves every kernel its plan names.
  /// Called once, before runDispatch.
  virtual Error loadKernels(const Artifact &artifact) = 0;
  /// Runs `dispatch` over dispatch.range(images) with `args` (one base
  /// pointer per dispatch.args entry). It may return before the kernel has
  /// finished (cuda); synchronize() waits for it.
  virtual Error runDispatch(const Dispatch &dispatch, void **args,
                            int64_t images) = 0;
  /// Runs the dispatches `plan` of entry point `entry` in order, args[i]
  /// holding dispatch i's base pointers, and waits for them. The session
  /// passes the same `args` for an entry at every call, so a device may
  /// record the entry once per image count and replay it (cuda: a CUDA
  /// graph). The default calls runDispatch for each dispatch.
  virtual Error runEntry(const std::string &entry,
                         const std::vector<Dispatch> &plan,
                         std::vector<std::vector<void *>> &args,
                         int64_t images);
  /// Waits until every dispatch run so far has finished, returning the
  /// first failure among them (cuda); the default returns at once.
  virtual Error synchronize() { return Error::success(); }
};

/// The thread count `threads` stands for: itself if positive, else every
/// core (std::thread::hardware_concurrency, at least 1).
int resolveThreads(int threads);

/// Creates device `name`: "cpu" running on resolveThreads(threads) threads,
/// or "cuda" (the first visible GPU; `threads` is checked but unused).
/// Argument errors: an unknown device, negative threads. Device errors: no
/// CUDA driver or GPU ("device 'cuda': no CUDA device is visible (...)").
Expected<std::unique_ptr<Device>> createDevice(std::string_view name,
                                               int threads);

} // namespace moec::rt

#endif // MOEC_RUNTIME_DEVICE_H
