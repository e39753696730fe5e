//===- Artifact.h - loading and validating .moec artifacts ------*- C++ -*-===//
//
// Artifact::load reads a .moec file (ArtifactFormat.h, docs/artifact.md),
// checks the container (magic, version, size, checksum, section table) and
// parses the "manifest" and "plan" JSON sections into the structs below,
// checking their schema. The "kernels" section is checked for its target's
// format (an x86-64 ELF shared object for "cpu", PTX text for "cuda") and
// otherwise stays opaque bytes; a Device loads it.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_ARTIFACT_H
#define MOEC_RUNTIME_ARTIFACT_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moec::rt {

/// Number of elements of `shape` (1 for a scalar).
int64_t numElements(const std::vector<int64_t> &shape);
/// "[64, 4]".
std::string formatShape(const std::vector<int64_t> &shape);

/// An entry point's input or output: a f32 or i32 tensor in the arena.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;   ///< "f32" or "i32" (both 4 bytes per element)
  uint64_t offset = 0; ///< bytes from the arena's start
  /// What the runtime does with it (docs/training-abi.md): "normal_noise",
  /// "gradient", "routing_counts", "routing_stats"; empty when the
  /// manifest gives none.
  std::string role;
  int64_t count() const { return numElements(shape); }
  uint64_t bytes() const { return static_cast<uint64_t>(count()) * 4; }
};

/// Entry point names.
constexpr const char *kEntryInfer = "infer";
constexpr const char *kEntryTrainStep = "train_step";
constexpr const char *kEntryEval = "eval";
constexpr const char *kEntryAnalyze = "analyze";

/// Tensor roles of docs/training-abi.md.
constexpr const char *kRoleNormalNoise = "normal_noise";
constexpr const char *kRoleGradient = "gradient";
constexpr const char *kRoleRoutingCounts = "routing_counts";
constexpr const char *kRoleRoutingStats = "routing_stats";

enum class InitKind { Zeros, Ones, Normal, TruncNormal, Constant };
/// "zeros", "ones", "normal", "trunc_normal", "constant".
const char *initKindName(InitKind kind);

/// One parameter in the parameter block.
struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;   ///< "f32"
  uint64_t offset = 0; ///< bytes from the parameter block's start, 64-aligned
  InitKind init = InitKind::Zeros;
  double std = 0;   ///< for Normal and TruncNormal
  double value = 0; ///< for Constant
  int64_t count() const { return numElements(shape); }
};

struct EntrySpec {
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  int64_t flops = 0; ///< per full batch
  int64_t flopsPerImage = 0;

  /// The input / output named `name`, or nullptr.
  const TensorSpec *input(const std::string &name) const;
  const TensorSpec *output(const std::string &name) const;
};

/// The manifest's "optimizer" object (artifact 1.1): the spec's settings,
/// for display and as defaults of `moec-run train`. Absent fields are 0.
struct OptimizerSpec {
  std::string kind; ///< "adamw", "sgd", ...
  double lr = 0;
  double weightDecay = 0, beta1 = 0, beta2 = 0, eps = 0, momentum = 0,
         gradClip = 0;
};

/// The manifest's "train" object (artifact 1.1).
struct TrainSpec {
  int64_t batch = 0; ///< equals Manifest::batch
  int64_t epochs = 0;
  double warmupEpochs = 0;
  double labelSmoothing = 0;
  uint64_t seed = 0;
  std::string schedule; ///< "cosine", "constant", ... ("" if absent)
  int64_t cropPadding = 0;
  bool horizontalFlip = false;
};

/// Target names.
constexpr const char *kTargetCpu = "cpu";
constexpr const char *kTargetCuda = "cuda";

/// The manifest's "cuda" object, required for target "cuda".
struct CudaTarget {
  std::string arch;         ///< "sm_80" or "sm_90a"
  int64_t blockThreads = 0; ///< threads per block of every launch
  std::string format;       ///< "ptx"
};

/// The "manifest" section.
struct Manifest {
  std::string model;
  std::string target; ///< "cpu" or "cuda"
  std::string compiler;
  /// The CPU the kernels were generated for and the ISA extensions they
  /// may use (LLVM feature names); empty in artifacts that do not say.
  std::string targetCpu;
  std::vector<std::string> targetFeatures;
  /// Target "cuda": the GPU architecture and launch shape (empty arch for
  /// other targets).
  CudaTarget cuda;
  /// The GEMMs' operand precision, "fp32" or "bf16" (fp32 accumulation and
  /// weights either way); "fp32" in artifacts that do not say.
  std::string precision = "fp32";
  int64_t batch = 0; ///< the most images one kernel call takes
  int64_t channels = 0, height = 0, width = 0;
  int64_t classes = 0;
  std::string datasetKind; ///< "fashion-mnist", "cifar10" or "image-folder"
  std::string datasetPath;
  /// dataset.normalization (artifact 1.2): the per-channel mean and std the
  /// model was trained with, `channels` values each; empty in artifacts
  /// that do not say (the dataset kind's constants apply).
  std::vector<double> normalizationMean, normalizationStd;
  uint64_t paramBytes = 0;
  int64_t paramCount = 0;
  int64_t activeParamsPerImage = 0;
  uint64_t arenaBytes = 0;
  std::vector<ParamSpec> params;
  /// Persistent non-parameter tensors (optimizer slots, named
  /// optimizer.<slot>.<param>) in the parameter block; init is always
  /// zeros. Empty before artifact 1.1.
  std::vector<ParamSpec> state;
  std::optional<OptimizerSpec> optimizer;
  std::optional<TrainSpec> train;
  std::map<std::string, EntrySpec> entries;
  std::string spec; ///< the model spec, as compact JSON ("" if absent)
  /// MoE layers `moec prune` replaced by a dense FFN, each as "LAYER
  /// (REPLACEMENT)", e.g. "blocks.1.moe (shared)"; empty if none.
  std::vector<std::string> prunedLayers;

