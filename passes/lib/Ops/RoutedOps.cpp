//===- RoutedOps.cpp - kernel and cost models of the fused MoE layer ------===//
//
// One group (image) of moe.routed_ffn and moe.routed_ffn_train: the router's
// logits and gates, the routing decisions as a row list (per expert a
// segment of rows padded to whole row tiles, each row a token index and a
// gate), then per expert and row tile the grouped GEMM pair: the tile's
// tokens are gathered as the first GEMM's rows, bias and activation follow,
// and the second GEMM's rows are scaled by their gates and added into their
// tokens' outputs. No [S, E, C] tensor exists. moe.routed_ffn_grad runs the
// backward through the same row list, and moe.routed_ffn_weight_grad sums
// each expert's weight gradients over its filled rows of every group, in
// chunks of rows packed from the row lists. Every loop runs in a fixed
// order on one thread per group (or, for the weight gradients, per
// expert), so the results do not depend on the thread count.
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

#include "moec/Dialect/MoE/ShapeRules.h"
#include "moec/Passes/CostModel.h"

using namespace mlir;
using namespace moec::kernels;

namespace {

Value cIndex(OpBuilder &b, Location loc, int64_t v) {
  return arith::ConstantIndexOp::create(b, loc, v);
}

Value indexToF32(OpBuilder &b, Location loc, Value i) {
  return arith::UIToFPOp::create(
      b, loc, b.getF32Type(),
      arith::IndexCastUIOp::create(b, loc, b.getI64Type(), i));
}

Value extractAt(OpBuilder &b, Location loc, Value t, ValueRange at) {
  return tensor::ExtractOp::create(b, loc, t, at);
}

/// scf.for from `lb` to `ub` (indices) by `step` over tensors `init`.
SmallVector<Value>
forRange(OpBuilder &b, Location loc, Value lb, Value ub, Value step,
         ValueRange init,
         function_ref<SmallVector<Value>(OpBuilder &, Location, Value,
                                         ValueRange)>
             body) {
  auto loop = scf::ForOp::create(
      b, loc, lb, ub, step, init,
      [&](OpBuilder &lb2, Location ll, Value iv, ValueRange acc) {
        scf::YieldOp::create(lb2, ll, body(lb2, ll, iv, acc));
      });
  return SmallVector<Value>(loop.getResults());
}

/// One expert's segment in a group's row list: its first row, the rows it
/// fills and the end of its last whole row tile.
struct Segment {
  Value begin, filled, tilesEnd;
};
Segment segmentOf(OpBuilder &b, Location loc, Value offsets, Value counts,
                  ValueRange at, int64_t rowTile) {
  Value begin = toIndex(b, loc, extractAt(b, loc, offsets, at));
  Value filled = toIndex(b, loc, extractAt(b, loc, counts, at));
  Value r = cIndex(b, loc, rowTile);
  Value padded = arith::MulIOp::create(
      b, loc, arith::CeilDivUIOp::create(b, loc, filled, r), r);
  return {begin, filled, arith::AddIOp::create(b, loc, begin, padded)};
}

/// Rows of the tile at `row` that hold tokens: min(R, begin + filled - row).
Value validRows(OpBuilder &b, Location loc, const Segment &seg, Value row,
                int64_t rowTile) {
  Value end = arith::AddIOp::create(b, loc, seg.begin, seg.filled);
  return arith::MinUIOp::create(b, loc, cIndex(b, loc, rowTile),
                                arith::SubIOp::create(b, loc, end, row));
}

/// `full` with its slice at `offsets` / `sizes` (of rank-reduced shape
/// `type`) set to body(srcs..., old element), by a linalg.generic whose
/// destination is that slice: it vectorizes and bufferizes in place. (An
/// insert_slice of another tensor would become a memref.copy, which the
/// CPU pipeline lowers to scalar loops.) Without `body` the slice is a copy
/// of srcs[0].
Value writeSlice(ImageBuilder &ib, Value full, ArrayRef<OpFoldResult> offsets,
                 ArrayRef<int64_t> sizes, ArrayRef<int64_t> type,
                 ValueRange srcs,
                 function_ref<Value(OpBuilder &, Location, ValueRange)> body =
                     nullptr) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value dst = sliceOf(b, loc, full, offsets, sizes, type);
  Value v = ib.elementwise(
      srcs, dst, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return body ? body(nb, nl, a) : a[0];
      });
  SmallVector<OpFoldResult> sz, st;
  for (int64_t n : sizes) {
    sz.push_back(b.getIndexAttr(n));
    st.push_back(b.getIndexAttr(1));
  }
  return tensor::InsertSliceOp::create(b, loc, v, full, offsets, sz, st);
}

