//===- MoEOps.cpp - moe dialect ops ---------------------------------------===//
//
// Verifiers: each checks element types, then asks the shared shape rule
// (ShapeRules.cpp) for the result shape and compares it with the declared one.
// rebuildRouter (RouterUtils.h) uses the same rules to retype routers.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/RouterUtils.h"
#include "moec/Dialect/MoE/ShapeRules.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/IR/PatternMatch.h"

#include <cmath>

using namespace mlir;
using namespace moec::moe;

#include "moec/Dialect/MoE/MoEEnums.cpp.inc"
#include "moec/Dialect/MoE/MoEInterfaces.cpp.inc"

namespace {
ArrayRef<int64_t> shapeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape();
}

/// All float tensors an op touches share one element type.
LogicalResult verifyElementTypes(Operation *op) {
  Type expected;
  auto check = [&](Value v, StringRef kind, unsigned idx) -> LogicalResult {
    auto type = dyn_cast<RankedTensorType>(v.getType());
    if (!type || !isa<FloatType>(type.getElementType()))
      return success();
    if (!expected) {
      expected = type.getElementType();
      return success();
    }
    if (type.getElementType() == expected)
      return success();
    return op->emitOpError() << "expects every float operand and result to "
                                "have element type "
                             << expected << ", but " << kind << " #" << idx
                             << " has " << type.getElementType();
  };
  for (auto [i, v] : llvm::enumerate(op->getOperands()))
    if (failed(check(v, "operand", i)))
      return failure();
  for (auto [i, v] : llvm::enumerate(op->getResults()))
    if (failed(check(v, "result", i)))
      return failure();
  return success();
}

/// Element types, then the result `idx` against the shape rule's answer.
LogicalResult verifyResult(Operation *op, FailureOr<Shape> expected,
                           unsigned idx = 0) {
  if (failed(expected))
    return failure();
  ArrayRef<int64_t> got = shapeOf(op->getResult(idx));
  if (!shapesCompatible(got, *expected))
    return op->emitOpError()
           << "expects result #" << idx << " of shape "
           << formatShape(*expected) << ", got " << formatShape(got);
  return success();
}

} // namespace

#define GET_OP_CLASSES
#include "moec/Dialect/MoE/MoEOps.cpp.inc"

//===----------------------------------------------------------------------===//
// Verifiers
//===----------------------------------------------------------------------===//

LogicalResult ParamOp::verify() {
  if (getName().empty())
    return emitOpError() << "expects a non-empty parameter name";
  if (!getType().hasStaticShape())
    return emitOpError() << "expects a statically shaped parameter, got "
                         << getType();
  bool random = getInit() == InitKind::Normal ||
                getInit() == InitKind::TruncNormal;
  if (random && !getStd())
    return emitOpError() << "expects a std for " << stringifyInitKind(getInit())
                         << " initialisation";
  if (!random && getStd())
    return emitOpError() << "expects no std for "
                         << stringifyInitKind(getInit()) << " initialisation";
  if (random && !(getStd()->convertToDouble() > 0.0))
    return emitOpError() << "expects a positive std, got "
                         << getStd()->convertToDouble();
  bool constant = getInit() == InitKind::Constant;
  if (constant != !!getValue())
    return emitOpError() << (constant ? "expects a value for constant "
                                        "initialisation"
                                      : "takes a value only for constant "
                                        "initialisation");
  if (constant && !std::isfinite(getValue()->convertToDouble()))
    return emitOpError() << "expects a finite value";
  return success();
}

LogicalResult PatchEmbedOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferPatchEmbedShape(
                                 emit, shapeOf(getInput()), shapeOf(getWeight()),
                                 shapeOf(getBias()), getPatchSize()));
}

LogicalResult ClassTokenOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferClassTokenShape(emit, shapeOf(getInput()),
                                                  shapeOf(getToken())));
}

