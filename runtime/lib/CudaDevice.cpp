//===- CudaDevice.cpp - the cuda device: PTX kernels on an NVIDIA GPU -----===//
//
// The CUDA driver API, reached through dlopen("libcuda.so.1") and dlsym of
// the versioned entry points: the runtime neither includes cuda.h nor links
// libcuda, so it builds and runs its cpu path on machines without CUDA. The
// few driver types and constants it needs are declared below with the
// values of cuda.h (CUDA 12 and 13).
//
// One device is GPU 0 of the visible ones (CUDA_VISIBLE_DEVICES chooses),
// its primary context, and one non-blocking stream. Every copy and launch
// goes on that stream, so they run in order. An entry point is captured
// into a CUDA graph the first time it runs with a given image count and
// replayed from then on (docs/runtime.md, "The cuda device").
//
//===----------------------------------------------------------------------===//

#include "Devices.h"

#include <algorithm>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace moec::rt {

namespace {

//===----------------------------------------------------------------------===//
// The driver API
//===----------------------------------------------------------------------===//

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
struct CUctx_st;
struct CUmod_st;
struct CUfunc_st;
struct CUstream_st;
struct CUgraph_st;
struct CUgraphExec_st;
using CUcontext = CUctx_st *;
using CUmodule = CUmod_st *;
using CUfunction = CUfunc_st *;
using CUstream = CUstream_st *;
using CUgraph = CUgraph_st *;
using CUgraphExec = CUgraphExec_st *;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
constexpr int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
constexpr int CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0;
constexpr int CU_JIT_INFO_LOG_BUFFER = 3;
constexpr int CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES = 4;
constexpr int CU_JIT_ERROR_LOG_BUFFER = 5;
constexpr int CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES = 6;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;
constexpr int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;

/// Names of the results a driver may return before cuGetErrorName works
/// (a stub library, a driver that failed to initialize).
const char *knownErrorName(CUresult result) {
  switch (result) {
  case 1:
    return "CUDA_ERROR_INVALID_VALUE";
  case 2:
    return "CUDA_ERROR_OUT_OF_MEMORY";
  case 3:
    return "CUDA_ERROR_NOT_INITIALIZED";
  case 34:
    return "CUDA_ERROR_STUB_LIBRARY";
  case 35:
    return "CUDA_ERROR_INSUFFICIENT_DRIVER";
  case 46:
    return "CUDA_ERROR_DEVICE_UNAVAILABLE";
  case 100:
    return "CUDA_ERROR_NO_DEVICE";
  case 101:
    return "CUDA_ERROR_INVALID_DEVICE";
  case 304:
    return "CUDA_ERROR_OPERATING_SYSTEM";
  case 802:
    return "CUDA_ERROR_SYSTEM_NOT_READY";
  case 803:
    return "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH";
  case 804:
    return "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE";
  case 999:
    return "CUDA_ERROR_UNKNOWN";
  default:
    return nullptr;
  }
}

/// The driver's entry points, resolved once per process.
struct Driver {
  void *library = nullptr;
  /// Why no device can be created ("libcuda.so.1: ...", "cuInit: ..."),
  /// empty when the driver is usable and sees at least one GPU.
  std::string failure;

