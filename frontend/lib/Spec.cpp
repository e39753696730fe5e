//===- Spec.cpp - moec JSON model spec ------------------------------------===//
//
// Parses and validates the JSON model spec (docs/spec.md). The text is parsed
// with nlohmann::json; positions come from a separate scan of the raw text
// (JsonPositions.h). Validation stops at the first error. Nothing here throws:
// nlohmann::json is only used through its non-throwing entry points, so this
// file also builds with -fno-exceptions.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include "JsonPositions.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>

using namespace moec::spec;

namespace {

/// Object keys keep their document order, so unknown keys are reported in
/// the order they appear.
using Json = nlohmann::ordered_json;
using KeyList = std::vector<const char *>;

//===----------------------------------------------------------------------===//
// Enum spellings
//===----------------------------------------------------------------------===//

template <typename E> struct EnumName {
  const char *name;
  E value;
};

constexpr EnumName<Pooling> kPoolings[] = {{"cls", Pooling::Cls},
                                           {"mean", Pooling::Mean}};
constexpr EnumName<Activation> kActivations[] = {
    {"gelu", Activation::Gelu},
    {"gelu_tanh", Activation::GeluTanh},
    {"relu", Activation::Relu},
    {"silu", Activation::Silu}};
constexpr EnumName<RouterKind> kRouterKinds[] = {
    {"token-choice", RouterKind::TokenChoice},
    {"expert-choice", RouterKind::ExpertChoice},
    {"soft", RouterKind::Soft},
    {"per-image", RouterKind::PerImage},
    {"sinkhorn", RouterKind::Sinkhorn}};
constexpr EnumName<PlacementRule> kPlacementRules[] = {
    {"every-n", PlacementRule::EveryN},
    {"last-n", PlacementRule::LastN},
    {"blocks", PlacementRule::Blocks}};
constexpr EnumName<OptimizerKind> kOptimizerKinds[] = {
    {"adamw", OptimizerKind::AdamW}, {"sgd", OptimizerKind::Sgd}};
constexpr EnumName<ScheduleKind> kScheduleKinds[] = {
    {"cosine", ScheduleKind::Cosine}, {"constant", ScheduleKind::Constant}};
constexpr EnumName<DatasetKind> kDatasetKinds[] = {
    {"fashion-mnist", DatasetKind::FashionMnist},
    {"cifar10", DatasetKind::Cifar10},
    {"image-folder", DatasetKind::ImageFolder}};

template <typename E, std::size_t N>
const char *nameOf(const EnumName<E> (&table)[N], E value) {
  for (const EnumName<E> &entry : table)
    if (entry.value == value)
      return entry.name;
  return "<invalid>";
}

template <typename E, std::size_t N>
std::optional<E> valueOf(const EnumName<E> (&table)[N], std::string_view name) {
  for (const EnumName<E> &entry : table)
    if (name == entry.name)
      return entry.value;
  return std::nullopt;
}

template <typename E, std::size_t N>
std::string namesOf(const EnumName<E> (&table)[N]) {
  std::string out;
  for (const EnumName<E> &entry : table) {
    if (!out.empty())
      out += ", ";
    out += entry.name;
  }
  return out;
}

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

//===----------------------------------------------------------------------===//
// Formatting helpers
//===----------------------------------------------------------------------===//

/// Shortest "%g"-like form that reads back as `value`: plain notation for
/// magnitudes in [1e-4, 1e17), otherwise an exponent without padding zeros
/// ("1e-6" rather than "1e-06").
std::string formatNumber(double value) {
  char buf[64];
  int precision = 1;
  for (; precision < 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value)
      break;
  }
  std::snprintf(buf, sizeof(buf), "%.*g", precision, value);
  std::string out = buf;
  std::size_t e = out.find('e');
  if (e == std::string::npos)
    return out;
  int exponent = std::atoi(out.c_str() + e + 1);
  if (exponent >= 0 && exponent < 17) {
    // "%g" switched to an exponent only because few digits are significant
    // (30 -> "3e+01"); print all the integer digits instead.
    std::snprintf(buf, sizeof(buf), "%.*g", exponent + 1, value);
    return buf;
  }
  std::string digits = out.substr(e + 2);
  digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
  return out.substr(0, e + 2) + digits;
}