LogicalResult PosEmbedOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferPosEmbedShape(emit, shapeOf(getInput()),
                                                shapeOf(getEmbedding())));
}

LogicalResult LayerNormOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this,
                      inferLayerNormShape(emit, shapeOf(getInput()),
                                          shapeOf(getGamma()), shapeOf(getBeta()),
                                          getEpsilon().convertToDouble()));
}

namespace {
/// Element types and result #0 of moe.attention and moe.attention_train
/// (same operands and attribute).
template <typename AttentionLikeOp>
LogicalResult verifyAttentionResult(AttentionLikeOp op) {
  if (failed(verifyElementTypes(op)))
    return failure();
  auto emit = [&] { return op.emitOpError(); };
  return verifyResult(
      op, inferAttentionShape(emit, shapeOf(op.getInput()),
                              shapeOf(op.getQkvWeight()), shapeOf(op.getQkvBias()),
                              shapeOf(op.getOutWeight()), shapeOf(op.getOutBias()),
                              op.getHeads()));
}

/// Element types and result #0 of moe.experts and moe.experts_train.
template <typename ExpertsLikeOp>
LogicalResult verifyExpertsResult(ExpertsLikeOp op) {
  if (failed(verifyElementTypes(op)))
    return failure();
  auto emit = [&] { return op.emitOpError(); };
  return verifyResult(
      op, inferExpertsShape(emit, shapeOf(op.getInput()),
                            shapeOf(op.getFc1Weight()), shapeOf(op.getFc1Bias()),
                            shapeOf(op.getFc2Weight()), shapeOf(op.getFc2Bias())));
}
} // namespace

LogicalResult AttentionOp::verify() { return verifyAttentionResult(*this); }

namespace {
/// "[a, b, c]" for error messages.
std::string shapeString(ArrayRef<int64_t> shape) {
  std::string out = "[";
  for (auto [i, d] : llvm::enumerate(shape))
    out += (i ? ", " : "") + std::to_string(d);
  return out + "]";
}

/// The residuals of attention over images [N, S, D] with `heads` heads:
/// qkv [N, S, 3D], output [N, S, D], lse [N, heads, S].
LogicalResult verifyAttentionResiduals(Operation *op, ArrayRef<int64_t> x,
                                       int64_t heads, Value qkv, Value output,
                                       Value lse) {
  SmallVector<int64_t> want[3] = {{x[0], x[1], 3 * x[2]},
                                  {x[0], x[1], x[2]},
                                  {x[0], heads, x[1]}};
  StringRef names[3] = {"qkv", "output", "lse"};
  Value got[3] = {qkv, output, lse};
  for (int i = 0; i < 3; ++i)
    if (shapeOf(got[i]) != ArrayRef<int64_t>(want[i]))
      return op->emitOpError()
             << "expects " << names[i] << " " << shapeString(want[i])
             << " for images " << shapeString(x) << " and " << heads
             << " heads, got " << shapeString(shapeOf(got[i]));
  return success();
}
} // namespace

LogicalResult AttentionTrainOp::verify() {
  if (failed(verifyAttentionResult(*this)))
    return failure();
  ArrayRef<int64_t> x = shapeOf(getInput());
  if (llvm::is_contained(x, ShapedType::kDynamic))
    return emitOpError() << "expects a static input shape, got " << getInput().getType();
  return verifyAttentionResiduals(*this, x, getHeads(), getQkv(), getOutput(),
                                  getLse());
}

LogicalResult AttentionGradOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  ArrayRef<int64_t> dh = shapeOf(getDheads());
  if (dh.size() != 3 || llvm::is_contained(dh, ShapedType::kDynamic))
    return emitOpError() << "expects dheads [N, S, D] of static shape, got "
                         << getDheads().getType();
  if (dh[2] % getHeads() != 0)
    return emitOpError() << "expects heads (" << getHeads()
                         << ") to divide the model width " << dh[2];
  if (failed(verifyAttentionResiduals(*this, dh, getHeads(), getQkv(),
                                      getOutput(), getLse())))
    return failure();
  if (shapeOf(getDqkv()) != shapeOf(getQkv()))
    return emitOpError() << "expects dqkv shaped like qkv "
                         << shapeString(shapeOf(getQkv())) << ", got "
                         << shapeString(shapeOf(getDqkv()));
  return success();
}

