//===- Weights.h - deterministic random initialization ----------*- C++ -*-===//
//
// Parameter p of a model initialized with seed S draws from its own stream:
// splitmix64 seeded with S ^ fnv1a64(p.name) expands into a xoshiro256**
// state; normals come from Box-Muller on pairs of 53-bit uniform doubles
// (both results used, in order) and are cast to float. So a parameter's
// values depend only on the seed, its name, its init kind, std and size,
// not on the order or presence of other parameters.
//
//   zeros, ones   constant
//   normal        N(0, std)
//   trunc_normal  N(0, std) resampled until |x| <= 2 std
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_WEIGHTS_H
#define MOEC_RUNTIME_WEIGHTS_H

#include "moec/Runtime/Artifact.h"

#include <array>
#include <cstdint>
#include <vector>

namespace moec::rt {

/// One splitmix64 step: advances `state`, returns the next output.
uint64_t splitmix64(uint64_t &state);

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64.
class Xoshiro256 {
public:
  explicit Xoshiro256(uint64_t seed);
  uint64_t next();
  /// A uniform double in [0, 1) with 53 random bits.
  double uniform();

  /// The four state words, and a generator continuing from them.
  std::array<uint64_t, 4> state() const { return {s_[0], s_[1], s_[2], s_[3]}; }
  static Xoshiro256 fromState(const std::array<uint64_t, 4> &state);

private:
  Xoshiro256() = default;
  uint64_t s_[4];
};

/// The first word of NormalSampler::toWords() ("moecnrm1").
constexpr uint64_t kNormalSamplerTag = 0x6d6f65636e726d31ULL;

/// Standard normal deviates by Box-Muller.
class NormalSampler {
public:
  explicit NormalSampler(uint64_t seed) : rng_(seed) {}
  double next();

  /// {kNormalSamplerTag, s0, s1, s2, s3, hasSpare, bits of the spare
  /// double}: the whole state, for TrainState::rngState.
  std::vector<uint64_t> toWords() const;
  /// The inverse of toWords(); Argument errors for a wrong size or tag.
  static Expected<NormalSampler> fromWords(const std::vector<uint64_t> &words);

private:
  explicit NormalSampler(Xoshiro256 rng) : rng_(rng) {}
  Xoshiro256 rng_;
  bool hasSpare_ = false;
  double spare_ = 0;
};

/// The seed of parameter `name`'s stream: seed ^ fnv1a64(name).
uint64_t parameterSeed(uint64_t seed, const std::string &name);

/// Fills `out` (param.count() floats) with param's initial values.
void initParameter(const ParamSpec &param, uint64_t seed, float *out);

} // namespace moec::rt

#endif // MOEC_RUNTIME_WEIGHTS_H