/// "an object", "a string", ... as used in "expected X, got Y".
const char *describeType(const Json &value) {
  switch (value.type()) {
  case Json::value_t::object:
    return "an object";
  case Json::value_t::array:
    return "an array";
  case Json::value_t::string:
    return "a string";
  case Json::value_t::boolean:
    return "a boolean";
  case Json::value_t::number_integer:
  case Json::value_t::number_unsigned:
  case Json::value_t::number_float:
    return "a number";
  case Json::value_t::null:
    return "null";
  default:
    return "an unsupported value";
  }
}

std::string joinKeys(const KeyList &keys) {
  std::string out;
  for (const char *key : keys) {
    if (!out.empty())
      out += ", ";
    out += key;
  }
  return out;
}

std::string childPointer(const std::string &pointer, const char *key) {
  return pointer + "/" + key;
}

std::string childPointer(const std::string &pointer, std::size_t index) {
  return pointer + "/" + std::to_string(index);
}

const Json *member(const Json &object, const char *key) {
  if (!object.is_object())
    return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

/// The entry for `pointer` in `map`, or for its closest ancestor.
SourcePos lookUpwards(const std::map<std::string, SourcePos> &map,
                      std::string pointer) {
  while (true) {
    auto it = map.find(pointer);
    if (it != map.end())
      return it->second;
    if (pointer.empty())
      return SourcePos();
    pointer.erase(pointer.rfind('/'));
  }
}

/// A numeric range: lo <= x (or lo < x), optionally x <= hi (or x < hi).
struct Range {
  double lo;
  bool loOpen;
  bool hasHi;
  double hi;
  bool hiOpen;

  bool contains(double x) const {
    if (loOpen ? !(x > lo) : !(x >= lo))
      return false;
    return !hasHi || (hiOpen ? x < hi : x <= hi);
  }
  std::string describe() const {
    if (!hasHi)
      return std::string(loOpen ? "> " : ">= ") + formatNumber(lo);
    return std::string("in ") + (loOpen ? "(" : "[") + formatNumber(lo) + ", " +
           formatNumber(hi) + (hiOpen ? ")" : "]");
  }
};

constexpr Range atLeast(double lo) { return {lo, false, false, 0, false}; }
constexpr Range above(double lo) { return {lo, true, false, 0, false}; }
/// [0, 1)
constexpr Range kFraction = {0, false, true, 1, true};
/// [0, 1]
constexpr Range kUnitInterval = {0, false, true, 1, false};

//===----------------------------------------------------------------------===//
// SpecParser
//===----------------------------------------------------------------------===//

/// Validates a parsed document section by section, filling a Spec. Every
/// method returns false once it has recorded an error.
class SpecParser {
public:
  SpecParser(const std::string &sourceName, detail::JsonPositions positions)
      : sourceName(sourceName), values(std::move(positions.values)),
        keys(std::move(positions.keys)) {}

  /// Validates `root`, which it may modify (the preset merge moves values
  /// out of it).
  bool run(Json &root, Spec &spec);
  SpecError takeError() { return std::move(error); }

private:
  // Diagnostics.
  bool fail(const std::string &pointer, std::string message);
  bool failAtKey(const std::string &pointer, std::string message);
  bool notUsedBy(const std::string &pointer, const char *what,
                 const char *kind);

  // Objects.
  bool expectObject(const Json &value, const std::string &pointer);
  bool checkKeys(const Json &object, const std::string &pointer,
                 const KeyList &allowed);
  bool requireKeys(const Json &object, const std::string &pointer,
                   const KeyList &required);

  // Scalars.
  bool readInt(const Json &value, const std::string &pointer, int64_t min,
               int64_t &out);
  bool readUInt(const Json &value, const std::string &pointer, uint64_t &out);
  bool readNumber(const Json &value, const std::string &pointer, Range range,
                  double &out);
  bool readBool(const Json &value, const std::string &pointer, bool &out);
  bool readString(const Json &value, const std::string &pointer,
                  std::string &out);
  bool readNonEmptyString(const Json &value, const std::string &pointer,
                          std::string &out);
  template <typename E, std::size_t N>
  bool readEnum(const Json &value, const std::string &pointer, const char *what,
                const EnumName<E> (&table)[N], E &out);

  // Optional members: leave `out` alone when `key` is absent.
  bool optInt(const Json &object, const std::string &pointer, const char *key,
              int64_t min, int64_t &out);
  bool optNumber(const Json &object, const std::string &pointer,
                 const char *key, Range range, double &out);
  bool optBool(const Json &object, const std::string &pointer, const char *key,
               bool &out);
  template <typename E, std::size_t N>
  bool optEnum(const Json &object, const std::string &pointer, const char *key,
               const char *what, const EnumName<E> (&table)[N], E &out);

  // Sections.
  bool parseModel(const Json &model, ModelSpec &out);
  bool parseMoE(const Json &moe, const ModelSpec &model, MoESpec &out);
  bool parsePlacement(const Json &placement, int64_t depth, MoESpec &out);
  bool parseRouter(const Json &router, RouterSpec &out);
  bool parseCapacityFactor(const Json &value, MoESpec &out);
  bool parseAuxLoss(const Json &aux, const Json &moe, MoESpec &out);
  bool parseSuperClassMap(const Json &map, const ModelSpec &model,
                          MoESpec &out);
  bool parseTrain(const Json &train, TrainSpec &out);
  bool parseOptimizer(const Json &optimizer, OptimizerSpec &out);
  bool parseSchedule(const Json &schedule, ScheduleSpec &out);
  bool parseData(const Json &data, DataSpec &out);
  /// Checks the dataset against the model and resolves the default path.
  bool finishData(DataSpec &data, const ModelSpec &model);

  const std::string &sourceName;
  std::map<std::string, SourcePos> values;
  std::map<std::string, SourcePos> keys;
  SpecError error;
};

} // namespace

