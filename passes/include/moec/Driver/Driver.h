//===- Driver.h - the moec compiler driver ----------------------*- C++ -*-===//
//
// The compile flow of `moec compile` as a library (the tool is a thin main
// over it; tests link it too): spec -> moe module -> the stage pipelines of
// moec/Driver/Pipelines.h, with the user's passes at their extension points
// -> kernel library -> .moec artifact.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DRIVER_DRIVER_H
#define MOEC_DRIVER_DRIVER_H

#include "moec/Driver/Pipelines.h"
#include "moec/Passes/CpuTarget.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "mlir/Support/LLVM.h"

#include "moec/Passes/Passes.h"

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mlir {
class DialectRegistry;
class MLIRContext;
class PassManager;
} // namespace mlir

namespace moec {
namespace spec {
struct Spec;
} // namespace spec

namespace driver {

/// What a compile produces (moec compile --emit); each kind stops after the
/// stage that produces it.
enum class EmitKind { Mlir, Plan, Llvm, Artifact };

struct CompileOptions {
  EmitKind emit = EmitKind::Artifact;
  /// Images per call of the entry functions; 0: the spec's /train/batch.
  int64_t batch = 0;
  /// The entry points to compile, infer first (every artifact has it), each
  /// once: infer, train_step, eval.
  std::vector<std::string> entries{"infer", "train_step", "eval", "analyze"};
  /// Tile and vectorize the kernels.
  bool vectorize = true;
  /// Fuse every MoE layer's routing with its grouped expert GEMMs
  /// (moe-fuse-routing in moe-train and moe-cpu-plan).
  bool fuseRouting = true;
  /// --precision=bf16: matmul-like contractions on bf16 values accumulated
  /// in f32 (moe-bf16-contractions), AVX512-BF16 dot products where the
  /// target CPU has them; weights, optimizer state and other ops f32.
  bool bf16 = false;
  /// The CPU the kernels are compiled for and LLVM's codegen settings.
  CpuTargetOptions target;
  /// --target=cuda: the GPU the kernels are compiled for ("sm_80",
  /// "sm_90a"); empty: the cpu target.
  std::string gpuArch;
  /// --emulate-gpu-tiling: the cpu target with the cuda target's tiling
  /// (moe-gpu-tile) instead of the CPU's vectorization.
  bool emulateGpuTiling = false;
  /// --dump-ptx (cuda target): also write the kernels' PTX here.
  std::string dumpPtxPath;
  /// User passes at the extension points (--run-passes).
  std::vector<PassHook> passHooks;
  /// moec prune: moe-prune-layers first in the frontend stage.
  std::optional<PruneLayersPassOptions> prune;
  /// Called on every pass manager the driver creates, before its passes are
  /// added (moec applies MLIR's command-line options: IR printing, timing,
  /// crash reproducers). May be empty.
  std::function<mlir::LogicalResult(mlir::PassManager &)> setupPassManager;
  /// Called when a stage starts, with a short description ("planning
  /// train_step"); moec prints it as a progress line. May be empty.
  std::function<void(llvm::StringRef)> progress;
};

/// What a compile produced, as far as options.emit asked.
struct CompileResult {
  /// The moe module after the frontend stage (--emit=mlir).
  mlir::OwningOpRef<mlir::ModuleOp> module;
  /// The plans of all entry points in one module (--emit=plan).
  mlir::OwningOpRef<mlir::ModuleOp> plan;
  /// The plan's kernels in the LLVM dialect (--emit=llvm).
  mlir::OwningOpRef<mlir::ModuleOp> kernels;
  /// The .moec file (--emit=artifact).
  std::string artifact;
};

/// moec prune: writes to `weightsOut` the weights the pruned module reads,
/// from `weightsIn`, the unpruned model's (a weights file or checkpoint):
/// each parameter copied by name, or computed as its moe.carry_over says
/// (moe-prune-layers). Errors name the file and the tensor.
mlir::LogicalResult writePrunedWeights(mlir::ModuleOp pruned,
                                       const std::string &weightsIn,
                                       const std::string &weightsOut,
                                       std::string &error);

/// Registers the dialects and extensions the pipelines need (every upstream
/// dialect and extension: bufferization and the LLVM conversions live in
/// external models) and the moe dialect.
void registerCompilerDialects(mlir::DialectRegistry &registry);

/// Compiles `spec` in `context` (registerCompilerDialects). `specJson` is
/// the spec's text, which the artifact's manifest keeps. Fails either after a
/// diagnostic through the context (the IR failed to build, verify, lower or
/// compile) with `error` empty, or with a message in `error`.
mlir::LogicalResult compile(mlir::MLIRContext &context, const spec::Spec &spec,
                            llvm::StringRef specJson,
                            const CompileOptions &options,
                            CompileResult &result, std::string &error);

/// Like compile, from a moe module instead of a spec (`moec compile
/// model.mlir`): `module` is what `--emit=mlir` prints, possibly edited or
/// rewritten by a user's passes. Its `moe.spec` attribute (the spec it was
/// built from) gives the manifest's model and training settings; the
/// images per call come from the `infer` function. Runs the frontend stage
/// (the frontend extension point, the cost count) on it, then the rest as
/// compile does.
mlir::LogicalResult compileModule(mlir::MLIRContext &context,
                                  mlir::OwningOpRef<mlir::ModuleOp> module,
                                  const CompileOptions &options,
                                  CompileResult &result, std::string &error);

/// Writes what `emit` names from `result` to `path` ('-' is stdout) through
/// a temporary file renamed into place, so a failure leaves no partial file
/// and keeps an existing one. Fails with a message in `error`.
mlir::LogicalResult writeOutput(llvm::StringRef path, EmitKind emit,
                                const CompileResult &result,
                                std::string &error);

} // namespace driver
} // namespace moec

#endif // MOEC_DRIVER_DRIVER_H
