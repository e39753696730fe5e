//===- RoutedFFN.cpp - the fused MoE layer's verifiers and VJP ------------===//
//
// moe.routed_ffn (router, grouped expert FFNs and combine in one op), the
// ops of its training step, and its VJP: the forward becomes
// moe.routed_ffn_train (which keeps the row list and the hidden layer), the
// backward is one per-group op through the same row list
// (moe.routed_ffn_grad), the experts' weight gradients over filled rows
// (moe.routed_ffn_weight_grad, one expert per parallel step) and the
// router's softmax and input gradients as whole-batch linalg.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/RouterUtils.h"
#include "moec/Dialect/MoE/ShapeRules.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/PatternMatch.h"

using namespace mlir;
using namespace moec::moe;
using TB = TensorBuilder;

namespace {
ArrayRef<int64_t> shapeOf(Value v) {
  return cast<RankedTensorType>(v.getType()).getShape();
}

LogicalResult expectShapeOf(Operation *op, StringRef what, Value v,
                            ArrayRef<int64_t> want) {
  if (shapesCompatible(shapeOf(v), want))
    return success();
  return op->emitOpError() << "expects " << what << " of shape "
                           << formatShape(want) << ", got "
                           << formatShape(shapeOf(v));
}

/// Every operand and result is an f32 tensor (the kernels and the row
/// list's token indices, which are exact in f32 up to 2^24, assume it).
LogicalResult expectF32(Operation *op) {
  for (Type t : llvm::concat<Type>(op->getOperandTypes(), op->getResultTypes()))
    if (!cast<RankedTensorType>(t).getElementType().isF32())
      return op->emitOpError() << "expects f32 tensors, got " << t;
  return success();
}

/// The router attributes of a fused layer (forward or training op).
template <typename OpT> RouterConfig configOf(OpT op) {
  RouterConfig config;
  config.kind = op.getKind();
  config.k = op.getK();
  if (auto cf = op.getCapacityFactor())
    config.capacityFactor = cf->convertToDouble();
  if (auto noise = op.getNoiseStd())
    config.noiseStd = noise->convertToDouble();
  config.sinkhornIters = op.getSinkhornIters();
  config.batchPrioritized = op.getBatchPrioritized();
  config.classToken = op.getClassToken();
  return config;
}

/// The router configuration of a fused layer, checked like moe.router's,
/// and its shapes: returns E, and checks capacity, the weights and the
/// noise against the input.
template <typename OpT> LogicalResult verifyLayer(OpT op, int64_t &numExperts) {
  if (failed(expectF32(op)))
    return failure();
  if (op.getKind() == RouterKind::Soft)
    return op.emitOpError()
           << "does not take soft routing (its dispatch is dense; "
              "moe-fuse-routing leaves soft MoE layers unfused)";
  ArrayRef<int64_t> x = shapeOf(op.getInput());
  ArrayRef<int64_t> w1 = shapeOf(op.getFc1Weight());
  if (x.size() != 3 || w1.size() != 3)
    return op.emitOpError() << "expects input [G, S, D] and fc1_weight "
                               "[E, D, H], got "
                            << formatShape(x) << " and " << formatShape(w1);
  int64_t g = x[0], s = x[1], d = x[2], e = w1[0], h = w1[2];
  numExperts = e;
  RouterConfig config = configOf(op);
  auto emit = [&] { return op.emitOpError(); };
  if (failed(verifyRouterConfig(emit, config, e)))
    return failure();
  int64_t capacity = routerCapacity(config, s, e);
  if (op.getCapacity() != static_cast<uint64_t>(capacity))
    return op.emitOpError() << "expects capacity " << capacity
                            << " (the router's rule for " << s
                            << " tokens), got " << op.getCapacity();
  // The router reads the gate input when there is one: [G, S, D'].
  int64_t dGate = d;
  if (Value gate = op.getGateInput()) {
    ArrayRef<int64_t> gs = shapeOf(gate);
    if (gs.size() != 3 || gs[0] != g || gs[1] != s)
      return op.emitOpError() << "expects gate_input of shape " << g << "x"
                              << s << "xD', got " << formatShape(gs);
    dGate = gs[2];
  }
  if (failed(expectShapeOf(op, "router_weight", op.getRouterWeight(),
                           {dGate, e})) ||
      failed(expectShapeOf(op, "fc1_weight", op.getFc1Weight(), {e, d, h})) ||
      failed(expectShapeOf(op, "fc1_bias", op.getFc1Bias(), {e, h})) ||
      failed(expectShapeOf(op, "fc2_weight", op.getFc2Weight(), {e, h, d})) ||
      failed(expectShapeOf(op, "fc2_bias", op.getFc2Bias(), {e, d})))
    return failure();
  int64_t r = op.getKind() == RouterKind::PerImage ? 1 : s;
  if (Value noise = op.getNoise()) {
    if (!op.getNoiseStd())
      return op.emitOpError() << "takes noise only with noise_std";
    if (failed(expectShapeOf(op, "noise", noise, {g, r, e})))
      return failure();
  }
  if (failed(expectShapeOf(op, "output", op.getOutput(), {g, s, d})) ||
      failed(expectShapeOf(op, "logits", op.getLogits(), {g, r, e})) ||
      failed(expectShapeOf(op, "counts", op.getCounts(), {g, e})))
    return failure();
  return success();
}

template <typename OpT> int64_t rowBoundOf(OpT op) {
  ArrayRef<int64_t> x = shapeOf(op.getInput());
  int64_t e = shapeOf(op.getFc1Weight())[0];
  return routedRowBound(op.getKind(), x[1], e, op.getK().value_or(1),
                        op.getCapacity(), op.getRowTile());
}
} // namespace

