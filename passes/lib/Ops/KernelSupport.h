//===- KernelSupport.h - shared pieces of the moe kernel models -*- C++ -*-===//
//
// What the external models of passes/lib/Ops/ share: ImageBuilder (small
// helpers over linalg on static f32 tensors for one image of a kernel),
// slicing helpers, and the templates that attach a kernel lowering
// (moe::ImageKernelOpInterface) and a cost model (moe::CostOpInterface)
// to an op from plain functions. Private to the passes library.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_LIB_OPS_KERNELSUPPORT_H
#define MOEC_PASSES_LIB_OPS_KERNELSUPPORT_H

#include "moec/Dialect/MoE/MoEAutodiff.h"
#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Builders.h"

#include <cmath>
#include <utility>

namespace moec::kernels {
using namespace mlir;
using namespace moec::moe;
using utils::IteratorType;

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
  Value fill(ArrayRef<int64_t> shape, double v) {
    return fill(empty(shape), v);
  }

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
  Value
  elementwise(ValueRange ins, Value dest,
              function_ref<Value(OpBuilder &, Location, ValueRange)> body) {
    unsigned rank = shape(dest).size();
    SmallVector<AffineMap> maps(ins.size() + 1, identity(rank));
    SmallVector<IteratorType> iters(rank, kPar);
    return generic(ins, dest, maps, iters, body);
  }

