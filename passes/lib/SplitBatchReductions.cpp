//===- SplitBatchReductions.cpp - moe-split-batch-reductions --------------===//
//
// Sums over the batch (weight gradients) become per-tile partials plus a
// fixed-order sum of the partials; see the pass description.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"

namespace moec {
#define GEN_PASS_DEF_SPLITBATCHREDUCTIONSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using utils::IteratorType;

namespace {
constexpr IteratorType kPar = IteratorType::parallel;
constexpr IteratorType kRed = IteratorType::reduction;

/// Weight gradients sum over the batch: x^T dy reduces [B*S, K] x [B*S, N]
/// into a small [K, N]. Split over its output, every tile of such a kernel
/// streams all of dy from memory. Instead, `op` becomes a partial op with a
/// leading parallel dimension over `tiles` groups of images, each summing
/// its own images into partial[t] (the slices it reads stay in cache), and
/// a small op that adds the partials in a fixed order, so the result does
/// not depend on the thread count. Applies to generics with one output of
/// rank >= 1 that accumulate by addition, whose every input indexes one
/// reduction dimension of extent `batch` as a plain dimension (experts'
/// inputs [E, B, C, D] at position 1, the others at 0), whose output does
/// not, and whose output is much smaller than its inputs. (Splitting any
/// additive reduction dimension is exact; a dimension that only happens to
/// have the batch's extent would merely be split for nothing.) Returns
/// whether `op` was rewritten.
bool splitBatchReduction(linalg::GenericOp op, int64_t batch, int64_t tiles,
                         OpBuilder &b) {
  if (op.getNumDpsInits() != 1 || op.getNumDpsInputs() == 0 || tiles <= 1 ||
      batch % tiles != 0 || !op.hasPureTensorSemantics())
    return false;
  OpOperand *init = op.getDpsInitOperand(0);
  auto outType = dyn_cast<RankedTensorType>(init->get().getType());
  if (!outType || outType.getRank() == 0 || !outType.hasStaticShape() ||
      !outType.getElementType().isF32())
    return false;
  // The body is out + f(inputs), with `out` read nowhere else.
  Block &body = op.getRegion().front();
  BlockArgument outArg = op.getMatchingBlockArgument(init);
  auto yield = cast<linalg::YieldOp>(body.getTerminator());
  auto add = yield.getOperand(0).getDefiningOp<arith::AddFOp>();
  if (!add || !outArg.hasOneUse() ||
      (add.getLhs() != outArg && add.getRhs() != outArg))
    return false;
  SmallVector<IteratorType> iters = op.getIteratorTypesArray();
  SmallVector<int64_t> ranges = op.getStaticLoopRanges();
  SmallVector<AffineMap> maps = op.getIndexingMapsArray();
  AffineMap outMap = maps[init->getOperandNumber()];
  if (!outMap.isProjectedPermutation())
    return false;
  // The reduction is worth splitting only if the partials ([tiles, out])
  // are much smaller than what the op reads.
  int64_t inputElements = 0;
  for (OpOperand *in : op.getDpsInputOperands()) {
    auto t = dyn_cast<RankedTensorType>(in->get().getType());
    if (!t || !t.hasStaticShape())
      return false;
    inputElements += t.getNumElements();
  }
  if (4 * tiles * outType.getNumElements() > inputElements)
    return false;
  // The batch dimension r and where each input indexes it.
  auto batchPositions = [&](unsigned r) -> std::optional<SmallVector<int64_t>> {
    if (iters[r] != kRed || ranges[r] != batch || outMap.isFunctionOfDim(r))
      return std::nullopt;
    SmallVector<int64_t> at;
    for (OpOperand *in : op.getDpsInputOperands()) {
      int64_t p = -1;
      for (auto [i, e] :
           llvm::enumerate(maps[in->getOperandNumber()].getResults())) {
        if (!e.isFunctionOfDim(r))
          continue;
        auto d = dyn_cast<AffineDimExpr>(e);
        if (!d || p >= 0)
          return std::nullopt;
        p = i;
      }
      if (p < 0)
        return std::nullopt;
      at.push_back(p);
    }
    return at;
  };
  int64_t r = -1;
  SmallVector<int64_t> at;
  for (unsigned d = 0; d < op.getNumLoops() && r < 0; ++d)
    if (auto found = batchPositions(d)) {
      r = d;
      at = *found;
    }
  if (r < 0)
    return false;

  // Loop order of the partial op: t, then the original loops. Sums with a
  // single input (bias and norm gradients) put the output's loops innermost
  // instead, so they vectorize along the output rather than gather along a
  // strided reduction.
  unsigned n = op.getNumLoops();
  SmallVector<unsigned> order;
  if (op.getNumDpsInputs() == 1) {
    for (unsigned d = 0; d < n; ++d)
      if (iters[d] == kRed)
        order.push_back(d);
    for (unsigned d = 0; d < n; ++d)
      if (iters[d] == kPar)
        order.push_back(d);
  } else {
    order = llvm::to_vector(llvm::seq<unsigned>(0, n));
  }
  MLIRContext *ctx = op.getContext();
  SmallVector<AffineExpr> newDim(n);
  for (auto [pos, d] : llvm::enumerate(order))
    newDim[d] = getAffineDimExpr(pos + 1, ctx);
  AffineExpr t = getAffineDimExpr(0, ctx);
  // Results of `m` in the new loops, with t inserted before position
  // `tAt` (the batch dimension's tile index precedes its image index).
  auto remap = [&](AffineMap m, int64_t tAt) {
    SmallVector<AffineExpr> results;
    for (auto [i, e] : llvm::enumerate(m.getResults())) {
      if (static_cast<int64_t>(i) == tAt)
        results.push_back(t);
      results.push_back(e.replaceDims(newDim));
    }
    return AffineMap::get(n + 1, 0, results, ctx);
  };

  Location loc = op.getLoc();
  b.setInsertionPoint(op);
  int64_t perTile = batch / tiles;
  SmallVector<Value> inputs;
  SmallVector<AffineMap> newMaps;
  for (auto [in, p] : llvm::zip(op.getDpsInputOperands(), at)) {
    auto type = cast<RankedTensorType>(in->get().getType());
    SmallVector<int64_t> shape;
    SmallVector<ReassociationIndices> groups;
    for (auto [i, size] : llvm::enumerate(type.getShape())) {
      int64_t next = shape.size();
      if (static_cast<int64_t>(i) == p) {
        shape.append({tiles, perTile});
        groups.push_back({next, next + 1});
      } else {
        shape.push_back(size);
        groups.push_back({next});
      }
    }
    inputs.push_back(tensor::ExpandShapeOp::create(
        b, loc, RankedTensorType::get(shape, type.getElementType()), in->get(),
        groups));
    newMaps.push_back(remap(maps[in->getOperandNumber()], p));
  }
  SmallVector<int64_t> partialShape{tiles};
  llvm::append_range(partialShape, outType.getShape());
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));
  Value partialInit =
      linalg::FillOp::create(
          b, loc, zero,
          tensor::EmptyOp::create(b, loc, partialShape, b.getF32Type())
              .getResult())
          .getResult(0);
  newMaps.push_back(remap(outMap, 0));
  SmallVector<IteratorType> newIters{kPar};
  for (unsigned d : order)
    newIters.push_back(iters[d]);
  auto partial = linalg::GenericOp::create(
      b, loc, partialInit.getType(), inputs, partialInit, newMaps, newIters);
  b.cloneRegionBefore(op.getRegion(), partial.getRegion(),
                      partial.getRegion().end());

