//===- moec-run.cpp - run compiled moec models ----------------------------===//
//
// moec-run infer|inspect|init|run|call|train MODEL ... and moec-run export
// CHECKPOINT -o W; see kUsage and docs/runtime.md. Exit codes: 0 success,
// 1 runtime failure (device, internal, writing outputs, a non-finite loss
// or gradient in training), 2 bad usage or bad input (flags, artifact,
// weights, data, checkpoints).
// The work lives in the runtime library: this file parses the command
// line, calls it and turns its errors into messages and exit codes.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Analyze.h"
#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/FileUtil.h"
#include "moec/Runtime/Predictions.h"
#include "moec/Runtime/Report.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Session.h"
#include "moec/Runtime/Trainer.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

using namespace moec::rt;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

const char *const kUsage =
    "usage: moec-run <command> MODEL [options]\n"
    "\n"
    "commands:\n"
    "  infer MODEL [--weights W] [--seed S] [--data DIR]\n"
    "              [--dataset fashion-mnist|cifar10|image-folder]\n"
    "              [--split test|train] [--batch N] [--threads N] [--limit N]\n"
    "              [--predictions OUT.csv|OUT.json] [--profile N]\n"
    "      accuracy and throughput on a dataset (default: the manifest's\n"
    "      dataset, test split), normalized as the model was trained; an\n"
    "      image folder is DIR/<class>/*.png or, unlabeled, DIR/*.png;\n"
    "      --predictions writes each image's predicted class; random weights\n"
    "      without --weights\n"
    "  analyze MODEL --weights W -o DIR [--data DIR] [--split test|train]\n"
    "                [--limit N] [--threads N] [--threshold T]\n"
    "      routing analysis of every MoE layer over a labelled dataset:\n"
    "      writes DIR/profile.json (docs/analysis.md), DIR/heatmaps.svg\n"
    "      (class x expert) and DIR/specialisation.svg; T (default 0.05) is\n"
    "      the image-level NMI below which a layer does not specialise\n"
    "  inspect MODEL\n"
    "      model, entry points, parameters, FLOPs, memory and kernels\n"
    "  init MODEL -o W.safetensors [--seed S]\n"
    "      write the random initial weights\n"
    "  run MODEL --weights W --input X.f32 --output Y.f32 [--threads N]\n"
    "      logits (n x classes f32) of raw images (n x C x H x W f32)\n"
    "  call MODEL --entry E --weights W --inputs IN.safetensors\n"
    "             -o OUT.safetensors [--state S.safetensors] [--threads N]\n"
    "      run entry point E once on a full batch: inputs and outputs by\n"
    "      their manifest names (train_step also writes updated.<param> and\n"
    "      the state tensors)\n"
    "  train MODEL [--data DIR] [--epochs N] [--batch N] [--lr X] [--seed S]\n"
    "              [--threads N] [--checkpoint-dir D] [--resume D]\n"
    "              [--keep-checkpoints K] [--weights W] [--log F.jsonl]\n"
    "              [--plot F.svg] [--log-every N] [--max-steps K]\n"
    "              [--eval-every-epoch on|off] [--profile N]\n"
    "              [--time-budget T] [-o FINAL.safetensors]\n"
    "      train with the model's train_step and eval entry points; prints\n"
    "      the final 'test accuracy: XX.XX%'. --time-budget T (seconds, or\n"
    "      20m, 1h) times train_step and eval here first and trains as many\n"
    "      epochs as fit T seconds from the start of the command\n"
    "  export CHECKPOINT -o W.safetensors\n"
    "      write the model parameters of a training checkpoint (a\n"
    "      ckpt-<step>.safetensors file, or a checkpoint directory: its\n"
    "      latest) as a weights file\n"
    "\n"
    "  --weights W takes a weights file, a checkpoint or a checkpoint\n"
    "  directory (then only its model parameters).\n"
    "  --threads 0 (the default) uses every core; --seed defaults to 0.\n";

int usageError(const std::string &message) {
  std::fprintf(stderr, "moec-run: error: %s\n%s", message.c_str(), kUsage);
  return kExitBadInput;
}