bool SpecParser::fail(const std::string &pointer, std::string message) {
  error = SpecError{sourceName, lookUpwards(values, pointer), pointer,
                    std::move(message)};
  return false;
}

bool SpecParser::failAtKey(const std::string &pointer, std::string message) {
  auto it = keys.find(pointer);
  if (it == keys.end())
    return fail(pointer, std::move(message));
  error = SpecError{sourceName, it->second, pointer, std::move(message)};
  return false;
}

bool SpecParser::notUsedBy(const std::string &pointer, const char *what,
                           const char *kind) {
  return fail(pointer, std::string("not used by ") + what + " '" + kind + "'");
}

bool SpecParser::expectObject(const Json &value, const std::string &pointer) {
  if (value.is_object())
    return true;
  return fail(pointer,
              std::string("expected an object, got ") + describeType(value));
}

bool SpecParser::checkKeys(const Json &object, const std::string &pointer,
                           const KeyList &allowed) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string &key = it.key();
    bool known = std::any_of(allowed.begin(), allowed.end(),
                             [&](const char *name) { return key == name; });
    if (!known)
      return failAtKey(pointer + "/" + detail::escapePointerToken(key),
                       "unknown key (expected one of: " + joinKeys(allowed) +
                           ")");
  }
  return true;
}

bool SpecParser::requireKeys(const Json &object, const std::string &pointer,
                             const KeyList &required) {
  for (const char *key : required)
    if (!member(object, key))
      return fail(pointer, std::string("missing required key '") + key + "'");
  return true;
}

bool SpecParser::readInt(const Json &value, const std::string &pointer,
                         int64_t min, int64_t &out) {
  if (!value.is_number_integer())
    return fail(pointer,
                std::string("expected an integer, got ") + describeType(value));
  if (value.is_number_unsigned()) {
    uint64_t u = *value.get_ptr<const Json::number_unsigned_t *>();
    constexpr int64_t max = std::numeric_limits<int64_t>::max();
    if (u > static_cast<uint64_t>(max))
      return fail(pointer, "must be <= " + std::to_string(max) + ", got " +
                               std::to_string(u));
    out = static_cast<int64_t>(u);
  } else {
    out = *value.get_ptr<const Json::number_integer_t *>();
  }
  if (out < min)
    return fail(pointer, "must be >= " + std::to_string(min) + ", got " +
                             std::to_string(out));
  return true;
}

