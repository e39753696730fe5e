//===- AnnotateCosts.cpp - moe-annotate-costs -----------------------------===//

#include "moec/Passes/CostModel.h"
#include "moec/Passes/OpModels.h"
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

  void getDependentDialects(DialectRegistry &registry) const override {
    Base::getDependentDialects(registry);
    registerMoEOpModels(registry);
  }

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
          op->setAttr(moec::moe::MoEDialect::FlopsAttrHelper::getNameStr(),
                      b.getI64IntegerAttr(opFlops));
        // Expert weights a token does not use.
        if (auto costed = dyn_cast<CostOpInterface>(op))
          inactive += costed.estimateInactiveParameters();
      });
      if (!usesMoE)
        continue;
      fn->setAttr(moec::moe::MoEDialect::ParamsAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(params));
      fn->setAttr(
          moec::moe::MoEDialect::ActiveParamsAttrHelper::getNameStr(),
          b.getI64IntegerAttr(params - static_cast<int64_t>(inactive + 0.5)));
      fn->setAttr(moec::moe::MoEDialect::FlopsAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(flops));
    }
  }
};
} // namespace
