//===- SpecParser.h - moec JSON model spec validator ------------*- C++ -*-===//
//
// The validator behind parseSpec (Spec.h), shared by the files that check
// the spec's sections: Spec.cpp (top level, model, train, data), SpecMoE.cpp
// (moe, placement, routers, per-layer settings), SpecLimits.cpp (the derived
// totals) and SpecParser.cpp (the readers and diagnostics). Private to the
// frontend library.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_FRONTEND_LIB_SPECPARSER_H
#define MOEC_FRONTEND_LIB_SPECPARSER_H

#include "moec/Frontend/Spec.h"

#include "JsonPositions.h"

#include <nlohmann/json.hpp>

#include <cstddef>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moec::spec::detail {

inline constexpr int64_t kNoMax = std::numeric_limits<int64_t>::max();

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

inline constexpr EnumName<Pooling> kPoolings[] = {{"cls", Pooling::Cls},
                                                  {"mean", Pooling::Mean}};
inline constexpr EnumName<Activation> kActivations[] = {
    {"gelu", Activation::Gelu},
    {"gelu_tanh", Activation::GeluTanh},
    {"relu", Activation::Relu},
    {"silu", Activation::Silu}};
inline constexpr EnumName<RouterKind> kRouterKinds[] = {
    {"token-choice", RouterKind::TokenChoice},
    {"expert-choice", RouterKind::ExpertChoice},
    {"soft", RouterKind::Soft},
    {"per-image", RouterKind::PerImage},
    {"sinkhorn", RouterKind::Sinkhorn},
    {"sinkhorn-expert-choice", RouterKind::SinkhornExpertChoice}};
/// A per-image router's input: false = the mean token, true = the class
/// token.
inline constexpr EnumName<bool> kRouterInputs[] = {{"mean", false},
                                                   {"class-token", true}};
/// A router's scope: false = its layer, true = the whole model.
inline constexpr EnumName<bool> kRouterScopes[] = {{"layer", false},
                                                   {"model", true}};
/// A router's gate: false = linear, true = cosine.
inline constexpr EnumName<bool> kRouterGates[] = {{"linear", false},
                                                  {"cosine", true}};
inline constexpr EnumName<PlacementRule> kPlacementRules[] = {
    {"every-n", PlacementRule::EveryN},
    {"last-n", PlacementRule::LastN},
    {"blocks", PlacementRule::Blocks}};
inline constexpr EnumName<OptimizerKind> kOptimizerKinds[] = {
    {"adamw", OptimizerKind::AdamW}, {"sgd", OptimizerKind::Sgd}};
inline constexpr EnumName<ScheduleKind> kScheduleKinds[] = {
    {"cosine", ScheduleKind::Cosine}, {"constant", ScheduleKind::Constant}};
