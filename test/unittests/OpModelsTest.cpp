//===- OpModelsTest.cpp - every moe op has its kernel and cost models -----===//

#include "moec/Passes/OpModels.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Passes/CostModel.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/PatternMatch.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

using namespace mlir;
using namespace moec::moe;

namespace {

std::set<std::string> decomposedOps(MLIRContext &ctx) {
  RewritePatternSet patterns(&ctx);
  moec::populateDecomposeLossPatterns(patterns);
  std::set<std::string> names;
  for (const auto &pattern : patterns.getNativePatterns())
    if (auto root = pattern->getRootKind())
      names.insert(root->getStringRef().str());
  return names;
}

// Loading the dialect with the models registered runs the registration
// check (a fatal error if an op lacks a model); then every op but
// moe.param has a cost model, and exactly the ops without a
// moe-decompose-losses pattern have a kernel lowering, but moe.reshape (a
// view).
TEST(OpModels, EveryOpHasItsModels) {
  DialectRegistry registry;
  moec::registerMoEOpModels(registry);
  MLIRContext ctx(registry);
  ctx.loadDialect<MoEDialect>();
  std::set<std::string> decomposed = decomposedOps(ctx);
  EXPECT_EQ(decomposed, (std::set<std::string>{
                            "moe.aux_loss", "moe.classification_metrics",
                            "moe.l2_normalize", "moe.routing_counts",
                            "moe.routing_stats",
                            "moe.softmax_cross_entropy", "moe.sum_losses"}));
  int ops = 0;
  for (RegisteredOperationName name : ctx.getRegisteredOperations()) {
    if (name.getDialectNamespace() != "moe")
      continue;
    ++ops;
    std::string op = name.getStringRef().str();
    if (op == "moe.param") {
      EXPECT_FALSE(name.hasInterface<CostOpInterface>()) << op;
      EXPECT_FALSE(name.hasInterface<ImageKernelOpInterface>()) << op;
      continue;
    }
    EXPECT_TRUE(name.hasInterface<CostOpInterface>()) << op;
    // A view: moe-lower-to-kernels turns it into tensor reshapes.
    if (op == "moe.reshape") {
      EXPECT_FALSE(name.hasInterface<ImageKernelOpInterface>()) << op;
      continue;
    }
    EXPECT_NE(name.hasInterface<ImageKernelOpInterface>(),
              decomposed.count(op) == 1)
        << op;
  }
  EXPECT_GE(ops, 25);
}

// Without the registration the ops have no models: the dialect itself does
// not depend on the passes library.
TEST(OpModels, DialectAloneHasNone) {
  MLIRContext ctx;
  ctx.loadDialect<MoEDialect>();
  auto name = RegisteredOperationName::lookup("moe.router", &ctx);
  ASSERT_TRUE(name.has_value());
  EXPECT_FALSE(name->hasInterface<CostOpInterface>());
  EXPECT_FALSE(name->hasInterface<ImageKernelOpInterface>());
}

} // namespace
