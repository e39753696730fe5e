//===- Spec.cpp - moec JSON model spec ------------------------------------===//
//
// Parses and validates the JSON model spec (docs/spec.md). The text is parsed
// with nlohmann::json; positions come from a separate scan of the raw text
// (JsonPositions.h). Validation stops at the first error. Nothing here throws:
// nlohmann::json is only used through its non-throwing entry points, so the
// library also builds with -fno-exceptions. This file checks the top level,
// "model", "train" and "data"; SpecMoE.cpp checks "moe".
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include "SpecParser.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace moec::spec;
using namespace moec::spec::detail;

namespace {

constexpr const char *kDefaultFashionMnistPath =
    "/usr/share/datasets/fashion-mnist";

//===----------------------------------------------------------------------===//
// Presets
//===----------------------------------------------------------------------===//

/// The presets differ only in width and heads.
struct Preset {
  const char *name;
  int64_t width;
  int64_t heads;
};

constexpr Preset kPresets[] = {
    {"vit-tiny", 192, 3}, {"vit-small", 384, 6}, {"vit-base", 768, 12}};

const Preset *findPreset(std::string_view name) {
  for (const Preset &preset : kPresets)
    if (name == preset.name)
      return &preset;
  return nullptr;
}

/// The "model" object a preset supplies.
Json presetModel(const Preset &preset) {
  Json input = Json::object();
  input["channels"] = 3;
  input["height"] = 224;
  input["width"] = 224;
  Json model = Json::object();
  model["input"] = std::move(input);
  model["patch_size"] = 16;
  model["width"] = preset.width;
  model["depth"] = 12;
  model["heads"] = preset.heads;
  model["mlp_ratio"] = 4;
  model["classes"] = 1000;
  model["pooling"] = "cls";
  return model;
}

/// Merges `over` into `base` key by key, recursively; `over` wins. Values
/// are moved, never copied: copying a json value recurses as deep as it is
/// nested, and user input may be nested arbitrarily deep.
void mergeInto(Json &base, Json &&over) {
  if (!base.is_object() || !over.is_object()) {
    base = std::move(over);
    return;
  }
  for (auto it = over.begin(); it != over.end(); ++it) {
    auto found = base.find(it.key());
    if (found == base.end())
      base[it.key()] = std::move(it.value());
    else
      mergeInto(*found, std::move(it.value()));
  }
}

/// Calls `fn(pointer)` for `value` and everything inside it.
template <typename Fn>
void forEachPointer(const Json &value, const std::string &pointer, Fn &fn) {
  fn(pointer);
  if (!value.is_object())
    return;
  for (auto it = value.begin(); it != value.end(); ++it)
    forEachPointer(it.value(),
                   pointer + "/" + detail::escapePointerToken(it.key()), fn);
}

} // namespace

//===----------------------------------------------------------------------===//
// Sections
//===----------------------------------------------------------------------===//

bool SpecParser::run(Json &root, Spec &spec) {
  const std::string ptr;
  if (!expectObject(root, ptr) ||
      !checkKeys(root, ptr,
                 {"name", "extends", "model", "moe", "train", "data"}) ||
      !requireKeys(root, ptr, {"name"}))
    return false;
  const Json *extends = member(root, "extends");
  if (!extends && !requireKeys(root, ptr, {"model"}))
    return false;

  if (!readNonEmptyString(*member(root, "name"), "/name", spec.name))
    return false;

  Json model;
  if (extends) {
    if (!readString(*extends, "/extends", spec.extends))
      return false;
    const Preset *preset = findPreset(spec.extends);
    if (!preset) {
      std::string names;
      KeyList candidates;
      for (const Preset &known : kPresets) {
        names += (names.empty() ? "" : ", ") + std::string(known.name);
        candidates.push_back(known.name);
      }
      return fail("/extends", "unknown preset '" + spec.extends + "'" +
                                  didYouMean(spec.extends, candidates) +
                                  " (expected one of: " + names + ")");
    }
    model = presetModel(*preset);
    // Values only the preset gives are attributed to the "extends" value.
    SourcePos extendsPos = lookUpwards(values, "/extends");
    auto record = [&](const std::string &pointer) {
      values.emplace(pointer, extendsPos);
    };
    forEachPointer(model, "/model", record);
  }
  auto userModel = root.find("model");
  if (userModel != root.end()) {
    if (!expectObject(*userModel, "/model"))
      return false;
    mergeInto(model, std::move(*userModel));
  }
  if (!parseModel(model, spec.model))
    return false;

  if (const Json *moe = member(root, "moe"))
    if (!parseMoE(*moe, spec.model, spec.moe))
      return false;

  if (const Json *train = member(root, "train"))
    if (!parseTrain(*train, spec.train))
      return false;

  if (const Json *data = member(root, "data"))
    if (!parseData(*data, spec.data))
      return false;
  if (!finishData(spec.data, spec.model) || !checkTotals(spec))
    return false;

  spec.positions = std::move(values);
  // Training runs the spec's batch: its routing groups must divide it.
  if (std::optional<SpecError> groups =
          checkRoutingGroups(spec, spec.train.batch)) {
    error = *groups;
    error.message += " (/train/batch)";
    return false;
  }
  return true;
}