/// Reports `error`; input errors exit 2, device and internal errors 1.
int reportError(const Error &error) {
  std::fprintf(stderr, "moec-run: error: %s\n", error.message().c_str());
  switch (error.code()) {
  case ErrorCode::Device:
  case ErrorCode::Internal:
    return kExitFailure;
  default:
    return kExitBadInput;
  }
}

/// Reports a failure to write an output: a runtime failure, exit 1.
int reportWriteError(const Error &error) {
  std::fprintf(stderr, "moec-run: error: %s\n", error.message().c_str());
  return kExitFailure;
}

/// The parsed command line: one positional MODEL and --flag values.
struct Options {
  std::string model;
  std::map<std::string, std::string> flags;

  bool has(const char *flag) const { return flags.count(flag) != 0; }
  std::string get(const char *flag, const std::string &fallback = "") const {
    auto it = flags.find(flag);
    return it == flags.end() ? fallback : it->second;
  }
};

/// Parses argv[2..] for a command taking `allowed` flags (each with a
/// value). Returns false after reporting a usage error in `message`.
bool parseOptions(int argc, char **argv, const std::set<std::string> &allowed,
                  Options &out, std::string &message) {
  std::vector<std::string> positional;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
      continue;
    }
    std::string name = arg, value;
    bool hasValue = false;
    size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      hasValue = true;
    }
    if (!allowed.count(name)) {
      message = cat("unknown option '", name, "' for '", argv[1], "'");
      return false;
    }
    if (!hasValue) {
      if (i + 1 >= argc) {
        message = cat("option '", name, "' needs a value");
        return false;
      }
      value = argv[++i];
    }
    if (out.flags.count(name)) {
      message = cat("option '", name, "' given twice");
      return false;
    }
    out.flags[name] = value;
  }
  if (positional.empty()) {
    message = cat("'", argv[1], "' needs ",
                  std::string(argv[1]) == "export"
                      ? "a CHECKPOINT (file or checkpoint directory)"
                      : "a MODEL (.moec file)");
    return false;
  }
  if (positional.size() > 1) {
    message = cat("unexpected argument '", positional[1], "'");
    return false;
  }
  out.model = positional[0];
  return true;
}

/// Parses a decimal integer in [min, max]; false (with `message`) if not.
bool parseInteger(const std::string &flag, const std::string &text,
                  uint64_t min, uint64_t max, uint64_t &out,
                  std::string &message) {
  bool digits = !text.empty() && text.size() <= 20 &&
                std::all_of(text.begin(), text.end(),
                            [](char c) { return c >= '0' && c <= '9'; });
  errno = 0;
  unsigned long long value =
      digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE || value < min || value > max) {
    message = cat(flag, ": expected an integer in [", min, ", ", max,
                  "], got '", text, "'");
    return false;
  }
  out = value;
  return true;
}

/// Reads optional integer flag `flag` into `out` (left alone if absent).
template <typename T>
bool integerFlag(const Options &options, const char *flag, uint64_t min,
                 uint64_t max, T &out, std::string &message) {
  if (!options.has(flag))
    return true;
  uint64_t value;
  if (!parseInteger(flag, options.get(flag), min, max, value, message))
    return false;
  out = static_cast<T>(value);
  return true;
}

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
// Shared setup
//===----------------------------------------------------------------------===//

/// Loads MODEL and creates a cpu session; returns an exit code on failure.
int openSession(const Options &options, int threads,
                std::unique_ptr<Session> &out) {
  Expected<std::shared_ptr<const Artifact>> artifact =
      Artifact::load(options.model);
  if (!artifact)
    return reportError(artifact.error());
  Expected<std::unique_ptr<Session>> session =
      Session::create(*artifact, "cpu", threads);
  if (!session)
    return reportError(session.error());
  out = std::move(*session);
  return kExitOk;
}

