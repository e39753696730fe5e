//===- CapTopK.cpp - moe-cap-top-k ----------------------------------------===//
//
// Caps the top-k of routers. A router's capacity lives in its result types,
// so the router is rebuilt (moec::moe::rebuildRouter) rather than given a
// new `k` attribute in place, which the verifier would reject. A fused MoE
// layer (moe.routed_ffn, after moe-fuse-routing) takes its new attributes in
// place (moec::moe::setRouterConfig); the training step's fused layers keep
// a row list sized by k for the backward pass and cannot be changed.
//
//===----------------------------------------------------------------------===//

#include "CapTopK/Passes.h"

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/RouterUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/PatternMatch.h"

namespace captopk {
#define GEN_PASS_DEF_CAPTOPKPASS
#include "CapTopK/Passes.h.inc"
} // namespace captopk

using namespace mlir;
using namespace moec::moe;

namespace {
struct CapTopKPass : public captopk::impl::CapTopKPassBase<CapTopKPass> {
  using Base::Base;

  void runOnOperation() override {
    if (k < 1) {
      getOperation().emitError() << "moe-cap-top-k expects k >= 1, got " << k;
      return signalPassFailure();
    }
    IRRewriter rewriter(&getContext());
    for (auto fn : getOperation().getOps<func::FuncOp>()) {
      if (!functions.empty() && !llvm::is_contained(functions, fn.getName()))
        continue;
      // Fused layers (the plan extension point).
      SmallVector<RoutedFFNOp> layers;
      fn.walk([&](RoutedFFNOp layer) { layers.push_back(layer); });
      for (RoutedFFNOp layer : layers) {
        RouterConfig config = getRouterConfig(layer);
        if (!config.k || *config.k <= k)
          continue;
        config.k = k;
        if (failed(setRouterConfig(rewriter, layer, config)))
          return signalPassFailure();
        capLoadLosses(rewriter, layer.getLogits());
      }
      WalkResult trained = fn.walk([&](RoutedFFNTrainOp layer) {
        if (!layer.getK() || static_cast<int64_t>(*layer.getK()) <= k)
          return WalkResult::advance();
        layer.emitOpError() << "keeps a row list sized by its k for the "
                               "backward pass: moe-cap-top-k must run before "
                               "it is built (rebuild routers before "
                               "moe-autodiff)";
        return WalkResult::interrupt();
      });
      if (trained.wasInterrupted())
        return signalPassFailure();

      SmallVector<RouterOp> routers;
      fn.walk([&](RouterOp router) { routers.push_back(router); });
      for (RouterOp router : routers) {
        // Kinds without k (expert_choice, soft) have no top-k to cap.
        RouterConfig config = getRouterConfig(router);
        if (!config.k || *config.k <= k)
          continue;
        config.k = k;
        FailureOr<RouterOp> capped = rebuildRouter(rewriter, router, config);
        if (failed(capped))
          return signalPassFailure();
        capLoadLosses(rewriter, capped->getLogits());
      }
    }
  }

  /// The load-balancing loss models the router's top-k.
  void capLoadLosses(IRRewriter &rewriter, Value logits) {
    for (Operation *user : logits.getUsers())
      if (auto loss = dyn_cast<AuxLossOp>(user))
        if (loss.getK() && static_cast<int64_t>(*loss.getK()) > k)
          rewriter.modifyOpInPlace(loss, [&] { loss.setK(k); });
  }
};
} // namespace