/// x's row of token rowToken[lead, row + r] ([D], x [lead..., S, D]).
Value tokenRow(OpBuilder &b, Location loc, Value x, Value rowToken,
               ValueRange lead, Value at) {
  int64_t width = ImageBuilder::shape(x).back();
  SmallVector<Value> idx(lead);
  idx.push_back(at);
  Value token = toIndex(b, loc, extractAt(b, loc, rowToken, idx));
  SmallVector<OpFoldResult> off(lead.begin(), lead.end());
  off.append({token, b.getIndexAttr(0)});
  SmallVector<int64_t> sizes(lead.size(), 1);
  sizes.append({1, width});
  return sliceOf(b, loc, x, off, sizes, {width});
}

/// A [R, D] tile whose first `valid` rows are x[rowToken[row + r]] and the
/// rest zeros: the first grouped GEMM's rows, gathered through the index.
Value gatherRows(ImageBuilder &ib, Value x, Value rowToken, ValueRange lead,
                 Value row, Value valid, int64_t rowTile) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  int64_t width = ImageBuilder::shape(x).back();
  Value tile = ib.fill({rowTile, width}, 0.0);
  return forRange(
      b, loc, cIndex(b, loc, 0), valid, cIndex(b, loc, 1), {tile},
      [&](OpBuilder &rb, Location rl, Value r, ValueRange acc) {
        ImageBuilder rib(rb, rl);
        Value at = arith::AddIOp::create(rb, rl, row, r);
        Value src = tokenRow(rb, rl, x, rowToken, lead, at);
        return SmallVector<Value>{writeSlice(rib, acc[0],
                                             {r, rb.getIndexAttr(0)},
                                             {1, width}, {width}, {src})};
      })[0];
}

/// Rows [row, row + R) of `full` [lead..., N, C] as a tile [R, C], and
/// back (a tile computed into rowsOf's slice is written in place).
Value rowsOf(OpBuilder &b, Location loc, Value full, ValueRange lead,
             Value row, int64_t rowTile) {
  ArrayRef<int64_t> shape = ImageBuilder::shape(full);
  int64_t cols = shape.back();
  SmallVector<OpFoldResult> off(lead.begin(), lead.end());
  off.append({row, b.getIndexAttr(0)});
  SmallVector<int64_t> sizes(lead.size(), 1);
  sizes.append({rowTile, cols});
  return sliceOf(b, loc, full, off, sizes, {rowTile, cols});
}
Value putRows(OpBuilder &b, Location loc, Value tile, Value full, Value row) {
  ArrayRef<int64_t> t = ImageBuilder::shape(tile);
  SmallVector<OpFoldResult> off{row, b.getIndexAttr(0)};
  SmallVector<OpFoldResult> sizes{b.getIndexAttr(t[0]), b.getIndexAttr(t[1])};
  SmallVector<OpFoldResult> strides(2, b.getIndexAttr(1));
  return tensor::InsertSliceOp::create(b, loc, tile, full, off, sizes,
                                       strides);
}

/// full[at] = full[at] + scale * row (rows of [S, D]); `scale` may be null.
Value addRow(ImageBuilder &ib, Value full, Value at, Value row, Value scale) {
  int64_t width = ImageBuilder::shape(full)[1];
  return writeSlice(ib, full, {at, ib.b.getIndexAttr(0)}, {1, width}, {width},
                    {row}, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                      Value v = scale ? arith::MulFOp::create(nb, nl, a[0], scale)
                                            .getResult()
                                      : a[0];
                      return arith::AddFOp::create(nb, nl, a[1], v);
                    });
}

/// Row `r` [C] of a tile [R, C].
Value tileRow(OpBuilder &b, Location loc, Value tile, Value r) {
  int64_t cols = ImageBuilder::shape(tile)[1];
  return sliceOf(b, loc, tile, {r, b.getIndexAttr(0)}, {1, cols}, {cols});
}

/// acc[n] + sum_r t[r, n]: loops (r, n), the output's innermost, so the sum
/// vectorizes along the row (a reduction innermost would gather a strided
/// column per element).
Value accumulateRows(ImageBuilder &ib, Value t, Value acc) {
  return ib.generic({t}, acc, {ib.map(2, {0, 1}), ib.map(2, {1})},
                    {kRed, kPar},
                    [](OpBuilder &nb, Location nl, ValueRange v) -> Value {
                      return arith::AddFOp::create(nb, nl, v[1], v[0]);
                    });
}