/// Loads --weights, or initializes from --seed (with a note when `note`).
int setUpWeights(const Options &options, Session &session, uint64_t seed,
                 bool note) {
  if (options.has("--weights")) {
    std::string weightsNote;
    if (Error e = session.loadWeights(options.get("--weights"), &weightsNote))
      return reportError(e);
    if (!weightsNote.empty())
      std::fprintf(stderr, "moec-run: note: %s\n", weightsNote.c_str());
    return kExitOk;
  }
  if (note)
    std::fprintf(stderr,
                 "moec-run: note: no --weights given; using random initial "
                 "weights (seed %" PRIu64 ")\n",
                 seed);
  session.initWeights(seed);
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// infer
//===----------------------------------------------------------------------===//

void drawProgress(int64_t done, int64_t total, double seconds) {
  const int width = 30;
  int filled = total ? int(width * done / total) : width;
  std::string bar(size_t(filled), '=');
  if (filled < width)
    bar += '>';
  bar.resize(width, ' ');
  std::fprintf(stderr, "\r[%s] %" PRId64 "/%" PRId64 " images  %.1f images/s",
               bar.c_str(), done, total,
               seconds > 0 ? double(done) / seconds : 0.0);
  std::fflush(stderr);
}

int runInfer(const Options &options) {
  std::string message;
  int threads = 0;
  uint64_t seed = 0;
  int64_t batch = 0, limit = kNoLimit;
  if (!integerFlag(options, "--threads", 0, 4096, threads, message) ||
      !integerFlag(options, "--seed", 0, std::numeric_limits<uint64_t>::max(),
                   seed, message) ||
      !integerFlag(options, "--batch", 1, 1u << 30, batch, message) ||
      !integerFlag(options, "--limit", 1, std::numeric_limits<int64_t>::max(),
                   limit, message))
    return usageError(message);
  std::string split = options.get("--split", "test");
  if (split != "test" && split != "train")
    return usageError(
        cat("--split: expected test or train, got '", split, "'"));
  if (options.has("--weights") && options.has("--seed"))
    return usageError("--seed initializes random weights; it cannot be "
                      "combined with --weights");
  std::string kind = options.get("--dataset");
  if (options.has("--dataset") && kind != "fashion-mnist" &&
      kind != "cifar10" && kind != "image-folder")
    return usageError(cat("--dataset: expected fashion-mnist, cifar10 or "
                          "image-folder, got '",
                          kind, "'"));
  const std::string predictionsPath = options.get("--predictions");
  if (options.has("--predictions"))
    if (Expected<PredictionsFormat> f = predictionsFormat(predictionsPath); !f)
      return usageError(f.error().message());

  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  const Manifest &m = session->manifest();
  if (batch == 0)
    batch = m.batch;
  if (batch > m.batch)
    return usageError(
        cat("--batch ", batch, " exceeds the model's batch (", m.batch, ")"));
  // Routing groups: a call of --batch images must hold whole groups, or
  // the groups would depend on where the calls split the data.
  if (int64_t group = session->routingGroup(); batch % group != 0)
    return usageError(cat("--batch ", batch, ": the model routes groups of ",
                          group, " images; use a multiple of ", group));
  if (kind.empty())
    kind = m.datasetKind;
  // The manifest's path holds the manifest's dataset, not another kind.
  std::string dir =
      options.get("--data", kind == m.datasetKind ? m.datasetPath : "");
  if (dir.empty())
    return usageError(
        kind == m.datasetKind
            ? cat(options.model,
                  ": the manifest names no dataset path; pass --data DIR")
            : cat("--dataset ", kind, " needs --data DIR"));
  if (int rc = setUpWeights(options, *session, seed, /*note=*/true))
    return rc;

  // An image-folder dataset has one folder per split (DIR/test), as for
  // train, or is DIR itself when it has no such folder.
  InferenceSource source;
  source.kind = kind;
  source.dir = dir;
  source.split = split;
  source.splitGiven = options.has("--split");
  source.limit = limit;
  Expected<Dataset> loaded = loadInferenceData(m, source);
  if (!loaded)
    return reportError(loaded.error());
  const Dataset &data = *loaded;
  if (kind != m.datasetKind) {
    Normalization norm = modelNormalization(m);
    std::string values;
    for (int64_t c = 0; c < std::min<int64_t>(m.channels, 3); ++c)
      values += cat(c ? ", " : "", norm.mean[c], "/", norm.std[c]);
    std::fprintf(stderr,
                 "moec-run: note: %s images normalized as the model was "
                 "trained (mean/std %s)\n",
                 kind.c_str(), values.c_str());
  }
  // The model's class names: its dataset's, else an image folder's own.
  std::vector<std::string> classNames = datasetClassNames(m.datasetKind);
  if (classNames.empty() && kind == m.datasetKind)
    classNames = data.classNames;

  int64_t profileTop = 0;
  {
    std::string message;
    if (!integerFlag(options, "--profile", 1, 1 << 20, profileTop, message))
      return usageError(message);
  }
  session->setProfiling(profileTop > 0);

  std::vector<float> logits(size_t(batch) * m.classes);
  const bool tty = ::isatty(STDERR_FILENO);
  int64_t correct = 0, labeled = 0;
  std::vector<Prediction> predictions;
  double seconds = 0, lastDraw = -1;
  using Clock = std::chrono::steady_clock;
  for (int64_t done = 0; done < data.n;) {
    int64_t count = std::min(batch, data.n - done);
    auto start = Clock::now();
    if (Error e = session->infer(data.images.data() + done * data.imageSize(),
                                 count, logits.data()))
      return reportError(e);
    seconds += std::chrono::duration<double>(Clock::now() - start).count();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t at = done + i;
      Prediction p = predictRow(logits.data() + i * m.classes, m.classes);
      p.index = at;
      p.label = data.labels[size_t(at)];
      if (size_t(at) < data.files.size())
        p.image = data.files[size_t(at)];
      if (p.label >= 0) {
        ++labeled;
        correct += p.predicted == p.label;
      }
      if (!predictionsPath.empty())
        predictions.push_back(std::move(p));
    }
    done += count;
    if (tty && (seconds - lastDraw >= 0.1 || done == data.n)) {
      drawProgress(done, data.n, seconds);
      lastDraw = seconds;
    }
  }
  if (tty)
    std::fprintf(stderr, "\n");
  else
    std::fprintf(stderr, "moec-run: %" PRId64 " images in %.3f s\n", data.n,
                 seconds);
  if (labeled > 0)
    std::printf("accuracy: %.4f (%" PRId64 "/%" PRId64 ")\n",
                double(correct) / double(labeled), correct, labeled);
  else
    std::printf("accuracy: n/a (the images have no labels)\n");
  std::printf("throughput: %.1f images/s (threads %d, batch %" PRId64 ")\n",
              seconds > 0 ? double(data.n) / seconds : 0.0, session->threads(),
              batch);
  if (profileTop > 0)
    std::printf(
        "%s", profileReport(*session, static_cast<size_t>(profileTop)).c_str());
  if (!predictionsPath.empty())
    if (Error e = writePredictions(predictionsPath, predictions, classNames))
      return reportWriteError(e);
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
  std::unique_ptr<Session> session;
  if (int rc = openSession(options, 1, session))
    return rc;
  session->initWeights(seed);
  if (Error e = session->saveWeights(options.get("-o")))
    return reportWriteError(e);
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// run
//===----------------------------------------------------------------------===//

int runRun(const Options &options) {
  std::string message;
  int threads = 0;
  if (!integerFlag(options, "--threads", 0, 4096, threads, message))
    return usageError(message);
  for (const char *required : {"--weights", "--input", "--output"})
    if (!options.has(required))
      return usageError(cat("'run' needs ", required));
  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  if (int rc = setUpWeights(options, *session, 0, /*note=*/false))
    return rc;
  const Manifest &m = session->manifest();

  std::string inputPath = options.get("--input");
  Expected<std::vector<uint8_t>> bytes = readFile(inputPath);
  if (!bytes)
    return reportError(bytes.error());
  const size_t imageBytes = size_t(m.imageSize()) * 4;
  if (bytes->empty() || bytes->size() % imageBytes != 0)
    return reportError(makeError(
        ErrorCode::Data, inputPath, ": ", bytes->size(),
        " bytes is not a positive multiple of one image (", m.channels, "x",
        m.height, "x", m.width, " f32 = ", imageBytes, " bytes)"));
  const int64_t n = int64_t(bytes->size() / imageBytes);
  std::vector<float> images(size_t(n) * m.imageSize());
  std::memcpy(images.data(), bytes->data(), bytes->size());
  std::vector<float> logits(size_t(n) * m.classes);
  if (Error e = session->infer(images.data(), n, logits.data()))
    return reportError(e);
  if (Error e = writeFileAtomic(options.get("--output"), logits.data(),
                                logits.size() * 4))
    return reportWriteError(e);
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// call
//===----------------------------------------------------------------------===//

int runCall(const Options &options) {
  std::string message;
  int threads = 0;
  if (!integerFlag(options, "--threads", 0, 4096, threads, message))
    return usageError(message);
  for (const char *required : {"--entry", "--weights", "--inputs", "-o"})
    if (!options.has(required))
      return usageError(cat("'call' needs ", required));
  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  const Manifest &m = session->manifest();
  const std::string entryName = options.get("--entry");
  if (Error e = session->checkEntry(entryName))
    return reportError(e);
  const EntrySpec &entry = *m.entry(entryName);
  if (int rc = setUpWeights(options, *session, 0, /*note=*/false))
    return rc;
  if (options.has("--state"))
    if (Error e = session->loadState(options.get("--state")))
      return reportError(e);

  // Every input by its manifest name, with its dtype and shape.
  const std::string inputsPath = options.get("--inputs");
  Expected<SafeTensors> file =
      readSafeTensors(inputsPath, TensorTypes::F32AndI32);
  if (!file)
    return reportError(file.error());
  auto dataError = [&](const auto &...args) {
    return reportError(makeError(ErrorCode::Data, inputsPath, ": ", args...));
  };
  for (const TensorSpec &spec : entry.inputs) {
    const Tensor *t = file->find(spec.name);
    const char *dtype = spec.dtype == "i32" ? "I32" : "F32";
    if (!t)
      return dataError("missing input '", spec.name, "' of entry point '",
                       entryName, "' (", dtype, " ", formatShape(spec.shape),
                       ")");
    if (std::string(dtypeName(t->dtype)) != dtype)
      return dataError("input '", spec.name, "' has dtype ",
                       dtypeName(t->dtype), ", entry point '", entryName,
                       "' expects ", dtype);
    if (t->shape != spec.shape)
      return dataError("input '", spec.name, "' has shape ",
                       formatShape(t->shape), ", entry point '", entryName,
                       "' expects ", formatShape(spec.shape));
  }
  for (const Tensor &t : file->tensors)
    if (!entry.input(t.name))
      return dataError("unexpected tensor '", t.name, "' (entry point '",
                       entryName, "' has no such input)");
  for (const TensorSpec &spec : entry.inputs) {
    Expected<EntryTensor> in = session->input(entryName, spec.name);
    if (!in)
      return reportError(in.error());
    if (in->bytes())
      std::memcpy(in->data, file->find(spec.name)->bytes(), in->bytes());
  }

  if (Error e = session->run(entryName, m.batch))
    return reportError(e);

  // The outputs, then (train_step) the updated parameters and state.
  std::vector<TensorRef> refs;
  for (const EntryTensor &out : session->outputs(entryName)) {
    if (out.isI32())
      refs.emplace_back(out.spec->name, out.spec->shape, out.i32());
    else
      refs.emplace_back(out.spec->name, out.spec->shape, out.f32());
  }
  std::vector<Tensor> params, state;
  if (entryName == kEntryTrainStep) {
    params = session->parameters();
    state = session->state();
    for (const Tensor &t : params)
      refs.emplace_back("updated." + t.name, t.shape, t.data.data());
    for (const Tensor &t : state)
      refs.emplace_back(t.name, t.shape, t.data.data());
  }
  if (Error e = writeSafeTensors(options.get("-o"), refs,
                                 {{"model", m.model}, {"entry", entryName}}))
    return reportWriteError(e);
  return kExitOk;
}

//===----------------------------------------------------------------------===//
// train
//===----------------------------------------------------------------------===//

/// Parses a finite number > 0; false (with `message`) if not.
bool parsePositiveNumber(const std::string &flag, const std::string &text,
                         double &out, std::string &message) {
  char *end = nullptr;
  errno = 0;
  double value = text.empty() ? 0 : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE ||
      !std::isfinite(value) || value <= 0) {
    message = cat(flag, ": expected a positive number, got '", text, "'");
    return false;
  }
  out = value;
  return true;
}

/// A duration flag: a positive number of seconds, or one with the suffix
/// s, m or h ("1150", "20m", "1.5h").
bool parseDuration(const std::string &flag, const std::string &text,
                   double &seconds, std::string &message) {
  double scale = 1;
  std::string number = text;
  if (!number.empty()) {
    char unit = number.back();
    if (unit == 's' || unit == 'm' || unit == 'h') {
      scale = unit == 'h' ? 3600 : unit == 'm' ? 60 : 1;
      number.pop_back();
    }
  }
  if (!parsePositiveNumber(flag, number, seconds, message)) {
    message = cat(flag,
                  ": expected a duration (seconds, or a number with "
                  "the suffix s, m or h), got '",
                  text, "'");
    return false;
  }
  seconds *= scale;
  return true;
}

/// Reports a failed Trainer call: option conflicts as usage errors, outputs
/// that cannot be written (exit 1), a non-finite value (exit 1, naming the
/// checkpoint that stays), the rest by code.
int reportTrainError(const Error &error, TrainFailure failure,
                     const Trainer *trainer) {
  switch (failure) {
  case TrainFailure::Options:
    return usageError(error.message());
  case TrainFailure::Output:
    return reportWriteError(error);
  case TrainFailure::NonFinite: {
    if (::isatty(STDERR_FILENO))
      std::fprintf(stderr, "\n");
    std::string last = trainer ? trainer->lastCheckpoint() : std::string();
    std::string kept =
        last.empty() ? std::string("no checkpoint was written")
                     : cat("the last checkpoint, ", last, ", is untouched");
    std::fprintf(stderr,
                 "moec-run: error: %s (train_step); training stopped, %s\n",
                 error.message().c_str(), kept.c_str());
    return kExitFailure;
  }
  default:
    return reportError(error);
  }
}

int runTrain(const Options &options) {
  const auto commandStart = std::chrono::steady_clock::now();
  std::string message;
  int threads = 0;
  uint64_t seed = 0;
  int64_t epochs = 0, batch = 0, maxSteps = 0, keep = 3, logEvery = 10;
  double lr = 0;
  if (!integerFlag(options, "--threads", 0, 4096, threads, message) ||
      !integerFlag(options, "--seed", 0, std::numeric_limits<uint64_t>::max(),
                   seed, message) ||
      !integerFlag(options, "--epochs", 1, 1u << 30, epochs, message) ||
      !integerFlag(options, "--batch", 1, 1u << 30, batch, message) ||
      !integerFlag(options, "--max-steps", 1,
                   std::numeric_limits<int64_t>::max(), maxSteps, message) ||
      !integerFlag(options, "--keep-checkpoints", 0, 1u << 30, keep,
                   message) ||
      !integerFlag(options, "--log-every", 1, 1u << 30, logEvery, message))
    return usageError(message);
  int64_t profileTop = 0;
  if (!integerFlag(options, "--profile", 1, 1 << 20, profileTop, message))
    return usageError(message);
  if (options.has("--lr") &&
      !parsePositiveNumber("--lr", options.get("--lr"), lr, message))
    return usageError(message);

  TrainerOptions train;
  if (options.has("--eval-every-epoch")) {
    std::string value = options.get("--eval-every-epoch");
    if (value != "on" && value != "off")
      return usageError(
          cat("--eval-every-epoch: expected on or off, got '", value, "'"));
    train.evalEveryEpoch = value == "on";
  }
  auto given = [&](const char *flag) -> std::optional<std::string> {
    if (!options.has(flag))
      return std::nullopt;
    return options.get(flag);
  };
  train.dataDir = given("--data");
  if (options.has("--epochs"))
    train.epochs = epochs;
  if (options.has("--batch"))
    train.batch = batch;
  if (options.has("--lr"))
    train.lr = lr;
  if (options.has("--seed"))
    train.seed = seed;
  train.checkpointDir = given("--checkpoint-dir");
  train.resumeDir = given("--resume");
  train.keepCheckpoints = keep;
  train.weights = given("--weights");
  train.logPath = given("--log");
  train.plotPath = given("--plot");
  train.logEvery = logEvery;
  train.maxSteps = maxSteps;
  train.profile = profileTop > 0;
  train.start = commandStart;
  for (const char *flag : {"--seed", "--epochs", "--lr", "--time-budget"})
    if (options.has(flag))
      train.flagText[flag] = options.get(flag);
  // The flags that contradict each other: --resume with --weights before
  // --time-budget is read, then --time-budget's.
  if (Error e = train.check())
    return usageError(e.message());
  if (options.has("--time-budget")) {
    if (!parseDuration("--time-budget", options.get("--time-budget"),
                       train.timeBudget, message))
      return usageError(message);
    if (Error e = train.check())
      return usageError(e.message());
  }

  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  TrainerOutput output;
  output.results = &std::cout;
  output.messages = &std::cerr;
  output.prefix = "moec-run: ";
  output.progressInPlace = ::isatty(STDERR_FILENO);
  TrainFailure failure;
  Expected<std::unique_ptr<Trainer>> trainer =
      Trainer::create(*session, std::move(train), output, &failure);
  if (!trainer)
    return reportTrainError(trainer.error(), failure, nullptr);
  Expected<EvalResult> result = (*trainer)->run();
  if (!result)
    return reportTrainError(result.error(), (*trainer)->lastFailure(),
                            trainer->get());
  std::printf("test accuracy: %.2f%%\n", 100 * result->top1());
  if (profileTop > 0)
    std::printf("%s", profileReport(*session, static_cast<size_t>(profileTop),
                                    kEntryTrainStep)
                          .c_str());
  if (options.has("-o"))
    if (Error e = session->saveWeights(options.get("-o")))
      return reportWriteError(e);
  return kExitOk;
}
} // namespace

