//===- CudaDeviceTest.cpp - the cuda device -------------------------------===//
//
// Without a GPU: createDevice("cuda") fails with a Device error saying no
// CUDA device is visible (also through a stub libcuda.so.1, which resolves
// every entry point and fails cuInit), and moec-run --device=cuda exits 1
// with that message. With a GPU (the tests skip with "no CUDA device
// visible: ..." otherwise): memory round trips, and the cuda test model
// (TestUtil.h, hand-written PTX) run through a Session: CUDA graphs
// captured per image count and replayed, profiling dispatch by dispatch,
// the host copies of run(), input() and output(), scratch memory.
// Runtime.MockCuda runs these tests on any machine against MockCuda.cpp, a
// libcuda.so.1 that runs the test model on the host; the CudaMockDriver
// tests only run there.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Device.h"
#include "moec/Runtime/Session.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <filesystem>

using namespace moec::rt;
using namespace moec::rt::test;
namespace fs = std::filesystem;

namespace {

/// The cuda device, or why there is none.
Expected<std::unique_ptr<Device>> cudaDevice() {
  return createDevice("cuda", 0);
}

#define REQUIRE_CUDA_DEVICE()                                                  \
  do {                                                                         \
    Expected<std::unique_ptr<Device>> probe = cudaDevice();                    \
    if (!probe)                                                                \
      GTEST_SKIP() << "no CUDA device visible: " << probe.error().message();   \
  } while (false)

TEST(CudaDevice, CreateOnThisMachine) {
  Expected<std::unique_ptr<Device>> device = cudaDevice();
  if (device) {
    EXPECT_EQ((*device)->name(), "cuda");
    EXPECT_EQ((*device)->threads(), 1);
    EXPECT_FALSE((*device)->hostAccessible());
    return;
  }
  EXPECT_EQ(device.error().code(), ErrorCode::Device);
  const std::string &message = device.error().message();
  EXPECT_EQ(message.rfind("device 'cuda': ", 0), 0u) << message;
  // No driver or no GPU: the usual reasons on a machine without one.
  if (contains(message, "(libcuda.so.1: ") || contains(message, "(cuInit: ")) {
    EXPECT_TRUE(contains(message, "no CUDA device is visible")) << message;
  }
  // Asking again gives the same answer (the driver is probed once).
  Expected<std::unique_ptr<Device>> again = cudaDevice();
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().message(), message);
  // The thread count is checked as for cpu, before the driver.
  Expected<std::unique_ptr<Device>> bad = createDevice("cuda", -1);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(),
            "threads must be >= 0 (0 = every core), got -1");
}

/// moec-run with `env` (shell assignments) before it.
CommandResult runWithEnv(const std::string &env, const std::string &args,
                         const std::string &scratch) {
  std::string out = scratch + "/stdout", err = scratch + "/stderr";
  std::string command = env + " '" + MOEC_RUN_PATH + "' " + args + " >'" + out +
                        "' 2>'" + err + "' </dev/null";
  int status = std::system(command.c_str());
  auto text = [](const std::string &path) {
    std::vector<uint8_t> bytes = readBytes(path);
    return std::string(bytes.begin(), bytes.end());
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text(out), text(err)};
}

