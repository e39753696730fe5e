//===- DriverTest.cpp - the driver library and rebuildRouter --------------===//
//
// moec's compile flow as a library: --run-passes values, a compile with user
// passes at a point; and rebuildRouter, which passes use to change a router
// whose capacity lives in its result types.
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/Driver.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/RouterUtils.h"
#include "moec/Driver/Pipelines.h"
#include "moec/Frontend/Spec.h"
#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/PatternMatch.h"
#include "mlir/IR/Verifier.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Parser/Parser.h"

#include <gtest/gtest.h>

#include <string>

using namespace mlir;
using namespace moec;
using namespace moec::moe;

namespace {

/// A token-choice router (k = 2 of 4 experts, capacity factor 2: 50 slots
/// for 50 tokens) and the dispatch, experts and combine that follow it.
constexpr const char *kLayer = R"mlir(
func.func @layer(%x: tensor<2x50x8xf32>, %w: tensor<8x4xf32>,
                 %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>,
                 %w2: tensor<4x16x8xf32>, %b2: tensor<4x8xf32>) -> tensor<2x50x8xf32> {
  %d, %c, %l = moe.router token_choice %x, %w {capacity_factor = 2.0 : f64, k = 2 : i64}
      : (tensor<2x50x8xf32>, tensor<8x4xf32>)
      -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x50x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x50x8xf32>, tensor<2x50x4x50xf32>) -> tensor<4x2x50x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2
      : (tensor<4x2x50x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>,
         tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x50x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x50x8xf32>, tensor<2x50x4x50xf32>) -> tensor<2x50x8xf32>
  return %y : tensor<2x50x8xf32>
}
)mlir";

class RebuildRouterTest : public ::testing::Test {
protected:
  RebuildRouterTest() { context.loadDialect<MoEDialect, func::FuncDialect>(); }

  OwningOpRef<ModuleOp> parse(StringRef text) {
    return parseSourceString<ModuleOp>(text, &context);
  }

  static RouterOp theRouter(ModuleOp module) {
    RouterOp router;
    module.walk([&](RouterOp op) { router = op; });
    return router;
  }

  static ArrayRef<int64_t> shapeOf(Value v) {
    return cast<RankedTensorType>(v.getType()).getShape();
  }

  MLIRContext context;
};

TEST_F(RebuildRouterTest, CapacityFollowsK) {
  OwningOpRef<ModuleOp> module = parse(kLayer);
  ASSERT_TRUE(module);
  RouterOp router = theRouter(*module);
  RouterConfig config = getRouterConfig(router);
  ASSERT_EQ(config.k, 2);
  config.k = 1;
  IRRewriter rewriter(&context);
  FailureOr<RouterOp> rebuilt = rebuildRouter(rewriter, router, config);
  ASSERT_TRUE(succeeded(rebuilt));
  // ceil(1 * 50 * 2.0 / 4) = 25 slots per expert.
  EXPECT_EQ(rebuilt->getK(), 1u);
  EXPECT_EQ(rebuilt->getCapacity(), 25);
  auto dispatch = cast<DispatchOp>(*rebuilt->getDispatch().getUsers().begin());
  EXPECT_EQ(shapeOf(dispatch.getResult()), ArrayRef<int64_t>({4, 2, 25, 8}));
  auto experts = cast<ExpertsOp>(*dispatch.getResult().getUsers().begin());
  EXPECT_EQ(shapeOf(experts.getResult()), ArrayRef<int64_t>({4, 2, 25, 8}));
  EXPECT_TRUE(succeeded(verify(*module)));
}

TEST_F(RebuildRouterTest, ChangesTheKind) {
  OwningOpRef<ModuleOp> module = parse(kLayer);
  ASSERT_TRUE(module);
  RouterConfig config;
  config.kind = RouterKind::ExpertChoice;
  config.capacityFactor = 1.0;
  IRRewriter rewriter(&context);
  FailureOr<RouterOp> rebuilt =
      rebuildRouter(rewriter, theRouter(*module), config);
  ASSERT_TRUE(succeeded(rebuilt));
  // ceil(50 * 1.0 / 4) = 13 tokens per expert.
  EXPECT_EQ(rebuilt->getKind(), RouterKind::ExpertChoice);
  EXPECT_FALSE(rebuilt->getK());
  EXPECT_EQ(rebuilt->getCapacity(), 13);
  EXPECT_TRUE(succeeded(verify(*module)));
}