//===----------------------------------------------------------------------===//
// Forward
//===----------------------------------------------------------------------===//

/// What the routing of one group produces.
struct RowList {
  Value logits, gates, counts, offsets, rowToken, rowGate;
};

/// The router of one group: logits (into `logitsDest`), gates, and the
/// decisions as a row list. `slot[s, e]` is token s's slot in expert e or
/// -1; the kinds' rules are moe.router's.
template <typename OpT>
RowList emitRowList(OpT o, ImageBuilder &ib, Value x, Value w, Value noise,
                    Value logitsDest, Value gatesDest, Value countsDest,
                    Value offsetsDest, Value rowTokenDest, Value rowGateDest) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> xs = ImageBuilder::shape(x); // [S, D]
  int64_t s = xs[0], e = o.getNumExperts();
  int64_t cap = o.getCapacity(), rowTile = o.getRowTile();
  RouterKind kind = o.getKind();
  RowList out;

  Value logits = routerLogits(ib, kind, x, w, logitsDest,
                              o.getClassToken()); // [S or 1, E]
  out.logits = logits;
  int64_t r = ImageBuilder::shape(logits)[0];

  Value gates = ib.softmaxRows(gateLogits(o, ib, logits, noise),
                               gatesDest ? gatesDest : ib.empty({r, e}));
  out.gates = gates;

  // slot[s, e] from the kind's rule, as one generic over (s, e).
  auto select = [](OpBuilder &nb, Location nl, Value keep, Value slot) {
    Value none = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(-1.0));
    return arith::SelectOp::create(nb, nl, keep, slot, none).getResult();
  };
  auto lt = [](OpBuilder &nb, Location nl, Value a, double v) {
    return arith::CmpFOp::create(
        nb, nl, arith::CmpFPredicate::OLT, a,
        arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(v)));
  };
  Value slot;
  if (kind == RouterKind::ExpertChoice ||
      kind == RouterKind::SinkhornExpertChoice) {
    // Each expert takes its `cap` best tokens by gate (or by Sinkhorn
    // score); the gates weight them either way.
    Value score = kind == RouterKind::SinkhornExpertChoice
                      ? sinkhornScores(ib, gates, *o.getSinkhornIters())
                      : gates;
    Value rank = ib.rankAlongFirstDim(score);
    slot = ib.elementwise({rank}, ib.empty({s, e}),
                          [&](OpBuilder &nb, Location nl, ValueRange a) {
                            return select(nb, nl, lt(nb, nl, a[0], cap), a[0]);
                          });
  } else if (kind == RouterKind::PerImage) {
    int64_t k = *o.getK();
    Value rank = ib.rankAlongLastDim(gates); // [1, E]
    slot = ib.generic({rank}, ib.empty({s, e}),
                      {ib.mapExprs(2, {b.getAffineConstantExpr(0),
                                       b.getAffineDimExpr(1)}),
                       ib.map(2, {0, 1})},
                      {kPar, kPar},
                      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                        return select(nb, nl, lt(nb, nl, a[0], k),
                                      indexAsF32(nb, nl, 0));
                      });
  } else {
    int64_t k = *o.getK();
    Value score = kind == RouterKind::Sinkhorn
                      ? sinkhornScores(ib, gates, *o.getSinkhornIters())
                      : gates;
    Value rank = ib.rankAlongLastDim(score);
    Value pos = ib.queuePosition(
        rank, k, o.getBatchPrioritized() ? ib.rowMax(score) : Value());
    slot = ib.elementwise(
        {rank, pos}, ib.empty({s, e}),
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value keep = arith::AndIOp::create(nb, nl, lt(nb, nl, a[0], k),
                                             lt(nb, nl, a[1], cap));
          return select(nb, nl, keep, a[1]);
        });
  }

  // counts[e] = #{s : slot[s, e] >= 0}; loops (e, s).
  Value counts = ib.generic(
      {slot}, ib.fill(countsDest, 0.0), {ib.map(2, {1, 0}), ib.map(2, {0})},
      {kPar, kRed}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value zero = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
        Value one = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(1.0));
        Value kept = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OGE,
                                           a[0], zero);
        return arith::AddFOp::create(
            nb, nl, a[1], arith::SelectOp::create(nb, nl, kept, one, zero));
      });
  out.counts = counts;

  // offsets: the prefix sum of the counts padded to whole row tiles.
  Value zeroF = ib.cst(0.0);
  auto offLoop = scf::ForOp::create(
      b, loc, cIndex(b, loc, 0), cIndex(b, loc, e), cIndex(b, loc, 1),
      ValueRange{offsetsDest, zeroF},
      [&](OpBuilder &lb, Location ll, Value ei, ValueRange acc) {
        Value n = toIndex(lb, ll, extractAt(lb, ll, counts, {ei}));
        Value rt = cIndex(lb, ll, rowTile);
        Value padded = arith::MulIOp::create(
            lb, ll, arith::CeilDivUIOp::create(lb, ll, n, rt), rt);
        Value next = tensor::InsertOp::create(lb, ll, acc[1], acc[0], ei);
        Value total = arith::AddFOp::create(lb, ll, acc[1],
                                            indexToF32(lb, ll, padded));
        scf::YieldOp::create(lb, ll, ValueRange{next, total});
      });
  Value offsets = offLoop.getResult(0);
  out.offsets = offsets;

  // The rows: for every kept (s, e), row offsets[e] + slot[s, e] holds
  // token s and its gate; padding rows hold token 0 and gate 0.
  Value rowToken = ib.fill(rowTokenDest, 0.0);
  Value rowGate = ib.fill(rowGateDest, 0.0);
  SmallVector<Value> rows = forRange(
      b, loc, cIndex(b, loc, 0), cIndex(b, loc, s), cIndex(b, loc, 1),
      {rowToken, rowGate},
      [&](OpBuilder &sb, Location sl, Value si, ValueRange sacc) {
        return forRange(
            sb, sl, cIndex(sb, sl, 0), cIndex(sb, sl, e), cIndex(sb, sl, 1),
            sacc, [&](OpBuilder &eb, Location el, Value ei, ValueRange acc) {
              Value v = extractAt(eb, el, slot, {si, ei});
              Value zero =
                  arith::ConstantOp::create(eb, el, eb.getF32FloatAttr(0.0));
              Value kept = arith::CmpFOp::create(
                  eb, el, arith::CmpFPredicate::OGE, v, zero);
              auto ifOp = scf::IfOp::create(
                  eb, el, kept,
                  [&](OpBuilder &tb, Location tl) {
                    Value row = arith::AddIOp::create(
                        tb, tl, toIndex(tb, tl, extractAt(tb, tl, offsets, {ei})),
                        toIndex(tb, tl, v));
                    Value gateRow = r == 1 ? cIndex(tb, tl, 0) : si;
                    Value gate = extractAt(tb, tl, gates, {gateRow, ei});
                    Value t = tensor::InsertOp::create(
                        tb, tl, indexToF32(tb, tl, si), acc[0], row);
                    Value g = tensor::InsertOp::create(tb, tl, gate, acc[1], row);
                    scf::YieldOp::create(tb, tl, ValueRange{t, g});
                  },
                  [&](OpBuilder &fb, Location fl) {
                    scf::YieldOp::create(fb, fl, acc);
                  });
              return SmallVector<Value>(ifOp.getResults());
            });
      });
  out.rowToken = rows[0];
  out.rowGate = rows[1];
  return out;
}