LogicalResult DenseOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  std::optional<ArrayRef<int64_t>> bias;
  if (getBias())
    bias = shapeOf(getBias());
  return verifyResult(*this, inferDenseShape(emit, shapeOf(getInput()),
                                             shapeOf(getWeight()), bias));
}

LogicalResult PoolOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferPoolShape(emit, shapeOf(getInput())));
}

LogicalResult ClassifierHeadOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferClassifierHeadShape(
                                 emit, shapeOf(getInput()), shapeOf(getWeight()),
                                 shapeOf(getBias())));
}

LogicalResult SoftmaxCrossEntropyOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferSoftmaxCrossEntropyShape(
                                 emit, shapeOf(getLogits()), shapeOf(getLabels()),
                                 getLabelSmoothing().convertToDouble()));
}

int64_t RouterOp::getNumExperts() { return shapeOf(getDispatch())[2]; }
int64_t RouterOp::getCapacity() { return shapeOf(getDispatch())[3]; }

LogicalResult RouterOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  ArrayRef<int64_t> dispatch = shapeOf(getDispatch());
  if (dispatch.size() != 4)
    return emitOpError() << "expects a dispatch result of rank 4 "
                            "([G, S, E, C]), got rank "
                         << dispatch.size();
  if (ShapedType::isDynamic(dispatch[2]))
    return emitOpError() << "expects a static number of experts (dispatch "
                            "dimension 2)";
  RouterConfig config;
  config.kind = getKind();
  config.k = getK();
  if (auto cf = getCapacityFactor())
    config.capacityFactor = cf->convertToDouble();
  if (auto noise = getNoiseStd())
    config.noiseStd = noise->convertToDouble();
  config.sinkhornIters = getSinkhornIters();
  config.slotsPerExpert = getSlotsPerExpert();
  config.batchPrioritized = getBatchPrioritized();
  config.classToken = getClassToken();

  auto emit = [&] { return emitOpError(); };
  FailureOr<RouterShapes> shapes =
      inferRouterShapes(emit, shapeOf(getInput()), shapeOf(getWeight()),
                        config, dispatch[2]);
  if (failed(shapes))
    return failure();
  if (failed(verifyResult(*this, shapes->dispatch, 0)) ||
      failed(verifyResult(*this, shapes->combine, 1)) ||
      failed(verifyResult(*this, shapes->logits, 2)))
    return failure();
  if (Value noise = getNoise()) {
    if (!getNoiseStd())
      return emitOpError() << "takes noise only with noise_std";
    // One sample per logit: [G, R, E].
    Shape want(shapes->logits.begin(), shapes->logits.end());
    if (!shapesCompatible(shapeOf(noise), want))
      return emitOpError() << "expects noise of shape " << formatShape(want)
                           << ", got " << formatShape(shapeOf(noise));
  }
  return success();
}

