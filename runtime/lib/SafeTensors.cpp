//===- SafeTensors.cpp - reading and writing .safetensors -----------------===//

#include "moec/Runtime/SafeTensors.h"

#include "JsonCheck.h"
#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/FileUtil.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

namespace moec::rt {

using ordered_json = nlohmann::ordered_json;

const char *dtypeName(DType dtype) {
  return dtype == DType::F32 ? "F32" : "I32";
}

const Tensor *SafeTensors::find(const std::string &name) const {
  for (const Tensor &t : tensors)
    if (t.name == name)
      return &t;
  return nullptr;
}

Expected<SafeTensors> readSafeTensors(const std::string &path,
                                      TensorTypes types) {
  Expected<std::vector<uint8_t>> bytes = readFile(path);
  if (!bytes)
    return bytes.takeError();
  return parseSafeTensors(bytes->data(), bytes->size(), path, types);
}

/// Size in bytes of one element of a safetensors dtype, 0 if unknown.
static size_t dtypeSize(const std::string &dtype) {
  static const std::pair<const char *, size_t> sizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  for (const auto &[name, size] : sizes)
    if (dtype == name)
      return size;
  return 0;
}

/// The first key repeated within one JSON object of [begin, end) (which
/// parses), as "KEY"; nullopt when every object's keys are distinct.
static std::optional<std::string> duplicateKey(const char *begin,
                                               const char *end) {
  std::vector<std::set<std::string>> open;
  std::optional<std::string> found;
  auto callback = [&](int, ordered_json::parse_event_t event,
                      ordered_json &parsed) {
    using Event = ordered_json::parse_event_t;
    if (event == Event::object_start)
      open.emplace_back();
    else if (event == Event::object_end && !open.empty())
      open.pop_back();
    else if (event == Event::key && !open.empty() && !found &&
             !open.back().insert(parsed.get<std::string>()).second)
      found = parsed.get<std::string>();
    return true;
  };
  (void)ordered_json::parse(begin, end, callback, /*allow_exceptions=*/false);
  return found;
}

Expected<SafeTensors> parseSafeTensors(const uint8_t *data, size_t size,
                                       const std::string &path,
                                       TensorTypes types) {
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Weights, path, ": ", args...);
  };
  if (size < 8)
    return fail("not a safetensors file (", size,
                " bytes, less than the 8-byte header length)");
  uint64_t headerSize;
  std::memcpy(&headerSize, data, 8);
  if (headerSize > kMaxSafeTensorsHeader)
    return fail("header length ", headerSize, " exceeds the limit of ",
                kMaxSafeTensorsHeader, " bytes");
  if (headerSize > size - 8)
    return fail("truncated (header length ", headerSize, " exceeds the file's ",
                size - 8, " bytes after it)");
  const char *headerBegin = reinterpret_cast<const char *>(data + 8);
  ordered_json header;
  if (Error e = parseJson(headerBegin, headerBegin + headerSize, path,
                          ErrorCode::Weights, header))
    return e;
  if (!header.is_object())
    return fail("the header is not a JSON object");
  if (std::optional<std::string> key =
          duplicateKey(headerBegin, headerBegin + headerSize))
    return fail("the header names '", *key, "' twice");

  const uint8_t *buffer = data + 8 + headerSize;
  const uint64_t bufferSize = size - 8 - headerSize;
  SafeTensors result;
  struct Range {
    uint64_t begin, end;
    size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto &[name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object())
        return fail("__metadata__ is not an object");
      for (const auto &[key, item] : value.items()) {
        if (!item.is_string())
          return fail("__metadata__ entry '", key, "' is not a string");
        result.metadata[key] = item.get<std::string>();
      }
      continue;
    }
    std::string where = cat("tensor '", name, "'");
    if (!value.is_object())
      return fail(where, " is not a JSON object");
    auto dtype = value.find("dtype");
    auto shape = value.find("shape");
    auto offsets = value.find("data_offsets");
    if (dtype == value.end() || !dtype->is_string())
      return fail(where, " has no dtype string");
    if (shape == value.end() || !shape->is_array())
      return fail(where, " has no shape array");
    if (offsets == value.end() || !offsets->is_array() ||
        offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
        !(*offsets)[1].is_number_unsigned())
      return fail(where, " has no data_offsets [begin, end]");
    std::string type = dtype->get<std::string>();
    if (dtypeSize(type) == 0)
      return fail(where, " has an unknown dtype '", type, "'");
    const bool allowI32 = types == TensorTypes::F32AndI32;
    if (type != "F32" && !(allowI32 && type == "I32"))
      return fail(where, " has dtype ", type,
                  allowI32 ? "; only F32 and I32 are supported"
                           : "; only F32 is supported");
    Tensor tensor;
    tensor.name = name;
    tensor.dtype = type == "F32" ? DType::F32 : DType::I32;
    uint64_t elements = 1;
    for (const auto &dim : *shape) {
      if (!dim.is_number_unsigned())
        return fail(where, " has a bad shape ", shape->dump(),
                    " (expected non-negative integers)");
      uint64_t d = dim.get<uint64_t>();
      if (d != 0 && elements > (uint64_t(1) << 56) / d)
        return fail(where, " has a shape ", shape->dump(), " too large");
      elements *= d;
      tensor.shape.push_back(static_cast<int64_t>(d));
    }
    uint64_t begin = (*offsets)[0].get<uint64_t>();
    uint64_t end = (*offsets)[1].get<uint64_t>();
    if (begin > end || end > bufferSize)
      return fail(where, " has data_offsets [", begin, ", ", end,
                  "] outside the data buffer (", bufferSize, " bytes)");
    if (end - begin != elements * 4)
      return fail(where, " has ", end - begin, " bytes of data, but ", type,
                  " ", formatShape(tensor.shape), " needs ", elements * 4);
    if (tensor.dtype == DType::F32) {
      tensor.data.resize(elements);
      if (elements)
        std::memcpy(tensor.data.data(), buffer + begin, elements * 4);
    } else {
      tensor.ints.resize(elements);
      if (elements)
        std::memcpy(tensor.ints.data(), buffer + begin, elements * 4);
    }
    ranges.push_back({begin, end, result.tensors.size()});
    result.tensors.push_back(std::move(tensor));
  }

  std::sort(ranges.begin(), ranges.end(), [](const Range &a, const Range &b) {
    return a.begin < b.begin || (a.begin == b.begin && a.end < b.end);
  });
  // The tensors tile the data buffer: no overlap, no gap, nothing after.
  for (size_t i = 1; i < ranges.size(); ++i) {
    const std::string &before = result.tensors[ranges[i - 1].tensor].name;
    const std::string &after = result.tensors[ranges[i].tensor].name;
    if (ranges[i - 1].end > ranges[i].begin)
      return fail("tensors '", before, "' and '", after,
                  "' overlap in the data buffer");
    if (ranges[i - 1].end < ranges[i].begin)
      return fail("a gap of ", ranges[i].begin - ranges[i - 1].end,
                  " bytes between tensors '", before, "' and '", after,
                  "' in the data buffer");
  }
  if (!ranges.empty() && ranges.front().begin != 0)
    return fail("a gap of ", ranges.front().begin,
                " bytes before the first tensor, '",
                result.tensors[ranges.front().tensor].name, "'");
  const uint64_t used = ranges.empty() ? 0 : ranges.back().end;
  if (used != bufferSize)
    return fail(bufferSize - used, " bytes after the last tensor's data");
  std::vector<Tensor> ordered;
  ordered.reserve(ranges.size());
  for (const Range &r : ranges)
    ordered.push_back(std::move(result.tensors[r.tensor]));
  result.tensors = std::move(ordered);
  return result;
}

Error writeSafeTensors(const std::string &path,
                       const std::vector<TensorRef> &tensors,
                       const std::map<std::string, std::string> &metadata) {
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto &[key, value] : metadata)
      meta[key] = value;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const TensorRef &t : tensors) {
    if (t.name == "__metadata__" || header.contains(t.name))
      return makeError(ErrorCode::Argument, path, ": duplicate tensor name '",
                       t.name, "'");
    uint64_t bytes = static_cast<uint64_t>(numElements(t.shape)) * 4;
    header[t.name] = {{"dtype", dtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data buffer starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  uint64_t headerSize = text.size();

  Expected<AtomicFile> file = AtomicFile::create(path);
  if (!file)
    return file.takeError();
  if (Error e = file->write(&headerSize, 8))
    return e;
  if (Error e = file->write(text.data(), text.size()))
    return e;
  for (const TensorRef &t : tensors)
    if (Error e = file->write(t.bytes(),
                              static_cast<size_t>(numElements(t.shape)) * 4))
      return e;
  return file->commit();
}

} // namespace moec::rt
