//===- Device.h - where kernels run -----------------------------*- C++ -*-===//
//
// A Device owns the memory the arena and parameter block live in, loads an
// artifact's kernels, and runs dispatches. The runtime has one device today,
// "cpu": kernels from the artifact's ELF section, run on a persistent thread
// pool (ThreadPool.h).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_DEVICE_H
#define MOEC_RUNTIME_DEVICE_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Error.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

namespace moec::rt {

/// The kernel ABI: args[i] is the base pointer of the dispatch's i-th buffer
/// argument; the kernel computes [begin, end) of its parallel range.
using KernelFn = void (*)(void **args, int64_t begin, int64_t end);

class Device {
public:
  virtual ~Device();

  /// "cpu".
  virtual std::string_view name() const = 0;
  /// The worker threads a dispatch is split over.
  virtual int threads() const = 0;

  /// `bytes` of zeroed device memory, 64-byte aligned; nullptr when out of
  /// memory. allocate(0) returns a valid, unique pointer.
  virtual void *allocate(size_t bytes) = 0;
  virtual void free(void *ptr) = 0;
  /// Copies between host memory and memory from allocate().
  virtual void upload(void *device, const void *host, size_t bytes) = 0;
  virtual void download(void *host, const void *device, size_t bytes) = 0;

  /// Loads the artifact's kernels and resolves every kernel its plan names.
  /// Called once, before runDispatch.
  virtual Error loadKernels(const Artifact &artifact) = 0;
  /// Runs `dispatch` over dispatch.range(images) with `args` (one base
  /// pointer per dispatch.args entry).
  virtual Error runDispatch(const Dispatch &dispatch, void **args,
                            int64_t images) = 0;
};

/// The thread count `threads` stands for: itself if positive, else every
/// core (std::thread::hardware_concurrency, at least 1).
int resolveThreads(int threads);

/// Creates device `name` ("cpu") running on resolveThreads(threads) threads.
/// Argument errors: an unknown device, negative threads.
Expected<std::unique_ptr<Device>> createDevice(std::string_view name,
                                               int threads);

} // namespace moec::rt

#endif // MOEC_RUNTIME_DEVICE_H
