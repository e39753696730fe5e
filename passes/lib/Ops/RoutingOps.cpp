//===- RoutingOps.cpp - kernel and cost models of routing -----------------===//
//
// One image of moe.router (logits, then the dispatch and combine tensors of
// every router kind), moe.dispatch and moe.combine (row gathers for one-hot
// routers, dense contractions for soft MoE); their FLOP formulas; and the
// routing decisions moe-lower-to-kernels takes before outlining
// (planImageKernel).
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

#include <tuple>

using namespace mlir;
using namespace moec::kernels;

namespace {

/// Dispatch/combine tensors of every router but soft MoE are one-hot per
/// slot (at most one token fills a slot, a token fills at most one slot of
/// an expert), so dispatch and combine are gathers instead of dense einsums.
/// Routers that fill each expert's slots from 0 up without gaps: token
/// choice and Sinkhorn (queue positions), expert choice (ranks 0..C-1) and
/// per image (slot = token, all or nothing).
bool isPrefixFilled(RouterKind kind) { return kind != RouterKind::Soft; }

bool isHardRouted(Value dispatchOrCombine) {
  auto router = dispatchOrCombine.getDefiningOp<RouterOp>();
  return router && router.getKind() != RouterKind::Soft;
}

/// index[...] = sum_j j * (t[.. j ..] != 0) and total[...] = sum_j t[.. j ..]
/// over loop dimension j = `reducedLoopDim` of a rank-3 loop that reads `t`
/// through `tDims` and writes both results through `outDims`.
std::pair<Value, Value> oneHotIndex(ImageBuilder &ib, Value t,
                                    ArrayRef<unsigned> outDims,
                                    ArrayRef<unsigned> tDims,
                                    ArrayRef<int64_t> outShape,
                                    unsigned reducedLoopDim) {
  SmallVector<IteratorType> iters(3, kPar);
  iters[reducedLoopDim] = kRed;
  Value index = ib.generic(
      {t}, ib.fill(outShape, 0.0), {ib.map(3, tDims), ib.map(3, outDims)},
      iters, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value j = indexAsF32(nb, nl, reducedLoopDim);
        Value zero = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
        Value nonzero = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::ONE,
                                              a[0], zero);
        return arith::AddFOp::create(
            nb, nl, a[1], arith::SelectOp::create(nb, nl, nonzero, j, zero));
      });
  Value total = ib.generic(
      {t}, ib.fill(outShape, 0.0), {ib.map(3, tDims), ib.map(3, outDims)},
      iters, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::AddFOp::create(nb, nl, a[1], a[0]);
      });
  return {index, total};
}

/// From oneHotIndex's results at `at`: the index (a slot's token or a
/// token's slot) as an index, and the weight.
std::pair<Value, Value> routeAt(OpBuilder &b, Location loc, Value index,
                                Value weight, ValueRange at) {
  return {toIndex(b, loc, tensor::ExtractOp::create(b, loc, index, at)),
          tensor::ExtractOp::create(b, loc, weight, at)};
}

/// out[e, c, :] = valid[e, c] * x[token[e, c], :] with token/valid read off
/// the one-hot dispatch tensor D [S, E, C]. One slot at a time: its token's
/// row is a slice at a dynamic offset, so the copy vectorizes (an
/// element-wise tensor.extract at data-dependent indices stays scalar).
Value gatherDispatch(ImageBuilder &ib, Value x, Value dispatch, Value dest) {
  ArrayRef<int64_t> d = ImageBuilder::shape(dispatch); // [S, E, C]
  int64_t width = ImageBuilder::shape(x)[1];
  // Loop (s, e, c): index/valid over s, the outermost loop, so that the
  // innermost one runs along the contiguous slots (vectors over c; a
  // reduction over s innermost gathers one element per token).
  Value token, valid; // captured below: no structured bindings (C++17)
  std::tie(token, valid) =
      oneHotIndex(ib, dispatch, {1, 2}, {0, 1, 2}, {d[1], d[2]}, 0);
  return loopOver(
      ib.b, ib.loc, d[1], dest,
      [&](OpBuilder &eb, Location el, Value e, Value out) {
        return loopOver(
            eb, el, d[2], out,
            [&](OpBuilder &cb, Location cl, Value c, Value slots) {
              ImageBuilder cib(cb, cl);
              Value s, scale;
              std::tie(s, scale) = routeAt(cb, cl, token, valid, {e, c});
              OpFoldResult zero = cb.getIndexAttr(0);
              Value row = sliceOf(cb, cl, x, {s, zero}, {1, width}, {width});
              Value slot =
                  sliceOf(cb, cl, slots, {e, c, zero}, {1, 1, width}, {width});
              Value scaled = cib.elementwise(
                  {row}, slot,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::MulFOp::create(nb, nl, a[0], scale);
                  });
              return putRow(cb, cl, scaled, slots, {e, c, zero});
            });
      });
}

