//===- ManifestNormalization.h - the manifest's normalization ---*- C++ -*-===//
//
// Internal to the runtime library: reads the optional
// dataset.normalization object of a manifest (artifact 1.2).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_MANIFESTNORMALIZATION_H
#define MOEC_RUNTIME_LIB_MANIFESTNORMALIZATION_H

#include "JsonCheck.h"
#include "moec/Runtime/Artifact.h"

namespace moec::rt {

/// Reads `dataset`'s optional "normalization" {"mean": [...], "std": [...]}
/// into `m` (whose channels must be set): `channels` finite numbers each,
/// every std > 0. Returns false (recording why in `check`) when malformed.
bool readDatasetNormalization(JsonCheck &check, const nlohmann::json &dataset,
                              Manifest &m);

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_MANIFESTNORMALIZATION_H