LogicalResult AuxLossOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  ArrayRef<int64_t> logits = shapeOf(getLogits());
  if (logits.size() != 3)
    return emitOpError() << "expects logits [G, R, E], got "
                         << formatShape(logits);
  if (!shapeOf(getLoss()).empty())
    return emitOpError() << "expects a 0-d result";
  if (getWeight().convertToDouble() < 0)
    return emitOpError() << "expects a weight >= 0";
  switch (getKind()) {
  case AuxLossKind::Load:
    if (!getNoise() || !getNoiseStd() || !getK())
      return emitOpError() << "load needs noise, noise_std and k";
    if (getNoiseStd()->convertToDouble() <= 0)
      return emitOpError() << "load needs noise_std > 0";
    if (!shapesCompatible(shapeOf(getNoise()), logits))
      return emitOpError() << "expects noise of shape "
                           << formatShape(logits) << ", got "
                           << formatShape(shapeOf(getNoise()));
    break;
  case AuxLossKind::SuperClass: {
    if (!getLabels() || !getSuperClassMap())
      return emitOpError() << "super_class needs labels and super_class_map";
    if (shapeOf(getLabels()) != ArrayRef<int64_t>{logits[0]})
      return emitOpError() << "expects labels [" << logits[0] << "]";
    ArrayRef<int64_t> map = *getSuperClassMap();
    for (int64_t c : map)
      if (c < 0 || c >= logits[2])
        return emitOpError() << "super_class_map entry " << c
                             << " is not an expert in [0, " << logits[2]
                             << ")";
    break;
  }
  case AuxLossKind::Balance:
    if (getNoise() && (!getNoiseStd() ||
                       !shapesCompatible(shapeOf(getNoise()), logits)))
      return emitOpError() << "balance noise needs noise_std and the logits' "
                              "shape";
    break;
  default:
    break;
  }
  return success();
}

LogicalResult ClassificationMetricsOp::verify() {
  ArrayRef<int64_t> logits = shapeOf(getLogits());
  if (logits.size() != 2)
    return emitOpError() << "expects logits [N, K]";
  if (shapeOf(getLabels()) != ArrayRef<int64_t>{logits[0]})
    return emitOpError() << "expects labels [" << logits[0] << "]";
  if (getMask() && shapeOf(getMask()) != ArrayRef<int64_t>{logits[0]})
    return emitOpError() << "expects mask [" << logits[0] << "]";
  return success();
}

LogicalResult RoutingCountsOp::verify() {
  ArrayRef<int64_t> d = shapeOf(getDispatch());
  if (d.size() != 4 && d.size() != 2)
    return emitOpError() << "expects dispatch [G, S, E, C] or counts [G, E]";
  if (Value mask = getMask()) {
    // One entry per group, or per image of groups of n images.
    ArrayRef<int64_t> m = shapeOf(mask);
    if (m.size() != 1 || m[0] < d[0] || m[0] % d[0] != 0)
      return emitOpError() << "expects mask [" << d[0]
                           << "] or, for routing groups of n images, ["
                           << d[0] << " * n]";
  }
  int64_t experts = d.size() == 4 ? d[2] : d[1];
  if (shapeOf(getResult()) != ArrayRef<int64_t>{experts})
    return emitOpError() << "expects result [" << experts << "]";
  return success();
}

LogicalResult RoutingStatsOp::verify() {
  ArrayRef<int64_t> d = shapeOf(getDispatch()), l = shapeOf(getLogits());
  if (d.size() != 4)
    return emitOpError() << "expects dispatch [G, S, E, C]";
  if (shapeOf(getCombine()) != d)
    return emitOpError() << "expects combine of the dispatch's shape";
  const int64_t g = d[0], s = d[1], e = d[2];
  if (l.size() != 3 || l[0] != g || (l[1] != s && l[1] != 1) ||
      l[2] % e != 0)
    return emitOpError() << "expects logits [" << g << ", " << s << " or 1, "
                         << e << " * P]";
  ArrayRef<int64_t> t = shapeOf(getTokens());
  if (t.size() != 2 || t[1] != e || t[0] % g != 0 || s % (t[0] / g) != 0)
    return emitOpError() << "expects tokens [B, " << e
                         << "], B = G * n images whose tokens split the "
                         << s << " tokens of a group";
  if (l[1] == 1 && t[0] != g)
    return emitOpError() << "expects one image per group for one decision "
                            "per group (logits [G, 1, J])";
  if (shapeOf(getWeights()) != t || shapeOf(getProbs()) != t)
    return emitOpError() << "expects weights and probs of the tokens' shape";
  if (shapeOf(getEntropy()) != ArrayRef<int64_t>{t[0]})
    return emitOpError() << "expects entropy [" << t[0] << "]";
  return success();
}

