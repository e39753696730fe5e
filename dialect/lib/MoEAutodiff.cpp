//===- MoEAutodiff.cpp - vector-Jacobian products of the moe ops ----------===//
//
// DifferentiableOpInterface for the differentiable moe ops (the losses'
// VJPs are in LossAutodiff.cpp, moe.l2_normalize's in L2Normalize.cpp,
// moe.routed_ffn's in RoutedFFN.cpp). Each VJP is
// whole-batch linalg on tensors, ordered so that loop dimension 0 is a
// parallel dimension worth splitting (images, or a weight's rows), plus
// moe.dispatch / moe.combine where routing is transposed: the transpose of
// a dispatch is a combine with the same one-hot tensor and vice versa, so
// the backward pass reuses the forward's gather kernels.
//
// Routing is differentiated as the papers do: through the gate values;
// the top-k choice, the capacity assignment and dropped tokens are
// constants (a dropped token's combine weight is 0, so is its gradient).
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "AutodiffUtils.h"

using namespace mlir;
using namespace moec::moe;
using namespace moec::moe::detail;

using TB = TensorBuilder;

namespace {
constexpr auto kPar = TB::kPar;
constexpr auto kRed = TB::kRed;


} // namespace

Value moec::moe::buildActivationDerivative(OpBuilder &b, Location l,
                                           Activation kind, Value x) {
  switch (kind) {
  case Activation::Gelu: {
    // Phi(x) + x phi(x)
    Value cdf = mulf(b, l, c32(b, l, 0.5),
                     addf(b, l, c32(b, l, 1.0),
                          math::ErfOp::create(b, l, mulf(b, l, x, c32(b, l, M_SQRT1_2)))));
    Value pdf = mulf(b, l, c32(b, l, 0.3989422804014327),
                     math::ExpOp::create(
                         b, l, mulf(b, l, c32(b, l, -0.5), mulf(b, l, x, x))));
    return addf(b, l, cdf, mulf(b, l, x, pdf));
  }
  case Activation::GeluTanh: {
    // u = c (x + 0.044715 x^3), y = 0.5 x (1 + tanh u)
    const double k = 0.7978845608028654;
    Value x2 = mulf(b, l, x, x);
    Value u = mulf(b, l, c32(b, l, k),
                   addf(b, l, x, mulf(b, l, c32(b, l, 0.044715), mulf(b, l, x2, x))));
    Value t = math::TanhOp::create(b, l, u);
    Value du = mulf(b, l, c32(b, l, k),
                    addf(b, l, c32(b, l, 1.0), mulf(b, l, c32(b, l, 3 * 0.044715), x2)));
    Value sech2 = subf(b, l, c32(b, l, 1.0), mulf(b, l, t, t));
    Value left = mulf(b, l, c32(b, l, 0.5), addf(b, l, c32(b, l, 1.0), t));
    Value right = mulf(b, l, mulf(b, l, c32(b, l, 0.5), x), mulf(b, l, sech2, du));
    return addf(b, l, left, right);
  }
  case Activation::Relu: {
    Value pos = arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT, x,
                                      c32(b, l, 0.0));
    return arith::SelectOp::create(b, l, pos, c32(b, l, 1.0), c32(b, l, 0.0));
  }
  case Activation::Silu: {
    // s (1 + x (1 - s))
    Value s = arith::DivFOp::create(
        b, l, c32(b, l, 1.0),
        addf(b, l, c32(b, l, 1.0), math::ExpOp::create(b, l, arith::NegFOp::create(b, l, x))));
    return mulf(b, l, s, addf(b, l, c32(b, l, 1.0),
                              mulf(b, l, x, subf(b, l, c32(b, l, 1.0), s))));
  }
  }
  llvm_unreachable("unknown activation");
}

