//===- SpecLimitsTest.cpp - Tests for the spec's size limits --------------===//
//
// Unit tests for the caps of docs/spec.md#limits: per-field caps, the derived
// totals (parameters, FLOPs per image, activation bytes) that parseSpec
// checks, and checkMemory, which moec compile runs for the batch and entry
// points it compiles. Absurd specs must fail quickly, before any IR exists.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include "SpecTestUtil.h"

#include <gtest/gtest.h>

#include <chrono>

using namespace moec::spec;
using namespace moec::spec::spectest;

namespace {

/// "POINTER: MESSAGE" of the error for `text`, or "<parsed>".
std::string problemOf(const std::string &text) {
  ParseResult result = parse(text);
  if (result)
    return "<parsed>";
  return result.error->pointer + ": " + result.error->message;
}

/// A dense model on image-folder data with the given model fields.
std::string imageFolder(const std::string &model) {
  return R"({"name": "t", "model": {)" + model +
         R"(, "classes": 10}, "data": {"dataset": "image-folder",
         "path": "images"}})";
}

} // namespace

TEST(SpecLimitsTest, FieldCaps) {
  EXPECT_EQ(
      problemOf(referenceWith(R"("width": 64)", R"("width": 2147483648)")),
      "/model/width: must be <= 16384, got 2147483648");
  EXPECT_EQ(problemOf(referenceWith(R"("depth": 6)", R"("depth": 257)")),
            "/model/depth: must be <= 256, got 257");
  EXPECT_EQ(
      problemOf(referenceWith(R"("batch": 128)", R"("batch": 1099511627776)")),
      "/train/batch: must be <= 65536, got 1099511627776");
  EXPECT_EQ(
      problemOf(referenceWith(R"("experts": 4)", R"("experts": 1000000000)")),
      "/moe/experts: must be <= 4096, got 1000000000");
  EXPECT_EQ(problemOf(referenceWith(R"("top_k": 2,)",
                                    R"("top_k": 2, "expert_hidden": 65537,)")),
            "/moe/expert_hidden: must be <= 65536, got 65537");
  EXPECT_EQ(
      problemOf(referenceWith(R"("mlp_ratio": 2)", R"("mlp_ratio": 1025)")),
      "/model/mlp_ratio: round(mlp_ratio * width) must be <= 65536, "
      "got round(1025 * 64) = 65600");
  EXPECT_EQ(problemOf(referenceWith(R"("seed": 0)",
                                    R"("seed": 9223372036854775808)")),
            "/train/seed: must be <= 9223372036854775807, got "
            "9223372036854775808");
  EXPECT_EQ(problemOf(referenceWith(R"("seed": 0)",
                                    R"("seed": 18446744073709551615)")),
            "/train/seed: must be <= 9223372036854775807, got "
            "18446744073709551615");
  EXPECT_EQ(problemOf(imageFolder(R"("input": {"channels": 3,
      "height": 1099511627776, "width": 32}, "patch_size": 4, "width": 64,
      "depth": 1, "heads": 4)")),
            "/model/input/height: must be <= 4096, got 1099511627776");
  // Numbers stay within f32, which the kernels and moec-run read them in.
  EXPECT_EQ(problemOf(referenceWith(R"("lr": 0.001)", R"("lr": 1e-50)")),
            "/train/optimizer/lr: must be >= 1.401298464324817e-45 (the "
            "smallest positive f32), got 1e-50");
  EXPECT_EQ(
      problemOf(referenceWith(R"("grad_clip": 1.0)", R"("grad_clip": 1e39)")),
      "/train/optimizer/grad_clip: must be <= 3.4028234663852886e+38 in "
      "magnitude (the largest f32), got 1e+39");
  // The caps themselves are allowed.
  EXPECT_EQ(problemOf(referenceWith(R"("seed": 0)",
                                    R"("seed": 9223372036854775807)")),
            "<parsed>");
  EXPECT_EQ(problemOf(referenceWith(R"("batch": 128)", R"("batch": 65536)")),
            "<parsed>");
}

TEST(SpecLimitsTest, ReferenceTotals) {
  Spec spec = parseOk(kReference);
  SpecTotals totals = estimateTotals(spec);
  // The artifact's parameter table (moec-run inspect) has 305930 floats:
  // patch embedding 1088, class token 64, positions 3200, six attention
  // blocks 101376, four MLPs 66304, two MoE layers 133120, norm and head 778.
  EXPECT_DOUBLE_EQ(totals.parameters, 305930);
  EXPECT_DOUBLE_EQ(totals.expertParameters, 2 * 4 * 16576);
  EXPECT_GT(totals.flopsPerImage, 1e6);
  EXPECT_LT(totals.flopsPerImage, 1e8);
  // The largest tensor of one image: the experts' hidden activations, 4
  // experts x 50 slots (capacity factor 2 keeps every token) x 128 floats.
  EXPECT_DOUBLE_EQ(totals.largestTensorBytesPerImage, 4 * 4 * 50 * 128);
  EXPECT_GT(totals.activationBytesPerImage, totals.largestTensorBytesPerImage);
}

