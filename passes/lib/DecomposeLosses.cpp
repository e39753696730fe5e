//===- DecomposeLosses.cpp - moe-decompose-losses -------------------------===//
//
// Rewrites the loss and metric ops into whole-batch linalg with the
// patterns of passes/lib/Ops/LossOps.cpp.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/OpModels.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/WalkPatternRewriteDriver.h"

namespace moec {
#define GEN_PASS_DEF_DECOMPOSELOSSESPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {
struct DecomposeLossesPass
    : public moec::impl::DecomposeLossesPassBase<DecomposeLossesPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    moec::populateDecomposeLossPatterns(patterns);
    // One walk in program order, no folding: the new ops take the place of
    // the old ones.
    walkAndApplyPatterns(getOperation(), std::move(patterns));
  }
};
} // namespace