Value moec::moe::buildActivation(OpBuilder &b, Location l, Activation kind,
                                 Value x) {
  switch (kind) {
  case Activation::Gelu: {
    // 0.5 x (1 + erf(x / sqrt(2)))
    Value e = math::ErfOp::create(b, l, mulf(b, l, x, c32(b, l, M_SQRT1_2)));
    return mulf(b, l, mulf(b, l, x, c32(b, l, 0.5)), addf(b, l, e, c32(b, l, 1.0)));
  }
  case Activation::GeluTanh: {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    Value x3 = mulf(b, l, x, mulf(b, l, x, x));
    Value inner = addf(b, l, x, mulf(b, l, x3, c32(b, l, 0.044715)));
    Value t = math::TanhOp::create(b, l, mulf(b, l, inner, c32(b, l, 0.7978845608028654)));
    return mulf(b, l, mulf(b, l, x, c32(b, l, 0.5)), addf(b, l, t, c32(b, l, 1.0)));
  }
  case Activation::Relu:
    // maxnum: x86 lowers arith.maximumf's NaN semantics element by element.
    return arith::MaxNumFOp::create(b, l, x, c32(b, l, 0.0));
  case Activation::Silu: {
    // x / (1 + exp(-x))
    Value e = math::ExpOp::create(b, l, arith::NegFOp::create(b, l, x));
    return arith::DivFOp::create(b, l, x, addf(b, l, e, c32(b, l, 1.0)));
  }
  }
  llvm_unreachable("unknown activation");
}

Value moec::moe::buildBeats(OpBuilder &b, Location l, Value otherVal,
                            Value mineVal, Value otherIdx, Value mineIdx) {
  Value gt =
      arith::CmpFOp::create(b, l, arith::CmpFPredicate::OGT, otherVal, mineVal);
  Value eq =
      arith::CmpFOp::create(b, l, arith::CmpFPredicate::OEQ, otherVal, mineVal);
  Value lower =
      arith::CmpIOp::create(b, l, arith::CmpIPredicate::ult, otherIdx, mineIdx);
  return arith::OrIOp::create(b, l, gt, arith::AndIOp::create(b, l, eq, lower));
}

Value moec::moe::buildRank(OpBuilder &b, Location l, Value scores,
                           unsigned dim) {
  auto type = cast<RankedTensorType>(scores.getType());
  unsigned rank = type.getRank();
  assert(dim < rank && "rank dimension out of range");
  // Loops: the dimensions of `scores`, then j (the other index, reduced).
  SmallVector<AffineExpr> other, mine;
  for (unsigned i = 0; i < rank; ++i) {
    other.push_back(b.getAffineDimExpr(i == dim ? rank : i));
    mine.push_back(b.getAffineDimExpr(i));
  }
  MLIRContext *ctx = b.getContext();
  AffineMap mineMap = AffineMap::get(rank + 1, 0, mine, ctx);
  SmallVector<utils::IteratorType> iters(rank + 1,
                                         utils::IteratorType::parallel);
  iters[rank] = utils::IteratorType::reduction;
  Value init = tensor::EmptyOp::create(b, l, type.getShape(), b.getF32Type());
  init =
      linalg::FillOp::create(b, l, ValueRange{c32(b, l, 0.0)}, ValueRange{init})
          .getResult(0);
  return linalg::GenericOp::create(
             b, l, TypeRange{init.getType()}, ValueRange{scores, scores},
             ValueRange{init},
             ArrayRef<AffineMap>{AffineMap::get(rank + 1, 0, other, ctx),
                                 mineMap, mineMap},
             iters,
             [&](OpBuilder &nb, Location nl, ValueRange a) {
               Value mineIdx = linalg::IndexOp::create(nb, nl, dim);
               Value otherIdx = linalg::IndexOp::create(nb, nl, rank);
               Value beats = buildBeats(nb, nl, a[0], a[1], otherIdx, mineIdx);
               Value one = arith::SelectOp::create(
                   nb, nl, beats, c32(nb, nl, 1.0), c32(nb, nl, 0.0));
               linalg::YieldOp::create(nb, nl, addf(nb, nl, a[2], one));
             })
      .getResult(0);
}

