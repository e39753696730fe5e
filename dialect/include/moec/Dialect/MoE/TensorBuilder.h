//===- TensorBuilder.h - whole-batch linalg on tensors ----------*- C++ -*-===//
//
// Small helpers that build linalg.generic ops on static f32 tensors. The
// VJPs of the moe ops and the decompositions of the batch-level ops (losses,
// metrics) are written with them. Loop dimensions are ordered parallel
// dimensions first: moe-lower-to-kernels splits a kernel's work along loop
// dimension 0.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_TENSORBUILDER_H
#define MOEC_DIALECT_MOE_TENSORBUILDER_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"

#include <cmath>

namespace moec::moe {

class TensorBuilder {
public:
  using Body =
      llvm::function_ref<mlir::Value(mlir::OpBuilder &, mlir::Location,
                                     mlir::ValueRange)>;
  using IteratorType = mlir::utils::IteratorType;
  static constexpr IteratorType kPar = IteratorType::parallel;
  static constexpr IteratorType kRed = IteratorType::reduction;

  TensorBuilder(mlir::OpBuilder &b, mlir::Location loc) : b(b), loc(loc) {}

  mlir::OpBuilder &b;
  mlir::Location loc;

  static llvm::ArrayRef<int64_t> shape(mlir::Value v) {
    return llvm::cast<mlir::RankedTensorType>(v.getType()).getShape();
  }
  static int64_t rank(mlir::Value v) { return shape(v).size(); }

  mlir::Value empty(llvm::ArrayRef<int64_t> s) {
    return mlir::tensor::EmptyOp::create(b, loc, s, b.getF32Type());
  }
  mlir::Value fill(llvm::ArrayRef<int64_t> s, double v) {
    mlir::Value c = mlir::arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
    return mlir::linalg::FillOp::create(b, loc, mlir::ValueRange{c},
                                        mlir::ValueRange{empty(s)})
        .getResult(0);
  }
  mlir::Value zeros(llvm::ArrayRef<int64_t> s) { return fill(s, 0.0); }

  mlir::AffineExpr d(unsigned i) { return b.getAffineDimExpr(i); }
  mlir::AffineExpr c(int64_t v) { return b.getAffineConstantExpr(v); }
  mlir::AffineMap map(unsigned numDims, llvm::ArrayRef<mlir::AffineExpr> e) {
    return mlir::AffineMap::get(numDims, 0, e, b.getContext());
  }
  /// (d0..dn-1) -> (d[dims[0]], ...).
  mlir::AffineMap dims(unsigned numDims, llvm::ArrayRef<unsigned> ds) {
    llvm::SmallVector<mlir::AffineExpr> e;
    for (unsigned i : ds)
      e.push_back(d(i));
    return map(numDims, e);
  }
  mlir::AffineMap identity(unsigned n) {
    return mlir::AffineMap::getMultiDimIdentityMap(n, b.getContext());
  }
  /// Dims [from, from + n).
  mlir::AffineMap range(unsigned numDims, unsigned from, unsigned n) {
    llvm::SmallVector<unsigned> ds;
    for (unsigned i = 0; i < n; ++i)
      ds.push_back(from + i);
    return dims(numDims, ds);
  }
  mlir::AffineMap scalarMap(unsigned numDims) { return map(numDims, {}); }

  /// A linalg.generic writing `init` (its map: `outMap`). `body` gets the
  /// input elements then the output element.
  mlir::Value generic(mlir::ValueRange ins, llvm::ArrayRef<mlir::AffineMap> inMaps,
                      mlir::Value init, mlir::AffineMap outMap,
                      llvm::ArrayRef<IteratorType> iters, Body body) {
    llvm::SmallVector<mlir::AffineMap> maps(inMaps);
    maps.push_back(outMap);
    auto op = mlir::linalg::GenericOp::create(
        b, loc, mlir::TypeRange{init.getType()}, ins, mlir::ValueRange{init},
        maps, iters,
        [&](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
          mlir::linalg::YieldOp::create(nb, nl, body(nb, nl, a));
        });
    return op.getResult(0);
  }

