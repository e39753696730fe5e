//===- WeightsTest.cpp - random initialization ----------------------------===//

#include "moec/Runtime/Weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

using namespace moec::rt;

namespace {

ParamSpec param(const std::string &name, InitKind init, double std,
                int64_t count) {
  ParamSpec p;
  p.name = name;
  p.shape = {count};
  p.dtype = "f32";
  p.init = init;
  p.std = std;
  return p;
}

std::vector<float> init(const ParamSpec &p, uint64_t seed) {
  std::vector<float> out(size_t(p.count()));
  initParameter(p, seed, out.data());
  return out;
}

struct Stats {
  double mean, std, maxAbs;
};

Stats stats(const std::vector<float> &v) {
  double sum = 0, sq = 0, maxAbs = 0;
  for (float x : v) {
    sum += x;
    maxAbs = std::max(maxAbs, double(std::fabs(x)));
  }
  double mean = sum / double(v.size());
  for (float x : v)
    sq += (x - mean) * (x - mean);
  return {mean, std::sqrt(sq / double(v.size())), maxAbs};
}

TEST(Weights, ReferenceStreams) {
  // Published reference outputs: splitmix64 from state 0, and xoshiro256**
  // seeded through it.
  uint64_t state = 0;
  EXPECT_EQ(splitmix64(state), 0xe220a8397b1dcdafULL);
  Xoshiro256 rng(0);
  EXPECT_EQ(rng.next(), 0x99ec5f36cb75f2b4ULL);
  for (int i = 0; i < 1000; ++i) {
    double u = rng.uniform();
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
}

TEST(Weights, GoldenValues) {
  // Pinned so that other implementations (docs/runtime.md) can check
  // themselves: normal(std 0.02) for parameter "w" with seed 42.
  std::vector<float> w = init(param("w", InitKind::Normal, 0.02, 4), 42);
  EXPECT_FLOAT_EQ(w[0], -0.0026298542506992817f);
  EXPECT_FLOAT_EQ(w[1], -0.021139279007911682f);
  EXPECT_FLOAT_EQ(w[2], -0.05790448561310768f);
  EXPECT_FLOAT_EQ(w[3], 0.038639992475509644f);
}

TEST(Weights, Deterministic) {
  ParamSpec a =
      param("blocks.0.attn.qkv.weight", InitKind::TruncNormal, 0.02, 1000);
  EXPECT_EQ(init(a, 7), init(a, 7));
  EXPECT_NE(init(a, 7), init(a, 8));
  ParamSpec b = a;
  b.name = "blocks.1.attn.qkv.weight";
  EXPECT_NE(init(a, 7), init(b, 7));
  // A longer parameter starts with the same values: each element depends
  // only on the seed, the name and its index.
  ParamSpec longer = a;
  longer.shape = {2000};
  std::vector<float> full = init(longer, 7);
  EXPECT_EQ(std::vector<float>(full.begin(), full.begin() + 1000), init(a, 7));
}

TEST(Weights, Constants) {
  for (float x : init(param("z", InitKind::Zeros, 0, 33), 1))
    EXPECT_EQ(x, 0.0f);
  for (float x : init(param("o", InitKind::Ones, 0, 33), 1))
    EXPECT_EQ(x, 1.0f);
}

TEST(Weights, NormalStatistics) {
  const double sigma = 0.5;
  Stats s = stats(init(param("n", InitKind::Normal, sigma, 200000), 3));
  EXPECT_NEAR(s.mean, 0.0, 0.01 * sigma);
  EXPECT_NEAR(s.std, sigma, 0.05 * sigma);
  EXPECT_GT(s.maxAbs, 3 * sigma); // not truncated
}

TEST(Weights, TruncNormalStatistics) {
  for (double sigma : {0.02, 1.0}) {
    std::vector<float> v =
        init(param("t", InitKind::TruncNormal, sigma, 200000), 11);
    Stats s = stats(v);
    EXPECT_NEAR(s.mean, 0.0, 0.01 * sigma);
    // N(0, sigma) truncated to +-2 sigma has std 0.8796 sigma.
    EXPECT_NEAR(s.std, 0.8796 * sigma, 0.05 * 0.8796 * sigma);
    for (float x : v)
      ASSERT_LE(std::fabs(x), float(2 * sigma));
    EXPECT_GT(s.maxAbs, 1.9 * sigma);
  }
}

} // namespace

// The train loop checkpoints its noise generator: a sampler restored from
// toWords() continues the same sequence, spare included.
TEST(Weights, NormalSamplerStateRoundTrip) {
  for (int consumed : {0, 1, 2, 7}) {
    NormalSampler a(99);
    for (int i = 0; i < consumed; ++i)
      a.next();
    std::vector<uint64_t> words = a.toWords();
    ASSERT_EQ(words.size(), 7u);
    EXPECT_EQ(words[0], kNormalSamplerTag);
    EXPECT_EQ(words[5], uint64_t(consumed % 2));
    Expected<NormalSampler> b = NormalSampler::fromWords(words);
    ASSERT_TRUE(b) << b.error().message();
    for (int i = 0; i < 9; ++i)
      EXPECT_EQ(a.next(), b->next()) << "after " << consumed << " + " << i;
  }
  NormalSampler c(1);
  std::vector<uint64_t> words = c.toWords();
  words[0] ^= 1;
  EXPECT_EQ(NormalSampler::fromWords(words).error().message(),
            "normal sampler state does not start with its tag");
  words.pop_back();
  EXPECT_EQ(NormalSampler::fromWords(words).error().message(),
            "normal sampler state has 6 words (expected 7)");
}
