//===- CapTopK.cpp - moe-cap-top-k ----------------------------------------===//
//
// Caps the top-k of routers. A router's capacity lives in its result types,
// so the router is rebuilt (moec::moe::rebuildRouter) rather than given a
// new `k` attribute in place, which the verifier would reject.
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
        // The load-balancing loss models the router's top-k.
        for (Operation *user : capped->getLogits().getUsers())
          if (auto loss = dyn_cast<AuxLossOp>(user))
            if (loss.getK() && static_cast<int64_t>(*loss.getK()) > k)
              rewriter.modifyOpInPlace(loss, [&] { loss.setK(k); });
      }
    }
  }
};
} // namespace
