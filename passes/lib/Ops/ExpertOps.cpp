//===- ExpertOps.cpp - kernel and cost models of the expert FFNs ----------===//
//
// One image of moe.experts (all slots, or only the filled ones when the
// slots come from a prefix-filling router), moe.experts_train (all slots,
// also writing act'(a) and the hidden layer for the backward) and
// moe.shared_expert; their FLOPs and the expert parameters a token does
// not use.
//
//===----------------------------------------------------------------------===//

#include "KernelSupport.h"

#include <type_traits>

#include "moec/Passes/CostModel.h"

using namespace mlir;
using namespace moec::kernels;

namespace {

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
  Value count =
      ib.generic({in[5]}, ib.fill({numExperts}, 0.0),
                 {ib.map(3, {1, 0, 2}), ib.map(3, {0})}, {kPar, kRed, kRed},
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
          SmallVector<OpFoldResult> sizes{
              sb.getIndexAttr(1), sb.getIndexAttr(rows), sb.getIndexAttr(cols)};
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
              scf::YieldOp::create(zb, zl,
                                   put(zb, zl, tile, zacc[0], row, width));
            });
        scf::YieldOp::create(eb, el, zeros.getResults());
      });
  return experts.getResult(0);
}

/// Experts' activations hold the images along dimension 1 ([E, N, C, D]).
int64_t expertsImageDim(Operation *, Value v, bool isResult) {
  return !isResult && v.getDefiningOp<ParamOp>() ? -1 : 1;
}

KernelResults expertsKernel(ExpertsOp o, ImageBuilder &ib, ArrayRef<Value> in,
                            ArrayRef<Value> dests,
                            const ImageKernelOptions &options) {
  // An extra input: the one-hot dispatch tensor of the router that filled
  // the slots, so only filled slots are computed.
  if (options.filledSlotsOnly)
    return one(filledSlotExperts(o.getActivation(), ib, in, dests[0]));
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [E, C, D]
  int64_t hidden = ImageBuilder::shape(in[1])[2];
  Value h = ib.batchMatmul(in[0], in[1], in[2], ib.empty({x[0], x[1], hidden}));
  h = ib.activation(o.getActivation(), h, ib.empty({x[0], x[1], hidden}));
  return one(ib.batchMatmul(h, in[3], in[4], dests[0]));
}

KernelResults expertsTrainKernel(ExpertsTrainOp o, ImageBuilder &ib,
                                 ArrayRef<Value> in, ArrayRef<Value> dests,
                                 const ImageKernelOptions &) {
  // All slots: in train_step the combine's VJP reads every slot of the
  // output (dcombine), so the filled-slot kernel does not apply.
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [E, C, D]
  int64_t hidden = ImageBuilder::shape(in[1])[2];
  Value a = ib.batchMatmul(in[0], in[1], in[2], ib.empty({x[0], x[1], hidden}));
  auto [h, dact] =
      ib.activationAndDerivative(o.getActivation(), a, dests[2], dests[1]);
  return SmallVector<Value>{ib.batchMatmul(h, in[3], in[4], dests[0]), dact, h};
}

KernelResults sharedExpertKernel(SharedExpertOp o, ImageBuilder &ib,
                                 ArrayRef<Value> in, ArrayRef<Value> dests,
                                 const ImageKernelOptions &) {
  ArrayRef<int64_t> x = ImageBuilder::shape(in[0]); // [S, D]
  int64_t hidden = ImageBuilder::shape(in[1])[1];
  Value h = ib.matmul(in[0], in[1], in[2], ib.empty({x[0], hidden}));
  h = ib.activation(o.getActivation(), h, ib.empty({x[0], hidden}));
  return one(ib.matmul(h, in[3], in[4], dests[0]));
}

/// 2*D*H*2 multiply-adds per row of an FFN, plus biases and activation.
int64_t ffnFlops(int64_t rows, int64_t d, int64_t h) {
  return rows * (4 * d * h + 2 * h + d);
}

/// The router whose dispatch filled an experts op's slots, if any.
template <typename OpT> RouterOp fillingRouter(OpT o) {
  auto dispatch = o.getInput().template getDefiningOp<DispatchOp>();
  return dispatch ? dispatch.getDispatch().template getDefiningOp<RouterOp>()
                  : RouterOp();
}

/// moe.experts_train computes every slot. moe.experts behind a one-hot
/// router computes its filled slots only (see the op): k_eff per token,
/// at most E * C per group (a per-image router fills k * S of its E * S).
template <typename OpT> int64_t expertsFlops(OpT o) {
  int64_t d = dimOf(o.getInput(), 3), h = dimOf(o.getFc1Weight(), 2);
  int64_t rows = numel(o.getInput()) / std::max<int64_t>(1, d);
  RouterOp router = fillingRouter(o);
  if (std::is_same_v<OpT, ExpertsOp> && router &&
      router.getKind() != RouterKind::Soft) {
    int64_t g = dimOf(router.getInput(), 0), s = dimOf(router.getInput(), 1);
    double filled = g * s * expectedExpertsPerToken(router);
    rows = std::min<int64_t>(rows, static_cast<int64_t>(filled + 0.5));
  }
  return ffnFlops(rows, d, h);
}

/// Expert weights a token does not use: (E - k_eff) / E of them, with
/// k_eff the experts a token is expected to reach under the router whose
/// dispatch filled the slots. (moe.experts and train_step's
/// moe.experts_train share operands.)
template <typename OpT> double expertsInactiveParameters(OpT o) {
  RouterOp router = fillingRouter(o);
  if (!router)
    return 0.0;
  int64_t e = router.getNumExperts();
  int64_t expertParams = 0;
  for (Value w : o->getOperands().drop_front())
    expertParams += numel(w);
  return expertParams * (e - expectedExpertsPerToken(router)) / e;
}

int64_t sharedExpertFlops(SharedExpertOp o) {
  int64_t rows = dimOf(o.getInput(), 0) * dimOf(o.getInput(), 1);
  return ffnFlops(rows, dimOf(o.getInput(), 2), dimOf(o.getFc1Weight(), 1));
}

template <typename OpT, KernelFn<OpT> Build>
void attachExperts(MLIRContext *ctx) {
  OpT::template attachInterface<KernelModel<OpT, Build, expertsImageDim>>(*ctx);
  OpT::template attachInterface<
      CostModel<OpT, expertsFlops<OpT>, expertsInactiveParameters<OpT>>>(*ctx);
}

} // namespace

void moec::kernels::attachExpertOpModels(MLIRContext *ctx) {
  attachExperts<ExpertsOp, expertsKernel>(ctx);
  attachExperts<ExpertsTrainOp, expertsTrainKernel>(ctx);
  attachKernelAndCost<SharedExpertOp, sharedExpertKernel, sharedExpertFlops>(
      ctx);
}
