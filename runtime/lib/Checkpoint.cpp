//===- Checkpoint.cpp - training checkpoints ------------------------------===//

#include "moec/Runtime/Checkpoint.h"

#include "Format.h"
#include "moec/Runtime/ArtifactFormat.h"
#include "moec/Runtime/FileUtil.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cinttypes>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <set>
#include <unistd.h>

namespace fs = std::filesystem;

namespace moec::rt {

static const char *const kReservedKeys[] = {
    "format", "step", "epoch", "position", "rng_state", "data_checksum"};
static const char *const kCheckpointPrefix = "ckpt-";
static const char *const kCheckpointSuffix = ".safetensors";

static bool startsWith(const std::string &s, const std::string &prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

static bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/// A non-negative decimal integer (digits only) that fits int64.
static std::optional<int64_t> parseNonNegative(const std::string &text) {
  if (text.empty() || text.size() > 19 ||
      !std::all_of(text.begin(), text.end(),
                   [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  int64_t value = 0;
  auto [end, ec] =
      std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    return std::nullopt;
  return value;
}

/// Whether `s` is well-formed UTF-8 (the safetensors header is JSON).
static bool isUtf8(const std::string &s) {
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t extra = c < 0x80         ? 0
                   : (c >> 5) == 6  ? 1
                   : (c >> 4) == 14 ? 2
                   : (c >> 3) == 30 ? 3
                                    : 4;
    if (extra == 4 || s.size() - i <= extra)
      return false;
    uint32_t code = extra == 0 ? c : c & (0x3f >> extra);
    for (size_t k = 1; k <= extra; ++k) {
      unsigned char next = static_cast<unsigned char>(s[i + k]);
      if ((next >> 6) != 2)
        return false;
      code = code << 6 | (next & 0x3f);
    }
    static const uint32_t minimum[] = {0, 0x80, 0x800, 0x10000};
    if (code < minimum[extra] || code > 0x10ffff ||
        (code >= 0xd800 && code <= 0xdfff))
      return false;
    i += extra + 1;
  }
  return true;
}

/// fsync of a directory, so a rename in it is durable. File systems that
/// cannot sync directories (EINVAL) are not an error.
static Error syncDirectory(const std::string &dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return makeError(ErrorCode::Io, dir,
                     ": cannot open directory: ", systemError(errno));
  int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  if (err != 0 && err != EINVAL && err != EROFS)
    return makeError(ErrorCode::Io, dir,
                     ": cannot sync directory: ", systemError(err));
  return Error::success();
}

static std::string parentDirectory(const std::string &path) {
  std::string parent = fs::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string optimizerTensorName(const std::string &slot,
                                const std::string &param) {
  return cat(kOptimizerPrefix, slot, ".", param);
}

/// Splits "optimizer.<slot>.<param>"; false if `name` is not of that form.
static bool splitOptimizerName(const std::string &name, std::string &slot,
                               std::string &param) {
  if (!startsWith(name, kOptimizerPrefix))
    return false;
  size_t begin = std::strlen(kOptimizerPrefix);
  size_t dot = name.find('.', begin);
  if (dot == std::string::npos || dot == begin || dot + 1 == name.size())
    return false;
  slot = name.substr(begin, dot - begin);
  param = name.substr(dot + 1);
  return true;
}

std::string formatRngState(const std::vector<uint64_t> &words) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    if (i)
      out += ',';
    for (int shift = 60; shift >= 0; shift -= 4)
      out += digits[(words[i] >> shift) & 15];
  }
  return out;
}

Expected<std::vector<uint64_t>> parseRngState(const std::string &text) {
  std::vector<uint64_t> words;
  if (text.empty())
    return words;
  size_t begin = 0;
  for (;;) {
    size_t comma = text.find(',', begin);
    std::string word = text.substr(
        begin, comma == std::string::npos ? std::string::npos : comma - begin);
    uint64_t value = 0;
    bool ok = word.size() == 16;
    for (char c : word) {
      int digit = c >= '0' && c <= '9'   ? c - '0'
                  : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                         : -1;
      if (digit < 0)
        ok = false;
      value = value << 4 | uint64_t(digit & 15);
    }
    if (!ok)
      return makeError(ErrorCode::Argument, "rng state word ", words.size(),
                       " '", word, "' is not 16 hex digits");
    words.push_back(value);
    if (comma == std::string::npos)
      break;
    begin = comma + 1;
  }
  return words;
}

//===----------------------------------------------------------------------===//
// Checkpoint
//===----------------------------------------------------------------------===//

static const Tensor *findIn(const std::vector<Tensor> &tensors,
                            const std::string &name) {
  for (const Tensor &t : tensors)
    if (t.name == name)
      return &t;
  return nullptr;
}

const Tensor *Checkpoint::findParam(const std::string &name) const {
  return findIn(params, name);
}

const Tensor *Checkpoint::findOptimizer(const std::string &slot,
                                        const std::string &param) const {
  return findIn(optimizer, optimizerTensorName(slot, param));
}

std::vector<std::string> Checkpoint::optimizerSlots() const {
  std::set<std::string> slots;
  for (const Tensor &t : optimizer) {
    std::string slot, param;
    if (splitOptimizerName(t.name, slot, param))
      slots.insert(slot);
  }
  return {slots.begin(), slots.end()};
}

static Error copyTensor(const std::string &path, const Tensor *tensor,
                        const std::string &name,
                        const std::vector<int64_t> &shape, float *out) {
  if (!tensor)
    return makeError(ErrorCode::Weights, path, ": missing tensor '", name, "'");
  if (tensor->shape != shape)
    return makeError(ErrorCode::Weights, path, ": tensor '", name,
                     "' has shape ", formatShape(tensor->shape), ", expected ",
                     formatShape(shape));
  if (out && !tensor->data.empty())
    std::memcpy(out, tensor->data.data(), tensor->data.size() * sizeof(float));
  return Error::success();
}

Error Checkpoint::copyParam(const std::string &name,
                            const std::vector<int64_t> &shape,
                            float *out) const {
  return copyTensor(path, findParam(name), name, shape, out);
}

Error Checkpoint::copyOptimizer(const std::string &slot,
                                const std::string &param,
                                const std::vector<int64_t> &shape,
                                float *out) const {
  std::string name = optimizerTensorName(slot, param);
  return copyTensor(path, findIn(optimizer, name), name, shape, out);
}

Error Checkpoint::check(const std::vector<ParamSpec> &specs,
                        const std::vector<std::string> &slots) const {
  std::map<std::string, const Tensor *> byName;
  for (const Tensor &t : params)
    byName[t.name] = &t;
  for (const Tensor &t : optimizer)
    byName[t.name] = &t;
  auto lookup = [&](const std::string &name) -> const Tensor * {
    auto it = byName.find(name);
    return it == byName.end() ? nullptr : it->second;
  };
  std::set<std::string> paramNames;
  for (const ParamSpec &spec : specs) {
    paramNames.insert(spec.name);
    if (Error e =
            copyTensor(path, lookup(spec.name), spec.name, spec.shape, nullptr))
      return e;
  }
  for (const std::string &slot : slots)
    for (const ParamSpec &spec : specs) {
      std::string name = optimizerTensorName(slot, spec.name);
      if (Error e = copyTensor(path, lookup(name), name, spec.shape, nullptr))
        return e;
    }
  for (const Tensor &t : params)
    if (!paramNames.count(t.name))
      return makeError(ErrorCode::Weights, path, ": unexpected tensor '",
                       t.name, "' (the model has no such parameter)");
  std::set<std::string> slotNames(slots.begin(), slots.end());
  for (const Tensor &t : optimizer) {
    std::string slot, param;
    splitOptimizerName(t.name, slot, param);
    if (!slotNames.count(slot)) {
      std::string expected;
      for (const std::string &s : slots)
        expected += (expected.empty() ? "" : ", ") + s;
      return makeError(
          ErrorCode::Weights, path, ": unexpected tensor '", t.name,
          "' (optimizer slot '", slot, "' is not ",
          slots.empty() ? std::string("expected") : "one of: " + expected, ")");
    }
  }
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Saving and loading
//===----------------------------------------------------------------------===//

Error saveCheckpoint(const std::string &path, const TrainState &state,
                     const std::vector<TensorRef> &params,
                     const std::vector<TensorRef> &optimizer) {
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Argument, path, ": ", args...);
  };
  if (state.step < 0 || state.epoch < 0 || state.positionInEpoch < 0)
    return fail("negative step, epoch or position (", state.step, ", ",
                state.epoch, ", ", state.positionInEpoch, ")");
  std::map<std::string, std::string> metadata = state.metadata;
  for (const char *key : kReservedKeys)
    if (metadata.count(key))
      return fail("metadata key '", key, "' is reserved for the checkpoint");
  for (const auto &[key, value] : metadata)
    if (!isUtf8(key) || !isUtf8(value))
      return fail("metadata '", key, "' is not valid UTF-8");
  metadata["format"] = kCheckpointFormat;
  metadata["step"] = std::to_string(state.step);
  metadata["epoch"] = std::to_string(state.epoch);
  metadata["position"] = std::to_string(state.positionInEpoch);
  metadata["rng_state"] = formatRngState(state.rngState);

  auto checkRef = [&](const TensorRef &t) -> Error {
    if (!isUtf8(t.name))
      return fail("tensor name '", t.name, "' is not valid UTF-8");
    for (int64_t d : t.shape)
      if (d < 0)
        return fail("tensor '", t.name, "' has a negative dimension in ",
                    formatShape(t.shape));
    if (!t.data && numElements(t.shape) > 0)
      return fail("tensor '", t.name, "' has no data");
    return Error::success();
  };
  std::set<std::string> paramNames;
  for (const TensorRef &t : params) {
    if (t.name.empty())
      return fail("a parameter has an empty name");
    if (startsWith(t.name, kOptimizerPrefix))
      return fail("parameter '", t.name, "' uses the reserved prefix '",
                  kOptimizerPrefix, "'");
    if (Error e = checkRef(t))
      return e;
    paramNames.insert(t.name);
  }
  for (const TensorRef &t : optimizer) {
    std::string slot, param;
    if (!splitOptimizerName(t.name, slot, param))
      return fail("optimizer tensor '", t.name, "' is not named ",
                  kOptimizerPrefix, "<slot>.<param>");
    if (!paramNames.count(param))
      return fail("optimizer tensor '", t.name, "' names no parameter ('",
                  param, "' is not among the parameters)");
    if (Error e = checkRef(t))
      return e;
  }
  std::vector<TensorRef> all = params;
  all.insert(all.end(), optimizer.begin(), optimizer.end());
  uint64_t checksum = artifact::kFnvOffsetBasis;
  for (const TensorRef &t : all)
    checksum = artifact::fnv1a64(t.bytes(), size_t(numElements(t.shape)) * 4,
                                 checksum);
  metadata["data_checksum"] = formatPrintf("%016" PRIx64, checksum);
  if (Error e = writeSafeTensors(path, all, metadata))
    return e;
  return syncDirectory(parentDirectory(path));
}

Expected<Checkpoint> loadCheckpoint(const std::string &path) {
  Expected<SafeTensors> file = readSafeTensors(path);
  if (!file)
    return file.takeError();
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Weights, path, ": ", args...);
  };
  Checkpoint ckpt;
  ckpt.path = path;
  std::map<std::string, std::string> &meta = file->metadata;
  auto format = meta.find("format");
  if (format == meta.end())
    return fail("not a moec checkpoint (no 'format' metadata)");
  if (format->second != kCheckpointFormat)
    return fail("unsupported checkpoint format '", format->second,
                "' (expected ", kCheckpointFormat, ")");
  auto integer = [&](const char *key, int64_t &out) -> Error {
    auto it = meta.find(key);
    if (it == meta.end())
      return fail("missing metadata '", key, "'");
    std::optional<int64_t> value = parseNonNegative(it->second);
    if (!value)
      return fail("bad metadata '", key, "': '", it->second,
                  "' is not a non-negative integer");
    out = *value;
    return Error::success();
  };
  if (Error e = integer("step", ckpt.state.step))
    return e;
  if (Error e = integer("epoch", ckpt.state.epoch))
    return e;
  if (Error e = integer("position", ckpt.state.positionInEpoch))
    return e;
  auto rng = meta.find("rng_state");
  if (rng == meta.end())
    return fail("missing metadata 'rng_state'");
  Expected<std::vector<uint64_t>> words = parseRngState(rng->second);
  if (!words)
    return fail("bad metadata 'rng_state': ", words.error().message());
  ckpt.state.rngState = std::move(*words);
  // The data checksum; checkpoints written before it have none.
  auto sum = meta.find("data_checksum");
  if (sum != meta.end()) {
    uint64_t checksum = artifact::kFnvOffsetBasis;
    for (const Tensor &t : file->tensors)
      checksum =
          t.dtype == DType::F32
              ? artifact::fnv1a64(t.data.data(), t.data.size() * 4, checksum)
              : artifact::fnv1a64(t.ints.data(), t.ints.size() * 4, checksum);
    if (sum->second != formatPrintf("%016" PRIx64, checksum))
      return fail("data checksum mismatch (metadata 'data_checksum' is '",
                  sum->second, "', the data's is ",
                  formatPrintf("%016" PRIx64, checksum),
                  "): the checkpoint is corrupted");
  }
  for (auto &entry : meta) {
    const std::string &key = entry.first;
    if (std::find_if(std::begin(kReservedKeys), std::end(kReservedKeys),
                     [&](const char *reserved) { return key == reserved; }) ==
        std::end(kReservedKeys))
      ckpt.state.metadata[key] = entry.second;
  }

