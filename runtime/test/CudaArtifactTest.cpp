//===- CudaArtifactTest.cpp - loading artifacts of target cuda ------------===//
//
// The loader's checks of a cuda artifact (no GPU needed): the manifest's
// "cuda" object and target CPU, the plan's scratch_bytes, and the kernels
// section as PTX text with an .entry per plan kernel; and the target checks
// of Session::create in both directions.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Report.h"
#include "moec/Runtime/Session.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <functional>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

Expected<std::shared_ptr<const Artifact>>
load(const std::vector<uint8_t> &bytes) {
  return Artifact::fromBytes(bytes, "cuda.moec");
}

/// The Format error of loading `bytes`.
std::string formatError(const std::vector<uint8_t> &bytes) {
  Expected<std::shared_ptr<const Artifact>> a = load(bytes);
  EXPECT_FALSE(a);
  if (a)
    return "";
  EXPECT_EQ(a.error().code(), ErrorCode::Format) << a.error().message();
  return a.error().message();
}

TEST(CudaArtifact, LoadsTheContract) {
  Expected<std::shared_ptr<const Artifact>> a = load(cudaArtifact());
  ASSERT_TRUE(a) << a.error().message();
  const Manifest &m = (*a)->manifest();
  EXPECT_EQ(m.target, "cuda");
  EXPECT_EQ(m.cuda.arch, "sm_80");
  EXPECT_EQ(m.cuda.blockThreads, 32);
  EXPECT_EQ(m.cuda.format, "ptx");
  EXPECT_TRUE(m.targetCpu.empty());
  const std::vector<Dispatch> &infer = (*a)->plan().entries.at("infer");
  ASSERT_EQ(infer.size(), 2u);
  EXPECT_EQ(infer[0].scratchBytes, 0u);
  EXPECT_EQ(infer[1].scratchBytes, 128u);
  std::string report = inspectReport(**a);
  EXPECT_NE(report.find("cuda:         sm_80, 32 threads per block, ptx\n"),
            std::string::npos)
      << report;

  // sm_90a, and an empty target_cpu (the other way to say "none").
  json manifest = cudaManifest();
  manifest["cuda"]["arch"] = "sm_90a";
  manifest["target_cpu"] = {{"name", ""}, {"features", json::array()}};
  a = load(cudaArtifact(manifest));
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_EQ((*a)->manifest().cuda.arch, "sm_90a");

  // A cpu artifact ignores a "cuda" object and may carry scratch_bytes.
  manifest = tinyManifest();
  manifest["cuda"] = {{"arch", "sm_1"}};
  json plan = tinyPlan();
  plan["entries"]["infer"][1]["scratch_bytes"] = 64;
  a = load(tinyArtifact(manifest, plan));
  ASSERT_TRUE(a) << a.error().message();
  EXPECT_TRUE((*a)->manifest().cuda.arch.empty());
  EXPECT_EQ((*a)->plan().entries.at("infer")[1].scratchBytes, 64u);
}

TEST(CudaArtifact, ManifestErrors) {
  auto error = [](const std::function<void(json &)> &edit) {
    json manifest = cudaManifest();
    edit(manifest);
    return formatError(cudaArtifact(manifest));
  };
  EXPECT_EQ(error([](json &m) { m.erase("cuda"); }),
            "cuda.moec: manifest: /cuda: required field is missing");
  EXPECT_EQ(error([](json &m) { m["cuda"] = "sm_80"; }),
            "cuda.moec: manifest: /cuda: expected an object");
  EXPECT_EQ(error([](json &m) { m["cuda"]["arch"] = "sm_75"; }),
            "cuda.moec: manifest: /cuda/arch: unknown CUDA architecture "
            "'sm_75' (expected one of: sm_80, sm_90a)");
  EXPECT_EQ(error([](json &m) { m["cuda"].erase("block_threads"); }),
            "cuda.moec: manifest: /cuda/block_threads: required field is "
            "missing");
  EXPECT_EQ(error([](json &m) { m["cuda"]["block_threads"] = 0; }),
            "cuda.moec: manifest: /cuda/block_threads: expected a positive "
            "integer, got 0");
  EXPECT_EQ(error([](json &m) { m["cuda"]["block_threads"] = 2048; }),
            "cuda.moec: manifest: /cuda/block_threads: expected at most 1024 "
            "(threads per block), got 2048");
  EXPECT_EQ(error([](json &m) { m["cuda"]["format"] = "cubin"; }),
            "cuda.moec: manifest: /cuda/format: unknown kernel format "
            "'cubin' (expected one of: ptx)");
  EXPECT_EQ(error([](json &m) {
              m["target_cpu"] = {{"name", "znver4"}, {"features", {"avx2"}}};
            }),
            "cuda.moec: manifest: /target_cpu: names CPU 'znver4' with 1 "
            "features, but a cuda artifact has no target CPU (omit it or "
            "leave it empty)");
}

