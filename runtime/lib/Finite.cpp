//===- Finite.cpp - finding NaN and infinity in tensors -------------------===//

#include "moec/Runtime/Finite.h"

#include "moec/Runtime/Artifact.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace moec::rt {

int64_t firstNonFinite(const float *data, int64_t count) {
  // A branch-free screen of each chunk (exponent all ones: NaN or
  // infinity), then a scan of a chunk that has one.
  constexpr int64_t kChunk = 1024;
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t end = std::min(count, begin + kChunk);
    uint32_t bad = 0;
    for (int64_t i = begin; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, data + i, sizeof(bits));
      bad |= uint32_t((bits & 0x7f800000u) == 0x7f800000u);
    }
    if (bad)
      for (int64_t i = begin; i < end; ++i)
        if (!std::isfinite(data[i]))
          return i;
  }
  return -1;
}

std::optional<NonFiniteValue>
firstNonFinite(const std::vector<TensorRef> &tensors) {
  for (const TensorRef &t : tensors) {
    if (!t.data)
      continue;
    int64_t index = firstNonFinite(t.data, numElements(t.shape));
    if (index >= 0)
      return NonFiniteValue{t.name, index, t.data[index]};
  }
  return std::nullopt;
}

std::optional<NonFiniteValue>
firstNonFinite(const std::vector<Tensor> &tensors) {
  for (const Tensor &t : tensors) {
    int64_t index = firstNonFinite(t.data.data(), int64_t(t.data.size()));
    if (index >= 0)
      return NonFiniteValue{t.name, index, t.data[size_t(index)]};
  }
  return std::nullopt;
}

std::string formatFloatValue(float value) {
  if (std::isnan(value))
    return "nan";
  if (std::isinf(value))
    return value > 0 ? "inf" : "-inf";
  return cat(value);
}

std::string describeNonFinite(const NonFiniteValue &found) {
  return cat("non-finite value ", formatFloatValue(found.value), " at ",
             found.name, "[", found.index, "]");
}

Error checkFinite(int64_t step, const std::vector<TensorRef> &tensors) {
  if (std::optional<NonFiniteValue> found = firstNonFinite(tensors))
    return makeError(ErrorCode::Data, "step ", step, ": ",
                     describeNonFinite(*found));
  return Error::success();
}

} // namespace moec::rt