  std::set<std::string> paramNames;
  for (Tensor &t : file->tensors)
    if (!startsWith(t.name, kOptimizerPrefix))
      paramNames.insert(t.name);
  for (Tensor &t : file->tensors) {
    if (!startsWith(t.name, kOptimizerPrefix)) {
      ckpt.params.push_back(std::move(t));
      continue;
    }
    std::string slot, param;
    if (!splitOptimizerName(t.name, slot, param))
      return fail("optimizer tensor '", t.name, "' is not named ",
                  kOptimizerPrefix, "<slot>.<param>");
    if (!paramNames.count(param))
      return fail("optimizer tensor '", t.name, "' has no parameter '", param,
                  "' in the file");
    ckpt.optimizer.push_back(std::move(t));
  }
  return ckpt;
}

//===----------------------------------------------------------------------===//
// CheckpointDir
//===----------------------------------------------------------------------===//

/// The step of a file named ckpt-<step>.safetensors.
static std::optional<int64_t> checkpointStep(const std::string &name) {
  if (!startsWith(name, kCheckpointPrefix) ||
      !endsWith(name, kCheckpointSuffix))
    return std::nullopt;
  size_t begin = std::strlen(kCheckpointPrefix);
  size_t end = name.size() - std::strlen(kCheckpointSuffix);
  if (end <= begin)
    return std::nullopt;
  return parseNonNegative(name.substr(begin, end - begin));
}