bool SpecParser::parseModel(const Json &model, ModelSpec &out) {
  const std::string ptr = "/model";
  if (!expectObject(model, ptr) ||
      !checkKeys(model, ptr,
                 {"input", "patch_size", "width", "depth", "heads", "mlp_ratio",
                  "classes", "pooling", "activation", "layer_norm_eps"}) ||
      !requireKeys(
          model, ptr,
          {"input", "patch_size", "width", "depth", "heads", "classes"}))
    return false;

  const Json &input = *member(model, "input");
  const std::string inputPtr = "/model/input";
  if (!expectObject(input, inputPtr) ||
      !checkKeys(input, inputPtr, {"channels", "height", "width"}) ||
      !requireKeys(input, inputPtr, {"channels", "height", "width"}) ||
      !optInt(input, inputPtr, "channels", 1, out.input.channels,
              limits::kMaxChannels) ||
      !optInt(input, inputPtr, "height", 1, out.input.height,
              limits::kMaxImageSide) ||
      !optInt(input, inputPtr, "width", 1, out.input.width,
              limits::kMaxImageSide))
    return false;

  if (!optInt(model, ptr, "patch_size", 1, out.patchSize) ||
      !optInt(model, ptr, "width", 1, out.width, limits::kMaxWidth) ||
      !optInt(model, ptr, "depth", 1, out.depth, limits::kMaxDepth) ||
      !optInt(model, ptr, "heads", 1, out.heads) ||
      !optNumber(model, ptr, "mlp_ratio", above(0), out.mlpRatio) ||
      !optInt(model, ptr, "classes", 2, out.classes, limits::kMaxClasses) ||
      !optEnum(model, ptr, "pooling", "pooling", kPoolings, out.pooling) ||
      !optEnum(model, ptr, "activation", "activation", kActivations,
               out.activation) ||
      !optNumber(model, ptr, "layer_norm_eps", above(0), out.layerNormEps))
    return false;

  if (out.input.height % out.patchSize != 0 ||
      out.input.width % out.patchSize != 0)
    return fail("/model/patch_size",
                "must divide the input height (" +
                    std::to_string(out.input.height) + ") and width (" +
                    std::to_string(out.input.width) + "), got " +
                    std::to_string(out.patchSize));
  if (out.width % out.heads != 0)
    return fail("/model/heads", "must divide width (" +
                                    std::to_string(out.width) + "), got " +
                                    std::to_string(out.heads));

  double hidden = std::round(out.mlpRatio * static_cast<double>(out.width));
  std::string found = "got round(" + formatNumber(out.mlpRatio) + " * " +
                      std::to_string(out.width) + ") = " + formatNumber(hidden);
  if (hidden < 1)
    return fail("/model/mlp_ratio",
                "round(mlp_ratio * width) must be >= 1, " + found);
  if (hidden > static_cast<double>(limits::kMaxHidden))
    return fail("/model/mlp_ratio", "round(mlp_ratio * width) must be <= " +
                                        std::to_string(limits::kMaxHidden) +
                                        ", " + found);
  out.mlpHidden = std::llround(out.mlpRatio * static_cast<double>(out.width));
  return true;
}

