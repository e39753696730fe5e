//===- VectorizeKernels.cpp - moe-vectorize-kernels, moe-lower-vectors ----===//
//
// Register tiling and vectorization of the kernels' linalg ops, then the
// vector lowering that turns contractions into FMA chains.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/IR/LinalgInterfaces.h"
#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/SCF/Transforms/TileUsingInterface.h"
#include "mlir/Dialect/SCF/Transforms/Transforms.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Tensor/Transforms/Transforms.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/Dialect/Vector/Transforms/LoweringPatterns.h"
#include "mlir/Dialect/Vector/Transforms/VectorRewritePatterns.h"
#include "mlir/Dialect/X86Vector/X86VectorDialect.h"
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
/// A contraction over bf16 pairs written by moe-bf16-contractions.
bool isBf16Pairs(Operation *op) {
  return op->hasAttr(moec::moe::MoEDialect::Bf16PairsAttrHelper::getNameStr());
}

/// Largest divisor of `n` that is <= `limit`; with `lanes` > 1 (the vector
/// dimension), multiples of `lanes` (one register) win.
int64_t pickTile(int64_t n, int64_t limit, int64_t lanes = 1) {
  if (lanes > 1)
    for (int64_t t = std::min(n, limit); t >= lanes; --t)
      if (n % t == 0 && t % lanes == 0)
        return t;
  for (int64_t t = std::min(n, limit); t >= 1; --t)
    if (n % t == 0)
      return t;
  return 1;
}

/// The vector tile of a dimension of `n` elements, at most `limit` lanes
/// (at least one register), `lanes` floats a register. Tiles are a power of
/// two of whole registers: LLVM splits a loop-carried vector such as
/// <48 x float> (three AVX-512 registers) into 128-bit pieces reassembled
/// with inserts and spills on every iteration, and a tile such as 50
/// lanes legalizes into a ragged tail handled element by element. The
/// remainder that a tile leaves is peeled, so it must be a tile of the same
/// kind (a power of two of registers) or less than a register (attention's
/// 50 keys on AVX-512: 16 + 16 + 16 + 2, not 32 + 18; on AVX2 16 + 16 + 16
/// + 2, each broadcast element of A feeding two registers).
int64_t pickVectorTile(int64_t n, int64_t limit, int64_t lanes) {
  if (n <= lanes)
    return n;
  auto wholeRegisters = [&](int64_t t) {
    return t % lanes == 0 && llvm::isPowerOf2_64(t / lanes);
  };
  int64_t best = lanes;
  for (int64_t t = lanes; t <= std::min(limit, n); t *= 2) {
    int64_t rest = n % t;
    if (rest == 0 || rest < lanes || wholeRegisters(rest))
      best = t;
  }
  return best;
}

/// Whether the body of `op` calls a math-dialect function (exp, erf, log,
/// tanh, ...): each expands into a polynomial with many live temporaries.
bool hasTranscendental(linalg::LinalgOp op) {
  return op
      ->walk([](Operation *inner) {
        return isa_and_nonnull<math::MathDialect>(inner->getDialect())
                   ? WalkResult::interrupt()
                   : WalkResult::advance();
      })
      .wasInterrupted();
}

