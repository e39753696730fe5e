//===- TestPlugin.cpp - a pass plugin for moec-opt's plugin test ----------===//
//
// Registers `moe-test-count-ops`, which tags every function with the number
// of moe ops it contains (`test.num_ops`: not a `moe.` attribute, which the
// moe dialect verifies). Loaded with `moec-opt --load-pass-plugin=
// MoETestPlugin.so` or `moec compile --load-pass-plugin=MoETestPlugin.so
// --run-passes=<point>:moe-test-count-ops`.
//
//===----------------------------------------------------------------------===//

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Interfaces/FunctionInterfaces.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Config/llvm-config.h"

using namespace mlir;

namespace {
struct CountOpsPass
    : public PassWrapper<CountOpsPass, OperationPass<ModuleOp>> {
  MLIR_DEFINE_EXPLICIT_INTERNAL_INLINE_TYPE_ID(CountOpsPass)

  StringRef getArgument() const final { return "moe-test-count-ops"; }
  StringRef getDescription() const final {
    return "Tags each function with its number of moe ops (plugin test)";
  }
  void runOnOperation() override {
    Builder b(&getContext());
    getOperation().walk([&](FunctionOpInterface fn) {
      int64_t count = 0;
      fn.walk([&](Operation *op) {
        if (op->getDialect() && op->getDialect()->getNamespace() == "moe")
          ++count;
      });
      fn->setAttr("test.num_ops", b.getI64IntegerAttr(count));
    });
  }
};
} // namespace

extern "C" LLVM_ATTRIBUTE_WEAK PassPluginLibraryInfo mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MoETestPlugin", LLVM_VERSION_STRING,
          []() { PassRegistration<CountOpsPass>(); }};
}
