//===- LossAutodiff.cpp - the losses' builders and VJPs -------------------===//
//
// The router auxiliary losses (vmoe definitions), computed and
// differentiated by one builder that the loss decomposition and the VJP
// share, and the VJPs of the cross-entropy and of the sum of losses.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "AutodiffUtils.h"

#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"

using namespace mlir;
using namespace moec::moe;
using namespace moec::moe::detail;

using TB = TensorBuilder;

namespace {
/// CV^2 over the last dim of `v` [G, E] and its VJP: returns (loss [G],
/// dloss/dv [G, E]).
std::pair<Value, Value> cv2(TB &tb, Value v) {
  ArrayRef<int64_t> s = TB::shape(v);
  int64_t g = s[0], e = s[1];
  AffineMap all = tb.identity(2), row = tb.dims(2, {0});
  Value sum = tb.sumOver(v, {0});
  // mean = sum / E; var = sum (v - mean)^2 / E.
  Value var = tb.reduce({v, sum}, {all, row}, {g}, 1,
                        [&](OpBuilder &nb, Location nl, ValueRange a) {
                          Value mean = mulf(nb, nl, a[1], c32(nb, nl, 1.0 / e));
                          Value dv = subf(nb, nl, a[0], mean);
                          return mulf(nb, nl, mulf(nb, nl, dv, dv),
                                      c32(nb, nl, 1.0 / e));
                        });
  Value loss = tb.pointwise({var, sum}, {g}, {tb.identity(1), tb.identity(1)},
                            [&](OpBuilder &nb, Location nl, ValueRange a) {
                              Value mean = mulf(nb, nl, a[1], c32(nb, nl, 1.0 / e));
                              return arith::DivFOp::create(nb, nl, a[0],
                                                           mulf(nb, nl, mean, mean))
                                  .getResult();
                            });
  // d/dv_e = 2 (v_e - mean) / (E mean^2) - 2 var / (E mean^3).
  Value grad = tb.pointwise(
      {v, sum, var}, {g, e}, {all, row, row},
      [&](OpBuilder &nb, Location nl, ValueRange a) {
        Value mean = mulf(nb, nl, a[1], c32(nb, nl, 1.0 / e));
        Value m2 = mulf(nb, nl, mean, mean);
        Value t1 = arith::DivFOp::create(
            nb, nl, mulf(nb, nl, c32(nb, nl, 2.0 / e), subf(nb, nl, a[0], mean)), m2);
        Value t2 = arith::DivFOp::create(
            nb, nl, mulf(nb, nl, c32(nb, nl, 2.0 / e), a[2]), mulf(nb, nl, m2, mean));
        return subf(nb, nl, t1, t2);
      });
  return {loss, grad};
}
} // namespace

//===----------------------------------------------------------------------===//
// Aux losses: forward (used by the kernel lowering) and VJP share this.
//===----------------------------------------------------------------------===//

