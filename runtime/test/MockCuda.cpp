//===- MockCuda.cpp - a libcuda.so.1 that runs on the host ----------------===//
//
// A stand-in for the NVIDIA driver, built as libcuda.so.1 in its own folder
// and put first on LD_LIBRARY_PATH by the Runtime.MockCuda.* tests, so the
// cuda device's host code (CudaDevice.cpp) runs on machines without a GPU.
// It implements exactly the entry points the device resolves, and checks
// how they are used the way the driver would refuse misuse:
//
//   - every call after cuInit needs the retained primary context current
//     on the calling thread (CUDA_ERROR_INVALID_CONTEXT otherwise);
//   - device memory is host memory (256-byte aligned); a kernel that
//     touches bytes outside a live allocation makes the stream fail with
//     CUDA_ERROR_ILLEGAL_ADDRESS at its next synchronization;
//   - cuModuleLoadDataEx reads the PTX's .entry signatures (comments
//     ignored) and rejects registers named %qN, writing a JIT log;
//   - cuLaunchKernel copies as many 8-byte parameters as the entry declares
//     and checks the launch shape; while the stream captures, launches are
//     recorded into the graph, and copies, memsets, synchronization and
//     allocation are refused (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) as in
//     thread-local capture mode;
//   - "kernels" moec_g0 and moec_g1 of the cuda test model (TestUtil.h) run
//     as C++; other kernels only check their pointers.
//
// moecMockCudaStats() reports launches, captures and live objects.
// MOEC_MOCK_CUDA_CC=MAJOR.MINOR sets the compute capability (default 9.0).
//
//===----------------------------------------------------------------------===//

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace {

using CUresult = int;
using CUdeviceptr = unsigned long long;

constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2,
                   kNotInitialized = 3, kInvalidContext = 201,
                   kInvalidHandle = 400, kInvalidPtx = 218, kNotFound = 500,
                   kIllegalAddress = 700, kCaptureUnsupported = 900,
                   kCaptureInvalidated = 901;

struct Entry {
  std::string name;
  size_t params = 0;
};
struct Module {
  std::vector<Entry> entries;
};
struct Function {
  Module *module;
  size_t index;
};
struct Launch {
  Function *fn;
  unsigned grid, block;
  std::vector<uint64_t> params;
};
struct Graph {
  std::vector<Launch> launches;
};
struct Stream {
  bool capturing = false;
  bool invalidated = false;
  Graph *capture = nullptr;
  CUresult error = kSuccess; ///< sticky, reported at synchronization
};

struct State {
  std::mutex mutex;
  bool initialized = false;
  int retains = 0;
  std::map<uintptr_t, size_t> allocations;
  std::set<Module *> modules;
  std::set<Function *> functions;
  std::set<Stream *> streams;
  std::set<Graph *> graphs;
  std::set<Graph *> execs;
  int64_t captures = 0, graphLaunches = 0, directLaunches = 0;
};

State &state() {
  static State s;
  return s;
}

int primaryContext; // its address is the context handle
thread_local void *current = nullptr;

bool contextCurrent() {
  return state().retains > 0 && current == &primaryContext;
}

/// Whether [ptr, ptr + bytes) lies in one live allocation.
bool inAllocation(uint64_t ptr, uint64_t bytes) {
  const auto &a = state().allocations;
  auto it = a.upper_bound(uintptr_t(ptr));
  if (it == a.begin())
    return false;
  --it;
  return ptr >= it->first && ptr + bytes <= it->first + it->second;
}

/// The .entry signatures of NUL-terminated PTX, comments removed; false on
/// a %qN register.
bool parsePtx(const char *text, Module &module, std::string &log) {
  std::string ptx;
  for (const char *p = text; *p;) {
    if (p[0] == '/' && p[1] == '/') {
      while (*p && *p != '\n')
        ++p;
      continue;
    }
    ptx += *p++;
  }
  for (size_t at = ptx.find("%q"); at != std::string::npos;
       at = ptx.find("%q", at + 1))
    if (at + 2 < ptx.size() && ptx[at + 2] >= '0' && ptx[at + 2] <= '9') {
      log = "ptxas application ptx input, line 1; error   : Unknown symbol '" +
            ptx.substr(at, 3) + "'";
      return false;
    }
  if (ptx.find(".version") == std::string::npos ||
      ptx.find(".target") == std::string::npos) {
    log = "ptxas fatal   : no .version or .target";
    return false;
  }
  for (size_t at = ptx.find(".entry"); at != std::string::npos;
       at = ptx.find(".entry", at + 1)) {
    size_t name = ptx.find_first_not_of(" \t\n", at + 6);
    size_t open = ptx.find('(', name);
    size_t close = ptx.find(')', open);
    if (name == std::string::npos || open == std::string::npos ||
        close == std::string::npos)
      continue;
    Entry e;
    e.name = ptx.substr(name, ptx.find_first_of(" \t\n(", name) - name);
    std::string params = ptx.substr(open, close - open);
    for (size_t p = params.find(".param"); p != std::string::npos;
         p = params.find(".param", p + 1)) {
      if (params.compare(p, 11, ".param .u64") != 0) {
        log = "mock: entry " + e.name + " has a parameter other than .u64";
        return false;
      }
      ++e.params;
    }
    module.entries.push_back(e);
  }
  return true;
}

/// Runs one launch on the host: the test model's kernels, or a pointer
/// check for any other. Returns false on an illegal address.
bool execute(const Launch &l) {
  const std::string &name = l.fn->module->entries[l.fn->index].name;
  const std::vector<uint64_t> &p = l.params;
  const uint64_t begin = p.size() >= 2 ? p[p.size() - 2] : 0;
  const uint64_t n = l.block;
  auto f32 = [](uint64_t ptr) {
    return reinterpret_cast<float *>(static_cast<uintptr_t>(ptr));
  };
  if (name == "moec_g0" && p.size() == 4) {
    const uint64_t bytes = (begin + l.grid) * n * 4;
    if (!inAllocation(p[0], bytes) || !inAllocation(p[1], bytes))
      return false;
    for (uint64_t b = 0; b < l.grid; ++b)
      for (uint64_t t = 0; t < n; ++t)
        f32(p[1])[(begin + b) * n + t] = 2 * f32(p[0])[(begin + b) * n + t];
    return true;
  }
  if (name == "moec_g1" && p.size() == 3) {
    if (!inAllocation(p[0], (begin + l.grid) * n * 4) ||
        !inAllocation(p[2], l.grid * n * 4))
      return false;
    float *x = f32(p[0]), *scratch = f32(p[2]);
    for (uint64_t b = 0; b < l.grid; ++b) {
      const uint64_t u = begin + b;
      for (uint64_t t = 0; t < n; ++t)
        scratch[b * n + t] = x[u * n + t] + 1;
      for (uint64_t t = 0; t < n; ++t)
        x[u * n + (t + 1) % n] = scratch[b * n + (t + 1) % n];
    }
    return true;
  }
  // Any other kernel: its buffer pointers must be device memory (the
  // scratch pointer may be 0).
  for (size_t i = 0; i + 2 < p.size(); ++i)
    if (!inAllocation(p[i], 1))
      return false;
  return true;
}

void run(Stream *s, const Launch &l) {
  if (s->error == kSuccess && !execute(l))
    s->error = kIllegalAddress;
}

} // namespace