/// Residual destinations of moe.routed_ffn_train (null for moe.routed_ffn).
struct TrainDests {
  Value hidden, dact, expertOut;
};

/// The experts over the row list: per expert and row tile, the gathered
/// GEMM pair, then the gated scatter-add into `outDest` [S, D]. `in` are
/// the layer's operands (x, router weight, fc1 w/b, fc2 w/b).
template <typename OpT>
SmallVector<Value> emitExperts(OpT o, ImageBuilder &ib, ArrayRef<Value> in,
                               const RowList &rl, Value outDest,
                               TrainDests train) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value x = in[0];
  int64_t width = ImageBuilder::shape(x)[1];
  int64_t hidden = ImageBuilder::shape(in[2])[2];
  int64_t e = o.getNumExperts(), rowTile = o.getRowTile();
  bool training = !!train.hidden;
  SmallVector<Value> init{ib.fill(outDest, 0.0)};
  if (training)
    init.append({train.hidden, train.dact, train.expertOut});
  return forRange(
      b, loc, cIndex(b, loc, 0), cIndex(b, loc, e), cIndex(b, loc, 1), init,
      [&](OpBuilder &eb, Location el, Value ei, ValueRange eacc) {
        Segment seg =
            segmentOf(eb, el, rl.offsets, rl.counts, {ei}, rowTile);
        OpFoldResult zero = eb.getIndexAttr(0);
        Value w1 = sliceOf(eb, el, in[2], {ei, zero, zero}, {1, width, hidden},
                           {width, hidden});
        Value b1 = sliceOf(eb, el, in[3], {ei, zero}, {1, hidden}, {hidden});
        Value w2 = sliceOf(eb, el, in[4], {ei, zero, zero}, {1, hidden, width},
                           {hidden, width});
        Value b2 = sliceOf(eb, el, in[5], {ei, zero}, {1, width}, {width});
        return forRange(
            eb, el, seg.begin, seg.tilesEnd, cIndex(eb, el, rowTile), eacc,
            [&](OpBuilder &tb, Location tl, Value row, ValueRange acc) {
              ImageBuilder tib(tb, tl);
              Value valid = validRows(tb, tl, seg, row, rowTile);
              Value xs =
                  gatherRows(tib, x, rl.rowToken, {}, row, valid, rowTile);
              Value a = tib.matmul(xs, w1, b1, tib.empty({rowTile, hidden}));
              SmallVector<Value> next(acc);
              Value h, y;
              if (training) {
                auto [act, dact] = tib.activationAndDerivative(
                    o.getActivation(), a, tib.empty({rowTile, hidden}),
                    tib.empty({rowTile, hidden}));
                h = act;
                y = tib.matmul(h, w2, b2, tib.empty({rowTile, width}));
                next[1] = putRows(tb, tl, h, acc[1], row);
                next[2] = putRows(tb, tl, dact, acc[2], row);
                next[3] = putRows(tb, tl, y, acc[3], row);
              } else {
                h = tib.activation(o.getActivation(), a,
                                   tib.empty({rowTile, hidden}));
                y = tib.matmul(h, w2, b2, tib.empty({rowTile, width}));
              }
              // Epilogue: out[token] += gate * y[r], rows in order.
              next[0] = forRange(
                  tb, tl, cIndex(tb, tl, 0), valid, cIndex(tb, tl, 1),
                  {acc[0]},
                  [&](OpBuilder &rb, Location rl2, Value r, ValueRange out) {
                    ImageBuilder rib(rb, rl2);
                    Value at = arith::AddIOp::create(rb, rl2, row, r);
                    Value token =
                        toIndex(rb, rl2, extractAt(rb, rl2, rl.rowToken, {at}));
                    Value gate = extractAt(rb, rl2, rl.rowGate, {at});
                    return SmallVector<Value>{addRow(
                        rib, out[0], token, tileRow(rb, rl2, y, r), gate)};
                  })[0];
              return next;
            });
      });
}