/// out[s, :] = sum_e weight[s, e] * y[e, slot[s, e], :] with slot/weight read
/// off the combine tensor C [S, E, C] (at most one slot per token and
/// expert). One token at a time, its experts' rows as slices (see
/// gatherDispatch).
Value gatherCombine(ImageBuilder &ib, Value y, Value combine, Value dest) {
  ArrayRef<int64_t> c = ImageBuilder::shape(combine); // [S, E, C]
  int64_t width = ImageBuilder::shape(y)[2];
  // Loop (s, e, c): slot/weight over c.
  Value slot, weight;
  std::tie(slot, weight) =
      oneHotIndex(ib, combine, {0, 1}, {0, 1, 2}, {c[0], c[1]}, 2);
  return loopOver(
      ib.b, ib.loc, c[0], dest,
      [&](OpBuilder &sb, Location sl, Value s, Value out) {
        OpFoldResult zero = sb.getIndexAttr(0);
        ImageBuilder sib(sb, sl);
        Value acc =
            sib.fill(sliceOf(sb, sl, out, {s, zero}, {1, width}, {width}), 0.0);
        acc = loopOver(
            sb, sl, c[1], acc,
            [&](OpBuilder &eb, Location el, Value e, Value sum) {
              ImageBuilder eib(eb, el);
              Value k, w;
              std::tie(k, w) = routeAt(eb, el, slot, weight, {s, e});
              Value row =
                  sliceOf(eb, el, y, {e, k, zero}, {1, 1, width}, {width});
              return eib.elementwise(
                  {row}, sum,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::AddFOp::create(
                        nb, nl, a[1], arith::MulFOp::create(nb, nl, a[0], w));
                  });
            });
        return putRow(sb, sl, acc, out, {s, zero});
      });
}

/// D[s, e, c] = cond ? 1 : 0 and C[s, e, c] = cond ? gate : 0, generics
/// over (s, e, c). `cond` sees the element values of `ins` (read through
/// `inMaps`) and may use linalg.index; the gate is `ins[gateInput]`.
std::pair<Value, Value>
emitRouting(ImageBuilder &ib, ValueRange ins, ArrayRef<AffineMap> inMaps,
            unsigned gateInput, Value dispatchDest, Value combineDest,
            function_ref<Value(OpBuilder &, Location, ValueRange)> cond) {
  SmallVector<AffineMap> maps(inMaps);
  maps.push_back(ib.map(3, {0, 1, 2}));
  auto route = [&](Value dest, bool weighted) {
    return ib.generic(ins, dest, maps, {kPar, kPar, kPar},
                      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                        Value on = cond(nb, nl, a);
                        Value val = weighted
                                        ? a[gateInput]
                                        : arith::ConstantOp::create(
                                              nb, nl, nb.getF32FloatAttr(1.0))
                                              .getResult();
                        Value zero = arith::ConstantOp::create(
                            nb, nl, nb.getF32FloatAttr(0.0));
                        return arith::SelectOp::create(nb, nl, on, val, zero);
                      });
  };
  return {route(dispatchDest, false), route(combineDest, true)};
}