  /// Element-wise over `ins`, all of `ins[0]`'s shape unless `maps` say
  /// otherwise (maps over the output's dims).
  mlir::Value pointwise(mlir::ValueRange ins, llvm::ArrayRef<int64_t> outShape,
                  llvm::ArrayRef<mlir::AffineMap> inMaps, Body body) {
    unsigned n = outShape.size();
    llvm::SmallVector<IteratorType> iters(n, kPar);
    return generic(ins, inMaps, empty(outShape), identity(n), iters, body);
  }
  mlir::Value elementwise(mlir::ValueRange ins, Body body) {
    unsigned n = rank(ins[0]);
    llvm::SmallVector<mlir::AffineMap> maps;
    for (mlir::Value v : ins)
      maps.push_back(rank(v) == 0 ? scalarMap(n) : identity(n));
    return pointwise(ins, shape(ins[0]), maps, body);
  }

  /// out[outMap] = sum over the reduction dims of a[ma] * b[mb]. `outShape`
  /// is the result's shape; iterators: parallel then `numRed` reductions.
  mlir::Value contract(mlir::Value a, mlir::AffineMap ma, mlir::Value bv,
                       mlir::AffineMap mb, llvm::ArrayRef<int64_t> outShape,
                       unsigned numRed, mlir::Value init = {}) {
    unsigned np = outShape.size();
    llvm::SmallVector<IteratorType> iters(np, kPar);
    iters.append(numRed, kRed);
    return generic({a, bv}, {ma, mb}, init ? init : zeros(outShape),
                   range(np + numRed, 0, np), iters,
                   [](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange x) {
                     mlir::Value p = mlir::arith::MulFOp::create(nb, nl, x[0], x[1]);
                     return mlir::arith::AddFOp::create(nb, nl, x[2], p).getResult();
                   });
  }

  /// out[dims 0..np) = sum over the other dims of f(ins); maps over np+numRed
  /// dims.
  mlir::Value reduce(mlir::ValueRange ins, llvm::ArrayRef<mlir::AffineMap> maps,
                     llvm::ArrayRef<int64_t> outShape, unsigned numRed,
                     Body f, double init = 0.0, bool isMax = false) {
    unsigned np = outShape.size();
    llvm::SmallVector<IteratorType> iters(np, kPar);
    iters.append(numRed, kRed);
    return generic(ins, maps, fill(outShape, init), range(np + numRed, 0, np),
                   iters,
                   [&](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange x) {
                     mlir::Value v = f(nb, nl, x.drop_back());
                     if (isMax)
                       return mlir::arith::MaxNumFOp::create(nb, nl, x.back(), v)
                           .getResult();
                     return mlir::arith::AddFOp::create(nb, nl, x.back(), v)
                         .getResult();
                   });
  }
  /// Sum of `x` over the dims not in `keep` (x's dims, in x's order):
  /// result[keep...].
  mlir::Value sumOver(mlir::Value x, llvm::ArrayRef<unsigned> keep) {
    unsigned r = rank(x);
    llvm::SmallVector<unsigned> order(keep), xDims(r);
    llvm::SmallVector<int64_t> outShape;
    for (unsigned k : keep)
      outShape.push_back(shape(x)[k]);
    for (unsigned i = 0; i < r; ++i)
      if (!llvm::is_contained(keep, i))
        order.push_back(i);
    // Loop dim j iterates x's dim order[j].
    for (unsigned j = 0; j < r; ++j)
      xDims[order[j]] = j;
    return reduce({x}, {dims(r, xDims)}, outShape, r - keep.size(),
                  [](mlir::OpBuilder &, mlir::Location, mlir::ValueRange a) {
                    return a[0];
                  });
  }