TEST(CudaDevice, MoecRunDeviceFlag) {
  TempDir dir;
  const std::string cuda = dir / "cuda.moec", cpu = dir / "tiny.moec";
  writeBytes(cuda, cudaArtifact());
  writeBytes(cpu, tinyArtifact());
  std::vector<float> images = tinyImages(2);
  writeBytes(dir / "in.f32", images.data(), images.size() * 4);
  ASSERT_EQ(runMoecRun(cat("init '", cpu, "' -o '", dir / "w.safetensors", "'"),
                       dir.path())
                .rc,
            0);

  // A model for the other device, whichever devices this machine has.
  CommandResult r = runMoecRun(
      cat("run '", cuda, "' --weights '", dir / "w.safetensors", "' --input '",
          dir / "in.f32", "' --output '", dir / "out.f32", "'"),
      dir.path());
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err, "moec-run: error: " + cuda +
                       ": compiled for target 'cuda'; run it with "
                       "--device=cuda\n");
  r = runMoecRun(
      cat("infer '", cpu, "' --device=cuda --data '", dir.path(), "'"),
      dir.path());
  EXPECT_EQ(r.rc, 2);
  EXPECT_EQ(r.err, "moec-run: error: " + cpu +
                       ": compiled for target 'cpu'; run it with "
                       "--device=cpu\n");
  r = runMoecRun(cat("infer '", cpu, "' --device tpu"), dir.path());
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, "moec-run: error: --device: expected cpu or "
                              "cuda, got 'tpu'\n"))
      << r.err;
  r = runMoecRun(cat("init '", cpu, "' --device=cpu -o x"), dir.path());
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, "unknown option '--device' for 'init'")) << r.err;

  // init needs no device: a cuda model's initial weights are written here.
  r = runMoecRun(cat("init '", cuda, "' -o '", dir / "cuda.safetensors", "'"),
                 dir.path());
  EXPECT_EQ(r.rc, 0) << r.err;

  if (cudaDevice())
    GTEST_SKIP() << "a CUDA device is visible: the no-device exit is not "
                    "testable here";
  const std::string w = dir / "cuda.safetensors";
  const std::vector<std::string> commands = {
      cat("infer '", cuda, "' --device=cuda --weights '", w, "' --data '",
          dir.path(), "'"),
      cat("run '", cuda, "' --device=cuda --weights '", w, "' --input '",
          dir / "in.f32", "' --output '", dir / "out.f32", "'"),
      cat("call '", cuda, "' --device cuda --entry infer --weights '", w,
          "' --inputs '", dir / "in.safetensors", "' -o '",
          dir / "out.safetensors", "'"),
      cat("train '", cuda, "' --device=cuda --data '", dir.path(), "'"),
      cat("analyze '", cuda, "' --device=cuda --weights '", w, "' -o '",
          dir / "analysis", "'")};
  for (const std::string &command : commands) {
    r = runMoecRun(command, dir.path());
    EXPECT_EQ(r.rc, 1) << command << ": " << r.err;
    EXPECT_EQ(r.err.rfind("moec-run: error: device 'cuda': no CUDA device is "
                          "visible (",
                          0),
              0u)
        << command << ": " << r.err;
  }
}

// The CUDA toolkit's stub libcuda.so exports every entry point and fails
// cuInit: the driver is found, every symbol resolves, and the device still
// says why it is not there.
TEST(CudaDevice, StubDriver) {
  const char *stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  if (!fs::exists(stub))
    GTEST_SKIP() << stub << " is not installed";
  TempDir dir;
  fs::create_symlink(stub, dir / "libcuda.so.1");
  const std::string cuda = dir / "cuda.moec";
  writeBytes(cuda, cudaArtifact());
  std::vector<float> images(static_cast<size_t>(kCudaPixels));
  writeBytes(dir / "in.f32", images.data(), images.size() * 4);
  ASSERT_EQ(
      runMoecRun(cat("init '", cuda, "' -o '", dir / "w.safetensors", "'"),
                 dir.path())
          .rc,
      0);
  CommandResult r = runWithEnv(
      cat("LD_LIBRARY_PATH='", dir.path(), "'"),
      cat("run '", cuda, "' --device=cuda --weights '", dir / "w.safetensors",
          "' --input '", dir / "in.f32", "' --output '", dir / "out.f32", "'"),
      dir.path());
  EXPECT_EQ(r.rc, 1);
  EXPECT_EQ(r.err, "moec-run: error: device 'cuda': no CUDA device is visible "
                   "(cuInit: CUDA_ERROR_STUB_LIBRARY)\n");
}

//===----------------------------------------------------------------------===//
// On a GPU
//===----------------------------------------------------------------------===//

