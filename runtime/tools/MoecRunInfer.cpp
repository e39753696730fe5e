//===- MoecRunInfer.cpp - moec-run infer, run and call --------------------===//
//
// The commands that run a model on inputs: infer (a dataset, accuracy and
// throughput), run (raw images to raw logits) and call (one entry point on
// safetensors inputs).
//
//===----------------------------------------------------------------------===//

#include "MoecRun.h"

#include "moec/Runtime/Data.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/FileUtil.h"
#include "moec/Runtime/Predictions.h"
#include "moec/Runtime/Report.h"
#include "moec/Runtime/SafeTensors.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unistd.h>
#include <vector>

namespace moec::run {

//===----------------------------------------------------------------------===//
// infer
//===----------------------------------------------------------------------===//

static void drawProgress(int64_t done, int64_t total, double seconds) {
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
  const double rate = seconds > 0 ? double(data.n) / seconds : 0.0;
  if (session->device().name() == kTargetCpu)
    std::printf("throughput: %.1f images/s (threads %d, batch %" PRId64 ")\n",
                rate, session->threads(), batch);
  else
    std::printf("throughput: %.1f images/s (device %s, batch %" PRId64 ")\n",
                rate, std::string(session->device().name()).c_str(), batch);
  if (profileTop > 0)
    std::printf(
        "%s", profileReport(*session, static_cast<size_t>(profileTop)).c_str());
  if (!predictionsPath.empty())
    if (Error e = writePredictions(predictionsPath, predictions, classNames))
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

} // namespace moec::run