  Value add(Value x, Value y, Value dest) {
    return elementwise({x, y}, dest,
                       [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
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
    return generic(
        {a, w}, fill(dest, 0.0),
        {map(3, {2, 0}), map(3, {2, 1}), map(3, {0, 1})}, {kPar, kPar, kRed},
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
    Value mean = elementwise(
        {total}, empty({shape(x)[0]}),
        [&](OpBuilder &nb, Location nl, ValueRange a) {
          return arith::MulFOp::create(nb, nl, a[0],
                                       arith::ConstantOp::create(
                                           nb, nl, nb.getF32FloatAttr(1.0 / d)))
              .getResult();
        });
    Value sq =
        reduceRows(x, 0.0,
                   [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
                     return arith::AddFOp::create(
                         nb, nl, acc, arith::MulFOp::create(nb, nl, v, v));
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
    Value rowMax =
        reduceRows(x, -INFINITY,
                   [](OpBuilder &nb, Location nl, Value e, Value acc) -> Value {
                     return arith::MaxNumFOp::create(nb, nl, acc, e);
                   });
    Value exps = generic(
        {x, rowMax}, empty(s), {map(2, {0, 1}), map(2, {0}), map(2, {0, 1})},
        {kPar, kPar}, [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value centered = arith::SubFOp::create(nb, nl, a[0], a[1]);
          return math::ExpOp::create(
              nb, nl,
              arith::MulFOp::create(nb, nl, centered,
                                    arith::ConstantOp::create(
                                        nb, nl, nb.getF32FloatAttr(scale))));
        });
    Value rowSum = reduceRows(
        exps, 0.0, [](OpBuilder &nb, Location nl, Value e, Value acc) -> Value {
          return arith::AddFOp::create(nb, nl, acc, e);
        });
    return {exps, rowSum, rowMax};
  }

  /// dest = softmax over the last dim of x [M, N] (router gates).
  Value softmaxRows(Value x, Value dest) {
    Value mx =
        reduceRows(x, -INFINITY,
                   [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
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

  /// rank[s, e] = #{e2 : score[s, e2] beats score[s, e]}: 0 for each
  /// token's best expert (moe::buildRank, ties to the lower index).
  Value rankAlongLastDim(Value score) { return buildRank(b, loc, score, 1); }

  /// rank[s, e] = #{s2 : score[s2, e] beats score[s, e]}.
  Value rankAlongFirstDim(Value score) { return buildRank(b, loc, score, 0); }

  /// For top-k routing with expert ranks `rank` [S, E]: the position of token
  /// s in expert e's queue, where all first choices come before all second
  /// choices, and so on (V-MoE's priority); within a round the tokens come
  /// in token order, or, given `priority` [S] (Batch Prioritized Routing),
  /// in order of decreasing priority, ties in token order.
  Value queuePosition(Value rank, int64_t k, Value priority = Value()) {
    ArrayRef<int64_t> s = shape(rank);
    SmallVector<Value> ins{rank, rank};
    SmallVector<AffineMap> maps{map(3, {2, 1}), map(3, {0, 1})};
    if (priority) {
      ins.append({priority, priority});
      maps.append({map(3, {2}), map(3, {0})});
    }
    maps.push_back(map(3, {0, 1}));
    return generic(
        ins, fill(s, 0.0), maps, {kPar, kPar, kRed},
        [&](OpBuilder &nb, Location nl, ValueRange a) -> Value {
          Value kk = arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(k));
          Value chosen = arith::CmpFOp::create(
              nb, nl, arith::CmpFPredicate::OLT, a[0], kk);
          Value mine = linalg::IndexOp::create(nb, nl, 0);
          Value other = linalg::IndexOp::create(nb, nl, 2);
          Value lt = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT,
                                           a[0], a[1]);
          Value eq = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OEQ,
                                           a[0], a[1]);
          Value before = arith::CmpIOp::create(
              nb, nl, arith::CmpIPredicate::ult, other, mine);
          if (priority) {
            // Token `other` goes first if its priority is higher, or equal
            // and it comes first.
            Value higher = arith::CmpFOp::create(
                nb, nl, arith::CmpFPredicate::OGT, a[2], a[3]);
            Value same = arith::CmpFOp::create(
                nb, nl, arith::CmpFPredicate::OEQ, a[2], a[3]);
            before = arith::OrIOp::create(
                nb, nl, higher, arith::AndIOp::create(nb, nl, same, before));
          }
          Value earlier = arith::OrIOp::create(
              nb, nl, lt, arith::AndIOp::create(nb, nl, eq, before));
          Value counts = arith::AndIOp::create(nb, nl, chosen, earlier);
          Value one =
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(1.0));
          Value zero =
              arith::ConstantOp::create(nb, nl, nb.getF32FloatAttr(0.0));
          return arith::AddFOp::create(
              nb, nl, a.back(),
              arith::SelectOp::create(nb, nl, counts, one, zero));
        });
  }

  /// The largest entry of each row of x [M, N]: a token's top gate, its
  /// priority under Batch Prioritized Routing.
  Value rowMax(Value x) {
    return reduceRows(x, -INFINITY,
                      [](OpBuilder &nb, Location nl, Value v, Value acc) -> Value {
                        return arith::MaxNumFOp::create(nb, nl, acc, v);
                      });
  }

  OpBuilder &b;
  Location loc;
  Type f32;
};

using KernelResults = FailureOr<SmallVector<Value>>;

/// One result.
inline KernelResults one(Value v) { return SmallVector<Value>{v}; }

/// linalg.index `dim` as an f32 (ranks and slots are counted in f32).
Value indexAsF32(OpBuilder &nb, Location nl, unsigned dim);

/// A non-negative integral f32 as an index.
Value toIndex(OpBuilder &nb, Location nl, Value f);

/// A slice of rank-reduced shape `type` of `src` at `offsets` with `sizes`
/// (unit strides).
Value sliceOf(OpBuilder &b, Location loc, Value src,
              ArrayRef<OpFoldResult> offsets, ArrayRef<int64_t> sizes,
              ArrayRef<int64_t> type);

/// `full` with `row` [D] written at `offsets` (the last dimension whole).
Value putRow(OpBuilder &b, Location loc, Value row, Value full,
             ArrayRef<OpFoldResult> offsets);

/// for i in [0, n): state = body(i, state), as an scf.for over tensors.
Value loopOver(OpBuilder &b, Location loc, int64_t n, Value init,
               function_ref<Value(OpBuilder &, Location, Value, Value)> body);

/// Elements of a statically shaped tensor value (0 if dynamic).
int64_t numel(Value v);
/// Extent `i` of a tensor value (0 if dynamic).
int64_t dimOf(Value v, int64_t i);

//===----------------------------------------------------------------------===//
// Attaching models from functions
//===----------------------------------------------------------------------===//

/// The images of an activation operand or result are along dimension 0;
/// parameters (moe.param operands) are read whole by every image.
inline int64_t imagesAlongFirstDim(Operation *, Value v, bool isResult) {
  return !isResult && v.getDefiningOp<ParamOp>() ? -1 : 0;
}

template <typename OpT>
using KernelFn = KernelResults (*)(OpT op, ImageBuilder &ib, ArrayRef<Value> in,
                                   ArrayRef<Value> dests,
                                   const ImageKernelOptions &options);
using ImageDimFn = int64_t (*)(Operation *op, Value v, bool isResult);

/// moe::ImageKernelOpInterface for OpT from a kernel function.
template <typename OpT, KernelFn<OpT> Build, ImageDimFn Dim>
struct KernelModel
    : public ImageKernelOpInterface::ExternalModel<KernelModel<OpT, Build, Dim>,
                                                   OpT> {
  int64_t getImageDim(Operation *op, Value value, bool isResult) const {
    return Dim(op, value, isResult);
  }
  KernelResults buildImageKernel(Operation *op, OpBuilder &b, Location loc,
                                 ArrayRef<Value> inputs, ArrayRef<Value> dests,
                                 const ImageKernelOptions &options) const {
    ImageBuilder ib(b, loc);
    return Build(cast<OpT>(op), ib, inputs, dests, options);
  }
};

template <typename OpT> using FlopsFn = int64_t (*)(OpT op);
template <typename OpT> using InactiveFn = double (*)(OpT op);

template <typename OpT> double noInactiveParameters(OpT) { return 0.0; }

/// moe::CostOpInterface for OpT from its FLOP formula (and, for experts,
/// the parameters a token does not use).
template <typename OpT, FlopsFn<OpT> Flops,
          InactiveFn<OpT> Inactive = noInactiveParameters<OpT>>
struct CostModel
    : public CostOpInterface::ExternalModel<CostModel<OpT, Flops, Inactive>,
                                            OpT> {
  int64_t estimateFlops(Operation *op) const { return Flops(cast<OpT>(op)); }
  double estimateInactiveParameters(Operation *op) const {
    return Inactive(cast<OpT>(op));
  }
};

/// Attaches both models to OpT.
template <typename OpT, KernelFn<OpT> Build, FlopsFn<OpT> Flops,
          ImageDimFn Dim = imagesAlongFirstDim>
void attachKernelAndCost(MLIRContext *ctx) {
  OpT::template attachInterface<KernelModel<OpT, Build, Dim>>(*ctx);
  OpT::template attachInterface<CostModel<OpT, Flops>>(*ctx);
}

/// A router's logits of one image: x [S, D] * w, or for per-image routing
/// the mean token's (with `classToken`, token 0's), [1, E] (RoutingOps.cpp).
Value routerLogits(ImageBuilder &ib, RouterKind kind, Value x, Value w,
                   Value dest, bool classToken = false);

/// logits + scale * noise, element-wise ([S, E]): noisy top-k's gate logits.
Value noisyLogits(ImageBuilder &ib, Value logits, Value noise, double scale);

/// The logits a router's gates are the softmax of: `logits`, or in training
/// with a `noise` operand logits + noise_std / E * noise.
template <typename OpT>
Value gateLogits(OpT o, ImageBuilder &ib, Value logits, Value noise) {
  if (!noise)
    return logits;
  return noisyLogits(ib, logits, noise,
                     o.getNoiseStd()->convertToDouble() / o.getNumExperts());
}

/// The Sinkhorn router's scores from its gates [S, E]: `iters` rounds of
/// scaling the columns to sum S / E and the rows to sum 1 (RoutingOps.cpp).
Value sinkhornScores(ImageBuilder &ib, Value gates, int64_t iters);

/// How moe-lower-to-kernels lowers `op`, from the routers its operands come
/// from; taken for every op before any is outlined (RoutingOps.cpp).
ImageKernelOptions planImageKernel(Operation *op);

//===----------------------------------------------------------------------===//
// The op families (one file each)
//===----------------------------------------------------------------------===//

/// patch_embed, class_token, pos_embed, add, activation(_train),
/// layer_norm, dense, pool, classifier_head (ViTOps.cpp).
void attachViTOpModels(MLIRContext *ctx);
/// attention, attention_train, attention_grad (AttentionOps.cpp).
void attachAttentionOpModels(MLIRContext *ctx);
/// router, dispatch, combine (RoutingOps.cpp).
void attachRoutingOpModels(MLIRContext *ctx);
/// experts, experts_train, shared_expert (ExpertOps.cpp).
void attachExpertOpModels(MLIRContext *ctx);
/// routed_ffn, routed_ffn_train, routed_ffn_grad, routed_ffn_weight_grad:
/// the fused MoE layer (RoutedOps.cpp).
void attachRoutedOpModels(MLIRContext *ctx);
/// softmax_cross_entropy, aux_loss, sum_losses, classification_metrics,
/// routing_counts: cost models only; moe-decompose-losses turns them into
/// whole-batch linalg (LossOps.cpp).
void attachLossOpModels(MLIRContext *ctx);

/// Whether a linalg op's body is yield(acc + in0 * in1) (either order):
/// a plain multiply-accumulate contraction.
bool isMulAddBody(linalg::LinalgOp op);

} // namespace moec::kernels

#endif // MOEC_PASSES_LIB_OPS_KERNELSUPPORT_H