TEST(CudaDevice, MemoryRoundTrip) {
  REQUIRE_CUDA_DEVICE();
  std::unique_ptr<Device> device = std::move(*cudaDevice());
  const size_t n = 1000003;
  void *a = device->allocate(n * 4);
  void *b = device->allocate(0);
  void *c = device->allocate(0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_NE(c, nullptr);
  EXPECT_NE(b, c);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 256, 0u);
  // Zeroed.
  std::vector<float> back(n, 1.0f);
  device->download(back.data(), a, n * 4);
  ASSERT_FALSE(device->synchronize());
  EXPECT_EQ(back[0], 0.0f);
  EXPECT_EQ(back[n - 1], 0.0f);
  // Round trip, and a sub-range at an offset.
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i)
    values[i] = float(i) * 0.5f - 7.0f;
  device->upload(a, values.data(), n * 4);
  device->download(back.data(), a, n * 4);
  ASSERT_FALSE(device->synchronize());
  EXPECT_EQ(std::memcmp(back.data(), values.data(), n * 4), 0);
  float some[3] = {1, 2, 3};
  device->upload(static_cast<char *>(a) + 400, some, sizeof(some));
  float got[5] = {};
  device->download(got, static_cast<char *>(a) + 396, sizeof(got));
  ASSERT_FALSE(device->synchronize());
  EXPECT_EQ(got[0], values[99]);
  EXPECT_EQ(got[1], 1.0f);
  EXPECT_EQ(got[3], 3.0f);
  EXPECT_EQ(got[4], values[103]);
  device->free(a);
  device->free(b);
  device->free(c);
}

/// What the cuda test model computes: 2 x + 1.
std::vector<float> cudaReference(const std::vector<float> &images) {
  std::vector<float> out(images.size());
  for (size_t i = 0; i < images.size(); ++i)
    out[i] = 2 * images[i] + 1;
  return out;
}

std::vector<float> cudaImages(int64_t n, float shift = 0) {
  std::vector<float> images(size_t(n * kCudaPixels));
  for (size_t i = 0; i < images.size(); ++i)
    images[i] = float(int(i * 29 % 31) - 15) / 4.0f + shift;
  return images;
}

class CudaSessionTest : public ::testing::Test {
protected:
  void SetUp() override {
    Expected<std::unique_ptr<Device>> probe = cudaDevice();
    if (!probe)
      GTEST_SKIP() << "no CUDA device visible: " << probe.error().message();
    Expected<std::shared_ptr<const Artifact>> a =
        Artifact::fromBytes(cudaArtifact(), "tinycuda.moec");
    ASSERT_TRUE(a) << a.error().message();
    Expected<std::unique_ptr<Session>> s = Session::create(*a, "cuda", 0);
    ASSERT_TRUE(s) << s.error().message();
    session = std::move(*s);
  }

  /// Runs infer on `images` (any count) and returns the logits.
  std::vector<float> infer(const std::vector<float> &images) {
    int64_t n = int64_t(images.size()) / kCudaPixels;
    std::vector<float> logits(images.size(), -1.0f);
    Error e = session->infer(images.data(), n, logits.data());
    EXPECT_FALSE(e) << e.message();
    return logits;
  }

  std::unique_ptr<Session> session;
};

// Two kernels, the second through its scratch slice: a first call
// captures the graph, later calls replay it, with new inputs each time.
TEST_F(CudaSessionTest, InferAndGraphReplay) {
  EXPECT_EQ(session->threads(), 1);
  EXPECT_FALSE(session->device().hostAccessible());
  for (float shift : {0.0f, 1.5f, -3.0f}) {
    std::vector<float> images = cudaImages(4, shift);
    EXPECT_EQ(infer(images), cudaReference(images)) << shift;
  }
  // Other image counts are other graphs: 3 (one chunk), 9 (4 + 4 + 1).
  for (int64_t n : {3, 9, 3, 1}) {
    std::vector<float> images = cudaImages(n, float(n));
    EXPECT_EQ(infer(images), cudaReference(images)) << n;
  }
}

// Profiling runs the dispatches one by one, each waited for and timed,
// with the same results.
TEST_F(CudaSessionTest, Profiling) {
  session->setProfiling(true);
  std::vector<float> images = cudaImages(4, 2.0f);
  EXPECT_EQ(infer(images), cudaReference(images));
  ASSERT_EQ(session->dispatchSeconds().size(), 2u);
  EXPECT_GT(session->dispatchSeconds()[0], 0.0);
  EXPECT_GT(session->dispatchSeconds()[1], 0.0);
  ASSERT_FALSE(session->run("infer", 2));
  EXPECT_EQ(session->entrySeconds("infer").size(), 2u);
  session->setProfiling(false);
  EXPECT_EQ(infer(images), cudaReference(images));
}