bool SpecParser::readUInt(const Json &value, const std::string &pointer,
                          uint64_t &out) {
  if (!value.is_number_integer())
    return fail(pointer,
                std::string("expected an integer, got ") + describeType(value));
  if (!value.is_number_unsigned()) {
    int64_t i = *value.get_ptr<const Json::number_integer_t *>();
    if (i < 0)
      return fail(pointer, "must be >= 0, got " + std::to_string(i));
    out = static_cast<uint64_t>(i);
    return true;
  }
  out = *value.get_ptr<const Json::number_unsigned_t *>();
  return true;
}

bool SpecParser::readNumber(const Json &value, const std::string &pointer,
                            Range range, double &out) {
  if (!value.is_number())
    return fail(pointer,
                std::string("expected a number, got ") + describeType(value));
  double x = value.get<double>();
  if (!std::isfinite(x))
    return fail(pointer, "expected a finite number, got " + formatNumber(x));
  if (!range.contains(x))
    return fail(pointer,
                "must be " + range.describe() + ", got " + formatNumber(x));
  out = x;
  return true;
}

bool SpecParser::readBool(const Json &value, const std::string &pointer,
                          bool &out) {
  if (!value.is_boolean())
    return fail(pointer,
                std::string("expected a boolean, got ") + describeType(value));
  out = *value.get_ptr<const Json::boolean_t *>();
  return true;
}

bool SpecParser::readString(const Json &value, const std::string &pointer,
                            std::string &out) {
  if (!value.is_string())
    return fail(pointer,
                std::string("expected a string, got ") + describeType(value));
  out = *value.get_ptr<const Json::string_t *>();
  return true;
}

bool SpecParser::readNonEmptyString(const Json &value,
                                    const std::string &pointer,
                                    std::string &out) {
  if (!readString(value, pointer, out))
    return false;
  if (out.empty())
    return fail(pointer, "expected a non-empty string, got an empty string");
  return true;
}

template <typename E, std::size_t N>
bool SpecParser::readEnum(const Json &value, const std::string &pointer,
                          const char *what, const EnumName<E> (&table)[N],
                          E &out) {
  std::string name;
  if (!readString(value, pointer, name))
    return false;
  std::optional<E> found = valueOf(table, name);
  if (!found)
    return fail(pointer, std::string("unknown ") + what + " '" + name +
                             "' (expected one of: " + namesOf(table) + ")");
  out = *found;
  return true;
}

bool SpecParser::optInt(const Json &object, const std::string &pointer,
                        const char *key, int64_t min, int64_t &out) {
  const Json *value = member(object, key);
  return !value || readInt(*value, childPointer(pointer, key), min, out);
}

bool SpecParser::optNumber(const Json &object, const std::string &pointer,
                           const char *key, Range range, double &out) {
  const Json *value = member(object, key);
  return !value || readNumber(*value, childPointer(pointer, key), range, out);
}

bool SpecParser::optBool(const Json &object, const std::string &pointer,
                         const char *key, bool &out) {
  const Json *value = member(object, key);
  return !value || readBool(*value, childPointer(pointer, key), out);
}

