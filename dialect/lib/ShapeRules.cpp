//===- ShapeRules.cpp - moe shape rules -----------------------------------===//
//
// See ShapeRules.h. Messages follow MLIR style: lowercase, no final period,
// naming the operand and the offending value.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/ShapeRules.h"

#include "mlir/IR/BuiltinTypeInterfaces.h"

#include <cmath>

using namespace mlir;

namespace moec::moe {
namespace {
constexpr int64_t kDyn = ShapedType::kDynamic;

bool dimEq(int64_t a, int64_t b) { return a == kDyn || b == kDyn || a == b; }

/// a * b, dynamic if either is.
int64_t dimMul(int64_t a, int64_t b) {
  return (a == kDyn || b == kDyn) ? kDyn : a * b;
}

LogicalResult expectRank(EmitErrorFn emitError, StringRef what,
                         ArrayRef<int64_t> shape, int64_t rank,
                         StringRef layout) {
  if (static_cast<int64_t>(shape.size()) == rank)
    return success();
  return emitError() << "expects " << what << " of rank " << rank << " ("
                     << layout << "), got rank " << shape.size();
}

LogicalResult expectShape(EmitErrorFn emitError, StringRef what,
                          ArrayRef<int64_t> shape, ArrayRef<int64_t> expected,
                          StringRef why = {}) {
  if (shapesCompatible(shape, expected))
    return success();
  auto diag = emitError() << "expects " << what << " of shape "
                          << formatShape(expected);
  if (!why.empty())
    diag << " (" << why << ")";
  return diag << ", got " << formatShape(shape);
}

/// Shared by moe.experts (stacked, with a leading E) and moe.shared_expert.
LogicalResult checkFfnWeights(EmitErrorFn emitError, ArrayRef<int64_t> lead,
                              int64_t width, ArrayRef<int64_t> fc1Weight,
                              ArrayRef<int64_t> fc1Bias,
                              ArrayRef<int64_t> fc2Weight,
                              ArrayRef<int64_t> fc2Bias) {
  int64_t rank = lead.size() + 2;
  StringRef layout = lead.empty() ? "[D, H]" : "[E, D, H]";
  if (failed(expectRank(emitError, "fc1_weight", fc1Weight, rank, layout)))
    return failure();
  int64_t hidden = fc1Weight.back();
  Shape w1(lead), b1(lead), w2(lead), b2(lead);
  w1.append({width, hidden});
  b1.push_back(hidden);
  w2.append({hidden, width});
  b2.push_back(width);
  if (failed(expectShape(emitError, "fc1_weight", fc1Weight, w1,
                         "rows = the input width")) ||
      failed(expectShape(emitError, "fc1_bias", fc1Bias, b1)) ||
      failed(expectShape(emitError, "fc2_weight", fc2Weight, w2)) ||
      failed(expectShape(emitError, "fc2_bias", fc2Bias, b2)))
    return failure();
  return success();
}
} // namespace

std::string formatShape(ArrayRef<int64_t> shape) {
  if (shape.empty())
    return "scalar";
  std::string s;
  for (auto [i, d] : llvm::enumerate(shape)) {
    if (i)
      s += 'x';
    s += d == kDyn ? std::string("?") : std::to_string(d);
  }
  return s;
}

bool shapesCompatible(ArrayRef<int64_t> a, ArrayRef<int64_t> b) {
  if (a.size() != b.size())
    return false;
  for (auto [x, y] : llvm::zip_equal(a, b))
    if (!dimEq(x, y))
      return false;
  return true;
}

FailureOr<Shape> inferPatchEmbedShape(EmitErrorFn emitError,
                                      ArrayRef<int64_t> input,
                                      ArrayRef<int64_t> weight,
                                      ArrayRef<int64_t> bias,
                                      int64_t patchSize) {
  if (failed(expectRank(emitError, "input", input, 4, "[N, C, H, W]")))
    return failure();
  int64_t h = input[2], w = input[3];
  assert(patchSize > 0 && "patch_size is a positive attribute");
  if ((h != kDyn && h % patchSize) || (w != kDyn && w % patchSize))
    return emitError() << "expects patch_size " << patchSize
                       << " to divide the image height and width, got "
                       << formatShape(input.drop_front(2));
  if (failed(expectRank(emitError, "weight", weight, 2, "[C*P*P, D]")))
    return failure();
  int64_t width = weight[1];
  if (failed(expectShape(emitError, "weight", weight,
                         {dimMul(input[1], patchSize * patchSize), width},
                         "rows = channels * patch_size^2")) ||
      failed(expectShape(emitError, "bias", bias, {width})))
    return failure();
  int64_t patches = (h == kDyn || w == kDyn)
                        ? kDyn
                        : (h / patchSize) * (w / patchSize);
  return Shape{input[0], patches, width};
}

FailureOr<Shape> inferClassTokenShape(EmitErrorFn emitError,
                                      ArrayRef<int64_t> input,
                                      ArrayRef<int64_t> token) {
  if (failed(expectRank(emitError, "input", input, 3, "[N, S, D]")) ||
      failed(expectShape(emitError, "token", token, {input[2]})))
    return failure();
  return Shape{input[0], input[1] == kDyn ? kDyn : input[1] + 1, input[2]};
}

FailureOr<Shape> inferPosEmbedShape(EmitErrorFn emitError,
                                    ArrayRef<int64_t> input,
                                    ArrayRef<int64_t> embedding) {
  if (failed(expectRank(emitError, "input", input, 3, "[N, S, D]")) ||
      failed(expectShape(emitError, "embedding", embedding,
                         {input[1], input[2]})))
    return failure();
  return Shape(input);
}

FailureOr<Shape> inferLayerNormShape(EmitErrorFn emitError,
                                     ArrayRef<int64_t> input,
                                     ArrayRef<int64_t> gamma,
                                     ArrayRef<int64_t> beta, double epsilon) {
  if (input.empty())
    return emitError() << "expects input of rank >= 1, got a scalar";
  if (!(epsilon > 0.0))
    return emitError() << "expects a positive epsilon, got " << epsilon;
  if (failed(expectShape(emitError, "gamma", gamma, {input.back()})) ||
      failed(expectShape(emitError, "beta", beta, {input.back()})))
    return failure();
  return Shape(input);
}

FailureOr<Shape> inferAttentionShape(EmitErrorFn emitError,
                                     ArrayRef<int64_t> input,
                                     ArrayRef<int64_t> qkvWeight,
                                     ArrayRef<int64_t> qkvBias,
                                     ArrayRef<int64_t> outWeight,
                                     ArrayRef<int64_t> outBias, int64_t heads) {
  if (failed(expectRank(emitError, "input", input, 3, "[N, S, D]")))
    return failure();
  int64_t width = input[2];
  assert(heads > 0 && "heads is a positive attribute");
  if (width != kDyn && width % heads)
    return emitError() << "expects heads (" << heads
                       << ") to divide the width " << width;
  if (failed(expectShape(emitError, "qkv_weight", qkvWeight,
                         {width, dimMul(width, 3)})) ||
      failed(expectShape(emitError, "qkv_bias", qkvBias, {dimMul(width, 3)})) ||
      failed(expectShape(emitError, "out_weight", outWeight, {width, width})) ||
      failed(expectShape(emitError, "out_bias", outBias, {width})))
    return failure();
  return Shape(input);
}

FailureOr<Shape> inferDenseShape(EmitErrorFn emitError,
                                 ArrayRef<int64_t> input,
                                 ArrayRef<int64_t> weight,
                                 std::optional<ArrayRef<int64_t>> bias) {
  if (input.empty())
    return emitError() << "expects input of rank >= 1, got a scalar";
  if (failed(expectRank(emitError, "weight", weight, 2, "[K, M]")))
    return failure();
  if (!dimEq(weight[0], input.back()))
    return emitError() << "expects weight rows (" << weight[0]
                       << ") to match the input's last dimension ("
                       << input.back() << ")";
  if (bias && failed(expectShape(emitError, "bias", *bias, {weight[1]})))
    return failure();
  Shape result(input.drop_back());
  result.push_back(weight[1]);
  return result;
}

FailureOr<Shape> inferPoolShape(EmitErrorFn emitError,
                                ArrayRef<int64_t> input) {
  if (failed(expectRank(emitError, "input", input, 3, "[N, S, D]")))
    return failure();
  return Shape{input[0], input[2]};
}

FailureOr<Shape> inferClassifierHeadShape(EmitErrorFn emitError,
                                          ArrayRef<int64_t> input,
                                          ArrayRef<int64_t> weight,
                                          ArrayRef<int64_t> bias) {
  if (failed(expectRank(emitError, "input", input, 2, "[N, D]")))
    return failure();
  return inferDenseShape(emitError, input, weight, bias);
}

FailureOr<Shape> inferSoftmaxCrossEntropyShape(EmitErrorFn emitError,
                                               ArrayRef<int64_t> logits,
                                               ArrayRef<int64_t> labels,
                                               double labelSmoothing) {
  if (failed(expectRank(emitError, "logits", logits, 2, "[N, K]")) ||
      failed(expectShape(emitError, "labels", labels, {logits[0]})))
    return failure();
  if (!(labelSmoothing >= 0.0 && labelSmoothing < 1.0))
    return emitError() << "expects label_smoothing in [0, 1), got "
                       << labelSmoothing;
  return Shape{};
}

//===----------------------------------------------------------------------===//
// Routing
//===----------------------------------------------------------------------===//

LogicalResult verifyRouterConfig(EmitErrorFn emitError,
                                 const RouterConfig &config,
                                 int64_t numExperts) {
  RouterKind kind = config.kind;
  StringRef name = stringifyRouterKind(kind);
  bool takesK = kind == RouterKind::TokenChoice ||
                kind == RouterKind::PerImage || kind == RouterKind::Sinkhorn;
  bool takesCapacity = kind == RouterKind::TokenChoice ||
                       kind == RouterKind::ExpertChoice ||
                       kind == RouterKind::Sinkhorn ||
                       kind == RouterKind::SinkhornExpertChoice;
  // Noise on the gates (training): every kind but soft, whose two softmaxes
  // have no top-k to perturb.
  bool takesNoise = kind != RouterKind::Soft;

  auto notUsed = [&](StringRef attr) {
    return emitError() << "'" << attr << "' is not used by router kind "
                       << name;
  };
  auto missing = [&](StringRef attr) {
    return emitError() << "router kind " << name << " needs '" << attr
                       << "'";
  };

  if (numExperts < 1)
    return emitError() << "expects at least 1 expert, got " << numExperts;
  if (takesK != config.k.has_value())
    return takesK ? missing("k") : notUsed("k");
  if (config.k && *config.k > numExperts)
    return emitError() << "expects k <= the number of experts ("
                       << numExperts << "), got " << *config.k;
  if (takesCapacity != config.capacityFactor.has_value())
    return takesCapacity ? missing("capacity_factor")
                         : notUsed("capacity_factor");
  if (config.capacityFactor && !(*config.capacityFactor > 0.0))
    return emitError() << "expects a positive capacity_factor, got "
                       << *config.capacityFactor;
  if (config.noiseStd && !takesNoise)
    return notUsed("noise_std");
  if (config.noiseStd && !(*config.noiseStd >= 0.0))
    return emitError() << "expects a non-negative noise_std, got "
                       << *config.noiseStd;
  bool isSinkhorn = kind == RouterKind::Sinkhorn;
  bool iterates = isSinkhorn || kind == RouterKind::SinkhornExpertChoice;
  if (iterates != config.sinkhornIters.has_value())
    return iterates ? missing("sinkhorn_iters") : notUsed("sinkhorn_iters");
  if (config.batchPrioritized && kind != RouterKind::TokenChoice && !isSinkhorn)
    return notUsed("batch_prioritized");
  if (config.classToken && kind != RouterKind::PerImage)
    return notUsed("class_token");
  bool isSoft = kind == RouterKind::Soft;
  if (isSoft != config.slotsPerExpert.has_value())
    return isSoft ? missing("slots_per_expert") : notUsed("slots_per_expert");
  return success();
}

int64_t routerCapacity(const RouterConfig &config, int64_t tokens,
                       int64_t numExperts) {
  switch (config.kind) {
  case RouterKind::Soft:
    return *config.slotsPerExpert;
  case RouterKind::PerImage:
    return tokens;
  case RouterKind::TokenChoice:
  case RouterKind::Sinkhorn:
  case RouterKind::ExpertChoice:
  case RouterKind::SinkhornExpertChoice: {
    if (tokens == kDyn)
      return kDyn;
    int64_t k = config.k ? *config.k : 1; // expert choice: 1
    double want = std::ceil(static_cast<double>(k) * tokens *
                            *config.capacityFactor / numExperts);
    return std::clamp<int64_t>(static_cast<int64_t>(want), 1, tokens);
  }
  }
  llvm_unreachable("unknown router kind");
}

int64_t routedRowBound(RouterKind kind, int64_t tokens, int64_t numExperts,
                       int64_t k, int64_t capacity, int64_t rowTile) {
  int64_t filled = 0;
  switch (kind) {
  case RouterKind::ExpertChoice:
  case RouterKind::SinkhornExpertChoice:
  case RouterKind::Soft:
    filled = numExperts * capacity; // every expert fills all its slots
    break;
  case RouterKind::PerImage:
    filled = k * tokens; // k experts, each all tokens
    break;
  case RouterKind::TokenChoice:
  case RouterKind::Sinkhorn:
    filled = std::min(tokens * k, numExperts * capacity);
    break;
  }
  int64_t perExpert = (capacity + rowTile - 1) / rowTile * rowTile;
  return std::min(numExperts * perExpert, filled + numExperts * (rowTile - 1));
}

FailureOr<RouterShapes> inferRouterShapes(EmitErrorFn emitError,
                                          ArrayRef<int64_t> input,
                                          ArrayRef<int64_t> weight,
                                          const RouterConfig &config,
                                          int64_t numExperts) {
  if (failed(expectRank(emitError, "input", input, 3, "[G, S, D]")) ||
      failed(verifyRouterConfig(emitError, config, numExperts)))
    return failure();
  int64_t slots = config.kind == RouterKind::Soft ? *config.slotsPerExpert : 1;
  if (failed(expectShape(emitError, "weight", weight,
                         {input[2], numExperts * slots},
                         config.kind == RouterKind::Soft
                             ? "[D, experts * slots_per_expert]"
                             : "[D, experts]")))
    return failure();
  int64_t groups = input[0], tokens = input[1];
  int64_t capacity = routerCapacity(config, tokens, numExperts);
  int64_t decisions = config.kind == RouterKind::PerImage ? 1 : tokens;
  RouterShapes shapes;
  shapes.dispatch = {groups, tokens, numExperts, capacity};
  shapes.combine = shapes.dispatch;
  shapes.logits = {groups, decisions, numExperts * slots};
  return shapes;
}

FailureOr<Shape> inferDispatchShape(EmitErrorFn emitError,
                                    ArrayRef<int64_t> input,
                                    ArrayRef<int64_t> dispatch) {
  if (failed(expectRank(emitError, "input", input, 3, "[G, S, D]")) ||
      failed(expectRank(emitError, "dispatch", dispatch, 4, "[G, S, E, C]")))
    return failure();
  if (!dimEq(dispatch[0], input[0]) || !dimEq(dispatch[1], input[1]))
    return emitError() << "expects dispatch groups and tokens ("
                       << formatShape(dispatch.take_front(2))
                       << ") to match the input's ("
                       << formatShape(input.take_front(2)) << ")";
  return Shape{dispatch[2], input[0], dispatch[3], input[2]};
}

FailureOr<Shape> inferExpertsShape(EmitErrorFn emitError,
                                   ArrayRef<int64_t> input,
                                   ArrayRef<int64_t> fc1Weight,
                                   ArrayRef<int64_t> fc1Bias,
                                   ArrayRef<int64_t> fc2Weight,
                                   ArrayRef<int64_t> fc2Bias) {
  if (failed(expectRank(emitError, "input", input, 4, "[E, G, C, D]")) ||
      failed(checkFfnWeights(emitError, {input[0]}, input[3], fc1Weight,
                             fc1Bias, fc2Weight, fc2Bias)))
    return failure();
  return Shape(input);
}

FailureOr<Shape> inferCombineShape(EmitErrorFn emitError,
                                   ArrayRef<int64_t> input,
                                   ArrayRef<int64_t> combine) {
  if (failed(expectRank(emitError, "input", input, 4, "[E, G, C, D]")) ||
      failed(expectRank(emitError, "combine", combine, 4, "[G, S, E, C]")))
    return failure();
  if (!dimEq(combine[0], input[1]) || !dimEq(combine[2], input[0]) ||
      !dimEq(combine[3], input[2]))
    return emitError() << "expects combine groups, experts and slots to "
                          "match the input's ([G, E, C] = "
                       << formatShape({input[1], input[0], input[2]})
                       << "), got " << formatShape(combine);
  return Shape{combine[0], combine[1], input[3]};
}

FailureOr<Shape> inferSharedExpertShape(EmitErrorFn emitError,
                                        ArrayRef<int64_t> input,
                                        ArrayRef<int64_t> fc1Weight,
                                        ArrayRef<int64_t> fc1Bias,
                                        ArrayRef<int64_t> fc2Weight,
                                        ArrayRef<int64_t> fc2Bias) {
  if (failed(expectRank(emitError, "input", input, 3, "[G, S, D]")) ||
      failed(checkFfnWeights(emitError, {}, input[2], fc1Weight, fc1Bias,
                             fc2Weight, fc2Bias)))
    return failure();
  return Shape(input);
}

} // namespace moec::moe