int64_t RoutedFFNOp::getNumExperts() { return shapeOf(getFc1Weight())[0]; }
int64_t RoutedFFNOp::getRowBound() { return rowBoundOf(*this); }
int64_t RoutedFFNTrainOp::getNumExperts() {
  return shapeOf(getFc1Weight())[0];
}
int64_t RoutedFFNTrainOp::getRowBound() { return rowBoundOf(*this); }

LogicalResult RoutedFFNOp::verify() {
  int64_t e;
  return verifyLayer(*this, e);
}

LogicalResult RoutedFFNTrainOp::verify() {
  int64_t e;
  if (failed(verifyLayer(*this, e)))
    return failure();
  ArrayRef<int64_t> x = shapeOf(getInput());
  int64_t g = x[0], d = x[2], n = getRowBound();
  int64_t h = shapeOf(getFc1Weight())[2];
  int64_t r = shapeOf(getLogits())[1];
  Operation *op = *this;
  if (failed(expectShapeOf(op, "gates", getGates(), {g, r, e})) ||
      failed(expectShapeOf(op, "row_token", getRowToken(), {g, n})) ||
      failed(expectShapeOf(op, "row_gate", getRowGate(), {g, n})) ||
      failed(expectShapeOf(op, "offsets", getOffsets(), {g, e})) ||
      failed(expectShapeOf(op, "hidden", getHidden(), {g, n, h})) ||
      failed(expectShapeOf(op, "dact", getDact(), {g, n, h})) ||
      failed(expectShapeOf(op, "expert_out", getExpertOut(), {g, n, d})))
    return failure();
  return success();
}

LogicalResult RoutedFFNGradOp::verify() {
  if (failed(expectF32(*this)))
    return failure();
  ArrayRef<int64_t> dy = shapeOf(getOutputGrad());
  ArrayRef<int64_t> w1t = shapeOf(getFc1WeightT());
  ArrayRef<int64_t> rows = shapeOf(getRowToken());
  if (dy.size() != 3 || w1t.size() != 3 || rows.size() != 2)
    return emitOpError() << "expects output_grad [G, S, D], fc1_weight_t "
                            "[E, H, D] and row_token [G, N]";
  int64_t g = dy[0], s = dy[1], d = dy[2], e = w1t[0], h = w1t[1],
          n = rows[1];
  int64_t r = shapeOf(getGateGrad()).size() == 3 ? shapeOf(getGateGrad())[1]
                                                  : -1;
  if (r != s && r != 1)
    return emitOpError() << "expects gate_grad [G, S, E] or, for per-image "
                            "routing, [G, 1, E]";
  Operation *op = *this;
  if (failed(expectShapeOf(op, "fc1_weight_t", getFc1WeightT(), {e, h, d})) ||
      failed(expectShapeOf(op, "fc2_weight_t", getFc2WeightT(), {e, d, h})) ||
      failed(expectShapeOf(op, "row_token", getRowToken(), {g, n})) ||
      failed(expectShapeOf(op, "row_gate", getRowGate(), {g, n})) ||
      failed(expectShapeOf(op, "offsets", getOffsets(), {g, e})) ||
      failed(expectShapeOf(op, "counts", getCounts(), {g, e})) ||
      failed(expectShapeOf(op, "dact", getDact(), {g, n, h})) ||
      failed(expectShapeOf(op, "expert_out", getExpertOut(), {g, n, d})) ||
      failed(expectShapeOf(op, "input_grad", getInputGrad(), {g, s, d})) ||
      failed(expectShapeOf(op, "gate_grad", getGateGrad(), {g, r, e})) ||
      failed(expectShapeOf(op, "hidden_grad", getHiddenGrad(), {g, n, h})) ||
      failed(expectShapeOf(op, "row_grad", getRowGrad(), {g, n, d})))
    return failure();
  return success();
}