TEST(SpecLimitsTest, TooManyParameters) {
  // 64 blocks of width 16384: 1.4e11 parameters, each field within its cap.
  EXPECT_EQ(problemOf(imageFolder(R"("input": {"channels": 3, "height": 32,
      "width": 32}, "patch_size": 16, "width": 16384, "depth": 64,
      "heads": 16, "mlp_ratio": 2)")),
            "/model/width: the model would have 137463382026 parameters, "
            "more than the limit of 2147483648");
  // Routed experts holding most of them are blamed instead.
  EXPECT_EQ(problemOf(referenceWith(R"("experts": 4,)",
                                    R"("experts": 4096,
                                       "expert_hidden": 65536,)")),
            "/moe/experts: the model would have 69257569034 parameters, "
            "more than the limit of 2147483648");
}

TEST(SpecLimitsTest, TooManyFlops) {
  // 4096x4096 pixels in 1x1 patches: 16.8 M tokens, quadratic attention.
  std::string problem = problemOf(imageFolder(R"("input": {"channels": 1,
      "height": 4096, "width": 4096}, "patch_size": 1, "width": 64,
      "depth": 1, "heads": 4)"));
  EXPECT_EQ(problem.rfind("/model/input: the forward pass would take ", 0), 0u)
      << problem;
  EXPECT_NE(problem.find("floating-point operations per image, more than the "
                         "limit of 1e13"),
            std::string::npos)
      << problem;
}

TEST(SpecLimitsTest, LargestTensorTooLarge) {
  // One head per channel on 1025 tokens: 1024 x 1025^2 attention scores
  // (4.3 GB), while the FLOPs stay small.
  EXPECT_EQ(problemOf(imageFolder(R"("input": {"channels": 1, "height": 32,
      "width": 32}, "patch_size": 1, "width": 1024, "depth": 1,
      "heads": 1024)")),
            "/model/input: one image's largest activation would take 4.01 "
            "GiB, more than the limit of 4 GiB");
}

TEST(SpecLimitsTest, ActivationsTooLarge) {
  // 256 blocks, each keeping 64 x 1025^2 attention scores twice.
  EXPECT_EQ(problemOf(imageFolder(R"("input": {"channels": 1, "height": 32,
      "width": 32}, "patch_size": 1, "width": 64, "depth": 256,
      "heads": 64)")),
            "/model/input: one image's activations would take 129 GiB, more "
            "than the limit of 9.31 GiB");
}

TEST(SpecLimitsTest, SinkhornIterationsCountInActivations) {
  std::string spec = referenceWith(R"("kind": "token-choice",
      "noise_std": 1.0)",
                                   R"("kind": "sinkhorn", "iterations": 100)");
  spec = spec.replace(spec.find(R"("load": 0.005)"), 13, R"("z_loss": 0)");
  Spec few = parseOk(spec);
  SpecTotals many = estimateTotals(few);
  few.moe.layers[0].settings.router.sinkhornIters = 1;
  few.moe.layers[1].settings.router.sinkhornIters = 1;
  EXPECT_GT(many.activationBytesPerImage,
            estimateTotals(few).activationBytesPerImage + 2 * 99 * 50 * 4 * 4 -
                1);
  EXPECT_EQ(problemOf(spec.replace(spec.find(R"("iterations": 100)"), 17,
                                   R"("iterations": 1099511627776)")),
            "/moe/router/iterations: must be <= 100, got 1099511627776");
}

TEST(SpecLimitsTest, Memory) {
  Spec spec = parseOk(kReference);
  SpecTotals totals = estimateTotals(spec);
  double training =
      128 * totals.activationBytesPerImage + 16 * totals.parameters;
  uint64_t enough = static_cast<uint64_t>(training) + 1;
  EXPECT_FALSE(checkMemory(spec, 128, /*training=*/true, enough));
  std::optional<SpecError> error =
      checkMemory(spec, 128, /*training=*/true, enough - 2);
  ASSERT_TRUE(error);
  EXPECT_EQ(error->pointer, "/train/batch");
  EXPECT_EQ(error->message.rfind("a training step needs at least ", 0), 0u)
      << error->message;
  EXPECT_NE(error->message.find("(128 images x "), std::string::npos)
      << error->message;
  EXPECT_NE(error->message.find("more than this machine's memory"),
            std::string::npos)
      << error->message;
  // Inference needs less: the largest tensor per image and the weights.
  EXPECT_FALSE(checkMemory(spec, 128, /*training=*/false, enough - 2));
  EXPECT_TRUE(checkMemory(spec, 128, /*training=*/false, 1024));
  // The default is this machine's physical memory.
  EXPECT_GT(physicalMemoryBytes(), uint64_t(1) << 26);
  EXPECT_FALSE(checkMemory(spec, 1, /*training=*/true));
  EXPECT_TRUE(checkMemory(spec, 65536, /*training=*/true, uint64_t(1) << 30));
}

TEST(SpecLimitsTest, AbsurdSpecsFailFast) {
  const std::pair<const char *, const char *> absurd[] = {
      {R"("width": 64)", R"("width": 2147483648)"},
      {R"("depth": 6)", R"("depth": 1000000000)"},
      {R"("experts": 4)", R"("experts": 1000000000)"},
      {R"("batch": 128)", R"("batch": 1099511627776)"},
  };
  for (auto [from, to] : absurd) {
    auto start = std::chrono::steady_clock::now();
    EXPECT_NE(problemOf(referenceWith(from, to)), "<parsed>") << to;
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    EXPECT_LT(seconds, 1.0) << to;
  }
}
