//===- Bf16Contractions.cpp - moe-bf16-contractions -----------------------===//
//
// Rewrites the kernels' f32 matmul-like contractions into contractions of
// bf16 pairs (the VNNI layout) accumulated in f32: --precision=bf16.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/Passes.h"
#include "Ops/KernelSupport.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Interfaces/LoopLikeInterface.h"

namespace moec {
#define GEN_PASS_DEF_BF16CONTRACTIONSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {
/// A contraction over bf16 pairs written by moe-bf16-contractions.
bool isBf16Pairs(Operation *op) {
  return op->hasAttr(moec::moe::MoEDialect::Bf16PairsAttrHelper::getNameStr());
}

/// The dimension of `map`'s results that is loop dimension `dim`, or -1.
int64_t resultOf(AffineMap map, int64_t dim) {
  for (auto [i, e] : llvm::enumerate(map.getResults()))
    if (auto d = dyn_cast<AffineDimExpr>(e);
        d && static_cast<int64_t>(d.getPosition()) == dim)
      return i;
  return -1;
}

/// The contraction's parts, when `op` qualifies (see the pass description).
struct Candidate {
  linalg::LinalgOp op;
  int64_t reduction = -1, vector = -1;
  OpOperand *a = nullptr, *b = nullptr;
};


FailureOr<Candidate> match(linalg::LinalgOp op, int64_t minReduction,
                           int64_t minWidth) {
  if (!op.hasPureTensorSemantics() || op.getNumDpsInputs() != 2 ||
      op.getNumDpsInits() != 1 || isBf16Pairs(op) ||
      op->hasAttr(moec::moe::MoEDialect::Fp32AttrHelper::getNameStr()) ||
      !moec::kernels::isMulAddBody(op))
    return failure();
  for (OpOperand &operand : op->getOpOperands()) {
    auto type = dyn_cast<RankedTensorType>(operand.get().getType());
    if (!type || !type.hasStaticShape() || !type.getElementType().isF32() ||
        !op.getMatchingIndexingMap(&operand).isProjectedPermutation())
      return failure();
  }
  Candidate c{op};
  SmallVector<int64_t> ranges = op.getStaticLoopRanges();
  for (auto [i, it] : llvm::enumerate(op.getIteratorTypesArray())) {
    if (it != utils::IteratorType::reduction)
      continue;
    if (c.reduction >= 0)
      return failure();
    c.reduction = i;
  }
  AffineMap out = op.getMatchingIndexingMap(op.getDpsInitOperand(0));
  if (c.reduction < 0 || out.getNumResults() == 0)
    return failure();
  c.vector = cast<AffineDimExpr>(out.getResults().back()).getPosition();
  int64_t k = ranges[c.reduction];
  if (k % 2 != 0 || k < minReduction || ranges[c.vector] < minWidth)
    return failure();
  for (OpOperand *in : op.getDpsInputOperands()) {
    AffineMap m = op.getMatchingIndexingMap(in);
    bool hasVector = resultOf(m, c.vector) >= 0;
    if (resultOf(m, c.reduction) < 0)
      return failure();
    (hasVector ? c.b : c.a) = in;
  }
  if (!c.a || !c.b)
    return failure();
  AffineMap aMap = op.getMatchingIndexingMap(c.a),
            bMap = op.getMatchingIndexingMap(c.b);
  if (resultOf(aMap, c.reduction) !=
          static_cast<int64_t>(aMap.getNumResults()) - 1 ||
      resultOf(bMap, c.vector) !=
          static_cast<int64_t>(bMap.getNumResults()) - 1)
    return failure();
  return c;
}

/// `value` with its innermost dimension (of even extent) split into
/// [extent/2, 2].
Value splitIntoPairs(OpBuilder &b, Location loc, Value value, int64_t dim) {
  auto type = cast<RankedTensorType>(value.getType());
  SmallVector<int64_t> shape;
  SmallVector<ReassociationIndices> groups;
  for (auto [i, extent] : llvm::enumerate(type.getShape())) {
    ReassociationIndices group{static_cast<int64_t>(shape.size())};
    if (static_cast<int64_t>(i) == dim) {
      shape.append({extent / 2, 2});
      group.push_back(group.front() + 1);
    } else {
      shape.push_back(extent);
    }
    groups.push_back(group);
  }
  return tensor::ExpandShapeOp::create(
      b, loc, RankedTensorType::get(shape, type.getElementType()), value,
      groups);
}

/// A generic that writes `input` (read through `inputMap` over `shape`'s
/// loops) rounded to bf16 into a new tensor of `shape`.
Value roundToBf16(OpBuilder &b, Location loc, Value input, AffineMap inputMap,
                  ArrayRef<int64_t> shape) {
  Type bf16 = b.getBF16Type();
  Value init = tensor::EmptyOp::create(b, loc, shape, bf16);
  AffineMap id = b.getMultiDimIdentityMap(shape.size());
  SmallVector<utils::IteratorType> iters(shape.size(),
                                         utils::IteratorType::parallel);
  auto generic = linalg::GenericOp::create(
      b, loc, init.getType(), ValueRange{input}, ValueRange{init},
      ArrayRef<AffineMap>{inputMap, id}, iters,
      [&](OpBuilder &nb, Location nl, ValueRange args) {
        Value r = arith::TruncFOp::create(nb, nl, bf16, args[0]);
        linalg::YieldOp::create(nb, nl, r);
      });
  return generic.getResult(0);
}

/// B (read through `bMap`, its innermost dimension the output's columns N,
/// `reduction` among its dimensions) rounded to bf16 and packed as
/// [B's other dims..., K/2, N, 2]: for every pair of reduction steps, the
/// two rows of N interleaved. Written as loops of vector code (two rows
/// read, one shuffle, one rounding, one contiguous write per 16 columns):
/// as a linalg op the pair dimension would be the innermost, vectorized two
/// lanes wide.
Value packPairs(OpBuilder &b, Location loc, Value input, AffineMap bMap,
                int64_t reduction) {
  auto type = cast<RankedTensorType>(input.getType());
  int64_t rank = type.getRank();
  int64_t red = resultOf(bMap, reduction);
  int64_t columns = type.getShape().back();
  // The loops: B's other dims in order, then the pairs of the reduction.
  SmallVector<int64_t> outer;
  for (int64_t i = 0; i < rank - 1; ++i)
    if (i != red)
      outer.push_back(i);
  SmallVector<int64_t> flatShape;
  for (int64_t i : outer)
    flatShape.push_back(type.getDimSize(i));
  flatShape.push_back(type.getDimSize(red) / 2);
  flatShape.push_back(2 * columns);
  Type bf16 = b.getBF16Type();
  Value flat = tensor::EmptyOp::create(b, loc, flatShape, bf16);

  auto index = [&](OpBuilder &nb, int64_t v) -> Value {
    return arith::ConstantIndexOp::create(nb, loc, v);
  };
  // One nest per column width: full chunks of 16, then the rest.
  constexpr int64_t kChunk = 16;
  int64_t full = columns / kChunk * kChunk;
  SmallVector<std::pair<int64_t, int64_t>> parts; // (first column, width)
  if (full > 0)
    parts.push_back({0, kChunk});
  if (columns > full)
    parts.push_back({full, columns - full});
  for (auto part : parts) {
    int64_t first = part.first, width = part.second;
    SmallVector<Value> lbs, ubs, steps;
    for (int64_t extent : ArrayRef<int64_t>(flatShape).drop_back()) {
      lbs.push_back(index(b, 0));
      ubs.push_back(index(b, extent));
      steps.push_back(index(b, 1));
    }
    bool chunked = width == kChunk;
    lbs.push_back(index(b, first));
    ubs.push_back(index(b, chunked ? full : first + 1));
    steps.push_back(index(b, chunked ? kChunk : 1));
    scf::LoopNest nest = scf::buildLoopNest(
        b, loc, lbs, ubs, steps, ValueRange{flat},
        [&](OpBuilder &nb, Location nl, ValueRange ivs,
            ValueRange args) -> scf::ValueVector {
          Value column = ivs.back(), pair = ivs[ivs.size() - 2];
          Value two = index(nb, 2);
          Value row = arith::MulIOp::create(nb, nl, pair, two);
          auto f32Vector = VectorType::get({width}, nb.getF32Type());
          Value pad = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0));
          SmallVector<Value> rows;
          for (int64_t q = 0; q < 2; ++q) {
            SmallVector<Value> at(rank);
            for (auto [loop, dim] : llvm::enumerate(outer))
              at[dim] = ivs[loop];
            at[red] = q == 0 ? row
                             : arith::AddIOp::create(nb, nl, row, index(nb, 1))
                                   .getResult();
            at[rank - 1] = column;
            rows.push_back(vector::TransferReadOp::create(
                nb, nl, f32Vector, input, at, pad, ArrayRef<bool>{true}));
          }
          SmallVector<int64_t> interleave;
          for (int64_t j = 0; j < width; ++j)
            interleave.append({j, width + j});
          Value both =
              vector::ShuffleOp::create(nb, nl, rows[0], rows[1], interleave);
          Value rounded = arith::TruncFOp::create(
              nb, nl, VectorType::get({2 * width}, bf16), both);
          SmallVector<Value> to(ivs.begin(), ivs.end());
          to.back() = arith::MulIOp::create(nb, nl, column, two);
          Value written = vector::TransferWriteOp::create(
                              nb, nl, rounded, args[0], to, ArrayRef<bool>{true})
                              .getResult();
          return {written};
        });
    flat = nest.results.front();
  }
  // [..., K/2, 2N] -> [..., K/2, N, 2].
  SmallVector<int64_t> shape(flatShape.begin(), flatShape.end() - 1);
  shape.append({columns, 2});
  SmallVector<ReassociationIndices> groups;
  for (int64_t i = 0; i + 1 < static_cast<int64_t>(flatShape.size()); ++i)
    groups.push_back({i});
  int64_t last = flatShape.size() - 1;
  groups.push_back({last, last + 1});
  return tensor::ExpandShapeOp::create(
      b, loc, RankedTensorType::get(shape, bf16), flat, groups);
}