TEST_F(RebuildRouterTest, RejectsAnInvalidConfig) {
  OwningOpRef<ModuleOp> module = parse(kLayer);
  ASSERT_TRUE(module);
  std::string message;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    message = diag.str();
    return success();
  });
  RouterOp router = theRouter(*module);
  RouterConfig config = getRouterConfig(router);
  config.k = 5;
  IRRewriter rewriter(&context);
  EXPECT_TRUE(failed(rebuildRouter(rewriter, router, config)));
  EXPECT_NE(message.find("expects k <= the number of experts (4), got 5"),
            std::string::npos)
      << message;
  EXPECT_EQ(theRouter(*module), router);
}

TEST_F(RebuildRouterTest, RejectsUsersItCannotRetype) {
  OwningOpRef<ModuleOp> module = parse(R"mlir(
func.func @leak(%x: tensor<2x50x8xf32>, %w: tensor<8x4xf32>) -> tensor<2x50x4x50xf32> {
  %d, %c, %l = moe.router token_choice %x, %w {capacity_factor = 2.0 : f64, k = 2 : i64}
      : (tensor<2x50x8xf32>, tensor<8x4xf32>)
      -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x50x4xf32>)
  return %d : tensor<2x50x4x50xf32>
}
)mlir");
  ASSERT_TRUE(module);
  std::string message;
  ScopedDiagnosticHandler handler(&context, [&](Diagnostic &diag) {
    message = diag.str();
    return success();
  });
  RouterOp router = theRouter(*module);
  RouterConfig config = getRouterConfig(router);
  config.k = 1;
  IRRewriter rewriter(&context);
  EXPECT_TRUE(failed(rebuildRouter(rewriter, router, config)));
  EXPECT_NE(message.find("is used by 'func.return'"), std::string::npos)
      << message;
  // Nothing changed.
  EXPECT_EQ(theRouter(*module), router);
  EXPECT_EQ(router.getK(), 2u);
  EXPECT_TRUE(succeeded(verify(*module)));
}

//===----------------------------------------------------------------------===//
// The driver
//===----------------------------------------------------------------------===//

class DriverTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    registerAllPasses();
    registerMoEPasses();
    registerMoEPipelines();
    driver::registerDriverPipelines();
  }
};

TEST_F(DriverTest, ParsesRunPasses) {
  std::string error;
  std::optional<driver::PassHook> hook =
      driver::parsePassHook("autodiff:canonicalize,cse", error);
  ASSERT_TRUE(hook) << error;
  EXPECT_EQ(hook->point, driver::ExtensionPoint::Autodiff);
  EXPECT_EQ(hook->pipeline, "canonicalize,cse");
  EXPECT_TRUE(driver::parsePassHook("plan:builtin.module(cse)", error));

  EXPECT_FALSE(driver::parsePassHook("backend:cse", error));
  EXPECT_EQ(error, "--run-passes=backend:cse: unknown point 'backend' "
                   "(expected frontend, autodiff, plan)");
  EXPECT_FALSE(driver::parsePassHook("frontend:not-a-pass", error));
  EXPECT_NE(error.find("'not-a-pass' does not refer to a registered pass"),
            std::string::npos)
      << error;
}

TEST_F(DriverTest, CompilesWithPassesAtAPoint) {
  spec::ParseResult parsed =
      spec::parseSpecFile(MOEC_SOURCE_DIR "/examples/vimoe-tiny-fmnist.json");
  ASSERT_TRUE(parsed);
  DialectRegistry registry;
  driver::registerCompilerDialects(registry);
  MLIRContext context(registry);

  driver::CompileOptions options;
  options.emit = driver::EmitKind::Plan;
  options.batch = 2;
  options.entries = {"infer"};
  std::string error;
  // Every function private but infer: the plan point sees the kernels.
  std::optional<driver::PassHook> hook =
      driver::parsePassHook("plan:symbol-privatize{exclude=infer}", error);
  ASSERT_TRUE(hook) << error;
  options.passHooks.push_back(*hook);

  driver::CompileResult result;
  ASSERT_TRUE(succeeded(
      driver::compile(context, *parsed.spec, "{}", options, result, error)))
      << error;
  ASSERT_TRUE(result.module);
  ASSERT_TRUE(result.plan);
  EXPECT_FALSE(result.kernels);
  auto infer = result.plan->lookupSymbol<func::FuncOp>("infer");
  auto kernel = result.plan->lookupSymbol<func::FuncOp>("moec_k0");
  ASSERT_TRUE(infer && kernel);
  EXPECT_TRUE(infer.isPublic());
  EXPECT_TRUE(kernel.isPrivate());
  // The frontend stage counted the costs.
  auto frontendInfer = result.module->lookupSymbol<func::FuncOp>("infer");
  ASSERT_TRUE(frontendInfer);
  EXPECT_TRUE(frontendInfer->hasAttr("moe.flops"));
}

} // namespace
