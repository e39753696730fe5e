//===- Evaluate.h - a model's dataset and its eval entry point --*- C++ -*-===//
//
// loadModelSplit reads a split of the dataset a manifest names and checks
// that the model can take it; loadInferenceData reads any dataset kind for
// inference, normalized as the model was trained (modelNormalization);
// evaluate runs the "eval" entry point (docs/training-abi.md) over a
// dataset and measures the dropped-token share of each MoE layer
// (droppedShare). moec-run infer and train, and the Trainer, read their data
// through these.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_EVALUATE_H
#define MOEC_RUNTIME_EVALUATE_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/Session.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moec::rt {

/// Data errors for a dataset (loaded from `dir`) the model cannot take:
/// other image geometry, more classes than the model has, no images.
/// `kind` names the dataset kind in messages ("": the manifest's).
Error checkDatasetFits(const Manifest &m, const Dataset &data,
                       const std::string &dir, const std::string &kind = "");

/// The normalization the model was trained with: the manifest's
/// dataset.normalization (artifact 1.2), else the constants of its dataset
/// kind (normalizationFor). One-channel models use element 0.
Normalization modelNormalization(const Manifest &m);

/// The folder split `split` of a dataset of kind `kind` is read from:
/// DIR/<split> for an image-folder dataset (one folder per split, DIR/train
/// and DIR/test), else DIR (the loader picks the split's files).
std::string splitPath(const std::string &kind, const std::string &dir,
                      const std::string &split);

/// Split `split` ("train" or "test") of the manifest's dataset kind in
/// `dir` (splitPath), at most `limit` images, checked with
/// checkDatasetFits (errors name the folder read).
Expected<Dataset> loadModelSplit(const Manifest &m, const std::string &dir,
                                 const std::string &split,
                                 int64_t limit = kNoLimit);

/// Where moec-run infer reads its images.
struct InferenceSource {
  /// "fashion-mnist", "cifar10" or "image-folder"; "": the manifest's.
  std::string kind;
  std::string dir;
  std::string split = "test";
  /// An image folder is read from DIR/<split>, or from DIR itself when the
  /// split is not given explicitly and DIR has neither a train nor a test
  /// folder.
  bool splitGiven = false;
  int64_t limit = kNoLimit;
};

/// Loads `source` for inference with the model of `m`: any dataset kind,
/// normalized with modelNormalization(m), checked with checkDatasetFits.
/// Image folders may be unlabeled (PNGs directly in the folder). When the
/// model was trained on a dataset with known class names (Fashion-MNIST,
/// CIFAR-10) and every class folder is named after one of them (compared
/// case-insensitively, letters and digits only: "tshirt-top" is
/// "T-shirt/top"), labels follow the model's classes, and classNames
/// become the model's; otherwise labels are folder indices. `from` (if
/// given) receives the folder read.
Expected<Dataset> loadInferenceData(const Manifest &m,
                                    const InferenceSource &source,
                                    std::string *from = nullptr);

/// How a model routes tokens, read from the spec in its manifest.
struct RoutingInfo {
  /// The spec's moe.router.kind; "" when the manifest has no MoE spec.
  std::string router;
  int64_t topK = 0;
  /// Tokens per image: (height / patch_size) x (width / patch_size), plus
  /// the class token with "cls" pooling; 0 when the spec does not say.
  int64_t tokensPerImage = 0;
};
RoutingInfo routingInfo(const Manifest &m);

/// The dropped-token share of one MoE layer from its routing counts (tokens
/// that got an expert slot, summed over `images` images): for token-choice,
/// sinkhorn and per-image routers, the fraction of token-choices (images x
/// tokensPerImage x topK) that found no slot, 1 - sum(counts) / choices.
/// Expert-choice (experts choose tokens and fill every slot) and soft
/// (no capacity) routers make no token-choices: nullopt, as when the
/// routing is unknown.
std::optional<double> droppedShare(const RoutingInfo &routing,
                                   const std::vector<double> &counts,
                                   int64_t images);

/// The metrics-log key of a routing output's dropped-token share:
/// "routing.blocks.3.moe" -> "dropped_share.blocks.3.moe".
std::string droppedShareKey(const std::string &routingOutput);

/// What one pass of "eval" over a dataset gives.
struct EvalResult {
  double lossSum = 0;
  double correct = 0;
  int64_t images = 0;
  /// Per output of role routing_counts: its name and summed counts.
  std::vector<std::pair<std::string, std::vector<double>>> routing;
  /// Per routing output, in the same order: droppedShare of its counts.
  std::vector<std::optional<double>> dropped;

  double loss() const { return images ? lossSum / double(images) : 0; }
  double top1() const { return images ? correct / double(images) : 0; }
};

/// Writes images [done, done + count) of `data`, count = min(batch, n -
/// done), their labels and mask 1 to the inputs of an eval-like entry
/// point ("eval", "analyze"); the rest of the batch gets zero images,
/// label 0 and mask 0. Returns count.
int64_t fillEvalBatch(const Dataset &data, int64_t done, int64_t batch,
                      const EntryTensor &images, const EntryTensor &labels,
                      const EntryTensor &mask);

/// Runs "eval" over `data` in batches of the model's batch; the last batch
/// is padded with zero images, label 0 and mask 0. Argument errors for a
/// model without an eval entry point (or its images, labels, mask,
/// loss_sum, correct) or without weights.
Expected<EvalResult> evaluate(Session &session, const Dataset &data);

} // namespace moec::rt

#endif // MOEC_RUNTIME_EVALUATE_H
