//===- LowerToKernels.cpp - moe-lower-to-kernels --------------------------===//
//
// Outlines every moe op of the entry function into a kernel that computes a
// range of images. Each kernel body is linalg/tensor/arith/math on tensors
// in destination-passing style: one-shot bufferization then writes straight
// into the destination buffers the memory plan assigns.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/Passes.h"

#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/TypeSwitch.h"

#include <cmath>
#include <tuple>

namespace moec {
#define GEN_PASS_DEF_LOWERTOKERNELSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
using namespace moec::moe;
using utils::IteratorType;

namespace {
constexpr IteratorType kPar = IteratorType::parallel;
constexpr IteratorType kRed = IteratorType::reduction;

/// Builds the per-image computation of one kernel: small helpers over
/// linalg on static f32 tensors.
class ImageBuilder {
public:
  ImageBuilder(OpBuilder &b, Location loc)
      : b(b), loc(loc), f32(b.getF32Type()) {}

  RankedTensorType type(ArrayRef<int64_t> shape) {
    return RankedTensorType::get(shape, f32);
  }
  static ArrayRef<int64_t> shape(Value v) {
    return cast<RankedTensorType>(v.getType()).getShape();
  }
  Value empty(ArrayRef<int64_t> shape) {
    return tensor::EmptyOp::create(b, loc, shape, f32);
  }
  Value cst(double v) {
    return arith::ConstantOp::create(b, loc, b.getF32FloatAttr(v));
  }
  Value fill(Value dest, double v) {
    return linalg::FillOp::create(b, loc, ValueRange{cst(v)}, ValueRange{dest})
        .getResult(0);
  }
  Value fill(ArrayRef<int64_t> shape, double v) { return fill(empty(shape), v); }

  /// (d0, ..., dn-1) -> (d[dims[0]], ...).
  AffineMap map(unsigned numDims, ArrayRef<unsigned> dims) {
    SmallVector<AffineExpr> exprs;
    for (unsigned d : dims)
      exprs.push_back(b.getAffineDimExpr(d));
    return AffineMap::get(numDims, 0, exprs, b.getContext());
  }
  AffineMap mapExprs(unsigned numDims, ArrayRef<AffineExpr> exprs) {
    return AffineMap::get(numDims, 0, exprs, b.getContext());
  }
  AffineMap identity(unsigned rank) {
    return AffineMap::getMultiDimIdentityMap(rank, b.getContext());
  }

  /// A linalg.generic with one output `dest`; `body` gets the input element
  /// values followed by the output's and returns the new output value.
  Value generic(ValueRange ins, Value dest, ArrayRef<AffineMap> maps,
                ArrayRef<IteratorType> iters,
                function_ref<Value(OpBuilder &, Location, ValueRange)> body) {
    auto op = linalg::GenericOp::create(
        b, loc, TypeRange{dest.getType()}, ins, ValueRange{dest}, maps, iters,
        [&](OpBuilder &nb, Location nl, ValueRange args) {
          linalg::YieldOp::create(nb, nl, body(nb, nl, args));
        });
    return op.getResult(0);
  }

  /// Element-wise map over same-shaped operands into `dest`.
  Value elementwise(ValueRange ins, Value dest,
                    function_ref<Value(OpBuilder &, Location, ValueRange)> body) {
    unsigned rank = shape(dest).size();
    SmallVector<AffineMap> maps(ins.size() + 1, identity(rank));
    SmallVector<IteratorType> iters(rank, kPar);
    return generic(ins, dest, maps, iters, body);
  }

  Value add(Value x, Value y, Value dest) {
    return elementwise({x, y}, dest, [](OpBuilder &nb, Location nl,
                                        ValueRange a) -> Value {
      return arith::AddFOp::create(nb, nl, a[0], a[1]);
    });
  }

  static Value applyActivation(OpBuilder &nb, Location nl, Activation kind,
                               Value x) {
    return buildActivation(nb, nl, kind, x);
  }

  /// act(x) into `dest` and act'(x) into `derivDest`, in one pass over x
  /// (what they share, GELU's erf, is computed once).
  std::pair<Value, Value> activationAndDerivative(Activation kind, Value x,
                                                  Value dest, Value derivDest) {
    unsigned rank = shape(dest).size();
    SmallVector<AffineMap> maps(3, identity(rank));
    SmallVector<IteratorType> iters(rank, kPar);
    auto op = linalg::GenericOp::create(
        b, loc, TypeRange{dest.getType(), derivDest.getType()}, ValueRange{x},
        ValueRange{dest, derivDest}, maps, iters,
        [&](OpBuilder &nb, Location nl, ValueRange a) {
          linalg::YieldOp::create(
              nb, nl,
              ValueRange{applyActivation(nb, nl, kind, a[0]),
                         buildActivationDerivative(nb, nl, kind, a[0])});
        });
    return {op.getResult(0), op.getResult(1)};
  }

  Value activation(Activation kind, Value x, Value dest) {
    return elementwise({x}, dest,
                       [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                         return applyActivation(nb, nl, kind, a[0]);
                       });
  }

  /// dest[m, n] = bias[n] (or 0) + sum_k a[m, k] w[k, n].
  Value matmul(Value a, Value w, Value bias, Value dest) {
    Value init = bias ? broadcast(bias, dest, {0}) : fill(dest, 0.0);
    return linalg::MatmulOp::create(b, loc, TypeRange{dest.getType()},
                                    ValueRange{a, w}, ValueRange{init})
        .getResult(0);
  }

  /// dest[m, n] = sum_k a[k, m] w[k, n]: A read transposed in place (a
  /// broadcast of a[k, m] per row of the register tile) instead of through a
  /// transposed copy, which for [S, S] attention tensors costs as much as
  /// the product.
  Value matmulTransposedA(Value a, Value w, Value dest) {
    return generic({a, w}, fill(dest, 0.0),
                   {map(3, {2, 0}), map(3, {2, 1}), map(3, {0, 1})},
                   {kPar, kPar, kRed},
                   [](OpBuilder &nb, Location nl, ValueRange v) -> Value {
                     return arith::AddFOp::create(
                         nb, nl, v[2], arith::MulFOp::create(nb, nl, v[0], v[1]));
                   });
  }

  /// dest[n] = bias[n] + sum_k a[k] w[k, n].
  Value vecmat(Value a, Value w, Value bias, Value dest) {
    Value init = bias ? copy(bias, dest) : fill(dest, 0.0);
    return linalg::VecmatOp::create(b, loc, TypeRange{dest.getType()},
                                    ValueRange{a, w}, ValueRange{init})
        .getResult(0);
  }

  /// dest[e, m, n] = bias[e, n] + sum_k a[e, m, k] w[e, k, n].
  Value batchMatmul(Value a, Value w, Value bias, Value dest) {
    Value init = broadcast(bias, dest, {1});
    return linalg::BatchMatmulOp::create(b, loc, TypeRange{dest.getType()},
                                         ValueRange{a, w}, ValueRange{init})
        .getResult(0);
  }

  Value broadcast(Value src, Value dest, ArrayRef<int64_t> dims) {
    return linalg::BroadcastOp::create(b, loc, src, dest, dims).getResult()[0];
  }
  Value copy(Value src, Value dest) {
    return linalg::CopyOp::create(b, loc, src, dest).getResult(0);
  }
  Value transpose(Value src, ArrayRef<int64_t> perm) {
    SmallVector<int64_t> out;
    for (int64_t p : perm)
      out.push_back(shape(src)[p]);
    return linalg::TransposeOp::create(b, loc, src, empty(out), perm)
        .getResult()[0];
  }

  /// Row statistics of x [M, N]: reduce the last dimension into [M].
  Value reduceRows(Value x, double init,
                   function_ref<Value(OpBuilder &, Location, Value, Value)> f,
                   ArrayRef<Value> extraRowInputs = {}) {
    int64_t m = shape(x)[0];
    SmallVector<Value> ins{x};
    SmallVector<AffineMap> maps{map(2, {0, 1})};
    for (Value v : extraRowInputs) {
      ins.push_back(v);
      maps.push_back(map(2, {0}));
    }
    maps.push_back(map(2, {0}));
    return generic(ins, fill({m}, init), maps, {kPar, kRed},
                   [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                     Value v = a[0];
                     if (!extraRowInputs.empty())
                       v = arith::SubFOp::create(nb, nl, v, a[1]);
                     return f(nb, nl, v, a.back());
                   });
  }