/// The pid of an AtomicFile temporary (TARGET.tmp.<pid>.<n>) of a
/// checkpoint or of `latest`.
static std::optional<int64_t> temporaryPid(const std::string &name) {
  size_t tmp = name.rfind(".tmp.");
  if (tmp == std::string::npos)
    return std::nullopt;
  std::string target = name.substr(0, tmp);
  if (target != kLatestFile && !checkpointStep(target))
    return std::nullopt;
  std::string rest = name.substr(tmp + 5);
  size_t dot = rest.find('.');
  if (dot == std::string::npos || !parseNonNegative(rest.substr(dot + 1)))
    return std::nullopt;
  return parseNonNegative(rest.substr(0, dot));
}

static std::string checkpointName(int64_t step) {
  return cat(kCheckpointPrefix, step, kCheckpointSuffix);
}

std::string CheckpointDir::pathForStep(int64_t step) const {
  return cat(dir_, "/", checkpointName(step));
}

Expected<std::vector<int64_t>> CheckpointDir::steps() const {
  std::vector<int64_t> steps;
  std::error_code ec;
  fs::directory_iterator it(dir_, ec), end;
  if (ec)
    return makeError(ErrorCode::Io, dir_,
                     ": cannot list directory: ", ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec)
      return makeError(ErrorCode::Io, dir_,
                       ": cannot list directory: ", ec.message());
    if (std::optional<int64_t> step =
            checkpointStep(it->path().filename().string()))
      steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

Expected<SavedCheckpoint>
CheckpointDir::save(const TrainState &state,
                    const std::vector<TensorRef> &params,
                    const std::vector<TensorRef> &optimizer) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec)
    return makeError(ErrorCode::Io, dir_,
                     ": cannot create directory: ", ec.message());
  SavedCheckpoint saved;
  saved.path = pathForStep(state.step);
  if (Error e = saveCheckpoint(saved.path, state, params, optimizer))
    return e;
  std::string latest = checkpointName(state.step) + "\n";
  if (Error e = writeFileAtomic(cat(dir_, "/", kLatestFile), latest.data(),
                                latest.size()))
    return e;
  if (Error e = syncDirectory(dir_))
    return e;

  // Prune only now that `latest` names the new file.
  Expected<std::vector<int64_t>> present = steps();
  if (!present) {
    saved.warnings.push_back(present.error().message());
    return saved;
  }
  std::vector<int64_t> others;
  for (int64_t step : *present)
    if (step != state.step)
      others.push_back(step);
  std::vector<std::string> doomed;
  if (keepLast_ > 0 && int64_t(others.size()) > keepLast_ - 1)
    for (size_t i = 0; i < others.size() - size_t(keepLast_ - 1); ++i)
      doomed.push_back(pathForStep(others[i]));
  fs::directory_iterator it(dir_, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    std::optional<int64_t> pid = temporaryPid(it->path().filename().string());
    if (pid && *pid != int64_t(::getpid()))
      doomed.push_back(it->path().string());
  }
  for (const std::string &path : doomed) {
    if (::unlink(path.c_str()) == 0)
      saved.removed.push_back(path);
    else if (errno != ENOENT)
      saved.warnings.push_back(
          cat(path, ": cannot delete: ", systemError(errno)));
  }
  return saved;
}

