//===- ArtifactWriter.h - write a .moec artifact ----------------*- C++ -*-===//
//
// Packs a compiled model into the container of runtime/include/moec/Runtime/
// ArtifactFormat.h: the manifest and plan (JSON, read off the plan function
// that moe-plan-memory annotated) and the kernel library.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_ARTIFACTWRITER_H
#define MOEC_PASSES_ARTIFACTWRITER_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/Support/LLVM.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moec {

/// The spec's training settings (manifest "optimizer" and "train").
struct ArtifactTrainInfo {
  std::string optimizer, schedule;
  double lr = 0, weightDecay = 0, beta1 = 0, beta2 = 0, eps = 0,
         momentum = 0, gradClip = 0;
  int64_t batch = 0, epochs = 0;
  double warmupEpochs = 0, labelSmoothing = 0, minLrRatio = 0;
  uint64_t seed = 0;
  int64_t cropPadding = 0;
  bool horizontalFlip = false;
};

/// What the manifest says about the model beyond the plan itself.
/// What a target "cuda" artifact's runtime needs to launch its kernels.
struct ArtifactCudaInfo {
  std::string arch;
  int64_t blockThreads = 0;
  /// Scratch bytes per unit of each kernel's range (absent: none).
  std::map<std::string, int64_t> scratchBytes;
};

struct ArtifactModelInfo {
  std::string model;
  std::string target = "cpu";
  int64_t channels = 0, height = 0, width = 0;
  int64_t classes = 0;
  std::string datasetKind;
  std::string datasetPath;
  /// The user's spec, verbatim JSON text (kept in the manifest).
  std::string specJson;
  /// What the kernels were compiled for (CpuKernelLibrary).
  std::string targetCpu;
  std::vector<std::string> targetFeatures;
  /// The GEMMs' operand precision: "fp32" or "bf16" (--precision).
  std::string precision = "fp32";
  /// Present for target "cuda" (its kernels section is PTX).
  std::optional<ArtifactCudaInfo> cuda;
  /// Present when the artifact has training entry points.
  std::optional<ArtifactTrainInfo> train;
};

/// Builds the artifact bytes from `plan` (a module holding, for each of
/// `entries`, a function that went through moe-lower-to-kernels and
/// moe-plan-memory) and the kernel library. Parameters must have the same
/// offsets in every entry point. Fails with a diagnostic on `plan` if the
/// plan is malformed.
mlir::FailureOr<std::string>
buildArtifact(mlir::ModuleOp plan, llvm::ArrayRef<std::string> entries,
              const ArtifactModelInfo &info, llvm::StringRef kernelLibrary);

} // namespace moec

#endif // MOEC_PASSES_ARTIFACTWRITER_H