  /// Floats per image: channels * height * width.
  int64_t imageSize() const { return channels * height * width; }
  /// The "infer" entry point (always present in a loaded artifact).
  const EntrySpec &infer() const { return entries.at("infer"); }
  /// The entry point `name`, or nullptr.
  const EntrySpec *entry(const std::string &name) const {
    auto it = entries.find(name);
    return it == entries.end() ? nullptr : &it->second;
  }
};

/// A kernel buffer argument: a base pointer into the arena or the
/// parameter block.
struct BufferArg {
  enum class Space { Arena, Param };
  Space space = Space::Arena;
  uint64_t offset = 0;
  /// The bytes the kernel may touch from `offset` (the plan's optional
  /// "bytes"); 0 when the plan does not say.
  uint64_t bytes = 0;
};

/// One kernel call of an entry point.
struct Dispatch {
  enum class Parallel {
    Images, ///< called over [0, n), n = images in this call
    Fixed,  ///< called over [0, tiles)
  };
  std::string kernel; ///< the kernel's symbol in the "kernels" section
  std::string op;     ///< the moe op it implements (for display)
  std::string name;   ///< e.g. "blocks.3.moe" (for display)
  Parallel parallel = Parallel::Images;
  int64_t tiles = 0;
  /// Images per step of an images dispatch: 1, or n for a kernel over
  /// routing groups of n images (its `tiles` is batch / n). Set on load.
  int64_t imagesPerStep = 1;
  /// The op's FLOPs over one call of `tiles` (0 where the artifact does not
  /// say): the profile's rates.
  int64_t flops = 0;
  /// Bytes of device scratch memory one unit of the range needs (the plan's
  /// optional "scratch_bytes", target "cuda"); 0 when it needs none.
  uint64_t scratchBytes = 0;
  std::vector<BufferArg> args;

  /// The range the kernel runs over when a call holds `images` images
  /// (a multiple of imagesPerStep: the runtime pads a call to whole
  /// routing groups).
  int64_t range(int64_t images) const {
    return parallel == Parallel::Images
               ? (images + imagesPerStep - 1) / imagesPerStep
               : tiles;
  }
  /// The FLOPs of one call that holds `images` images.
  double flopsFor(int64_t images) const {
    return parallel == Parallel::Images && tiles > 0
               ? static_cast<double>(flops) * range(images) / tiles
               : static_cast<double>(flops);
  }
};

/// The "plan" section: per entry point, its dispatches in order.
struct Plan {
  std::map<std::string, std::vector<Dispatch>> entries;
  /// The distinct kernel symbols, in first-use order.
  std::vector<std::string> kernelNames() const;
};

struct SectionInfo {
  std::string name;
  uint64_t offset = 0;
  uint64_t size = 0;
};

/// How Artifact::load and Artifact::fromBytes check the container. The
/// defaults are the only settings for real files.
struct LoadOptions {
  /// Compare the header's checksum with the file's bytes. For fuzzing only
  /// (test/fuzz/artifact.cpp): with false, mutated inputs get past the
  /// checksum to the section table and the JSON schema checks.
  bool verifyChecksum = true;
};

/// A loaded, validated artifact. Immutable; share it between sessions.
class Artifact {
public:
  /// Reads and validates `path`. Errors name `path` as given.
  static Expected<std::shared_ptr<const Artifact>>
  load(const std::string &path, const LoadOptions &options = {});
  /// Validates an artifact held in memory; `displayName` stands for the
  /// file in messages.
  static Expected<std::shared_ptr<const Artifact>>
  fromBytes(std::vector<uint8_t> bytes, const std::string &displayName,
            const LoadOptions &options = {});

  const std::string &path() const { return path_; }
  uint32_t versionMajor() const { return versionMajor_; }
  uint32_t versionMinor() const { return versionMinor_; }
  uint64_t fileSize() const { return bytes_.size(); }
  const std::vector<SectionInfo> &sections() const { return sections_; }
  /// The section named `name`, or nullptr.
  const SectionInfo *section(const std::string &name) const;
  /// The bytes of a section.
  const uint8_t *sectionData(const SectionInfo &section) const {
    return bytes_.data() + section.offset;
  }
  const Manifest &manifest() const { return manifest_; }
  const Plan &plan() const { return plan_; }
  /// The "kernels" section: an x86-64 ELF shared object (target "cpu") or
  /// NUL-terminated PTX text (target "cuda").
  const uint8_t *kernelsData() const {
    return sectionData(sections_[kernelsIndex_]);
  }
  uint64_t kernelsSize() const { return sections_[kernelsIndex_].size; }

private:
  Artifact() = default;

  std::string path_;
  std::vector<uint8_t> bytes_;
  uint32_t versionMajor_ = 0, versionMinor_ = 0;
  std::vector<SectionInfo> sections_;
  size_t kernelsIndex_ = 0;
  Manifest manifest_;
  Plan plan_;
};

/// Parses and checks manifest JSON text; `where` prefixes messages
/// ("model.moec: manifest").
Expected<Manifest> parseManifest(const std::string &text,
                                 const std::string &where);
/// Parses and checks plan JSON text against `manifest` (buffer offsets,
/// entry points).
Expected<Plan> parsePlan(const std::string &text, const Manifest &manifest,
                         const std::string &where);

} // namespace moec::rt

#endif // MOEC_RUNTIME_ARTIFACT_H