Expected<Checkpoint> CheckpointDir::loadLatest() const {
  return loadLatestCheckpoint(dir_);
}

Expected<std::optional<std::string>>
findLatestCheckpoint(const std::string &dir) {
  std::string latestPath = cat(dir, "/", kLatestFile);
  std::error_code ec;
  if (!fs::exists(latestPath, ec))
    return std::optional<std::string>();
  Expected<std::vector<uint8_t>> bytes = readFile(latestPath);
  if (!bytes)
    return bytes.takeError();
  std::string name(bytes->begin(), bytes->end());
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' ||
                           name.back() == ' ' || name.back() == '\t'))
    name.pop_back();
  if (name.empty() || name == "." || name == ".." ||
      name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos ||
      name.find('\n') != std::string::npos)
    return makeError(ErrorCode::Weights, latestPath,
                     ": does not name a checkpoint file in its directory");
  std::string path = cat(dir, "/", name);
  if (!fs::is_regular_file(path, ec))
    return makeError(ErrorCode::Io, latestPath, ": names '", name,
                     "', which does not exist");
  return std::optional<std::string>(path);
}

Expected<Checkpoint> loadLatestCheckpoint(const std::string &dir) {
  Expected<std::optional<std::string>> path = findLatestCheckpoint(dir);
  if (!path)
    return path.takeError();
  if (!*path)
    return makeError(ErrorCode::Io, dir, ": no checkpoint (no '", kLatestFile,
                     "' file)");
  return loadCheckpoint(**path);
}

