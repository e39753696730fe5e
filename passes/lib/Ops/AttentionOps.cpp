//===- AttentionOps.cpp - kernel and cost models of attention -------------===//
//
// One image of moe.attention, moe.attention_train (the forward that also
// returns qkv, the heads' output and the row log-sum-exp for the backward)
// and moe.attention_grad, and their FLOP formulas.
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

using namespace mlir;
using namespace moec::kernels;

namespace {

/// Columns [block * D + h * dh, +dh) of `src` [S, n * D]: head h's slice of
/// block `block` (0, 1, 2: queries, keys, values of qkv).
Value headColumns(OpBuilder &b, Location loc, Value src, Value headStart,
                  int64_t block, int64_t d, int64_t dh) {
  int64_t s = ImageBuilder::shape(src)[0];
  Value first = arith::AddIOp::create(
      b, loc, headStart, arith::ConstantIndexOp::create(b, loc, block * d));
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get({s, dh}, b.getF32Type()), src,
      ArrayRef<OpFoldResult>{b.getIndexAttr(0), first},
      ArrayRef<OpFoldResult>{b.getIndexAttr(s), b.getIndexAttr(dh)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

Value putHeadColumns(OpBuilder &b, Location loc, Value slice, Value full,
                     Value headStart, int64_t block, int64_t d) {
  ArrayRef<int64_t> sh = ImageBuilder::shape(slice);
  Value first = arith::AddIOp::create(
      b, loc, headStart, arith::ConstantIndexOp::create(b, loc, block * d));
  return tensor::InsertSliceOp::create(
      b, loc, slice, full, ArrayRef<OpFoldResult>{b.getIndexAttr(0), first},
      ArrayRef<OpFoldResult>{b.getIndexAttr(sh[0]), b.getIndexAttr(sh[1])},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

/// Row h of `full` [H, S] as an [S] slice.
Value headRow(OpBuilder &b, Location loc, Value full, Value h) {
  int64_t s = ImageBuilder::shape(full)[1];
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get({s}, b.getF32Type()), full,
      ArrayRef<OpFoldResult>{h, b.getIndexAttr(0)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(s)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

/// One image of moe.attention (`residuals` empty) or moe.attention_train
/// (`residuals`: the qkv [S, 3D], output [S, D] and lse [H, S]
/// destinations; the three results are appended to `*residualResults`).
/// Returns the projected result, written into `dest`.
Value emitAttention(ImageBuilder &ib, ArrayRef<Value> in, int64_t heads,
                    Value dest, ArrayRef<Value> residuals,
                    SmallVectorImpl<Value> *residualResults = nullptr) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
  int64_t s = x[0], d = x[1], dh = d / heads;
  bool train = !residuals.empty();
  Value qkv = ib.matmul(in[0], in[1], in[2],
                        train ? residuals[0] : ib.empty({s, 3 * d}));
  double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  SmallVector<Value> init{train ? residuals[1] : ib.empty({s, d})};
  if (train)
    init.push_back(residuals[2]);
  // One loop over heads (not unrolled: the kernel stays small enough for
  // the instruction cache).
  auto headLoop = scf::ForOp::create(
      b, loc, arith::ConstantIndexOp::create(b, loc, 0),
      arith::ConstantIndexOp::create(b, loc, heads),
      arith::ConstantIndexOp::create(b, loc, 1), init,
      [&](OpBuilder &hb, Location hl, Value h, ValueRange acc) {
        ImageBuilder hib(hb, hl);
        Value headStart = arith::MulIOp::create(
            hb, hl, h, arith::ConstantIndexOp::create(hb, hl, dh));
        Value q = headColumns(hb, hl, qkv, headStart, 0, d, dh);
        Value kt = hib.transpose(headColumns(hb, hl, qkv, headStart, 1, d, dh),
                                 {1, 0});
        Value v = headColumns(hb, hl, qkv, headStart, 2, d, dh);
        Value scores = hib.matmul(q, kt, Value(), hib.empty({s, s}));
        // softmax(QK^T) V with the normalisation applied to the [S, dh]
        // output instead of the [S, S] probabilities: exp once per score,
        // one pass less over the scores.
        auto [exps, rowSum, rowMax] = hib.scaledExpRows(scores, scale);
        Value unnormalized = hib.matmul(exps, v, Value(), hib.empty({s, dh}));
        AffineMap all = hib.map(2, {0, 1}), row = hib.map(2, {0});
        Value out =
            hib.generic({unnormalized, rowSum},
                        headColumns(hb, hl, acc[0], headStart, 0, d, dh),
                        {all, row, all}, {kPar, kPar},
                        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                          return arith::DivFOp::create(nb, nl, a[0], a[1]);
                        });
        SmallVector<Value> next{
            putHeadColumns(hb, hl, out, acc[0], headStart, 0, d)};
        if (train) {
          // lse = scale * max + log(sum exp(scale * (scores - max))).
          Value lse = hib.generic(
              {rowMax, rowSum}, headRow(hb, hl, acc[1], h),
              {hib.map(1, {0}), hib.map(1, {0}), hib.map(1, {0})}, {kPar},
              [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                Value scaled = arith::MulFOp::create(
                    nb, nl, a[0],
                    arith::ConstantOp::create(nb, nl,
                                              nb.getF32FloatAttr(scale)));
                return arith::AddFOp::create(nb, nl, scaled,
                                             math::LogOp::create(nb, nl, a[1]));
              });
          next.push_back(tensor::InsertSliceOp::create(
              hb, hl, lse, acc[1],
              ArrayRef<OpFoldResult>{h, hb.getIndexAttr(0)},
              ArrayRef<OpFoldResult>{hb.getIndexAttr(1), hb.getIndexAttr(s)},
              ArrayRef<OpFoldResult>{hb.getIndexAttr(1), hb.getIndexAttr(1)}));
        }
        scf::YieldOp::create(hb, hl, next);
      });
  Value heads_out = headLoop.getResult(0);
  Value result = ib.matmul(heads_out, in[3], in[4], dest);
  if (train)
    residualResults->append({qkv, heads_out, headLoop.getResult(1)});
  return result;
}

/// One image of moe.attention_grad: in = (qkv [S, 3D], output [S, D],
/// lse [H, S], dheads [S, D]); dQ, dK and dV go into the columns of Q, K
/// and V of `dest` [S, 3D]. One head at a time: its [S, S] probabilities
/// and their gradient stay in cache, and every result column is written
/// once.
Value emitAttentionGrad(ImageBuilder &ib, ArrayRef<Value> in, int64_t heads,
                        Value dest) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[3]); // dheads [S, D]
  int64_t s = x[0], d = x[1], dh = d / heads;
  double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  auto headLoop = scf::ForOp::create(
      b, loc, arith::ConstantIndexOp::create(b, loc, 0),
      arith::ConstantIndexOp::create(b, loc, heads),
      arith::ConstantIndexOp::create(b, loc, 1), ValueRange{dest},
      [&](OpBuilder &hb, Location hl, Value h, ValueRange acc) {
        ImageBuilder hib(hb, hl);
        Value headStart = arith::MulIOp::create(
            hb, hl, h, arith::ConstantIndexOp::create(hb, hl, dh));
        auto cols = [&](Value src, int64_t block) {
          return headColumns(hb, hl, src, headStart, block, d, dh);
        };
        AffineMap all = hib.map(2, {0, 1}), row = hib.map(2, {0});
        Value q = cols(in[0], 0), k = cols(in[0], 1), v = cols(in[0], 2);
        Value o = cols(in[1], 0), dO = cols(in[3], 0);
        // P = exp(Q K^T * scale - lse): the softmax from the forward's row
        // log-sum-exp, one exp per score and no row reductions.
        Value scores =
            hib.matmul(q, hib.transpose(k, {1, 0}), Value(), hib.empty({s, s}));
        Value p = hib.generic(
            {scores, headRow(hb, hl, in[2], h)}, hib.empty({s, s}),
            {all, row, all}, {kPar, kPar},
            [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              Value scaled = arith::MulFOp::create(
                  nb, nl, a[0],
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale)));
              return math::ExpOp::create(
                  nb, nl, arith::SubFOp::create(nb, nl, scaled, a[1]));
            });
        // dS = P (dO V^T - rowsum(dO O)) * scale.
        Value dP = hib.matmul(dO, hib.transpose(v, {1, 0}), Value(),
                              hib.empty({s, s}));
        Value rowDot = hib.generic(
            {dO, o}, hib.fill({s}, 0.0), {all, all, row}, {kPar, kRed},
            [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::AddFOp::create(
                  nb, nl, a[2], arith::MulFOp::create(nb, nl, a[0], a[1]));
            });
        Value dS = hib.generic(
            {p, dP, rowDot}, hib.empty({s, s}), {all, all, row, all},
            {kPar, kPar},
            [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              Value diff = arith::SubFOp::create(nb, nl, a[1], a[2]);
              Value g = arith::MulFOp::create(nb, nl, a[0], diff);
              return arith::MulFOp::create(
                  nb, nl, g,
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale)));
            });
        // dQ = dS K, dK = dS^T Q, dV = P^T dO.
        Value dq = hib.matmul(dS, k, Value(), cols(acc[0], 0));
        Value dk = hib.matmulTransposedA(dS, q, cols(acc[0], 1));
        Value dv = hib.matmulTransposedA(p, dO, cols(acc[0], 2));
        Value dqkv = putHeadColumns(hb, hl, dq, acc[0], headStart, 0, d);
        dqkv = putHeadColumns(hb, hl, dk, dqkv, headStart, 1, d);
        dqkv = putHeadColumns(hb, hl, dv, dqkv, headStart, 2, d);
        scf::YieldOp::create(hb, hl, dqkv);
      });
  return headLoop.getResult(0);
}