namespace {

/// Gradients of y = x W (+ bias), x [L..., K], W [K, M]: dx, dW, db. The
/// weight's transpose is materialized so dx is a plain row-major product.
struct LinearGrads {
  Value dx, dw, db;
};
/// dx of y = x W for x of shape `xs` [L..., K]:
/// dx[lead, k] = sum_m dy[lead, m] wT[m, k]; loops (lead..., k, m).
Value linearInputGrad(TB &tb, Value w, Value dy, ArrayRef<int64_t> xs) {
  unsigned r = xs.size();
  Value wT = tb.transposeLast2(w);
  SmallVector<unsigned> dyDims;
  for (unsigned i = 0; i + 1 < r; ++i)
    dyDims.push_back(i);
  dyDims.push_back(r);
  return tb.contract(dy, tb.dims(r + 1, dyDims), wT, tb.dims(r + 1, {r, r - 1}),
                     xs, 1);
}
LinearGrads linearVJP(TB &tb, Value x, Value w, Value dy, bool wantDx,
                      bool wantBias) {
  LinearGrads g;
  unsigned r = TB::rank(x);
  ArrayRef<int64_t> xs = TB::shape(x), ws = TB::shape(w);
  int64_t k = ws[0], m = ws[1];
  if (wantDx)
    g.dx = linearInputGrad(tb, w, dy, xs);
  // dW[k, m] = sum_lead x[lead, k] dy[lead, m]; loops (k, m, lead...).
  SmallVector<unsigned> xDims, dyDims;
  for (unsigned i = 0; i + 1 < r; ++i) {
    xDims.push_back(2 + i);
    dyDims.push_back(2 + i);
  }
  xDims.push_back(0);
  dyDims.push_back(1);
  g.dw = tb.contract(x, tb.dims(r + 1, xDims), dy, tb.dims(r + 1, dyDims),
                     {k, m}, r - 1);
  if (wantBias)
    g.db = tb.sumOver(dy, {r - 1});
  return g;
}

/// y = x W + b (whole batch, recomputed in a backward pass).
Value linearForward(TB &tb, Value x, Value w, Value bias) {
  unsigned r = TB::rank(x);
  SmallVector<int64_t> ys(TB::shape(x));
  ys.back() = TB::shape(w)[1];
  Value init;
  if (bias) {
    init = tb.pointwise({bias}, ys, {tb.dims(r, {r - 1})},
                        [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  }
  SmallVector<unsigned> xDims;
  for (unsigned i = 0; i + 1 < r; ++i)
    xDims.push_back(i);
  xDims.push_back(r);
  return tb.contract(x, tb.dims(r + 1, xDims), w, tb.dims(r + 1, {r, r - 1}), ys,
                     1, init);
}

/// For a VJP that keeps residuals: creates `ResidualOp` (the op's forward
/// plus what its backward reads) right after `op` and moves every use of
/// op's result to the new op's result #0. `op` is left without uses;
/// moe-autodiff erases it after the sweep.
template <typename ResidualOp, typename... Args>
ResidualOp replaceByResidualOp(Operation *op, TypeRange types, Args &&...args) {
  OpBuilder b(op);
  b.setInsertionPointAfter(op);
  auto replacement =
      ResidualOp::create(b, op->getLoc(), types, std::forward<Args>(args)...);
  op->getResult(0).replaceAllUsesWith(replacement->getResult(0));
  return replacement;
}

Value applyActivation(TB &tb, Activation kind, Value a) {
  return tb.elementwise({a}, [&](OpBuilder &nb, Location nl, ValueRange v) {
    return buildActivation(nb, nl, kind, v[0]);
  });
}
Value activationVJP(TB &tb, Activation kind, Value a, Value dh) {
  return tb.elementwise({a, dh}, [&](OpBuilder &nb, Location nl, ValueRange v) {
    return mulf(nb, nl, v[1], buildActivationDerivative(nb, nl, kind, v[0]));
  });
}

/// Two-layer MLP backward (shared expert): x [N,S,D] -> act(x W1 + b1) W2 + b2.
void mlpVJP(TB &tb, Activation act, Value x, Value w1, Value b1, Value w2,
            Value dy, SmallVectorImpl<Value> &grads) {
  Value a = linearForward(tb, x, w1, b1);
  Value h = applyActivation(tb, act, a);
  LinearGrads g2 = linearVJP(tb, h, w2, dy, true, true);
  Value da = activationVJP(tb, act, a, g2.dx);
  LinearGrads g1 = linearVJP(tb, x, w1, da, true, true);
  grads.assign({g1.dx, g1.dw, g1.db, g2.dw, g2.db});
}

bool isHardRouter(Value routing) {
  auto r = routing.getDefiningOp<RouterOp>();
  return r && r.getKind() != RouterKind::Soft;
}

} // namespace

//===----------------------------------------------------------------------===//
// VJPs
//===----------------------------------------------------------------------===//


LogicalResult DenseOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  LinearGrads g = linearVJP(tb, getInput(), getWeight(), dys[0], true, !!getBias());
  grads[0] = g.dx;
  grads[1] = g.dw;
  if (getBias())
    grads[2] = g.db;
  return success();
}

LogicalResult ClassifierHeadOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                         SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  LinearGrads g = linearVJP(tb, getInput(), getWeight(), dys[0], true, true);
  grads.assign({g.dx, g.dw, g.db});
  return success();
}