  /// y = (x - mean) / sqrt(var + eps) * gamma + beta over the last dim.
  Value layerNorm(Value x, Value gamma, Value beta, double eps, Value dest) {
    int64_t d = shape(x)[1];
    auto sum = [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
      return arith::AddFOp::create(nb, nl, acc, v);
    };
    Value total = reduceRows(x, 0.0, sum);
    Value mean = elementwise({total}, empty({shape(x)[0]}),
                             [&](OpBuilder &nb, Location nl, ValueRange a) {
                               return arith::MulFOp::create(
                                          nb, nl, a[0],
                                          arith::ConstantOp::create(
                                              nb, nl, nb.getF32FloatAttr(1.0 / d)))
                                   .getResult();
                             });
    Value sq = reduceRows(
        x, 0.0,
        [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc,
                                       arith::MulFOp::create(nb, nl, v, v));
        },
        {mean});
    return generic(
        {x, mean, sq, gamma, beta}, dest,
        {map(2, {0, 1}), map(2, {0}), map(2, {0}), map(2, {1}), map(2, {1}),
         map(2, {0, 1})},
        {kPar, kPar}, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          auto c = [&](double v) -> Value {
            return arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(v));
          };
          Value var = arith::MulFOp::create(nb, nl, a[2], c(1.0 / d));
          Value inv = math::RsqrtOp::create(
              nb, nl, arith::AddFOp::create(nb, nl, var, c(eps)));
          Value centered = arith::SubFOp::create(nb, nl, a[0], a[1]);
          Value norm = arith::MulFOp::create(nb, nl, centered, inv);
          return arith::AddFOp::create(
              nb, nl, arith::MulFOp::create(nb, nl, norm, a[3]), a[4]);
        });
  }

  /// exp((x - rowmax(x)) * scale) of scores x [M, N], its row sums and the
  /// row maxima: the attention probabilities before normalization.
  struct ScaledExps {
    Value exps, rowSum, rowMax;
  };
  ScaledExps scaledExpRows(Value x, double scale) {
    ArrayRef<int64_t> s = shape(x);
    Value rowMax = reduceRows(
        x, -INFINITY, [](OpBuilder &nb, Location nl, Value e, Value acc) -> Value {
          return arith::MaxNumFOp::create(nb, nl, acc, e);
        });
    Value exps = generic(
        {x, rowMax}, empty(s), {map(2, {0, 1}), map(2, {0}), map(2, {0, 1})},
        {kPar, kPar}, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value centered = arith::SubFOp::create(nb, nl, a[0], a[1]);
          return math::ExpOp::create(
              nb, nl,
              arith::MulFOp::create(
                  nb, nl, centered,
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale))));
        });
    Value rowSum = reduceRows(
        exps, 0.0, [](OpBuilder &nb, Location nl, Value e, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc, e);
        });
    return {exps, rowSum, rowMax};
  }

  /// dest = softmax over the last dim of x [M, N] (router gates).
  Value softmaxRows(Value x, Value dest) {
    Value mx = reduceRows(
        x, -INFINITY, [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::MaxNumFOp::create(nb, nl, acc, v);
        });
    // reduceRows passes x - max as `centered`.
    Value sum = reduceRows(
        x, 0.0,
        [](OpBuilder &nb, Location nl, Value centered, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc,
                                       math::ExpOp::create(nb, nl, centered));
        },
        {mx});
    return generic({x, mx, sum}, dest,
                   {map(2, {0, 1}), map(2, {0}), map(2, {0}), map(2, {0, 1})},
                   {kPar, kPar},
                   [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                     Value e = math::ExpOp::create(
                         nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]));
                     return arith::DivFOp::create(nb, nl, e, a[2]);
                   });
  }

  /// rank[s, e] = #{e2 : score[s, e2] > score[s, e] or (equal and e2 < e)}:
  /// 0 for each token's best expert (ties go to the lower index).
  Value rankAlongLastDim(Value score) {
    ArrayRef<int64_t> s = shape(score);
    return generic({score, score}, fill(s, 0.0),
                   {map(3, {0, 2}), map(3, {0, 1}), map(3, {0, 1})},
                   {kPar, kPar, kRed},
                   [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                     Value mine = linalg::IndexOp::create(nb, nl, 1);
                     Value other = linalg::IndexOp::create(nb, nl, 2);
                     return countIf(nb, nl, a[0], a[1], other, mine, a[2]);
                   });
  }

  /// rank[s, e] = #{s2 : score[s2, e] > score[s, e] or (equal and s2 < s)}.
  Value rankAlongFirstDim(Value score) {
    ArrayRef<int64_t> s = shape(score);
    return generic({score, score}, fill(s, 0.0),
                   {map(3, {2, 1}), map(3, {0, 1}), map(3, {0, 1})},
                   {kPar, kPar, kRed},
                   [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                     Value mine = linalg::IndexOp::create(nb, nl, 0);
                     Value other = linalg::IndexOp::create(nb, nl, 2);
                     return countIf(nb, nl, a[0], a[1], other, mine, a[2]);
                   });
  }

  /// acc + (other beats mine ? 1 : 0), ties broken by the lower index.
  static Value countIf(OpBuilder &nb, Location nl, Value otherVal,
                       Value mineVal, Value otherIdx, Value mineIdx,
                       Value acc) {
    Value gt = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OGT,
                                     otherVal, mineVal);
    Value eq = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                     otherVal, mineVal);
    Value lower = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::ult,
                                        otherIdx, mineIdx);
    Value beats = arith::OrIOp::create(
        nb, nl, gt, arith::AndIOp::create(nb, nl, eq, lower));
    Value one = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(1.0));
    Value zero = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
    return arith::AddFOp::create(
        nb, nl, acc, arith::SelectOp::create(nb, nl, beats, one, zero));
  }

  /// For top-k routing with expert ranks `rank` [S, E]: the position of token
  /// s in expert e's queue, where all first choices (in token order) come
  /// before all second choices, and so on (V-MoE's priority).
  Value queuePosition(Value rank, int64_t k) {
    ArrayRef<int64_t> s = shape(rank);
    return generic(
        {rank, rank}, fill(s, 0.0),
        {map(3, {2, 1}), map(3, {0, 1}), map(3, {0, 1})}, {kPar, kPar, kRed},
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
          Value chosen = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT,
                                               a[0], kk);
          Value mine = linalg::IndexOp::create(nb, nl, 0);
          Value other = linalg::IndexOp::create(nb, nl, 2);
          Value lt = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT,
                                           a[0], a[1]);
          Value eq = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                           a[0], a[1]);
          Value before = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::ult,
                                               other, mine);
          Value earlier = arith::OrIOp::create(
              nb, nl, lt, arith::AndIOp::create(nb, nl, eq, before));
          Value counts = arith::AndIOp::create(nb, nl, chosen, earlier);
          Value one = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(1.0));
          Value zero = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
          return arith::AddFOp::create(
              nb, nl, a[2], arith::SelectOp::create(nb, nl, counts, one, zero));
        });
  }

  OpBuilder &b;
  Location loc;
  Type f32;
};

/// Index of the image dimension of an operand or result of `op` (every
/// activation tensor has one; parameters have none).
int64_t imageDim(Operation *op, Value v, bool isResult) {
  if (!isResult && v.getDefiningOp<ParamOp>())
    return -1;
  if (isa<ExpertsOp, ExpertsTrainOp>(op))
    return 1;
  if (isResult && isa<DispatchOp>(op))
    return 1;
  if (!isResult && isa<CombineOp>(op) && v == cast<CombineOp>(op).getInput())
    return 1;
  return 0;
}

/// Slices image `g` out of `full` along `dim`, dropping that dimension.
Value sliceImage(OpBuilder &b, Location loc, Value full, int64_t dim,
                 Value g) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  SmallVector<int64_t> reduced;
  for (int64_t i = 0; i < type.getRank(); ++i) {
    sizes.push_back(b.getIndexAttr(i == dim ? 1 : type.getDimSize(i)));
    if (i != dim)
      reduced.push_back(type.getDimSize(i));
  }
  offsets[dim] = g;
  auto resultType = RankedTensorType::get(reduced, type.getElementType());
  return tensor::ExtractSliceOp::create(b, loc, resultType, full, offsets,
                                        sizes, strides);
}

Value insertImage(OpBuilder &b, Location loc, Value slice, Value full,
                  int64_t dim, Value g) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  for (int64_t i = 0; i < type.getRank(); ++i)
    sizes.push_back(b.getIndexAttr(i == dim ? 1 : type.getDimSize(i)));
  offsets[dim] = g;
  return tensor::InsertSliceOp::create(b, loc, slice, full, offsets, sizes,
                                       strides);
}

FailureOr<SmallVector<Value>> emitRouter(RouterOp o, ImageBuilder &ib,
                                         ArrayRef<Value> in,
                                         ArrayRef<Value> dests);

/// Dispatch/combine tensors of every router but soft MoE are one-hot per
/// slot (at most one token fills a slot, a token fills at most one slot of
/// an expert), so dispatch and combine are gathers instead of dense einsums.
/// Routers that fill each expert's slots from 0 up without gaps: token
/// choice and Sinkhorn (queue positions), expert choice (ranks 0..C-1) and
/// per image (slot = token, all or nothing).
bool isPrefixFilled(RouterKind kind) { return kind != RouterKind::Soft; }

bool isHardRouted(Value dispatchOrCombine) {
  auto router = dispatchOrCombine.getDefiningOp<RouterOp>();
  return router && router.getKind() != RouterKind::Soft;
}

/// linalg.index `dim` as an f32 (ranks and slots are counted in f32).
Value indexAsF32(OpBuilder &nb, Location nl, unsigned dim) {
  return arith::UIToFPOp::create(
      nb, nl, nb.getF32Type(),
      arith::IndexCastUIOp::create(nb, nl, nb.getI64Type(),
                                   linalg::IndexOp::create(nb, nl, dim)));
}

/// index[...] = sum_j j * (t[.. j ..] != 0) and total[...] = sum_j t[.. j ..]
/// over loop dimension j = `reducedLoopDim` of a rank-3 loop that reads `t`
/// through `tDims` and writes both results through `outDims`.
std::pair<Value, Value> oneHotIndex(ImageBuilder &ib, Value t,
                                    ArrayRef<unsigned> outDims,
                                    ArrayRef<unsigned> tDims,
                                    ArrayRef<int64_t> outShape,
                                    unsigned reducedLoopDim) {
  SmallVector<IteratorType> iters(3, kPar);
  iters[reducedLoopDim] = kRed;
  Value index = ib.generic(
      {t}, ib.fill(outShape, 0.0), {ib.map(3, tDims), ib.map(3, outDims)},
      iters, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value j = indexAsF32(nb, nl, reducedLoopDim);
        Value zero = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
        Value nonzero = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::ONE,
                                              a[0], zero);
        return arith::AddFOp::create(
            nb, nl, a[1], arith::SelectOp::create(nb, nl, nonzero, j, zero));
      });
  Value total = ib.generic(
      {t}, ib.fill(outShape, 0.0), {ib.map(3, tDims), ib.map(3, outDims)},
      iters, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        return arith::AddFOp::create(nb, nl, a[1], a[0]);
      });
  return {index, total};
}

Value toIndex(OpBuilder &nb, Location nl, Value f) {
  return arith::IndexCastUIOp::create(
      nb, nl, nb.getIndexType(),
      arith::FPToUIOp::create(nb, nl, nb.getI64Type(), f));
}

/// From oneHotIndex's results at `at`: the index (a slot's token or a
/// token's slot) as an index, and the weight.
std::pair<Value, Value> routeAt(OpBuilder &b, Location loc, Value index,
                                Value weight, ValueRange at) {
  return {toIndex(b, loc, tensor::ExtractOp::create(b, loc, index, at)),
          tensor::ExtractOp::create(b, loc, weight, at)};
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

/// out[e, c, :] = valid[e, c] * x[token[e, c], :] with token/valid read off
/// the one-hot dispatch tensor D [S, E, C]. One slot at a time: its token's
/// row is a slice at a dynamic offset, so the copy vectorizes (an
/// element-wise tensor.extract at data-dependent indices stays scalar).
Value gatherDispatch(ImageBuilder &ib, Value x, Value dispatch, Value dest) {
  ArrayRef<int64_t> d = ImageBuilder::shape(dispatch); // [S, E, C]
  int64_t width = ImageBuilder::shape(x)[1];
  // Loop (s, e, c): index/valid over s, the outermost loop, so that the
  // innermost one runs along the contiguous slots (vectors over c; a
  // reduction over s innermost gathers one element per token).
  Value token, valid; // captured below: no structured bindings (C++17)
  std::tie(token, valid) =
      oneHotIndex(ib, dispatch, {1, 2}, {0, 1, 2}, {d[1], d[2]}, 0);
  return loopOver(
      ib.b, ib.loc, d[1], dest,
      [&](OpBuilder &eb, Location el, Value e, Value out) {
        return loopOver(
            eb, el, d[2], out,
            [&](OpBuilder &cb, Location cl, Value c, Value slots) {
              ImageBuilder cib(cb, cl);
              Value s, scale;
              std::tie(s, scale) = routeAt(cb, cl, token, valid, {e, c});
              OpFoldResult zero = cb.getIndexAttr(0);
              Value row = sliceOf(cb, cl, x, {s, zero}, {1, width}, {width});
              Value slot =
                  sliceOf(cb, cl, slots, {e, c, zero}, {1, 1, width}, {width});
              Value scaled = cib.elementwise(
                  {row}, slot,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::MulFOp::create(nb, nl, a[0], scale);
                  });
              return putRow(cb, cl, scaled, slots, {e, c, zero});
            });
      });
}