KernelResults attentionKernel(AttentionOp o, ImageBuilder &ib,
                              ArrayRef<Value> in, ArrayRef<Value> dests,
                              const ImageKernelOptions &) {
  return one(emitAttention(ib, in, o.getHeads(), dests[0], {}));
}

KernelResults attentionTrainKernel(AttentionTrainOp o, ImageBuilder &ib,
                                   ArrayRef<Value> in, ArrayRef<Value> dests,
                                   const ImageKernelOptions &) {
  SmallVector<Value> residuals;
  Value y = emitAttention(ib, in, o.getHeads(), dests[0],
                          {dests[1], dests[2], dests[3]}, &residuals);
  SmallVector<Value> results{y};
  results.append(residuals);
  return results;
}

KernelResults attentionGradKernel(AttentionGradOp o, ImageBuilder &ib,
                                  ArrayRef<Value> in, ArrayRef<Value> dests,
                                  const ImageKernelOptions &) {
  return one(emitAttentionGrad(ib, in, o.getHeads(), dests[0]));
}

/// moe.attention over images `input` [N, S, D]: the QKV and output
/// projections, Q K^T and P V per head, the softmax.
int64_t attentionFlops(Value input, int64_t heads) {
  int64_t n = dimOf(input, 0), s = dimOf(input, 1), d = dimOf(input, 2);
  int64_t projections = 2 * n * s * d * 4 * d;
  int64_t scoresAndMix = 2 * 2 * n * s * s * d;
  int64_t softmax = 5 * n * heads * s * s;
  return projections + scoresAndMix + softmax;
}