/// Per-group loss [G] and, when `wantGrad`, d(sum_g loss_g)/dlogits.
std::pair<Value, Value> moec::moe::buildAuxLoss(OpBuilder &b, AuxLossOp op,
                                               ValueRange operands,
                                               bool wantGrad) {
  TB tb(b, op.getLoc());
  Value logits = operands[0];
  ArrayRef<int64_t> s = TB::shape(logits);
  int64_t g = s[0], r = s[1], e = s[2];
  AffineMap all3 = tb.identity(3), ge = tb.dims(3, {0, 2}), gr = tb.dims(3, {0, 1});
  Value noise = op.getNoise() ? operands[1] : Value();
  Value labels = op.getLabels() ? operands[op.getNoise() ? 2 : 1] : Value();
  double noiseScale =
      op.getNoiseStd() ? op.getNoiseStd()->convertToDouble() / e : 0.0;
  Value loss, grad;
  switch (op.getKind()) {
  case AuxLossKind::Importance: {
    Value p = tb.softmaxLast(logits);
    Value imp = tb.sumOver(p, {0, 2}); // [G, E]
    auto [l, dimp] = cv2(tb, imp);
    loss = l;
    if (wantGrad) {
      Value dp = tb.pointwise({dimp}, s, {ge},
                              [](OpBuilder &, Location, ValueRange a) { return a[0]; });
      grad = tb.softmaxLastVJP(p, dp);
    }
    break;
  }
  case AuxLossKind::Load: {
    int64_t k = *op.getK();
    Value noisy = addNoise(tb, logits, noise, noiseScale);
    Value rank = buildRank(b, op.getLoc(), noisy, 2);
    // Threshold: the k-th largest noisy logit of each token.
    Value thr = tb.reduce({noisy, rank}, {all3, all3}, {g, r}, 1,
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value is = arith::CmpFOp::create(
                                nb, nl, arith::CmpFPredicate::OEQ, a[1],
                                c32(nb, nl, double(k - 1)));
                            return arith::SelectOp::create(nb, nl, is, a[0],
                                                           c32(nb, nl, 0.0))
                                .getResult();
                          });
    // z = (L - t) / s; p = Phi(z) = 1 - Phi((t - L) / s).
    auto zOf = [&](OpBuilder &nb, Location nl, Value lv, Value tv) {
      return mulf(nb, nl, subf(nb, nl, lv, tv), c32(nb, nl, 1.0 / noiseScale));
    };
    Value pm = tb.reduce({logits, thr}, {tb.dims(3, {0, 2, 1}), tb.dims(3, {0, 2})},
                         {g, e}, 1, [&](OpBuilder &nb, Location nl, ValueRange a) {
                           Value z = zOf(nb, nl, a[0], a[1]);
                           Value cdf = mulf(
                               nb, nl, c32(nb, nl, 0.5),
                               addf(nb, nl, c32(nb, nl, 1.0),
                                    math::ErfOp::create(
                                        nb, nl, mulf(nb, nl, z, c32(nb, nl, M_SQRT1_2)))));
                           return mulf(nb, nl, cdf, c32(nb, nl, 1.0 / r));
                         });
    auto [l, dpm] = cv2(tb, pm);
    loss = l;
    if (wantGrad) {
      // q[g,r,e] = dpm[g,e] / R * phi(z) / s: d/dL_e = q, d/dt = -q.
      Value q = tb.pointwise(
          {logits, thr, dpm}, s, {all3, gr, ge},
          [&](OpBuilder &nb, Location nl, ValueRange a) {
            Value z = zOf(nb, nl, a[0], a[1]);
            Value pdf = mulf(nb, nl, c32(nb, nl, 0.3989422804014327),
                             math::ExpOp::create(
                                 nb, nl, mulf(nb, nl, c32(nb, nl, -0.5), mulf(nb, nl, z, z))));
            return mulf(nb, nl, mulf(nb, nl, a[2], pdf),
                        c32(nb, nl, 1.0 / (r * noiseScale)));
          });
      Value qsum = tb.sumOver(q, {0, 1}); // [G, R]
      grad = tb.pointwise({q, qsum, rank}, s, {all3, gr, all3},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value is = arith::CmpFOp::create(
                                nb, nl, arith::CmpFPredicate::OEQ, a[2],
                                c32(nb, nl, double(k - 1)));
                            Value t = arith::SelectOp::create(nb, nl, is, a[1],
                                                              c32(nb, nl, 0.0));
                            return subf(nb, nl, a[0], t);
                          });
    }
    break;
  }
  case AuxLossKind::Balance: {
    Value gl = noise ? addNoise(tb, logits, noise, noiseScale) : logits;
    Value p = tb.softmaxLast(gl);
    Value rank = buildRank(b, op.getLoc(), p, 2);
    // f[g, e] = fraction of tokens whose top-1 is e; mg = mean gate.
    Value f = tb.reduce({rank}, {tb.dims(3, {0, 2, 1})}, {g, e}, 1,
                        [&](OpBuilder &nb, Location nl, ValueRange a) {
                          Value top = arith::CmpFOp::create(
                              nb, nl, arith::CmpFPredicate::OEQ, a[0], c32(nb, nl, 0.0));
                          return arith::SelectOp::create(nb, nl, top,
                                                         c32(nb, nl, 1.0 / r),
                                                         c32(nb, nl, 0.0))
                              .getResult();
                        });
    Value pm = tb.scale(tb.sumOver(p, {0, 2}), 1.0 / r);
    // E^2 * mean_e(pm * f) = E * sum_e pm f.
    loss = tb.reduce({pm, f}, {tb.identity(2), tb.identity(2)}, {g}, 1,
                     [&](OpBuilder &nb, Location nl, ValueRange a) {
                       return mulf(nb, nl, mulf(nb, nl, a[0], a[1]), c32(nb, nl, double(e)));
                     });
    if (wantGrad) {
      Value dp = tb.pointwise({f}, s, {ge}, [&](OpBuilder &nb, Location nl, ValueRange a) {
        return mulf(nb, nl, a[0], c32(nb, nl, double(e) / r));
      });
      grad = tb.softmaxLastVJP(p, dp);
    }
    break;
  }
  case AuxLossKind::ZLoss: {
    Value mx = tb.reduce({logits}, {all3}, {g, r}, 1,
                         [](OpBuilder &, Location, ValueRange a) { return a[0]; },
                         -INFINITY, true);
    Value se = tb.reduce({logits, mx}, {all3, gr}, {g, r}, 1,
                         [](OpBuilder &nb, Location nl, ValueRange a) {
                           return math::ExpOp::create(nb, nl, subf(nb, nl, a[0], a[1]))
                               .getResult();
                         });
    Value lse = tb.pointwise({mx, se}, {g, r}, {tb.identity(2), tb.identity(2)},
                             [](OpBuilder &nb, Location nl, ValueRange a) {
                               return addf(nb, nl, a[0], math::LogOp::create(nb, nl, a[1]));
                             });
    loss = tb.reduce({lse}, {tb.identity(2)}, {g}, 1,
                     [&](OpBuilder &nb, Location nl, ValueRange a) {
                       return mulf(nb, nl, mulf(nb, nl, a[0], a[0]), c32(nb, nl, 1.0 / r));
                     });
    if (wantGrad)
      grad = tb.pointwise({logits, lse}, s, {all3, gr},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value p = math::ExpOp::create(nb, nl, subf(nb, nl, a[0], a[1]));
                            return mulf(nb, nl, mulf(nb, nl, p, a[1]),
                                        c32(nb, nl, 2.0 / r));
                          });
    break;
  }
  case AuxLossKind::SuperClass: {
    // Target expert of image g: map[label[g]], looked up by comparison.
    ArrayRef<int64_t> table = *op.getSuperClassMap();
    Value p = tb.softmaxLast(logits);
    auto target = [&](OpBuilder &nb, Location nl, Value label) {
      Value lab = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), label);
      Value t = arith::ConstantIndexOp::create(nb, nl, 0);
      for (auto [cls, expert] : llvm::enumerate(table)) {
        Value is = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::eq, lab,
                                         arith::ConstantIndexOp::create(nb, nl, cls));
        t = arith::SelectOp::create(nb, nl, is,
                                    arith::ConstantIndexOp::create(nb, nl, expert), t);
      }
      return t;
    };
    // loss_g = -mean_r log p[g, r, target].
    loss = tb.reduce({p, labels}, {tb.dims(3, {0, 1, 2}), tb.dims(3, {0})}, {g}, 2,
                     [&](OpBuilder &nb, Location nl, ValueRange a) {
                       Value is = arith::CmpIOp::create(
                           nb, nl, arith::CmpIPredicate::eq,
                           linalg::IndexOp::create(nb, nl, 2), target(nb, nl, a[1]));
                       Value lp = mulf(nb, nl, math::LogOp::create(nb, nl, a[0]),
                                       c32(nb, nl, -1.0 / r));
                       return arith::SelectOp::create(nb, nl, is, lp, c32(nb, nl, 0.0))
                           .getResult();
                     });
    if (wantGrad)
      grad = tb.pointwise({p, labels}, s, {all3, tb.dims(3, {0})},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            Value is = arith::CmpIOp::create(
                                nb, nl, arith::CmpIPredicate::eq,
                                linalg::IndexOp::create(nb, nl, 2), target(nb, nl, a[1]));
                            Value oh = arith::SelectOp::create(nb, nl, is, c32(nb, nl, 1.0),
                                                               c32(nb, nl, 0.0));
                            return mulf(nb, nl, subf(nb, nl, a[0], oh),
                                        c32(nb, nl, 1.0 / r));
                          });
    break;
  }
  }
  return {loss, grad};
}