bool SpecParser::parseTrain(const Json &train, TrainSpec &out) {
  const std::string ptr = "/train";
  if (!expectObject(train, ptr) ||
      !checkKeys(train, ptr,
                 {"optimizer", "schedule", "batch", "epochs", "label_smoothing",
                  "seed"}))
    return false;
  if (const Json *optimizer = member(train, "optimizer"))
    if (!parseOptimizer(*optimizer, out.optimizer))
      return false;
  if (const Json *schedule = member(train, "schedule"))
    if (!parseSchedule(*schedule, out.schedule))
      return false;
  if (!optInt(train, ptr, "batch", 1, out.batch, limits::kMaxBatch) ||
      !optInt(train, ptr, "epochs", 1, out.epochs, limits::kMaxEpochs) ||
      !optNumber(train, ptr, "label_smoothing", kFraction, out.labelSmoothing))
    return false;
  if (const Json *seed = member(train, "seed"))
    if (!readUInt(*seed, ptr + "/seed", out.seed, limits::kMaxSeed))
      return false;
  if (out.schedule.warmupEpochs >= static_cast<double>(out.epochs))
    return fail("/train/schedule/warmup_epochs",
                "must be < epochs (" + std::to_string(out.epochs) + "), got " +
                    formatNumber(out.schedule.warmupEpochs));
  return true;
}

bool SpecParser::parseOptimizer(const Json &optimizer, OptimizerSpec &out) {
  const std::string ptr = "/train/optimizer";
  if (!expectObject(optimizer, ptr) ||
      !checkKeys(optimizer, ptr,
                 {"kind", "lr", "weight_decay", "betas", "eps", "momentum",
                  "grad_clip"}) ||
      !optEnum(optimizer, ptr, "kind", "optimizer kind", kOptimizerKinds,
               out.kind) ||
      !optNumber(optimizer, ptr, "lr", above(0), out.lr) ||
      !optNumber(optimizer, ptr, "weight_decay", atLeast(0), out.weightDecay))
    return false;
  if (out.lr < limits::kMinLearningRate)
    return fail(ptr + "/lr",
                "must be >= " + formatNumber(limits::kMinLearningRate) +
                    " (the smallest positive f32), got " +
                    formatNumber(out.lr));
  const char *kindName = toString(out.kind);
  bool adamw = out.kind == OptimizerKind::AdamW;

  if (const Json *betas = member(optimizer, "betas")) {
    const std::string betasPtr = ptr + "/betas";
    if (!adamw)
      return notUsedBy(betasPtr, "optimizer kind", kindName);
    if (!betas->is_array())
      return fail(betasPtr, std::string("expected an array, got ") +
                                describeType(*betas));
    if (betas->size() != 2)
      return fail(betasPtr, "expected an array of 2 numbers, got " +
                                std::to_string(betas->size()) + " elements");
    if (!readNumber((*betas)[0], betasPtr + "/0", kFraction, out.beta1) ||
        !readNumber((*betas)[1], betasPtr + "/1", kFraction, out.beta2))
      return false;
  }
  if (member(optimizer, "eps") && !adamw)
    return notUsedBy(ptr + "/eps", "optimizer kind", kindName);
  if (!optNumber(optimizer, ptr, "eps", above(0), out.eps))
    return false;
  if (member(optimizer, "momentum") && adamw)
    return notUsedBy(ptr + "/momentum", "optimizer kind", kindName);
  return optNumber(optimizer, ptr, "momentum", kFraction, out.momentum) &&
         optNumber(optimizer, ptr, "grad_clip", atLeast(0), out.gradClip);
}

bool SpecParser::parseSchedule(const Json &schedule, ScheduleSpec &out) {
  const std::string ptr = "/train/schedule";
  return expectObject(schedule, ptr) &&
         checkKeys(schedule, ptr, {"kind", "warmup_epochs", "min_lr_ratio"}) &&
         optEnum(schedule, ptr, "kind", "schedule kind", kScheduleKinds,
                 out.kind) &&
         optNumber(schedule, ptr, "warmup_epochs", atLeast(0),
                   out.warmupEpochs) &&
         optNumber(schedule, ptr, "min_lr_ratio", kUnitInterval,
                   out.minLrRatio);
}