/// out[s, :] = sum_e weight[s, e] * y[e, slot[s, e], :] with slot/weight read
/// off the combine tensor C [S, E, C] (at most one slot per token and
/// expert). One token at a time, its experts' rows as slices (see
/// gatherDispatch).
Value gatherCombine(ImageBuilder &ib, Value y, Value combine, Value dest) {
  ArrayRef<int64_t> c = ImageBuilder::shape(combine); // [S, E, C]
  int64_t width = ImageBuilder::shape(y)[2];
  // Loop (s, e, c): slot/weight over c.
  Value slot, weight;
  std::tie(slot, weight) =
      oneHotIndex(ib, combine, {0, 1}, {0, 1, 2}, {c[0], c[1]}, 2);
  return loopOver(
      ib.b, ib.loc, c[0], dest,
      [&](OpBuilder &sb, Location sl, Value s, Value out) {
        OpFoldResult zero = sb.getIndexAttr(0);
        ImageBuilder sib(sb, sl);
        Value acc =
            sib.fill(sliceOf(sb, sl, out, {s, zero}, {1, width}, {width}), 0.0);
        acc = loopOver(
            sb, sl, c[1], acc,
            [&](OpBuilder &eb, Location el, Value e, Value sum) {
              ImageBuilder eib(eb, el);
              Value k, w;
              std::tie(k, w) = routeAt(eb, el, slot, weight, {s, e});
              Value row =
                  sliceOf(eb, el, y, {e, k, zero}, {1, 1, width}, {width});
              return eib.elementwise(
                  {row}, sum,
                  [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                    return arith::AddFOp::create(
                        nb, nl, a[1], arith::MulFOp::create(nb, nl, a[0], w));
                  });
            });
        return putRow(sb, sl, acc, out, {s, zero});
      });
}

/// Experts over filled slots only. Top-k routers fill each expert's slots
/// from 0 up, so expert e's filled slots are [0, n_e) with n_e the number of
/// ones in its dispatch column; the FFN runs over row tiles of [0, n_e) and
/// the other slots are zero (their combine weights are zero, and zeros keep
/// the combine's products finite). `in` = input [E, C, D], fc1 w/b, fc2 w/b,
/// dispatch [S, E, C].
Value filledSlotExperts(Activation activation, ImageBuilder &ib,
                        ArrayRef<Value> in, Value dest) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [E, C, D]
  int64_t numExperts = x[0], capacity = x[1], width = x[2];
  int64_t hidden = ImageBuilder::shape(in[1])[2];
  // Row tiles of up to 16 slots: every tile streams the expert's weights
  // through L1 once, so taller tiles read them less often, but a tile is
  // computed whole, so they also compute more unfilled rows. Measured on a
  // Zen 3 (example model, kernel time per 20 steps, noisy): training (32
  // slots, ~25 filled) 8 rows 0.435 s, 16 rows 0.406 s, 32 rows 0.426 s;
  // inference (50 slots) 5 rows 0.23 s, 10 rows 0.23 s, 25 rows 0.27-0.30 s.
  int64_t rows = 1;
  for (int64_t r = std::min<int64_t>(capacity, 16); r >= 1; --r)
    if (capacity % r == 0) {
      rows = r;
      break;
    }
  // count[e] = sum_{s, c} D[s, e, c], loop (e, s, c).
  Value count = ib.generic({in[5]}, ib.fill({numExperts}, 0.0),
                           {ib.map(3, {1, 0, 2}), ib.map(3, {0})},
                           {kPar, kRed, kRed},
                           [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                             return arith::AddFOp::create(nb, nl, a[1], a[0]);
                           });
  SmallVector<Value> init{dest};
  Value c0 = arith::ConstantIndexOp::create(b, loc, 0);
  Value c1 = arith::ConstantIndexOp::create(b, loc, 1);
  Value cE = arith::ConstantIndexOp::create(b, loc, numExperts);
  auto experts = scf::ForOp::create(
      b, loc, c0, cE, c1, init,
      [&](OpBuilder &eb, Location el, Value e, ValueRange acc) {
        Value filled = tensor::ExtractOp::create(eb, el, count, ValueRange{e});
        Value n = arith::IndexCastUIOp::create(
            eb, el, eb.getIndexType(),
            arith::FPToUIOp::create(eb, el, eb.getI64Type(), filled));
        // Row tiles covering [0, n): ceil(n / rows) * rows.
        Value cRows = arith::ConstantIndexOp::create(eb, el, rows);
        Value end = arith::MulIOp::create(
            eb, el, arith::CeilDivUIOp::create(eb, el, n, cRows), cRows);
        // Writes `tile` [rows, cols] into rows [row, row + rows) of expert
        // e in `full` [E, C, cols].
        auto put = [&](OpBuilder &sb, Location sl, Value tile, Value full,
                       Value row, int64_t cols) -> Value {
          SmallVector<OpFoldResult> offsets{e, row, sb.getIndexAttr(0)};
          SmallVector<OpFoldResult> sizes{sb.getIndexAttr(1),
                                          sb.getIndexAttr(rows),
                                          sb.getIndexAttr(cols)};
          SmallVector<OpFoldResult> strides(3, sb.getIndexAttr(1));
          return tensor::InsertSliceOp::create(sb, sl, tile, full, offsets,
                                               sizes, strides);
        };
        OpFoldResult zero = eb.getIndexAttr(0);
        Value w1 = sliceOf(eb, el, in[1], {e, zero, zero}, {1, width, hidden},
                           {width, hidden});
        Value b1 = sliceOf(eb, el, in[2], {e, zero}, {1, hidden}, {hidden});
        Value w2 = sliceOf(eb, el, in[3], {e, zero, zero}, {1, hidden, width},
                           {hidden, width});
        Value b2 = sliceOf(eb, el, in[4], {e, zero}, {1, width}, {width});
        auto tiles = scf::ForOp::create(
            eb, el, c0, end, cRows, acc,
            [&](OpBuilder &tb, Location tl, Value row, ValueRange tacc) {
              ImageBuilder tib(tb, tl);
              Value xs = sliceOf(tb, tl, in[0], {e, row, zero},
                                 {1, rows, width}, {rows, width});
              Value h = tib.matmul(xs, w1, b1, tib.empty({rows, hidden}));
              h = tib.activation(activation, h, tib.empty({rows, hidden}));
              Value outSlice = sliceOf(tb, tl, tacc[0], {e, row, zero},
                                       {1, rows, width}, {rows, width});
              Value y = tib.matmul(h, w2, b2, outSlice);
              scf::YieldOp::create(tb, tl, put(tb, tl, y, tacc[0], row, width));
            });
        // The row tiles of [end, C) are zero: each row of the results is
        // written once (no fill of the whole destination first).
        auto zeros = scf::ForOp::create(
            eb, el, end, arith::ConstantIndexOp::create(eb, el, capacity),
            cRows, tiles.getResults(),
            [&](OpBuilder &zb, Location zl, Value row, ValueRange zacc) {
              ImageBuilder zib(zb, zl);
              Value tile = zib.fill(sliceOf(zb, zl, zacc[0], {e, row, zero},
                                            {1, rows, width}, {rows, width}),
                                    0.0);
              scf::YieldOp::create(zb, zl, put(zb, zl, tile, zacc[0], row, width));
            });
        scf::YieldOp::create(eb, el, zeros.getResults());
      });
  return experts.getResult(0);
}

/// Columns [block * D + h * dh, +dh) of `src` [S, n * D]: head h's slice of
/// block `block` (0, 1, 2: queries, keys, values of qkv).
Value headColumns(OpBuilder &b, Location loc, Value src, Value headStart,
                  int64_t block, int64_t d, int64_t dh) {
  int64_t s = ImageBuilder::shape(src)[0];
  Value first = arith::AddIOp::create(
      b, loc, headStart, arith::ConstantIndexOp::create(b, loc, block * d));
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get({s, dh}, b.getF32Type()), src,
      ArrayRef<OpFoldResult>{b.getIndexAttr(0), first},
      ArrayRef<OpFoldResult>{b.getIndexAttr(s), b.getIndexAttr(dh)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

Value putHeadColumns(OpBuilder &b, Location loc, Value slice, Value full,
                     Value headStart, int64_t block, int64_t d) {
  ArrayRef<int64_t> sh = ImageBuilder::shape(slice);
  Value first = arith::AddIOp::create(
      b, loc, headStart, arith::ConstantIndexOp::create(b, loc, block * d));
  return tensor::InsertSliceOp::create(
      b, loc, slice, full, ArrayRef<OpFoldResult>{b.getIndexAttr(0), first},
      ArrayRef<OpFoldResult>{b.getIndexAttr(sh[0]), b.getIndexAttr(sh[1])},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

/// Row h of `full` [H, S] as an [S] slice.
Value headRow(OpBuilder &b, Location loc, Value full, Value h) {
  int64_t s = ImageBuilder::shape(full)[1];
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get({s}, b.getF32Type()), full,
      ArrayRef<OpFoldResult>{h, b.getIndexAttr(0)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(s)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
}

/// One image of moe.attention (`residuals` empty) or moe.attention_train
/// (`residuals`: the qkv [S, 3D], output [S, D] and lse [H, S]
/// destinations; the three results are appended to `*residualResults`).
/// Returns the projected result, written into `dest`.
Value emitAttention(ImageBuilder &ib, ArrayRef<Value> in, int64_t heads,
                    Value dest, ArrayRef<Value> residuals,
                    SmallVectorImpl<Value> *residualResults = nullptr) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
  int64_t s = x[0], d = x[1], dh = d / heads;
  bool train = !residuals.empty();
  Value qkv = ib.matmul(in[0], in[1], in[2],
                        train ? residuals[0] : ib.empty({s, 3 * d}));
  double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  SmallVector<Value> init{train ? residuals[1] : ib.empty({s, d})};
  if (train)
    init.push_back(residuals[2]);
  // One loop over heads (not unrolled: the kernel stays small enough for
  // the instruction cache).
  auto headLoop = scf::ForOp::create(
      b, loc, arith::ConstantIndexOp::create(b, loc, 0),
      arith::ConstantIndexOp::create(b, loc, heads),
      arith::ConstantIndexOp::create(b, loc, 1), init,
      [&](OpBuilder &hb, Location hl, Value h, ValueRange acc) {
        ImageBuilder hib(hb, hl);
        Value headStart = arith::MulIOp::create(
            hb, hl, h, arith::ConstantIndexOp::create(hb, hl, dh));
        Value q = headColumns(hb, hl, qkv, headStart, 0, d, dh);
        Value kt = hib.transpose(headColumns(hb, hl, qkv, headStart, 1, d, dh),
                                 {1, 0});
        Value v = headColumns(hb, hl, qkv, headStart, 2, d, dh);
        Value scores = hib.matmul(q, kt, Value(), hib.empty({s, s}));
        // softmax(QK^T) V with the normalisation applied to the [S, dh]
        // output instead of the [S, S] probabilities: exp once per score,
        // one pass less over the scores.
        auto [exps, rowSum, rowMax] = hib.scaledExpRows(scores, scale);
        Value unnormalized = hib.matmul(exps, v, Value(), hib.empty({s, dh}));
        AffineMap all = hib.map(2, {0, 1}), row = hib.map(2, {0});
        Value out = hib.generic(
            {unnormalized, rowSum}, headColumns(hb, hl, acc[0], headStart, 0, d, dh),
            {all, row, all}, {kPar, kPar},
            [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::DivFOp::create(nb, nl, a[0], a[1]);
            });
        SmallVector<Value> next{
            putHeadColumns(hb, hl, out, acc[0], headStart, 0, d)};
        if (train) {
          // lse = scale * max + log(sum exp(scale * (scores - max))).
          Value lse = hib.generic(
              {rowMax, rowSum}, headRow(hb, hl, acc[1], h),
              {hib.map(1, {0}), hib.map(1, {0}), hib.map(1, {0})}, {kPar},
              [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                Value scaled = arith::MulFOp::create(
                    nb, nl, a[0],
                    arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale)));
                return arith::AddFOp::create(nb, nl, scaled,
                                             math::LogOp::create(nb, nl, a[1]));
              });
          next.push_back(tensor::InsertSliceOp::create(
              hb, hl, lse, acc[1], ArrayRef<OpFoldResult>{h, hb.getIndexAttr(0)},
              ArrayRef<OpFoldResult>{hb.getIndexAttr(1), hb.getIndexAttr(s)},
              ArrayRef<OpFoldResult>{hb.getIndexAttr(1), hb.getIndexAttr(1)}));
        }
        scf::YieldOp::create(hb, hl, next);
      });
  Value heads_out = headLoop.getResult(0);
  Value result = ib.matmul(heads_out, in[3], in[4], dest);
  if (train)
    residualResults->append({qkv, heads_out, headLoop.getResult(1)});
  return result;
}

/// One image of moe.attention_grad: in = (qkv [S, 3D], output [S, D],
/// lse [H, S], dheads [S, D]); dQ, dK and dV go into the columns of Q, K
/// and V of `dest` [S, 3D]. One head at a time: its [S, S] probabilities
/// and their gradient stay in cache, and every result column is written
/// once.
Value emitAttentionGrad(ImageBuilder &ib, ArrayRef<Value> in, int64_t heads,
                        Value dest) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[3]); // dheads [S, D]
  int64_t s = x[0], d = x[1], dh = d / heads;
  double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  auto headLoop = scf::ForOp::create(
      b, loc, arith::ConstantIndexOp::create(b, loc, 0),
      arith::ConstantIndexOp::create(b, loc, heads),
      arith::ConstantIndexOp::create(b, loc, 1), ValueRange{dest},
      [&](OpBuilder &hb, Location hl, Value h, ValueRange acc) {
        ImageBuilder hib(hb, hl);
        Value headStart = arith::MulIOp::create(
            hb, hl, h, arith::ConstantIndexOp::create(hb, hl, dh));
        auto cols = [&](Value src, int64_t block) {
          return headColumns(hb, hl, src, headStart, block, d, dh);
        };
        AffineMap all = hib.map(2, {0, 1}), row = hib.map(2, {0});
        Value q = cols(in[0], 0), k = cols(in[0], 1), v = cols(in[0], 2);
        Value o = cols(in[1], 0), dO = cols(in[3], 0);
        // P = exp(Q K^T * scale - lse): the softmax from the forward's row
        // log-sum-exp, one exp per score and no row reductions.
        Value scores = hib.matmul(q, hib.transpose(k, {1, 0}), Value(),
                                  hib.empty({s, s}));
        Value p = hib.generic(
            {scores, headRow(hb, hl, in[2], h)}, hib.empty({s, s}),
            {all, row, all}, {kPar, kPar},
            [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              Value scaled = arith::MulFOp::create(
                  nb, nl, a[0],
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale)));
              return math::ExpOp::create(nb, nl,
                                         arith::SubFOp::create(nb, nl, scaled, a[1]));
            });
        // dS = P (dO V^T - rowsum(dO O)) * scale.
        Value dP = hib.matmul(dO, hib.transpose(v, {1, 0}), Value(),
                              hib.empty({s, s}));
        Value rowDot = hib.generic(
            {dO, o}, hib.fill({s}, 0.0), {all, all, row}, {kPar, kRed},
            [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::AddFOp::create(
                  nb, nl, a[2], arith::MulFOp::create(nb, nl, a[0], a[1]));
            });
        Value dS = hib.generic(
            {p, dP, rowDot}, hib.empty({s, s}), {all, all, row, all},
            {kPar, kPar},
            [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              Value diff = arith::SubFOp::create(nb, nl, a[1], a[2]);
              Value g = arith::MulFOp::create(nb, nl, a[0], diff);
              return arith::MulFOp::create(
                  nb, nl, g,
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale)));
            });
        // dQ = dS K, dK = dS^T Q, dV = P^T dO.
        Value dq = hib.matmul(dS, k, Value(), cols(acc[0], 0));
        Value dk = hib.matmulTransposedA(dS, q, cols(acc[0], 1));
        Value dv = hib.matmulTransposedA(p, dO, cols(acc[0], 2));
        Value dqkv = putHeadColumns(hb, hl, dq, acc[0], headStart, 0, d);
        dqkv = putHeadColumns(hb, hl, dk, dqkv, headStart, 1, d);
        dqkv = putHeadColumns(hb, hl, dv, dqkv, headStart, 2, d);
        scf::YieldOp::create(hb, hl, dqkv);
      });
  return headLoop.getResult(0);
}

