//===- KernelSupport.cpp - shared pieces of the moe kernel models ---------===//

#include "KernelSupport.h"

using namespace mlir;

namespace moec::kernels {

/// linalg.index `dim` as an f32 (ranks and slots are counted in f32).
Value indexAsF32(OpBuilder &nb, Location nl, unsigned dim) {
  return arith::UIToFPOp::create(
      nb, nl, nb.getF32Type(),
      arith::IndexCastUIOp::create(nb, nl, nb.getI64Type(),
                                   linalg::IndexOp::create(nb, nl, dim)));
}

Value toIndex(OpBuilder &nb, Location nl, Value f) {
  return arith::IndexCastUIOp::create(
      nb, nl, nb.getIndexType(),
      arith::FPToUIOp::create(nb, nl, nb.getI64Type(), f));
}

/// A slice of rank-reduced shape `type` of `src` at `offsets` with `sizes`
/// (unit strides).
Value sliceOf(OpBuilder &b, Location loc, Value src,
              ArrayRef<OpFoldResult> offsets, ArrayRef<int64_t> sizes,
              ArrayRef<int64_t> type) {
  SmallVector<OpFoldResult> sz, st;
  for (int64_t v : sizes) {
    sz.push_back(b.getIndexAttr(v));
    st.push_back(b.getIndexAttr(1));
  }
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get(type, b.getF32Type()), src, offsets, sz,
      st);
}

/// `full` with `row` [D] written at `offsets` (the last dimension whole).
Value putRow(OpBuilder &b, Location loc, Value row, Value full,
             ArrayRef<OpFoldResult> offsets) {
  int64_t rank = ImageBuilder::shape(full).size();
  SmallVector<OpFoldResult> sizes(rank - 1, b.getIndexAttr(1));
  sizes.push_back(b.getIndexAttr(ImageBuilder::shape(row)[0]));
  SmallVector<OpFoldResult> strides(rank, b.getIndexAttr(1));
  return tensor::InsertSliceOp::create(b, loc, row, full, offsets, sizes,
                                       strides);
}

/// for i in [0, n): state = body(i, state), as an scf.for over tensors.
Value loopOver(OpBuilder &b, Location loc, int64_t n, Value init,
               function_ref<Value(OpBuilder &, Location, Value, Value)> body) {
  return scf::ForOp::create(
             b, loc, arith::ConstantIndexOp::create(b, loc, 0),
             arith::ConstantIndexOp::create(b, loc, n),
             arith::ConstantIndexOp::create(b, loc, 1), ValueRange{init},
             [&](OpBuilder &lb, Location ll, Value i, ValueRange state) {
               scf::YieldOp::create(lb, ll, body(lb, ll, i, state[0]));
             })
      .getResult(0);
}

int64_t numel(Value v) {
  auto type = cast<RankedTensorType>(v.getType());
  return type.hasStaticShape() ? type.getNumElements() : 0;
}

int64_t dimOf(Value v, int64_t i) {
  int64_t d = cast<RankedTensorType>(v.getType()).getDimSize(i);
  return ShapedType::isDynamic(d) ? 0 : d;
}

} // namespace moec::kernels

bool moec::kernels::isMulAddBody(linalg::LinalgOp op) {
  Block &body = op->getRegion(0).front();
  if (body.getOperations().size() != 3)
    return false;
  auto mul = dyn_cast<arith::MulFOp>(&body.front());
  auto add = dyn_cast<arith::AddFOp>(mul ? mul->getNextNode() : nullptr);
  if (!mul || !add)
    return false;
  Value in0 = body.getArgument(0), in1 = body.getArgument(1),
        acc = body.getArgument(2);
  bool mulOfInputs = (mul.getLhs() == in0 && mul.getRhs() == in1) ||
                     (mul.getLhs() == in1 && mul.getRhs() == in0);
  bool addOfAcc = (add.getLhs() == acc && add.getRhs() == mul) ||
                  (add.getRhs() == acc && add.getLhs() == mul);
  auto yield = cast<linalg::YieldOp>(body.getTerminator());
  return mulOfInputs && addOfAcc && yield.getNumOperands() == 1 &&
         yield.getOperand(0) == add.getResult();
}