/// What the router of a fused layer reads, of one group: the gate input
/// (operand 6, or 7 after the noise) when there is one, else the tokens.
template <typename OpT> Value gateInputOf(OpT o, ArrayRef<Value> in) {
  return o.getGateInput() ? in[o.getNoise() ? 7 : 6] : in[0];
}

/// The tokens, the noise and the gate input are per group; the router and
/// expert weights are read whole (they may be computed, such as the
/// normalised codes of a cosine gate, so this does not go by moe.param).
template <typename OpT> int64_t layerImageDim(Operation *op, Value v,
                                              bool isResult) {
  auto o = cast<OpT>(op);
  if (isResult || v == o.getInput() || v == o.getNoise() ||
      v == o.getGateInput())
    return 0;
  return -1;
}

KernelResults routedFFNKernel(RoutedFFNOp o, ImageBuilder &ib,
                              ArrayRef<Value> in, ArrayRef<Value> dests,
                              const ImageKernelOptions &) {
  int64_t n = o.getRowBound();
  Value noise = o.getNoise() ? in[6] : Value();
  RowList rl = emitRowList(o, ib, gateInputOf(o, in), in[1], noise, dests[1],
                           Value(),
                           dests[2], ib.empty({o.getNumExperts()}),
                           ib.empty({n}), ib.empty({n}));
  SmallVector<Value> res = emitExperts(o, ib, in, rl, dests[0], {});
  return SmallVector<Value>{res[0], rl.logits, rl.counts};
}

KernelResults routedFFNTrainKernel(RoutedFFNTrainOp o, ImageBuilder &ib,
                                   ArrayRef<Value> in, ArrayRef<Value> dests,
                                   const ImageKernelOptions &) {
  Value noise = o.getNoise() ? in[6] : Value();
  RowList rl = emitRowList(o, ib, gateInputOf(o, in), in[1], noise, dests[1],
                           dests[3],
                           dests[2], dests[6], dests[4], dests[5]);
  SmallVector<Value> res = emitExperts(o, ib, in, rl, dests[0],
                                       {dests[7], dests[8], dests[9]});
  return SmallVector<Value>{res[0],      rl.logits,   rl.counts, rl.gates,
                            rl.rowToken, rl.rowGate,  rl.offsets, res[1],
                            res[2],      res[3]};
}

