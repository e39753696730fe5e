//===- LossOps.cpp - cost models and decomposition of losses and metrics -===//
//
// The batch-level moe ops (softmax_cross_entropy, aux_loss, sum_losses,
// classification_metrics, routing_counts) reduce over images, so they get
// no per-image kernel: moe-decompose-losses rewrites each into whole-batch
// linalg (one pattern per op), which moe-lower-to-kernels outlines like
// the backward pass. Their FLOP formulas are here too.
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

#include "moec/Dialect/MoE/TensorBuilder.h"
#include "moec/Passes/OpModels.h"

#include "mlir/IR/PatternMatch.h"

using namespace mlir;
using namespace moec::kernels;

namespace {

Value identityBody(OpBuilder &, Location, ValueRange a) { return a[0]; }

Value cst(OpBuilder &nb, Location nl, double v) {
  return arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(v));
}

/// Row max and sum of exp(x - max) of logits [N, K].
std::pair<Value, Value> rowStats(TensorBuilder &tb, Value logits) {
  int64_t n = TensorBuilder::shape(logits)[0];
  AffineMap all = tb.identity(2), row = tb.dims(2, {0});
  Value mx = tb.reduce({logits}, {all}, {n}, 1, identityBody, -INFINITY, true);
  Value se =
      tb.reduce({logits, mx}, {all, row}, {n}, 1,
                [](OpBuilder &nb, Location nl, ValueRange a) {
                  return math::ExpOp::create(
                             nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]))
                      .getResult();
                });
  return std::make_pair(mx, se);
}

/// Whether loop dimension `dim` is the (integer) label.
Value isLabel(OpBuilder &nb, Location nl, Value label, unsigned dim) {
  Value l = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), label);
  return arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::eq,
                               linalg::IndexOp::create(nb, nl, dim), l);
}

struct DecomposeSoftmaxCrossEntropy
    : public OpRewritePattern<SoftmaxCrossEntropyOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SoftmaxCrossEntropyOp ce,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, ce.getLoc());
    SmallVector<Value> repl;
    Value logits = ce.getLogits(), labels = ce.getLabels();
    int64_t n = TensorBuilder::shape(logits)[0],
            k = TensorBuilder::shape(logits)[1];
    double a = ce.getLabelSmoothing().convertToDouble();
    auto [mx, se] = rowStats(tb, logits);
    // sum_k target_k logit_k
    Value dot =
        tb.reduce({logits, labels}, {tb.identity(2), tb.dims(2, {0})}, {n}, 1,
                  [&](OpBuilder &nb, Location nl, ValueRange v) {
                    Value t = arith::SelectOp::create(
                        nb, nl, isLabel(nb, nl, v[1], 1),
                        cst(nb, nl, 1 - a + a / k), cst(nb, nl, a / k));
                    return arith::MulFOp::create(nb, nl, t, v[0]).getResult();
                  });
    AffineMap n1 = tb.identity(1);
    repl.push_back(tb.reduce(
        {mx, se, dot}, {n1, n1, n1}, {}, 1,
        [&](OpBuilder &nb, Location nl, ValueRange v) {
          Value lse = arith::AddFOp::create(nb, nl, v[0],
                                            math::LogOp::create(nb, nl, v[1]));
          Value l = arith::SubFOp::create(nb, nl, lse, v[2]);
          return arith::MulFOp::create(nb, nl, l, cst(nb, nl, 1.0 / n))
              .getResult();
        }));
    b.replaceOp(ce, repl);
    return success();
  }
};