extern "C" {

struct MoecMockCudaStats {
  int64_t captures, graphLaunches, directLaunches;
  int64_t allocations, modules, streams, graphs, execs, retains;
};

void moecMockCudaStats(MoecMockCudaStats *out) {
  State &s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  *out = {s.captures,
          s.graphLaunches,
          s.directLaunches,
          int64_t(s.allocations.size()),
          int64_t(s.modules.size()),
          int64_t(s.streams.size()),
          int64_t(s.graphs.size()),
          int64_t(s.execs.size()),
          s.retains};
}

CUresult cuGetErrorName(CUresult error, const char **out) {
  switch (error) {
  case kSuccess:
    *out = "CUDA_SUCCESS";
    return kSuccess;
  case kInvalidValue:
    *out = "CUDA_ERROR_INVALID_VALUE";
    return kSuccess;
  case kOutOfMemory:
    *out = "CUDA_ERROR_OUT_OF_MEMORY";
    return kSuccess;
  case kInvalidContext:
    *out = "CUDA_ERROR_INVALID_CONTEXT";
    return kSuccess;
  case kInvalidPtx:
    *out = "CUDA_ERROR_INVALID_PTX";
    return kSuccess;
  case kNotFound:
    *out = "CUDA_ERROR_NOT_FOUND";
    return kSuccess;
  case kIllegalAddress:
    *out = "CUDA_ERROR_ILLEGAL_ADDRESS";
    return kSuccess;
  case kCaptureUnsupported:
    *out = "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    return kSuccess;
  default:
    return kInvalidValue;
  }
}

CUresult cuGetErrorString(CUresult error, const char **out) {
  switch (error) {
  case kInvalidValue:
    *out = "invalid argument";
    return kSuccess;
  case kInvalidPtx:
    *out = "a PTX JIT compilation failed";
    return kSuccess;
  case kNotFound:
    *out = "named symbol not found";
    return kSuccess;
  case kIllegalAddress:
    *out = "an illegal memory access was encountered";
    return kSuccess;
  default:
    return cuGetErrorName(error, out);
  }
}

CUresult cuInit(unsigned flags) {
  if (flags != 0)
    return kInvalidValue;
  state().initialized = true;
  return kSuccess;
}

CUresult cuDeviceGetCount(int *count) {
  if (!state().initialized)
    return kNotInitialized;
  *count = 1;
  return kSuccess;
}

CUresult cuDeviceGet(int *device, int ordinal) {
  if (!state().initialized)
    return kNotInitialized;
  if (ordinal != 0)
    return kInvalidValue;
  *device = 0;
  return kSuccess;
}

CUresult cuDeviceGetAttribute(int *value, int attribute, int device) {
  if (!state().initialized || device != 0)
    return kInvalidValue;
  int major = 9, minor = 0;
  if (const char *cc = std::getenv("MOEC_MOCK_CUDA_CC"))
    std::sscanf(cc, "%d.%d", &major, &minor);
  if (attribute == 75)
    *value = major;
  else if (attribute == 76)
    *value = minor;
  else
    return kInvalidValue;
  return kSuccess;
}

CUresult cuDeviceGetName(char *name, int length, int device) {
  if (!state().initialized || device != 0 || length < 1)
    return kInvalidValue;
  std::strncpy(name, "Mock GPU", size_t(length));
  name[length - 1] = '\0';
  return kSuccess;
}

CUresult cuDevicePrimaryCtxRetain(void **context, int device) {
  if (!state().initialized || device != 0)
    return kInvalidValue;
  std::lock_guard<std::mutex> lock(state().mutex);
  ++state().retains;
  *context = &primaryContext;
  return kSuccess;
}

CUresult cuDevicePrimaryCtxRelease_v2(int device) {
  std::lock_guard<std::mutex> lock(state().mutex);
  if (device != 0 || state().retains == 0)
    return kInvalidValue;
  --state().retains;
  return kSuccess;
}

CUresult cuCtxSetCurrent(void *context) {
  if (context && context != &primaryContext)
    return kInvalidContext;
  current = context;
  return kSuccess;
}

#define NEED_CONTEXT()                                                         \
  do {                                                                         \
    if (!contextCurrent())                                                     \
      return kInvalidContext;                                                  \
  } while (false)

/// Refuses what thread-local capture mode refuses while any stream
/// captures.
static CUresult refuseWhileCapturing() {
  for (Stream *s : state().streams)
    if (s->capturing) {
      s->invalidated = true;
      return kCaptureUnsupported;
    }
  return kSuccess;
}

CUresult cuMemAlloc_v2(CUdeviceptr *ptr, size_t bytes) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = refuseWhileCapturing())
    return r;
  if (bytes == 0)
    return kInvalidValue;
  void *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p)
    return kOutOfMemory;
  std::memset(p, 0xa5, bytes); // not zeroed, as on a GPU
  state().allocations[uintptr_t(p)] = bytes;
  *ptr = uintptr_t(p);
  return kSuccess;
}