TEST(CudaArtifact, ScratchBytes) {
  json plan = cudaPlan();
  plan["entries"]["infer"][1]["scratch_bytes"] = -1;
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), plan)),
            "cuda.moec: plan: /entries/infer/1/scratch_bytes: expected a "
            "non-negative integer, got -1");
  plan["entries"]["infer"][1]["scratch_bytes"] = "128";
  EXPECT_NE(formatError(cudaArtifact(cudaManifest(), plan))
                .find("/entries/infer/1/scratch_bytes"),
            std::string::npos);
  plan["entries"]["infer"][1]["scratch_bytes"] = int64_t(1) << 39;
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), plan)),
            "cuda.moec: plan: /entries/infer/1/scratch_bytes: 549755813888 "
            "bytes for each of up to 4 units exceed the limit of "
            "1099511627776 scratch bytes per dispatch");
}

TEST(CudaArtifact, KernelsMustBePtx) {
  const std::string prefix =
      "cuda.moec: the kernels section of this cuda artifact ";
  const std::string ptx = cudaPtx();
  // An ELF library where PTX belongs.
  EXPECT_EQ(
      formatError(cudaArtifact(cudaManifest(), cudaPlan(), kernelLibrary())),
      prefix + "is an ELF file, not PTX text");
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(), ptx)),
            prefix + "is not PTX text (it does not end in a NUL byte)");
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(), "")),
            prefix + "is not PTX text (it does not end in a NUL byte)");
  std::string nul = ptx + std::string(1, '\0');
  nul[10] = '\0';
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(), nul)),
            prefix +
                "is not PTX text (a NUL byte at offset 10 before its "
                "end, " +
                std::to_string(ptx.size()) + ")");
  std::string noVersion = ptx;
  noVersion.replace(noVersion.find(".version"), 8, "//ersion");
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(),
                                     noVersion + std::string(1, '\0'))),
            prefix + "is not PTX text (no .version directive)");
  std::string noTarget = ptx;
  noTarget.replace(noTarget.find(".target"), 7, ".targe_");
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(),
                                     noTarget + std::string(1, '\0'))),
            prefix + "is not PTX text (no .target directive)");

  // A plan kernel without its .entry; a name that only starts like one
  // does not count.
  std::string renamed = ptx;
  for (size_t at = renamed.find("moec_g1"); at != std::string::npos;
       at = renamed.find("moec_g1", at + 8))
    renamed.replace(at, 7, "moec_g1x");
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), cudaPlan(),
                                     renamed + std::string(1, '\0'))),
            prefix + "has no '.entry moec_g1': kernel 'moec_g1' named in the "
                     "plan is not in the PTX");
  json plan = cudaPlan();
  plan["entries"]["infer"][0]["kernel"] = "moec_g7";
  EXPECT_EQ(formatError(cudaArtifact(cudaManifest(), plan)),
            prefix + "has no '.entry moec_g7': kernel 'moec_g7' named in the "
                     "plan is not in the PTX");
}

// Session::create checks the target before it creates the device, so the
// message is the same with or without a GPU.
TEST(CudaArtifact, SessionTargetChecks) {
  Expected<std::shared_ptr<const Artifact>> cuda = load(cudaArtifact());
  ASSERT_TRUE(cuda);
  Expected<std::unique_ptr<Session>> s = Session::create(*cuda, "cpu", 1);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), ErrorCode::Argument);
  EXPECT_EQ(s.error().message(),
            "cuda.moec: compiled for target 'cuda'; run it with --device=cuda");

  Expected<std::shared_ptr<const Artifact>> cpu =
      Artifact::fromBytes(tinyArtifact(), "tiny.moec");
  ASSERT_TRUE(cpu);
  s = Session::create(*cpu, "cuda", 0);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code(), ErrorCode::Argument);
  EXPECT_EQ(s.error().message(),
            "tiny.moec: compiled for target 'cpu'; run it with --device=cpu");

  json manifest = tinyManifest();
  manifest["target"] = "rocm";
  Expected<std::shared_ptr<const Artifact>> other =
      Artifact::fromBytes(tinyArtifact(manifest), "rocm.moec");
  ASSERT_TRUE(other) << other.error().message();
  s = Session::create(*other, "cpu", 1);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message(),
            "rocm.moec: compiled for target 'rocm', which device 'cpu' cannot "
            "run (this runtime has: cpu, cuda)");

  s = Session::create(*cpu, "tpu", 1);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().message(),
            "unknown device 'tpu' (this runtime has: cpu, cuda)");
}

} // namespace