//===----------------------------------------------------------------------===//
// Backward
//===----------------------------------------------------------------------===//

/// moe.routed_ffn_grad for one group. `in`: output_grad [S, D], fc1_weight_t
/// [E, H, D], fc2_weight_t [E, D, H], row_token, row_gate [N], offsets,
/// counts [E], dact [N, H], expert_out [N, D].
KernelResults routedFFNGradKernel(RoutedFFNGradOp o, ImageBuilder &ib,
                                  ArrayRef<Value> in, ArrayRef<Value> dests,
                                  const ImageKernelOptions &) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value dy = in[0], w1t = in[1], w2t = in[2], rowToken = in[3],
        rowGate = in[4], offsets = in[5], counts = in[6], dact = in[7],
        expertOut = in[8];
  int64_t width = ImageBuilder::shape(dy)[1];
  int64_t e = ImageBuilder::shape(w1t)[0], hidden = ImageBuilder::shape(w1t)[1];
  int64_t rowTile = o.getRowTile();
  bool perImage = ImageBuilder::shape(dests[1])[0] == 1 &&
                  ImageBuilder::shape(dy)[0] != 1;
  SmallVector<Value> init{ib.fill(dests[0], 0.0), ib.fill(dests[1], 0.0),
                          dests[2], dests[3]};
  return forRange(
      b, loc, cIndex(b, loc, 0), cIndex(b, loc, e), cIndex(b, loc, 1), init,
      [&](OpBuilder &eb, Location el, Value ei, ValueRange eacc) {
        Segment seg = segmentOf(eb, el, offsets, counts, {ei}, rowTile);
        OpFoldResult zero = eb.getIndexAttr(0);
        Value w1 = sliceOf(eb, el, w1t, {ei, zero, zero}, {1, hidden, width},
                           {hidden, width});
        Value w2 = sliceOf(eb, el, w2t, {ei, zero, zero}, {1, width, hidden},
                           {width, hidden});
        return forRange(
            eb, el, seg.begin, seg.tilesEnd, cIndex(eb, el, rowTile), eacc,
            [&](OpBuilder &tb, Location tl, Value row, ValueRange acc) {
              ImageBuilder tib(tb, tl);
              Value valid = validRows(tb, tl, seg, row, rowTile);
              // Gather: dyt[r] = gate * dy[token] (into row_grad's rows,
              // zero past the segment); and the gate gradients
              // dgate[token, e] = dy[token] . expert_out[r].
              Value dyt0 = tib.fill({rowTile, width}, 0.0);
              SmallVector<Value> g = forRange(
                  tb, tl, cIndex(tb, tl, 0), valid, cIndex(tb, tl, 1),
                  {dyt0, acc[1]},
                  [&](OpBuilder &rb, Location rl2, Value r, ValueRange racc) {
                    ImageBuilder rib(rb, rl2);
                    Value at = arith::AddIOp::create(rb, rl2, row, r);
                    Value token =
                        toIndex(rb, rl2, extractAt(rb, rl2, rowToken, {at}));
                    Value gate = extractAt(rb, rl2, rowGate, {at});
                    OpFoldResult z = rb.getIndexAttr(0);
                    Value dyRow =
                        sliceOf(rb, rl2, dy, {token, z}, {1, width}, {width});
                    Value dytNext = writeSlice(
                        rib, racc[0], {r, z}, {1, width}, {width}, {dyRow},
                        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                          return arith::MulFOp::create(nb, nl, a[0], gate);
                        });
                    Value yRow = sliceOf(rb, rl2, expertOut, {at, z},
                                         {1, width}, {width});
                    // A [1] result (one parallel loop) rather than a 0-d
                    // one, so the vectorizer tiles it like any contraction.
                    Value dot = rib.generic(
                        {dyRow, yRow}, rib.fill({1}, 0.0),
                        {rib.map(2, {1}), rib.map(2, {1}), rib.map(2, {0})},
                        {kPar, kRed},
                        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                          return arith::AddFOp::create(
                              nb, nl, a[2],
                              arith::MulFOp::create(nb, nl, a[0], a[1]));
                        });
                    Value d = extractAt(rb, rl2, dot, {cIndex(rb, rl2, 0)});
                    Value gateRow = perImage ? cIndex(rb, rl2, 0) : token;
                    Value prev = extractAt(rb, rl2, racc[1], {gateRow, ei});
                    Value dgate = tensor::InsertOp::create(
                        rb, rl2, arith::AddFOp::create(rb, rl2, prev, d),
                        racc[1], ValueRange{gateRow, ei});
                    return SmallVector<Value>{dytNext, dgate};
                  });
              Value dyt = g[0];
              // da = dact * (dyt w2^T); dx rows = da w1^T.
              Value dh = tib.matmul(dyt, w2, Value(), tib.empty({rowTile, hidden}));
              Value da = tib.elementwise(
                  {rowsOf(tb, tl, dact, {}, row, rowTile), dh},
                  tib.empty({rowTile, hidden}),
                  [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::MulFOp::create(nb, nl, a[0], a[1]);
                  });
              Value dxr = tib.matmul(da, w1, Value(), tib.empty({rowTile, width}));
              Value dx = forRange(
                  tb, tl, cIndex(tb, tl, 0), valid, cIndex(tb, tl, 1),
                  {acc[0]},
                  [&](OpBuilder &rb, Location rl2, Value r, ValueRange out) {
                    ImageBuilder rib(rb, rl2);
                    Value at = arith::AddIOp::create(rb, rl2, row, r);
                    Value token =
                        toIndex(rb, rl2, extractAt(rb, rl2, rowToken, {at}));
                    return SmallVector<Value>{addRow(
                        rib, out[0], token, tileRow(rb, rl2, dxr, r), Value())};
                  })[0];
              return SmallVector<Value>{dx, g[1],
                                        putRows(tb, tl, da, acc[2], row),
                                        putRows(tb, tl, dyt, acc[3], row)};
            });
      });
}