LogicalResult ActivationOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                     SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  // The forward becomes moe.activation_train, which also writes act'(x):
  // the backward is a product with it (for GELU, no erf and exp here).
  auto train = replaceByResidualOp<ActivationTrainOp>(
      getOperation(), TypeRange{getType(), getType()}, getKindAttr(),
      getInput());
  grads[0] = tb.elementwise({train.getDerivative(), dys[0]},
                            [](OpBuilder &nb, Location nl, ValueRange v) {
                              return mulf(nb, nl, v[0], v[1]);
                            });
  return success();
}

LogicalResult ReshapeOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                 SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  grads[0] = ReshapeOp::create(b, getLoc(), getInput().getType(), dys[0]);
  return success();
}

LogicalResult AddOp::buildVJP(OpBuilder &, ArrayRef<Value> dys,
                              SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  grads.assign({dys[0], dys[0]});
  return success();
}

LogicalResult PoolOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                               SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  ArrayRef<int64_t> xs = TB::shape(getInput());
  bool cls = getKind() == PoolKind::Cls;
  double inv = 1.0 / xs[1];
  grads[0] = tb.pointwise({dys[0]}, xs, {tb.dims(3, {0, 2})},
                          [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                            if (!cls)
                              return mulf(nb, nl, a[0], c32(nb, nl, inv));
                            Value first = arith::CmpIOp::create(
                                nb, nl, arith::CmpIPredicate::eq,
                                linalg::IndexOp::create(nb, nl, 1),
                                arith::ConstantIndexOp::create(nb, nl, 0));
                            return arith::SelectOp::create(nb, nl, first, a[0],
                                                           c32(nb, nl, 0.0));
                          });
  return success();
}

LogicalResult PosEmbedOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                   SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  grads.assign({dys[0], tb.sumOver(dys[0], {1, 2})});
  return success();
}