// run() with input() and output(): host copies uploaded before and
// downloaded after, the graph replayed for the same count.
TEST_F(CudaSessionTest, RunThroughHostCopies) {
  Expected<EntryTensor> in = session->input("infer", "images");
  Expected<EntryTensor> out = session->output("infer", "logits");
  ASSERT_TRUE(in);
  ASSERT_TRUE(out);
  for (int round = 0; round < 3; ++round) {
    std::vector<float> images = cudaImages(kBatch, float(round));
    std::memcpy(in->f32(), images.data(), images.size() * 4);
    std::fill(out->f32(), out->f32() + out->count(), -1.0f);
    ASSERT_FALSE(session->run("infer", 3));
    std::vector<float> want = cudaReference(images);
    // Images 0..2 are this call's (image 3's are what the arena held).
    for (int64_t i = 0; i < 3 * kCudaPixels; ++i)
      ASSERT_EQ(out->f32()[i], want[size_t(i)]) << round << " " << i;
  }
  std::vector<float> images = cudaImages(kBatch, 9.0f);
  std::memcpy(in->f32(), images.data(), images.size() * 4);
  ASSERT_FALSE(session->run("infer", kBatch));
  EXPECT_EQ(std::vector<float>(out->f32(), out->f32() + out->count()),
            cudaReference(images));
}

// Two sessions on the device (each its own stream, scratch and graphs).
TEST_F(CudaSessionTest, TwoSessions) {
  Expected<std::shared_ptr<const Artifact>> a =
      Artifact::fromBytes(cudaArtifact(), "other.moec");
  ASSERT_TRUE(a);
  Expected<std::unique_ptr<Session>> other = Session::create(*a, "cuda", 0);
  ASSERT_TRUE(other) << other.error().message();
  std::vector<float> x = cudaImages(4, 1.0f), y = cudaImages(4, -1.0f);
  std::vector<float> lx(x.size()), ly(y.size());
  ASSERT_FALSE(session->infer(x.data(), 4, lx.data()));
  ASSERT_FALSE((*other)->infer(y.data(), 4, ly.data()));
  ASSERT_FALSE(session->infer(x.data(), 4, lx.data()));
  EXPECT_EQ(lx, cudaReference(x));
  EXPECT_EQ(ly, cudaReference(y));
}

// A kernel the PTX lacks is found when the module loads: the loader's
// .entry check is bypassed by naming it only in a comment.
TEST_F(CudaSessionTest, MissingKernelInModule) {
  std::string ptx = cudaPtx();
  ptx += "// .entry moec_g9(\n";
  nlohmann::json plan = cudaPlan();
  plan["entries"]["infer"][1]["kernel"] = "moec_g9";
  Expected<std::shared_ptr<const Artifact>> a = Artifact::fromBytes(
      cudaArtifact(cudaManifest(), plan, ptx + std::string(1, '\0')),
      "missing.moec");
  ASSERT_TRUE(a) << a.error().message();
  Expected<std::unique_ptr<Session>> s = Session::create(*a, "cuda", 0);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), ErrorCode::Format);
  EXPECT_EQ(s.error().message().rfind(
                "missing.moec: kernel 'moec_g9' named in the plan is not in "
                "the PTX module (cuModuleGetFunction: CUDA_ERROR_NOT_FOUND",
                0),
            0u)
      << s.error().message();
}

// PTX the JIT rejects: the error names the file and carries the JIT log.
TEST_F(CudaSessionTest, BadPtxCarriesTheJitLog) {
  std::string ptx = cudaPtx();
  size_t at = ptx.find("add.f32 %f2, %f1, %f1;");
  ASSERT_NE(at, std::string::npos);
  ptx.replace(at, 22, "add.f32 %f2, %f1, %q1;");
  Expected<std::shared_ptr<const Artifact>> a = Artifact::fromBytes(
      cudaArtifact(cudaManifest(), cudaPlan(), ptx + std::string(1, '\0')),
      "bad.moec");
  ASSERT_TRUE(a) << a.error().message();
  Expected<std::unique_ptr<Session>> s = Session::create(*a, "cuda", 0);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), ErrorCode::Format);
  const std::string &message = s.error().message();
  EXPECT_EQ(
      message.rfind("bad.moec: cannot load the PTX kernels on GPU 0 (", 0), 0u)
      << message;
  EXPECT_TRUE(contains(message, "cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX"))
      << message;
  EXPECT_TRUE(contains(message, "%q1")) << message; // the JIT log
}

//===----------------------------------------------------------------------===//
// Against the mock driver (MockCuda.cpp)
//===----------------------------------------------------------------------===//

