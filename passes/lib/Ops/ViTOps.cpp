//===- ViTOps.cpp - kernel and cost models of the ViT ops -----------------===//
//
// One image of patch_embed, class_token, pos_embed, add, activation,
// activation_train, layer_norm, dense, pool and classifier_head, and their
// FLOP formulas.
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

using namespace mlir;
using namespace moec::kernels;

namespace {

//===----------------------------------------------------------------------===//
// Kernels
//===----------------------------------------------------------------------===//

KernelResults patchEmbedKernel(PatchEmbedOp o, ImageBuilder &ib,
                               ArrayRef<Value> in, ArrayRef<Value> dests,
                               const ImageKernelOptions &) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
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
}

KernelResults classTokenKernel(ClassTokenOp, ImageBuilder &ib,
                               ArrayRef<Value> in, ArrayRef<Value> dests,
                               const ImageKernelOptions &) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
  SmallVector<OpFoldResult> ones(2, b.getIndexAttr(1));
  Value d = tensor::InsertSliceOp::create(
      b, loc, in[1], dests[0],
      ArrayRef<OpFoldResult>{b.getIndexAttr(0), b.getIndexAttr(0)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(x[1])}, ones);
  d = tensor::InsertSliceOp::create(
      b, loc, in[0], d,
      ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(0)},
      ArrayRef<OpFoldResult>{b.getIndexAttr(x[0]), b.getIndexAttr(x[1])}, ones);
  return one(d);
}

KernelResults posEmbedKernel(PosEmbedOp, ImageBuilder &ib, ArrayRef<Value> in,
                             ArrayRef<Value> dests,
                             const ImageKernelOptions &) {
  return one(ib.add(in[0], in[1], dests[0]));
}

KernelResults addKernel(AddOp, ImageBuilder &ib, ArrayRef<Value> in,
                        ArrayRef<Value> dests, const ImageKernelOptions &) {
  return one(ib.add(in[0], in[1], dests[0]));
}

KernelResults activationKernel(ActivationOp o, ImageBuilder &ib,
                               ArrayRef<Value> in, ArrayRef<Value> dests,
                               const ImageKernelOptions &) {
  return one(ib.activation(o.getKind(), in[0], dests[0]));
}

KernelResults activationTrainKernel(ActivationTrainOp o, ImageBuilder &ib,
                                    ArrayRef<Value> in, ArrayRef<Value> dests,
                                    const ImageKernelOptions &) {
  auto [y, derivative] =
      ib.activationAndDerivative(o.getKind(), in[0], dests[0], dests[1]);
  return SmallVector<Value>{y, derivative};
}

KernelResults layerNormKernel(LayerNormOp o, ImageBuilder &ib,
                              ArrayRef<Value> in, ArrayRef<Value> dests,
                              const ImageKernelOptions &) {
  if (ImageBuilder::shape(in[0]).size() != 2)
    return o.emitOpError() << "kernel lowering expects [N, S, D] input";
  return one(ib.layerNorm(in[0], in[1], in[2], o.getEpsilon().convertToDouble(),
                          dests[0]));
}

KernelResults denseKernel(DenseOp o, ImageBuilder &ib, ArrayRef<Value> in,
                          ArrayRef<Value> dests, const ImageKernelOptions &) {
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
}

KernelResults classifierHeadKernel(ClassifierHeadOp, ImageBuilder &ib,
                                   ArrayRef<Value> in, ArrayRef<Value> dests,
                                   const ImageKernelOptions &) {
  return one(ib.vecmat(in[0], in[1], in[2], dests[0]));
}

KernelResults poolKernel(PoolOp o, ImageBuilder &ib, ArrayRef<Value> in,
                         ArrayRef<Value> dests, const ImageKernelOptions &) {
  OpBuilder &b = ib.b;
  Location loc = ib.loc;
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
  if (o.getKind() == PoolKind::Cls) {
    Value row = tensor::ExtractSliceOp::create(
        b, loc, ib.type({x[1]}), in[0],
        ArrayRef<OpFoldResult>{b.getIndexAttr(0), b.getIndexAttr(0)},
        ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(x[1])},
        ArrayRef<OpFoldResult>{b.getIndexAttr(1), b.getIndexAttr(1)});
    return one(ib.copy(row, dests[0]));
  }
  Value sum = ib.generic({in[0]}, ib.fill(dests[0], 0.0),
                         {ib.map(2, {1, 0}), ib.map(2, {0})}, {kPar, kRed},
                         [](OpBuilder &nb, Location nl, ValueRange a) -> Value {
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
}

//===----------------------------------------------------------------------===//
// FLOPs
//===----------------------------------------------------------------------===//

int64_t patchEmbedFlops(PatchEmbedOp o) {
  return 2 * numel(o.getResult()) * dimOf(o.getWeight(), 0);
}
/// A copy.
int64_t classTokenFlops(ClassTokenOp) { return 0; }
/// A view of the same buffer (moe-lower-to-kernels lowers it, no kernel).
int64_t reshapeFlops(ReshapeOp) { return 0; }
int64_t posEmbedFlops(PosEmbedOp o) { return numel(o.getResult()); }
int64_t addFlops(AddOp o) { return numel(o.getResult()); }
int64_t activationFlops(ActivationOp o) { return numel(o.getResult()); }
int64_t activationTrainFlops(ActivationTrainOp o) {
  return 2 * numel(o.getResult());
}
/// Mean, variance, normalise, scale, shift.
int64_t layerNormFlops(LayerNormOp o) { return 5 * numel(o.getResult()); }
int64_t denseFlops(DenseOp o) {
  int64_t rows =
      numel(o.getResult()) / std::max<int64_t>(1, dimOf(o.getWeight(), 1));
  int64_t flops = 2 * rows * dimOf(o.getWeight(), 0) * dimOf(o.getWeight(), 1);
  return flops + (o.getBias() ? numel(o.getResult()) : 0);
}
int64_t poolFlops(PoolOp o) {
  return o.getKind() == PoolKind::Mean ? numel(o.getInput()) : 0;
}
int64_t classifierHeadFlops(ClassifierHeadOp o) {
  return 2 * dimOf(o.getInput(), 0) * dimOf(o.getWeight(), 0) *
             dimOf(o.getWeight(), 1) +
         numel(o.getLogits());
}

} // namespace

void moec::kernels::attachViTOpModels(MLIRContext *ctx) {
  attachKernelAndCost<PatchEmbedOp, patchEmbedKernel, patchEmbedFlops>(ctx);
  attachKernelAndCost<ClassTokenOp, classTokenKernel, classTokenFlops>(ctx);
  attachKernelAndCost<PosEmbedOp, posEmbedKernel, posEmbedFlops>(ctx);
  attachKernelAndCost<AddOp, addKernel, addFlops>(ctx);
  ReshapeOp::attachInterface<CostModel<ReshapeOp, reshapeFlops>>(*ctx);
  attachKernelAndCost<ActivationOp, activationKernel, activationFlops>(ctx);
  attachKernelAndCost<ActivationTrainOp, activationTrainKernel,
                      activationTrainFlops>(ctx);
  attachKernelAndCost<LayerNormOp, layerNormKernel, layerNormFlops>(ctx);
  attachKernelAndCost<DenseOp, denseKernel, denseFlops>(ctx);
  attachKernelAndCost<PoolOp, poolKernel, poolFlops>(ctx);
  attachKernelAndCost<ClassifierHeadOp, classifierHeadKernel,
                      classifierHeadFlops>(ctx);
}
