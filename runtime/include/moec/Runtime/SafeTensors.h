//===- SafeTensors.h - reading and writing .safetensors ---------*- C++ -*-===//
//
// The safetensors format: an 8-byte little-endian header length N, N bytes
// of JSON {"NAME": {"dtype": "F32", "shape": [...], "data_offsets": [B, E]},
// ..., "__metadata__": {"key": "value"}}, then the data buffer; offsets are
// relative to the buffer. Only F32 tensors are supported for now.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_SAFETENSORS_H
#define MOEC_RUNTIME_SAFETENSORS_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moec::rt {

/// A tensor read from a file.
struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};

/// A tensor to write; `data` holds numElements(shape) floats.
struct TensorRef {
  std::string name;
  std::vector<int64_t> shape;
  const float *data = nullptr;
};

struct SafeTensors {
  /// In data-offset order.
  std::vector<Tensor> tensors;
  std::map<std::string, std::string> metadata;

  /// The tensor named `name`, or nullptr.
  const Tensor *find(const std::string &name) const;
};

/// Reads `path`. Errors (code Weights, or Io) name the file and the tensor:
/// "w.safetensors: tensor 'x' has dtype F16; only F32 is supported".
Expected<SafeTensors> readSafeTensors(const std::string &path);
/// Parses a file's bytes; `displayName` stands for the file in messages.
Expected<SafeTensors> parseSafeTensors(const uint8_t *data, size_t size,
                                       const std::string &displayName);

/// Writes `tensors` in the given order (atomically: a temporary file in the
/// same directory, renamed over `path`).
Error writeSafeTensors(const std::string &path,
                       const std::vector<TensorRef> &tensors,
                       const std::map<std::string, std::string> &metadata = {});

} // namespace moec::rt

#endif // MOEC_RUNTIME_SAFETENSORS_H