/// Per-image router: logits, then dispatch and combine from parallel
/// counting reductions (see moe.router's description for the semantics).
KernelResults emitRouter(RouterOp o, ImageBuilder &ib, ArrayRef<Value> in,
                         ArrayRef<Value> dests) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value x = in[0], w = in[1];
  ArrayRef<int64_t> xs = ImageBuilder::shape(x); // [S, D]
  int64_t s = xs[0], e = o.getNumExperts();
  Value dispatchDest = dests[0], combineDest = dests[1], logitsDest = dests[2];

  if (o.getKind() == RouterKind::PerImage) {
    Value logits = routerLogits(ib, RouterKind::PerImage, x, w, logitsDest,
                                o.getClassToken());
    // Noise (training): the image's gates come from logits + s * noise.
    Value gates = ib.softmaxRows(
        gateLogits(o, ib, logits, o.getNoise() ? in[2] : Value()),
        ib.empty({1, e}));
    Value rank = ib.rankAlongLastDim(gates);
    auto drop = [&](Value v) -> Value {
      return tensor::CollapseShapeOp::create(
          b, loc, ib.type({e}), v, ArrayRef<ReassociationIndices>{{0, 1}});
    };
    Value rank1 = drop(rank), gates1 = drop(gates);
    int64_t k = *o.getK();
    // Chosen experts take every token into the slot of the same index.
    auto [dispatch, combine] = emitRouting(
        ib, {rank1, gates1}, {ib.map(3, {1}), ib.map(3, {1})}, 1, dispatchDest,
        combineDest, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
          Value chosen = arith::CmpFOp::create(
              nb, nl, arith::CmpFPredicate::OLT, a[0], kk);
          Value own = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::eq,
                                            linalg::IndexOp::create(nb, nl, 0),
                                            linalg::IndexOp::create(nb, nl, 2));
          return arith::AndIOp::create(nb, nl, chosen, own);
        });
    return SmallVector<Value>{dispatch, combine, logits};
  }

  Value logits = routerLogits(ib, o.getKind(), x, w, logitsDest); // [S, E*P]

  if (o.getKind() == RouterKind::Soft) {
    int64_t p = *o.getSlotsPerExpert();
    AffineExpr sd = b.getAffineDimExpr(0), ed = b.getAffineDimExpr(1),
               cd = b.getAffineDimExpr(2);
    AffineExpr slot = ed * p + cd;
    // Dispatch: softmax over tokens of every slot's column.
    Value colMax =
        ib.generic({logits}, ib.fill({e * p}, -INFINITY),
                   {ib.map(2, {0, 1}), ib.map(2, {1})}, {kRed, kPar},
                   [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                     return arith::MaxNumFOp::create(nb, nl, a[1], a[0]);
                   });
    Value colSum = ib.generic(
        {logits, colMax}, ib.fill({e * p}, 0.0),
        {ib.map(2, {0, 1}), ib.map(2, {1}), ib.map(2, {1})}, {kRed, kPar},
        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value ex = math::ExpOp::create(
              nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]));
          return arith::AddFOp::create(nb, nl, a[2], ex);
        });
    auto normalized = [&](Value stat, Value total, AffineMap statMap,
                          Value dest) {
      return ib.generic(
          {logits, stat, total}, dest,
          {ib.mapExprs(3, {sd, slot}), statMap, statMap, ib.map(3, {0, 1, 2})},
          {kPar, kPar, kPar},
          [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
            Value ex = math::ExpOp::create(
                nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]));
            return arith::DivFOp::create(nb, nl, ex, a[2]);
          });
    };
    Value dispatch =
        normalized(colMax, colSum, ib.mapExprs(3, {slot}), dispatchDest);
    // Combine: softmax over all slots of every token's row.
    Value rowMax = ib.reduceRows(
        logits, -INFINITY,
        [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::MaxNumFOp::create(nb, nl, acc, v);
        });
    Value rowSum = ib.reduceRows(
        logits, 0.0,
        [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc,
                                       math::ExpOp::create(nb, nl, v));
        },
        {rowMax});
    Value combine = normalized(rowMax, rowSum, ib.map(3, {0}), combineDest);
    return SmallVector<Value>{dispatch, combine, logits};
  }

  // Noise (training): the gates come from logits + s * noise (for sinkhorn
  // the iterations start from them); the logits result stays clean for the
  // auxiliary losses.
  Value gates = ib.softmaxRows(
      gateLogits(o, ib, logits, o.getNoise() ? in[2] : Value()),
      ib.empty({s, e}));

  if (o.getKind() == RouterKind::ExpertChoice ||
      o.getKind() == RouterKind::SinkhornExpertChoice) {
    // Each expert takes its `cap` best tokens by gate (or by Sinkhorn
    // score); slot = the token's rank; the gates weight them either way.
    Value score = o.getKind() == RouterKind::SinkhornExpertChoice
                      ? sinkhornScores(ib, gates, *o.getSinkhornIters())
                      : gates;
    Value rank = ib.rankAlongFirstDim(score);
    auto [dispatch, combine] = emitRouting(
        ib, {rank, gates}, {ib.map(3, {0, 1}), ib.map(3, {0, 1})}, 1,
        dispatchDest, combineDest,
        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          return arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ, a[0],
                                       indexAsF32(nb, nl, 2));
        });
    return SmallVector<Value>{dispatch, combine, logits};
  }

  // Token choice and Sinkhorn: rank experts per token by `score`.
  Value score = gates;
  if (o.getKind() == RouterKind::Sinkhorn)
    score = sinkhornScores(ib, gates, *o.getSinkhornIters());
  int64_t k = *o.getK();
  Value rank = ib.rankAlongLastDim(score);
  Value pos = ib.queuePosition(
      rank, k, o.getBatchPrioritized() ? ib.rowMax(score) : Value());
  // Chosen and within capacity: positions >= capacity match no slot.
  auto [dispatch, combine] = emitRouting(
      ib, {rank, pos, gates},
      {ib.map(3, {0, 1}), ib.map(3, {0, 1}), ib.map(3, {0, 1})}, 2,
      dispatchDest, combineDest,
      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
        Value chosen =
            arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT, a[0], kk);
        Value here = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                           a[1], indexAsF32(nb, nl, 2));
        return arith::AndIOp::create(nb, nl, chosen, here);
      });
  return SmallVector<Value>{dispatch, combine, logits};
}