int main(int argc, char **argv) {
  if (argc < 2)
    return usageError("no command given");
  std::string command = argv[1];
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((i == 1 && arg == "help") || arg == "-h" || arg == "--help") {
      std::printf("%s", kUsage);
      return kExitOk;
    }
  }
  std::map<std::string,
           std::pair<std::set<std::string>, int (*)(const Options &)>>
      commands = {
          {"infer",
           {{"--weights", "--seed", "--data", "--split", "--batch", "--threads",
             "--limit", "--profile", "--dataset", "--predictions"},
            runInfer}},
          {"export", {{"-o"}, runExport}},
          {"analyze",
           {{"--weights", "--data", "--split", "--limit", "--threads", "-o",
             "--threshold"},
            runAnalyze}},
          {"inspect", {{}, runInspect}},
          {"init", {{"-o", "--seed"}, runInit}},
          {"run", {{"--weights", "--input", "--output", "--threads"}, runRun}},
          {"train",
           {{"--data", "--epochs", "--batch", "--lr", "--seed", "--threads",
             "--checkpoint-dir", "--resume", "--weights", "--log", "--plot",
             "--max-steps", "--eval-every-epoch", "--time-budget", "-o",
             "--keep-checkpoints", "--log-every", "--profile"},
            runTrain}},
          {"call",
           {{"--entry", "--weights", "--inputs", "-o", "--threads", "--state"},
            runCall}},
      };
  auto it = commands.find(command);
  if (it == commands.end())
    return usageError(cat("unknown command '", command, "'"));
  Options options;
  std::string message;
  if (!parseOptions(argc, argv, it->second.first, options, message))
    return usageError(message);
  try {
    return it->second.second(options);
  } catch (const std::bad_alloc &) {
    std::fprintf(stderr, "moec-run: error: out of memory\n");
  } catch (const std::exception &e) {
    std::fprintf(stderr, "moec-run: error: internal error: %s\n", e.what());
  }
  return kExitFailure;
}