struct VectorizeKernelsPass
    : public moec::impl::VectorizeKernelsPassBase<VectorizeKernelsPass> {
  using Base::Base;

  /// Floats per vector register.
  int64_t lanes() const { return registerBits / 32; }
  /// Registers a contraction's register tile may keep accumulators in: three
  /// quarters of the register file, the rest holds the loaded row of B and
  /// the broadcast elements of A (24 of AVX-512's 32, 12 of AVX2's 16).
  int64_t accumulatorBudget() const { return vectorRegisters * 3 / 4; }

  /// Tile sizes for `op` (0 = not tiled), the loop dimension that becomes
  /// the vector dimension and a contraction's row dimension (-1 if none).
  struct Tiles {
    SmallVector<int64_t> sizes;
    int64_t vectorDim = -1, rowDim = -1;
  };
  Tiles chooseTiles(linalg::LinalgOp op) {
    SmallVector<int64_t> ranges = op.getStaticLoopRanges();
    SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
    bool contraction =
        isContraction(op);
    SmallVector<int64_t> parallel;
    for (auto [i, it] : llvm::enumerate(iters))
      if (it == utils::IteratorType::parallel)
        parallel.push_back(i);
    SmallVector<int64_t> tiles(ranges.size(), 0);
    int64_t vectorDim = -1, rowDim = -1;

    // Transposes (attention keys): one output row segment at a time,
    // gathered element by element from the input column and stored
    // contiguously. (Register transposes of odd-sized blocks become element
    // shuffles through the stack, and as plain loops LLVM turns them into
    // scatters: both are far slower.)
    if (isa<linalg::TransposeOp>(op)) {
      for (auto [pos, dim] : llvm::enumerate(llvm::reverse(parallel)))
        tiles[dim] = pos == 0 ? pickTile(ranges[dim], 16) : 1;
      return {tiles};
    }

    bool innermostReduction = iters.back() == utils::IteratorType::reduction;
    int64_t lanes = this->lanes();
    int64_t budget = accumulatorBudget();
    // A contraction's row of accumulators spans at most a sixth of the
    // budget, so that the tile has about six rows to reuse each loaded row
    // of B over (4 registers on AVX-512, 2 on AVX2).
    int64_t widthLimit = contraction
                             ? std::min<int64_t>(
                                   vectorWidth,
                                   std::max<int64_t>(1, budget / 6) * lanes)
                             : vectorWidth;
    // Elementwise bodies with transcendental functions (GELU's erf and its
    // derivative's exp, softmax's exp) keep a dozen temporaries and
    // constants live per vector: at 64 lanes (8 AVX2 registers per value)
    // they spill on every step (measured on Zen 3: the GELU + GELU' kernels
    // ~20 % faster at two registers per value). Two registers per value fit
    // a file of 32 (AVX-512); a file of 16 (AVX2) still spilled in
    // softmax's exp at two, so it gets one.
    if (!contraction && hasTranscendental(op))
      widthLimit = std::min<int64_t>(widthLimit,
                                     (vectorRegisters >= 32 ? 2 : 1) * lanes);
    int64_t vectorTile = 1;
    for (auto [pos, dim] : llvm::enumerate(llvm::reverse(parallel))) {
      if (pos == 0 && (contraction || !innermostReduction)) {
        vectorDim = dim;
        int64_t n = ranges[dim];
        vectorTile = pickVectorTile(n, widthLimit, lanes);
        tiles[dim] = vectorTile;
      } else if (pos == 1 && contraction) {
        // Rows x registers-per-row accumulators within the budget, up to
        // `rowTile` rows, or twice as many when a row fits in one register
        // (narrow outputs such as a head).
        int64_t regsPerRow = (vectorTile + lanes - 1) / lanes;
        int64_t rows = std::max<int64_t>(
            1, std::min<int64_t>(budget / regsPerRow,
                                 regsPerRow == 1 ? 2 * rowTile : rowTile));
        // The largest divisor, unless it leaves over a quarter of the
        // budget idle (32 or 64 rows at up to 6 a tile on AVX2: 4 rows, 8 of
        // 12 accumulators) and there are at least four full tiles: then
        // full tiles and a peeled remainder of rows (at most a fifth).
        int64_t divisor = pickTile(ranges[dim], rows);
        tiles[dim] =
            ranges[dim] >= 4 * rows && 4 * divisor < 3 * rows ? rows : divisor;
        rowDim = dim;
      } else {
        tiles[dim] = 1;
      }
    }
    // Tiles of a dimension that an operand reads through mod/floordiv would
    // be indexed wrongly (tiling assumes maps are linear), and a vector over
    // it is not contiguous: such dimensions go one element at a time.
    for (AffineMap m : op.getIndexingMapsArray())
      for (AffineExpr e : m.getResults())
        e.walk([&](AffineExpr sub) {
          auto bin = dyn_cast<AffineBinaryOpExpr>(sub);
          if (!bin || (sub.getKind() != AffineExprKind::Mod &&
                       sub.getKind() != AffineExprKind::FloorDiv &&
                       sub.getKind() != AffineExprKind::CeilDiv))
            return;
          for (unsigned d = 0; d < ranges.size(); ++d)
            if (bin.getLHS().isFunctionOfDim(d)) {
              tiles[d] = 1;
              if (vectorDim == static_cast<int64_t>(d))
                vectorDim = -1;
              if (rowDim == static_cast<int64_t>(d))
                rowDim = -1;
            }
        });
    // Contractions step every reduction dimension by 1 (outer products);
    // a bf16-pair contraction's pair dimension (its last) stays whole.
    // Other ops keep only the innermost loop dimension whole when it is a
    // reduction: a second reduction dimension (e.g. counting an expert's
    // filled slots over tokens x slots) would otherwise make one vector of
    // their product (tens of thousands of lanes for ViT-B shapes).
    int64_t last = static_cast<int64_t>(iters.size()) - 1;
    for (auto [i, it] : llvm::enumerate(iters))
      if (it == utils::IteratorType::reduction &&
          (contraction || static_cast<int64_t>(i) != last))
        tiles[i] = 1;
    if (isBf16Pairs(op))
      tiles[last] = 0;
    return {tiles, vectorDim, rowDim};
  }

  /// Peels the loops of the vector and row dimensions whose tiles do not
  /// divide their ranges, the inner one first (the outer one's partial
  /// iteration then holds both copies of the inner one). `loops` are the
  /// tiling's loops, one per dimension `d` with `tiled(d)`, in dimension
  /// order. Returns the partial loops that are outside every other loop.
  SmallVector<Operation *>
  peelRemainders(RewriterBase &rewriter, ArrayRef<LoopLikeOpInterface> loops,
                 const Tiles &t, ArrayRef<int64_t> ranges,
                 llvm::function_ref<bool(int64_t)> tiled) {
    SmallVector<std::pair<int64_t, int64_t>> peel; // (loop index, dim)
    for (int64_t dim : {t.vectorDim, t.rowDim}) {
      if (dim < 0 || ranges[dim] % t.sizes[dim] == 0)
        continue;
      int64_t index = 0;
      for (int64_t d = 0; d < dim; ++d)
        index += tiled(d);
      if (index < static_cast<int64_t>(loops.size()))
        peel.push_back({index, dim});
    }
    llvm::sort(peel, [](auto a, auto b) { return a.first > b.first; });
    SmallVector<Operation *> outermost;
    for (auto [index, dim] : peel) {
      LoopLikeOpInterface loopLike = loops[index];
      auto loop = dyn_cast<scf::ForOp>(loopLike.getOperation());
      scf::ForOp partial;
      // The partial loop is the peeled loop's sibling: outside every other
      // loop only when the peeled loop is the outermost.
      if (loop &&
          succeeded(
              scf::peelForLoopAndSimplifyBounds(rewriter, loop, partial)) &&
          index == 0)
        outermost.push_back(partial.getOperation());
    }
    return outermost;
  }

  /// The cleanup pattern sets, built once (the pass runs on every kernel).
  std::shared_ptr<const FrozenRewritePatternSet> cleanup, vectorCleanup;

  LogicalResult initialize(MLIRContext *ctx) override {
    if (registerBits < 32 || registerBits % 32 != 0 || vectorRegisters < 4)
      return emitError(UnknownLoc::get(ctx))
             << "moe-vectorize-kernels: register-bits must be a multiple of "
                "32 and vector-registers at least 4, got "
             << static_cast<int64_t>(registerBits) << " and "
             << static_cast<int64_t>(vectorRegisters);
    if (l1Bytes < 1024)
      return emitError(UnknownLoc::get(ctx))
             << "moe-vectorize-kernels: l1-bytes must be at least 1024, got "
             << static_cast<int64_t>(l1Bytes);
    for (bool vectorPatterns : {false, true}) {
      RewritePatternSet patterns(ctx);
      if (vectorPatterns) {
        vector::populateVectorReductionToContractPatterns(patterns);
        vector::populateVectorTransferPermutationMapLoweringPatterns(patterns);
        tensor::populateFoldTensorSubsetIntoVectorTransferPatterns(patterns);
      }
      for (Dialect *d : ctx->getLoadedDialects())
        d->getCanonicalizationPatterns(patterns);
      for (RegisteredOperationName op : ctx->getRegisteredOperations())
        op.getCanonicalizationPatterns(patterns, ctx);
      (vectorPatterns ? vectorCleanup : cleanup) =
          std::make_shared<FrozenRewritePatternSet>(std::move(patterns));
    }
    return success();
  }

  void runOnOperation() override {
    if (!getOperation()->hasAttr(
            moec::moe::MoEDialect::KernelAttrHelper::getNameStr()))
      return;
    MLIRContext *ctx = &getContext();
    IRRewriter rewriter(ctx);
    SmallVector<linalg::LinalgOp> ops;
    getOperation().walk([&](linalg::LinalgOp op) {
      if (op.hasPureTensorSemantics())
        ops.push_back(op);
    });

    // 0. A contraction over several consecutive reduction dimensions that
    // every operand reads contiguously (a weight gradient's images x tokens)
    // becomes one over their product: the tiled op then lowers to outer
    // products (FMAs) instead of the generic contraction unrolling.
    for (linalg::LinalgOp &op : ops)
      if (FailureOr<linalg::LinalgOp> collapsed =
              collapseReductionRuns(rewriter, op);
          succeeded(collapsed))
        op = *collapsed;

    // 1. Contractions with a short reduction whose accumulators start as a
    // fill or a broadcast: tiles that compute their own init.
    DenseSet<Operation *> done;
    for (linalg::LinalgOp op : ops) {
      if (hasLongReduction(op))
        continue;
      FailureOr<bool> handled = tileWithAccumulatorInit(rewriter, op, done);
      if (failed(handled))
        return signalPassFailure();
      if (*handled)
        done.insert(op.getOperation());
    }

    // 2. Tile every other op; peel vector loops whose tile does not divide.
    for (linalg::LinalgOp op : ops) {
      if (done.contains(op.getOperation()))
        continue;
      if (FailureOr<linalg::LinalgOp> inner = blockReduction(rewriter, op);
          succeeded(inner))
        op = *inner;
      SmallVector<int64_t> ranges = op.getStaticLoopRanges();
      if (llvm::any_of(ranges, ShapedType::isDynamic))
        continue;
      Tiles chosen = chooseTiles(op);
      ArrayRef<int64_t> tiles = chosen.sizes;
      bool needsTiling = false;
      for (auto [t, r] : llvm::zip(tiles, ranges))
        needsTiling |= t != 0 && t != r;
      if (!needsTiling)
        continue;
      rewriter.setInsertionPoint(op);
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
      // Loops are created for tiled dimensions in order.
      (void)peelRemainders(rewriter, tiled->loops, chosen, ranges,
                           [&](int64_t d) { return tiles[d] != 0; });
    }

    // 3. Fold the peeled tiles' sizes to constants (static tile types).
    if (failed(applyCleanupPatterns(/*vectorPatterns=*/false)))
      return signalPassFailure();

    // 4. Vectorize every static linalg op of the kernels.
    SmallVector<linalg::LinalgOp> tiles;
    getOperation().walk([&](linalg::LinalgOp op) {
      if (op.hasPureTensorSemantics())
        tiles.push_back(op);
    });
    for (linalg::LinalgOp op : tiles) {
      // Ops with data-dependent tensor.extract (the one-hot gathers of
      // dispatch/combine) stay scalar loops: with vectorizeNDExtract the
      // vectorizer miscompiled them (caught by test/e2e/check_reference.py).
      if (failed(linalg::vectorizeOpPrecondition(op)))
        continue;
      rewriter.setInsertionPoint(op);
      FailureOr<linalg::VectorizationResult> vectorized =
          linalg::vectorize(rewriter, op);
      if (failed(vectorized))
        continue;
      if (op->getNumResults())
        rewriter.replaceOp(op, vectorized->replacements);
      else
        rewriter.eraseOp(op);
    }

    // 5. Transfers of extract_slice -> transfers of the source, reductions
    // as contractions; then keep every K loop's accumulators in registers.
    if (failed(applyCleanupPatterns(/*vectorPatterns=*/true)))
      return signalPassFailure();
    getOperation().walk([&](scf::ForOp loop) {
      (void)hoistLoopInvariantSubsets(rewriter, loop);
    });
    // bf16-pair contractions: their operands' extensions to f32 move above
    // the broadcasts and transposes of the reads, which then fold into the
    // contraction (contract(extf(A), extf(B)), as moe-lower-vectors wants).
    SmallVector<Operation *> bf16Extensions;
    getOperation().walk([&](arith::ExtFOp ext) {
      if (getElementTypeOrSelf(ext.getIn().getType()).isBF16())
        bf16Extensions.push_back(ext);
    });
    if (!bf16Extensions.empty()) {
      RewritePatternSet sink(&getContext());
      vector::populateSinkVectorOpsPatterns(sink);
      if (failed(applyOpPatternsGreedily(bf16Extensions, std::move(sink))))
        return signalPassFailure();
    }
    // 6. Accumulators that tiles initialize themselves: the hoisted read of
    // the tile's init folds into the written vector (zeros, the bias row),
    // and the init's write into the overwritten tile goes away.
    if (failed(applyCleanupPatterns(/*vectorPatterns=*/true)))
      return signalPassFailure();
  }

  /// The op that initializes the accumulators of contraction `op` when it
  /// can be computed per register tile: a fill (zeros) or a broadcast (a
  /// bias), used by nothing else.
  static Operation *accumulatorInit(linalg::LinalgOp op) {
    if (op.getNumDpsInits() != 1)
      return nullptr;
    Operation *init = op.getDpsInitOperand(0)->get().getDefiningOp();
    if (!init || !init->hasOneUse())
      return nullptr;
    if (isa<linalg::FillOp, linalg::BroadcastOp>(init))
      return init;
    // A broadcast written as a generic: parallel loops, one input, the body
    // yields the input element.
    auto generic = dyn_cast<linalg::GenericOp>(init);
    if (!generic || generic.getNumReductionLoops() != 0 ||
        generic.getNumDpsInputs() != 1 || generic.getNumDpsInits() != 1)
      return nullptr;
    auto yield = cast<linalg::YieldOp>(generic.getBody()->getTerminator());
    if (yield.getNumOperands() != 1 ||
        yield.getOperand(0) != generic.getBody()->getArgument(0))
      return nullptr;
    return init;
  }

  /// Tiles a contraction whose accumulators are initialized by a fill or a
  /// broadcast (accumulatorInit) over its parallel dimensions first and
  /// computes the init per tile, then steps the reduction of each tile by
  /// 1. The vectorized tile then writes the zeros (or the bias row) and
  /// reads them back, which folds: the accumulators start in registers
  /// instead of being set in memory by a separate pass over the whole output
  /// and loaded again by every tile. Marks the ops it handled in `done`.
  /// Returns whether it handled `op`; fails on an error.
  FailureOr<bool> tileWithAccumulatorInit(RewriterBase &rewriter,
                                          linalg::LinalgOp op,
                                          DenseSet<Operation *> &done) {
    if (!isContraction(op))
      return false;
    Operation *init = accumulatorInit(op);
    SmallVector<int64_t> ranges = op.getStaticLoopRanges();
    if (!init || llvm::any_of(ranges, ShapedType::isDynamic))
      return false;
    Tiles chosen = chooseTiles(op);
    ArrayRef<int64_t> tiles = chosen.sizes;
    SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
    SmallVector<OpFoldResult> parallelSizes;
    for (auto [t, it] : llvm::zip(tiles, iters))
      parallelSizes.push_back(rewriter.getIndexAttr(
          it == utils::IteratorType::parallel ? t : 0));
    scf::SCFTileAndFuseOptions options;
    options.tilingOptions.setTileSizes(parallelSizes);
    options.setFusionControlFn(
        [init](tensor::ExtractSliceOp, OpResult producer, bool isDestination)
            -> std::optional<scf::SCFTileAndFuseOptions::ControlFnResult> {
          if (isDestination && producer.getOwner() == init)
            return scf::SCFTileAndFuseOptions::ControlFnResult{};
          return std::nullopt;
        });
    rewriter.setInsertionPoint(op);
    FailureOr<scf::SCFTileAndFuseResult> fused =
        scf::tileConsumerAndFuseProducersUsingSCF(
            rewriter, cast<TilingInterface>(op.getOperation()), options);
    if (failed(fused))
      return false;
    if (!fused->fusedProducers.contains(init))
      return op->emitOpError("tiling fused no accumulator init"), failure();
    for (OpResult result : op->getResults())
      rewriter.replaceAllUsesWith(result, fused->replacements.lookup(result));
    done.insert(init);
    rewriter.eraseOp(op);
    if (init->use_empty())
      rewriter.eraseOp(init);
    // Peel the loops whose tiles do not divide.
    SmallVector<Operation *> nests;
    if (!fused->loops.empty())
      nests.push_back(fused->loops.front().getOperation());
    nests.append(
        peelRemainders(rewriter, fused->loops, chosen, ranges, [&](int64_t d) {
          return tiles[d] != 0 && iters[d] == utils::IteratorType::parallel;
        }));
    // Every op in the nests: the per-tile inits stay whole (vectorized as
    // one write), the contractions step their reduction by 1.
    SmallVector<linalg::LinalgOp> inner;
    for (Operation *nest : nests)
      nest->walk([&](linalg::LinalgOp tileOp) { inner.push_back(tileOp); });
    for (linalg::LinalgOp tileOp : inner) {
      if (tileOp.getNumReductionLoops() == 0)
        continue;
      SmallVector<OpFoldResult> sizes;
      for (utils::IteratorType it : tileOp.getIteratorTypesArray())
        sizes.push_back(rewriter.getIndexAttr(
            it == utils::IteratorType::reduction ? 1 : 0));
      if (isBf16Pairs(tileOp))
        sizes.back() = rewriter.getIndexAttr(0);
      scf::SCFTilingOptions reduce;
      reduce.setTileSizes(sizes);
      rewriter.setInsertionPoint(tileOp);
      FailureOr<scf::SCFTilingResult> stepped = scf::tileUsingSCF(
          rewriter, cast<TilingInterface>(tileOp.getOperation()), reduce);
      if (failed(stepped))
        return tileOp->emitOpError("could not step the reduction of a tile"),
               failure();
      rewriter.replaceOp(tileOp, stepped->replacements);
    }
    return true;
  }

  /// Contractions that blockReduction may block: one reduction of at least
  /// 256 steps (weight gradients), where initializing the accumulators in
  /// memory costs little next to the reduction.
  static bool hasLongReduction(linalg::LinalgOp op) {
    SmallVector<int64_t> ranges = op.getStaticLoopRanges();
    for (auto [r, it] : llvm::zip(ranges, op.getIteratorTypesArray()))
      if (it == utils::IteratorType::reduction &&
          (ShapedType::isDynamic(r) || r >= 256))
        return true;
    return false;
  }

  /// A contraction with one long reduction (a weight gradient summing over
  /// images x tokens into a small [M, N]) first gets a loop over blocks of
  /// that reduction, sized so that a block's rows of both operands (4 (M +
  /// N) bytes per step, M and N the two innermost parallel extents) fit in
  /// three quarters of the L1 data cache. Without it every register tile of
  /// the output streams its operands' whole reduction from L2, which bounds
  /// the FMAs at L2 bandwidth; with it the register tiles of one block reuse
  /// each other's loads in L1, at the cost of one accumulator load/store per
  /// tile and block. Returns the op inside the block loop.
  FailureOr<linalg::LinalgOp> blockReduction(RewriterBase &rewriter,
                                             linalg::LinalgOp op) {
    if (!isContraction(op) ||
        op.getNumReductionLoops() != 1)
      return failure();
    SmallVector<int64_t> ranges = op.getStaticLoopRanges();
    SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
    if (llvm::any_of(ranges, ShapedType::isDynamic))
      return failure();
    int64_t red = -1, rowBytes = 0, innerParallel = 0, widest = 0;
    for (int64_t d = static_cast<int64_t>(iters.size()) - 1; d >= 0; --d) {
      if (iters[d] == utils::IteratorType::reduction) {
        red = d;
      } else if (innerParallel < 2) {
        rowBytes += 4 * ranges[d];
        widest = std::max(widest, ranges[d]);
        ++innerParallel;
      }
    }
    // Only weight-gradient shapes: a reduction of at least 256 steps that
    // is longer than both output extents. Blocking the K = 64 / 128 of the
    // forward matmuls into short blocks made them slower (each block loads
    // and stores every accumulator tile again): the attention kernels ran
    // 6-10 % slower on a Zen 3.
    int64_t extent = ranges[red], budget = l1Bytes * 3 / 4;
    if (extent < 256 || extent <= widest || extent * rowBytes <= 2 * budget)
      return failure();
    int64_t block = pickTile(extent, budget / std::max<int64_t>(rowBytes, 1));
    if (block < 8)
      return failure();
    SmallVector<OpFoldResult> sizes(ranges.size(), rewriter.getIndexAttr(0));
    sizes[red] = rewriter.getIndexAttr(block);
    scf::SCFTilingOptions options;
    options.setTileSizes(sizes);
    rewriter.setInsertionPoint(op);
    FailureOr<scf::SCFTilingResult> tiled = scf::tileUsingSCF(
        rewriter, cast<TilingInterface>(op.getOperation()), options);
    if (failed(tiled) || tiled->tiledOps.size() != 1)
      return failure();
    rewriter.replaceOp(op, tiled->replacements);
    return cast<linalg::LinalgOp>(tiled->tiledOps.front());
  }

  static FailureOr<linalg::LinalgOp>
  collapseReductionRuns(RewriterBase &rewriter, linalg::LinalgOp op) {
    if (!isa<linalg::GenericOp>(op.getOperation()) ||
        op.getNumReductionLoops() < 2 || isBf16Pairs(op) ||
        !isContraction(op) ||
        llvm::any_of(op.getStaticLoopRanges(), ShapedType::isDynamic))
      return failure();
    SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
    SmallVector<AffineMap> maps = op.getIndexingMapsArray();
    if (!llvm::all_of(maps, [](AffineMap m) { return m.isProjectedPermutation(); }))
      return failure();
    SmallVector<ReassociationIndices> runs;
    for (int64_t d = 0, n = iters.size(); d < n;) {
      ReassociationIndices run;
      while (d + static_cast<int64_t>(run.size()) < n &&
             iters[d + run.size()] == utils::IteratorType::reduction)
        run.push_back(d + run.size());
      // The longest prefix of the run that every operand keeps in order.
      while (run.size() >= 2 && !linalg::areDimSequencesPreserved(maps, {run}))
        run.pop_back();
      if (run.size() >= 2) {
        d += run.size();
        runs.push_back(std::move(run));
      } else {
        ++d;
      }
    }
    if (runs.empty())
      return failure();
    rewriter.setInsertionPoint(op);
    FailureOr<linalg::CollapseResult> result =
        linalg::collapseOpIterationDims(op, runs, rewriter);
    if (failed(result))
      return failure();
    rewriter.replaceOp(op, result->results);
    return result->collapsedOp;
  }

  LogicalResult applyCleanupPatterns(bool vectorPatterns) {
    return applyPatternsGreedily(getOperation(),
                                 vectorPatterns ? *vectorCleanup : *cleanup);
  }

  /// Contractions that lower to outer products: linalg's (matmuls,
  /// vecmats) and the dispatch/combine einsums (generic ops whose body is
  /// acc + a * b with reduction dimensions), where an input lacks a loop
  /// dimension: it is reused along it, which the register tile's outer
  /// products exploit. A sum of an elementwise product, such as attention's
  /// rowsum(dO * O), reads both inputs at every point: it is a row
  /// reduction, vectorized along its contiguous reduction, not an outer
  /// product (which would read both inputs as strided columns, element by
  /// element).
  static bool isContraction(linalg::LinalgOp op) {
    if (op.getNumReductionLoops() == 0 || op.getNumDpsInputs() != 2)
      return false;
    if (llvm::all_of(op.getDpsInputOperands(), [&](OpOperand *in) {
          return op.getMatchingIndexingMap(in).getNumResults() >=
                 op.getNumLoops();
        }))
      return false;
    if (linalg::isaContractionOpInterface(op))
      return true;
    if (!isa<linalg::GenericOp>(op))
      return false;
    Block &body = op->getRegion(0).front();
    // acc + a * b, or acc + extf(a) * extf(b) (bf16 pairs).
    Operation *first = &body.front();
    if (isBf16Pairs(op) && body.getOperations().size() == 5 &&
        isa<arith::ExtFOp>(first) && isa<arith::ExtFOp>(first->getNextNode()))
      first = first->getNextNode()->getNextNode();
    else if (body.getOperations().size() != 3)
      return false;
    auto mul = dyn_cast<arith::MulFOp>(first);
    auto add = dyn_cast<arith::AddFOp>(mul ? mul->getNextNode() : nullptr);
    return mul && add;
  }
};