LogicalResult ReshapeOp::verify() {
  auto in = cast<RankedTensorType>(getInput().getType());
  auto out = cast<RankedTensorType>(getResult().getType());
  if (!in.hasStaticShape() || !out.hasStaticShape())
    return emitOpError() << "expects static shapes";
  if (in.getElementType() != out.getElementType() ||
      in.getNumElements() != out.getNumElements())
    return emitOpError() << "expects a result with the input's element type "
                            "and number of elements ("
                         << in.getNumElements() << "), got " << out;
  return success();
}

LogicalResult DispatchOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferDispatchShape(emit, shapeOf(getInput()),
                                                shapeOf(getDispatch())));
}

LogicalResult ExpertsOp::verify() { return verifyExpertsResult(*this); }

LogicalResult ExpertsTrainOp::verify() {
  if (failed(verifyExpertsResult(*this)))
    return failure();
  ArrayRef<int64_t> x = shapeOf(getInput());
  SmallVector<int64_t> want{x[0], x[1], x[2], shapeOf(getFc1Weight())[2]};
  for (auto [name, v] : {std::pair<StringRef, Value>{"dact", getDact()},
                         {"hidden", getHidden()}})
    if (!shapesCompatible(shapeOf(v), want))
      return emitOpError() << "expects " << name << " " << shapeString(want)
                           << " (slots [E, G, C] of the input, fc1's width), got "
                           << shapeString(shapeOf(v));
  return success();
}

LogicalResult CombineOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(*this, inferCombineShape(emit, shapeOf(getInput()),
                                               shapeOf(getCombine())));
}

LogicalResult SharedExpertOp::verify() {
  if (failed(verifyElementTypes(*this)))
    return failure();
  auto emit = [&] { return emitOpError(); };
  return verifyResult(
      *this, inferSharedExpertShape(emit, shapeOf(getInput()),
                                    shapeOf(getFc1Weight()),
                                    shapeOf(getFc1Bias()),
                                    shapeOf(getFc2Weight()),
                                    shapeOf(getFc2Bias())));
}

//===----------------------------------------------------------------------===//
// Rebuilding routers (RouterUtils.h)
//===----------------------------------------------------------------------===//

RouterConfig moec::moe::getRouterConfig(RouterOp router) {
  RouterConfig config;
  config.kind = router.getKind();
  config.k = router.getK();
  if (auto cf = router.getCapacityFactor())
    config.capacityFactor = cf->convertToDouble();
  if (auto noise = router.getNoiseStd())
    config.noiseStd = noise->convertToDouble();
  config.sinkhornIters = router.getSinkhornIters();
  config.slotsPerExpert = router.getSlotsPerExpert();
  config.batchPrioritized = router.getBatchPrioritized();
  config.classToken = router.getClassToken();
  return config;
}

