//===- ManifestTraining.h - the manifest's training parts -------*- C++ -*-===//
//
// Internal to the runtime library: the checks and readers of a manifest's
// training side (artifact 1.1, docs/training-abi.md), used by
// parseManifest. Each returns false after recording why in `check`.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_MANIFESTTRAINING_H
#define MOEC_RUNTIME_LIB_MANIFESTTRAINING_H

#include "JsonCheck.h"
#include "moec/Runtime/Artifact.h"

namespace moec::rt {

/// train_step's inputs and outputs: what docs/training-abi.md requires.
bool checkTrainStepSignature(JsonCheck &check, const Manifest &m);
/// eval's inputs and outputs.
/// The signature of "eval" or "analyze" (`entryName`): images, labels and
/// mask in; loss_sum, correct and the routing outputs (routing_counts
/// [experts] for eval, routing_stats [batch, experts] or [batch] for
/// analyze) out.
bool checkEvalSignature(JsonCheck &check, const Manifest &m,
                        const std::string &entryName);
/// The optional "optimizer" object.
bool readOptimizer(JsonCheck &check, const nlohmann::json &root, Manifest &m);
/// The optional "train" object.
bool readTrain(JsonCheck &check, const nlohmann::json &root, Manifest &m);
/// The optional "state" array: the optimizer state tensors.
bool readState(JsonCheck &check, const nlohmann::json &root, Manifest &m);

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_MANIFESTTRAINING_H