/// Computes one image of `op` from per-image operands `in` into the
/// per-image destinations `dests`; returns the per-image results.
///
/// `oneHot`: for dispatch/combine, whether the routing tensors come from a
/// router other than soft MoE (decided before the router was outlined).
FailureOr<SmallVector<Value>> emitImage(Operation *op, ImageBuilder &ib,
                                        ArrayRef<Value> in,
                                        ArrayRef<Value> dests, bool oneHot) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  using R = FailureOr<SmallVector<Value>>;
  auto one = [](Value v) -> R { return SmallVector<Value>{v}; };

  return llvm::TypeSwitch<Operation *, R>(op)
      .Case([&](PatchEmbedOp o) -> R {
        ArrayRef<int64_t> img = ImageBuilder::shape(in[0]); // [C, H, W]
        int64_t p = o.getPatchSize(), c = img[0];
        int64_t hp = img[1] / p, wp = img[2] / p;
        auto expanded = tensor::ExpandShapeOp::create(
            b, loc, ib.type({c, hp, p, wp, p}), in[0],
            ArrayRef<ReassociationIndices>{{0}, {1, 2}, {3, 4}});
        Value patches = ib.transpose(expanded, {1, 3, 0, 2, 4});
        Value rows = tensor::CollapseShapeOp::create(
            b, loc, ib.type({hp * wp, c * p * p}), patches,
            ArrayRef<ReassociationIndices>{{0, 1}, {2, 3, 4}});
        return one(ib.matmul(rows, in[1], in[2], dests[0]));
      })
      .Case([&](ClassTokenOp o) -> R {
        ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
        SmallVector<OpFoldResult> ones(2, b.getIndexAttr(1));
        Value d = tensor::InsertSliceOp::create(
            b, loc, in[1], dests[0],
            ArrayRef<OpFoldResult>{b.getIndexAttr(0), b.getIndexAttr(0)},
            ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(x[1])},
            ones);
        d = tensor::InsertSliceOp::create(
            b, loc, in[0], d,
            ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(0)},
            ArrayRef<OpFoldResult>{b.getIndexAttr(x[0]), b.getIndexAttr(x[1])},
            ones);
        return one(d);
      })
      .Case([&](PosEmbedOp) -> R { return one(ib.add(in[0], in[1], dests[0])); })
      .Case([&](AddOp) -> R { return one(ib.add(in[0], in[1], dests[0])); })
      .Case([&](ActivationOp o) -> R {
        return one(ib.activation(o.getKind(), in[0], dests[0]));
      })
      .Case([&](ActivationTrainOp o) -> R {
        auto [y, derivative] =
            ib.activationAndDerivative(o.getKind(), in[0], dests[0], dests[1]);
        return SmallVector<Value>{y, derivative};
      })
      .Case([&](LayerNormOp o) -> R {
        if (ImageBuilder::shape(in[0]).size() != 2)
          return o.emitOpError() << "kernel lowering expects [N, S, D] input";
        return one(ib.layerNorm(in[0], in[1], in[2],
                                o.getEpsilon().convertToDouble(), dests[0]));
      })
      .Case([&](DenseOp o) -> R {
        Value bias = o.getBias() ? in[2] : Value();
        switch (ImageBuilder::shape(in[0]).size()) {
        case 1:
          return one(ib.vecmat(in[0], in[1], bias, dests[0]));
        case 2:
          return one(ib.matmul(in[0], in[1], bias, dests[0]));
        default:
          return o.emitOpError() << "kernel lowering expects [N, K] or "
                                    "[N, S, K] input";
        }
      })
      .Case([&](ClassifierHeadOp) -> R {
        return one(ib.vecmat(in[0], in[1], in[2], dests[0]));
      })
      .Case([&](PoolOp o) -> R {
        ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
        if (o.getKind() == PoolKind::Cls) {
          Value row = tensor::ExtractSliceOp::create(
              b, loc, ib.type({x[1]}), in[0],
              ArrayRef<OpFoldResult>{b.getIndexAttr(0), b.getIndexAttr(0)},
              ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(x[1])},
              ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
          return one(ib.copy(row, dests[0]));
        }
        Value sum = ib.generic(
            {in[0]}, ib.fill(dests[0], 0.0), {ib.map(2, {1, 0}), ib.map(2, {0})},
            {kPar, kRed}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::AddFOp::create(nb, nl, a[1], a[0]);
            });
        double inv = 1.0 / x[0];
        return one(ib.elementwise(
            {sum}, ib.empty({x[1]}),
            [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::MulFOp::create(
                  nb, nl, a[0],
                  arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(inv)));
            }));
      })
      .Case([&](AttentionOp o) -> R {
        return one(emitAttention(ib, in, o.getHeads(), dests[0], {}));
      })
      .Case([&](AttentionTrainOp o) -> R {
        SmallVector<Value> residuals;
        Value y = emitAttention(ib, in, o.getHeads(), dests[0],
                                {dests[1], dests[2], dests[3]}, &residuals);
        SmallVector<Value> results{y};
        results.append(residuals);
        return results;
      })
      .Case([&](AttentionGradOp o) -> R {
        return one(emitAttentionGrad(ib, in, o.getHeads(), dests[0]));
      })
      .Case([&](RouterOp o) -> R { return emitRouter(o, ib, in, dests); })
      .Case([&](DispatchOp) -> R {
        if (oneHot)
          return one(gatherDispatch(ib, in[0], in[1], dests[0]));
        // out[e, c, d] = sum_s D[s, e, c] x[s, d]
        return one(ib.generic(
            {in[1], in[0]}, ib.fill(dests[0], 0.0),
            {ib.map(4, {3, 0, 1}), ib.map(4, {3, 2}), ib.map(4, {0, 1, 2})},
            {kPar, kPar, kPar, kRed},
            [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::AddFOp::create(
                  nb, nl, a[2], arith::MulFOp::create(nb, nl, a[0], a[1]));
            }));
      })
      .Case([&](ExpertsOp o) -> R {
        // An extra input: the one-hot dispatch tensor of the router that
        // filled the slots, so only filled slots are computed.
        if (in.size() == 6)
          return one(filledSlotExperts(o.getActivation(), ib, in, dests[0]));
        ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [E, C, D]
        int64_t hidden = ImageBuilder::shape(in[1])[2];
        Value h = ib.batchMatmul(in[0], in[1], in[2],
                                 ib.empty({x[0], x[1], hidden}));
        h = ib.activation(o.getActivation(), h, ib.empty({x[0], x[1], hidden}));
        return one(ib.batchMatmul(h, in[3], in[4], dests[0]));
      })
      .Case([&](ExpertsTrainOp o) -> R {
        // All slots: in train_step the combine's VJP reads every slot of
        // the output (dcombine), so the filled-slot kernel does not apply.
        ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [E, C, D]
        int64_t hidden = ImageBuilder::shape(in[1])[2];
        Value a = ib.batchMatmul(in[0], in[1], in[2],
                                 ib.empty({x[0], x[1], hidden}));
        auto [h, dact] = ib.activationAndDerivative(o.getActivation(), a,
                                                    dests[2], dests[1]);
        return SmallVector<Value>{ib.batchMatmul(h, in[3], in[4], dests[0]),
                                  dact, h};
      })
      .Case([&](CombineOp) -> R {
        if (oneHot)
          return one(gatherCombine(ib, in[0], in[1], dests[0]));
        // out[s, d] = sum_{e, c} C[s, e, c] y[e, c, d]
        return one(ib.generic(
            {in[1], in[0]}, ib.fill(dests[0], 0.0),
            {ib.map(4, {0, 2, 3}), ib.map(4, {2, 3, 1}), ib.map(4, {0, 1})},
            {kPar, kPar, kRed, kRed},
            [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
              return arith::AddFOp::create(
                  nb, nl, a[2], arith::MulFOp::create(nb, nl, a[0], a[1]));
            }));
      })
      .Case([&](SharedExpertOp o) -> R {
        ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
        int64_t hidden = ImageBuilder::shape(in[1])[1];
        Value h = ib.matmul(in[0], in[1], in[2], ib.empty({x[0], hidden}));
        h = ib.activation(o.getActivation(), h, ib.empty({x[0], hidden}));
        return one(ib.matmul(h, in[3], in[4], dests[0]));
      })
      .Default([&](Operation *other) -> R {
        return other->emitOpError()
               << "has no per-image kernel lowering (it is not part of "
                  "inference)";
      });
}