FailureOr<RouterOp> moec::moe::rebuildRouter(RewriterBase &rewriter,
                                             RouterOp router,
                                             const RouterConfig &config) {
  auto emit = [&] { return router.emitOpError(); };
  FailureOr<RouterShapes> shapes = inferRouterShapes(
      emit, shapeOf(router.getInput()), shapeOf(router.getWeight()), config,
      router.getNumExperts());
  if (failed(shapes))
    return failure();
  auto withShape = [](Value like, ArrayRef<int64_t> shape) -> Type {
    return RankedTensorType::get(
        shape, cast<RankedTensorType>(like.getType()).getElementType());
  };
  SmallVector<Type> resultTypes{
      withShape(router.getDispatch(), shapes->dispatch),
      withShape(router.getCombine(), shapes->combine),
      withShape(router.getLogits(), shapes->logits)};

  // First find every value whose type changes and its new type, so that a
  // user we cannot retype fails the rewrite before anything changed.
  SmallVector<std::pair<Value, Type>> retyped;
  llvm::DenseMap<Value, Type> newTypes;
  for (auto [result, type] : llvm::zip(router->getResults(), resultTypes))
    if (result.getType() != type)
      newTypes[result] = type;
  SmallVector<Value> worklist(router->getResults().begin(),
                              router->getResults().end());
  llvm::erase_if(worklist, [&](Value v) { return !newTypes.count(v); });
  auto shapeNow = [&](Value v) {
    auto it = newTypes.find(v);
    return cast<RankedTensorType>(it == newTypes.end() ? v.getType()
                                                       : it->second)
        .getShape();
  };
  while (!worklist.empty()) {
    Value value = worklist.pop_back_val();
    for (OpOperand &use : value.getUses()) {
      Operation *user = use.getOwner();
      auto userEmit = [user] { return user->emitOpError(); };
      FailureOr<Shape> shape = failure();
      if (auto dispatch = dyn_cast<DispatchOp>(user)) {
        shape = inferDispatchShape(userEmit, shapeNow(dispatch.getInput()),
                                   shapeNow(dispatch.getDispatch()));
      } else if (auto experts = dyn_cast<ExpertsOp>(user);
                 experts && use.get() == experts.getInput()) {
        shape = inferExpertsShape(
            userEmit, shapeNow(experts.getInput()),
            shapeNow(experts.getFc1Weight()), shapeNow(experts.getFc1Bias()),
            shapeNow(experts.getFc2Weight()), shapeNow(experts.getFc2Bias()));
      } else if (isa<CombineOp, RoutingCountsOp, RoutingStatsOp>(user)) {
        // Their result shapes do not depend on the capacity.
        continue;
      } else {
        InFlightDiagnostic diag = router.emitOpError()
                                  << "cannot be rebuilt: a value whose type "
                                     "changes to "
                                  << newTypes.lookup(value) << " is used by '"
                                  << user->getName()
                                  << "', whose types rebuildRouter does not "
                                     "recompute (rebuild routers before "
                                     "moe-autodiff)";
        diag.attachNote(user->getLoc()) << "used here";
        return failure();
      }
      if (failed(shape))
        return failure();
      Value result = user->getResult(0);
      Type type = withShape(result, *shape);
      if (type == result.getType() || newTypes.count(result))
        continue;
      newTypes[result] = type;
      retyped.emplace_back(result, type);
      worklist.push_back(result);
    }
  }

  OpBuilder::InsertionGuard guard(rewriter);
  rewriter.setInsertionPoint(router);
  Value noise = config.noiseStd ? router.getNoise() : Value();
  auto optI64 = [&](std::optional<int64_t> v) {
    return v ? rewriter.getI64IntegerAttr(*v) : IntegerAttr();
  };
  auto optF64 = [&](std::optional<double> v) {
    return v ? rewriter.getF64FloatAttr(*v) : FloatAttr();
  };
  auto rebuilt = RouterOp::create(
      rewriter, router.getLoc(), resultTypes[0], resultTypes[1], resultTypes[2],
      config.kind, router.getInput(), router.getWeight(), noise,
      optI64(config.k), optF64(config.capacityFactor), optF64(config.noiseStd),
      optI64(config.sinkhornIters), optI64(config.slotsPerExpert),
      config.batchPrioritized, config.classToken);
  rebuilt->setDiscardableAttrs(router->getDiscardableAttrDictionary());
  rewriter.replaceOp(router, rebuilt->getResults());
  for (std::pair<Value, Type> &entry : retyped)
    rewriter.modifyOpInPlace(entry.first.getDefiningOp(),
                             [&] { entry.first.setType(entry.second); });
  return rebuilt;
}