LogicalResult RoutedFFNWeightGradOp::verify() {
  if (failed(expectF32(*this)))
    return failure();
  ArrayRef<int64_t> x = shapeOf(getInput());
  ArrayRef<int64_t> hid = shapeOf(getHidden());
  ArrayRef<int64_t> off = shapeOf(getOffsets());
  if (x.size() != 3 || hid.size() != 3 || off.size() != 2)
    return emitOpError() << "expects input [G, S, D], hidden [G, N, H] and "
                            "offsets [E, G]";
  int64_t g = x[0], d = x[2], n = hid[1], h = hid[2], e = off[0];
  Operation *op = *this;
  if (failed(expectShapeOf(op, "row_token", getRowToken(), {g, n})) ||
      failed(expectShapeOf(op, "offsets", getOffsets(), {e, g})) ||
      failed(expectShapeOf(op, "counts", getCounts(), {e, g})) ||
      failed(expectShapeOf(op, "hidden", getHidden(), {g, n, h})) ||
      failed(expectShapeOf(op, "hidden_grad", getHiddenGrad(), {g, n, h})) ||
      failed(expectShapeOf(op, "row_grad", getRowGrad(), {g, n, d})) ||
      failed(expectShapeOf(op, "fc1_weight_grad", getFc1WeightGrad(),
                           {e, d, h})) ||
      failed(expectShapeOf(op, "fc1_bias_grad", getFc1BiasGrad(), {e, h})) ||
      failed(expectShapeOf(op, "fc2_weight_grad", getFc2WeightGrad(),
                           {e, h, d})) ||
      failed(expectShapeOf(op, "fc2_bias_grad", getFc2BiasGrad(), {e, d})))
    return failure();
  return success();
}

//===----------------------------------------------------------------------===//
// VJP
//===----------------------------------------------------------------------===//