KernelResults routerKernel(RouterOp o, ImageBuilder &ib, ArrayRef<Value> in,
                           ArrayRef<Value> dests, const ImageKernelOptions &) {
  return emitRouter(o, ib, in, dests);
}

/// The weight is read whole by every image, whether a moe.param or
/// computed (the normalised codes of a cosine gate).
int64_t routerImageDim(Operation *op, Value v, bool isResult) {
  return !isResult && v == cast<RouterOp>(op).getWeight() ? -1 : 0;
}

/// The dispatched slots [E, N, C, D] hold the images along dimension 1.
int64_t dispatchImageDim(Operation *, Value v, bool isResult) {
  if (isResult)
    return 1;
  return v.getDefiningOp<ParamOp>() ? -1 : 0;
}

KernelResults dispatchKernel(DispatchOp, ImageBuilder &ib, ArrayRef<Value> in,
                             ArrayRef<Value> dests,
                             const ImageKernelOptions &options) {
  if (options.oneHotRouting)
    return one(gatherDispatch(ib, in[0], in[1], dests[0]));
  // out[e, c, d] = sum_s D[s, e, c] x[s, d]
  return one(ib.generic(
      {in[1], in[0]}, ib.fill(dests[0], 0.0),
      {ib.map(4, {3, 0, 1}), ib.map(4, {3, 2}), ib.map(4, {0, 1, 2})},
      {kPar, kPar, kPar, kRed},
      [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::AddFOp::create(nb, nl, a[2],
                                     arith::MulFOp::create(nb, nl, a[0], a[1]));
      }));
}

/// The experts' outputs [E, N, C, D] hold the images along dimension 1.
int64_t combineImageDim(Operation *op, Value v, bool isResult) {
  if (!isResult && v == cast<CombineOp>(op).getInput())
    return 1;
  return !isResult && v.getDefiningOp<ParamOp>() ? -1 : 0;
}