CUresult cuMemFree_v2(CUdeviceptr ptr) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  if (CUresult r = refuseWhileCapturing())
    return r;
  auto it = state().allocations.find(uintptr_t(ptr));
  if (it == state().allocations.end())
    return kInvalidValue;
  std::free(reinterpret_cast<void *>(it->first));
  state().allocations.erase(it);
  return kSuccess;
}

static Stream *stream(void *handle) {
  auto *s = static_cast<Stream *>(handle);
  return state().streams.count(s) ? s : nullptr;
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes,
                              void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  if (CUresult r = refuseWhileCapturing())
    return r;
  if (!inAllocation(dst, bytes))
    return kInvalidValue;
  std::memcpy(reinterpret_cast<void *>(uintptr_t(dst)), src, bytes);
  return kSuccess;
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t bytes,
                              void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  if (CUresult r = refuseWhileCapturing())
    return r;
  if (!inAllocation(src, bytes))
    return kInvalidValue;
  std::memcpy(dst, reinterpret_cast<const void *>(uintptr_t(src)), bytes);
  return kSuccess;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t bytes,
                         void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!stream(handle))
    return kInvalidHandle;
  if (CUresult r = refuseWhileCapturing())
    return r;
  if (!inAllocation(dst, bytes))
    return kInvalidValue;
  std::memset(reinterpret_cast<void *>(uintptr_t(dst)), value, bytes);
  return kSuccess;
}