struct DecomposeClassificationMetrics
    : public OpRewritePattern<ClassificationMetricsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(ClassificationMetricsOp m,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, m.getLoc());
    SmallVector<Value> repl;
    Value logits = m.getLogits(), labels = m.getLabels(), mask = m.getMask();
    int64_t n = TensorBuilder::shape(logits)[0];
    auto [mx, se] = rowStats(tb, logits);
    AffineMap all = tb.identity(2), row = tb.dims(2, {0});
    Value lab = tb.reduce({logits, labels}, {all, row}, {n}, 1,
                          [&](OpBuilder &nb, Location nl, ValueRange v) {
                            return arith::SelectOp::create(
                                       nb, nl, isLabel(nb, nl, v[1], 1), v[0],
                                       cst(nb, nl, 0.0))
                                .getResult();
                          });
    // Logits equal to the max before the label's column (first wins ties).
    Value before = tb.reduce(
        {logits, labels, mx}, {all, row, row}, {n}, 1,
        [&](OpBuilder &nb, Location nl, ValueRange v) {
          Value l = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), v[1]);
          Value lt =
              arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::ult,
                                    linalg::IndexOp::create(nb, nl, 1), l);
          Value eq = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                           v[0], v[2]);
          return arith::SelectOp::create(nb, nl,
                                         arith::AndIOp::create(nb, nl, lt, eq),
                                         cst(nb, nl, 1.0), cst(nb, nl, 0.0))
              .getResult();
        });
    SmallVector<Value> ins{mx, se, lab, before};
    if (mask)
      ins.push_back(mask);
    SmallVector<AffineMap> maps(ins.size(), tb.identity(1));
    auto weightOf = [&](OpBuilder &nb, Location nl, ValueRange v) {
      return mask ? v[4] : cst(nb, nl, 1.0);
    };
    repl.push_back(tb.reduce(
        ins, maps, {}, 1, [&](OpBuilder &nb, Location nl, ValueRange v) {
          Value lse = arith::AddFOp::create(nb, nl, v[0],
                                            math::LogOp::create(nb, nl, v[1]));
          return arith::MulFOp::create(nb, nl,
                                       arith::SubFOp::create(nb, nl, lse, v[2]),
                                       weightOf(nb, nl, v))
              .getResult();
        }));
    repl.push_back(tb.reduce(
        ins, maps, {}, 1, [&](OpBuilder &nb, Location nl, ValueRange v) {
          Value top = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                            v[2], v[0]);
          Value first = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                              v[3], cst(nb, nl, 0.0));
          Value ok = arith::AndIOp::create(nb, nl, top, first);
          return arith::SelectOp::create(nb, nl, ok, weightOf(nb, nl, v),
                                         cst(nb, nl, 0.0))
              .getResult();
        }));
    b.replaceOp(m, repl);
    return success();
  }
};

struct DecomposeRoutingCounts : public OpRewritePattern<RoutingCountsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RoutingCountsOp rc,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, rc.getLoc());
    SmallVector<Value> repl;
    Value d = rc.getDispatch(), mask = rc.getMask();
    ArrayRef<int64_t> ds = TensorBuilder::shape(d);
    // counts[e] = sum_{g,s,c} mask[g] D[g,s,e,c]; loops (e, g, s, c). From
    // a fused layer's per-group counts [G, E]: loops (e, g). With routing
    // groups of n images the mask is per image and a group's weight is the
    // mean of its n entries: one more reduction loop i over mask[g, i] / n.
    bool perGroup = ds.size() == 2;
    unsigned loops = perGroup ? 2 : 4;
    int64_t n = mask ? TensorBuilder::shape(mask)[0] / ds[0] : 1;
    if (n > 1)
      ++loops;
    SmallVector<Value> ins{d};
    SmallVector<AffineMap> maps{perGroup ? tb.dims(loops, {1, 0})
                                         : tb.dims(loops, {1, 2, 0, 3})};
    if (mask && n > 1) {
      // [G * n] as [G, n] (a view), read at (g, i).
      auto grouped = RankedTensorType::get({ds[0], n}, b.getF32Type());
      ins.push_back(tensor::ExpandShapeOp::create(
          b, rc.getLoc(), grouped, mask,
          ArrayRef<ReassociationIndices>{{0, 1}}));
      maps.push_back(tb.dims(loops, {1, loops - 1}));
    } else if (mask) {
      ins.push_back(mask);
      maps.push_back(tb.dims(loops, {1}));
    }
    double inv = 1.0 / double(n);
    repl.push_back(tb.reduce(
        ins, maps, {perGroup ? ds[1] : ds[2]}, loops - 1,
        [&](OpBuilder &nb, Location nl, ValueRange v) -> Value {
          if (!mask)
            return v[0];
          Value w = arith::MulFOp::create(nb, nl, v[0], v[1]);
          if (n == 1)
            return w;
          return arith::MulFOp::create(
              nb, nl, w,
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(inv)));
        }));
    b.replaceOp(rc, repl);
    return success();
  }
};