//===----------------------------------------------------------------------===//
// VJPs
//===----------------------------------------------------------------------===//

LogicalResult SoftmaxCrossEntropyOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                              SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  Value logits = getLogits();
  ArrayRef<int64_t> ls = TB::shape(logits);
  int64_t n = ls[0], k = ls[1];
  double a = getLabelSmoothing().convertToDouble();
  Value p = tb.softmaxLast(logits);
  // dlogits = dloss (p - target) / N.
  grads[0] = tb.pointwise(
      {p, getLabels(), dys[0]}, ls,
      {tb.identity(2), tb.dims(2, {0}), tb.scalarMap(2)},
      [&](OpBuilder &nb, Location nl, ValueRange v) {
        Value label = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), v[1]);
        Value is = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::eq,
                                         linalg::IndexOp::create(nb, nl, 1), label);
        Value target = arith::SelectOp::create(nb, nl, is, c32(nb, nl, 1.0 - a + a / k),
                                               c32(nb, nl, a / k));
        return mulf(nb, nl, mulf(nb, nl, subf(nb, nl, v[0], target), v[2]),
                    c32(nb, nl, 1.0 / n));
      });
  return success();
}

LogicalResult AuxLossOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                  SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  TB tb(b, getLoc());
  auto [loss, grad] = buildAuxLoss(b, *this, getOperands(), /*wantGrad=*/true);
  (void)loss;
  int64_t g = TB::shape(getLogits())[0];
  double w = getWeight().convertToDouble() / g;
  grads[0] = tb.pointwise({grad, dys[0]}, TB::shape(grad),
                          {tb.identity(3), tb.scalarMap(3)},
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            return mulf(nb, nl, mulf(nb, nl, a[0], a[1]), c32(nb, nl, w));
                          });
  return success();
}

LogicalResult SumLossesOp::buildVJP(OpBuilder &, ArrayRef<Value> dys,
                                    SmallVectorImpl<Value> &grads) {
  if (noGradient(*this, dys, grads))
    return success();
  grads.assign(getNumOperands(), dys[0]);
  return success();
}