bool SpecParser::parseData(const Json &data, DataSpec &out) {
  const std::string ptr = "/data";
  if (!expectObject(data, ptr) ||
      !checkKeys(data, ptr, {"dataset", "path", "augment"}) ||
      !optEnum(data, ptr, "dataset", "dataset", kDatasetKinds, out.dataset))
    return false;
  if (const Json *path = member(data, "path"))
    if (!readNonEmptyString(*path, ptr + "/path", out.path))
      return false;
  if (const Json *augment = member(data, "augment")) {
    const std::string augmentPtr = ptr + "/augment";
    if (!expectObject(*augment, augmentPtr) ||
        !checkKeys(*augment, augmentPtr, {"crop_padding", "horizontal_flip"}) ||
        !optInt(*augment, augmentPtr, "crop_padding", 0, out.cropPadding,
                limits::kMaxCropPadding) ||
        !optBool(*augment, augmentPtr, "horizontal_flip", out.horizontalFlip))
      return false;
  }
  return true;
}

bool SpecParser::finishData(DataSpec &data, const ModelSpec &model) {
  struct Shape {
    int64_t channels, height, width, classes;
  };
  std::optional<Shape> shape;
  if (data.dataset == DatasetKind::FashionMnist)
    shape = Shape{1, 28, 28, 10};
  else if (data.dataset == DatasetKind::Cifar10)
    shape = Shape{3, 32, 32, 10};
  const char *name = toString(data.dataset);

  if (shape) {
    const InputSpec &in = model.input;
    auto dims = [](int64_t c, int64_t h, int64_t w) {
      return std::to_string(c) + "x" + std::to_string(h) + "x" +
             std::to_string(w);
    };
    if (in.channels != shape->channels || in.height != shape->height ||
        in.width != shape->width)
      return fail("/data/dataset",
                  std::string(name) + " images are " +
                      dims(shape->channels, shape->height, shape->width) +
                      ", but /model/input is " +
                      dims(in.channels, in.height, in.width));
    if (model.classes != shape->classes)
      return fail("/data/dataset", std::string(name) + " has " +
                                       std::to_string(shape->classes) +
                                       " classes, but /model/classes is " +
                                       std::to_string(model.classes));
  }

  if (data.path.empty()) {
    if (data.dataset != DatasetKind::FashionMnist)
      return fail("/data/path",
                  std::string("required for dataset '") + name + "'");
    data.path = kDefaultFashionMnistPath;
  }
  return true;
}

//===----------------------------------------------------------------------===//
// Malformed JSON
//===----------------------------------------------------------------------===//

namespace {

/// A SAX consumer that only remembers the syntax error.
struct SyntaxErrorCatcher {
  std::size_t position = 0;
  std::string what;

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(Json::number_integer_t) { return true; }
  bool number_unsigned(Json::number_unsigned_t) { return true; }
  bool number_float(Json::number_float_t, const Json::string_t &) {
    return true;
  }
  bool string(Json::string_t &) { return true; }
  bool binary(Json::binary_t &) { return true; }
  bool start_object(std::size_t) { return true; }
  bool key(Json::string_t &) { return true; }
  bool end_object() { return true; }
  bool start_array(std::size_t) { return true; }
  bool end_array() { return true; }
  bool parse_error(std::size_t pos, const std::string &,
                   const Json::exception &ex) {
    position = pos;
    what = ex.what();
    return false;
  }
};

/// Strips "[json.exception.parse_error.101] parse error at line 3, column 5: "
/// from an nlohmann::json message, keeping the reason.
std::string syntaxErrorReason(const std::string &what) {
  std::size_t start = 0;
  std::size_t parseError = what.find("parse error");
  if (parseError != std::string::npos) {
    std::size_t colon = what.find(": ", parseError);
    if (colon != std::string::npos)
      start = colon + 2;
  } else if (what.compare(0, 1, "[") == 0) {
    std::size_t bracket = what.find("] ");
    if (bracket != std::string::npos)
      start = bracket + 2;
  }
  return what.substr(start);
}

SpecError malformed(std::string_view text, const std::string &sourceName) {
  SyntaxErrorCatcher catcher;
  Json::sax_parse(text.data(), text.data() + text.size(), &catcher);
  // nlohmann::json reports the number of bytes read, the offending one
  // included.
  std::size_t offset = catcher.position > 0 ? catcher.position - 1 : 0;
  std::string reason = catcher.what.empty() ? std::string("unsupported syntax")
                                            : syntaxErrorReason(catcher.what);
  return SpecError{sourceName, detail::positionOfOffset(text, offset), "",
                   "malformed JSON: " + reason};
}

} // namespace

//===----------------------------------------------------------------------===//
// Public interface
//===----------------------------------------------------------------------===//