/// Rewrites `c.op` (see the pass description).
void rewrite(RewriterBase &rewriter, const Candidate &c) {
  linalg::LinalgOp op = c.op;
  Location loc = op.getLoc();
  MLIRContext *ctx = op.getContext();
  rewriter.setInsertionPoint(op);
  int64_t loops = op.getNumLoops();
  // The new loops: the old ones (the reduction now steps over pairs) and
  // the pair dimension last.
  int64_t kk = c.reduction, p = loops;
  AffineExpr kkExpr = getAffineDimExpr(kk, ctx), pExpr = getAffineDimExpr(p, ctx);

  // A16[..., K/2, 2]: A's reduction is its innermost dimension, so this is
  // an elementwise rounding along the contiguous rows and a reshape.
  AffineMap aMap = op.getMatchingIndexingMap(c.a);
  auto aType = cast<RankedTensorType>(c.a->get().getType());
  Value a16 = roundToBf16(rewriter, loc, c.a->get(),
                          rewriter.getMultiDimIdentityMap(aType.getRank()),
                          aType.getShape());
  a16 = splitIntoPairs(rewriter, loc, a16, aType.getRank() - 1);
  SmallVector<AffineExpr> a16Results(aMap.getResults().drop_back());
  a16Results.append({kkExpr, pExpr});

  // B16[other dims..., K/2, N, 2]: packed by packPairs.
  AffineMap bMap = op.getMatchingIndexingMap(c.b);
  SmallVector<int64_t> b16Dims;
  for (AffineExpr e : bMap.getResults()) {
    int64_t d = cast<AffineDimExpr>(e).getPosition();
    if (d != c.reduction && d != c.vector)
      b16Dims.push_back(d);
  }
  b16Dims.append({kk, c.vector, p});
  // The pack goes before the outermost loop around the contraction that B
  // does not change in (an expert's weights, packed once per expert rather
  // than once per tile of its tokens; LICM would not move the pack's loops,
  // whose reads it cannot prove in bounds).
  Value b16;
  {
    OpBuilder::InsertionGuard guard(rewriter);
    Operation *before = op;
    while (auto loop = before->getParentOfType<LoopLikeOpInterface>()) {
      if (!loop.isDefinedOutsideOfLoop(c.b->get()))
        break;
      before = loop;
    }
    rewriter.setInsertionPoint(before);
    b16 = packPairs(rewriter, loc, c.b->get(), bMap, c.reduction);
  }
  SmallVector<AffineExpr> b16Results;
  for (int64_t d : b16Dims)
    b16Results.push_back(getAffineDimExpr(d, ctx));

  // The contraction over (..., K/2, 2).
  AffineMap outMap = op.getMatchingIndexingMap(op.getDpsInitOperand(0));
  SmallVector<AffineMap> maps = {
      AffineMap::get(loops + 1, 0, a16Results, ctx),
      AffineMap::get(loops + 1, 0, b16Results, ctx),
      AffineMap::get(loops + 1, 0, outMap.getResults(), ctx)};
  SmallVector<utils::IteratorType> iters = op.getIteratorTypesArray();
  iters.push_back(utils::IteratorType::reduction);
  Type f32 = rewriter.getF32Type();
  auto pairs = linalg::GenericOp::create(
      rewriter, loc, op->getResultTypes(), ValueRange{a16, b16},
      op.getDpsInits(), maps, iters,
      [&](OpBuilder &nb, Location nl, ValueRange args) {
        Value x = arith::ExtFOp::create(nb, nl, f32, args[0]);
        Value y = arith::ExtFOp::create(nb, nl, f32, args[1]);
        Value prod = arith::MulFOp::create(nb, nl, x, y);
        Value sum = arith::AddFOp::create(nb, nl, args[2], prod);
        linalg::YieldOp::create(nb, nl, sum);
      });
  pairs->setAttr(moec::moe::MoEDialect::Bf16PairsAttrHelper::getNameStr(),
                 rewriter.getUnitAttr());
  rewriter.replaceOp(op, pairs->getResults());
}

struct Bf16ContractionsPass
    : public moec::impl::Bf16ContractionsPassBase<Bf16ContractionsPass> {
  using Base::Base;

  void runOnOperation() override {
    if (!getOperation()->hasAttr(
            moec::moe::MoEDialect::KernelAttrHelper::getNameStr()))
      return;
    IRRewriter rewriter(&getContext());
    SmallVector<linalg::LinalgOp> ops;
    getOperation().walk([&](linalg::LinalgOp op) {
      if (isa<linalg::MatmulOp, linalg::BatchMatmulOp, linalg::GenericOp>(op))
        ops.push_back(op);
    });
    for (linalg::LinalgOp op : ops)
      if (FailureOr<Candidate> c = match(op, minReduction, minWidth);
          succeeded(c))
        rewrite(rewriter, *c);
  }
};
} // namespace
