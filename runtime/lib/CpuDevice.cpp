//===- CpuDevice.cpp - the cpu device: ELF kernels on a thread pool -------===//
//
// The artifact's "kernels" section is written to an anonymous memory file
// (memfd_create) and dlopen'ed through /proc/self/fd/N, so nothing touches
// the file system. Each session's device has its own copy of the library.
// The memory file stays open while the library is loaded: glibc recognizes
// an already-loaded library by its path, so two live libraries must never
// share an fd number.
//
//===----------------------------------------------------------------------===//

#include "Devices.h"
#include "moec/Runtime/ThreadPool.h"

#include "moec/Runtime/FileUtil.h"

#include <cerrno>
#include <cstring>
#include <dlfcn.h>
#include <mutex>
#include <new>
#include <sys/mman.h>
#include <unistd.h>
#include <unordered_map>

namespace moec::rt {

namespace {

class CpuDevice final : public Device {
public:
  explicit CpuDevice(int threads) : pool_(threads) {}
  ~CpuDevice() override {
    if (library_)
      ::dlclose(library_);
    if (memfd_ >= 0)
      ::close(memfd_);
  }

  std::string_view name() const override { return "cpu"; }
  int threads() const override { return pool_.size(); }

  /// Anonymous mappings: page-aligned (so 64-aligned), zeroed, and
  /// populated up front, so the first inference does not pay the page
  /// faults of the whole arena.
  void *allocate(size_t bytes) override {
    size_t length = bytes == 0 ? 1 : bytes;
    void *ptr = ::mmap(nullptr, length, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (ptr == MAP_FAILED)
      return nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    mappings_[ptr] = length;
    return ptr;
  }
  void free(void *ptr) override {
    if (!ptr)
      return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = mappings_.find(ptr);
    if (it == mappings_.end())
      return;
    ::munmap(ptr, it->second);
    mappings_.erase(it);
  }
  void upload(void *device, const void *host, size_t bytes) override {
    if (bytes)
      std::memcpy(device, host, bytes);
  }
  void download(void *host, const void *device, size_t bytes) override {
    if (bytes)
      std::memcpy(host, device, bytes);
  }

  Error loadKernels(const Artifact &artifact) override;
  Error runDispatch(const Dispatch &dispatch, void **args,
                    int64_t images) override;

private:
  ThreadPool pool_;
  int memfd_ = -1;
  void *library_ = nullptr;
  /// A loaded kernel and what the pool remembers of its dispatches.
  struct Kernel {
    KernelFn fn;
    ThreadPool::CallSite site;
  };
  std::unordered_map<std::string, Kernel> kernels_;
  std::mutex mutex_;
  std::unordered_map<void *, size_t> mappings_;
};

/// ISA extensions the runtime can test for, by their LLVM feature names.
/// Kernels compiled with one of them would fault (SIGILL) on a CPU without
/// it; the artifact lists what its kernels may use.
static bool hostSupports(const std::string &feature, bool &known) {
  known = true;
#define MOEC_FEATURE(llvmName, gccName)                                        \
  if (feature == llvmName)                                                     \
    return __builtin_cpu_supports(gccName);
  MOEC_FEATURE("sse4.2", "sse4.2")
  MOEC_FEATURE("avx", "avx")
  MOEC_FEATURE("avx2", "avx2")
  MOEC_FEATURE("fma", "fma")
  MOEC_FEATURE("bmi", "bmi")
  MOEC_FEATURE("bmi2", "bmi2")
  MOEC_FEATURE("avx512f", "avx512f")
  MOEC_FEATURE("avx512bw", "avx512bw")
  MOEC_FEATURE("avx512cd", "avx512cd")
  MOEC_FEATURE("avx512dq", "avx512dq")
  MOEC_FEATURE("avx512vl", "avx512vl")
  MOEC_FEATURE("avx512vnni", "avx512vnni")
  MOEC_FEATURE("avx512bf16", "avx512bf16")
  MOEC_FEATURE("avx512ifma", "avx512ifma")
  MOEC_FEATURE("avx512vbmi", "avx512vbmi")
  MOEC_FEATURE("avx512vbmi2", "avx512vbmi2")
  MOEC_FEATURE("avx512bitalg", "avx512bitalg")
  MOEC_FEATURE("avx512vpopcntdq", "avx512vpopcntdq")
#undef MOEC_FEATURE
  known = false;
  return true;
}

Error CpuDevice::loadKernels(const Artifact &artifact) {
  const std::string &path = artifact.path();
  if (library_)
    return makeError(ErrorCode::Internal, path, ": kernels loaded twice");
  if (artifact.manifest().target != kTargetCpu)
    return makeError(ErrorCode::Argument, path, ": compiled for target '",
                     artifact.manifest().target,
                     "'; run it with --device=", artifact.manifest().target);
  for (const std::string &feature : artifact.manifest().targetFeatures) {
    bool known;
    if (!hostSupports(feature, known))
      return makeError(ErrorCode::Format, path, ": compiled for ",
                       artifact.manifest().targetCpu, " with ", feature,
                       ", which this CPU lacks (compile the model on a machine "
                       "like this one)");
  }
  memfd_ = ::memfd_create("moec-kernels", MFD_CLOEXEC);
  if (memfd_ < 0)
    return makeError(
        ErrorCode::Device, path,
        ": cannot create a memory file for the kernels: ", systemError(errno));
  const uint8_t *data = artifact.kernelsData();
  uint64_t left = artifact.kernelsSize();
  while (left > 0) {
    ssize_t put = ::write(memfd_, data, left);
    if (put < 0) {
      if (errno == EINTR)
        continue;
      return makeError(
          ErrorCode::Device, path,
          ": cannot write the kernels to a memory file: ", systemError(errno));
    }
    data += put;
    left -= static_cast<uint64_t>(put);
  }
  std::string procPath = cat("/proc/self/fd/", memfd_);
  library_ = ::dlopen(procPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!library_) {
    const char *why = ::dlerror();
    return makeError(ErrorCode::Format, path,
                     ": cannot load the kernels section: ",
                     why ? why : "unknown dlopen error");
  }
  for (const std::string &kernel : artifact.plan().kernelNames()) {
    ::dlerror();
    void *symbol = ::dlsym(library_, kernel.c_str());
    if (!symbol)
      return makeError(ErrorCode::Format, path, ": kernel '", kernel,
                       "' named in the plan is not in the kernels section");
    KernelFn fn;
    static_assert(sizeof(fn) == sizeof(symbol), "function pointer size");
    std::memcpy(&fn, &symbol, sizeof(fn));
    kernels_.emplace(kernel, Kernel{fn, {}});
  }
  return Error::success();
}

struct DispatchCall {
  KernelFn fn;
  void **args;
};

Error CpuDevice::runDispatch(const Dispatch &dispatch, void **args,
                             int64_t images) {
  auto it = kernels_.find(dispatch.kernel);
  if (it == kernels_.end())
    return makeError(ErrorCode::Internal, "kernel '", dispatch.kernel,
                     "' was not loaded");
  DispatchCall call{it->second.fn, args};
  pool_.parallelFor(
      0, dispatch.range(images),
      [](void *context, int64_t begin, int64_t end) {
        auto *c = static_cast<DispatchCall *>(context);
        c->fn(c->args, begin, end);
      },
      &call, &it->second.site);
  return Error::success();
}

} // namespace

std::unique_ptr<Device> createCpuDevice(int threads) {
  return std::unique_ptr<Device>(new CpuDevice(threads));
}

} // namespace moec::rt