/// A bf16-pair contraction tile (moe-bf16-contractions, vectorized):
///   vector.contract(extf(A), extf(B), acc)
/// with A <[rows] x ... x 2 x bf16> (no column dimension), B <... x N x 2 x
/// bf16> (the columns, then the pair dimension), acc <[rows] x N x f32>;
/// every other dimension has one element. Each row's pair of A is
/// broadcast as one 32-bit value and each register's worth of columns
/// (16, 8 or 4 on AVX-512) takes one dot product of bf16 pairs
/// (x86vector.avx512.dot, vdpbf16ps); a tail of fewer than 4 columns, or
/// every column when `dot` is false, takes two f32 FMAs per pair on the
/// bf16 values.
struct LowerBf16PairContraction : OpRewritePattern<vector::ContractionOp> {
  LowerBf16PairContraction(MLIRContext *ctx, bool dot)
      : OpRewritePattern(ctx, /*benefit=*/2), dot(dot) {}
  bool dot;

  /// The extension from bf16 that `v` is, possibly through a shape cast
  /// (the flattened read of B); null if none.
  static arith::ExtFOp bf16Extension(Value v) {
    if (auto cast = v.getDefiningOp<vector::ShapeCastOp>())
      v = cast.getSource();
    auto ext = v.getDefiningOp<arith::ExtFOp>();
    if (!ext || !getElementTypeOrSelf(ext.getIn().getType()).isBF16())
      return nullptr;
    return ext;
  }