LogicalResult RoutedFFNOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                    SmallVectorImpl<Value> &grads) {
  grads.assign(getNumOperands(), Value());
  Value dy = dys[0], dLogits = dys[1]; // counts have no gradient
  if (!dy && !dLogits)
    return success();
  Location loc = getLoc();
  TB tb(b, loc);
  ArrayRef<int64_t> xs = shapeOf(getInput());
  int64_t g = xs[0], d = xs[2], e = getNumExperts(), n = getRowBound();
  int64_t h = shapeOf(getFc1Weight())[2];
  int64_t r = shapeOf(getLogits())[1];
  auto f32 = [&](ArrayRef<int64_t> s) {
    return RankedTensorType::get(s, b.getF32Type());
  };
  // The forward keeps its row list, gates and hidden layer.
  OpBuilder fb(getOperation());
  fb.setInsertionPointAfter(getOperation());
  auto train = RoutedFFNTrainOp::create(
      fb, loc,
      TypeRange{getOutput().getType(), getLogits().getType(),
                getCounts().getType(), f32({g, r, e}), f32({g, n}),
                f32({g, n}), f32({g, e}), f32({g, n, h}), f32({g, n, h}),
                f32({g, n, d})},
      getKindAttr(), getActivationAttr(), getInput(), getRouterWeight(),
      getFc1Weight(), getFc1Bias(), getFc2Weight(), getFc2Bias(), getNoise(),
      getGateInput(), getKAttr(), getCapacityAttr(), getRowTileAttr(), getCapacityFactorAttr(),
      getNoiseStdAttr(), getSinkhornItersAttr(), getBatchPrioritizedAttr(),
      getClassTokenAttr());
  for (unsigned i = 0; i < 3; ++i)
    getResult(i).replaceAllUsesWith(train.getResult(i));

  Value dx, dl = dLogits;
  if (dy) {
    auto grad = RoutedFFNGradOp::create(
        b, loc,
        TypeRange{getInput().getType(), f32({g, r, e}), f32({g, n, h}),
                  f32({g, n, d})},
        dy, tb.transposeLast2(getFc1Weight()), tb.transposeLast2(getFc2Weight()),
        train.getRowToken(), train.getRowGate(), train.getOffsets(),
        train.getCounts(), train.getDact(), train.getExpertOut(),
        getRowTileAttr());
    dx = grad.getInputGrad();
    // The weight gradients, one expert per parallel step: the segments
    // expert-major.
    auto wg = RoutedFFNWeightGradOp::create(
        b, loc,
        TypeRange{f32({e, d, h}), f32({e, h}), f32({e, h, d}), f32({e, d})},
        getInput(), train.getRowToken(), tb.transposeLast2(train.getOffsets()),
        tb.transposeLast2(train.getCounts()), train.getHidden(),
        grad.getHiddenGrad(), grad.getRowGrad(), getRowTileAttr());
    // Operands: input, router_weight, fc1 weight and bias, fc2 weight and
    // bias, noise.
    grads[2] = wg.getFc1WeightGrad();
    grads[3] = wg.getFc1BiasGrad();
    grads[4] = wg.getFc2WeightGrad();
    grads[5] = wg.getFc2BiasGrad();
    // Gates to logits: the softmax's VJP (the noise is a constant).
    Value fromGates = tb.softmaxLastVJP(train.getGates(), grad.getGateGrad());
    dl = dl ? tb.add(dl, fromGates) : fromGates;
  }
  Value gateInput = getGateInput() ? getGateInput() : getInput();
  auto [dxRouter, dw] = buildRouterInputGrads(
      b, loc, getKind(), gateInput, getRouterWeight(), dl, getClassToken());
  grads[1] = dw;
  if (getGateInput()) {
    // The gate input is the last operand (after the noise, if any); the
    // tokens get the experts' gradient only.
    grads[getNumOperands() - 1] = dxRouter;
    grads[0] = dx;
  } else {
    grads[0] = dx ? tb.add(dx, dxRouter) : dxRouter;
  }
  return success();
}

//===----------------------------------------------------------------------===//
// RouterUtils
//===----------------------------------------------------------------------===//

RouterConfig moec::moe::getRouterConfig(RoutedFFNOp layer) {
  return configOf(layer);
}

LogicalResult moec::moe::setRouterConfig(RewriterBase &rewriter,
                                         RoutedFFNOp layer,
                                         const RouterConfig &config) {
  if (config.kind != layer.getKind())
    return layer.emitOpError() << "cannot change a fused layer's router kind "
                                  "(rebuild the router before "
                                  "moe-fuse-routing)";
  bool takesNoise = config.noiseStd.has_value();
  if (takesNoise != !!layer.getNoise())
    return layer.emitOpError() << "cannot add or drop a fused layer's noise "
                                  "input";
  auto emit = [&] { return layer.emitOpError(); };
  int64_t e = layer.getNumExperts();
  if (failed(verifyRouterConfig(emit, config, e)))
    return failure();
  int64_t capacity =
      routerCapacity(config, shapeOf(layer.getInput())[1], e);
  auto optI64 = [&](std::optional<int64_t> v) {
    return v ? rewriter.getI64IntegerAttr(*v) : IntegerAttr();
  };
  auto optF64 = [&](std::optional<double> v) {
    return v ? rewriter.getF64FloatAttr(*v) : FloatAttr();
  };
  rewriter.modifyOpInPlace(layer, [&] {
    layer.setKAttr(optI64(config.k));
    layer.setCapacityAttr(rewriter.getI64IntegerAttr(capacity));
    layer.setCapacityFactorAttr(optF64(config.capacityFactor));
    layer.setNoiseStdAttr(optF64(config.noiseStd));
    layer.setSinkhornItersAttr(optI64(config.sinkhornIters));
    layer.setBatchPrioritized(config.batchPrioritized);
    layer.setClassToken(config.classToken);
  });
  return success();
}