KernelResults combineKernel(CombineOp, ImageBuilder &ib, ArrayRef<Value> in,
                            ArrayRef<Value> dests,
                            const ImageKernelOptions &options) {
  if (options.oneHotRouting)
    return one(gatherCombine(ib, in[0], in[1], dests[0]));
  // out[s, d] = sum_{e, c} C[s, e, c] y[e, c, d]
  return one(ib.generic(
      {in[1], in[0]}, ib.fill(dests[0], 0.0),
      {ib.map(4, {0, 2, 3}), ib.map(4, {2, 3, 1}), ib.map(4, {0, 1})},
      {kPar, kPar, kRed, kRed},
      [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::AddFOp::create(nb, nl, a[2],
                                     arith::MulFOp::create(nb, nl, a[0], a[1]));
      }));
}

bool isSoftRouted(Value dispatchOrCombine) {
  auto router = dispatchOrCombine.getDefiningOp<RouterOp>();
  return router && router.getKind() == RouterKind::Soft;
}

int64_t routerFlops(RouterOp o) {
  int64_t rows = dimOf(o.getLogits(), 0) * dimOf(o.getLogits(), 1);
  int64_t l = dimOf(o.getLogits(), 2);
  return 2 * rows * dimOf(o.getInput(), 2) * l + 5 * rows * l;
}

/// Hard routers gather (no arithmetic); soft dispatch is a dense einsum.
int64_t dispatchFlops(DispatchOp o) {
  return isSoftRouted(o.getDispatch())
             ? 2 * numel(o.getDispatch()) * dimOf(o.getInput(), 2)
             : 0;
}

/// Hard routers scale and add each filled slot once; soft mixes all.
int64_t combineFlops(CombineOp o) {
  return isSoftRouted(o.getCombine())
             ? 2 * numel(o.getCombine()) * dimOf(o.getInput(), 3)
             : 2 * numel(o.getInput());
}

} // namespace

ImageKernelOptions moec::kernels::planImageKernel(Operation *op) {
  ImageKernelOptions options;
  // The fused layer's weight gradients run one expert per parallel step.
  options.overImages = !isa<RoutedFFNWeightGradOp>(op);
  if (auto d = dyn_cast<DispatchOp>(op))
    options.oneHotRouting = isHardRouted(d.getDispatch());
  if (auto c = dyn_cast<CombineOp>(op))
    options.oneHotRouting = isHardRouted(c.getCombine());
  // Experts whose slots come from a one-hot dispatch and whose outputs go
  // only to the combine of the same router: unfilled slots are never read
  // with a nonzero weight, so the kernel computes filled slots only. (In
  // train_step the combine's VJP also reads the output, so there the
  // experts, moe.experts_train, run over all slots.)
  if (auto experts = dyn_cast<ExpertsOp>(op); experts && experts->hasOneUse()) {
    auto dispatch = experts.getInput().getDefiningOp<DispatchOp>();
    auto combine = dyn_cast<CombineOp>(*experts->getUsers().begin());
    auto router = dispatch ? dispatch.getDispatch().getDefiningOp<RouterOp>()
                           : RouterOp();
    options.filledSlotsOnly = router && combine &&
                              isHardRouted(dispatch.getDispatch()) &&
                              combine.getCombine() == router.getCombine() &&
                              isPrefixFilled(router.getKind());
  }
  return options;
}