  CUresult (*cuGetErrorName)(CUresult, const char **) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char **) = nullptr;
  CUresult (*cuInit)(unsigned) = nullptr;
  CUresult (*cuDeviceGetCount)(int *) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice *, int) = nullptr;
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice) = nullptr;
  CUresult (*cuDeviceGetName)(char *, int, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice) = nullptr;
  CUresult (*cuCtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*cuMemAlloc)(CUdeviceptr *, size_t) = nullptr;
  CUresult (*cuMemFree)(CUdeviceptr) = nullptr;
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr, const void *, size_t,
                                CUstream) = nullptr;
  CUresult (*cuMemcpyDtoHAsync)(void *, CUdeviceptr, size_t,
                                CUstream) = nullptr;
  CUresult (*cuMemsetD8Async)(CUdeviceptr, unsigned char, size_t,
                              CUstream) = nullptr;
  CUresult (*cuModuleLoadDataEx)(CUmodule *, const void *, unsigned, int *,
                                 void **) = nullptr;
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule,
                                  const char *) = nullptr;
  CUresult (*cuModuleUnload)(CUmodule) = nullptr;
  CUresult (*cuFuncGetAttribute)(int *, int, CUfunction) = nullptr;
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, unsigned, CUstream, void **,
                             void **) = nullptr;
  CUresult (*cuStreamCreate)(CUstream *, unsigned) = nullptr;
  CUresult (*cuStreamSynchronize)(CUstream) = nullptr;
  CUresult (*cuStreamDestroy)(CUstream) = nullptr;
  CUresult (*cuStreamBeginCapture)(CUstream, int) = nullptr;
  CUresult (*cuStreamEndCapture)(CUstream, CUgraph *) = nullptr;
  CUresult (*cuGraphInstantiateWithFlags)(CUgraphExec *, CUgraph,
                                          unsigned long long) = nullptr;
  CUresult (*cuGraphLaunch)(CUgraphExec, CUstream) = nullptr;
  CUresult (*cuGraphExecDestroy)(CUgraphExec) = nullptr;
  CUresult (*cuGraphDestroy)(CUgraph) = nullptr;

  /// "CUDA_ERROR_OUT_OF_MEMORY: out of memory".
  std::string describe(CUresult result) const {
    const char *name = nullptr, *text = nullptr;
    if (cuGetErrorName && cuGetErrorName(result, &name) != CUDA_SUCCESS)
      name = nullptr;
    if (cuGetErrorString && cuGetErrorString(result, &text) != CUDA_SUCCESS)
      text = nullptr;
    if (!name)
      name = knownErrorName(result);
    std::string out = name ? name : cat("CUDA error ", result);
    if (text && *text)
      out += cat(": ", text);
    return out;
  }
};

template <typename Fn> bool resolve(void *library, const char *symbol, Fn &fn) {
  void *address = ::dlsym(library, symbol);
  if (!address)
    return false;
  static_assert(sizeof(fn) == sizeof(address), "function pointer size");
  std::memcpy(&fn, &address, sizeof(fn));
  return true;
}

Driver loadDriver() {
  Driver d;
  d.library = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!d.library) {
    // dlerror names the library: "libcuda.so.1: cannot open shared object
    // file: No such file or directory".
    const char *why = ::dlerror();
    d.failure = why ? why : "libcuda.so.1 cannot be loaded";
    return d;
  }
  // The error names first, so that the failures below can use them.
  resolve(d.library, "cuGetErrorName", d.cuGetErrorName);
  resolve(d.library, "cuGetErrorString", d.cuGetErrorString);
  const char *missing = nullptr;
  auto need = [&](const char *symbol, auto &fn) {
    if (!missing && !resolve(d.library, symbol, fn))
      missing = symbol;
  };
  need("cuInit", d.cuInit);
  need("cuDeviceGetCount", d.cuDeviceGetCount);
  need("cuDeviceGet", d.cuDeviceGet);
  need("cuDeviceGetAttribute", d.cuDeviceGetAttribute);
  need("cuDeviceGetName", d.cuDeviceGetName);
  need("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain);
  need("cuDevicePrimaryCtxRelease_v2", d.cuDevicePrimaryCtxRelease);
  need("cuCtxSetCurrent", d.cuCtxSetCurrent);
  need("cuMemAlloc_v2", d.cuMemAlloc);
  need("cuMemFree_v2", d.cuMemFree);
  need("cuMemcpyHtoDAsync_v2", d.cuMemcpyHtoDAsync);
  need("cuMemcpyDtoHAsync_v2", d.cuMemcpyDtoHAsync);
  need("cuMemsetD8Async", d.cuMemsetD8Async);
  need("cuModuleLoadDataEx", d.cuModuleLoadDataEx);
  need("cuModuleGetFunction", d.cuModuleGetFunction);
  need("cuModuleUnload", d.cuModuleUnload);
  need("cuFuncGetAttribute", d.cuFuncGetAttribute);
  need("cuLaunchKernel", d.cuLaunchKernel);
  need("cuStreamCreate", d.cuStreamCreate);
  need("cuStreamSynchronize", d.cuStreamSynchronize);
  need("cuStreamDestroy_v2", d.cuStreamDestroy);
  need("cuStreamBeginCapture_v2", d.cuStreamBeginCapture);
  need("cuStreamEndCapture", d.cuStreamEndCapture);
  need("cuGraphInstantiateWithFlags", d.cuGraphInstantiateWithFlags);
  need("cuGraphLaunch", d.cuGraphLaunch);
  need("cuGraphExecDestroy", d.cuGraphExecDestroy);
  need("cuGraphDestroy", d.cuGraphDestroy);
  if (missing) {
    d.failure = cat("libcuda.so.1 has no ", missing,
                    "; the driver is older than this runtime needs");
    return d;
  }
  if (CUresult r = d.cuInit(0); r != CUDA_SUCCESS) {
    d.failure = cat("cuInit: ", d.describe(r));
    return d;
  }
  int count = 0;
  if (CUresult r = d.cuDeviceGetCount(&count); r != CUDA_SUCCESS) {
    d.failure = cat("cuDeviceGetCount: ", d.describe(r));
    return d;
  }
  if (count < 1)
    d.failure = "cuDeviceGetCount: 0 devices";
  return d;
}

