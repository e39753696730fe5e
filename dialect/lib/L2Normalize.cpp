//===- L2Normalize.cpp - moe.l2_normalize: verifier, forward and VJP ------===//
//
// The op behind cosine router gates (and Soft MoE as published): vectors
// along one dimension scaled to unit l2 norm, times an optional learned
// scale. Its forward is whole-batch linalg (moe-decompose-losses builds it
// with buildL2Normalize), and so is its VJP.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/ShapeRules.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "AutodiffUtils.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Math/IR/Math.h"

using namespace mlir;
using namespace moec::moe;
using namespace moec::moe::detail;
using TB = TensorBuilder;

namespace {
/// Reductions loop over x's dims but `dim`, in order, then `dim`: `all` is
/// x's map over those loops, `vec` the per-vector values' (x's shape less
/// `dim`). Element-wise ops loop over x's own dims: `vecOfX` is the
/// per-vector values' map there.
struct Layout {
  AffineMap all, vec, vecOfX;
  SmallVector<int64_t> vecShape;
  unsigned rank;
};

Layout layoutOf(TB &tb, Value x, int64_t dim) {
  Layout l;
  ArrayRef<int64_t> s = TB::shape(x);
  l.rank = s.size();
  SmallVector<unsigned> xDims(l.rank), kept;
  unsigned loop = 0;
  for (unsigned i = 0; i < l.rank; ++i)
    if (i != dim) {
      xDims[i] = loop++;
      l.vecShape.push_back(s[i]);
    }
  xDims[dim] = l.rank - 1;
  for (unsigned i = 0; i + 1 < l.rank; ++i)
    kept.push_back(i);
  l.all = tb.dims(l.rank, xDims);
  l.vec = tb.dims(l.rank, kept);
  SmallVector<unsigned> notDim;
  for (unsigned i = 0; i < l.rank; ++i)
    if (i != dim)
      notDim.push_back(i);
  l.vecOfX = tb.dims(l.rank, notDim);
  return l;
}

/// 1 / sqrt(sum_dim x^2 + eps), one value per vector.
Value inverseNorms(TB &tb, const Layout &l, Value x, double eps) {
  Value sq = tb.reduce({x}, {l.all}, l.vecShape, 1,
                       [](OpBuilder &nb, Location nl, ValueRange a) {
                         return mulf(nb, nl, a[0], a[0]);
                       });
  return tb.elementwise({sq}, [&](OpBuilder &nb, Location nl, ValueRange a) {
    Value e = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(eps));
    return math::RsqrtOp::create(nb, nl, arith::AddFOp::create(nb, nl, a[0], e))
        .getResult();
  });
}

/// A map of the one-element scale over `rank` loops.
AffineMap scaleMap(TB &tb, unsigned rank) {
  return tb.map(rank, {tb.c(0)});
}
} // namespace

LogicalResult L2NormalizeOp::verify() {
  auto type = cast<RankedTensorType>(getInput().getType());
  if (!type.getElementType().isF32())
    return emitOpError() << "expects an f32 input, got " << type;
  if (getResult().getType() != type)
    return emitOpError() << "expects a result of the input's type " << type
                         << ", got " << getResult().getType();
  if (getDim() >= static_cast<uint64_t>(type.getRank()))
    return emitOpError() << "expects dim < rank (" << type.getRank()
                         << "), got " << getDim();
  if (!(getEpsilon().convertToDouble() > 0.0))
    return emitOpError() << "expects a positive epsilon, got "
                         << getEpsilon().convertToDouble();
  if (Value scale = getScale()) {
    auto st = cast<RankedTensorType>(scale.getType());
    if (st.getShape() != ArrayRef<int64_t>{1} || !st.getElementType().isF32())
      return emitOpError() << "expects a scale of type tensor<1xf32>, got "
                           << st;
  }
  return success();
}

Value moec::moe::buildL2Normalize(OpBuilder &b, Location loc, Value x,
                                  Value scale, int64_t dim, double eps) {
  TB tb(b, loc);
  Layout l = layoutOf(tb, x, dim);
  Value inv = inverseNorms(tb, l, x, eps);
  SmallVector<Value> ins{x, inv};
  SmallVector<AffineMap> maps{tb.identity(l.rank), l.vecOfX};
  if (scale) {
    ins.push_back(scale);
    maps.push_back(scaleMap(tb, l.rank));
  }
  return tb.pointwise(ins, TB::shape(x), maps,
                      [&](OpBuilder &nb, Location nl, ValueRange a) {
                        Value y = mulf(nb, nl, a[0], a[1]);
                        return scale ? mulf(nb, nl, y, a[2]) : y;
                      });
}

LogicalResult L2NormalizeOp::buildVJP(OpBuilder &b, ArrayRef<Value> dys,
                                      SmallVectorImpl<Value> &grads) {
  grads.assign(getNumOperands(), Value());
  Value dy = dys[0];
  if (!dy)
    return success();
  TB tb(b, getLoc());
  Value x = getInput(), scale = getScale();
  int64_t dim = getDim();
  Layout l = layoutOf(tb, x, dim);
  Value inv = inverseNorms(tb, l, x, getEpsilon().convertToDouble());
  // t = sum_dim dy * x per vector.
  Value t = tb.reduce({dy, x}, {l.all, l.all}, l.vecShape, 1,
                      [](OpBuilder &nb, Location nl, ValueRange a) {
                        return mulf(nb, nl, a[0], a[1]);
                      });
  AffineMap own = tb.identity(l.rank), vec = l.vecOfX;
  // y = s x r with r = (|x|^2 + eps)^-1/2: dx = s r (dy - x r^2 t).
  SmallVector<Value> ins{dy, x, inv, t};
  SmallVector<AffineMap> maps{own, own, vec, vec};
  if (scale) {
    ins.push_back(scale);
    maps.push_back(scaleMap(tb, l.rank));
  }
  grads[0] = tb.pointwise(
      ins, TB::shape(x), maps, [&](OpBuilder &nb, Location nl, ValueRange a) {
        Value r = a[2];
        Value r2t = mulf(nb, nl, mulf(nb, nl, r, r), a[3]);
        Value in = arith::SubFOp::create(nb, nl, a[0], mulf(nb, nl, a[1], r2t));
        Value g = mulf(nb, nl, r, in);
        return scale ? mulf(nb, nl, g, a[4]) : g;
      });
  if (scale) {
    // ds = sum over vectors of t * r.
    unsigned n = l.vecShape.size();
    SmallVector<unsigned> vecDims;
    for (unsigned i = 0; i < n; ++i)
      vecDims.push_back(1 + i);
    AffineMap m = tb.dims(1 + n, vecDims);
    grads[1] = tb.reduce({t, inv}, {m, m}, {1}, n,
                         [](OpBuilder &nb, Location nl, ValueRange a) {
                           return mulf(nb, nl, a[0], a[1]);
                         });
  }
  return success();
}