Expected<SafeTensors> readWeights(const std::string &path, std::string *note,
                                  std::string *source) {
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    Expected<std::optional<std::string>> latest = findLatestCheckpoint(path);
    if (!latest)
      return latest.takeError();
    if (!*latest)
      return makeError(ErrorCode::Weights, path, ": a directory without a '",
                       kLatestFile,
                       "' file (expected a weights file, a checkpoint or a "
                       "checkpoint directory)");
    file = **latest;
  }
  if (source)
    *source = file;
  if (note)
    note->clear();
  Expected<SafeTensors> weights = readSafeTensors(file);
  if (!weights)
    return weights.takeError();
  auto format = weights->metadata.find("format");
  if (format == weights->metadata.end() || format->second != kCheckpointFormat)
    return weights;
  // A checkpoint: its parameters are the weights.
  Expected<Checkpoint> ckpt = loadCheckpoint(file);
  if (!ckpt)
    return ckpt.takeError();
  SafeTensors params;
  params.tensors = std::move(ckpt->params);
  auto model = ckpt->state.metadata.find("model");
  if (model != ckpt->state.metadata.end())
    params.metadata["model"] = model->second;
  if (note)
    *note = cat(file, " is a training checkpoint (step ", ckpt->state.step,
                "); using its model parameters, not its optimizer state");
  return params;
}

} // namespace moec::rt
