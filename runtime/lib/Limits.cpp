//===- Limits.cpp - the ranges of training settings -----------------------===//

#include "moec/Runtime/Limits.h"

#include "Format.h"

#include <cmath>

namespace moec::rt {

Error checkLearningRate(double lr, ErrorCode code, const std::string &what) {
  const float rounded = float(lr);
  if (std::isfinite(lr) && lr > 0 && std::isfinite(rounded) && rounded > 0)
    return Error::success();
  return makeError(code, what,
                   ": expected a positive number representable in f32 (at "
                   "most 3.4028235e+38, at least 1.4e-45), got ",
                   formatPrintf("%.9g", lr));
}

Error checkEpochs(int64_t epochs, ErrorCode code, const std::string &what) {
  if (epochs >= 1 && epochs <= kMaxEpochs)
    return Error::success();
  return makeError(code, what, ": expected 1 to ", kMaxEpochs, " epochs, got ",
                   epochs);
}

} // namespace moec::rt