const Driver &driver() {
  static const Driver loaded = loadDriver();
  return loaded;
}

//===----------------------------------------------------------------------===//
// The device
//===----------------------------------------------------------------------===//

CUdeviceptr devicePtr(const void *ptr) {
  return static_cast<CUdeviceptr>(reinterpret_cast<uintptr_t>(ptr));
}

class CudaDevice final : public Device {
public:
  CudaDevice(const Driver &d, CUdevice device, CUcontext context,
             CUstream stream, std::string gpu, int major, int minor)
      : d_(d), device_(device), context_(context), stream_(stream),
        gpu_(std::move(gpu)), major_(major), minor_(minor) {}
  ~CudaDevice() override;

  std::string_view name() const override { return kTargetCuda; }
  int threads() const override { return 1; }
  bool hostAccessible() const override { return false; }

  void *allocate(size_t bytes) override;
  void free(void *ptr) override;
  void upload(void *device, const void *host, size_t bytes) override;
  void download(void *host, const void *device, size_t bytes) override;

  Error loadKernels(const Artifact &artifact) override;
  Error runDispatch(const Dispatch &dispatch, void **args,
                    int64_t images) override;
  Error runEntry(const std::string &entry, const std::vector<Dispatch> &plan,
                 std::vector<std::vector<void *>> &args,
                 int64_t images) override;
  Error synchronize() override;

private:
  void makeCurrent() const { d_.cuCtxSetCurrent(context_); }
  /// Enqueues one kernel launch of `dispatch` on the stream.
  Error launch(const Dispatch &dispatch, void **args, int64_t images);
  /// The first failure of an upload or download since it was last taken.
  Error takeDeferred() {
    Error e = std::move(deferred_);
    deferred_ = Error();
    return e;
  }
  void defer(const char *what, size_t bytes, CUresult result);
  Error deviceError(const std::string &what, CUresult result) const {
    return makeError(ErrorCode::Device, "device 'cuda': ", what, ": ",
                     d_.describe(result));
  }

  const Driver &d_;
  CUdevice device_;
  CUcontext context_;
  CUstream stream_;
  std::string gpu_; ///< "GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0)"
  int major_, minor_;

  CUmodule module_ = nullptr;
  std::unordered_map<std::string, CUfunction> kernels_;
  unsigned blockThreads_ = 0;
  /// Scratch memory for the dispatches with scratch_bytes (the most any of
  /// them needs over its largest range), allocated with the kernels so
  /// that its address, captured in the graphs, never changes; 0 if none.
  CUdeviceptr scratch_ = 0;
  /// The launch parameters of the current launch (cuLaunchKernel copies
  /// their values).
  std::vector<void *> params_;
  int64_t begin_ = 0;
  /// "dispatch 'x' (kernel k)": the last one launched, for errors found
  /// when the stream is synchronized.
  std::string lastDispatch_;

  /// An entry point captured for one image count, and the argument
  /// pointers it was captured with.
  struct Graph {
    CUgraphExec exec = nullptr;
    std::vector<void *> args;
  };
  std::map<std::pair<std::string, int64_t>, Graph> graphs_;

  std::mutex mutex_;
  std::unordered_map<CUdeviceptr, size_t> allocations_;
  Error deferred_;
};

CudaDevice::~CudaDevice() {
  makeCurrent();
  d_.cuStreamSynchronize(stream_);
  for (auto &[key, graph] : graphs_)
    d_.cuGraphExecDestroy(graph.exec);
  if (module_)
    d_.cuModuleUnload(module_);
  if (scratch_)
    d_.cuMemFree(scratch_);
  for (auto &[ptr, bytes] : allocations_)
    d_.cuMemFree(ptr);
  d_.cuStreamDestroy(stream_);
  d_.cuCtxSetCurrent(nullptr);
  d_.cuDevicePrimaryCtxRelease(device_);
}