/// D[s, e, c] = cond ? 1 : 0 and C[s, e, c] = cond ? gate : 0, generics
/// over (s, e, c). `cond` sees the element values of `ins` (read through
/// `inMaps`) and may use linalg.index; the gate is `ins[gateInput]`.
std::pair<Value, Value>
emitRouting(ImageBuilder &ib, ValueRange ins, ArrayRef<AffineMap> inMaps,
            unsigned gateInput, Value dispatchDest, Value combineDest,
            function_ref<Value(OpBuilder &, Location, ValueRange)> cond) {
  SmallVector<AffineMap> maps(inMaps);
  maps.push_back(ib.map(3, {0, 1, 2}));
  auto route = [&](Value dest, bool weighted) {
    return ib.generic(
        ins, dest, maps, {kPar, kPar, kPar},
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value on = cond(nb, nl, a);
          Value val = weighted ? a[gateInput]
                               : arith::ConstantOp::create(
                                     nb, nl, nb.getF32FloatAttr(1.0))
                                     .getResult();
          Value zero =
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
          return arith::SelectOp::create(nb, nl, on, val, zero);
        });
  };
  return {route(dispatchDest, false), route(combineDest, true)};
}

/// Per-image router: logits, then dispatch and combine from parallel
/// counting reductions (see moe.router's description for the semantics).
FailureOr<SmallVector<Value>> emitRouter(RouterOp o, ImageBuilder &ib,
                                         ArrayRef<Value> in,
                                         ArrayRef<Value> dests) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  Value x = in[0], w = in[1];
  ArrayRef<int64_t> xs = ImageBuilder::shape(x); // [S, D]
  int64_t s = xs[0], e = o.getNumExperts();
  Value dispatchDest = dests[0], combineDest = dests[1], logitsDest = dests[2];

  if (o.getKind() == RouterKind::PerImage) {
    // One decision per image, from the mean token.
    Value sum = ib.generic({x}, ib.fill({xs[1]}, 0.0),
                           {ib.map(2, {1, 0}), ib.map(2, {0})}, {kPar, kRed},
                           [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
                             return arith::AddFOp::create(nb, nl, a[1], a[0]);
                           });
    double inv = 1.0 / s;
    Value mean = ib.elementwise(
        {sum}, ib.empty({xs[1]}),
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          return arith::MulFOp::create(
              nb, nl, a[0],
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(inv)));
        });
    Value mean2 = tensor::ExpandShapeOp::create(
        b, loc, ib.type({1, xs[1]}), mean,
        ArrayRef<ReassociationIndices>{{0, 1}});
    Value logits = ib.matmul(mean2, w, Value(), logitsDest); // [1, E]
    Value gates = ib.softmaxRows(logits, ib.empty({1, e}));
    Value rank = ib.rankAlongLastDim(gates);
    auto drop = [&](Value v) -> Value {
      return tensor::CollapseShapeOp::create(
          b, loc, ib.type({e}), v, ArrayRef<ReassociationIndices>{{0, 1}});
    };
    Value rank1 = drop(rank), gates1 = drop(gates);
    int64_t k = *o.getK();
    // Chosen experts take every token into the slot of the same index.
    auto [dispatch, combine] = emitRouting(
        ib, {rank1, gates1}, {ib.map(3, {1}), ib.map(3, {1})}, 1, dispatchDest,
        combineDest, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
          Value chosen = arith::CmpFOp::create(
              nb, nl, arith::CmpFPredicate::OLT, a[0], kk);
          Value own = arith::CmpIOp::create(
              nb, nl, arith::CmpIPredicate::eq,
              linalg::IndexOp::create(nb, nl, 0),
              linalg::IndexOp::create(nb, nl, 2));
          return arith::AndIOp::create(nb, nl, chosen, own);
        });
    return SmallVector<Value>{dispatch, combine, logits};
  }

  Value logits = ib.matmul(x, w, Value(), logitsDest); // [S, E*P]

  if (o.getKind() == RouterKind::Soft) {
    int64_t p = *o.getSlotsPerExpert();
    AffineExpr sd = b.getAffineDimExpr(0), ed = b.getAffineDimExpr(1),
               cd = b.getAffineDimExpr(2);
    AffineExpr slot = ed * p + cd;
    // Dispatch: softmax over tokens of every slot's column.
    Value colMax = ib.generic(
        {logits}, ib.fill({e * p}, -INFINITY), {ib.map(2, {0, 1}), ib.map(2, {1})},
        {kRed, kPar}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          return arith::MaxNumFOp::create(nb, nl, a[1], a[0]);
        });
    Value colSum = ib.generic(
        {logits, colMax}, ib.fill({e * p}, 0.0),
        {ib.map(2, {0, 1}), ib.map(2, {1}), ib.map(2, {1})}, {kRed, kPar},
        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value ex = math::ExpOp::create(nb, nl,
                                         arith::SubFOp::create(nb, nl, a[0], a[1]));
          return arith::AddFOp::create(nb, nl, a[2], ex);
        });
    auto normalized = [&](Value stat, Value total, AffineMap statMap,
                          Value dest) {
      return ib.generic(
          {logits, stat, total}, dest,
          {ib.mapExprs(3, {sd, slot}), statMap, statMap, ib.map(3, {0, 1, 2})},
          {kPar, kPar, kPar},
          [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
            Value ex = math::ExpOp::create(
                nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]));
            return arith::DivFOp::create(nb, nl, ex, a[2]);
          });
    };
    Value dispatch =
        normalized(colMax, colSum, ib.mapExprs(3, {slot}), dispatchDest);
    // Combine: softmax over all slots of every token's row.
    Value rowMax = ib.reduceRows(
        logits, -INFINITY,
        [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::MaxNumFOp::create(nb, nl, acc, v);
        });
    Value rowSum = ib.reduceRows(
        logits, 0.0,
        [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc, math::ExpOp::create(nb, nl, v));
        },
        {rowMax});
    Value combine = normalized(rowMax, rowSum, ib.map(3, {0}), combineDest);
    return SmallVector<Value>{dispatch, combine, logits};
  }

  // Noisy top-k (training): the gates come from logits + s * noise; the
  // logits result stays clean for the auxiliary losses.
  Value gateLogits = logits;
  if (o.getNoise()) {
    double scale = o.getNoiseStd()->convertToDouble() / e;
    gateLogits = ib.generic(
        {logits, in[2]}, ib.empty({s, e}),
        {ib.map(2, {0, 1}), ib.map(2, {0, 1}), ib.map(2, {0, 1})}, {kPar, kPar},
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value k = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(scale));
          return arith::AddFOp::create(nb, nl, a[0],
                                       arith::MulFOp::create(nb, nl, a[1], k));
        });
  }
  Value gates = ib.softmaxRows(gateLogits, ib.empty({s, e}));

  if (o.getKind() == RouterKind::ExpertChoice) {
    // Each expert takes its `cap` best tokens; slot = the token's rank.
    Value rank = ib.rankAlongFirstDim(gates);
    auto [dispatch, combine] = emitRouting(
        ib, {rank, gates}, {ib.map(3, {0, 1}), ib.map(3, {0, 1})}, 1,
        dispatchDest, combineDest,
        [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          return arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ, a[0],
                                       indexAsF32(nb, nl, 2));
        });
    return SmallVector<Value>{dispatch, combine, logits};
  }

  // Token choice and Sinkhorn: rank experts per token by `score`.
  Value score = gates;
  if (o.getKind() == RouterKind::Sinkhorn) {
    double target = static_cast<double>(s) / e;
    for (int64_t it = 0, n = *o.getSinkhornIters(); it < n; ++it) {
      // Columns sum to S / E, then rows sum to 1.
      Value colSum = ib.generic(
          {score}, ib.fill({e}, 0.0), {ib.map(2, {0, 1}), ib.map(2, {1})},
          {kRed, kPar}, [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
            return arith::AddFOp::create(nb, nl, a[1], a[0]);
          });
      score = ib.generic(
          {score, colSum}, ib.empty({s, e}),
          {ib.map(2, {0, 1}), ib.map(2, {1}), ib.map(2, {0, 1})}, {kPar, kPar},
          [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
            Value scaled = arith::MulFOp::create(
                nb, nl, a[0],
                arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(target)));
            return arith::DivFOp::create(nb, nl, scaled, a[1]);
          });
      Value rowSum = ib.reduceRows(
          score, 0.0, [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
            return arith::AddFOp::create(nb, nl, acc, v);
          });
      score = ib.generic(
          {score, rowSum}, ib.empty({s, e}),
          {ib.map(2, {0, 1}), ib.map(2, {0}), ib.map(2, {0, 1})}, {kPar, kPar},
          [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
            return arith::DivFOp::create(nb, nl, a[0], a[1]);
          });
    }
  }
  int64_t k = *o.getK();
  Value rank = ib.rankAlongLastDim(score);
  Value pos = ib.queuePosition(rank, k);
  // Chosen and within capacity: positions >= capacity match no slot.
  auto [dispatch, combine] = emitRouting(
      ib, {rank, pos, gates},
      {ib.map(3, {0, 1}), ib.map(3, {0, 1}), ib.map(3, {0, 1})}, 2,
      dispatchDest, combineDest,
      [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
        Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
        Value chosen = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT,
                                             a[0], kk);
        Value here = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                           a[1], indexAsF32(nb, nl, 2));
        return arith::AndIOp::create(nb, nl, chosen, here);
      });
  return SmallVector<Value>{dispatch, combine, logits};
}

