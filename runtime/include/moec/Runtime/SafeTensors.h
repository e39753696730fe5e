//===- SafeTensors.h - reading and writing .safetensors ---------*- C++ -*-===//
//
// The safetensors format: an 8-byte little-endian header length N, N bytes
// of JSON {"NAME": {"dtype": "F32", "shape": [...], "data_offsets": [B, E]},
// ..., "__metadata__": {"key": "value"}}, then the data buffer; offsets are
// relative to the buffer. Weights and checkpoints hold F32 tensors; entry
// point inputs and outputs (moec-run call) may also be I32.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_SAFETENSORS_H
#define MOEC_RUNTIME_SAFETENSORS_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moec::rt {

/// The element types the runtime reads and writes (4 bytes each).
enum class DType { F32, I32 };
/// "F32", "I32" (the safetensors names).
const char *dtypeName(DType dtype);

/// A tensor read from a file. F32 values are in `data`; an I32 tensor
/// (read only when asked for) has its values in `ints` and no `data`.
struct Tensor {
  Tensor() = default;
  Tensor(std::string name, std::vector<int64_t> shape, std::vector<float> data)
      : name(std::move(name)), shape(std::move(shape)), data(std::move(data)) {}

  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
  DType dtype = DType::F32;
  std::vector<int32_t> ints;

  /// The first byte of the values (data or ints).
  const void *bytes() const {
    return dtype == DType::F32 ? static_cast<const void *>(data.data())
                               : static_cast<const void *>(ints.data());
  }
};

/// A tensor to write; `data` holds numElements(shape) floats, or, for
/// dtype I32, `ints` holds numElements(shape) int32 values.
struct TensorRef {
  TensorRef() = default;
  TensorRef(std::string name, std::vector<int64_t> shape, const float *data)
      : name(std::move(name)), shape(std::move(shape)), data(data) {}
  /// An I32 tensor.
  TensorRef(std::string name, std::vector<int64_t> shape, const int32_t *ints)
      : name(std::move(name)), shape(std::move(shape)), dtype(DType::I32),
        ints(ints) {}

  std::string name;
  std::vector<int64_t> shape;
  const float *data = nullptr;
  DType dtype = DType::F32;
  const int32_t *ints = nullptr;

  const void *bytes() const {
    return dtype == DType::F32 ? static_cast<const void *>(data)
                               : static_cast<const void *>(ints);
  }
};

/// Which dtypes a reader accepts; any other is an error naming the tensor.
enum class TensorTypes { F32Only, F32AndI32 };

struct SafeTensors {
  /// In data-offset order.
  std::vector<Tensor> tensors;
  std::map<std::string, std::string> metadata;

  /// The tensor named `name`, or nullptr.
  const Tensor *find(const std::string &name) const;
};

/// The largest JSON header a reader accepts (100 MB).
inline constexpr uint64_t kMaxSafeTensorsHeader = 100'000'000;

/// Reads `path`, strictly: a header of at most kMaxSafeTensorsHeader bytes
/// with no key twice in one object, and tensors that tile the data buffer
/// exactly (no overlap, no gap, no bytes after the last). Errors (code Weights,
/// or Io) name the file and the tensor: "w.safetensors: tensor 'x' has dtype
/// F16; only F32 is supported". With TensorTypes::F32AndI32, I32 tensors are
/// read too ("... only F32 and I32 are supported").
Expected<SafeTensors>
readSafeTensors(const std::string &path,
                TensorTypes types = TensorTypes::F32Only);
/// Parses a file's bytes; `displayName` stands for the file in messages.
Expected<SafeTensors>
parseSafeTensors(const uint8_t *data, size_t size,
                 const std::string &displayName,
                 TensorTypes types = TensorTypes::F32Only);

/// Writes `tensors` (F32 or I32) in the given order (atomically: a temporary file in the
/// same directory, renamed over `path`).
Error writeSafeTensors(const std::string &path,
                       const std::vector<TensorRef> &tensors,
                       const std::map<std::string, std::string> &metadata = {});

} // namespace moec::rt

#endif // MOEC_RUNTIME_SAFETENSORS_H