CUresult cuModuleLoadDataEx(void **module, const void *image, unsigned count,
                            int *options, void **values) {
  NEED_CONTEXT();
  char *errorLog = nullptr;
  size_t errorSize = 0;
  for (unsigned i = 0; i < count; ++i) {
    if (options[i] == 5)
      errorLog = static_cast<char *>(values[i]);
    if (options[i] == 6)
      errorSize = size_t(reinterpret_cast<uintptr_t>(values[i]));
  }
  auto *m = new Module;
  std::string log;
  if (!parsePtx(static_cast<const char *>(image), *m, log)) {
    delete m;
    if (errorLog && errorSize > 0) {
      std::strncpy(errorLog, log.c_str(), errorSize);
      errorLog[errorSize - 1] = '\0';
    }
    return kInvalidPtx;
  }
  std::lock_guard<std::mutex> lock(state().mutex);
  state().modules.insert(m);
  *module = m;
  return kSuccess;
}

CUresult cuModuleGetFunction(void **function, void *module, const char *name) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *m = static_cast<Module *>(module);
  if (!state().modules.count(m))
    return kInvalidHandle;
  for (size_t i = 0; i < m->entries.size(); ++i)
    if (m->entries[i].name == name) {
      auto *f = new Function{m, i};
      state().functions.insert(f);
      *function = f;
      return kSuccess;
    }
  return kNotFound;
}

CUresult cuModuleUnload(void *module) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *m = static_cast<Module *>(module);
  if (!state().modules.erase(m))
    return kInvalidHandle;
  for (auto it = state().functions.begin(); it != state().functions.end();)
    if ((*it)->module == m) {
      delete *it;
      it = state().functions.erase(it);
    } else {
      ++it;
    }
  delete m;
  return kSuccess;
}

