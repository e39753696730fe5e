//===- Pipelines.cpp - the stages of moec compile -------------------------===//
//
// The stage pipelines moe-frontend-costs and moe-train, and the extension
// points where `moec compile --run-passes` adds user passes.
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/Pipelines.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace moec::driver;

namespace {
const ExtensionPointInfo kPoints[] = {
    {ExtensionPoint::Frontend, "frontend",
     "the moe module the frontend built, before moe-frontend-costs; affects "
     "every entry point"},
    {ExtensionPoint::Autodiff, "autodiff",
     "train_step's copy of the module after moe-autodiff, before its costs "
     "are recounted and it is planned (only with train_step)"},
    {ExtensionPoint::Plan, "plan",
     "the plan of all entry points (plan functions and kernels, on tensors), "
     "before moe-cpu-codegen and the artifact writer"},
};

constexpr StringLiteral kAnchor = "builtin.module";

std::string pointNames() {
  std::string names;
  for (const ExtensionPointInfo &info : kPoints) {
    if (!names.empty())
      names += ", ";
    names += info.name.str();
  }
  return names;
}

/// `builtin.module(a,b)` -> `a,b`; a bare list is returned as is.
StringRef stripAnchor(StringRef pipeline) {
  pipeline = pipeline.trim();
  StringRef inner = pipeline;
  if (inner.consume_front(kAnchor) && inner.consume_front("(") &&
      inner.consume_back(")"))
    return inner;
  return pipeline;
}
} // namespace

ArrayRef<ExtensionPointInfo> moec::driver::getExtensionPoints() {
  return kPoints;
}

std::optional<ExtensionPoint>
moec::driver::parseExtensionPoint(StringRef name) {
  for (const ExtensionPointInfo &info : kPoints)
    if (info.name == name)
      return info.point;
  return std::nullopt;
}

StringRef moec::driver::stringifyExtensionPoint(ExtensionPoint point) {
  for (const ExtensionPointInfo &info : kPoints)
    if (info.point == point)
      return info.name;
  llvm_unreachable("unknown extension point");
}

std::optional<PassHook> moec::driver::parsePassHook(StringRef value,
                                                    std::string &error) {
  std::string flag = ("--run-passes=" + value).str();
  auto [pointName, pipeline] = value.split(':');
  pointName = pointName.trim();
  if (!value.contains(':') || pipeline.trim().empty() || pointName.empty()) {
    error = flag +
            ": expected <point>:<pass pipeline> (points: " + pointNames() + ")";
    return std::nullopt;
  }
  std::optional<ExtensionPoint> point = parseExtensionPoint(pointName);
  if (!point) {
    error = flag + ": unknown point '" + pointName.str() + "' (expected " +
            pointNames() + ")";
    return std::nullopt;
  }
  PassHook hook{*point, pipeline.trim().str()};
  std::string message;
  llvm::raw_string_ostream os(message);
  OpPassManager pm(kAnchor);
  if (failed(parsePassPipeline(stripAnchor(hook.pipeline), pm, os))) {
    error = flag + ": cannot parse the pass pipeline: " +
            StringRef(message).trim().str();
    if (StringRef(message).contains("does not refer to a registered pass"))
      error += "\n(a plugin's passes need --load-pass-plugin; "
               "moec --list-passes lists every registered pass)";
    return std::nullopt;
  }
  if (pm.size() == 0) {
    error = flag + ": the pipeline names no pass";
    return std::nullopt;
  }
  return hook;
}

LogicalResult moec::driver::addPassHooks(OpPassManager &pm,
                                         ArrayRef<PassHook> hooks,
                                         ExtensionPoint point,
                                         std::string &error) {
  for (const PassHook &hook : hooks) {
    if (hook.point != point)
      continue;
    std::string message;
    llvm::raw_string_ostream os(message);
    if (failed(parsePassPipeline(stripAnchor(hook.pipeline), pm, os))) {
      error = "--run-passes=" + stringifyExtensionPoint(point).str() + ":" +
              hook.pipeline + ": cannot parse the pass pipeline: " +
              StringRef(message).trim().str();
      return failure();
    }
  }
  return success();
}

bool moec::driver::hasPassHooks(ArrayRef<PassHook> hooks,
                                ExtensionPoint point) {
  return llvm::any_of(
      hooks, [&](const PassHook &hook) { return hook.point == point; });
}

void moec::driver::buildFrontendCostsPipeline(OpPassManager &pm) {
  pm.addPass(createAnnotateCostsPass());
}

void moec::driver::buildTrainPipeline(OpPassManager &pm,
                                      const TrainPipelineOptions &options,
                                      PipelineExtension afterAutodiff) {
  if (options.fuseRouting)
    pm.addNestedPass<func::FuncOp>(createFuseRoutingPass());
  AutodiffPassOptions autodiff;
  autodiff.forward = options.forward;
  autodiff.entry = options.entry;
  pm.addPass(createAutodiffPass(autodiff));
  if (afterAutodiff)
    afterAutodiff(pm);
  // Recount: the backward pass and the update are linalg ops.
  pm.addPass(createAnnotateCostsPass());
}

std::string moec::driver::kernelPrefixFor(StringRef entry) {
  return entry == "infer" ? "moec_k" : (entry + "_k").str();
}

void moec::driver::registerDriverPipelines() {
  PassPipelineRegistration<>(
      "moe-frontend-costs",
      "Ends moec's frontend stage: annotates every entry function with its "
      "parameter and FLOP counts (moec compile --emit=mlir prints the result)",
      [](OpPassManager &pm) { buildFrontendCostsPipeline(pm); });
  PassPipelineRegistration<TrainPipelineOptions>(
      "moe-train",
      "moec's training stage: moe-autodiff builds the training step, then "
      "moe-annotate-costs counts it again (run before moe-cpu-plan "
      "entry=train_step)",
      [](OpPassManager &pm, const TrainPipelineOptions &options) {
        buildTrainPipeline(pm, options);
      });
}

void moec::driver::printStages(raw_ostream &os) {
  os << "Stages of moec compile (each pipeline runs in moec-opt by name):\n"
        "  spec -> moe module                 the frontend (C++)\n"
        "    [frontend]\n"
        "  moe-frontend-costs                 --emit=mlir\n"
        "  per entry point, on its own copy of the module:\n"
        "    moe-train (train_step only)      moe-fuse-routing, moe-autodiff, "
        "[autodiff], moe-annotate-costs\n"
        "    moe-cpu-plan{entry=E kernel-prefix=P}  (starts with "
        "moe-fuse-routing)\n"
        "  (--no-fuse: both without moe-fuse-routing)\n"
        "  the entry points' plans in one module\n"
        "    [plan]                           --emit=plan\n"
        "  moe-cpu-codegen                    --emit=llvm\n"
        "  kernel library and artifact        --emit=artifact\n"
        "  (--target=cuda: moe-cuda-codegen{gpu-arch=A} --emit=llvm, then\n"
        "   gpu-module-to-binary to PTX and the artifact)\n"
        "\n"
        "Extension points (--run-passes=<point>:<pass pipeline>, "
        "repeatable; passes at one point run in command-line order):\n";
  for (const ExtensionPointInfo &info : kPoints)
    os << llvm::formatv("  {0,-10} {1}\n", info.name, info.description);
}