  // sum_t partial[t] into the original init: loops (o0, t, o1, ...), so the
  // tiles split o0 and the innermost loop is the output's last dimension.
  int64_t rank = outType.getRank();
  SmallVector<AffineExpr> outDims, partialDims;
  AffineExpr tDim = getAffineDimExpr(1, ctx);
  for (int64_t i = 0; i < rank; ++i)
    outDims.push_back(getAffineDimExpr(i == 0 ? 0 : i + 1, ctx));
  partialDims.push_back(tDim);
  llvm::append_range(partialDims, outDims);
  SmallVector<IteratorType> sumIters(rank + 1, kPar);
  sumIters[1] = kRed;
  auto sum = linalg::GenericOp::create(
      b, loc, outType, partial.getResult(0), init->get(),
      ArrayRef<AffineMap>{AffineMap::get(rank + 1, 0, partialDims, ctx),
                          AffineMap::get(rank + 1, 0, outDims, ctx)},
      sumIters, [](OpBuilder &nb, Location nl, ValueRange v) {
        linalg::YieldOp::create(
            nb, nl, arith::AddFOp::create(nb, nl, v[1], v[0]).getResult());
      });
  for (NamedAttribute attr : op->getDiscardableAttrs()) {
    partial->setAttr(attr.getName(), attr.getValue());
    sum->setAttr(attr.getName(), attr.getValue());
  }
  op->replaceAllUsesWith(sum->getResults());
  op->erase();
  return true;
}

struct SplitBatchReductionsPass
    : public moec::impl::SplitBatchReductionsPassBase<
          SplitBatchReductionsPass> {
  void runOnOperation() override {
    func::FuncOp fn = getOperation();
    int64_t batch = -1;
    for (Type t : fn.getArgumentTypes())
      if (auto rt = dyn_cast<RankedTensorType>(t);
          rt && rt.hasStaticShape() && rt.getRank() > 0) {
        batch = rt.getDimSize(0);
        break;
      }
    if (batch <= 0 || fn.isExternal())
      return;
    // As many partials as moe-lower-to-kernels makes tiles of the batch.
    int64_t tiles = batch / moec::batchTileSize(batch);
    SmallVector<linalg::GenericOp> generics(
        fn.getBody().front().getOps<linalg::GenericOp>());
    OpBuilder b(&getContext());
    for (linalg::GenericOp op : generics)
      (void)splitBatchReduction(op, batch, tiles, b);

  }
};
} // namespace