/// Batch-level moe ops (losses and metrics) reduce over images: they
/// become whole-batch linalg, which is outlined like the backward pass.
LogicalResult decomposeBatchOp(Operation *op) {
  OpBuilder b(op);
  Location loc = op->getLoc();
  TensorBuilder tb(b, loc);
  auto id = [](OpBuilder &, Location, ValueRange a) { return a[0]; };
  auto cst = [](OpBuilder &nb, Location nl, double v) -> Value {
    return arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(v));
  };
  // Row max and sum of exp(x - max) of logits [N, K].
  auto rowStats = [&](Value logits) {
    int64_t n = TensorBuilder::shape(logits)[0];
    AffineMap all = tb.identity(2), row = tb.dims(2, {0});
    Value mx = tb.reduce({logits}, {all}, {n}, 1, id, -INFINITY, true);
    Value se = tb.reduce({logits, mx}, {all, row}, {n}, 1,
                         [](OpBuilder &nb, Location nl, ValueRange a) {
                           return math::ExpOp::create(
                                      nb, nl, arith::SubFOp::create(nb, nl, a[0], a[1]))
                               .getResult();
                         });
    return std::make_pair(mx, se);
  };
  auto isLabel = [](OpBuilder &nb, Location nl, Value label, unsigned dim) {
    Value l = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), label);
    return arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::eq,
                                 linalg::IndexOp::create(nb, nl, dim), l);
  };
  SmallVector<Value> repl;
  if (auto ce = dyn_cast<SoftmaxCrossEntropyOp>(op)) {
    Value logits = ce.getLogits(), labels = ce.getLabels();
    int64_t n = TensorBuilder::shape(logits)[0], k = TensorBuilder::shape(logits)[1];
    double a = ce.getLabelSmoothing().convertToDouble();
    auto [mx, se] = rowStats(logits);
    // sum_k target_k logit_k
    Value dot = tb.reduce({logits, labels}, {tb.identity(2), tb.dims(2, {0})}, {n}, 1,
                          [&](OpBuilder &nb, Location nl, ValueRange v) {
                            Value t = arith::SelectOp::create(
                                nb, nl, isLabel(nb, nl, v[1], 1), cst(nb, nl, 1 - a + a / k),
                                cst(nb, nl, a / k));
                            return arith::MulFOp::create(nb, nl, t, v[0]).getResult();
                          });
    AffineMap n1 = tb.identity(1);
    repl.push_back(tb.reduce({mx, se, dot}, {n1, n1, n1}, {}, 1,
                             [&](OpBuilder &nb, Location nl, ValueRange v) {
                               Value lse = arith::AddFOp::create(
                                   nb, nl, v[0], math::LogOp::create(nb, nl, v[1]));
                               Value l = arith::SubFOp::create(nb, nl, lse, v[2]);
                               return arith::MulFOp::create(nb, nl, l, cst(nb, nl, 1.0 / n))
                                   .getResult();
                             }));
  } else if (auto m = dyn_cast<ClassificationMetricsOp>(op)) {
    Value logits = m.getLogits(), labels = m.getLabels(), mask = m.getMask();
    int64_t n = TensorBuilder::shape(logits)[0];
    auto [mx, se] = rowStats(logits);
    AffineMap all = tb.identity(2), row = tb.dims(2, {0});
    Value lab = tb.reduce({logits, labels}, {all, row}, {n}, 1,
                          [&](OpBuilder &nb, Location nl, ValueRange v) {
                            return arith::SelectOp::create(nb, nl, isLabel(nb, nl, v[1], 1),
                                                           v[0], cst(nb, nl, 0.0))
                                .getResult();
                          });
    // Logits equal to the max before the label's column (first wins ties).
    Value before = tb.reduce(
        {logits, labels, mx}, {all, row, row}, {n}, 1,
        [&](OpBuilder &nb, Location nl, ValueRange v) {
          Value l = arith::IndexCastOp::create(nb, nl, nb.getIndexType(), v[1]);
          Value lt = arith::CmpIOp::create(nb, nl, arith::CmpIPredicate::ult,
                                           linalg::IndexOp::create(nb, nl, 1), l);
          Value eq = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ, v[0], v[2]);
          return arith::SelectOp::create(nb, nl, arith::AndIOp::create(nb, nl, lt, eq),
                                         cst(nb, nl, 1.0), cst(nb, nl, 0.0))
              .getResult();
        });
    SmallVector<Value> ins{mx, se, lab, before};
    if (mask)
      ins.push_back(mask);
    SmallVector<AffineMap> maps(ins.size(), tb.identity(1));
    auto weightOf = [&](OpBuilder &nb, Location nl, ValueRange v) {
      return mask ? v[4] : cst(nb, nl, 1.0);
    };
    repl.push_back(tb.reduce(ins, maps, {}, 1, [&](OpBuilder &nb, Location nl, ValueRange v) {
      Value lse = arith::AddFOp::create(nb, nl, v[0], math::LogOp::create(nb, nl, v[1]));
      return arith::MulFOp::create(nb, nl, arith::SubFOp::create(nb, nl, lse, v[2]),
                                   weightOf(nb, nl, v))
          .getResult();
    }));
    repl.push_back(tb.reduce(ins, maps, {}, 1, [&](OpBuilder &nb, Location nl, ValueRange v) {
      Value top = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ, v[2], v[0]);
      Value first = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ, v[3],
                                          cst(nb, nl, 0.0));
      Value ok = arith::AndIOp::create(nb, nl, top, first);
      return arith::SelectOp::create(nb, nl, ok, weightOf(nb, nl, v), cst(nb, nl, 0.0))
          .getResult();
    }));
  } else if (auto rc = dyn_cast<RoutingCountsOp>(op)) {
    Value d = rc.getDispatch(), mask = rc.getMask();
    ArrayRef<int64_t> ds = TensorBuilder::shape(d);
    // counts[e] = sum_{g,s,c} mask[g] D[g,s,e,c]; loops (e, g, s, c).
    SmallVector<Value> ins{d};
    SmallVector<AffineMap> maps{tb.dims(4, {1, 2, 0, 3})};
    if (mask) {
      ins.push_back(mask);
      maps.push_back(tb.dims(4, {1}));
    }
    repl.push_back(tb.reduce(ins, maps, {ds[2]}, 3, [&](OpBuilder &nb, Location nl, ValueRange v) {
      return mask ? arith::MulFOp::create(nb, nl, v[0], v[1]).getResult() : v[0];
    }));
  } else if (auto sum = dyn_cast<SumLossesOp>(op)) {
    if (sum.getTerms().empty()) {
      repl.push_back(tb.zeros({}));
    } else if (sum.getTerms().size() == 1) {
      repl.push_back(sum.getTerms()[0]);
    } else {
      SmallVector<AffineMap> maps(sum.getTerms().size(), tb.scalarMap(0));
      repl.push_back(tb.pointwise(sum.getTerms(), {}, maps,
                                  [](OpBuilder &nb, Location nl, ValueRange v) {
                                    Value acc = v[0];
                                    for (Value t : v.drop_front().drop_back())
                                      acc = arith::AddFOp::create(nb, nl, acc, t);
                                    return acc;
                                  }));
    }
  } else if (auto aux = dyn_cast<AuxLossOp>(op)) {
    auto [perGroup, unused] = buildAuxLoss(b, aux, aux->getOperands(), false);
    (void)unused;
    int64_t g = TensorBuilder::shape(perGroup)[0];
    double w = aux.getWeight().convertToDouble() / g;
    repl.push_back(tb.reduce({perGroup}, {tb.identity(1)}, {}, 1,
                             [&](OpBuilder &nb, Location nl, ValueRange v) {
                               return arith::MulFOp::create(nb, nl, v[0], cst(nb, nl, w))
                                   .getResult();
                             }));
  } else {
    return success();
  }
  op->replaceAllUsesWith(repl);
  op->erase();
  return success();
}

/// The outermost loop dimension splits a whole-batch linalg op into tiles
/// when it is parallel and every operand either indexes it as a plain
/// dimension or not at all: tiles then write disjoint output slices. Returns
/// for every operand the position of d0 in its map (-1: not indexed).
std::optional<SmallVector<int64_t>> splitPositions(linalg::LinalgOp op) {
  if (op.getNumLoops() == 0 ||
      op.getIteratorTypesArray()[0] != utils::IteratorType::parallel)
    return std::nullopt;
  SmallVector<int64_t> pos;
  for (OpOperand &operand : op->getOpOperands()) {
    AffineMap m = op.getMatchingIndexingMap(&operand);
    int64_t at = -1;
    for (auto [i, e] : llvm::enumerate(m.getResults())) {
      if (auto d = dyn_cast<AffineDimExpr>(e); d && d.getPosition() == 0) {
        if (at >= 0)
          return std::nullopt;
        at = i;
      } else if (e.isFunctionOfDim(0)) {
        return std::nullopt;
      }
    }
    if (at < 0 && op.isDpsInit(&operand))
      return std::nullopt;
    pos.push_back(at);
  }
  return pos;
}

Value sliceDim(OpBuilder &b, Location loc, Value full, int64_t dim,
               Value offset, int64_t size) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  SmallVector<int64_t> shape(type.getShape());
  shape[dim] = size;
  for (int64_t s : shape)
    sizes.push_back(b.getIndexAttr(s));
  offsets[dim] = offset;
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get(shape, type.getElementType()), full, offsets,
      sizes, strides);
}

Value insertDim(OpBuilder &b, Location loc, Value slice, Value full,
                int64_t dim, Value offset) {
  auto type = cast<RankedTensorType>(slice.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  for (int64_t s : type.getShape())
    sizes.push_back(b.getIndexAttr(s));
  offsets[dim] = offset;
  return tensor::InsertSliceOp::create(b, loc, slice, full, offsets, sizes,
                                       strides);
}

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
      for (auto [i, e] : llvm::enumerate(maps[in->getOperandNumber()].getResults())) {
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
        b, loc, RankedTensorType::get(shape, type.getElementType()),
        in->get(), groups));
    newMaps.push_back(remap(maps[in->getOperandNumber()], p));
  }
  SmallVector<int64_t> partialShape{tiles};
  llvm::append_range(partialShape, outType.getShape());
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));
  Value partialInit = linalg::FillOp::create(
                          b, loc, zero,
                          tensor::EmptyOp::create(b, loc, partialShape,
                                                  b.getF32Type())
                              .getResult())
                          .getResult(0);
  newMaps.push_back(remap(outMap, 0));
  SmallVector<IteratorType> newIters{kPar};
  for (unsigned d : order)
    newIters.push_back(iters[d]);
  auto partial = linalg::GenericOp::create(b, loc, partialInit.getType(),
                                           inputs, partialInit, newMaps,
                                           newIters);
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

/// A fill of a constant into tensor.empty whose only use is `user`'s init:
/// the kernel fills its own tile instead.
linalg::FillOp fusableFill(Value init) {
  auto fill = init.getDefiningOp<linalg::FillOp>();
  if (!fill || !fill->hasOneUse() ||
      !fill.getOutputs()[0].getDefiningOp<tensor::EmptyOp>() ||
      !fill.getInputs()[0].getDefiningOp<arith::ConstantOp>())
    return {};
  return fill;
}

/// A broadcast (a generic that only copies its one input, read through a
/// projected permutation, into every element of a tensor.empty) whose only
/// use is `user`'s init, such as a bias broadcast over [experts, images,
/// slots, features] before the matmul that accumulates into it: the kernel
/// broadcasts into its own tile instead of copying in a whole-batch tensor
/// that another kernel wrote.
linalg::GenericOp fusableBroadcast(Value init) {
  auto op = init.getDefiningOp<linalg::GenericOp>();
  if (!op || !op->hasOneUse() || op.getNumDpsInputs() != 1 ||
      op.getNumDpsInits() != 1 || op.getNumReductionLoops() != 0 ||
      !isa<RankedTensorType>(op.getDpsInputs()[0].getType()) ||
      !op.getDpsInits()[0].getDefiningOp<tensor::EmptyOp>())
    return {};
  AffineMap in = op.getMatchingIndexingMap(op.getDpsInputOperand(0));
  AffineMap out = op.getMatchingIndexingMap(op.getDpsInitOperand(0));
  Block &body = op->getRegion(0).front();
  auto yield = dyn_cast<linalg::YieldOp>(body.getTerminator());
  if (!out.isIdentity() || !in.isProjectedPermutation() ||
      body.getOperations().size() != 1 || !yield ||
      yield->getOperand(0) != body.getArgument(0))
    return {};
  return op;
}