CUresult cuFuncGetAttribute(int *value, int attribute, void *function) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  if (!state().functions.count(static_cast<Function *>(function)))
    return kInvalidHandle;
  if (attribute != 0)
    return kInvalidValue;
  *value = 1024;
  return kSuccess;
}

CUresult cuLaunchKernel(void *function, unsigned gx, unsigned gy, unsigned gz,
                        unsigned bx, unsigned by, unsigned bz, unsigned shared,
                        void *handle, void **params, void **extra) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *f = static_cast<Function *>(function);
  Stream *s = stream(handle);
  if (!state().functions.count(f) || !s)
    return kInvalidHandle;
  if (gx == 0 || gy != 1 || gz != 1 || bx == 0 || bx > 1024 || by != 1 ||
      bz != 1 || shared != 0 || extra || !params)
    return kInvalidValue;
  Launch l{f, gx, bx, {}};
  for (size_t i = 0; i < f->module->entries[f->index].params; ++i) {
    uint64_t v;
    std::memcpy(&v, params[i], 8);
    l.params.push_back(v);
  }
  if (s->capturing) {
    s->capture->launches.push_back(std::move(l));
    return kSuccess;
  }
  ++state().directLaunches;
  run(s, l);
  return kSuccess;
}

CUresult cuStreamCreate(void **handle, unsigned flags) {
  NEED_CONTEXT();
  if (flags != 1) // the device asks for a non-blocking stream
    return kInvalidValue;
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *s = new Stream;
  state().streams.insert(s);
  *handle = s;
  return kSuccess;
}

CUresult cuStreamSynchronize(void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  if (s->capturing) {
    s->invalidated = true;
    return kCaptureUnsupported;
  }
  return s->error;
}

CUresult cuStreamDestroy_v2(void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  state().streams.erase(s);
  delete s->capture;
  delete s;
  return kSuccess;
}

CUresult cuStreamBeginCapture_v2(void *handle, int mode) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  if (s->capturing || mode < 0 || mode > 2)
    return kInvalidValue;
  s->capturing = true;
  s->invalidated = false;
  s->capture = new Graph;
  return kSuccess;
}

CUresult cuStreamEndCapture(void *handle, void **graph) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  Stream *s = stream(handle);
  if (!s)
    return kInvalidHandle;
  if (!s->capturing)
    return kInvalidValue;
  s->capturing = false;
  Graph *g = s->capture;
  s->capture = nullptr;
  if (s->invalidated) {
    delete g;
    *graph = nullptr;
    return kCaptureInvalidated;
  }
  state().graphs.insert(g);
  ++state().captures;
  *graph = g;
  return kSuccess;
}

CUresult cuGraphInstantiateWithFlags(void **exec, void *graph,
                                     unsigned long long flags) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *g = static_cast<Graph *>(graph);
  if (!state().graphs.count(g) || flags != 0)
    return kInvalidValue;
  auto *e = new Graph(*g);
  state().execs.insert(e);
  *exec = e;
  return kSuccess;
}

CUresult cuGraphLaunch(void *exec, void *handle) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *e = static_cast<Graph *>(exec);
  Stream *s = stream(handle);
  if (!state().execs.count(e) || !s || s->capturing)
    return kInvalidValue;
  ++state().graphLaunches;
  for (const Launch &l : e->launches)
    run(s, l);
  return kSuccess;
}

CUresult cuGraphExecDestroy(void *exec) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *e = static_cast<Graph *>(exec);
  if (!state().execs.erase(e))
    return kInvalidValue;
  delete e;
  return kSuccess;
}

CUresult cuGraphDestroy(void *graph) {
  NEED_CONTEXT();
  std::lock_guard<std::mutex> lock(state().mutex);
  auto *g = static_cast<Graph *>(graph);
  if (!state().graphs.erase(g))
    return kInvalidValue;
  delete g;
  return kSuccess;
}

} // extern "C"
