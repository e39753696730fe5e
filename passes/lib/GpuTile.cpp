//===- GpuTile.cpp - moe-gpu-tile: the CUDA target's kernel tiling --------===//
//
// On a bufferized kernel: linalg.matmul -> warp tiles of 16 x 8 outputs
// whose tile matmul has the numerics of mma.sync.m16n8k16.bf16; every other
// linalg op -> scf.parallel loops for the block's threads. The output is
// plain IR that the CPU pipeline compiles as well as moe-gpu-map-kernels.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/GpuTiling.h"
#include "moec/Passes/Passes.h"

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

/// C += A * B as an scf.parallel over C's 16 x 8 tiles (one warp each),
/// each a `moe.gpu_mma` tile matmul on views of at most 16 x K, K x 8 and
/// 16 x 8.
void tileMatmul(linalg::MatmulOp matmul) {
  OpBuilder b(matmul);
  Location loc = matmul.getLoc();
  Value a = matmul.getDpsInputs()[0], bm = matmul.getDpsInputs()[1];
  Value c = matmul.getDpsInits()[0];
  Value m = dimOf(b, loc, a, 0), k = dimOf(b, loc, a, 1),
        n = dimOf(b, loc, bm, 1);
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
        Value as = memref::SubViewOp::create(
            nb, nloc, a, ArrayRef<OpFoldResult>{m0, nb.getIndexAttr(0)},
            ArrayRef<OpFoldResult>{ms, k}, unit);
        Value bs = memref::SubViewOp::create(
            nb, nloc, bm, ArrayRef<OpFoldResult>{nb.getIndexAttr(0), n0},
            ArrayRef<OpFoldResult>{k, ns}, unit);
        Value cs = memref::SubViewOp::create(
            nb, nloc, c, ArrayRef<OpFoldResult>{m0, n0},
            ArrayRef<OpFoldResult>{ms, ns}, unit);
        MLIRContext *ctx = nb.getContext();
        AffineExpr i, j, l;
        bindDims(ctx, i, j, l);
        SmallVector<AffineMap> maps = {
            AffineMap::get(3, 0, {i, l}, ctx), AffineMap::get(3, 0, {l, j}, ctx),
            AffineMap::get(3, 0, {i, j}, ctx)};
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
  loop->setAttr(moec::moe::MoEDialect::GpuMapAttrHelper::getNameStr(), b.getStringAttr(moec::kGpuMapWarps));
  matmul.erase();
}

struct GpuTilePass : public moec::impl::GpuTilePassBase<GpuTilePass> {
  void runOnOperation() override {
    func::FuncOp fn = getOperation();
    if (!fn->hasAttr(moec::moe::MoEDialect::KernelAttrHelper::getNameStr()) ||
        fn.isExternal())
      return;
    SmallVector<linalg::MatmulOp> matmuls;
    fn.walk([&](linalg::MatmulOp op) {
      if (!op->hasAttr(moec::moe::MoEDialect::Fp32AttrHelper::getNameStr()) &&
          op.hasPureBufferSemantics() && isF32Matrix(op.getDpsInputs()[0]) &&
          isF32Matrix(op.getDpsInputs()[1]) && isF32Matrix(op.getDpsInits()[0]))
        matmuls.push_back(op);
    });
    for (linalg::MatmulOp op : matmuls)
      tileMatmul(op);

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
