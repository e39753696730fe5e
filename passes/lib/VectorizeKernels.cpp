//===- VectorizeKernels.cpp - moe-vectorize-kernels, moe-lower-vectors ----===//
//
// Register tiling and vectorization of the kernels' linalg ops, then the
// vector lowering that turns contractions into FMA chains.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/IR/LinalgInterfaces.h"
#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/SCF/Transforms/TileUsingInterface.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tensor/Transforms/Transforms.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Dialect/Vector/Transforms/LoweringPatterns.h"
#include "mlir/Dialect/Vector/Transforms/VectorRewritePatterns.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "mlir/Transforms/LoopInvariantCodeMotionUtils.h"

namespace moec {
#define GEN_PASS_DEF_VECTORIZEKERNELSPASS
#define GEN_PASS_DEF_LOWERVECTORSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {
/// Largest divisor of `n` that is <= `limit`; among the candidates for the
/// vector dimension, multiples of 16 (one AVX-512 register) win.
int64_t pickTile(int64_t n, int64_t limit, bool preferVectorMultiple) {
  if (preferVectorMultiple)
    for (int64_t t = std::min(n, limit); t >= 16; --t)
      if (n % t == 0 && t % 16 == 0)
        return t;
  for (int64_t t = std::min(n, limit); t >= 1; --t)
    if (n % t == 0)
      return t;
  return 1;
}

struct VectorizeKernelsPass
    : public moec::impl::VectorizeKernelsPassBase<VectorizeKernelsPass> {
  using Base::Base;

  void runOnOperation() override {
    MLIRContext *ctx = &getContext();
    IRRewriter rewriter(ctx);
    SmallVector<linalg::LinalgOp> ops;
    getOperation().walk([&](linalg::LinalgOp op) {
      if (op.hasPureTensorSemantics() && op->getParentOfType<func::FuncOp>() &&
          op->getParentOfType<func::FuncOp>()->hasAttr("moe.kernel"))
        ops.push_back(op);
    });

    SmallVector<scf::ForOp> reductionLoops;
    for (linalg::LinalgOp op : ops) {
      // Transposes (of attention keys) are small; vectorized they unroll
      // into element-wise shuffles. Loops are cheaper to compile and run.
      if (isa<linalg::TransposeOp>(op))
        continue;
      SmallVector<int64_t> ranges = op.getStaticLoopRanges();
      if (llvm::any_of(ranges, ShapedType::isDynamic))
        continue;
      SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
      bool contraction = linalg::isaContractionOpInterface(op) ||
                         isEinsumContraction(op);
      SmallVector<int64_t> parallel;
      for (auto [i, it] : llvm::enumerate(iters))
        if (it == utils::IteratorType::parallel)
          parallel.push_back(i);

      // Contractions get register tiles (rows x vector) and K steps of 1.
      // Everything else is vectorized along its innermost loop dimension
      // only, one row at a time: broadcasts of per-row values (softmax and
      // layer-norm statistics) then stay 1-D instead of becoming transposes.
      SmallVector<int64_t> tiles(ranges.size(), 0);
      bool innermostReduction =
          iters.back() == utils::IteratorType::reduction;
      for (auto [pos, dim] : llvm::enumerate(llvm::reverse(parallel))) {
        if (pos == 0 && (contraction || !innermostReduction))
          tiles[dim] = pickTile(ranges[dim], vectorWidth, true);
        else if (pos == 1 && contraction)
          tiles[dim] = pickTile(ranges[dim], rowTile, false);
        else
          tiles[dim] = 1;
      }
      bool tileReductions = contraction;
      for (auto [i, it] : llvm::enumerate(iters))
        if (it == utils::IteratorType::reduction && tileReductions)
          tiles[i] = 1;
      // Nothing to tile: vectorize as is.
      bool needsTiling = false;
      for (auto [t, r] : llvm::zip(tiles, ranges))
        needsTiling |= t != 0 && t != r;

      Operation *target = op;
      rewriter.setInsertionPoint(op);
      if (needsTiling) {
        scf::SCFTilingOptions options;
        SmallVector<OpFoldResult> sizes;
        for (int64_t t : tiles)
          sizes.push_back(rewriter.getIndexAttr(t));
        options.setTileSizes(sizes);
        FailureOr<scf::SCFTilingResult> tiled = scf::tileUsingSCF(
            rewriter, cast<TilingInterface>(op.getOperation()), options);
        if (failed(tiled))
          continue;
        rewriter.replaceOp(op, tiled->replacements);
        target = tiled->tiledOps.back();
        if (tileReductions && !tiled->loops.empty())
          if (auto inner = dyn_cast<scf::ForOp>(tiled->loops.back().getOperation()))
            reductionLoops.push_back(inner);
      }
      if (failed(linalg::vectorizeOpPrecondition(target)))
        continue;
      rewriter.setInsertionPoint(target);
      FailureOr<linalg::VectorizationResult> vectorized =
          linalg::vectorize(rewriter, target);
      if (failed(vectorized))
        continue;
      if (target->getNumResults())
        rewriter.replaceOp(target, vectorized->replacements);
      else
        rewriter.eraseOp(target);
    }

    // Clean up: transfers of extract_slice -> transfers of the source, and
    // reductions expressed as contractions.
    {
      RewritePatternSet patterns(ctx);
      vector::populateVectorReductionToContractPatterns(patterns);
      vector::populateVectorTransferPermutationMapLoweringPatterns(patterns);
      tensor::populateFoldTensorSubsetIntoVectorTransferPatterns(patterns);
      for (Dialect *d : ctx->getLoadedDialects())
        d->getCanonicalizationPatterns(patterns);
      for (RegisteredOperationName op : ctx->getRegisteredOperations())
        op.getCanonicalizationPatterns(patterns, ctx);
      if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
        return signalPassFailure();
    }
    // Keep the accumulators of every K loop in registers.
    getOperation().walk([&](scf::ForOp loop) {
      if (loop->getParentOfType<func::FuncOp>()->hasAttr("moe.kernel"))
        (void)hoistLoopInvariantSubsets(rewriter, loop);
    });
  }

  /// The dispatch/combine einsums: generic ops whose body is
  /// acc + a * b with reduction dimensions.
  static bool isEinsumContraction(linalg::LinalgOp op) {
    if (!isa<linalg::GenericOp>(op) || op.getNumReductionLoops() == 0 ||
        op.getNumDpsInputs() != 2)
      return false;
    Block &body = op->getRegion(0).front();
    if (body.getOperations().size() != 3)
      return false;
    auto mul = dyn_cast<arith::MulFOp>(&body.front());
    auto add = dyn_cast<arith::AddFOp>(mul ? mul->getNextNode() : nullptr);
    return mul && add;
  }
};

struct LowerVectorsPass
    : public moec::impl::LowerVectorsPassBase<LowerVectorsPass> {
  void runOnOperation() override {
    MLIRContext *ctx = &getContext();
    {
      RewritePatternSet patterns(ctx);
      vector::populateVectorContractLoweringPatterns(
          patterns, vector::VectorContractLowering::OuterProduct);
      vector::populateVectorOuterProductLoweringPatterns(patterns);
      vector::populateVectorTransferPermutationMapLoweringPatterns(patterns);
      vector::populateVectorMultiReductionLoweringPatterns(
          patterns, vector::VectorMultiReductionLowering::InnerReduction);
      vector::populateVectorBroadcastLoweringPatterns(patterns);
      vector::populateVectorTransposeLoweringPatterns(
          patterns, vector::VectorTransposeLowering::EltWise);
      vector::populateVectorShapeCastLoweringPatterns(patterns);
      vector::populateVectorTransferLoweringPatterns(patterns,
                                                     /*maxTransferRank=*/1);
      if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
        return signalPassFailure();
    }
  }
};
} // namespace
