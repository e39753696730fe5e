//===- Analyze.h - routing analysis of a trained model ----------*- C++ -*-===//
//
// analyzeRouting runs a model's "analyze" entry point (docs/training-abi.md)
// over a labelled dataset and condenses each MoE layer's per-image routing
// statistics into a RoutingProfile: how the layer loads its experts, how
// the classes spread over them, and how much the routing depends on the
// class (the normalised mutual information moe-prune-layers reads).
// routingProfileJson writes it in the documented schema (docs/analysis.md);
// heatmapsSvg and specialisationSvg draw it.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_ANALYZE_H
#define MOEC_RUNTIME_ANALYZE_H

#include "moec/Runtime/Data.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/Session.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moec::rt {

/// The format name and version routingProfileJson writes.
constexpr const char *kProfileFormat = "moec-routing-profile";
constexpr int kProfileVersion = 1;
/// The NMI below which a layer counts as not specialising, unless told
/// otherwise (moe-prune-layers' `threshold` has the same default).
constexpr double kDefaultNmiThreshold = 0.05;

/// What one MoE layer's routing looks like over a dataset.
struct LayerProfile {
  std::string name; ///< "blocks.3.moe"
  int64_t block = -1;
  std::string router; ///< the layer's router kind (the spec's name)
  int64_t experts = 0, topK = 0, tokensPerImage = 0;
  bool sharedExpert = false;

  /// Tokens of each class's images each expert processed [classes][E]
  /// (summed dispatch weights for soft MoE; a top-k token counts k times).
  std::vector<std::vector<double>> classTokens;
  /// Share of the dispatched tokens per expert, and the router's mean
  /// softmax probability per expert (its importance), both summing to 1.
  std::vector<double> load, importance;
  /// The expert with the largest load.
  int64_t mostUsedExpert = 0;
  /// Images whose tokens reach exactly u experts, u = 0..E.
  std::vector<int64_t> expertsUsedHistogram;
  double expertsPerImage = 0;
  /// Mean entropy of the router's softmax over a decision, / log(E*P).
  double routingEntropy = 0;
  /// Mean over tokens of the gate weight summed over the experts that took
  /// the token: what the routed experts' outputs are scaled by.
  double gateMassPerToken = 0;
  /// Token-choice, sinkhorn and per-image routers: the share of
  /// token-choices that found no slot.
  std::optional<double> droppedFraction;
  /// S_ij: cosine similarity of experts i's and j's class profiles
  /// (columns of classTokens) [E][E].
  std::vector<std::vector<double>> expertSimilarity;
  /// Share of images whose most probable expert is their class's
  /// super-class (only with a super_class_map).
  std::optional<double> superClassAccuracy;
  /// Images of each class whose tokens went most to each expert (the
  /// lower index on ties) [classes][E].
  std::vector<std::vector<double>> classDominant;
  /// I(class; expert) of classTokens in nats, and normalised by the mean
  /// of H(class) and H(expert) (0 when either is 0): how much a token's
  /// expert tells about its image's class.
  double mutualInformation = 0, tokenNmi = 0;
  /// The same NMI of classDominant: how much an image's dominant expert
  /// tells about its class. The specialisation criterion (`specialises`
  /// when >= the threshold; moe-prune-layers' default criterion).
  double imageNmi = 0;
  /// Share of the dispatched tokens that went to their class's most-used
  /// expert: 1/E for class-blind balanced routing, 1 when each class
  /// keeps to one expert.
  double routingDegree = 0;
  /// Parameters one routed expert has, those every token uses (router,
  /// shared expert), and those an image activates on average (the
  /// latter plus one expert's for every expert its tokens reach).
  int64_t paramsPerExpert = 0, alwaysActiveParams = 0;
  double activatedParamsPerImage = 0;
};

struct RoutingProfile {
  std::string model;
  std::string datasetKind, dataDir, split;
  int64_t images = 0;
  std::vector<std::string> classNames;
  std::vector<int64_t> superClassMap;
  double top1 = 0;
  /// The model's parameters, and those one image activates on average
  /// (every layer's activatedParamsPerImage in place of its experts').
  int64_t params = 0;
  double activatedParamsPerImage = 0;
  std::vector<LayerProfile> layers;
};

/// Runs "analyze" over `data` (which must be labelled) in batches of the
/// model's batch, the last one padded, and builds the profile. The caller
/// fills datasetKind, dataDir and split. Argument errors for a model
/// without an analyze entry point, or without weights; a data error for
/// unlabelled images.
Expected<RoutingProfile> analyzeRouting(Session &session, const Dataset &data);

/// The profile as JSON (docs/analysis.md). `threshold` marks which layers
/// specialise (imageNmi >= threshold).
std::string routingProfileJson(const RoutingProfile &profile,
                               double threshold);

/// Writes DIR/profile.json (routingProfileJson), DIR/heatmaps.svg and
/// DIR/specialisation.svg, creating DIR if missing; each file atomically.
Error writeRoutingProfile(const RoutingProfile &profile, const std::string &dir,
                          double threshold);

/// What moec-run analyze prints: the model's line, then one per layer.
std::string routingProfileTable(const RoutingProfile &profile,
                                double threshold);

/// Two class x expert heatmaps per MoE layer: the share of each class's
/// dispatched tokens each expert took, and the share of its images whose
/// dominant expert each expert is; colours compare a cell with the
/// expert's share over all classes.
std::string heatmapsSvg(const RoutingProfile &profile);

/// Per layer, its image-level NMI against `threshold`, its token-level NMI,
/// routing degree, entropy and experts per image.
std::string specialisationSvg(const RoutingProfile &profile, double threshold);

} // namespace moec::rt

#endif // MOEC_RUNTIME_ANALYZE_H