LogicalResult ClassTokenOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                     SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  ArrayRef<int64_t> xs = TB::shape(getInput());
  grads[0] = tb.pointwise({dys[0]}, xs,
                          {tb.map(3, {tb.d(0), tb.d(1) + 1, tb.d(2)})},
                          [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  // dtoken[d] = sum_n dy[n, 0, d]; loops (d, n).
  grads[1] = tb.reduce({dys[0]}, {tb.map(2, {tb.d(1), tb.c(0), tb.d(0)})},
                       {xs[2]}, 1,
                       [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  return success();
}

LogicalResult PatchEmbedOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                     SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  ArrayRef<int64_t> img = TB::shape(getInput()); // [N, C, H, W]
  int64_t p = getPatchSize(), c = img[1], wp = img[3] / p;
  int64_t dm = TB::shape(getWeight())[1];
  // dW4[c, pi, pj, d] = sum_{n, hi, wi} img[n, c, hi p + pi, wi p + pj]
  //                                      * dy[n, hi wp + wi, d]
  auto d = [&](unsigned i) { return tb.d(i); };
  // dy as [N, hp, wp, D] and the image as its patches [N, hp, wp, C, p, p]
  // first: every operand then reads the loop dimensions in order, so the
  // reduction over (n, hi, wi) collapses into one over images x patches and
  // the tiles lower to outer products, like any weight gradient. (Read
  // straight from the image through hi p + pi, the three reductions stayed
  // separate and the product ran at a few GFLOP/s.)
  int64_t hp = img[2] / p;
  Value dy4 = tb.pointwise({dys[0]}, {img[0], hp, wp, dm},
                           {tb.map(4, {d(0), d(1) * wp + d(2), d(3)})},
                           [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  Value patches = tb.pointwise(
      {getInput()}, {img[0], hp, wp, c, p, p},
      {tb.map(6, {d(0), d(3), d(1) * p + d(4), d(2) * p + d(5)})},
      [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  // Loops (c, pi, pj, d, n, hi, wi): the embedding columns innermost of the
  // parallel ones (the vector dimension).
  Value dw4 = tb.generic(
      {patches, dy4},
      {tb.dims(7, {4, 5, 6, 0, 1, 2}), tb.dims(7, {4, 5, 6, 3})},
      tb.zeros({c, p, p, dm}), tb.dims(7, {0, 1, 2, 3}),
      {kPar, kPar, kPar, kPar, kRed, kRed, kRed},
      [](OpBuilder &nb, Location nl, ValueRange a) {
        return addf(nb, nl, a[2], mulf(nb, nl, a[0], a[1]));
      });
  // Rows of the [C*p*p, D] weight are (c, pi, pj) in row-major order.
  grads[1] = tb.collapse(dw4, {{0, 1, 2}, {3}});
  grads[2] = tb.sumOver(dys[0], {2});
  return success();
}

LogicalResult LayerNormOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                    SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  Value x = getInput(), dy = dys[0];
  ArrayRef<int64_t> xs = TB::shape(x);
  unsigned r = xs.size();
  int64_t dmodel = xs.back();
  double eps = getEpsilon().convertToDouble();
  SmallVector<int64_t> rows(xs.drop_back());
  AffineMap all = tb.identity(r), row = tb.range(r, 0, r - 1),
            feat = tb.dims(r, {r - 1});
  auto id = [](OpBuilder &, Location, ValueRange a) { return a[0]; };
  Value sum = tb.reduce({x}, {all}, rows, 1, id);
  Value sq = tb.reduce({x, sum}, {all, row}, rows, 1,
                       [&](OpBuilder &nb, Location nl, ValueRange a) {
                         Value m = mulf(nb, nl, a[1], c32(nb, nl, 1.0 / dmodel));
                         Value dv = subf(nb, nl, a[0], m);
                         return mulf(nb, nl, dv, dv);
                       });
  // rstd = 1 / sqrt(sq / D + eps), xhat = (x - mean) rstd.
  Value rstd = tb.elementwise({sq}, [&](OpBuilder &nb, Location nl, ValueRange a) {
    Value v = addf(nb, nl, mulf(nb, nl, a[0], c32(nb, nl, 1.0 / dmodel)),
                   c32(nb, nl, eps));
    return math::RsqrtOp::create(nb, nl, v).getResult();
  });
  Value xhat = tb.pointwise({x, sum, rstd}, xs, {all, row, row},
                            [&](OpBuilder &nb, Location nl, ValueRange a) {
                              Value m = mulf(nb, nl, a[1], c32(nb, nl, 1.0 / dmodel));
                              return mulf(nb, nl, subf(nb, nl, a[0], m), a[2]);
                            });
  // dgamma[d] = sum dy xhat, dbeta[d] = sum dy; loops (d, rows...).
  SmallVector<unsigned> perm{r - 1};
  for (unsigned i = 0; i + 1 < r; ++i)
    perm.push_back(i);
  SmallVector<unsigned> inv(r);
  for (unsigned j = 0; j < r; ++j)
    inv[perm[j]] = j;
  AffineMap byFeature = tb.dims(r, inv);
  grads[1] = tb.reduce({dy, xhat}, {byFeature, byFeature}, {dmodel}, r - 1,
                       [](OpBuilder &nb, Location nl, ValueRange a) {
                         return mulf(nb, nl, a[0], a[1]);
                       });
  grads[2] = tb.sumOver(dy, {r - 1});
  // g = dy gamma; dx = rstd (g - mean(g) - xhat mean(g xhat)).
  Value gsum = tb.reduce({dy, getGamma()}, {all, feat}, rows, 1,
                         [](OpBuilder &nb, Location nl, ValueRange a) {
                           return mulf(nb, nl, a[0], a[1]);
                         });
  Value gxsum = tb.reduce({dy, getGamma(), xhat}, {all, feat, all}, rows, 1,
                          [](OpBuilder &nb, Location nl, ValueRange a) {
                            return mulf(nb, nl, mulf(nb, nl, a[0], a[1]), a[2]);
                          });
  grads[0] = tb.pointwise(
      {dy, getGamma(), xhat, rstd, gsum, gxsum}, xs,
      {all, feat, all, row, row, row},
      [&](OpBuilder &nb, Location nl, ValueRange a) {
        Value inv = c32(nb, nl, 1.0 / dmodel);
        Value g = mulf(nb, nl, a[0], a[1]);
        Value t = subf(nb, nl, g, mulf(nb, nl, a[4], inv));
        t = subf(nb, nl, t, mulf(nb, nl, a[2], mulf(nb, nl, a[5], inv)));
        return mulf(nb, nl, a[3], t);
      });
  return success();
}

LogicalResult AttentionOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                    SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  Value x = getInput(), dy = dys[0];
  ArrayRef<int64_t> xs = TB::shape(x);
  // The forward becomes moe.attention_train, which also writes what the
  // backward reads: the projected qkv, the heads O and every score row's
  // log-sum-exp.
  Type f32 = getElementTypeOrSelf(x.getType());
  auto train = replaceByResidualOp<AttentionTrainOp>(
      getOperation(),
      TypeRange{x.getType(), RankedTensorType::get({xs[0], xs[1], 3 * xs[2]}, f32),
                x.getType(),
                RankedTensorType::get({xs[0], static_cast<int64_t>(getHeads()), xs[1]}, f32)},
      x, getQkvWeight(), getQkvBias(), getOutWeight(), getOutBias(),
      getHeadsAttr());
  // The core's backward is one per-image op, moe.attention_grad.
  Value dheads = linearInputGrad(tb, getOutWeight(), dy, xs);
  Value dqkv = AttentionGradOp::create(b, getLoc(), train.getQkv().getType(),
                                       train.getQkv(), train.getOutput(),
                                       train.getLse(), dheads, getHeadsAttr())
                   .getDqkv();
  LinearGrads out = linearVJP(tb, train.getOutput(), getOutWeight(), dy,
                              /*wantDx=*/false, /*wantBias=*/true);
  LinearGrads in = linearVJP(tb, x, getQkvWeight(), dqkv, true, true);
  grads.assign({in.dx, in.dw, in.db, out.dw, out.db});
  return success();
}

LogicalResult SharedExpertOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                       SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  mlpVJP(tb, getActivation(), getInput(), getFc1Weight(), getFc1Bias(),
         getFc2Weight(), dys[0], grads);
  return success();
}

LogicalResult ExpertsOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                  SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  Value x = getInput(), dy = dys[0]; // [E, G, C, D]
  ArrayRef<int64_t> xs = TB::shape(x);
  int64_t e = xs[0], g = xs[1], c = xs[2], dm = xs[3];
  int64_t hid = TB::shape(getFc1Weight())[2];
  // The forward becomes moe.experts_train, which also writes the hidden
  // layer h = act(a) and the activation's derivative act'(a) at
  // a = x w1 + b1, so the backward neither recomputes a nor evaluates
  // act' (erf and exp for GELU).
  auto hiddenType =
      RankedTensorType::get({e, g, c, hid}, getElementTypeOrSelf(x.getType()));
  auto train = replaceByResidualOp<ExpertsTrainOp>(
      getOperation(), TypeRange{x.getType(), hiddenType, hiddenType},
      getActivationAttr(), x, getFc1Weight(), getFc1Bias(), getFc2Weight(),
      getFc2Bias());
  Value dact = train.getDact(), hact = train.getHidden();
  // dW2[e,h,m] = sum_{g,c} hact[e,g,c,h] dy[e,g,c,m]; loops (e,h,m,g,c).
  Value dw2 = tb.contract(hact, tb.dims(5, {0, 3, 4, 1}), dy, tb.dims(5, {0, 3, 4, 2}),
                          {e, hid, dm}, 2);
  Value db2 = tb.sumOver(dy, {0, 3});
  // dh = dy w2T; w2T[e, m, h].
  Value w2T = tb.transposeLast2(getFc2Weight());
  Value dh = tb.contract(dy, tb.dims(5, {0, 1, 2, 4}), w2T, tb.dims(5, {0, 4, 3}),
                         {e, g, c, hid}, 1);
  Value da = tb.elementwise({dact, dh}, [](OpBuilder &nb, Location nl, ValueRange v) {
    return mulf(nb, nl, v[0], v[1]);
  });
  Value dw1 = tb.contract(x, tb.dims(5, {0, 3, 4, 1}), da, tb.dims(5, {0, 3, 4, 2}),
                          {e, dm, hid}, 2);
  Value db1 = tb.sumOver(da, {0, 3});
  Value w1T = tb.transposeLast2(getFc1Weight());
  Value dx = tb.contract(da, tb.dims(5, {0, 1, 2, 4}), w1T, tb.dims(5, {0, 4, 3}),
                         {e, g, c, dm}, 1);
  grads.assign({dx, dw1, db1, dw2, db2});
  return success();
}

LogicalResult DispatchOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                   SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  Location loc = getLoc();
  Value dxd = dys[0]; // [E, G, C, D]
  // x~ = sum_s D x: dx = sum_{e,c} D dx~, a combine with the same tensor.
  grads[0] = CombineOp::create(b, loc, getInput().getType(), dxd, getDispatch());
  if (!isHardRouter(getDispatch())) {
    // Soft routing: dD[g,s,e,c] = sum_d dx~[e,g,c,d] x[g,s,d].
    TB tb(b, loc);
    ArrayRef<int64_t> ds = TB::shape(getDispatch());
    grads[1] = tb.contract(getInput(), tb.dims(5, {0, 1, 4}), dxd,
                           tb.dims(5, {2, 0, 3, 4}), ds, 1);
  }
  return success();
}

LogicalResult CombineOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                  SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  Location loc = getLoc();
  TB tb(b, loc);
  Value dy = dys[0]; // [G, S, D]
  // y = sum_{e,c} C y~: dy~ = a dispatch of dy with the combine weights.
  grads[0] = DispatchOp::create(b, loc, getInput().getType(), dy, getCombine());
  // dC[g,s,e,c] = sum_d dy[g,s,d] y~[e,g,c,d], through y~T[e,g,d,c] so the
  // slot dimension is contiguous; loops (g,s,e,c,d).
  ArrayRef<int64_t> ys = TB::shape(getInput());
  Value yT = tb.pointwise({getInput()}, {ys[0], ys[1], ys[3], ys[2]},
                          {tb.dims(4, {0, 1, 3, 2})},
                          [](OpBuilder &, Location, ValueRange a) { return a[0]; });
  grads[1] = tb.contract(dy, tb.dims(5, {0, 1, 4}), yT, tb.dims(5, {2, 0, 4, 3}),
                         TB::shape(getCombine()), 1);
  return success();
}