/// moe.routed_ffn_grad reads the transposed weights whole.
int64_t routedGradImageDim(Operation *op, Value v, bool isResult) {
  auto grad = cast<RoutedFFNGradOp>(op);
  if (!isResult && (v == grad.getFc1WeightT() || v == grad.getFc2WeightT()))
    return -1;
  return 0;
}

/// acc[m, n] + sum_k a[k, m] w[k, n]: a weight gradient's update by one
/// row tile (a read transposed in place).
Value accumulateTransposedA(ImageBuilder &ib, Value a, Value w, Value acc) {
  return ib.generic(
      {a, w}, acc, {ib.map(3, {2, 0}), ib.map(3, {2, 1}), ib.map(3, {0, 1})},
      {kPar, kPar, kRed}, [](OpBuilder &nb, Location nl, ValueRange v) -> Value {
        return arith::AddFOp::create(nb, nl, v[2],
                                     arith::MulFOp::create(nb, nl, v[0], v[1]));
      });
}

/// moe.routed_ffn_weight_grad for one expert. `in`: input [G, S, D],
/// row_token [G, N], the expert's offsets and counts [G], hidden,
/// hidden_grad [G, N, H], row_grad [G, N, D]. For every group in order and
/// every row tile of the expert's segment, the tile's input rows gathered
/// through the row list and its residual rows update the accumulators:
/// dW1 += X^T dA, db1 += sum dA, dW2 += H^T dY, db2 += sum dY. Padding rows
/// contribute nothing: their gathered input rows and their gradient rows
/// (moe.routed_ffn_grad) are zeros.
KernelResults routedWeightGradKernel(RoutedFFNWeightGradOp o, ImageBuilder &ib,
                                     ArrayRef<Value> in, ArrayRef<Value> dests,
                                     const ImageKernelOptions &) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value x = in[0], rowToken = in[1], offsets = in[2], counts = in[3],
        hid = in[4], da = in[5], dyt = in[6];
  int64_t groups = ImageBuilder::shape(x)[0];
  int64_t rowTile = o.getRowTile();
  SmallVector<Value> accs{ib.fill(dests[0], 0.0), ib.fill(dests[1], 0.0),
                          ib.fill(dests[2], 0.0), ib.fill(dests[3], 0.0)};
  return forRange(
      b, loc, cIndex(b, loc, 0), cIndex(b, loc, groups), cIndex(b, loc, 1),
      accs, [&](OpBuilder &gb, Location gl, Value gi, ValueRange gacc) {
        Segment seg = segmentOf(gb, gl, offsets, counts, {gi}, rowTile);
        return forRange(
            gb, gl, seg.begin, seg.tilesEnd, cIndex(gb, gl, rowTile), gacc,
            [&](OpBuilder &tb, Location tl, Value row, ValueRange acc) {
              ImageBuilder tib(tb, tl);
              Value valid = validRows(tb, tl, seg, row, rowTile);
              Value xt = gatherRows(tib, x, rowToken, {gi}, row, valid, rowTile);
              Value dat = rowsOf(tb, tl, da, {gi}, row, rowTile);
              Value ht = rowsOf(tb, tl, hid, {gi}, row, rowTile);
              Value dyt2 = rowsOf(tb, tl, dyt, {gi}, row, rowTile);
              return SmallVector<Value>{
                  accumulateTransposedA(tib, xt, dat, acc[0]),
                  accumulateRows(tib, dat, acc[1]),
                  accumulateTransposedA(tib, ht, dyt2, acc[2]),
                  accumulateRows(tib, dyt2, acc[3])};
            });
      });
}