template <typename E, std::size_t N>
bool SpecParser::optEnum(const Json &object, const std::string &pointer,
                         const char *key, const char *what,
                         const EnumName<E> (&table)[N], E &out) {
  const Json *value = member(object, key);
  return !value ||
         readEnum(*value, childPointer(pointer, key), what, table, out);
}

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
      for (const std::string &name : presetNames())
        names += (names.empty() ? "" : ", ") + name;
      return fail("/extends", "unknown preset '" + spec.extends +
                                  "' (expected one of: " + names + ")");
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
  if (!finishData(spec.data, spec.model))
    return false;

  spec.positions = std::move(values);
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
      !optInt(input, inputPtr, "channels", 1, out.input.channels) ||
      !optInt(input, inputPtr, "height", 1, out.input.height) ||
      !optInt(input, inputPtr, "width", 1, out.input.width))
    return false;

  if (!optInt(model, ptr, "patch_size", 1, out.patchSize) ||
      !optInt(model, ptr, "width", 1, out.width) ||
      !optInt(model, ptr, "depth", 1, out.depth) ||
      !optInt(model, ptr, "heads", 1, out.heads) ||
      !optNumber(model, ptr, "mlp_ratio", above(0), out.mlpRatio) ||
      !optInt(model, ptr, "classes", 2, out.classes) ||
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
  // 2^62: far beyond any real model, and safely convertible.
  if (hidden > 4611686018427387904.0)
    return fail("/model/mlp_ratio",
                "round(mlp_ratio * width) must be <= 2^62, " + found);
  out.mlpHidden = std::llround(out.mlpRatio * static_cast<double>(out.width));
  return true;
}

bool SpecParser::parseMoE(const Json &moe, const ModelSpec &model,
                          MoESpec &out) {
  const std::string ptr = "/moe";
  if (!expectObject(moe, ptr) ||
      !checkKeys(moe, ptr,
                 {"placement", "experts", "router", "top_k", "expert_hidden",
                  "capacity_factor", "shared_expert", "aux_loss",
                  "super_class_map"}) ||
      !requireKeys(moe, ptr, {"placement", "experts", "router"}))
    return false;
  out.enabled = true;

  if (!parsePlacement(*member(moe, "placement"), model.depth, out) ||
      !optInt(moe, ptr, "experts", 2, out.experts) ||
      !parseRouter(*member(moe, "router"), out.router))
    return false;
  const char *kindName = toString(out.router.kind);

  bool hasTopK = out.router.kind == RouterKind::TokenChoice ||
                 out.router.kind == RouterKind::PerImage ||
                 out.router.kind == RouterKind::Sinkhorn;
  out.topK = hasTopK ? 1 : 0;
  if (member(moe, "top_k")) {
    if (!hasTopK)
      return notUsedBy("/moe/top_k", "router kind", kindName);
    if (!optInt(moe, ptr, "top_k", 1, out.topK))
      return false;
    if (out.topK > out.experts)
      return fail("/moe/top_k", "must be <= experts (" +
                                    std::to_string(out.experts) + "), got " +
                                    std::to_string(out.topK));
  }

  out.expertHidden = model.mlpHidden;
  if (!optInt(moe, ptr, "expert_hidden", 1, out.expertHidden))
    return false;

  if (const Json *capacity = member(moe, "capacity_factor")) {
    if (out.router.kind == RouterKind::Soft)
      return notUsedBy("/moe/capacity_factor", "router kind", kindName);
    if (!parseCapacityFactor(*capacity, out))
      return false;
  }

  if (!optBool(moe, ptr, "shared_expert", out.sharedExpert))
    return false;

  const Json *aux = member(moe, "aux_loss");
  if (aux && !parseAuxLoss(*aux, moe, out))
    return false;

  if (const Json *map = member(moe, "super_class_map")) {
    if (!parseSuperClassMap(*map, model, out))
      return false;
    // The super-class loss is on by default when there is a map.
    if (!aux || !member(*aux, "super_class"))
      out.aux.superClass = 0.3;
  }
  return true;
}