const char *moec::spec::toString(Pooling v) { return nameOf(kPoolings, v); }
const char *moec::spec::toString(Activation v) {
  return nameOf(kActivations, v);
}
const char *moec::spec::toString(RouterKind v) {
  return nameOf(kRouterKinds, v);
}
const char *moec::spec::toString(PlacementRule v) {
  return nameOf(kPlacementRules, v);
}
const char *moec::spec::toString(OptimizerKind v) {
  return nameOf(kOptimizerKinds, v);
}
const char *moec::spec::toString(ScheduleKind v) {
  return nameOf(kScheduleKinds, v);
}
const char *moec::spec::toString(DatasetKind v) {
  return nameOf(kDatasetKinds, v);
}

bool MoESpec::isMoEBlock(int64_t block) const {
  return enabled && std::binary_search(blocks.begin(), blocks.end(), block);
}

const MoELayerSpec &MoESpec::layer(int64_t block) const {
  auto it = std::lower_bound(
      layers.begin(), layers.end(), block,
      [](const MoELayerSpec &l, int64_t b) { return l.block < b; });
  assert(it != layers.end() && it->block == block && "not an MoE block");
  return *it;
}

SourcePos Spec::positionOf(const std::string &pointer) const {
  return lookUpwards(positions, pointer);
}

std::string SpecError::str() const {
  return sourceName + ":" + std::to_string(pos.line) + ":" +
         std::to_string(pos.column) + ": " +
         (pointer.empty() ? std::string("/") : pointer) + ": " + message;
}

std::vector<std::string> moec::spec::presetNames() {
  std::vector<std::string> names;
  for (const Preset &preset : kPresets)
    names.push_back(preset.name);
  return names;
}

ParseResult moec::spec::parseSpec(const std::string &text,
                                  const std::string &sourceName) {
  ParseResult result;
  std::string_view body = text;
  // nlohmann::json skips a UTF-8 byte order mark; so do positions.
  if (body.substr(0, 3) == "\xEF\xBB\xBF")
    body.remove_prefix(3);

  Json root = Json::parse(body.data(), body.data() + body.size(),
                          /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    result.error = malformed(body, sourceName);
    return result;
  }
  std::optional<detail::JsonPositions> positions =
      detail::scanJsonPositions(body);
  if (!positions) {
    result.error = SpecError{sourceName, SourcePos{1, 1}, "", "malformed JSON"};
    return result;
  }
  if (positions->duplicateKey) {
    const auto &[pointer, pos] = *positions->duplicateKey;
    result.error = SpecError{sourceName, pos, pointer, "duplicate key"};
    return result;
  }

  Spec spec;
  spec.sourceName = sourceName;
  SpecParser parser(sourceName, std::move(*positions));
  if (!parser.run(root, spec)) {
    result.error = parser.takeError();
    return result;
  }
  result.spec = std::move(spec);
  return result;
}

ParseResult moec::spec::parseSpecFile(const std::string &path) {
  ParseResult result;
  auto failWith = [&](std::string message) {
    result.error = SpecError{path, SourcePos{0, 0}, "", std::move(message)};
    return result;
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return failWith(std::string("cannot read file: ") + std::strerror(errno));
  struct FdCloser {
    int fd;
    ~FdCloser() { ::close(fd); }
  } closer{fd};
  struct stat info;
  if (::fstat(fd, &info) != 0)
    return failWith(std::string("cannot read file: ") + std::strerror(errno));
  if (S_ISDIR(info.st_mode))
    return failWith("cannot read file: is a directory, not a spec file");
  if (!S_ISREG(info.st_mode))
    return failWith("cannot read file: not a regular file (a spec is a JSON "
                    "file of at most 16 MiB)");
  constexpr int64_t cap = limits::kMaxSpecFileBytes;
  if (info.st_size > cap)
    return failWith("file too large: " + std::to_string(info.st_size) +
                    " bytes, a spec may have at most " + std::to_string(cap) +
                    " (16 MiB)");
  // Read at most one byte past the cap, in case the file grows meanwhile.
  std::string text;
  char buf[1 << 16];
  while (static_cast<int64_t>(text.size()) <= cap) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return failWith(std::string("cannot read file: ") + std::strerror(errno));
    if (n == 0)
      break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  if (static_cast<int64_t>(text.size()) > cap)
    return failWith("file too large: a spec may have at most " +
                    std::to_string(cap) + " bytes (16 MiB)");
  return parseSpec(text, path);
}
