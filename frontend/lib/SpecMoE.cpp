//===- SpecMoE.cpp - moec JSON model spec: the moe section ----------------===//
//
// Checks "moe": placement, router, the model-wide MoE settings, and the
// per-layer overrides in /moe/layers, each merged over the model-wide
// settings and checked as a whole (docs/spec.md#per-layer-settings).
//
//===----------------------------------------------------------------------===//

#include "SpecParser.h"

#include <algorithm>
#include <limits>

using namespace moec::spec;
using namespace moec::spec::detail;

namespace {

/// Keys of /moe that set the model as a whole and so cannot be overridden
/// per layer.
const KeyList kModelWideKeys = {"placement", "aux_loss", "super_class_map",
                                "layers"};
/// Keys of a /moe/layers entry: the per-layer settings.
const KeyList kLayerKeys = {"experts",         "router",
                            "top_k",           "expert_hidden",
                            "capacity_factor", "shared_expert"};

bool contains(const KeyList &keys, const std::string &key) {
  return std::any_of(keys.begin(), keys.end(),
                     [&](const char *name) { return key == name; });
}

bool hasTopK(RouterKind kind) {
  return kind == RouterKind::TokenChoice || kind == RouterKind::PerImage ||
         kind == RouterKind::Sinkhorn;
}

/// The block index a /moe/layers key names: a decimal integer without sign
/// or leading zeros ("0", "5", "11").
std::optional<int64_t> blockIndex(const std::string &key) {
  if (key.empty() || key.size() > 18 || (key.size() > 1 && key[0] == '0') ||
      !std::all_of(key.begin(), key.end(),
                   [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::stoll(key);
}

std::string joinBlocks(const std::vector<int64_t> &blocks) {
  std::string out;
  for (int64_t block : blocks)
    out += (out.empty() ? "" : ", ") + std::to_string(block);
  return out;
}

} // namespace

bool SpecParser::parseMoE(const Json &moe, const ModelSpec &model,
                          MoESpec &out) {
  const std::string ptr = "/moe";
  if (!expectObject(moe, ptr) ||
      !checkKeys(moe, ptr,
                 {"placement", "experts", "router", "top_k", "expert_hidden",
                  "capacity_factor", "shared_expert", "aux_loss",
                  "super_class_map", "layers"}) ||
      !requireKeys(moe, ptr, {"placement", "experts", "router"}))
    return false;
  out.enabled = true;

  if (!parsePlacement(*member(moe, "placement"), model.depth, out))
    return false;
  out.expertHidden = model.mlpHidden;
  if (!parseSettings(moe, ptr, /*isLayer=*/false, out))
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
  if (!parseLayers(member(moe, "layers"), out) || !checkLayers(out))
    return false;
  // Routing from the class token needs one: cls pooling.
  for (const MoELayerSpec &layer : out.layers)
    if (layer.settings.router.classToken && model.pooling != Pooling::Cls)
      return fail(layer.pointer.empty() ? "/moe/router/input"
                                        : layer.pointer + "/router/input",
                  "\"class-token\" needs a class token (/model/pooling "
                  "\"cls\")");
  return true;
}

bool SpecParser::parseSettings(const Json &object, const std::string &ptr,
                               bool isLayer, MoELayerSettings &out) {
  // `out` holds what this object inherits: /moe's settings for a layer, the
  // defaults for /moe itself.
  const MoELayerSettings base = out;
  if (!optInt(object, ptr, "experts", 1, out.experts, limits::kMaxExperts))
    return false;
  if (const Json *router = member(object, "router"))
    if (!parseRouter(*router, ptr + "/router", isLayer ? &base.router : nullptr,
                     out.router))
      return false;
  const char *kindName = toString(out.router.kind);

  // A router kind with a k keeps the inherited k (1 if there is none).
  out.topK = hasTopK(out.router.kind) ? std::max<int64_t>(base.topK, 1) : 0;
  const std::string topKPtr = childPointer(ptr, "top_k");
  if (member(object, "top_k")) {
    if (!hasTopK(out.router.kind))
      return notUsedBy(topKPtr, "router kind", kindName);
    if (!optInt(object, ptr, "top_k", 1, out.topK))
      return false;
    if (out.topK > out.experts)
      return fail(topKPtr, "must be <= experts (" +
                               std::to_string(out.experts) + "), got " +
                               std::to_string(out.topK));
  } else if (out.topK > out.experts) {
    // Only a layer's own experts can fall below the k it inherits.
    return fail(childPointer(ptr, "experts"),
                "must be >= top_k (" + std::to_string(out.topK) +
                    ", from /moe/top_k), got " + std::to_string(out.experts));
  }

  if (!optInt(object, ptr, "expert_hidden", 1, out.expertHidden,
              limits::kMaxHidden))
    return false;

  if (const Json *capacity = member(object, "capacity_factor")) {
    if (out.router.kind == RouterKind::Soft)
      return notUsedBy(childPointer(ptr, "capacity_factor"), "router kind",
                       kindName);
    if (!parseCapacityFactor(*capacity, childPointer(ptr, "capacity_factor"),
                             out))
      return false;
  }
  return optBool(object, ptr, "shared_expert", out.sharedExpert);
}

bool SpecParser::parseLayers(const Json *layers, MoESpec &out) {
  out.layers.clear();
  for (int64_t block : out.blocks)
    out.layers.push_back({block, out, ""});
  if (!layers)
    return true;
  const std::string ptr = "/moe/layers";
  if (!expectObject(*layers, ptr))
    return false;
  for (auto it = layers->begin(); it != layers->end(); ++it) {
    const std::string &key = it.key();
    const std::string layerPtr = ptr + "/" + escapePointerToken(key);
    std::optional<int64_t> block = blockIndex(key);
    if (!block)
      return failAtKey(layerPtr, "expected a block index (a decimal integer "
                                 "such as \"3\"), got '" +
                                     key + "'");
    auto layer =
        std::find_if(out.layers.begin(), out.layers.end(),
                     [&](const MoELayerSpec &l) { return l.block == *block; });
    if (layer == out.layers.end())
      return failAtKey(layerPtr, "block " + key +
                                     " is not an MoE block (the placement "
                                     "selects blocks " +
                                     joinBlocks(out.blocks) + ")");
    const Json &settings = it.value();
    if (!expectObject(settings, layerPtr))
      return false;
    for (auto kt = settings.begin(); kt != settings.end(); ++kt) {
      if (contains(kModelWideKeys, kt.key()))
        return failAtKey(layerPtr + "/" + escapePointerToken(kt.key()),
                         "not a per-layer setting (set it in /moe)");
      if (!contains(kLayerKeys, kt.key()))
        return checkKeys(settings, layerPtr, kLayerKeys);
    }
    // Layers that share the model's router keep its kind, experts and k.
    if (out.router.modelScope)
      for (const char *key : {"router", "experts", "top_k"})
        if (member(settings, key))
          return failAtKey(layerPtr + "/" + key,
                           "the layers share /moe/router (\"scope\": "
                           "\"model\"): set it in /moe");
    layer->pointer = layerPtr;
    if (!parseSettings(settings, layerPtr, /*isLayer=*/true, layer->settings))
      return false;
  }
  return true;
}

bool SpecParser::checkLayers(const MoESpec &out) {
  // The load loss is defined through the noisy top-k gate: it applies to
  // the layers that have one, and there must be at least one.
  bool anyNoisy = std::any_of(
      out.layers.begin(), out.layers.end(), [](const MoELayerSpec &l) {
        return l.settings.router.kind == RouterKind::TokenChoice &&
               l.settings.router.noiseStd > 0;
      });
  if (out.aux.load > 0 && !anyNoisy)
    return fail("/moe/aux_loss/load",
                "needs a token-choice router with noise_std > 0");

  // Every layer routes to super-classes: each needs an expert for each.
  if (out.superClassMap.empty())
    return true;
  int64_t largest =
      *std::max_element(out.superClassMap.begin(), out.superClassMap.end());
  for (const MoELayerSpec &layer : out.layers)
    if (layer.settings.experts <= largest)
      return fail(layer.pointer + "/experts",
                  "must be > the largest /moe/super_class_map entry (" +
                      std::to_string(largest) + "), got " +
                      std::to_string(layer.settings.experts));
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

bool SpecParser::parseRouter(const Json &router, const std::string &ptr,
                             const RouterSpec *base, RouterSpec &out) {
  if (!expectObject(router, ptr) ||
      !checkKeys(router, ptr,
                 {"kind", "noise_std", "iterations", "slots_per_expert",
                  "batch_prioritized", "input", "gate", "gate_dim",
                  "gate_scale", "group_size", "scope"}) ||
      (!base && !requireKeys(router, ptr, {"kind"})))
    return false;
  RouterKind kind = base ? base->kind : RouterKind::TokenChoice;
  if (!optEnum(router, ptr, "kind", "router kind", kRouterKinds, kind))
    return false;
  // A layer that keeps the inherited kind inherits its other keys too; a
  // new kind starts from its own defaults.
  bool inherit = base && base->kind == kind;
  out = inherit ? *base : RouterSpec();
  out.kind = kind;
  const char *kindName = toString(kind);

  // Noise on the gates (V-MoE's noisy routing) for every kind but soft,
  // whose softmaxes over tokens and slots have no choice to perturb.
  bool noisy = kind != RouterKind::Soft;
  if (member(router, "noise_std") && !noisy)
    return notUsedBy(ptr + "/noise_std", "router kind", kindName);
  if (!optNumber(router, ptr, "noise_std", atLeast(0), out.noiseStd))
    return false;

  bool sinkhorn = kind == RouterKind::Sinkhorn;
  bool iterates = sinkhorn || kind == RouterKind::SinkhornExpertChoice;
  if (member(router, "iterations") && !iterates)
    return notUsedBy(ptr + "/iterations", "router kind", kindName);
  if (!inherit)
    out.sinkhornIters = iterates ? 3 : 0;
  if (!optInt(router, ptr, "iterations", 1, out.sinkhornIters,
              limits::kMaxSinkhornIters))
    return false;

  bool queues = kind == RouterKind::TokenChoice || sinkhorn;
  if (member(router, "batch_prioritized") && !queues)
    return notUsedBy(ptr + "/batch_prioritized", "router kind", kindName);
  if (!optBool(router, ptr, "batch_prioritized", out.batchPrioritized))
    return false;

  // Per-image routing reads the mean token, or the class token.
  if (member(router, "input") && kind != RouterKind::PerImage)
    return notUsedBy(ptr + "/input", "router kind", kindName);
  if (!inherit)
    out.classToken = false;
  if (member(router, "input")) {
    bool classToken = out.classToken;
    if (!optEnum(router, ptr, "input", "router input", kRouterInputs,
                 classToken))
      return false;
    out.classToken = classToken;
  }

  bool soft = kind == RouterKind::Soft;
  if (member(router, "slots_per_expert") && !soft)
    return notUsedBy(ptr + "/slots_per_expert", "router kind", kindName);
  if (!inherit)
    out.slotsPerExpert = soft ? 1 : 0;
  if (!optInt(router, ptr, "slots_per_expert", 1, out.slotsPerExpert,
              limits::kMaxSlotsPerExpert))
    return false;

  // One per-image router for the whole model: set in /moe only (the
  // layers then share it).
  if (member(router, "scope")) {
    if (base)
      return fail(ptr + "/scope", "not a per-layer setting (set it in "
                                  "/moe/router)");
    if (kind != RouterKind::PerImage)
      return notUsedBy(ptr + "/scope", "router kind", kindName);
    if (!optEnum(router, ptr, "scope", "router scope", kRouterScopes,
                 out.modelScope))
      return false;
  }

  // Routing groups: a per-image router decides for each image alone.
  if (member(router, "group_size") && kind == RouterKind::PerImage)
    return notUsedBy(ptr + "/group_size", "router kind", kindName);
  if (!inherit)
    out.groupSize = 1;
  if (!optInt(router, ptr, "group_size", 1, out.groupSize,
              limits::kMaxGroupSize))
    return false;
  return parseGate(router, ptr, inherit, out);
}

bool SpecParser::parseGate(const Json &router, const std::string &ptr,
                           bool inherit, RouterSpec &out) {
  // Cosine gates: Soft MoE's as published (google-research/vmoe), and the
  // cosine router (X-MoE) for the kinds that choose. A per-image router
  // averages its tokens, which a cosine of tokens does not describe.
  bool perImage = out.kind == RouterKind::PerImage;
  if (!inherit) {
    out.cosine = out.kind == RouterKind::Soft;
    out.gateDim = 0;
    out.gateScale = 1.0;
  }
  if (member(router, "gate")) {
    if (perImage)
      return notUsedBy(ptr + "/gate", "router kind", toString(out.kind));
    if (!optEnum(router, ptr, "gate", "router gate", kRouterGates, out.cosine))
      return false;
    if (!out.cosine) {
      out.gateDim = 0;
      out.gateScale = 1.0;
    }
  }
  for (const char *key : {"gate_dim", "gate_scale"})
    if (member(router, key) && !out.cosine)
      return fail(ptr + "/" + key, "needs \"gate\": \"cosine\"");
  return optInt(router, ptr, "gate_dim", 1, out.gateDim, limits::kMaxGateDim) &&
         optNumber(router, ptr, "gate_scale", above(0), out.gateScale);
}

bool SpecParser::parseCapacityFactor(const Json &value, const std::string &ptr,
                                     MoELayerSettings &out) {
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

std::optional<SpecError> moec::spec::checkRoutingGroups(const Spec &spec,
                                                        int64_t batch) {
  for (const MoELayerSpec &layer : spec.moe.layers) {
    int64_t n = layer.settings.router.groupSize;
    if (batch % n == 0)
      continue;
    std::string pointer = layer.pointer + "/router/group_size";
    if (layer.pointer.empty() || !spec.positions.count(pointer))
      pointer = "/moe/router/group_size";
    return SpecError{spec.sourceName, spec.positionOf(pointer), pointer,
                     std::to_string(n) + " images per routing group do not "
                     "divide the batch of " + std::to_string(batch) +
                     " images"};
  }
  return std::nullopt;
}
