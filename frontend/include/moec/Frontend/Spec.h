//===- Spec.h - moec JSON model spec ----------------------------*- C++ -*-===//
//
// The model spec a user writes (docs/spec.md), parsed and validated. This
// header and its implementation use neither MLIR nor LLVM: the spec is plain
// data, so the unit tests and any tool can read it cheaply. The IR builder
// (SpecToMoE.h) turns a validated Spec into a moe module.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_FRONTEND_SPEC_H
#define MOEC_FRONTEND_SPEC_H

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moec::spec {

enum class Pooling { Cls, Mean };
enum class Activation { Gelu, GeluTanh, Relu, Silu };
enum class RouterKind {
  TokenChoice,
  ExpertChoice,
  Soft,
  PerImage,
  Sinkhorn,
  SinkhornExpertChoice
};
enum class PlacementRule { EveryN, LastN, Blocks };
enum class OptimizerKind { AdamW, Sgd };
enum class ScheduleKind { Cosine, Constant };
enum class DatasetKind { FashionMnist, Cifar10, ImageFolder };

/// Spelling used in the spec (and in diagnostics) for each enum value.
const char *toString(Pooling v);
const char *toString(Activation v);
const char *toString(RouterKind v);
const char *toString(PlacementRule v);
const char *toString(OptimizerKind v);
const char *toString(ScheduleKind v);
const char *toString(DatasetKind v);

struct InputSpec {
  int64_t channels = 0;
  int64_t height = 0;
  int64_t width = 0;
};

struct ModelSpec {
  InputSpec input;
  int64_t patchSize = 0;
  int64_t width = 0;
  int64_t depth = 0;
  int64_t heads = 0;
  double mlpRatio = 4.0;
  /// round(mlpRatio * width), resolved by the parser.
  int64_t mlpHidden = 0;
  int64_t classes = 0;
  Pooling pooling = Pooling::Cls;
  Activation activation = Activation::Gelu;
  double layerNormEps = 1e-6;

  int64_t numPatches() const {
    return (input.height / patchSize) * (input.width / patchSize);
  }
  /// Tokens per image entering the blocks (patches + class token if any).
  int64_t numTokens() const {
    return numPatches() + (pooling == Pooling::Cls ? 1 : 0);
  }
};

struct RouterSpec {
  RouterKind kind = RouterKind::TokenChoice;
  /// Std of the Gaussian noise added to router logits in training
  /// (token-choice only; 0 for every other kind).
  double noiseStd = 0.0;
  /// Sinkhorn: number of normalisation iterations.
  int64_t sinkhornIters = 0;
  /// Soft MoE: slots per expert.
  int64_t slotsPerExpert = 0;
  /// Batch Prioritized Routing (token-choice, sinkhorn): tokens fill the
  /// experts' slots in order of their top gate.
  bool batchPrioritized = false;
  /// Per-image: route from the class token instead of the mean token
  /// ("input": "class-token").
  bool classToken = false;
  /// Cosine gates ("gate": "cosine"): logits = scale * cos(token, code),
  /// with the tokens first projected to `gateDim` dimensions when that is
  /// > 0, and `scale` a learned scalar starting at `gateScale`. Soft MoE's
  /// default (as published); "linear" (plain x * W) elsewhere.
  bool cosine = false;
  int64_t gateDim = 0;
  double gateScale = 1.0;
  /// Images per routing group (google-research/vmoe's group_size, which
  /// counts tokens): the router sees the tokens of this many images at
  /// once; capacity, slot order and the auxiliary losses are per group.
  int64_t groupSize = 1;
  /// Per-image ("scope": "model"): the first MoE layer's router decides
  /// for every MoE layer (Mobile V-MoE's single router); the later layers
  /// have no router of their own.
  bool modelScope = false;
};

struct AuxLossWeights {
  double importance = 0.0;
  double load = 0.0;
  double balance = 0.0;
  double zLoss = 0.0;
  /// Mobile V-MoE super-class loss weight (lambda), used when a super-class
  /// map is given.
  double superClass = 0.0;
};

/// The settings a MoE layer may override in /moe/layers. /moe's own values
/// are the defaults of every layer.
struct MoELayerSettings {
  int64_t experts = 0;
  /// Experts per token (token-choice, sinkhorn) or per image (per-image).
  /// 0 for expert-choice and soft, which have no k.
  int64_t topK = 0;
  int64_t expertHidden = 0;
  RouterSpec router;
  double capacityFactorTrain = 1.0;
  double capacityFactorEval = 1.0;
  bool sharedExpert = false;
};

/// One MoE layer: its block and its settings, /moe's values merged with the
/// block's entry in /moe/layers (if any).
struct MoELayerSpec {
  int64_t block = 0;
  MoELayerSettings settings;
  /// JSON pointer of the block's entry ("/moe/layers/5"), empty if none.
  std::string pointer;
};

/// The "moe" section. Its MoELayerSettings are the model-wide values given
/// directly in /moe; `layers` holds what each MoE block actually uses.
struct MoESpec : MoELayerSettings {
  /// False when the spec has no "moe" section: a dense ViT.
  bool enabled = false;
  PlacementRule rule = PlacementRule::LastN;
  /// Parameter of every-n / last-n.
  int64_t n = 0;
  /// Resolved MoE block indices, sorted ascending, unique, in [0, depth).
  std::vector<int64_t> blocks;
  /// One entry per block in `blocks`, in the same order.
  std::vector<MoELayerSpec> layers;
  AuxLossWeights aux;
  /// class index -> super-class index; empty when not given. When given its
  /// size is model.classes and every value is in [0, experts) of every
  /// layer.
  std::vector<int64_t> superClassMap;

  bool isMoEBlock(int64_t block) const;
  /// The layer of MoE block `block` (which must be one).
  const MoELayerSpec &layer(int64_t block) const;
};

struct OptimizerSpec {
  OptimizerKind kind = OptimizerKind::AdamW;
  double lr = 1e-3;
  double weightDecay = 0.05;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  /// SGD only.
  double momentum = 0.9;
  /// Global-norm clipping threshold; 0 disables clipping.
  double gradClip = 1.0;
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::Cosine;
  double warmupEpochs = 0.0;
  /// Final learning rate of the cosine decay, as a fraction of lr.
  double minLrRatio = 0.0;
};

struct TrainSpec {
  OptimizerSpec optimizer;
  ScheduleSpec schedule;
  int64_t batch = 128;
  int64_t epochs = 10;
  double labelSmoothing = 0.0;
  uint64_t seed = 0;
};

struct DataSpec {
  DatasetKind dataset = DatasetKind::FashionMnist;
  std::string path;
  /// Augmentation: random crop with this much zero padding (0 = off).
  int64_t cropPadding = 0;
  bool horizontalFlip = false;
};

/// 1-based line and column of a JSON value in the spec text.
struct SourcePos {
  unsigned line = 0;
  unsigned column = 0;
};

struct Spec {
  /// The file the spec came from ("<string>" for in-memory specs).
  std::string sourceName;
  std::string name;
  /// The preset this spec extends, empty if none.
  std::string extends;
  ModelSpec model;
  MoESpec moe;
  TrainSpec train;
  DataSpec data;
  /// JSON pointer ("" for the root, "/moe/top_k", ...) -> position of that
  /// value in the user's text. Values that came from a preset map to the
  /// position of the "extends" key.
  std::map<std::string, SourcePos> positions;

  /// Position of the value at `pointer`, or of its closest ancestor that has
  /// one (the root at worst).
  SourcePos positionOf(const std::string &pointer) const;
};

/// A spec error: where (file, line, column, JSON pointer) and what.
struct SpecError {
  std::string sourceName;
  SourcePos pos;
  std::string pointer;
  std::string message;

  /// "FILE:LINE:COL: POINTER: MESSAGE", e.g.
  /// "spec.json:12:14: /moe/top_k: must be <= experts (8), got 9".
  std::string str() const;
};

/// Either a validated Spec or the first error found.
struct ParseResult {
  std::optional<Spec> spec;
  std::optional<SpecError> error;
  explicit operator bool() const { return spec.has_value(); }
};

/// Parses and validates spec text; `sourceName` is used in errors.
ParseResult parseSpec(const std::string &text, const std::string &sourceName);
/// Reads and parses a spec file: a regular file of at most
/// limits::kMaxSpecFileBytes (anything else is an error too).
ParseResult parseSpecFile(const std::string &path);

/// The caps a spec must respect (docs/spec.md#limits), checked by parseSpec
/// before any IR exists, so that an absurd spec fails at once instead of
/// exhausting the compiler.
namespace limits {
inline constexpr int64_t kMaxSpecFileBytes = int64_t(16) << 20;
inline constexpr int64_t kMaxChannels = 1024;
inline constexpr int64_t kMaxImageSide = 4096;
inline constexpr int64_t kMaxWidth = 16384;
inline constexpr int64_t kMaxDepth = 256;
inline constexpr int64_t kMaxHidden = 65536;
inline constexpr int64_t kMaxClasses = int64_t(1) << 20;
inline constexpr int64_t kMaxExperts = 4096;
inline constexpr int64_t kMaxSinkhornIters = 100;
inline constexpr int64_t kMaxSlotsPerExpert = 256;
inline constexpr int64_t kMaxGateDim = 4096;
inline constexpr int64_t kMaxGroupSize = 65536;
inline constexpr int64_t kMaxBatch = 65536;
inline constexpr int64_t kMaxEpochs = 100000;
inline constexpr int64_t kMaxCropPadding = 1024;
/// Any number (learning rate, eps, capacity factors, ...): the largest f32.
inline constexpr double kMaxNumber = 3.4028234663852886e38;
/// The smallest learning rate: the smallest positive f32.
inline constexpr double kMinLearningRate = 1.401298464324817e-45;
/// What moec-run accepts in an artifact's manifest.
inline constexpr uint64_t kMaxSeed = (uint64_t(1) << 63) - 1;
/// Derived totals.
inline constexpr double kMaxParameters = 2147483648.0;          // 2^31
inline constexpr double kMaxFlopsPerImage = 1e13;               // forward pass
inline constexpr double kMaxTensorBytesPerImage = 4294967296.0; // 2^32
inline constexpr double kMaxImageActivationBytes = 1e10;        // per image
} // namespace limits

/// Sizes derived from a spec, estimated without building it. The byte
/// counts are lower bounds (f32, the tensors a training step keeps).
struct SpecTotals {
  double parameters = 0;
  /// The part of `parameters` in routed experts.
  double expertParameters = 0;
  /// Forward-pass floating-point operations per image (2 per multiply-add).
  double flopsPerImage = 0;
  /// The largest single activation tensor of one image, in bytes.
  double largestTensorBytesPerImage = 0;
  /// The activations a training step keeps for the backward pass, per image.
  double activationBytesPerImage = 0;
};
SpecTotals estimateTotals(const Spec &spec);

/// Checks that compiling `spec` for `batch` images per call (`training`:
/// with a train_step entry) fits in `memoryBytes` (0: this machine's
/// physical memory): the activations, plus the parameters, their gradients
/// and the optimizer state when training. Returns the error, if any.
std::optional<SpecError> checkMemory(const Spec &spec, int64_t batch,
                                     bool training, uint64_t memoryBytes = 0);
/// Whether `batch` images per call divide into every MoE layer's routing
/// groups. Returns the error, at the layer's group_size, if not.
std::optional<SpecError> checkRoutingGroups(const Spec &spec, int64_t batch);
/// This machine's physical memory in bytes (0 if unknown).
uint64_t physicalMemoryBytes();

/// Names of the built-in presets ("vit-tiny", "vit-small", "vit-base").
std::vector<std::string> presetNames();

} // namespace moec::spec

#endif // MOEC_FRONTEND_SPEC_H