void *CudaDevice::allocate(size_t bytes) {
  makeCurrent();
  const size_t length = bytes == 0 ? 1 : bytes;
  CUdeviceptr ptr = 0;
  if (d_.cuMemAlloc(&ptr, length) != CUDA_SUCCESS)
    return nullptr;
  if (d_.cuMemsetD8Async(ptr, 0, length, stream_) != CUDA_SUCCESS ||
      d_.cuStreamSynchronize(stream_) != CUDA_SUCCESS) {
    d_.cuMemFree(ptr);
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  allocations_[ptr] = length;
  return reinterpret_cast<void *>(static_cast<uintptr_t>(ptr));
}

void CudaDevice::free(void *ptr) {
  if (!ptr)
    return;
  makeCurrent();
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = allocations_.find(devicePtr(ptr));
  if (it == allocations_.end())
    return;
  // No kernel may still use it.
  d_.cuStreamSynchronize(stream_);
  d_.cuMemFree(it->first);
  allocations_.erase(it);
}

void CudaDevice::defer(const char *what, size_t bytes, CUresult result) {
  if (!deferred_)
    deferred_ = deviceError(cat(what, " of ", bytes, " bytes"), result);
}

void CudaDevice::upload(void *device, const void *host, size_t bytes) {
  if (!bytes)
    return;
  makeCurrent();
  CUresult r = d_.cuMemcpyHtoDAsync(devicePtr(device), host, bytes, stream_);
  if (r == CUDA_SUCCESS)
    r = d_.cuStreamSynchronize(stream_);
  if (r != CUDA_SUCCESS)
    defer("upload", bytes, r);
}

void CudaDevice::download(void *host, const void *device, size_t bytes) {
  if (!bytes)
    return;
  makeCurrent();
  CUresult r = d_.cuMemcpyDtoHAsync(host, devicePtr(device), bytes, stream_);
  if (r == CUDA_SUCCESS)
    r = d_.cuStreamSynchronize(stream_);
  if (r != CUDA_SUCCESS) {
    // What the caller reads is not the device's: make that visible.
    std::memset(host, 0xff, bytes);
    defer("download", bytes, r);
  }
}

/// The JIT's log, trimmed, or "" when empty.
std::string jitLog(const std::vector<char> &buffer) {
  std::string log(buffer.data(), strnlen(buffer.data(), buffer.size()));
  while (!log.empty() && (log.back() == '\n' || log.back() == ' '))
    log.pop_back();
  return log;
}

Error CudaDevice::loadKernels(const Artifact &artifact) {
  const std::string &path = artifact.path();
  const Manifest &m = artifact.manifest();
  if (module_)
    return makeError(ErrorCode::Internal, path, ": kernels loaded twice");
  if (m.target != kTargetCuda)
    return makeError(ErrorCode::Argument, path, ": compiled for target '",
                     m.target, "'; run it with --device=", m.target);
  const std::string &arch = m.cuda.arch;
  const std::string capability = cat(major_, ".", minor_);
  if (arch == "sm_90a" && !(major_ == 9 && minor_ == 0))
    return makeError(ErrorCode::Format, path,
                     ": compiled for sm_90a, which runs only on compute "
                     "capability 9.0 GPUs (H100, H200); ",
                     gpu_, " is ", capability,
                     " (compile the model for sm_80 to run it here)");
  if (arch == "sm_80" && major_ < 8)
    return makeError(ErrorCode::Format, path,
                     ": compiled for sm_80, which needs a GPU of compute "
                     "capability 8.0 or newer; ",
                     gpu_, " is ", capability);
  if (m.cuda.blockThreads < 1 || m.cuda.blockThreads > 1024)
    return makeError(ErrorCode::Format, path, ": cuda.block_threads ",
                     m.cuda.blockThreads, " is outside [1, 1024]");
  blockThreads_ = static_cast<unsigned>(m.cuda.blockThreads);

  makeCurrent();
  std::vector<char> errorLog(16384, '\0'), infoLog(16384, '\0');
  int options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
                   CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
  void *values[] = {
      errorLog.data(), reinterpret_cast<void *>(uintptr_t(errorLog.size() - 1)),
      infoLog.data(), reinterpret_cast<void *>(uintptr_t(infoLog.size() - 1))};
  CUresult r = d_.cuModuleLoadDataEx(&module_, artifact.kernelsData(), 4,
                                     options, values);
  if (r != CUDA_SUCCESS) {
    module_ = nullptr;
    // The PTX itself (or one the driver is too old for) is bad input; the
    // rest (memory, a broken context) is the device's failure.
    const bool badPtx =
        r == 200 /*INVALID_IMAGE*/ || r == 209 /*NO_BINARY_FOR_GPU*/ ||
        r == 218 /*INVALID_PTX*/ || r == 222 /*UNSUPPORTED_PTX_VERSION*/;
    std::string log = jitLog(errorLog);
    return makeError(badPtx ? ErrorCode::Format : ErrorCode::Device, path,
                     ": cannot load the PTX kernels on ", gpu_,
                     ": cuModuleLoadDataEx: ", d_.describe(r),
                     log.empty() ? "" : "\n", log);
  }
  for (const std::string &kernel : artifact.plan().kernelNames()) {
    CUfunction fn = nullptr;
    r = d_.cuModuleGetFunction(&fn, module_, kernel.c_str());
    if (r != CUDA_SUCCESS)
      return makeError(ErrorCode::Format, path, ": kernel '", kernel,
                       "' named in the plan is not in the PTX module "
                       "(cuModuleGetFunction: ",
                       d_.describe(r), ")");
    int most = 0;
    if (d_.cuFuncGetAttribute(&most, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK,
                              fn) == CUDA_SUCCESS &&
        most > 0 && unsigned(most) < blockThreads_)
      return makeError(ErrorCode::Format, path, ": kernel '", kernel,
                       "' runs at most ", most, " threads per block on ", gpu_,
                       ", but the artifact launches blocks of ", blockThreads_,
                       " (cuda.block_threads)");
    kernels_.emplace(kernel, fn);
  }

  uint64_t scratch = 0;
  for (const auto &[entry, dispatches] : artifact.plan().entries)
    for (const Dispatch &d : dispatches)
      scratch = std::max<uint64_t>(
          scratch, d.scratchBytes * uint64_t(std::max<int64_t>(d.tiles, 1)));
  if (scratch > 0) {
    r = d_.cuMemAlloc(&scratch_, scratch);
    if (r == CUDA_SUCCESS)
      r = d_.cuMemsetD8Async(scratch_, 0, scratch, stream_);
    if (r == CUDA_SUCCESS)
      r = d_.cuStreamSynchronize(stream_);
    if (r != CUDA_SUCCESS)
      return deviceError(cat(path, ": cannot allocate ", scratch,
                             " bytes of scratch memory on ", gpu_),
                         r);
  }
  return Error::success();
}

Error CudaDevice::launch(const Dispatch &dispatch, void **args,
                         int64_t images) {
  const int64_t range = dispatch.range(images);
  if (range <= 0)
    return Error::success();
  auto it = kernels_.find(dispatch.kernel);
  if (it == kernels_.end())
    return makeError(ErrorCode::Internal, "kernel '", dispatch.kernel,
                     "' was not loaded");
  if (range > 0x7fffffff)
    return makeError(ErrorCode::Internal, "dispatch '", dispatch.name,
                     "': range ", range, " exceeds the grid limit");
  // The launch ABI: one .u64 per buffer argument, then begin, then the
  // scratch pointer.
  const size_t n = dispatch.args.size();
  params_.resize(n + 2);
  for (size_t k = 0; k < n; ++k)
    params_[k] = &args[k];
  begin_ = 0;
  params_[n] = &begin_;
  params_[n + 1] = &scratch_;
  lastDispatch_ =
      cat("dispatch '", dispatch.name, "' (kernel ", dispatch.kernel, ")");
  CUresult r =
      d_.cuLaunchKernel(it->second, unsigned(range), 1, 1, blockThreads_, 1, 1,
                        0, stream_, params_.data(), nullptr);
  if (r != CUDA_SUCCESS)
    return deviceError(cat("dispatch '", dispatch.name, "' (kernel ",
                           dispatch.kernel, ", ", range, " blocks of ",
                           blockThreads_, " threads): cuLaunchKernel"),
                       r);
  return Error::success();
}

Error CudaDevice::runDispatch(const Dispatch &dispatch, void **args,
                              int64_t images) {
  if (Error e = takeDeferred())
    return e;
  makeCurrent();
  return launch(dispatch, args, images);
}

Error CudaDevice::synchronize() {
  if (Error e = takeDeferred())
    return e;
  makeCurrent();
  if (CUresult r = d_.cuStreamSynchronize(stream_); r != CUDA_SUCCESS)
    return deviceError(lastDispatch_.empty() ? std::string("synchronize")
                                             : "after " + lastDispatch_,
                       r);
  return Error::success();
}

Error CudaDevice::runEntry(const std::string &entry,
                           const std::vector<Dispatch> &plan,
                           std::vector<std::vector<void *>> &args,
                           int64_t images) {
  if (Error e = takeDeferred())
    return e;
  makeCurrent();
  const std::string what = cat("entry '", entry, "' (", images, " images)");
  std::vector<void *> pointers;
  for (const std::vector<void *> &a : args)
    pointers.insert(pointers.end(), a.begin(), a.end());
  const auto key = std::make_pair(entry, images);
  auto it = graphs_.find(key);
  if (it != graphs_.end() && it->second.args != pointers) {
    d_.cuGraphExecDestroy(it->second.exec);
    graphs_.erase(it);
    it = graphs_.end();
  }
  if (it == graphs_.end()) {
    CUresult r =
        d_.cuStreamBeginCapture(stream_, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL);
    if (r != CUDA_SUCCESS)
      return deviceError(what + ": cuStreamBeginCapture", r);
    for (size_t i = 0; i < plan.size(); ++i) {
      if (Error e = launch(plan[i], args[i].data(), images)) {
        CUgraph partial = nullptr;
        d_.cuStreamEndCapture(stream_, &partial);
        if (partial)
          d_.cuGraphDestroy(partial);
        return e;
      }
    }
    CUgraph graph = nullptr;
    r = d_.cuStreamEndCapture(stream_, &graph);
    if (r != CUDA_SUCCESS) {
      if (graph)
        d_.cuGraphDestroy(graph);
      return deviceError(what + ": cuStreamEndCapture", r);
    }
    CUgraphExec exec = nullptr;
    r = d_.cuGraphInstantiateWithFlags(&exec, graph, 0);
    d_.cuGraphDestroy(graph);
    if (r != CUDA_SUCCESS)
      return deviceError(what + ": cuGraphInstantiateWithFlags", r);
    it = graphs_.emplace(key, Graph{exec, std::move(pointers)}).first;
  }
  if (CUresult r = d_.cuGraphLaunch(it->second.exec, stream_);
      r != CUDA_SUCCESS)
    return deviceError(what + ": cuGraphLaunch", r);
  if (CUresult r = d_.cuStreamSynchronize(stream_); r != CUDA_SUCCESS)
    return deviceError(what + " failed (--profile runs its dispatches one "
                              "at a time and names the failing one)",
                       r);
  return Error::success();
}

} // namespace