inline constexpr EnumName<DatasetKind> kDatasetKinds[] = {
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

//===----------------------------------------------------------------------===//
// Formatting helpers
//===----------------------------------------------------------------------===//

/// Shortest "%g"-like form that reads back as `value`: plain notation for
/// magnitudes in [1e-4, 1e17), otherwise an exponent without padding zeros
/// ("1e-6" rather than "1e-06").
std::string formatNumber(double value);
/// "an object", "a string", ... as used in "expected X, got Y".
const char *describeType(const Json &value);
std::string joinKeys(const KeyList &keys);
std::string childPointer(const std::string &pointer, const char *key);
std::string childPointer(const std::string &pointer, std::size_t index);
const Json *member(const Json &object, const char *key);
/// The entry for `pointer` in `map`, or for its closest ancestor.
SourcePos lookUpwards(const std::map<std::string, SourcePos> &map,
                      std::string pointer);
/// ", did you mean 'NAME'?" for the candidate closest to `typed` (edit
/// distance, case-insensitive, adjacent transpositions count once) if it is
/// close enough to be a misspelling, else "".
std::string didYouMean(std::string_view typed,
                       const std::vector<const char *> &candidates);

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

inline constexpr Range atLeast(double lo) {
  return {lo, false, false, 0, false};
}
inline constexpr Range above(double lo) { return {lo, true, false, 0, false}; }
/// [0, 1)
inline constexpr Range kFraction = {0, false, true, 1, true};
/// [0, 1]
inline constexpr Range kUnitInterval = {0, false, true, 1, false};

//===----------------------------------------------------------------------===//
// SpecParser
//===----------------------------------------------------------------------===//

/// Validates a parsed document section by section, filling a Spec. Every
/// method returns false once it has recorded an error.
class SpecParser {
public:
  SpecParser(const std::string &sourceName, JsonPositions positions)
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
  /// Fails at the first key of `object` not in `allowed`, suggesting the
  /// closest allowed key when it looks like a misspelling of one.
  bool checkKeys(const Json &object, const std::string &pointer,
                 const KeyList &allowed);
  bool requireKeys(const Json &object, const std::string &pointer,
                   const KeyList &required);

  // Scalars.
  /// An integer in [min, max].
  bool readInt(const Json &value, const std::string &pointer, int64_t min,
               int64_t &out, int64_t max = kNoMax);
  bool readUInt(const Json &value, const std::string &pointer, uint64_t &out,
                uint64_t max);
  bool readNumber(const Json &value, const std::string &pointer, Range range,
                  double &out);
  bool readBool(const Json &value, const std::string &pointer, bool &out);
  bool readString(const Json &value, const std::string &pointer,
                  std::string &out);
  bool readNonEmptyString(const Json &value, const std::string &pointer,
                          std::string &out);
  template <typename E, std::size_t N>
  bool readEnum(const Json &value, const std::string &pointer, const char *what,
                const EnumName<E> (&table)[N], E &out) {
    std::string name;
    if (!readString(value, pointer, name))
      return false;
    std::optional<E> found = valueOf(table, name);
    if (found) {
      out = *found;
      return true;
    }
    std::vector<const char *> names;
    for (const EnumName<E> &entry : table)
      names.push_back(entry.name);
    return fail(pointer, std::string("unknown ") + what + " '" + name + "'" +
                             didYouMean(name, names) +
                             " (expected one of: " + namesOf(table) + ")");
  }

  // Optional members: leave `out` alone when `key` is absent.
  bool optInt(const Json &object, const std::string &pointer, const char *key,
              int64_t min, int64_t &out, int64_t max = kNoMax);
  bool optNumber(const Json &object, const std::string &pointer,
                 const char *key, Range range, double &out);
  bool optBool(const Json &object, const std::string &pointer, const char *key,
               bool &out);
  template <typename E, std::size_t N>
  bool optEnum(const Json &object, const std::string &pointer, const char *key,
               const char *what, const EnumName<E> (&table)[N], E &out) {
    const Json *value = member(object, key);
    return !value ||
           readEnum(*value, childPointer(pointer, key), what, table, out);
  }

  // Sections.
  bool parseModel(const Json &model, ModelSpec &out);
  bool parseMoE(const Json &moe, const ModelSpec &model, MoESpec &out);
  bool parsePlacement(const Json &placement, int64_t depth, MoESpec &out);
  /// `base`: the router a layer inherits (kind optional), or null for /moe's
  /// own router (kind required).
  bool parseRouter(const Json &router, const std::string &pointer,
                   const RouterSpec *base, RouterSpec &out);
  /// The router's "gate", "gate_dim" and "gate_scale" (`inherit`: `out`
  /// holds the inherited router of the same kind).
  bool parseGate(const Json &router, const std::string &pointer, bool inherit,
                 RouterSpec &out);
  bool parseCapacityFactor(const Json &value, const std::string &pointer,
                           MoELayerSettings &out);
  bool parseAuxLoss(const Json &aux, const Json &moe, MoESpec &out);
  /// The per-layer settings in `object` (/moe itself or a /moe/layers
  /// entry at `pointer`), merged over what `out` holds.
  bool parseSettings(const Json &object, const std::string &pointer,
                     bool isLayer, MoELayerSettings &out);
  /// /moe/layers (null if absent): fills out.layers, one per MoE block.
  bool parseLayers(const Json *layers, MoESpec &out);
  /// Checks across the model-wide values and every layer's settings.
  bool checkLayers(const MoESpec &out);
  bool parseSuperClassMap(const Json &map, const ModelSpec &model,
                          MoESpec &out);
  bool parseTrain(const Json &train, TrainSpec &out);
  bool parseOptimizer(const Json &optimizer, OptimizerSpec &out);
  bool parseSchedule(const Json &schedule, ScheduleSpec &out);
  bool parseData(const Json &data, DataSpec &out);
  /// Checks the dataset against the model and resolves the default path.
  bool finishData(DataSpec &data, const ModelSpec &model);
  /// Checks the derived totals (SpecLimits.cpp) of a spec whose fields are
  /// all within their caps.
  bool checkTotals(const Spec &spec);

  const std::string &sourceName;
  std::map<std::string, SourcePos> values;
  std::map<std::string, SourcePos> keys;
  SpecError error;
};

} // namespace moec::spec::detail

#endif // MOEC_FRONTEND_LIB_SPECPARSER_H
