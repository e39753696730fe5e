//===- GpuTile.cpp - moe-gpu-tile: the CUDA target's kernel tiling --------===//
//
// On a bufferized kernel: every 2-D f32 contraction (linalg.matmul, and the
// backward's generics that read an operand transposed) -> warp tiles of
// 16 x 8 outputs whose tile matmul has the numerics of
// mma.sync.m16n8k16.bf16; every other
// linalg op -> scf.parallel loops for the block's threads. The output is
// plain IR that the CPU pipeline compiles as well as moe-gpu-map-kernels.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/GpuTiling.h"
#include "moec/Passes/Passes.h"
#include "Ops/KernelSupport.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Transforms/Transforms.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/PatternMatch.h"

namespace moec {
#define GEN_PASS_DEF_GPUTILEPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {

/// `value` as an index: a constant for a static size, else memref.dim.
Value dimOf(OpBuilder &b, Location loc, Value memref, int64_t dim) {
  auto type = cast<MemRefType>(memref.getType());
  if (!type.isDynamicDim(dim))
    return arith::ConstantIndexOp::create(b, loc, type.getDimSize(dim));
  return memref::DimOp::create(b, loc, memref, dim);
}

/// A 2-D f32 memref.
bool isF32Matrix(Value v) {
  auto type = dyn_cast<MemRefType>(v.getType());
  return type && type.getRank() == 2 && type.getElementType().isF32();
}

/// f32 -> bf16 (round to nearest even) -> f32: an operand as the tensor
/// cores read it.
Value roundToBf16(OpBuilder &b, Location loc, Value x) {
  Value half = arith::TruncFOp::create(b, loc, b.getBF16Type(), x);
  return arith::ExtFOp::create(b, loc, b.getF32Type(), half);
}


/// A 2-D contraction C[m, n] += A * B where A is indexed by (m, k) in
/// either order and B by (k, n) in either order: linalg.matmul, and the
/// generics of the backward pass that read an operand transposed.
struct Contraction {
  linalg::LinalgOp op;
  Value a, b, c;
  /// Loop dimensions.
  unsigned m = 0, n = 0, k = 0;
  /// Whether A is stored [k, m] / B is stored [n, k].
  bool aTransposed = false, bTransposed = false;
};

std::optional<unsigned> dimAt(AffineMap map, unsigned result) {
  auto d = dyn_cast<AffineDimExpr>(map.getResult(result));
  return d ? std::optional<unsigned>(d.getPosition()) : std::nullopt;
}

std::optional<Contraction> matchContraction(linalg::LinalgOp op) {
  if (!op.hasPureBufferSemantics() || op.getNumDpsInputs() != 2 ||
      op.getNumDpsInits() != 1 || op.getNumLoops() != 3 ||
      op->hasAttr(moec::moe::MoEDialect::Fp32AttrHelper::getNameStr()) ||
      !moec::kernels::isMulAddBody(op))
    return std::nullopt;
  Contraction c;
  c.op = op;
  for (OpOperand &operand : op->getOpOperands())
    if (!isF32Matrix(operand.get()) ||
        !op.getMatchingIndexingMap(&operand).isProjectedPermutation())
      return std::nullopt;
  SmallVector<utils::IteratorType> iterators = op.getIteratorTypesArray();
  if (llvm::count(iterators, utils::IteratorType::reduction) != 1)
    return std::nullopt;
  c.k = static_cast<unsigned>(
      llvm::find(iterators, utils::IteratorType::reduction) -
      iterators.begin());
  AffineMap out = op.getMatchingIndexingMap(op.getDpsInitOperand(0));
  std::optional<unsigned> m = dimAt(out, 0), n = dimAt(out, 1);
  if (!m || !n || *m == c.k || *n == c.k)
    return std::nullopt;
  c.m = *m;
  c.n = *n;
  c.c = op.getDpsInits()[0];
  for (OpOperand *in : op.getDpsInputOperands()) {
    AffineMap map = op.getMatchingIndexingMap(in);
    std::optional<unsigned> d0 = dimAt(map, 0), d1 = dimAt(map, 1);
    if (d0 == c.m && d1 == c.k) {
      c.a = in->get();
    } else if (d0 == c.k && d1 == c.m) {
      c.a = in->get();
      c.aTransposed = true;
    } else if (d0 == c.k && d1 == c.n) {
      c.b = in->get();
    } else if (d0 == c.n && d1 == c.k) {
      c.b = in->get();
      c.bTransposed = true;
    }
  }
  if (!c.a || !c.b)
    return std::nullopt;
  return c;
}

/// `op` without its loops of extent 1: the same body on rank-reduced views
/// of its operands (upstream's unit-dimension folding handles tensors
/// only). Operand maps must be projected permutations.
void dropUnitLoops(linalg::GenericOp op) {
  SmallVector<int64_t> ranges = op.getStaticLoopRanges();
  SmallVector<bool> unit(ranges.size());
  for (auto [i, r] : llvm::enumerate(ranges))
    unit[i] = r == 1;
  MLIRContext *ctx = op.getContext();
  // Old loop dimension -> new one.
  SmallVector<AffineExpr> renumber;
  SmallVector<utils::IteratorType> iterators;
  unsigned kept = 0;
  for (auto [i, it] : llvm::enumerate(op.getIteratorTypesArray())) {
    renumber.push_back(getAffineDimExpr(unit[i] ? 0 : kept, ctx));
    if (!unit[i]) {
      iterators.push_back(it);
      ++kept;
    }
  }
  OpBuilder b(op);
  Location loc = op.getLoc();
  SmallVector<Value> operands;
  SmallVector<AffineMap> maps;
  for (OpOperand &operand : op->getOpOperands()) {
    AffineMap map = op.getMatchingIndexingMap(&operand);
    auto type = cast<MemRefType>(operand.get().getType());
    SmallVector<AffineExpr> results;
    SmallVector<int64_t> shape;
    for (auto [d, e] : llvm::enumerate(map.getResults())) {
      unsigned loop = cast<AffineDimExpr>(e).getPosition();
      if (unit[loop])
        continue;
      results.push_back(renumber[loop]);
      shape.push_back(type.getDimSize(d));
    }
    maps.push_back(AffineMap::get(kept, 0, results, ctx));
    if (shape.size() == static_cast<size_t>(type.getRank())) {
      operands.push_back(operand.get());
      continue;
    }
    SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
    SmallVector<OpFoldResult> sizes, strides(type.getRank(),
                                              b.getIndexAttr(1));
    for (int64_t d : type.getShape())
      sizes.push_back(b.getIndexAttr(d));
    auto reduced = memref::SubViewOp::inferRankReducedResultType(
        shape, type, offsets, sizes, strides);
    operands.push_back(memref::SubViewOp::create(
        b, loc, cast<MemRefType>(reduced), operand.get(), offsets, sizes,
        strides));
  }
  unsigned inputs = op.getNumDpsInputs();
  auto reducedOp = linalg::GenericOp::create(
      b, loc, TypeRange{}, ArrayRef<Value>(operands).take_front(inputs),
      ArrayRef<Value>(operands).drop_front(inputs), maps, iterators);
  reducedOp.getRegion().takeBody(op.getRegion());
  reducedOp->setDiscardableAttrs(op->getDiscardableAttrDictionary());
  op.erase();
}

/// C += A * B as an scf.parallel over C's 16 x 8 tiles (one warp each),
/// each a `moe.gpu_mma` tile matmul on views of at most 16 x K (A, or
/// K x 16 when stored transposed), K x 8 (B, or 8 x K) and 16 x 8, with the
/// canonical loop order (m, n, k).
void tileContraction(Contraction con) {
  OpBuilder b(con.op);
  Location loc = con.op.getLoc();
  Value m = dimOf(b, loc, con.c, 0), n = dimOf(b, loc, con.c, 1);
  Value k = dimOf(b, loc, con.a, con.aTransposed ? 0 : 1);
  Value zero = arith::ConstantIndexOp::create(b, loc, 0);
  Value one = arith::ConstantIndexOp::create(b, loc, 1);
  Value tileM = arith::ConstantIndexOp::create(b, loc, moec::kMmaTileM);
  Value tileN = arith::ConstantIndexOp::create(b, loc, moec::kMmaTileN);
  Value tilesM = arith::CeilDivUIOp::create(b, loc, m, tileM);
  Value tilesN = arith::CeilDivUIOp::create(b, loc, n, tileN);
  Value tiles = arith::MulIOp::create(b, loc, tilesM, tilesN);
  auto loop = scf::ParallelOp::create(
      b, loc, ValueRange{zero}, ValueRange{tiles}, ValueRange{one},
      [&](OpBuilder &nb, Location nloc, ValueRange ivs) {
        Value t = ivs[0];
        Value m0 = arith::MulIOp::create(
            nb, nloc, arith::DivUIOp::create(nb, nloc, t, tilesN), tileM);
        Value n0 = arith::MulIOp::create(
            nb, nloc, arith::RemUIOp::create(nb, nloc, t, tilesN), tileN);
        Value ms = arith::MinUIOp::create(
            nb, nloc, tileM, arith::SubIOp::create(nb, nloc, m, m0));
        Value ns = arith::MinUIOp::create(
            nb, nloc, tileN, arith::SubIOp::create(nb, nloc, n, n0));
        SmallVector<OpFoldResult> unit(2, nb.getIndexAttr(1));
        OpFoldResult origin = nb.getIndexAttr(0);
        auto view = [&](Value source, OpFoldResult o0, OpFoldResult s0,
                        OpFoldResult o1, OpFoldResult s1) {
          return memref::SubViewOp::create(nb, nloc, source,
                                           ArrayRef<OpFoldResult>{o0, o1},
                                           ArrayRef<OpFoldResult>{s0, s1},
                                           unit)
              .getResult();
        };
        Value as = con.aTransposed ? view(con.a, origin, k, m0, ms)
                                   : view(con.a, m0, ms, origin, k);
        Value bs = con.bTransposed ? view(con.b, n0, ns, origin, k)
                                   : view(con.b, origin, k, n0, ns);
        Value cs = view(con.c, m0, ms, n0, ns);
        MLIRContext *ctx = nb.getContext();
        AffineExpr i, j, l;
        bindDims(ctx, i, j, l);
        auto map2 = [&](AffineExpr x, AffineExpr y) {
          return AffineMap::get(3, 0, {x, y}, ctx);
        };
        SmallVector<AffineMap> maps = {
            con.aTransposed ? map2(l, i) : map2(i, l),
            con.bTransposed ? map2(j, l) : map2(l, j), map2(i, j)};
        auto tile = linalg::GenericOp::create(
            nb, nloc, ValueRange{as, bs}, ValueRange{cs}, maps,
            {utils::IteratorType::parallel, utils::IteratorType::parallel,
             utils::IteratorType::reduction},
            [](OpBuilder &bb, Location bloc, ValueRange args) {
              Value x = roundToBf16(bb, bloc, args[0]);
              Value y = roundToBf16(bb, bloc, args[1]);
              Value p = arith::MulFOp::create(bb, bloc, x, y);
              Value s = arith::AddFOp::create(bb, bloc, args[2], p);
              linalg::YieldOp::create(bb, bloc, s);
            });
        tile->setAttr(moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr(),
                      nb.getStringAttr(moec::kGpuMmaM16N8K16Bf16));
      });
  loop->setAttr(moec::moe::MoEDialect::GpuMapAttrHelper::getNameStr(),
                b.getStringAttr(moec::kGpuMapWarps));
  con.op->erase();
}

struct GpuTilePass : public moec::impl::GpuTilePassBase<GpuTilePass> {
  void runOnOperation() override {
    func::FuncOp fn = getOperation();
    if (!fn->hasAttr(moec::moe::MoEDialect::KernelAttrHelper::getNameStr()) ||
        fn.isExternal())
      return;
    // Per-image contractions of the backward pass carry the image as a unit
    // loop ([1, S, D] operands); without it they are 2-D contractions.
    SmallVector<linalg::GenericOp> withUnitLoops;
    fn.walk([&](linalg::GenericOp op) {
      if (op.hasPureBufferSemantics() && op.getNumDpsInputs() == 2 &&
          op.getNumDpsInits() == 1 && moec::kernels::isMulAddBody(op) &&
          op.getNumLoops() > 3 &&
          llvm::all_of(op.getIndexingMapsArray(),
                       [](AffineMap m) { return m.isProjectedPermutation(); }) &&
          llvm::all_of(op->getOperandTypes(),
                       [](Type t) {
                         auto m = dyn_cast<MemRefType>(t);
                         return m && m.hasStaticShape();
                       }) &&
          llvm::is_contained(op.getStaticLoopRanges(), int64_t(1)))
        withUnitLoops.push_back(op);
    });
    for (linalg::GenericOp op : withUnitLoops)
      dropUnitLoops(op);

    SmallVector<Contraction> contractions;
    fn.walk([&](linalg::LinalgOp op) {
      if (std::optional<Contraction> c = matchContraction(op))
        contractions.push_back(*c);
    });
    for (Contraction &c : contractions)
      tileContraction(c);

    // Everything else becomes parallel loops for the block's threads.
    SmallVector<linalg::LinalgOp> rest;
    fn.walk([&](linalg::LinalgOp op) {
      if (!op->hasAttr(moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr()))
        rest.push_back(op);
    });
    IRRewriter rewriter(&getContext());
    for (linalg::LinalgOp op : rest) {
      if (!op.hasPureBufferSemantics()) {
        op->emitOpError("moe-gpu-tile runs after bufferization: the op "
                        "still has tensor operands");
        return signalPassFailure();
      }
      rewriter.setInsertionPoint(op);
      if (failed(linalg::linalgOpToParallelLoops(rewriter, op))) {
        op->emitOpError("cannot be lowered to parallel loops for the GPU");
        return signalPassFailure();
      }
      rewriter.eraseOp(op);
    }
  }
};

} // namespace