  /// The bf16 values that `v` extends, in `v`'s shape.
  static Value bf16Source(PatternRewriter &rewriter, Value v) {
    Value in = bf16Extension(v).getIn();
    auto type = cast<VectorType>(v.getType()).clone(rewriter.getBF16Type());
    if (in.getType() == type)
      return in;
    return vector::ShapeCastOp::create(rewriter, v.getLoc(), type, in);
  }

  LogicalResult matchAndRewrite(vector::ContractionOp op,
                                PatternRewriter &rewriter) const override {
    auto accType = dyn_cast<VectorType>(op.getAccType());
    if (!accType || !accType.getElementType().isF32() ||
        op.getKind() != vector::CombiningKind::ADD ||
        !bf16Extension(op.getLhs()) || !bf16Extension(op.getRhs()))
      return failure();
    SmallVector<AffineMap> maps = op.getIndexingMapsArray();
    AffineMap aMap = maps[0], bMap = maps[1], accMap = maps[2];
    SmallVector<int64_t> sizes(aMap.getNumDims(), 1);
    auto record = [&](AffineMap m, ArrayRef<int64_t> shape) {
      for (auto [e, n] : llvm::zip(m.getResults(), shape))
        sizes[cast<AffineDimExpr>(e).getPosition()] = n;
    };
    record(aMap, op.getLhsType().getShape());
    record(bMap, op.getRhsType().getShape());
    record(accMap, accType.getShape());
    auto dimAt = [](AffineMap m, int64_t fromEnd) -> int64_t {
      if (static_cast<int64_t>(m.getNumResults()) < fromEnd)
        return -1;
      return cast<AffineDimExpr>(m.getResult(m.getNumResults() - fromEnd))
          .getPosition();
    };
    int64_t pair = dimAt(aMap, 1), column = dimAt(accMap, 1);
    if (pair < 0 || column < 0 || dimAt(bMap, 1) != pair ||
        dimAt(bMap, 2) != column || sizes[pair] != 2 ||
        aMap.getResultPosition(getAffineDimExpr(column, op.getContext())))
      return failure();
    // At most one more dimension with several elements: the rows, in A and
    // the accumulators before the columns.
    int64_t rowDim = -1;
    for (auto [d, n] : llvm::enumerate(sizes)) {
      if (n == 1 || static_cast<int64_t>(d) == pair ||
          static_cast<int64_t>(d) == column)
        continue;
      if (rowDim >= 0 || dimAt(accMap, 2) != static_cast<int64_t>(d) ||
          bMap.getResultPosition(getAffineDimExpr(d, op.getContext())))
        return failure();
      rowDim = d;
    }
    int64_t rows = rowDim >= 0 ? sizes[rowDim] : 1, columns = sizes[column];

    Location loc = op.getLoc();
    Value a = bf16Source(rewriter, op.getLhs()),
          b = bf16Source(rewriter, op.getRhs());
    Type f32 = rewriter.getF32Type(), bf16 = rewriter.getBF16Type(),
         i32 = rewriter.getI32Type();
    // B as one row of 2N bf16 (a no-op when B was read as one).
    Value bRow = vector::ShapeCastOp::create(
        rewriter, loc, VectorType::get({2 * columns}, bf16), b);
    // The accumulators as [rows][N].
    auto accRowsType = VectorType::get({rows, columns}, f32);
    Value acc = vector::ShapeCastOp::create(rewriter, loc, accRowsType,
                                            op.getAcc());
    // A's pair of row r: A's positions are 0 except the row.
    auto aPair = [&](int64_t r) {
      SmallVector<int64_t> at;
      for (AffineExpr e : aMap.getResults().drop_back())
        at.push_back(cast<AffineDimExpr>(e).getPosition() == rowDim ? r : 0);
      return vector::ExtractOp::create(rewriter, loc, a, at).getResult();
    };
    SmallVector<std::pair<int64_t, int64_t>> pieces; // (first column, width)
    int64_t first = 0;
    if (dot)
      for (int64_t width : {16, 8, 4})
        for (; first + width <= columns; first += width)
          pieces.push_back({first, width});
    if (first < columns)
      pieces.push_back({first, -(columns - first)}); // f32 FMAs
    Value result = acc;
    for (int64_t r = 0; r < rows; ++r) {
      Value pairOfA = aPair(r); // <2 x bf16>
      Value accRow = vector::ExtractOp::create(rewriter, loc, result, r);
      for (auto [start, signedWidth] : pieces) {
        int64_t width = std::abs(signedWidth);
        Value accPiece = vector::ExtractStridedSliceOp::create(
            rewriter, loc, accRow, start, width, 1);
        Value bPiece = vector::ExtractStridedSliceOp::create(
            rewriter, loc, bRow, 2 * start, 2 * width, 1);
        Value sum;
        if (signedWidth > 0) {
          Value packed = vector::BitCastOp::create(
              rewriter, loc, VectorType::get({1}, i32), pairOfA);
          Value scalar = vector::ExtractOp::create(rewriter, loc, packed, 0);
          Value splat = vector::BroadcastOp::create(
              rewriter, loc, VectorType::get({width}, i32), scalar);
          Value aPiece = vector::BitCastOp::create(
              rewriter, loc, VectorType::get({2 * width}, bf16), splat);
          sum = x86vector::DotBF16Op::create(rewriter, loc, accPiece.getType(),
                                             accPiece, aPiece, bPiece);
        } else {
          Value bWide = arith::ExtFOp::create(
              rewriter, loc, VectorType::get({2 * width}, f32), bPiece);
          sum = accPiece;
          for (int64_t q = 0; q < 2; ++q) {
            SmallVector<int64_t> lanes;
            for (int64_t j = 0; j < width; ++j)
              lanes.push_back(2 * j + q);
            Value bLane =
                vector::ShuffleOp::create(rewriter, loc, bWide, bWide, lanes);
            Value aHalf = vector::ExtractOp::create(rewriter, loc, pairOfA, q);
            Value aScalar = arith::ExtFOp::create(rewriter, loc, f32, aHalf);
            Value aSplat = vector::BroadcastOp::create(
                rewriter, loc, VectorType::get({width}, f32), aScalar);
            sum = vector::FMAOp::create(rewriter, loc, aSplat, bLane, sum);
          }
        }
        accRow = vector::InsertStridedSliceOp::create(rewriter, loc, sum,
                                                      accRow, start, 1);
      }
      result = vector::InsertOp::create(rewriter, loc, accRow, result, r);
    }
    rewriter.replaceOpWithNewOp<vector::ShapeCastOp>(op, accType, result);
    return success();
  }
};

struct LowerVectorsPass
    : public moec::impl::LowerVectorsPassBase<LowerVectorsPass> {
  using Base::Base;

  void runOnOperation() override {
    MLIRContext *ctx = &getContext();
    // bf16 transfers (the pair operands of bf16 contractions, the packs)
    // over contiguous memory become 1-D: B's tile of N pairs is one load.
    {
      SmallVector<Operation *> bf16Transfers;
      getOperation()->walk([&](VectorTransferOpInterface transfer) {
        if (transfer.getVectorType().getElementType().isBF16())
          bf16Transfers.push_back(transfer);
      });
      RewritePatternSet patterns(ctx);
      vector::populateFlattenVectorTransferPatterns(patterns);
      if (!bf16Transfers.empty() &&
          failed(applyOpPatternsGreedily(bf16Transfers, std::move(patterns))))
        return signalPassFailure();
    }
    {
      RewritePatternSet patterns(ctx);
      patterns.add<LowerBf16PairContraction>(ctx, bf16Dot);
      if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
        return signalPassFailure();
    }
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
      vector::populateScalarVectorTransferLoweringPatterns(
          patterns, /*benefit=*/2, /*allowMultipleUses=*/true);
      if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
        return signalPassFailure();
    }
  }
};
} // namespace