/// moe.routed_ffn_weight_grad: one expert per parallel step. Its results
/// and the expert-major segments ([E, G]) are sliced per expert; the rows
/// are read whole.
int64_t weightGradImageDim(Operation *op, Value v, bool isResult) {
  auto wg = cast<RoutedFFNWeightGradOp>(op);
  if (isResult || v == wg.getOffsets() || v == wg.getCounts())
    return 0;
  return -1;
}

//===----------------------------------------------------------------------===//
// Costs
//===----------------------------------------------------------------------===//

/// Rows a group's experts are expected to process: each token reaches
/// k_eff experts, and the experts hold at most E * C rows.
template <typename OpT> int64_t expectedRows(OpT o) {
  int64_t s = dimOf(o.getInput(), 1), e = o.getNumExperts();
  double k = expectedExpertsPerToken(o.getK(), e, o.getCapacity(), s);
  return std::min<int64_t>(static_cast<int64_t>(s * k + 0.5),
                           e * o.getCapacity());
}

template <typename OpT> int64_t layerFlops(OpT o) {
  int64_t g = dimOf(o.getInput(), 0), s = dimOf(o.getInput(), 1);
  int64_t d = dimOf(o.getInput(), 2), h = dimOf(o.getFc1Weight(), 2);
  int64_t e = o.getNumExperts();
  int64_t rows = g * expectedRows(o);
  int64_t router =
      2 * g * s * dimOf(o.getRouterWeight(), 0) * e + 5 * g * s * e;
  // Two GEMMs, biases, activation, and the gated add.
  return router + rows * (4 * d * h + 2 * h + 3 * d);
}

template <typename OpT> double layerInactiveParameters(OpT o) {
  int64_t e = o.getNumExperts(), s = dimOf(o.getInput(), 1);
  int64_t expertParams = numel(o.getFc1Weight()) + numel(o.getFc1Bias()) +
                         numel(o.getFc2Weight()) + numel(o.getFc2Bias());
  double k = expectedExpertsPerToken(o.getK(), e, o.getCapacity(), s);
  return expertParams * (e - k) / e;
}

/// The backward's rows are the forward's; it does not know the fill, so
/// it counts every row of the row list.
int64_t gradFlops(RoutedFFNGradOp o) {
  int64_t g = dimOf(o.getOutputGrad(), 0), d = dimOf(o.getOutputGrad(), 2);
  int64_t n = dimOf(o.getRowToken(), 1), h = dimOf(o.getFc1WeightT(), 1);
  return g * n * (4 * d * h + h + 3 * d);
}

int64_t weightGradFlops(RoutedFFNWeightGradOp o) {
  int64_t rows = dimOf(o.getHidden(), 0) * dimOf(o.getHidden(), 1);
  int64_t d = dimOf(o.getInput(), 2), h = dimOf(o.getHidden(), 2);
  return rows * (4 * d * h + h + d);
}

template <typename OpT, KernelFn<OpT> Build>
void attachLayer(MLIRContext *ctx) {
  OpT::template attachInterface<KernelModel<OpT, Build, layerImageDim<OpT>>>(
      *ctx);
  OpT::template attachInterface<
      CostModel<OpT, layerFlops<OpT>, layerInactiveParameters<OpT>>>(*ctx);
}

} // namespace

void moec::kernels::attachRoutedOpModels(MLIRContext *ctx) {
  attachLayer<RoutedFFNOp, routedFFNKernel>(ctx);
  attachLayer<RoutedFFNTrainOp, routedFFNTrainKernel>(ctx);
  attachKernelAndCost<RoutedFFNGradOp, routedFFNGradKernel, gradFlops,
                      routedGradImageDim>(ctx);
  attachKernelAndCost<RoutedFFNWeightGradOp, routedWeightGradKernel,
                      weightGradFlops, weightGradImageDim>(ctx);
}