/// Per-image routing statistics: sums over each image's tokens of views
/// [G, n, T, ...] of the router's tensors, then [G, n, ...] as [B, ...].
struct DecomposeRoutingStats : public OpRewritePattern<RoutingStatsOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(RoutingStatsOp op,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, op.getLoc());
    Location loc = op.getLoc();
    ArrayRef<int64_t> ds = TensorBuilder::shape(op.getDispatch());
    ArrayRef<int64_t> ls = TensorBuilder::shape(op.getLogits());
    const int64_t g = ds[0], s = ds[1], e = ds[2], c = ds[3];
    const int64_t n = TensorBuilder::shape(op.getTokens())[0] / g;
    const int64_t t = s / n, r = ls[1] / n, j = ls[2], slots = j / e;
    Type f32 = b.getF32Type();
    auto view = [&](Value v, ArrayRef<int64_t> shape,
                    ArrayRef<ReassociationIndices> groups) -> Value {
      return tensor::ExpandShapeOp::create(
          b, loc, RankedTensorType::get(shape, f32), v, groups);
    };
    auto perImage = [&](Value v, int64_t inner) -> Value {
      SmallVector<int64_t> shape{g * n};
      SmallVector<ReassociationIndices> groups{{0, 1}};
      if (inner) {
        shape.push_back(inner);
        groups.push_back({2});
      }
      return tensor::CollapseShapeOp::create(
          b, loc, RankedTensorType::get(shape, f32), v, groups);
    };
    auto identityBody = [](OpBuilder &, Location, ValueRange a) {
      return a[0];
    };
    // tokens and weights: loops (g, i, e, t, c) over [G, n, T, E, C].
    SmallVector<Value> repl;
    for (Value v : {op.getDispatch(), op.getCombine()}) {
      Value x = view(v, {g, n, t, e, c}, {{0}, {1, 2}, {3}, {4}});
      repl.push_back(perImage(
          tb.reduce({x}, {tb.dims(5, {0, 1, 3, 2, 4})}, {g, n, e}, 2,
                    identityBody),
          e));
    }
    // The softmax of every decision, as [G, n, R/n, E, P].
    Value p = view(tb.softmaxLast(op.getLogits()), {g, n, r, e, slots},
                   {{0}, {1, 2}, {3, 4}});
    const double perDecision = 1.0 / double(r);
    repl.push_back(perImage(
        tb.reduce({p}, {tb.dims(5, {0, 1, 3, 2, 4})}, {g, n, e}, 2,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::MulFOp::create(nb, nl, a[0],
                                                 cst(nb, nl, perDecision));
                  }),
        e));
    // -p log p / (R/n log J), 0 where p = 0.
    const double norm = j > 1 ? perDecision / std::log(double(j)) : 0.0;
    repl.push_back(perImage(
        tb.reduce({p}, {tb.identity(5)}, {g, n}, 3,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    Value zero = cst(nb, nl, 0.0);
                    Value positive = arith::CmpFOp::create(
                        nb, nl, arith::CmpFPredicate::OGT, a[0], zero);
                    Value logp = math::LogOp::create(nb, nl, a[0]);
                    Value term = arith::MulFOp::create(
                        nb, nl, arith::MulFOp::create(nb, nl, a[0], logp),
                        cst(nb, nl, -norm));
                    return arith::SelectOp::create(nb, nl, positive, term,
                                                   zero)
                        .getResult();
                  }),
        0));
    b.replaceOp(op, repl);
    return success();
  }
};