std::pair<Value, Value> moec::moe::buildRouterInputGrads(OpBuilder &b, Location loc,
                                                        RouterKind kind, Value x,
                                                        Value w, Value dl,
                                                        bool classToken) {
  TB tb(b, loc);
  ArrayRef<int64_t> xs = TB::shape(x);
  int64_t s = xs[1], e = TB::shape(w)[1];
  auto d = [&](unsigned i) { return tb.d(i); };
  if (kind == RouterKind::PerImage && classToken) {
    // logits[g, 0, e] = x[g, 0] . w[:, e]
    int64_t dm = xs[2];
    // dW[d, e] = sum_g x[g, 0, d] dl[g, 0, e]; loops (d, e, g).
    Value dw = tb.contract(x, tb.map(3, {d(2), tb.c(0), d(0)}), dl,
                           tb.map(3, {d(2), tb.c(0), d(1)}), {dm, e}, 1);
    // dx[g, s, d] = s == 0 ? sum_e dl[g, 0, e] w[d, e] : 0; loops
    // (g, s, d, e).
    Value dx = tb.generic({dl, w}, {tb.map(4, {d(0), tb.c(0), d(3)}), tb.dims(4, {2, 3})},
                          tb.zeros(xs), tb.dims(4, {0, 1, 2}),
                          {kPar, kPar, kPar, kRed},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value first = arith::CmpIOp::create(
                                nb, nl, arith::CmpIPredicate::eq,
                                linalg::IndexOp::create(nb, nl, 1),
                                arith::ConstantIndexOp::create(nb, nl, 0));
                            Value prod = arith::SelectOp::create(
                                nb, nl, first, mulf(nb, nl, a[0], a[1]),
                                c32(nb, nl, 0.0));
                            return addf(nb, nl, a[2], prod);
                          });
    return {dx, dw};
  }
  if (kind == RouterKind::PerImage) {
    // logits[g, 0, e] = mean_s(x[g, s]) . w[:, e]
    Value mean = tb.scale(tb.sumOver(x, {0, 2}), 1.0 / s); // [G, D]
    int64_t dm = xs[2];
    // dW[d, e] = sum_g mean[g, d] dl[g, 0, e]; loops (d, e, g).
    Value dw = tb.contract(mean, tb.dims(3, {2, 0}), dl,
                           tb.map(3, {d(2), tb.c(0), d(1)}), {dm, e}, 1);
    // dx[g, s, d] = (1/S) sum_e dl[g, 0, e] w[d, e]; loops (g, s, d, e).
    Value dx = tb.generic({dl, w}, {tb.map(4, {d(0), tb.c(0), d(3)}), tb.dims(4, {2, 3})},
                          tb.zeros(xs), tb.dims(4, {0, 1, 2}),
                          {kPar, kPar, kPar, kRed},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value prod = mulf(nb, nl, mulf(nb, nl, a[0], a[1]),
                                              c32(nb, nl, 1.0 / s));
                            return addf(nb, nl, a[2], prod);
                          });
    return {dx, dw};
  }
  LinearGrads lg = linearVJP(tb, x, w, dl, true, false);
  return {lg.dx, lg.dw};
}

