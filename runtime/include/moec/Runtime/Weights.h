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

#include <cstdint>

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

private:
  uint64_t s_[4];
};

/// Standard normal deviates by Box-Muller.
class NormalSampler {
public:
  explicit NormalSampler(uint64_t seed) : rng_(seed) {}
  double next();

private:
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
