//===- MoecRunModel.cpp - moec-run inspect, init, export and analyze ------===//
//
// The commands about a model and its weights: inspect (the artifact),
// init (random initial weights, computed on the host: no device needed),
// export (a checkpoint's parameters) and analyze (routing statistics).
//
//===----------------------------------------------------------------------===//

#include "MoecRun.h"

#include "moec/Runtime/Analyze.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/Report.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Weights.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <vector>

namespace moec::run {

//===----------------------------------------------------------------------===//
// inspect
//===----------------------------------------------------------------------===//

int runInspect(const Options &options) {
  Expected<std::shared_ptr<const Artifact>> loaded =
      Artifact::load(options.model);
  if (!loaded)
    return reportError(loaded.error());
  std::printf("%s", inspectReport(**loaded).c_str());
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// analyze
//===----------------------------------------------------------------------===//

int runAnalyze(const Options &options) {
  std::string message;
  int threads = 0;
  int64_t limit = kNoLimit;
  if (!integerFlag(options, "--threads", 0, 4096, threads, message) ||
      !integerFlag(options, "--limit", 1, std::numeric_limits<int64_t>::max(),
                   limit, message))
    return usageError(message);
  if (!options.has("--weights"))
    return usageError("analyze needs --weights (the trained model's)");
  if (!options.has("-o"))
    return usageError("analyze needs -o DIR (where the profile and the "
                      "pictures go)");
  const std::string split = options.get("--split", "test");
  if (split != "test" && split != "train")
    return usageError(
        cat("--split: expected test or train, got '", split, "'"));
  double threshold = kDefaultNmiThreshold;
  if (options.has("--threshold")) {
    const std::string t = options.get("--threshold");
    char *end = nullptr;
    threshold = std::strtod(t.c_str(), &end);
    if (t.empty() || *end != '\0' || !(threshold >= 0 && threshold <= 1))
      return usageError(
          cat("--threshold: expected a number in [0, 1], got '", t, "'"));
  }
  const std::string outDir = options.get("-o");
  std::error_code ec;
  if (std::filesystem::exists(outDir, ec) &&
      !std::filesystem::is_directory(outDir, ec))
    return usageError(cat("-o ", outDir, ": exists and is not a folder"));

  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  const Manifest &m = session->manifest();
  if (Error e = session->checkEntry(kEntryAnalyze))
    return reportError(e);
  const std::string dir = options.get("--data", m.datasetPath);
  if (dir.empty())
    return usageError(cat(options.model, ": the manifest names no dataset "
                                         "path; pass --data DIR"));
  if (int rc = setUpWeights(options, *session, 0, /*note=*/false))
    return rc;
  Expected<Dataset> data = loadModelSplit(m, dir, split, limit);
  if (!data)
    return reportError(data.error());
  if (data->classNames.empty())
    data->classNames = datasetClassNames(m.datasetKind);
  Expected<RoutingProfile> profile = analyzeRouting(*session, *data);
  if (!profile)
    return reportError(profile.error());
  profile->datasetKind = m.datasetKind;
  profile->dataDir = dir;
  profile->split = split;

  if (Error e = writeRoutingProfile(*profile, outDir, threshold))
    return reportWriteError(e);
  std::printf("%s", routingProfileTable(*profile, threshold).c_str());
  std::printf("wrote %s/profile.json, heatmaps.svg, specialisation.svg\n",
              outDir.c_str());
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// export
//===----------------------------------------------------------------------===//

int runExport(const Options &options) {
  if (!options.has("-o"))
    return usageError("'export' needs -o W.safetensors");
  std::string note, source;
  Expected<SafeTensors> weights = readWeights(options.model, &note, &source);
  if (!weights)
    return reportError(weights.error());
  if (note.empty())
    return reportError(
        makeError(ErrorCode::Weights, source,
                  ": not a moec checkpoint (no 'format' metadata); a weights "
                  "file is used as --weights as it is"));
  std::vector<TensorRef> refs;
  for (const Tensor &t : weights->tensors)
    refs.emplace_back(t.name, t.shape, t.data.data());
  if (Error e = writeSafeTensors(options.get("-o"), refs, weights->metadata))
    return reportWriteError(e);
  std::fprintf(stderr, "moec-run: wrote the %zu model parameters of %s to %s\n",
               refs.size(), source.c_str(), options.get("-o").c_str());
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// init
//===----------------------------------------------------------------------===//

int runInit(const Options &options) {
  std::string message;
  uint64_t seed = 0;
  if (!integerFlag(options, "--seed", 0, std::numeric_limits<uint64_t>::max(),
                   seed, message))
    return usageError(message);
  if (!options.has("-o"))
    return usageError("'init' needs -o W.safetensors");
  // The values Session::initWeights gives, on the host: a model for any
  // target, with or without its device here.
  Expected<std::shared_ptr<const Artifact>> artifact =
      Artifact::load(options.model);
  if (!artifact)
    return reportError(artifact.error());
  const Manifest &m = (*artifact)->manifest();
  std::vector<Tensor> params;
  for (const ParamSpec &p : m.params) {
    Tensor t{p.name, p.shape, std::vector<float>(size_t(p.count()))};
    initParameter(p, seed, t.data.data());
    params.push_back(std::move(t));
  }
  std::vector<TensorRef> refs;
  for (const Tensor &t : params)
    refs.push_back({t.name, t.shape, t.data.data()});
  if (Error e = writeSafeTensors(options.get("-o"), refs, {{"model", m.model}}))
    return reportWriteError(e);
  return kExitOk;
}

} // namespace moec::run
