//===- FuseRouting.cpp - moe-fuse-routing ---------------------------------===//
//
// router -> dispatch -> experts -> combine becomes one moe.routed_ffn; see
// the pass description for what is fused and what is left alone.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"

namespace moec {
#define GEN_PASS_DEF_FUSEROUTINGPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec::moe;

namespace {
/// One MoE layer the pass can fuse, and the routing counts it redirects.
struct Layer {
  RouterOp router;
  DispatchOp dispatch;
  ExpertsOp experts;
  CombineOp combine;
  SmallVector<RoutingCountsOp> counts;
};

template <typename OpT> OpT soleUser(Value v) {
  if (!v.hasOneUse())
    return OpT();
  return dyn_cast<OpT>(*v.getUsers().begin());
}

/// The layer rooted at `router`, if every routing tensor only moves tokens.
std::optional<Layer> matchLayer(RouterOp router) {
  if (router.getKind() == RouterKind::Soft)
    return std::nullopt;
  Layer layer;
  layer.router = router;
  for (Operation *user : router.getDispatch().getUsers()) {
    if (auto d = dyn_cast<DispatchOp>(user); d && !layer.dispatch) {
      layer.dispatch = d;
      continue;
    }
    if (auto rc = dyn_cast<RoutingCountsOp>(user)) {
      layer.counts.push_back(rc);
      continue;
    }
    return std::nullopt;
  }
  // The router may read other values of the same tokens than the experts
  // (cosine gates: the normalised tokens); they become the gate input.
  if (!layer.dispatch || layer.dispatch.getDispatch() != router.getDispatch())
    return std::nullopt;
  auto routerIn = cast<RankedTensorType>(router.getInput().getType());
  auto tokens = cast<RankedTensorType>(layer.dispatch.getInput().getType());
  if (routerIn.getShape().take_front(2) != tokens.getShape().take_front(2))
    return std::nullopt;
  layer.experts = soleUser<ExpertsOp>(layer.dispatch.getResult());
  if (!layer.experts || layer.experts.getInput() != layer.dispatch.getResult())
    return std::nullopt;
  layer.combine = soleUser<CombineOp>(layer.experts.getResult());
  if (!layer.combine || layer.combine.getInput() != layer.experts.getResult() ||
      layer.combine.getCombine() != router.getCombine() ||
      !router.getCombine().hasOneUse())
    return std::nullopt;
  // The fused op takes the combine's place: what reads the logits or the
  // counts must come after it.
  Operation *at = layer.combine;
  auto after = [&](Operation *user) {
    return user->getBlock() == at->getBlock() && at->isBeforeInBlock(user);
  };
  for (Operation *user : router.getLogits().getUsers())
    if (!after(user))
      return std::nullopt;
  for (RoutingCountsOp rc : layer.counts)
    if (!after(rc))
      return std::nullopt;
  return layer;
}

struct FuseRoutingPass
    : public moec::impl::FuseRoutingPassBase<FuseRoutingPass> {
  using Base::Base;

  void runOnOperation() override {
    if (rowTile < 1) {
      getOperation().emitError() << "moe-fuse-routing: row-tile must be "
                                    "positive, got "
                                 << rowTile;
      return signalPassFailure();
    }
    SmallVector<Layer> layers;
    getOperation().walk([&](RouterOp router) {
      if (std::optional<Layer> layer = matchLayer(router))
        layers.push_back(*layer);
    });
    for (Layer &layer : layers)
      fuse(layer);
  }

  void fuse(Layer &layer) {
    RouterOp router = layer.router;
    ExpertsOp experts = layer.experts;
    OpBuilder b(layer.combine);
    // The experts' location names the layer in profiles (a NameLoc from
    // the frontend).
    Location loc = experts.getLoc();
    Value tokens = layer.dispatch.getInput();
    Value gateInput =
        router.getInput() == tokens ? Value() : router.getInput();
    auto input = cast<RankedTensorType>(tokens.getType());
    auto counts = RankedTensorType::get(
        {input.getDimSize(0), router.getNumExperts()}, input.getElementType());
    auto fused = RoutedFFNOp::create(
        b, loc,
        TypeRange{layer.combine.getType(), router.getLogits().getType(),
                  counts},
        router.getKindAttr(), experts.getActivationAttr(), tokens,
        router.getWeight(), experts.getFc1Weight(), experts.getFc1Bias(),
        experts.getFc2Weight(), experts.getFc2Bias(), router.getNoise(),
        gateInput, router.getKAttr(), b.getI64IntegerAttr(router.getCapacity()),
        b.getI64IntegerAttr(std::min<int64_t>(rowTile, router.getCapacity())),
        router.getCapacityFactorAttr(),
        router.getNoiseStdAttr(), router.getSinkhornItersAttr(),
        router.getBatchPrioritizedAttr(), router.getClassTokenAttr());
    layer.combine.getResult().replaceAllUsesWith(fused.getOutput());
    router.getLogits().replaceAllUsesWith(fused.getLogits());
    for (RoutingCountsOp rc : layer.counts)
      rc.getDispatchMutable().assign(fused.getCounts());
    layer.combine.erase();
    experts.erase();
    layer.dispatch.erase();
    router.erase();
  }
};
} // namespace
