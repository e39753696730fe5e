//===- Weights.cpp - deterministic random initialization ------------------===//

#include "moec/Runtime/Weights.h"

#include "moec/Runtime/ArtifactFormat.h"

#include <cmath>
#include <cstring>

namespace moec::rt {

uint64_t splitmix64(uint64_t &state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

Xoshiro256::Xoshiro256(uint64_t seed) {
  uint64_t state = seed;
  for (uint64_t &word : s_)
    word = splitmix64(state);
}

static inline uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

uint64_t Xoshiro256::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Xoshiro256::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

double NormalSampler::next() {
  if (hasSpare_) {
    hasSpare_ = false;
    return spare_;
  }
  // u1 in (0, 1] keeps the logarithm finite.
  double u1 = 1.0 - rng_.uniform();
  double u2 = rng_.uniform();
  double radius = std::sqrt(-2.0 * std::log(u1));
  double angle = 2.0 * M_PI * u2;
  spare_ = radius * std::sin(angle);
  hasSpare_ = true;
  return radius * std::cos(angle);
}

Xoshiro256 Xoshiro256::fromState(const std::array<uint64_t, 4> &state) {
  Xoshiro256 rng;
  for (int i = 0; i < 4; ++i)
    rng.s_[i] = state[size_t(i)];
  return rng;
}

std::vector<uint64_t> NormalSampler::toWords() const {
  std::array<uint64_t, 4> s = rng_.state();
  uint64_t spareBits;
  std::memcpy(&spareBits, &spare_, sizeof(spareBits));
  return {kNormalSamplerTag, s[0], s[1], s[2], s[3],
          hasSpare_ ? 1u : 0u, spareBits};
}

Expected<NormalSampler>
NormalSampler::fromWords(const std::vector<uint64_t> &words) {
  if (words.size() != 7)
    return makeError(ErrorCode::Argument, "normal sampler state has ",
                     words.size(), " words (expected 7)");
  if (words[0] != kNormalSamplerTag)
    return makeError(ErrorCode::Argument,
                     "normal sampler state does not start with its tag");
  if (words[5] > 1)
    return makeError(ErrorCode::Argument,
                     "normal sampler state has a bad spare flag ", words[5]);
  NormalSampler sampler(
      Xoshiro256::fromState({words[1], words[2], words[3], words[4]}));
  sampler.hasSpare_ = words[5] == 1;
  std::memcpy(&sampler.spare_, &words[6], sizeof(double));
  return sampler;
}

uint64_t parameterSeed(uint64_t seed, const std::string &name) {
  return seed ^ moec::artifact::fnv1a64(name.data(), name.size());
}

void initParameter(const ParamSpec &param, uint64_t seed, float *out) {
  const int64_t n = param.count();
  switch (param.init) {
  case InitKind::Zeros:
  case InitKind::Ones:
  case InitKind::Constant: {
    float value = param.init == InitKind::Ones        ? 1.0f
                  : param.init == InitKind::Constant ? float(param.value)
                                                      : 0.0f;
    for (int64_t i = 0; i < n; ++i)
      out[i] = value;
    return;
  }
  case InitKind::Normal: {
    NormalSampler normal(parameterSeed(seed, param.name));
    for (int64_t i = 0; i < n; ++i)
      out[i] = static_cast<float>(normal.next() * param.std);
    return;
  }
  case InitKind::TruncNormal: {
    NormalSampler normal(parameterSeed(seed, param.name));
    for (int64_t i = 0; i < n; ++i) {
      double z;
      do
        z = normal.next();
      while (std::fabs(z) > 2.0);
      out[i] = static_cast<float>(z * param.std);
    }
    return;
  }
  }
}

} // namespace moec::rt