bool SpecParser::parsePlacement(const Json &placement, int64_t depth,
                                MoESpec &out) {
  const std::string ptr = "/moe/placement";
  if (!expectObject(placement, ptr))
    return false;
  // The keys allowed depend on the rule; before the rule is known to be
  // valid, accept the keys of all rules.
  const Json *ruleValue = member(placement, "rule");
  std::optional<PlacementRule> rule;
  if (ruleValue && ruleValue->is_string())
    rule =
        valueOf(kPlacementRules, *ruleValue->get_ptr<const Json::string_t *>());
  KeyList allowed = {"rule", "n", "blocks"};
  if (rule)
    allowed = {"rule", *rule == PlacementRule::Blocks ? "blocks" : "n"};
  if (!checkKeys(placement, ptr, allowed) ||
      !requireKeys(placement, ptr, {"rule"}) ||
      !readEnum(*ruleValue, ptr + "/rule", "placement rule", kPlacementRules,
                out.rule) ||
      !requireKeys(placement, ptr, {allowed[1]}))
    return false;

  out.blocks.clear();
  const std::string depthStr = std::to_string(depth);
  switch (out.rule) {
  case PlacementRule::EveryN:
    if (!optInt(placement, ptr, "n", 1, out.n))
      return false;
    if (out.n > depth)
      return fail(ptr + "/n", "must be <= depth (" + depthStr + "), got " +
                                  std::to_string(out.n));
    for (int64_t i = 0; i < depth; ++i)
      if (i % out.n == out.n - 1)
        out.blocks.push_back(i);
    return true;

  case PlacementRule::LastN:
    if (!optInt(placement, ptr, "n", 1, out.n))
      return false;
    // 2n - 1 <= depth, written so that it cannot overflow.
    if (out.n > (depth + 1) / 2)
      return fail(ptr + "/n", "last-n needs 2n-1 <= depth (" + depthStr +
                                  "), got n = " + std::to_string(out.n));
    for (int64_t k = out.n - 1; k >= 0; --k)
      out.blocks.push_back(depth - 1 - 2 * k);
    return true;

  case PlacementRule::Blocks: {
    const std::string blocksPtr = ptr + "/blocks";
    const Json &blocks = *member(placement, "blocks");
    if (!blocks.is_array())
      return fail(blocksPtr, std::string("expected an array, got ") +
                                 describeType(blocks));
    if (blocks.empty())
      return fail(blocksPtr, "expected a non-empty array, got an empty array");
    std::map<int64_t, std::size_t> seen;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const std::string elemPtr = childPointer(blocksPtr, i);
      int64_t block;
      if (!readInt(blocks[i], elemPtr, std::numeric_limits<int64_t>::min(),
                   block))
        return false;
      if (block < 0 || block >= depth)
        return fail(elemPtr, "must be in [0, " + depthStr + "), got " +
                                 std::to_string(block));
      auto [it, inserted] = seen.emplace(block, i);
      if (!inserted)
        return fail(elemPtr, "duplicate block " + std::to_string(block) +
                                 " (also at " +
                                 childPointer(blocksPtr, it->second) + ")");
      out.blocks.push_back(block);
    }
    std::sort(out.blocks.begin(), out.blocks.end());
    return true;
  }
  }
  return true;
}

bool SpecParser::parseRouter(const Json &router, RouterSpec &out) {
  const std::string ptr = "/moe/router";
  if (!expectObject(router, ptr) ||
      !checkKeys(router, ptr,
                 {"kind", "noise_std", "iterations", "slots_per_expert"}) ||
      !requireKeys(router, ptr, {"kind"}) ||
      !optEnum(router, ptr, "kind", "router kind", kRouterKinds, out.kind))
    return false;
  const char *kindName = toString(out.kind);

  bool noisy = out.kind == RouterKind::TokenChoice ||
               out.kind == RouterKind::PerImage ||
               out.kind == RouterKind::Sinkhorn;
  if (member(router, "noise_std") && !noisy)
    return notUsedBy(ptr + "/noise_std", "router kind", kindName);
  out.noiseStd = 0.0;
  if (!optNumber(router, ptr, "noise_std", atLeast(0), out.noiseStd))
    return false;

  bool sinkhorn = out.kind == RouterKind::Sinkhorn;
  if (member(router, "iterations") && !sinkhorn)
    return notUsedBy(ptr + "/iterations", "router kind", kindName);
  out.sinkhornIters = sinkhorn ? 3 : 0;
  if (!optInt(router, ptr, "iterations", 1, out.sinkhornIters))
    return false;

  bool soft = out.kind == RouterKind::Soft;
  if (member(router, "slots_per_expert") && !soft)
    return notUsedBy(ptr + "/slots_per_expert", "router kind", kindName);
  out.slotsPerExpert = soft ? 1 : 0;
  return optInt(router, ptr, "slots_per_expert", 1, out.slotsPerExpert);
}