struct LowerToKernelsPass
    : public moec::impl::LowerToKernelsPassBase<LowerToKernelsPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto entryFn = module.lookupSymbol<func::FuncOp>(entry);
    if (!entryFn) {
      module.emitError() << "no entry function '" << entry << "'";
      return signalPassFailure();
    }
    // The plan keeps only the entry; other entry points are lowered in
    // their own compilation.
    for (auto fn : llvm::make_early_inc_range(module.getOps<func::FuncOp>()))
      if (fn != entryFn)
        fn.erase();

    int64_t batch = -1;
    for (Type t : entryFn.getArgumentTypes()) {
      auto rt = dyn_cast<RankedTensorType>(t);
      if (!rt || !rt.hasStaticShape() ||
          !(rt.getElementType().isF32() || rt.getElementType().isInteger(32))) {
        entryFn.emitError() << "expects statically shaped f32 or i32 tensor "
                               "arguments, got "
                            << t;
        return signalPassFailure();
      }
      if (batch < 0 && rt.getRank() > 0)
        batch = rt.getDimSize(0);
    }
    if (batch <= 0) {
      entryFn.emitError() << "expects an images argument";
      return signalPassFailure();
    }

    // Losses and metrics become whole-batch linalg first.
    SmallVector<Operation *> batchOps;
    for (Operation &op : entryFn.getBody().front())
      if (isa<SoftmaxCrossEntropyOp, AuxLossOp, SumLossesOp,
              ClassificationMetricsOp, RoutingCountsOp>(op))
        batchOps.push_back(&op);
    for (Operation *op : batchOps)
      if (failed(decomposeBatchOp(op)))
        return signalPassFailure();

    // Sums over the batch (weight gradients): per tile of images, then
    // over the tiles.
    if (splitBatchReductions) {
      int64_t tiles = batch / tileSize(batch);
      SmallVector<linalg::GenericOp> generics(
          entryFn.getBody().front().getOps<linalg::GenericOp>());
      OpBuilder sb(module.getContext());
      for (linalg::GenericOp op : generics)
        (void)splitBatchReduction(op, batch, tiles, sb);
    }

    // Work: moe compute ops (per-image kernels) and linalg ops (whole-batch
    // kernels), in program order. A fill or a broadcast that only
    // initializes one linalg op is done inside that op's kernel.
    SmallVector<Operation *> work;
    for (Operation &op : entryFn.getBody().front()) {
      if (isa<MoEDialect>(op.getDialect()) && !isa<ParamOp>(op))
        work.push_back(&op);
      if (isa<linalg::FillOp, linalg::GenericOp>(op) &&
          op.getNumResults() == 1 &&
          (fusableFill(op.getResult(0)) || fusableBroadcast(op.getResult(0)))) {
        OpOperand &use = *op.getUses().begin();
        auto lop = dyn_cast<linalg::LinalgOp>(use.getOwner());
        if (lop && lop.isDpsInit(&use))
          continue;
      }
      if (isa<linalg::LinalgOp>(op))
        work.push_back(&op);
    }

    // Routers are outlined before their dispatch/combine users: look at
    // the routing kinds first.
    DenseSet<Operation *> oneHot;
    for (Operation *op : work) {
      if (auto d = dyn_cast<DispatchOp>(op); d && isHardRouted(d.getDispatch()))
        oneHot.insert(op);
      if (auto c = dyn_cast<CombineOp>(op); c && isHardRouted(c.getCombine()))
        oneHot.insert(op);
    }

    // Experts whose slots come from a one-hot dispatch and whose outputs go
    // only to the combine of the same router: unfilled slots are never
    // read with a nonzero weight, so the kernel computes filled slots only.
    DenseSet<Operation *> filledSlotsOnly;
    // (In train_step the combine's VJP also reads the output, so there the
    // experts, moe.experts_train, run over all slots.)
    for (Operation *op : work) {
      auto experts = dyn_cast<ExpertsOp>(op);
      if (!experts || !experts->hasOneUse())
        continue;
      auto dispatch = experts.getInput().getDefiningOp<DispatchOp>();
      auto combine = dyn_cast<CombineOp>(*experts->getUsers().begin());
      if (!dispatch || !combine || !oneHot.contains(dispatch))
        continue;
      auto router = dispatch.getDispatch().getDefiningOp<RouterOp>();
      if (router && combine.getCombine() == router.getCombine() &&
          isPrefixFilled(router.getKind()))
        filledSlotsOnly.insert(op);
    }

    // Consecutive whole-batch linalg ops split the same way share one
    // kernel (their tiles run back to back, in cache); moe ops get their
    // per-image kernels.
    OpBuilder b(module.getContext());
    unsigned index = 0;
    SmallVector<linalg::LinalgOp> group;
    SmallVector<Split> splits;
    auto flush = [&]() -> LogicalResult {
      if (group.empty())
        return success();
      LogicalResult done = outlineGroup(group, splits, index++, b);
      group.clear();
      splits.clear();
      return done;
    };
    for (Operation *op : work) {
      auto lop = dyn_cast<linalg::LinalgOp>(op);
      if (!lop) {
        if (failed(flush()) ||
            failed(outline(op, index++, batch, oneHot.contains(op),
                           filledSlotsOnly.contains(op), b)))
          return signalPassFailure();
        continue;
      }
      Split sp = splitOf(lop);
      // The kernel call replaces the group where its last op was: nothing
      // between its ops (a view, say) may use a result of the group.
      bool between = false;
      if (!group.empty())
        for (Operation *it = group.back()->getNextNode(); it && it != op;
             it = it->getNextNode())
          for (Value v : it->getOperands())
            if (auto r = dyn_cast<OpResult>(v))
              between |= llvm::is_contained(group, r.getOwner());
      if (!fuseKernels || between || !canJoin(group, splits, lop, sp))
        if (failed(flush()))
          return signalPassFailure();
      group.push_back(lop);
      splits.push_back(sp);
    }
    if (failed(flush()))
      return signalPassFailure();
    // What the kernels absorbed (fused fills, their constants and empties).
    SmallVector<Operation *> all;
    for (Operation &op : entryFn.getBody().front().without_terminator())
      all.push_back(&op);
    for (Operation *op : llvm::reverse(all))
      if (op->use_empty() && isMemoryEffectFree(op) && !isa<func::CallOp>(op))
        op->erase();
  }

  /// How a whole-batch linalg op is split: the position of loop dimension
  /// 0 in every operand's map (-1: not indexed), its extent and tile size.
  struct Split {
    std::optional<SmallVector<int64_t>> pos;
    int64_t extent = 1, tile = 1;
    int64_t tiles() const { return extent / tile; }
  };
  static Split splitOf(linalg::LinalgOp op) {
    Split sp;
    sp.pos = splitPositions(op);
    if (!sp.pos)
      return sp;
    sp.extent = op.getStaticLoopRanges()[0];
    sp.tile = tileSize(sp.extent);
    return sp;
  }

  /// The smallest divisor of `extent` that splits it into at most
  /// kMaxTiles tiles.
  static int64_t tileSize(int64_t extent) {
    for (int64_t t = 1; t < extent; ++t)
      if (extent % t == 0 && extent / t <= kMaxTiles)
        return t;
    return extent;
  }

  /// Whether `op` can join the kernel of `group`: both split the same way,
  /// and every value it reads from the group is read at the tile the group
  /// wrote (loop dimension 0 at the same position), so a tile of the fused
  /// kernel computes `op`'s tile right after its producers', in cache.
  static bool canJoin(ArrayRef<linalg::LinalgOp> group,
                      ArrayRef<Split> splits, linalg::LinalgOp op,
                      const Split &sp) {
    if (group.empty() || !sp.pos || !splits.front().pos ||
        sp.extent != splits.front().extent || sp.tile != splits.front().tile ||
        sp.tiles() == 1)
      return false;
    for (OpOperand &operand : op->getOpOperands()) {
      // A broadcast done in the kernel reads its input whole-batch.
      if (linalg::GenericOp bcast = fusableBroadcast(operand.get()))
        if (auto in = dyn_cast<OpResult>(bcast.getDpsInputs()[0]);
            in && llvm::is_contained(group, in.getOwner()))
          return false;
      auto res = dyn_cast<OpResult>(operand.get());
      if (!res)
        continue;
      auto it = llvm::find(group, res.getOwner());
      if (it == group.end())
        continue;
      if (op.isDpsInit(&operand))
        return false;
      const Split &producer = splits[it - group.begin()];
      unsigned producerOperand =
          cast<linalg::LinalgOp>(res.getOwner()).getNumDpsInputs() +
          res.getResultNumber();
      if ((*producer.pos)[producerOperand] !=
              (*sp.pos)[operand.getOperandNumber()] ||
          (*sp.pos)[operand.getOperandNumber()] < 0)
        return false;
    }
    return true;
  }

  /// Outlines a group of whole-batch linalg ops into one kernel over tiles
  /// of their outermost loop dimension ("fixed" parallelism); one op that
  /// cannot be split runs as a single tile. Every result is a destination.
  LogicalResult outlineGroup(ArrayRef<linalg::LinalgOp> group,
                             ArrayRef<Split> splits, unsigned index,
                             OpBuilder &b) {
    ModuleOp module = getOperation();
    linalg::LinalgOp first = group.front();
    Location loc = first->getLoc();
    enum class InitKind { Fresh, Fill, Broadcast, InPlace, CopyIn };
    DenseSet<Operation *> members;
    for (linalg::LinalgOp op : group)
      members.insert(op);

    // External tensor operands (deduplicated), scalar constants, and per
    // result its init kind.
    SmallVector<Value> operands;
    DenseMap<Value, unsigned> operandIndex;
    SmallVector<Operation *> scalarConstants;
    auto addOperand = [&](Value v) {
      auto [it, inserted] = operandIndex.try_emplace(v, operands.size());
      if (inserted)
        operands.push_back(v);
      return it->second;
    };
    SmallVector<InitKind> initKinds;
    SmallVector<Value> results, inits;
    for (linalg::LinalgOp op : group) {
      for (Value in : op.getDpsInputs()) {
        if (auto r = dyn_cast<OpResult>(in); r && members.contains(r.getOwner()))
          continue;
        if (isa<RankedTensorType>(in.getType())) {
          addOperand(in);
          continue;
        }
        Operation *def = in.getDefiningOp();
        if (!def || !def->hasTrait<OpTrait::ConstantLike>())
          return op->emitOpError() << "kernel lowering expects scalar inputs "
                                      "to be constants";
        scalarConstants.push_back(def);
      }
      for (Value init : op.getDpsInits()) {
        inits.push_back(init);
        if (fusableFill(init)) {
          initKinds.push_back(InitKind::Fill);
        } else if (linalg::GenericOp bcast = fusableBroadcast(init)) {
          initKinds.push_back(InitKind::Broadcast);
          addOperand(bcast.getDpsInputs()[0]);
        } else if (init.getDefiningOp<ParamOp>()) {
          initKinds.push_back(InitKind::InPlace);
        } else if (init.getDefiningOp<tensor::EmptyOp>()) {
          initKinds.push_back(InitKind::Fresh);
        } else {
          initKinds.push_back(InitKind::CopyIn);
          addOperand(init);
        }
      }
      llvm::append_range(results, op->getResults());
    }
    unsigned numOperands = operands.size(), numResults = results.size();
    int64_t tile = splits.front().tile, tiles = splits.front().tiles();

    SmallVector<Type> argTypes(ValueRange(operands).getTypes());
    llvm::append_range(argTypes, ValueRange(results).getTypes());
    argTypes.append({b.getIndexType(), b.getIndexType()});
    std::string name = kernelPrefix + std::to_string(index);
    b.setInsertionPointToEnd(module.getBody());
    auto kernel = func::FuncOp::create(
        b, loc, name,
        b.getFunctionType(argTypes, ValueRange(results).getTypes()));
    kernel->setAttr("moe.kernel", b.getUnitAttr());
    Block *body = kernel.addEntryBlock();
    b.setInsertionPointToStart(body);
    ValueRange args = body->getArguments();
    Value begin = args[numOperands + numResults];
    Value end = args[numOperands + numResults + 1];
    Value one = arith::ConstantIndexOp::create(b, loc, 1);
    SmallVector<Value> dests(args.slice(numOperands, numResults));

    auto loop = scf::ForOp::create(
        b, loc, begin, end, one, dests,
        [&](OpBuilder &lb, Location ll, Value t, ValueRange acc) {
          Value offset = arith::MulIOp::create(
              lb, ll, t, arith::ConstantIndexOp::create(lb, ll, tile));
          IRMapping mapping;
          for (Operation *c : scalarConstants)
            if (!mapping.contains(c->getResult(0)))
              mapping.map(c->getResult(0), lb.clone(*c)->getResult(0));
          SmallVector<Value> tileResults;
          unsigned resultBase = 0;
          for (auto [groupOp, groupSplit] : llvm::zip(group, splits)) {
            linalg::LinalgOp op = groupOp;
            const Split &sp = groupSplit;
            auto piece = [&](Value full, unsigned operandNumber) -> Value {
              if (!sp.pos || (*sp.pos)[operandNumber] < 0)
                return full;
              return sliceDim(lb, ll, full, (*sp.pos)[operandNumber], offset,
                              tile);
            };
            unsigned numInputs = op.getNumDpsInputs();
            for (unsigned i = 0; i < numInputs; ++i) {
              Value in = op->getOperand(i);
              if (!isa<RankedTensorType>(in.getType()))
                continue;
              auto r = dyn_cast<OpResult>(in);
              if (r && members.contains(r.getOwner()))
                continue; // mapped to the producer's tile result already
              mapping.map(in, piece(args[operandIndex.lookup(in)], i));
            }
            SmallVector<Value> tileDests;
            for (unsigned r = 0; r < op->getNumResults(); ++r) {
              unsigned g = resultBase + r, operandNumber = numInputs + r;
              Value d = piece(acc[g], operandNumber);
              tileDests.push_back(d);
              Value init = inits[g];
              switch (initKinds[g]) {
              case InitKind::Fill: {
                auto fill = init.getDefiningOp<linalg::FillOp>();
                Operation *c = lb.clone(*fill.getInputs()[0].getDefiningOp());
                d = linalg::FillOp::create(lb, ll, c->getResult(0), d)
                        .getResult(0);
                break;
              }
              case InitKind::Broadcast: {
                // The input is sliced where it reads the split dimension
                // (the output map is the identity, so the tile's loop
                // dimension is its position in the init).
                auto bcast = fusableBroadcast(init);
                Value in = bcast.getDpsInputs()[0];
                Value piece = args[operandIndex.lookup(in)];
                int64_t at = sp.pos ? (*sp.pos)[operandNumber] : -1;
                AffineMap inMap =
                    bcast.getMatchingIndexingMap(bcast.getDpsInputOperand(0));
                if (at >= 0)
                  if (std::optional<unsigned> q = inMap.getResultPosition(
                          lb.getAffineDimExpr(at)))
                    piece = sliceDim(lb, ll, piece, *q, offset, tile);
                IRMapping bm;
                bm.map(in, piece);
                bm.map(bcast.getDpsInits()[0], d);
                Operation *c = lb.clone(*bcast, bm);
                c->getResult(0).setType(d.getType());
                d = c->getResult(0);
                break;
              }
              case InitKind::CopyIn:
                d = linalg::CopyOp::create(
                        lb, ll, piece(args[operandIndex.lookup(init)], operandNumber), d)
                        .getResult(0);
                break;
              default:
                break;
              }
              mapping.map(init, d);
            }
            Operation *tiled = lb.clone(*op, mapping);
            for (unsigned r = 0; r < op->getNumResults(); ++r) {
              tiled->getResult(r).setType(tileDests[r].getType());
              mapping.map(op->getResult(r), tiled->getResult(r));
              unsigned operandNumber = numInputs + r;
              tileResults.push_back(
                  !sp.pos ? tiled->getResult(r)
                          : insertDim(lb, ll, tiled->getResult(r),
                                      acc[resultBase + r],
                                      (*sp.pos)[operandNumber], offset));
            }
            resultBase += op->getNumResults();
          }
          scf::YieldOp::create(lb, ll, tileResults);
        });
    func::ReturnOp::create(b, loc, loop.getResults());

    b.setInsertionPoint(group.back());
    SmallVector<Value> callArgs(operands);
    for (auto [g, result] : llvm::enumerate(results)) {
      if (initKinds[g] == InitKind::InPlace) {
        callArgs.push_back(inits[g]);
        continue;
      }
      auto rt = cast<RankedTensorType>(result.getType());
      callArgs.push_back(
          tensor::EmptyOp::create(b, loc, rt.getShape(), rt.getElementType()));
    }
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, 0));
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, tiles));
    auto call = func::CallOp::create(b, loc, kernel, callArgs);
    call->setAttr("moe.op", b.getStringAttr(first->getName().getStringRef()));
    std::string role;
    if (auto nameLoc = dyn_cast<NameLoc>(loc))
      role = nameLoc.getName().str();
    if (auto n = first->getAttrOfType<StringAttr>("moe.name"))
      role = n.str();
    call->setAttr("moe.name", b.getStringAttr(role));
    call->setAttr("moe.parallel", b.getStringAttr("fixed"));
    call->setAttr("moe.tiles", b.getI64IntegerAttr(tiles));
    if (group.size() > 1)
      call->setAttr("moe.fused", b.getI64IntegerAttr(group.size()));
    for (auto [g, result] : llvm::enumerate(results))
      result.replaceAllUsesWith(call.getResult(g));
    for (linalg::LinalgOp op : llvm::reverse(group))
      op->erase();
    return success();
  }

  /// Whole-batch kernels split into at most this many tiles.
  static constexpr int64_t kMaxTiles = 16;

  LogicalResult outline(Operation *op, unsigned index, int64_t batch,
                        bool oneHot, bool filledSlotsOnly, OpBuilder &b) {
    ModuleOp module = getOperation();
    Location loc = op->getLoc();
    for (Type t : llvm::concat<Type>(op->getOperandTypes(),
                                     op->getResultTypes())) {
      auto rt = dyn_cast<RankedTensorType>(t);
      if (!rt || !rt.hasStaticShape() || !rt.getElementType().isF32())
        return op->emitOpError() << "kernel lowering expects statically "
                                    "shaped f32 tensors, got "
                                 << t;
    }

    // Operands: the op's, plus for filled-slot experts the routing tensor
    // (operand 1 of the dispatch kernel call that produced the slots).
    SmallVector<Value> operands(op->getOperands());
    if (filledSlotsOnly) {
      auto dispatchCall = op->getOperand(0).getDefiningOp<func::CallOp>();
      operands.push_back(dispatchCall.getOperand(1));
    }
    // Kernel signature: operands, destinations, begin, end.
    SmallVector<Type> argTypes(ValueRange(operands).getTypes());
    llvm::append_range(argTypes, op->getResultTypes());
    argTypes.append({b.getIndexType(), b.getIndexType()});
    std::string name = kernelPrefix + std::to_string(index);
    b.setInsertionPointToEnd(module.getBody());
    auto kernel = func::FuncOp::create(
        b, loc, name, b.getFunctionType(argTypes, op->getResultTypes()));
    kernel->setAttr("moe.kernel", b.getUnitAttr());
    Block *body = kernel.addEntryBlock();
    b.setInsertionPointToStart(body);

    unsigned numOperands = operands.size();
    unsigned numResults = op->getNumResults();
    ValueRange args = body->getArguments();
    Value begin = args[numOperands + numResults];
    Value end = args[numOperands + numResults + 1];
    Value step = arith::ConstantIndexOp::create(b, loc, 1);
    SmallVector<Value> dests(args.slice(numOperands, numResults));

    LogicalResult status = success();
    auto loop = scf::ForOp::create(
        b, loc, begin, end, step, dests,
        [&](OpBuilder &lb, Location ll, Value g, ValueRange acc) {
          SmallVector<Value> ins, imageDests;
          for (auto [i, operand] : llvm::enumerate(operands)) {
            // The routing tensor [G, S, E, C] is per image along dim 0.
            int64_t dim = i >= op->getNumOperands()
                              ? 0
                              : imageDim(op, operand, /*isResult=*/false);
            ins.push_back(dim < 0 ? args[i]
                                  : sliceImage(lb, ll, args[i], dim, g));
          }
          for (auto [i, result] : llvm::enumerate(op->getResults()))
            imageDests.push_back(
                sliceImage(lb, ll, acc[i], imageDim(op, result, true), g));
          ImageBuilder ib(lb, ll);
          FailureOr<SmallVector<Value>> images =
              emitImage(op, ib, ins, imageDests, oneHot);
          SmallVector<Value> yielded;
          if (failed(images)) {
            status = failure();
            yielded.assign(acc.begin(), acc.end());
          } else {
            for (auto [i, result] : llvm::enumerate(op->getResults()))
              yielded.push_back(insertImage(lb, ll, (*images)[i], acc[i],
                                            imageDim(op, result, true), g));
          }
          scf::YieldOp::create(lb, ll, yielded);
        });
    func::ReturnOp::create(b, loc, loop.getResults());
    if (failed(status))
      return failure();

    // The plan: a call writing into fresh destinations.
    b.setInsertionPoint(op);
    SmallVector<Value> callArgs(operands);
    for (Type t : op->getResultTypes()) {
      auto rt = cast<RankedTensorType>(t);
      callArgs.push_back(
          tensor::EmptyOp::create(b, loc, rt.getShape(), rt.getElementType()));
    }
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, 0));
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, batch));
    auto call = func::CallOp::create(b, loc, kernel, callArgs);
    call->setAttr("moe.op", b.getStringAttr(op->getName().getStringRef()));
    std::string role;
    if (auto nameLoc = dyn_cast<NameLoc>(loc))
      role = nameLoc.getName().str();
    call->setAttr("moe.name", b.getStringAttr(role));
    call->setAttr("moe.parallel", b.getStringAttr("images"));
    call->setAttr("moe.tiles", b.getI64IntegerAttr(batch));
    if (Attribute flops = op->getAttr("moe.flops"))
      call->setAttr("moe.flops", flops);
    op->replaceAllUsesWith(call.getResults());
    op->erase();
    return success();
  }
};
} // namespace