struct MockStats {
  int64_t captures, graphLaunches, directLaunches;
  int64_t allocations, modules, streams, graphs, execs, retains;
};

/// The mock driver's counters, or false when the real driver (or none) is
/// loaded.
bool mockStats(MockStats &out) {
  if (!cudaDevice())
    return false;
  void *library = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!library)
    return false;
  void *symbol = ::dlsym(library, "moecMockCudaStats");
  ::dlclose(library);
  if (!symbol)
    return false;
  void (*stats)(MockStats *);
  std::memcpy(&stats, &symbol, sizeof(stats));
  stats(&out);
  return true;
}

#define REQUIRE_MOCK_DRIVER(stats)                                             \
  do {                                                                         \
    if (!mockStats(stats))                                                     \
      GTEST_SKIP() << "the mock CUDA driver is not loaded (Runtime.MockCuda "  \
                      "runs this test)";                                       \
  } while (false)

// One graph per (entry point, image count), captured once and replayed;
// profiling launches directly; a released session leaves nothing behind.
TEST(CudaMockDriver, GraphsAndResources) {
  MockStats before, now;
  REQUIRE_MOCK_DRIVER(before);
  {
    Expected<std::shared_ptr<const Artifact>> a =
        Artifact::fromBytes(cudaArtifact(), "tinycuda.moec");
    ASSERT_TRUE(a);
    Expected<std::unique_ptr<Session>> s = Session::create(*a, "cuda", 0);
    ASSERT_TRUE(s) << s.error().message();
    Session &session = **s;
    std::vector<float> images = cudaImages(9), logits(images.size());
    ASSERT_FALSE(session.infer(images.data(), 4, logits.data()));
    ASSERT_FALSE(session.infer(images.data(), 4, logits.data()));
    mockStats(now);
    EXPECT_EQ(now.captures - before.captures, 1);
    EXPECT_EQ(now.graphLaunches - before.graphLaunches, 2);
    EXPECT_EQ(now.directLaunches, before.directLaunches);
    // 9 images: chunks of 4, 4 and 1: one new graph (1 image).
    ASSERT_FALSE(session.infer(images.data(), 9, logits.data()));
    EXPECT_EQ(logits, cudaReference(images));
    mockStats(now);
    EXPECT_EQ(now.captures - before.captures, 2);
    EXPECT_EQ(now.graphLaunches - before.graphLaunches, 5);
    ASSERT_FALSE(session.run("infer", 4)); // the infer graph for 4 again
    mockStats(now);
    EXPECT_EQ(now.captures - before.captures, 2);
    EXPECT_EQ(now.graphLaunches - before.graphLaunches, 6);
    // Profiling: each dispatch launched on its own.
    session.setProfiling(true);
    ASSERT_FALSE(session.infer(images.data(), 4, logits.data()));
    mockStats(now);
    EXPECT_EQ(now.directLaunches - before.directLaunches, 2);
    EXPECT_EQ(now.graphLaunches - before.graphLaunches, 6);
    EXPECT_EQ(std::vector<float>(logits.begin(), logits.begin() + 128),
              cudaReference(
                  std::vector<float>(images.begin(), images.begin() + 128)));
    // Live: the parameter block, the arena, the scratch buffer; one
    // module, one stream, two graphs.
    EXPECT_EQ(now.allocations - before.allocations, 3);
    EXPECT_EQ(now.modules - before.modules, 1);
    EXPECT_EQ(now.streams - before.streams, 1);
    EXPECT_EQ(now.execs - before.execs, 2);
    EXPECT_EQ(now.graphs, before.graphs); // destroyed once instantiated
    EXPECT_EQ(now.retains - before.retains, 1);
  }
  mockStats(now);
  EXPECT_EQ(now.allocations, before.allocations);
  EXPECT_EQ(now.modules, before.modules);
  EXPECT_EQ(now.streams, before.streams);
  EXPECT_EQ(now.execs, before.execs);
  EXPECT_EQ(now.retains, before.retains);
}