struct DecomposeSumLosses : public OpRewritePattern<SumLossesOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SumLossesOp sum,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, sum.getLoc());
    SmallVector<Value> repl;
    if (sum.getTerms().empty()) {
      repl.push_back(tb.zeros({}));
    } else if (sum.getTerms().size() == 1) {
      repl.push_back(sum.getTerms()[0]);
    } else {
      SmallVector<AffineMap> maps(sum.getTerms().size(), tb.scalarMap(0));
      repl.push_back(tb.pointwise(sum.getTerms(), {}, maps,
                                  [](OpBuilder &nb, Location nl, ValueRange v) {
                                    Value acc = v[0];
                                    for (Value t : v.drop_front().drop_back())
                                      acc =
                                          arith::AddFOp::create(nb, nl, acc, t);
                                    return acc;
                                  }));
    }
    b.replaceOp(sum, repl);
    return success();
  }
};

struct DecomposeAuxLoss : public OpRewritePattern<AuxLossOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(AuxLossOp aux,
                                PatternRewriter &b) const override {
    TensorBuilder tb(b, aux.getLoc());
    SmallVector<Value> repl;
    auto [perGroup, unused] = buildAuxLoss(b, aux, aux->getOperands(), false);
    (void)unused;
    int64_t g = TensorBuilder::shape(perGroup)[0];
    double w = aux.getWeight().convertToDouble() / g;
    repl.push_back(tb.reduce({perGroup}, {tb.identity(1)}, {}, 1,
                             [&](OpBuilder &nb, Location nl, ValueRange v) {
                               return arith::MulFOp::create(nb, nl, v[0],
                                                            cst(nb, nl, w))
                                   .getResult();
                             }));
    b.replaceOp(aux, repl);
    return success();
  }
};

int64_t softmaxCrossEntropyFlops(SoftmaxCrossEntropyOp o) {
  return 6 * numel(o.getLogits());
}

/// The loss and metric ops below are counted as free: their work (O(N*K)
/// or O(G*S*E)) is small next to the model's, and they run once a step.
/// The l2 normalisation of cosine gates: its vectors run along any
/// dimension (the codes' columns), so it is whole-batch linalg too.
struct DecomposeL2Normalize : public OpRewritePattern<L2NormalizeOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(L2NormalizeOp op,
                                PatternRewriter &b) const override {
    b.replaceOp(op, buildL2Normalize(b, op.getLoc(), op.getInput(),
                                     op.getScale(), op.getDim(),
                                     op.getEpsilon().convertToDouble()));
    return success();
  }
};

/// Squares, sum, rsqrt per vector; scale and multiply per element.
int64_t l2NormalizeFlops(L2NormalizeOp o) {
  return 4 * numel(o.getResult());
}

template <typename OpT> int64_t uncounted(OpT) { return 0; }

template <typename OpT, FlopsFn<OpT> Flops> void attachCost(MLIRContext *ctx) {
  OpT::template attachInterface<CostModel<OpT, Flops>>(*ctx);
}

} // namespace

void moec::populateDecomposeLossPatterns(RewritePatternSet &patterns) {
  patterns.add<DecomposeSoftmaxCrossEntropy, DecomposeClassificationMetrics,
               DecomposeRoutingCounts, DecomposeRoutingStats, DecomposeSumLosses, DecomposeAuxLoss,
               DecomposeL2Normalize>(
      patterns.getContext());
}

void moec::kernels::attachLossOpModels(MLIRContext *ctx) {
  attachCost<SoftmaxCrossEntropyOp, softmaxCrossEntropyFlops>(ctx);
  attachCost<AuxLossOp, uncounted<AuxLossOp>>(ctx);
  attachCost<SumLossesOp, uncounted<SumLossesOp>>(ctx);
  attachCost<ClassificationMetricsOp, uncounted<ClassificationMetricsOp>>(ctx);
  attachCost<RoutingCountsOp, uncounted<RoutingCountsOp>>(ctx);
  attachCost<RoutingStatsOp, uncounted<RoutingStatsOp>>(ctx);
  attachCost<L2NormalizeOp, l2NormalizeFlops>(ctx);
}