bool SpecParser::parseCapacityFactor(const Json &value, MoESpec &out) {
  const std::string ptr = "/moe/capacity_factor";
  if (value.is_number()) {
    if (!readNumber(value, ptr, above(0), out.capacityFactorTrain))
      return false;
    out.capacityFactorEval = out.capacityFactorTrain;
    return true;
  }
  if (!value.is_object())
    return fail(ptr, std::string("expected a number or an object, got ") +
                         describeType(value));
  return checkKeys(value, ptr, {"train", "eval"}) &&
         optNumber(value, ptr, "train", above(0), out.capacityFactorTrain) &&
         optNumber(value, ptr, "eval", above(0), out.capacityFactorEval);
}

bool SpecParser::parseAuxLoss(const Json &aux, const Json &moe, MoESpec &out) {
  const std::string ptr = "/moe/aux_loss";
  if (!expectObject(aux, ptr) ||
      !checkKeys(aux, ptr,
                 {"importance", "load", "balance", "z_loss", "super_class"}) ||
      !optNumber(aux, ptr, "importance", atLeast(0), out.aux.importance) ||
      !optNumber(aux, ptr, "load", atLeast(0), out.aux.load) ||
      !optNumber(aux, ptr, "balance", atLeast(0), out.aux.balance) ||
      !optNumber(aux, ptr, "z_loss", atLeast(0), out.aux.zLoss) ||
      !optNumber(aux, ptr, "super_class", atLeast(0), out.aux.superClass))
    return false;
  if (out.aux.load > 0 &&
      !(out.router.kind == RouterKind::TokenChoice && out.router.noiseStd > 0))
    return fail(ptr + "/load",
                "needs a token-choice router with noise_std > 0");
  if (out.aux.superClass > 0 && !member(moe, "super_class_map"))
    return fail(ptr + "/super_class", "needs /moe/super_class_map");
  return true;
}

bool SpecParser::parseSuperClassMap(const Json &map, const ModelSpec &model,
                                    MoESpec &out) {
  const std::string ptr = "/moe/super_class_map";
  if (!map.is_array())
    return fail(ptr,
                std::string("expected an array, got ") + describeType(map));
  if (static_cast<int64_t>(map.size()) != model.classes)
    return fail(ptr, "must have one entry per class (" +
                         std::to_string(model.classes) + "), got " +
                         std::to_string(map.size()));
  out.superClassMap.clear();
  for (std::size_t i = 0; i < map.size(); ++i) {
    const std::string elemPtr = childPointer(ptr, i);
    int64_t superClass;
    if (!readInt(map[i], elemPtr, std::numeric_limits<int64_t>::min(),
                 superClass))
      return false;
    if (superClass < 0 || superClass >= out.experts)
      return fail(elemPtr, "must be in [0, " + std::to_string(out.experts) +
                               "), got " + std::to_string(superClass));
    out.superClassMap.push_back(superClass);
  }
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
  if (!optInt(train, ptr, "batch", 1, out.batch) ||
      !optInt(train, ptr, "epochs", 1, out.epochs) ||
      !optNumber(train, ptr, "label_smoothing", kFraction, out.labelSmoothing))
    return false;
  if (const Json *seed = member(train, "seed"))
    if (!readUInt(*seed, ptr + "/seed", out.seed))
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
        !optInt(*augment, augmentPtr, "crop_padding", 0, out.cropPadding) ||
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
  std::string text;
  std::FILE *file = std::fopen(path.c_str(), "rb");
  int savedErrno = errno;
  if (file) {
    char buf[1 << 16];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), file)) > 0)
      text.append(buf, n);
    savedErrno = std::ferror(file) ? errno : 0;
    std::fclose(file);
  }
  if (!file || savedErrno != 0) {
    ParseResult result;
    result.error = SpecError{path, SourcePos{0, 0}, "",
                             std::string("cannot read file: ") +
                                 std::strerror(savedErrno)};
    return result;
  }
  return parseSpec(text, path);
}