// The arch check against the GPU's compute capability.
TEST(CudaMockDriver, ArchMustFitTheGpu) {
  MockStats stats;
  REQUIRE_MOCK_DRIVER(stats);
  nlohmann::json manifest = cudaManifest();
  manifest["cuda"]["arch"] = "sm_90a";
  Expected<std::shared_ptr<const Artifact>> hopper =
      Artifact::fromBytes(cudaArtifact(manifest), "hopper.moec");
  Expected<std::shared_ptr<const Artifact>> ampere =
      Artifact::fromBytes(cudaArtifact(), "ampere.moec");
  ASSERT_TRUE(hopper && ampere);
  EXPECT_TRUE(Session::create(*hopper, "cuda", 0)); // the mock is 9.0
  ::setenv("MOEC_MOCK_CUDA_CC", "8.0", 1);
  Expected<std::unique_ptr<Session>> s = Session::create(*hopper, "cuda", 0);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), ErrorCode::Format);
  EXPECT_EQ(s.error().message(),
            "hopper.moec: compiled for sm_90a, which runs only on compute "
            "capability 9.0 GPUs (H100, H200); GPU 0 (Mock GPU, compute "
            "capability 8.0) is 8.0 (compile the model for sm_80 to run it "
            "here)");
  EXPECT_TRUE(Session::create(*ampere, "cuda", 0));
  ::setenv("MOEC_MOCK_CUDA_CC", "7.5", 1);
  s = Session::create(*ampere, "cuda", 0);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message(),
            "ampere.moec: compiled for sm_80, which needs a GPU of compute "
            "capability 8.0 or newer; GPU 0 (Mock GPU, compute capability "
            "7.5) is 7.5");
  ::setenv("MOEC_MOCK_CUDA_CC", "10.0", 1);
  EXPECT_TRUE(Session::create(*ampere, "cuda", 0));
  ::unsetenv("MOEC_MOCK_CUDA_CC");
}

// A kernel that writes past its buffer: the entry point's error (graph),
// and with profiling the dispatch's.
TEST(CudaMockDriver, KernelFaultsNameTheEntryAndDispatch) {
  MockStats stats;
  REQUIRE_MOCK_DRIVER(stats);
  nlohmann::json plan = cudaPlan();
  // The doubled images land 768 bytes into the 1024-byte arena: the last
  // 256 of their 512 bytes lie outside it.
  plan["entries"]["infer"][0]["args"][1]["offset"] = 768;
  Expected<std::shared_ptr<const Artifact>> a =
      Artifact::fromBytes(cudaArtifact(cudaManifest(), plan), "fault.moec");
  ASSERT_TRUE(a) << a.error().message();
  for (bool profiling : {false, true}) {
    Expected<std::unique_ptr<Session>> s = Session::create(*a, "cuda", 0);
    ASSERT_TRUE(s) << s.error().message();
    (*s)->setProfiling(profiling);
    std::vector<float> images = cudaImages(4), logits(images.size());
    Error e = (*s)->infer(images.data(), 4, logits.data());
    ASSERT_TRUE(e);
    EXPECT_EQ(e.code(), ErrorCode::Device);
    EXPECT_EQ(e.message(),
              profiling
                  ? "device 'cuda': after dispatch 'double' (kernel moec_g0): "
                    "CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was "
                    "encountered"
                  : "device 'cuda': entry 'infer' (4 images) failed "
                    "(--profile runs its dispatches one at a time and names "
                    "the failing one): CUDA_ERROR_ILLEGAL_ADDRESS: an illegal "
                    "memory access was encountered");
  }
}

// A failed copy is reported once, by the next call that can return an
// error; what a failed download wrote is NaN.
TEST(CudaMockDriver, FailedCopiesReportLater) {
  MockStats stats;
  REQUIRE_MOCK_DRIVER(stats);
  std::unique_ptr<Device> device = std::move(*cudaDevice());
  void *p = device->allocate(16);
  ASSERT_NE(p, nullptr);
  float host[8] = {};
  device->download(host, p, sizeof(host)); // 32 bytes from 16
  EXPECT_TRUE(std::isnan(host[0]));
  Error e = device->synchronize();
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Device);
  EXPECT_EQ(e.message(), "device 'cuda': download of 32 bytes: "
                         "CUDA_ERROR_INVALID_VALUE: invalid argument");
  EXPECT_FALSE(device->synchronize());
  device->upload(p, host, sizeof(host));
  device->download(host, p, 16);
  e = device->synchronize();
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(), "device 'cuda': upload of 32 bytes: "
                         "CUDA_ERROR_INVALID_VALUE: invalid argument");
  EXPECT_FALSE(device->synchronize());
  device->free(p);
}

} // namespace
