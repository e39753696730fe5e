//===- CostModel.cpp - FLOP and parameter counts of moe ops ---------------===//

#include "moec/Passes/CostModel.h"

#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Interfaces/CastInterfaces.h"
#include "llvm/ADT/TypeSwitch.h"

#include <algorithm>

using namespace mlir;
using namespace moec::moe;

namespace {
int64_t numel(Value v) {
  auto type = cast<RankedTensorType>(v.getType());
  return type.hasStaticShape() ? type.getNumElements() : 0;
}
int64_t dim(Value v, int64_t i) {
  int64_t d = cast<RankedTensorType>(v.getType()).getDimSize(i);
  return ShapedType::isDynamic(d) ? 0 : d;
}
bool isSoftRouted(Value dispatchOrCombine) {
  auto router = dispatchOrCombine.getDefiningOp<RouterOp>();
  return router && router.getKind() == RouterKind::Soft;
}
/// 2*D*H*2 multiply-adds per row of an FFN, plus biases and activation.
int64_t ffnFlops(int64_t rows, int64_t d, int64_t h) {
  return rows * (4 * d * h + 2 * h + d);
}

/// moe.attention over images `input` [N, S, D]: the QKV and output
/// projections, Q K^T and P V per head, the softmax.
int64_t attentionFlops(Value input, int64_t heads) {
  int64_t n = dim(input, 0), s = dim(input, 1), d = dim(input, 2);
  int64_t projections = 2 * n * s * d * 4 * d;
  int64_t scoresAndMix = 2 * 2 * n * s * s * d;
  int64_t softmax = 5 * n * heads * s * s;
  return projections + scoresAndMix + softmax;
}

/// A structured op's FLOPs: its loop nest's iterations times the float
/// arithmetic of its body (constants, selects and casts are free; a
/// multiply-add counts 2). Zero with a dynamic loop range.
int64_t linalgFlops(linalg::LinalgOp op) {
  int64_t perIteration = 0;
  for (Operation &inner : op.getBlock()->without_terminator()) {
    if (!isa<arith::ArithDialect, math::MathDialect>(inner.getDialect()) ||
        isa<arith::ConstantOp, arith::SelectOp, CastOpInterface>(inner))
      continue;
    if (llvm::any_of(inner.getResultTypes(),
                     [](Type t) { return isa<FloatType>(t); }))
      ++perIteration;
  }
  if (perIteration == 0)
    return 0;
  int64_t iterations = 1;
  for (int64_t range : op.getStaticLoopRanges()) {
    if (ShapedType::isDynamic(range))
      return 0;
    iterations *= range;
  }
  return iterations * perIteration;
}
} // namespace

int64_t moec::moe::estimateFlops(Operation *op) {
  return llvm::TypeSwitch<Operation *, int64_t>(op)
      .Case([](PatchEmbedOp o) {
        return 2 * numel(o.getResult()) * dim(o.getWeight(), 0);
      })
      .Case([](PosEmbedOp o) { return numel(o.getResult()); })
      .Case([](AddOp o) { return numel(o.getResult()); })
      .Case([](ActivationOp o) { return numel(o.getResult()); })
      .Case([](ActivationTrainOp o) { return 2 * numel(o.getResult()); })
      // mean, variance, normalise, scale, shift.
      .Case([](LayerNormOp o) { return 5 * numel(o.getResult()); })
      .Case([](AttentionOp o) {
        return attentionFlops(o.getInput(), o.getHeads());
      })
      // moe.attention plus the log-sum-exp of every score row.
      .Case([](AttentionTrainOp o) {
        return attentionFlops(o.getInput(), o.getHeads()) + 2 * numel(o.getLse());
      })
      // Per image and head: the recomputed scores, dP, dQ, dK and dV (five
      // [S, S] x [S, dh] products), P from the scores and lse and dS (three
      // operations per score each), rowsum(dO * O).
      .Case([](AttentionGradOp o) {
        int64_t n = dim(o.getQkv(), 0), s = dim(o.getQkv(), 1),
                d = dim(o.getDheads(), 2), h = o.getHeads();
        return 5 * 2 * n * s * s * d + 6 * n * h * s * s + 2 * n * s * d;
      })
      .Case([](DenseOp o) {
        int64_t rows = numel(o.getResult()) / std::max<int64_t>(1, dim(o.getWeight(), 1));
        int64_t flops = 2 * rows * dim(o.getWeight(), 0) * dim(o.getWeight(), 1);
        return flops + (o.getBias() ? numel(o.getResult()) : 0);
      })
      .Case([](PoolOp o) {
        return o.getKind() == PoolKind::Mean ? numel(o.getInput()) : 0;
      })
      .Case([](ClassifierHeadOp o) {
        return 2 * dim(o.getInput(), 0) * dim(o.getWeight(), 0) *
                   dim(o.getWeight(), 1) +
               numel(o.getLogits());
      })
      .Case([](SoftmaxCrossEntropyOp o) { return 6 * numel(o.getLogits()); })
      .Case([](RouterOp o) {
        int64_t rows = dim(o.getLogits(), 0) * dim(o.getLogits(), 1);
        int64_t l = dim(o.getLogits(), 2);
        return 2 * rows * dim(o.getInput(), 2) * l + 5 * rows * l;
      })
      // Hard routers gather (no arithmetic); soft dispatch is a dense einsum.
      .Case([](DispatchOp o) {
        return isSoftRouted(o.getDispatch())
                   ? 2 * numel(o.getDispatch()) * dim(o.getInput(), 2)
                   : 0;
      })
      // Hard routers scale and add each filled slot once; soft mixes all.
      .Case([](CombineOp o) {
        return isSoftRouted(o.getCombine())
                   ? 2 * numel(o.getCombine()) * dim(o.getInput(), 3)
                   : 2 * numel(o.getInput());
      })
      .Case<ExpertsOp, ExpertsTrainOp>([](auto o) {
        int64_t rows = numel(o.getInput()) / std::max<int64_t>(1, dim(o.getInput(), 3));
        return ffnFlops(rows, dim(o.getInput(), 3), dim(o.getFc1Weight(), 2));
      })
      .Case([](SharedExpertOp o) {
        int64_t rows = dim(o.getInput(), 0) * dim(o.getInput(), 1);
        return ffnFlops(rows, dim(o.getInput(), 2), dim(o.getFc1Weight(), 1));
      })
      .Case([](linalg::LinalgOp o) { return linalgFlops(o); })
      .Default([](Operation *) { return int64_t(0); });
}

double moec::moe::expectedExpertsPerToken(RouterOp router) {
  if (auto k = router.getK())
    return static_cast<double>(*k);
  int64_t e = router.getNumExperts(), c = router.getCapacity();
  int64_t s = dim(router.getInput(), 1);
  if (s == 0)
    return static_cast<double>(e);
  return std::min<double>(e, static_cast<double>(e * c) / s);
}
