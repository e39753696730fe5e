//===- AnnotateCosts.cpp - moe-annotate-costs -----------------------------===//

#include "moec/Passes/CostModel.h"
#include "moec/Passes/Passes.h"

#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringSet.h"

namespace moec {
#define GEN_PASS_DEF_ANNOTATECOSTSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
using namespace moec::moe;

namespace {
struct AnnotateCostsPass
    : public moec::impl::AnnotateCostsPassBase<AnnotateCostsPass> {
  using Base::Base;

  void runOnOperation() override {
    Builder b(&getContext());
    for (auto fn : getOperation().getOps<func::FuncOp>()) {
      llvm::StringSet<> seen;
      int64_t params = 0, flops = 0;
      double inactive = 0.0;
      bool usesMoE = false;
      fn.walk([&](Operation *op) {
        // moe ops, and the linalg ops moe-autodiff builds the backward
        // pass and the optimizer update from.
        bool isMoE = isa<MoEDialect>(op->getDialect());
        if (!isMoE && !isa<linalg::LinalgOp>(op))
          return;
        usesMoE |= isMoE;
        if (auto param = dyn_cast<ParamOp>(op)) {
          if (seen.insert(param.getName()).second)
            params += param.getType().getNumElements();
          return;
        }
        int64_t opFlops = estimateFlops(op);
        flops += opFlops;
        if (perOp)
          op->setAttr("moe.flops", b.getI64IntegerAttr(opFlops));
        // Expert weights a token does not use: (E - k_eff) / E of them.
        // (moe.experts and train_step's moe.experts_train share operands.)
        if (isa<ExpertsOp, ExpertsTrainOp>(op)) {
          auto dispatch = op->getOperand(0).getDefiningOp<DispatchOp>();
          auto router = dispatch ? dispatch.getDispatch().getDefiningOp<RouterOp>()
                                 : RouterOp();
          if (!router)
            return;
          int64_t e = router.getNumExperts();
          int64_t expertParams = 0;
          for (Value w : op->getOperands().drop_front())
            expertParams += cast<RankedTensorType>(w.getType()).getNumElements();
          inactive += expertParams * (e - expectedExpertsPerToken(router)) / e;
        }
      });
      if (!usesMoE)
        continue;
      fn->setAttr("moe.params", b.getI64IntegerAttr(params));
      fn->setAttr("moe.active_params",
                  b.getI64IntegerAttr(params - static_cast<int64_t>(inactive + 0.5)));
      fn->setAttr("moe.flops", b.getI64IntegerAttr(flops));
    }
  }
};
} // namespace
