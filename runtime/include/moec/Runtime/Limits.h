//===- Limits.h - the ranges of training settings ---------------*- C++ -*-===//
//
// The ranges a training setting must lie in, wherever it comes from (a
// moec-run flag, the manifest's "optimizer" and "train" objects, or the
// metadata of a checkpoint being resumed): out of range, the run stops
// before its first step with an error naming the setting, instead of
// training with an overflowed value.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIMITS_H
#define MOEC_RUNTIME_LIMITS_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <string>

namespace moec::rt {

/// The most epochs a run may have.
inline constexpr int64_t kMaxEpochs = 1'000'000;

/// The largest optimizer hyperparameter (weight decay, betas, eps, momentum,
/// gradient clip): the largest finite f32, as the kernels read them in f32.
inline constexpr double kMaxOptimizerValue = 3.4028234663852886e38;

/// Success when `lr` is finite, > 0 and stays a positive finite number when
/// rounded to f32 (the train_step's `lr` input); otherwise an error of
/// `code` "WHAT: expected a positive number representable in f32 (at most
/// 3.4028235e+38, at least 1.4e-45), got VALUE".
Error checkLearningRate(double lr, ErrorCode code, const std::string &what);

/// Success when 1 <= epochs <= kMaxEpochs; otherwise an error of `code`
/// naming `what`.
Error checkEpochs(int64_t epochs, ErrorCode code, const std::string &what);

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIMITS_H
