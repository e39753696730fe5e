//===- Finite.h - finding NaN and infinity in tensors -----------*- C++ -*-===//
//
// A training step checks its loss, gradients or parameters for NaN and
// infinities and reports the first one by tensor name and flat (row-major)
// element index:
//
//   step 1234: non-finite value nan at head.weight[17]
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_FINITE_H
#define MOEC_RUNTIME_FINITE_H

#include "moec/Runtime/Error.h"
#include "moec/Runtime/SafeTensors.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moec::rt {

/// A NaN or infinity found in a tensor.
struct NonFiniteValue {
  std::string name;
  /// The flat element index.
  int64_t index = 0;
  float value = 0;
};

/// The index of the first NaN or infinity of `data[0, count)`, or -1.
int64_t firstNonFinite(const float *data, int64_t count);

/// The first NaN or infinity, scanning the tensors in order and each in
/// element order; nullopt when every value is finite.
std::optional<NonFiniteValue>
firstNonFinite(const std::vector<TensorRef> &tensors);
std::optional<NonFiniteValue>
firstNonFinite(const std::vector<Tensor> &tensors);

/// "nan", "inf" or "-inf" (or the number, for a finite value).
std::string formatFloatValue(float value);

/// "non-finite value nan at head.weight[17]".
std::string describeNonFinite(const NonFiniteValue &found);

/// Success when every value of `tensors` is finite; otherwise a Data error
/// "step STEP: non-finite value nan at head.weight[17]".
Error checkFinite(int64_t step, const std::vector<TensorRef> &tensors);

} // namespace moec::rt

#endif // MOEC_RUNTIME_FINITE_H