static Value routerLogitsF32(ImageBuilder &ib, RouterKind kind, Value x,
                                  Value w, Value dest, bool classToken) {
  if (kind != RouterKind::PerImage)
    return ib.matmul(x, w, Value(), dest);
  ArrayRef<int64_t> xs = ImageBuilder::shape(x); // [S, D]
  if (classToken) {
    // One decision per image, from its class token (token 0).
    Value first = tensor::ExtractSliceOp::create(
        ib.b, ib.loc, ib.type({1, xs[1]}), x,
        ArrayRef<OpFoldResult>{ib.b.getIndexAttr(0), ib.b.getIndexAttr(0)},
        ArrayRef<OpFoldResult>{ib.b.getIndexAttr(1), ib.b.getIndexAttr(xs[1])},
        ArrayRef<OpFoldResult>{ib.b.getIndexAttr(1), ib.b.getIndexAttr(1)});
    return ib.matmul(first, w, Value(), dest); // [1, E]
  }
  // One decision per image, from the mean token.
  Value sum = ib.generic(
      {x}, ib.fill({xs[1]}, 0.0), {ib.map(2, {1, 0}), ib.map(2, {0})},
      {kPar, kRed}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::AddFOp::create(nb, nl, a[1], a[0]);
      });
  double inv = 1.0 / xs[0];
  Value mean = ib.elementwise(
      {sum}, ib.empty({xs[1]}),
      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::MulFOp::create(
            nb, nl, a[0],
            arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(inv)));
      });
  Value mean2 =
      tensor::ExpandShapeOp::create(ib.b, ib.loc, ib.type({1, xs[1]}), mean,
                                    ArrayRef<ReassociationIndices>{{0, 1}});
  return ib.matmul(mean2, w, Value(), dest); // [1, E]
}

/// The router's logits stay f32 on every target and precision: a bf16
/// rounding would move tokens between experts near ties.
Value moec::kernels::routerLogits(ImageBuilder &ib, RouterKind kind, Value x,
                                  Value w, Value dest, bool classToken) {
  Value logits = routerLogitsF32(ib, kind, x, w, dest, classToken);
  if (Operation *matmul = logits.getDefiningOp())
    moec::moe::MoEDialect::Fp32AttrHelper(ib.b.getContext())
        .setAttr(matmul, UnitAttr::get(ib.b.getContext()));
  return logits;
}

Value moec::kernels::noisyLogits(ImageBuilder &ib, Value logits, Value noise,
                                 double scale) {
  ArrayRef<int64_t> shape = ImageBuilder::shape(logits);
  return ib.generic(
      {logits, noise}, ib.empty(shape),
      {ib.map(2, {0, 1}), ib.map(2, {0, 1}), ib.map(2, {0, 1})}, {kPar, kPar},
      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value k = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale));
        return arith::AddFOp::create(nb, nl, a[0],
                                     arith::MulFOp::create(nb, nl, a[1], k));
      });
}

Value moec::kernels::sinkhornScores(ImageBuilder &ib, Value gates,
                                    int64_t iters) {
  ArrayRef<int64_t> shape = ImageBuilder::shape(gates); // [S, E]
  int64_t s = shape[0], e = shape[1];
  double target = static_cast<double>(s) / e;
  Value score = gates;
  for (int64_t it = 0; it < iters; ++it) {
    // Columns sum to S / E, then rows sum to 1.
    Value colSum = ib.generic(
        {score}, ib.fill({e}, 0.0), {ib.map(2, {0, 1}), ib.map(2, {1})},
        {kRed, kPar}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          return arith::AddFOp::create(nb, nl, a[1], a[0]);
        });
    score = ib.generic(
        {score, colSum}, ib.empty({s, e}),
        {ib.map(2, {0, 1}), ib.map(2, {1}), ib.map(2, {0, 1})}, {kPar, kPar},
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value scaled = arith::MulFOp::create(
              nb, nl, a[0],
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(target)));
          return arith::DivFOp::create(nb, nl, scaled, a[1]);
        });
    Value rowSum = ib.reduceRows(
        score, 0.0, [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc, v);
        });
    score = ib.generic({score, rowSum}, ib.empty({s, e}),
                       {ib.map(2, {0, 1}), ib.map(2, {0}), ib.map(2, {0, 1})},
                       {kPar, kPar},
                       [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                         return arith::DivFOp::create(nb, nl, a[0], a[1]);
                       });
  }
  return score;
}

void moec::kernels::attachRoutingOpModels(MLIRContext *ctx) {
  attachKernelAndCost<RouterOp, routerKernel, routerFlops, routerImageDim>(
      ctx);
  attachKernelAndCost<DispatchOp, dispatchKernel, dispatchFlops,
                      dispatchImageDim>(ctx);
  attachKernelAndCost<CombineOp, combineKernel, combineFlops, combineImageDim>(
      ctx);
}