Expected<std::unique_ptr<Device>> createCudaDevice() {
  const Driver &d = driver();
  if (!d.failure.empty())
    return makeError(ErrorCode::Device,
                     "device 'cuda': no CUDA device is visible (", d.failure,
                     ")");
  auto fail = [&](const char *what, CUresult r) {
    return makeError(ErrorCode::Device, "device 'cuda': GPU 0: ", what, ": ",
                     d.describe(r));
  };
  CUdevice device = 0;
  if (CUresult r = d.cuDeviceGet(&device, 0); r != CUDA_SUCCESS)
    return fail("cuDeviceGet", r);
  char name[256] = {};
  if (d.cuDeviceGetName(name, sizeof(name) - 1, device) != CUDA_SUCCESS)
    std::strcpy(name, "unknown");
  int major = 0, minor = 0;
  if (CUresult r = d.cuDeviceGetAttribute(
          &major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
      r != CUDA_SUCCESS)
    return fail("cuDeviceGetAttribute", r);
  if (CUresult r = d.cuDeviceGetAttribute(
          &minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
      r != CUDA_SUCCESS)
    return fail("cuDeviceGetAttribute", r);
  CUcontext context = nullptr;
  if (CUresult r = d.cuDevicePrimaryCtxRetain(&context, device);
      r != CUDA_SUCCESS)
    return fail("cuDevicePrimaryCtxRetain", r);
  CUstream stream = nullptr;
  CUresult r = d.cuCtxSetCurrent(context);
  if (r == CUDA_SUCCESS)
    r = d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) {
    d.cuDevicePrimaryCtxRelease(device);
    return fail("cuStreamCreate", r);
  }
  std::string gpu =
      cat("GPU 0 (", name, ", compute capability ", major, ".", minor, ")");
  return std::unique_ptr<Device>(
      new CudaDevice(d, device, context, stream, gpu, major, minor));
}

} // namespace moec::rt