int64_t attentionOpFlops(AttentionOp o) {
  return attentionFlops(o.getInput(), o.getHeads());
}

/// moe.attention plus the log-sum-exp of every score row.
int64_t attentionTrainFlops(AttentionTrainOp o) {
  return attentionFlops(o.getInput(), o.getHeads()) + 2 * numel(o.getLse());
}

/// Per image and head: the recomputed scores, dP, dQ, dK and dV (five
/// [S, S] x [S, dh] products), P from the scores and lse and dS (three
/// operations per score each), rowsum(dO * O).
int64_t attentionGradFlops(AttentionGradOp o) {
  int64_t n = dimOf(o.getQkv(), 0), s = dimOf(o.getQkv(), 1),
          d = dimOf(o.getDheads(), 2), h = o.getHeads();
  return 5 * 2 * n * s * s * d + 6 * n * h * s * s + 2 * n * s * d;
}

} // namespace

void moec::kernels::attachAttentionOpModels(MLIRContext *ctx) {
  attachKernelAndCost<AttentionOp, attentionKernel, attentionOpFlops>(ctx);
  attachKernelAndCost<AttentionTrainOp, attentionTrainKernel,
                      attentionTrainFlops>(ctx);
  attachKernelAndCost<AttentionGradOp, attentionGradKernel, attentionGradFlops>(
      ctx);
}