LogicalResult RouterOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                 SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  Value x = getInput(), w = getWeight();
  Value dDispatch = dys[0], dCombine = dys[1], dLogits = dys[2];
  ArrayRef<int64_t> xs = TB::shape(x);
  int64_t g = xs[0], s = xs[1];
  int64_t e = getNumExperts(), cap = getCapacity();
  auto d = [&](unsigned i) { return tb.d(i); };

  Value dl; // d loss / d logits [G, R, E*P]
  if (getKind() == RouterKind::Soft) {
    // Dispatch: softmax over tokens per slot; combine: softmax over all
    // slots per token. Slot (e, c) is logits column e * P + c.
    int64_t p = cap;
    Value disp = getDispatch(), comb = getCombine();
    AffineMap all4 = tb.identity(4);
    Value dl4;
    if (dDispatch) {
      // Column softmax VJP: D (dD - sum_s dD D), sums over s.
      Value dot = tb.reduce({disp, dDispatch}, {tb.dims(4, {0, 3, 1, 2}),
                                                tb.dims(4, {0, 3, 1, 2})},
                            {g, e, p}, 1, [](OpBuilder &nb, Location nl, ValueRange a) {
                              return mulf(nb, nl, a[0], a[1]);
                            });
      dl4 = tb.pointwise({disp, dDispatch, dot}, {g, s, e, p},
                         {all4, all4, tb.dims(4, {0, 2, 3})},
                         [](OpBuilder &nb, Location nl, ValueRange a) {
                           return mulf(nb, nl, a[0], subf(nb, nl, a[1], a[2]));
                         });
    }
    if (dCombine) {
      Value dot = tb.reduce({comb, dCombine}, {all4, all4}, {g, s}, 2,
                            [](OpBuilder &nb, Location nl, ValueRange a) {
                              return mulf(nb, nl, a[0], a[1]);
                            });
      Value part = tb.pointwise({comb, dCombine, dot}, {g, s, e, p},
                                {all4, all4, tb.dims(4, {0, 1})},
                                [](OpBuilder &nb, Location nl, ValueRange a) {
                                  return mulf(nb, nl, a[0], subf(nb, nl, a[1], a[2]));
                                });
      dl4 = dl4 ? tb.add(dl4, part) : part;
    }
    if (dl4)
      dl = tb.collapse(dl4, {{0}, {1}, {2, 3}});
  } else if (dCombine) {
    // C = D * gate: dgate[g, r, e] = sum over slots (and tokens for
    // per_image) of dC D; then the softmax VJP.
    Value disp = getDispatch();
    bool perImage = getKind() == RouterKind::PerImage;
    Value dgate;
    if (perImage)
      dgate = tb.reduce({dCombine, disp},
                        {tb.map(5, {d(0), d(3), d(2), d(4)}),
                         tb.map(5, {d(0), d(3), d(2), d(4)})},
                        {g, 1, e}, 2, [](OpBuilder &nb, Location nl, ValueRange a) {
                          return mulf(nb, nl, a[0], a[1]);
                        });
    else
      dgate = tb.reduce({dCombine, disp}, {tb.identity(4), tb.identity(4)}, {g, s, e},
                        1, [](OpBuilder &nb, Location nl, ValueRange a) {
                          return mulf(nb, nl, a[0], a[1]);
                        });
    // Recompute the gates from the (noisy) logits.
    Value logits;
    if (perImage && getClassToken()) {
      // From token 0: logits[g, 0, e] = sum_d x[g, 0, d] w[d, e].
      logits = tb.contract(x, tb.map(4, {d(0), tb.c(0), d(3)}), w,
                           tb.map(4, {d(3), d(2)}), {g, 1, e}, 1);
    } else if (perImage) {
      Value mean = tb.scale(tb.sumOver(x, {0, 2}), 1.0 / s); // [G, D]
      logits = tb.contract(mean, tb.map(4, {d(0), d(3)}), w,
                           tb.map(4, {d(3), d(2)}), {g, 1, e}, 1);
    } else {
      logits = linearForward(tb, x, w, Value());
    }
    if (Value noise = getNoise())
      logits = addNoise(tb, logits, noise, getNoiseStd()->convertToDouble() / e);
    Value gates = tb.softmaxLast(logits);
    dl = tb.softmaxLastVJP(gates, dgate);
  }
  if (dLogits)
    dl = dl ? tb.add(dl, dLogits) : dLogits;
  if (!dl)
    return success();

  auto [dx, dw] =
      buildRouterInputGrads(b, getLoc(), getKind(), x, w, dl, getClassToken());
  grads[0] = dx;
  grads[1] = dw;
  return success();
}