  /// Softmax over the last dim of x (any rank).
  mlir::Value softmaxLast(mlir::Value x) {
    unsigned r = rank(x);
    llvm::SmallVector<int64_t> rows(shape(x).drop_back());
    mlir::AffineMap all = identity(r), row = range(r, 0, r - 1);
    mlir::Value mx = reduce({x}, {all}, rows, 1,
                            [](mlir::OpBuilder &, mlir::Location, mlir::ValueRange a) {
                              return a[0];
                            }, -INFINITY, /*isMax=*/true);
    mlir::Value sum = reduce({x, mx}, {all, row}, rows, 1,
                             [](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
                               return mlir::math::ExpOp::create(
                                          nb, nl, mlir::arith::SubFOp::create(nb, nl, a[0], a[1]))
                                   .getResult();
                             });
    return pointwise({x, mx, sum}, shape(x), {all, row, row},
               [](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
                 mlir::Value e = mlir::math::ExpOp::create(
                     nb, nl, mlir::arith::SubFOp::create(nb, nl, a[0], a[1]));
                 return mlir::arith::DivFOp::create(nb, nl, e, a[2]).getResult();
               });
  }
  /// Softmax VJP along the last dim: p * (dp - sum(dp * p)).
  mlir::Value softmaxLastVJP(mlir::Value p, mlir::Value dp) {
    unsigned r = rank(p);
    llvm::SmallVector<int64_t> rows(shape(p).drop_back());
    mlir::AffineMap all = identity(r), row = range(r, 0, r - 1);
    mlir::Value dot = reduce({p, dp}, {all, all}, rows, 1,
                             [](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
                               return mlir::arith::MulFOp::create(nb, nl, a[0], a[1])
                                   .getResult();
                             });
    return pointwise({p, dp, dot}, shape(p), {all, all, row},
               [](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
                 mlir::Value t = mlir::arith::SubFOp::create(nb, nl, a[1], a[2]);
                 return mlir::arith::MulFOp::create(nb, nl, a[0], t).getResult();
               });
  }

  /// x + y (same shape).
  mlir::Value add(mlir::Value x, mlir::Value y) {
    return elementwise({x, y}, [](mlir::OpBuilder &nb, mlir::Location nl,
                                  mlir::ValueRange a) {
      return mlir::arith::AddFOp::create(nb, nl, a[0], a[1]).getResult();
    });
  }
  /// x * s for a constant s.
  mlir::Value scale(mlir::Value x, double s) {
    return elementwise({x}, [&](mlir::OpBuilder &nb, mlir::Location nl,
                                mlir::ValueRange a) {
      mlir::Value k = mlir::arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(s));
      return mlir::arith::MulFOp::create(nb, nl, a[0], k).getResult();
    });
  }

  /// Transpose of a matrix-like parameter over its last two dims.
  mlir::Value transposeLast2(mlir::Value w) {
    unsigned r = rank(w);
    llvm::SmallVector<int64_t> s(shape(w));
    std::swap(s[r - 1], s[r - 2]);
    llvm::SmallVector<unsigned> ds;
    for (unsigned i = 0; i + 2 < r; ++i)
      ds.push_back(i);
    ds.push_back(r - 1);
    ds.push_back(r - 2);
    return pointwise({w}, s, {dims(r, ds)},
               [](mlir::OpBuilder &, mlir::Location, mlir::ValueRange a) {
                 return a[0];
               });
  }

  /// Reshapes that only regroup contiguous dimensions: the plan keeps them
  /// as views of their source's buffer (no kernel, no copy).
  mlir::Value collapse(mlir::Value x,
                       llvm::ArrayRef<mlir::ReassociationIndices> groups) {
    return mlir::tensor::CollapseShapeOp::create(b, loc, x, groups);
  }
  mlir::Value expand(mlir::Value x, llvm::ArrayRef<int64_t> shape,
                     llvm::ArrayRef<mlir::ReassociationIndices> groups) {
    auto type = mlir::RankedTensorType::get(shape, b.getF32Type());
    return mlir::tensor::ExpandShapeOp::create(b, loc, type, x, groups);
  }

  mlir::Value cst(mlir::OpBuilder &nb, mlir::Location nl, double v) {
    return mlir::arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(v));
  }
};

} // namespace moec::moe

#endif // MOEC_DIALECT_MOE_TENSORBUILDER_H
