//===- Pipelines.h - the stages of moec compile -----------------*- C++ -*-===//
//
// `moec compile` is a sequence of stages, each a named, registered pass
// pipeline that moec-opt runs by name, with extension points where user
// passes run (`moec compile --run-passes=<point>:<pipeline>`):
//
//   spec --frontend (C++: SpecToMoE)--> moe module, one function per entry
//     [point frontend]                          every entry point
//     moe-frontend-costs                        --emit=mlir prints this
//   for each entry point, on its own copy of the module:
//     train_step only: moe-train = moe-autodiff
//                                  [point autodiff]
//                                  moe-annotate-costs
//     moe-cpu-plan{entry=<entry> kernel-prefix=<kernelPrefixFor(entry)>}
//   the plans of the entry points, gathered into one module
//     [point plan]                              --emit=plan prints this
//   on a copy of the plan: moe-cpu-codegen       --emit=llvm prints this
//   kernel library (LLVM -O3, lld) + artifact   --emit=artifact
//
// So `moec compile --emit=mlir | moec-opt --moe-train |
// moec-opt --moe-cpu-plan='entry=train_step kernel-prefix=train_step_k'`
// plans train_step exactly as `moec compile --emit=plan` does.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DRIVER_PIPELINES_H
#define MOEC_DRIVER_PIPELINES_H

#include "mlir/Pass/PassOptions.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/STLFunctionalExtras.h"

#include <optional>
#include <string>

namespace mlir {
class OpPassManager;
} // namespace mlir

namespace moec::driver {

//===----------------------------------------------------------------------===//
// Extension points
//===----------------------------------------------------------------------===//

/// Where in `moec compile` user passes run. Each point runs its passes on a
/// builtin.module, right after the stage it is named after.
enum class ExtensionPoint {
  /// The moe module the frontend built (every entry function), before the
  /// cost annotation: what runs here affects every entry point.
  Frontend,
  /// train_step's copy of the module after moe-autodiff built train_step
  /// (forward, backward, optimizer update), before its costs are counted
  /// and it is planned. Runs only when train_step is compiled.
  Autodiff,
  /// The plan of all entry points (plan functions and their kernels, still
  /// on tensors), before kernel codegen and the artifact writer read it.
  Plan,
};

struct ExtensionPointInfo {
  ExtensionPoint point;
  llvm::StringRef name;
  llvm::StringRef description;
};

/// Every point, in the order moec compile reaches them.
llvm::ArrayRef<ExtensionPointInfo> getExtensionPoints();
std::optional<ExtensionPoint> parseExtensionPoint(llvm::StringRef name);
llvm::StringRef stringifyExtensionPoint(ExtensionPoint point);

/// User passes to run at a point: a textual pass pipeline on the
/// builtin.module, either anchored (`builtin.module(cse,canonicalize)`) or a
/// bare list as in mlir-opt's --pass-pipeline without the anchor
/// (`my-pass{k=1},func.func(canonicalize)`).
struct PassHook {
  ExtensionPoint point;
  std::string pipeline;
};

/// Parses `<point>:<pipeline>`, the value of --run-passes, and checks that
/// the pipeline parses (its passes must be registered, plugins' included).
/// On failure returns std::nullopt with a message in `error` that names the
/// flag.
std::optional<PassHook> parsePassHook(llvm::StringRef value,
                                      std::string &error);

/// Appends the passes of every hook at `point`, in order, to `pm` (a pass
/// manager on builtin.module). Fails with a message in `error` if a pipeline
/// does not parse.
mlir::LogicalResult addPassHooks(mlir::OpPassManager &pm,
                                 llvm::ArrayRef<PassHook> hooks,
                                 ExtensionPoint point, std::string &error);

/// True if some hook runs at `point`.
bool hasPassHooks(llvm::ArrayRef<PassHook> hooks, ExtensionPoint point);

//===----------------------------------------------------------------------===//
// Stage pipelines
//===----------------------------------------------------------------------===//

/// A callback that adds passes at an extension point inside a pipeline.
using PipelineExtension = llvm::function_ref<void(mlir::OpPassManager &)>;

/// moe-frontend-costs: ends the frontend stage (moe-annotate-costs on every
/// entry function).
void buildFrontendCostsPipeline(mlir::OpPassManager &pm);

struct TrainPipelineOptions
    : public mlir::PassPipelineOptions<TrainPipelineOptions> {
  Option<std::string> forward{
      *this, "forward",
      llvm::cl::desc("The forward function moe-autodiff differentiates"),
      llvm::cl::init("train_forward")};
  Option<std::string> entry{*this, "entry",
                            llvm::cl::desc("The function moe-autodiff builds"),
                            llvm::cl::init("train_step")};
  Option<bool> fuseRouting{
      *this, "fuse-routing",
      llvm::cl::desc("Fuse every MoE layer's routing with its grouped expert "
                     "GEMMs before differentiating (moe-fuse-routing)"),
      llvm::cl::init(true)};
};

/// moe-train: moe-fuse-routing (unless disabled), moe-autodiff builds the
/// training step, `afterAutodiff` (the
/// autodiff extension point) adds its passes, and moe-annotate-costs counts
/// the step again (forward, backward and update).
void buildTrainPipeline(mlir::OpPassManager &pm,
                        const TrainPipelineOptions &options,
                        PipelineExtension afterAutodiff = nullptr);

/// The kernel-prefix moec plans entry `entry` with: moec_k for infer,
/// `<entry>_k` for the others (kernel names stay distinct in one module).
std::string kernelPrefixFor(llvm::StringRef entry);

/// Registers moe-frontend-costs and moe-train (moe-cpu-plan and
/// moe-cpu-codegen are registered by moec::registerMoEPipelines).
void registerDriverPipelines();

/// Prints the stages of moec compile and the extension points
/// (moec --list-passes).
void printStages(llvm::raw_ostream &os);

} // namespace moec::driver

#endif // MOEC_DRIVER_PIPELINES_H
