//===- moec-run.cpp - run compiled moec models ----------------------------===//
//
// moec-run infer|inspect|init|run|call|train MODEL ...; see kUsage and
// docs/runtime.md. Exit codes: 0 success, 1 runtime failure (device,
// internal, writing outputs, a non-finite loss or gradient in training), 2
// bad usage or bad input (flags, artifact, weights, data, checkpoints).
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Batches.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/FileUtil.h"
#include "moec/Runtime/Finite.h"
#include "moec/Runtime/Metrics.h"
#include "moec/Runtime/Weights.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Session.h"
#include "moec/Runtime/TimeBudget.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
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
    "  infer MODEL [--weights W] [--seed S] [--data DIR] [--split test|train]\n"
    "              [--batch N] [--threads N] [--limit N] [--profile N]\n"
    "      accuracy and throughput on the model's dataset (default: the\n"
    "      manifest's dataset, test split); random weights without --weights\n"
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
    "\n"
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
    message = cat("'", argv[1], "' needs a MODEL (.moec file)");
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

/// "1.2 MiB" (for at least 1 KiB).
std::string humanBytes(uint64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.1f %s", value, units[unit]);
  return buffer;
}

/// "1.23 M" (for at least 1000).
std::string humanCount(double value) {
  const char *units[] = {"", " K", " M", " G", " T"};
  int unit = 0;
  while (value >= 1000 && unit < 4) {
    value /= 1000;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.2f%s", value, units[unit]);
  return buffer;
}

/// " (1.23 M)" for counts of at least 1000, else "".
std::string countNote(int64_t value) {
  return value >= 1000 ? " (" + humanCount(double(value)) + ")" : "";
}

/// " (1.2 MiB)" for sizes of at least 1 KiB, else "".
std::string bytesNote(uint64_t value) {
  return value >= 1024 ? " (" + humanBytes(value) + ")" : "";
}

//===----------------------------------------------------------------------===//
// inspect
//===----------------------------------------------------------------------===//

int runInspect(const Options &options) {
  Expected<std::shared_ptr<const Artifact>> loaded =
      Artifact::load(options.model);
  if (!loaded)
    return reportError(loaded.error());
  const Artifact &a = **loaded;
  const Manifest &m = a.manifest();
  std::printf("model:        %s\n", m.model.c_str());
  std::printf("target:       %s\n", m.target.c_str());
  std::printf("compiler:     %s\n", m.compiler.c_str());
  if (!m.targetCpu.empty())
    std::printf("target cpu:   %s (%zu ISA features)\n", m.targetCpu.c_str(),
                m.targetFeatures.size());
  std::printf("version:      %u.%u\n", a.versionMajor(), a.versionMinor());
  std::printf("file size:    %" PRIu64 " bytes\n", a.fileSize());
  std::printf("batch:        %" PRId64 "\n", m.batch);
  std::printf("input:        %" PRId64 "x%" PRId64 "x%" PRId64 "\n", m.channels,
              m.height, m.width);
  std::printf("classes:      %" PRId64 "\n", m.classes);
  std::printf("dataset:      %s (%s)\n", m.datasetKind.c_str(),
              m.datasetPath.empty() ? "no path" : m.datasetPath.c_str());
  std::printf("\nentry points:\n");
  for (const auto &[name, entry] : m.entries) {
    auto dispatches = a.plan().entries.find(name);
    std::printf(
        "  %s (%zu dispatches, %" PRId64 " FLOPs per batch)\n", name.c_str(),
        dispatches == a.plan().entries.end() ? size_t(0)
                                             : dispatches->second.size(),
        entry.flops);
    auto role = [](const TensorSpec &t) {
      return t.role.empty() ? std::string() : " (" + t.role + ")";
    };
    for (const TensorSpec &t : entry.inputs)
      std::printf("    input   %-10s %s%s%s\n", t.name.c_str(),
                  t.dtype.c_str(), formatShape(t.shape).c_str(),
                  role(t).c_str());
    for (const TensorSpec &t : entry.outputs)
      std::printf("    output  %-10s %s%s%s\n", t.name.c_str(),
                  t.dtype.c_str(), formatShape(t.shape).c_str(),
                  role(t).c_str());
  }
  if (m.optimizer) {
    const OptimizerSpec &o = *m.optimizer;
    std::printf("\noptimizer:    %s, lr %g, weight decay %g, betas (%g, %g), "
                "eps %g, momentum %g, grad clip %g\n",
                o.kind.c_str(), o.lr, o.weightDecay, o.beta1, o.beta2, o.eps,
                o.momentum, o.gradClip);
  }
  if (m.train) {
    const TrainSpec &t = *m.train;
    std::printf("train:        batch %" PRId64 ", %" PRId64
                " epochs, warm-up %g epochs, schedule %s, label smoothing "
                "%g, seed %" PRIu64 ", crop padding %" PRId64 ", flip %s\n",
                t.batch, t.epochs, t.warmupEpochs,
                t.schedule.empty() ? "-" : t.schedule.c_str(),
                t.labelSmoothing, t.seed, t.cropPadding,
                t.horizontalFlip ? "on" : "off");
  }

  size_t nameWidth = 4, shapeWidth = 5;
  for (const ParamSpec &p : m.params) {
    nameWidth = std::max(nameWidth, p.name.size());
    shapeWidth = std::max(shapeWidth, formatShape(p.shape).size());
  }
  std::printf("\nparameters:\n");
  std::printf("  %-*s  %-*s  %12s  %s\n", int(nameWidth), "name",
              int(shapeWidth), "shape", "count", "init");
  for (const ParamSpec &p : m.params) {
    std::string init = initKindName(p.init);
    if (p.init == InitKind::Normal || p.init == InitKind::TruncNormal)
      init += cat("(std ", p.std, ")");
    std::printf("  %-*s  %-*s  %12" PRId64 "  %s\n", int(nameWidth),
                p.name.c_str(), int(shapeWidth), formatShape(p.shape).c_str(),
                p.count(), init.c_str());
  }
  if (!m.state.empty()) {
    int64_t values = 0;
    for (const ParamSpec &p : m.state)
      values += p.count();
    std::printf("\nstate: %zu tensors, %" PRId64 " values (%s, ...)\n",
                m.state.size(), values, m.state[0].name.c_str());
  }
  const EntrySpec &infer = m.infer();
  std::printf("\n");
  std::printf("param count:              %" PRId64 "%s\n", m.paramCount,
              countNote(m.paramCount).c_str());
  std::printf("active params per image:  %" PRId64 "%s\n",
              m.activeParamsPerImage,
              countNote(m.activeParamsPerImage).c_str());
  std::printf("FLOPs per image:          %" PRId64 "%s\n", infer.flopsPerImage,
              countNote(infer.flopsPerImage).c_str());
  std::printf("param bytes:              %" PRIu64 "%s\n", m.paramBytes,
              bytesNote(m.paramBytes).c_str());
  std::printf("arena bytes:              %" PRIu64 "%s\n", m.arenaBytes,
              bytesNote(m.arenaBytes).c_str());
  std::printf("kernels:                  %zu, section %" PRIu64 " bytes%s\n",
              a.plan().kernelNames().size(), a.kernelsSize(),
              bytesNote(a.kernelsSize()).c_str());
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
    if (Error e = session.loadWeights(options.get("--weights")))
      return reportError(e);
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

/// Data errors for a dataset (loaded from `dir`) the model cannot take:
/// other image geometry, more classes than the model has, no images.
Error checkDatasetFits(const Manifest &m, const Dataset &data,
                       const std::string &dir) {
  if (data.channels != m.channels || data.height != m.height ||
      data.width != m.width)
    return makeError(ErrorCode::Data, dir, ": ", m.datasetKind, " images are ",
                     data.channels, "x", data.height, "x", data.width,
                     ", but the model expects ", m.channels, "x", m.height,
                     "x", m.width);
  if (int64_t(data.classNames.size()) > m.classes)
    return makeError(ErrorCode::Data, dir, ": the dataset has ",
                     data.classNames.size(), " classes, but the model has ",
                     m.classes);
  if (data.n == 0)
    return makeError(ErrorCode::Data, dir, ": no images");
  return Error::success();
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

/// Time per op kind, then the `top` most expensive dispatches.
void printProfile(Session &session, size_t top,
                  const std::string &entry = "infer") {
  const std::vector<Dispatch> &plan =
      session.artifact().plan().entries.at(entry);
  const std::vector<double> &secs = entry == "infer"
                                        ? session.dispatchSeconds()
                                        : session.entrySeconds(entry);
  if (secs.size() != plan.size())
    return;
  double total = 0;
  std::map<std::string, std::pair<double, int>> byOp;
  for (size_t i = 0; i < plan.size(); ++i) {
    total += secs[i];
    byOp[plan[i].op].first += secs[i];
    byOp[plan[i].op].second += 1;
  }
  if (total <= 0)
    return;
  std::vector<std::pair<double, std::string>> ops;
  for (auto &[op, entry] : byOp)
    ops.push_back({entry.first, op});
  std::sort(ops.rbegin(), ops.rend());
  std::printf("\nprofile: %.3f s in %zu dispatches\n", total, plan.size());
  std::printf("  %-24s %10s %7s %6s\n", "op", "seconds", "share", "count");
  for (auto &[t, op] : ops)
    std::printf("  %-24s %10.4f %6.1f%% %6d\n", op.c_str(), t,
                100 * t / total, byOp[op].second);
  std::vector<size_t> order(plan.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return secs[a] > secs[b]; });
  std::printf("  %-10s %-24s %-28s %10s %7s\n", "kernel", "op", "name",
              "seconds", "share");
  for (size_t k = 0; k < std::min(top, order.size()); ++k) {
    const Dispatch &d = plan[order[k]];
    std::printf("  %-10s %-24s %-28s %10.4f %6.1f%%\n", d.kernel.c_str(),
                d.op.c_str(), d.name.c_str(), secs[order[k]],
                100 * secs[order[k]] / total);
  }
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

  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  const Manifest &m = session->manifest();
  if (batch == 0)
    batch = m.batch;
  if (batch > m.batch)
    return usageError(
        cat("--batch ", batch, " exceeds the model's batch (", m.batch, ")"));
  std::string dir = options.get("--data", m.datasetPath);
  if (dir.empty())
    return usageError(cat(options.model,
                          ": the manifest names no dataset path; pass --data "
                          "DIR"));
  if (int rc = setUpWeights(options, *session, seed, /*note=*/true))
    return rc;

  Expected<Dataset> loaded = loadDataset(m.datasetKind, dir, split, m.channels,
                                         m.height, m.width, limit);
  if (!loaded)
    return reportError(loaded.error());
  const Dataset &data = *loaded;
  if (Error e = checkDatasetFits(m, data, dir))
    return reportError(e);

  int64_t profileTop = 0;
  {
    std::string message;
    if (!integerFlag(options, "--profile", 1, 1 << 20, profileTop, message))
      return usageError(message);
  }
  session->setProfiling(profileTop > 0);

  std::vector<float> logits(size_t(batch) * m.classes);
  const bool tty = ::isatty(STDERR_FILENO);
  int64_t correct = 0;
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
      const float *row = logits.data() + i * m.classes;
      int64_t best = std::max_element(row, row + m.classes) - row;
      correct += best == data.labels[size_t(done + i)];
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
  std::printf("accuracy: %.4f (%" PRId64 "/%" PRId64 ")\n",
              double(correct) / double(data.n), correct, data.n);
  std::printf("throughput: %.1f images/s (threads %d, batch %" PRId64 ")\n",
              seconds > 0 ? double(data.n) / seconds : 0.0, session->threads(),
              batch);
  if (profileTop > 0)
    printProfile(*session, static_cast<size_t>(profileTop));
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

/// `value` with `digits` digits after the point.
std::string formatFixed(double value, int digits) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.*f", digits, value);
  return buffer;
}

/// "%.17g": a double that reads back exactly.
std::string exactNumber(double value) {
  char buffer[40];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  return buffer;
}

/// The train or test split of the manifest's dataset in `dir`; an
/// image-folder dataset has one folder per split, DIR/train and DIR/test.
Expected<Dataset> loadSplit(const Manifest &m, const std::string &dir,
                            const std::string &split) {
  std::string from = m.datasetKind == "image-folder" ? dir + "/" + split : dir;
  Expected<Dataset> data = loadDataset(m.datasetKind, from, split, m.channels,
                                       m.height, m.width);
  if (!data)
    return data.takeError();
  if (Error e = checkDatasetFits(m, *data, from))
    return e;
  return data;
}

/// What one pass of "eval" over a dataset gives.
struct EvalResult {
  double lossSum = 0;
  double correct = 0;
  int64_t images = 0;
  /// Per output of role routing_counts: its name and summed counts.
  std::vector<std::pair<std::string, std::vector<double>>> routing;

  double loss() const { return images ? lossSum / double(images) : 0; }
  double top1() const { return images ? correct / double(images) : 0; }
};

/// Runs "eval" over `data` in batches of the model's batch; the last batch
/// is padded with zero images, label 0 and mask 0.
Expected<EvalResult> evaluate(Session &session, const Dataset &data) {
  const Manifest &m = session.manifest();
  const int64_t batch = m.batch, size = m.imageSize();
  Expected<EntryTensor> images = session.input(kEntryEval, "images");
  Expected<EntryTensor> labels = session.input(kEntryEval, "labels");
  Expected<EntryTensor> mask = session.input(kEntryEval, "mask");
  Expected<EntryTensor> lossSum = session.output(kEntryEval, "loss_sum");
  Expected<EntryTensor> correct = session.output(kEntryEval, "correct");
  for (auto *t : {&images, &labels, &mask, &lossSum, &correct})
    if (!*t)
      return t->takeError();
  std::vector<EntryTensor> routing;
  EvalResult result;
  for (const EntryTensor &out : session.outputs(kEntryEval))
    if (out.spec->role == kRoleRoutingCounts) {
      routing.push_back(out);
      result.routing.push_back(
          {out.spec->name, std::vector<double>(size_t(out.count()), 0.0)});
    }
  for (int64_t done = 0; done < data.n; done += batch) {
    const int64_t count = std::min(batch, data.n - done);
    std::memcpy(images->f32(), data.images.data() + done * size,
                size_t(count * size) * 4);
    std::fill(images->f32() + count * size, images->f32() + batch * size,
              0.0f);
    for (int64_t i = 0; i < batch; ++i) {
      labels->i32()[i] = i < count ? data.labels[size_t(done + i)] : 0;
      mask->f32()[i] = i < count ? 1.0f : 0.0f;
    }
    if (Error e = session.run(kEntryEval, batch))
      return e;
    result.lossSum += lossSum->value();
    result.correct += correct->value();
    for (size_t r = 0; r < routing.size(); ++r)
      for (int64_t e = 0; e < routing[r].count(); ++e)
        result.routing[r].second[size_t(e)] += routing[r].value(e);
  }
  result.images = data.n;
  return result;
}

/// The words of TrainState::rngState: the batch iterator's, then the noise
/// sampler's.
std::vector<uint64_t> rngWords(const BatchIteratorState &batches,
                               const NormalSampler &noise) {
  std::vector<uint64_t> words = batches.toWords();
  std::vector<uint64_t> noiseWords = noise.toWords();
  words.insert(words.end(), noiseWords.begin(), noiseWords.end());
  return words;
}

/// The metadata a run keeps in its checkpoints and checks on resume.
struct RunSettings {
  uint64_t seed = 0;
  int64_t epochs = 0;
  double lr = 0;
  int64_t batch = 0;
  int64_t stepsPerEpoch = 0;
  int threads = 0;
};

std::map<std::string, std::string> runMetadata(const Manifest &m,
                                               const RunSettings &run) {
  return {{"model", m.model},
          {"optimizer", m.optimizer->kind},
          {"seed", std::to_string(run.seed)},
          {"epochs", std::to_string(run.epochs)},
          {"lr", exactNumber(run.lr)},
          {"batch", std::to_string(run.batch)},
          {"steps_per_epoch", std::to_string(run.stepsPerEpoch)},
          {"threads", std::to_string(run.threads)}};
}

/// A checkpoint's metadata value `key` as an unsigned integer / a number.
bool metadataInteger(const Checkpoint &ckpt, const char *key, uint64_t &out,
                     std::string &message) {
  auto it = ckpt.state.metadata.find(key);
  std::string text = it == ckpt.state.metadata.end() ? "" : it->second;
  std::string ignored;
  if (!parseInteger(key, text, 0, std::numeric_limits<uint64_t>::max(), out,
                    ignored)) {
    message = cat(ckpt.path, ": not a moec-run train checkpoint (metadata '",
                  key, "' is '", text, "')");
    return false;
  }
  return true;
}

/// --time-budget: training time before the epochs seen are trusted more
/// than the timing (below it, timer noise and one-off costs dominate).
constexpr double kReplanAfterSeconds = 10;

int runTrain(const Options &options) {
  using Clock = std::chrono::steady_clock;
  const auto commandStart = Clock::now();
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
  bool evalEveryEpoch = true;
  if (options.has("--eval-every-epoch")) {
    std::string value = options.get("--eval-every-epoch");
    if (value != "on" && value != "off")
      return usageError(
          cat("--eval-every-epoch: expected on or off, got '", value, "'"));
    evalEveryEpoch = value == "on";
  }
  if (options.has("--resume") && options.has("--weights"))
    return usageError("--weights sets the starting weights of a new run; a "
                      "run continued with --resume starts from its "
                      "checkpoint");
  double timeBudget = 0;
  if (options.has("--time-budget")) {
    if (!parseDuration("--time-budget", options.get("--time-budget"),
                       timeBudget, message))
      return usageError(message);
    if (options.has("--epochs"))
      return usageError("--time-budget chooses the number of epochs; give "
                        "either --time-budget or --epochs");
    if (options.has("--resume"))
      return usageError("--time-budget chooses the number of epochs of a new "
                        "run; a run continued with --resume keeps the epochs "
                        "it started with");
  }

  std::unique_ptr<Session> session;
  if (int rc = openSession(options, threads, session))
    return rc;
  session->setProfiling(profileTop > 0);
  const Manifest &m = session->manifest();
  for (const char *entry : {kEntryTrainStep, kEntryEval})
    if (!m.entry(entry))
      return reportError(makeError(
          ErrorCode::Argument, options.model,
          ": the model has no '", entry,
          "' entry point, so it cannot be trained (compile a trainable spec; "
          "see docs/training-abi.md)"));
  if (options.has("--batch") && batch != m.batch)
    return usageError(cat("--batch ", batch, ": ", options.model,
                          " was compiled for batch ", m.batch,
                          "; the batch is fixed at compile time, recompile "
                          "with `moec compile --batch ",
                          batch, "` to train with batch ", batch));
  batch = m.batch;
  std::string dir = options.get("--data", m.datasetPath);
  if (dir.empty())
    return usageError(cat(options.model,
                          ": the manifest names no dataset path; pass --data "
                          "DIR"));

  // The run's settings: the flags, else the manifest's defaults; a resumed
  // run keeps the ones it started with.
  std::optional<Checkpoint> resumed;
  const std::string resumeDir = options.get("--resume");
  if (options.has("--resume")) {
    Expected<Checkpoint> ckpt = loadLatestCheckpoint(resumeDir);
    if (!ckpt)
      return reportError(ckpt.error());
    resumed = std::move(*ckpt);
  }
  RunSettings run;
  run.batch = batch;
  run.threads = session->threads();
  run.seed = options.has("--seed") ? seed : m.train->seed;
  run.epochs = options.has("--epochs") ? epochs : m.train->epochs;
  run.lr = options.has("--lr") ? lr : m.optimizer->lr;
  if (resumed) {
    auto meta = resumed->state.metadata;
    if (meta["model"] != m.model)
      return reportError(makeError(
          ErrorCode::Weights, resumed->path, ": a checkpoint of model '",
          meta["model"], "', not '", m.model, "'"));
    uint64_t storedSeed, storedEpochs, storedBatch, storedThreads;
    if (!metadataInteger(*resumed, "seed", storedSeed, message) ||
        !metadataInteger(*resumed, "epochs", storedEpochs, message) ||
        !metadataInteger(*resumed, "batch", storedBatch, message) ||
        !metadataInteger(*resumed, "threads", storedThreads, message))
      return reportError(makeError(ErrorCode::Weights, message));
    char *end = nullptr;
    double storedLr = std::strtod(meta["lr"].c_str(), &end);
    if (meta["lr"].empty() || *end != '\0')
      return reportError(makeError(
          ErrorCode::Weights, resumed->path,
          ": not a moec-run train checkpoint (metadata 'lr' is '", meta["lr"],
          "')"));
    auto differs = [&](const char *flag, const std::string &given,
                       const std::string &stored) {
      return usageError(cat(flag, " ", given, " differs from the run being "
                                              "resumed (",
                            stored,
                            "); a resumed run keeps the settings it started "
                            "with"));
    };
    if (options.has("--seed") && seed != storedSeed)
      return differs("--seed", options.get("--seed"),
                     std::to_string(storedSeed));
    if (options.has("--epochs") && uint64_t(epochs) != storedEpochs)
      return differs("--epochs", options.get("--epochs"),
                     std::to_string(storedEpochs));
    if (options.has("--lr") && lr != storedLr)
      return differs("--lr", options.get("--lr"), meta["lr"]);
    if (int64_t(storedBatch) != batch)
      return reportError(makeError(ErrorCode::Weights, resumed->path,
                                   ": the run used batch ", storedBatch,
                                   ", the model's batch is ", batch));
    if (int(storedThreads) != session->threads())
      std::fprintf(stderr,
                   "moec-run: note: the run used %d threads, this one %d; "
                   "reductions split over threads may round differently "
                   "from an uninterrupted run\n",
                   int(storedThreads), session->threads());
    run.seed = storedSeed;
    run.epochs = int64_t(storedEpochs);
    run.lr = storedLr;
  }

  Expected<Dataset> train = loadSplit(m, dir, "train");
  if (!train)
    return reportError(train.error());
  Expected<Dataset> test = loadSplit(m, dir, "test");
  if (!test)
    return reportError(test.error());
  if (train->n < batch)
    return reportError(makeError(ErrorCode::Data, dir, ": the train split has ",
                                 train->n, " images, fewer than one batch (",
                                 batch, ")"));
  run.stepsPerEpoch = train->n / batch;
  int64_t totalSteps = run.epochs * run.stepsPerEpoch;
  const int64_t warmupSteps =
      std::llround(m.train->warmupEpochs * double(run.stepsPerEpoch));

  BatchOptions batchOptions;
  batchOptions.shuffle = true;
  batchOptions.dropLast = true;
  batchOptions.augment.cropPadding = m.train->cropPadding;
  batchOptions.augment.horizontalFlip = m.train->horizontalFlip;
  batchOptions.normalization = normalizationFor(m.datasetKind);
  Expected<BatchIterator> batches = BatchIterator::create(*train, batchOptions);
  if (!batches)
    return reportError(batches.error());
  BatchIterator &it = *batches;
  NormalSampler noise(parameterSeed(run.seed, "moec-run.train.noise"));

  const std::string ckptDirName =
      options.get("--checkpoint-dir", options.get("--resume"));
  std::optional<CheckpointDir> ckptDir;
  if (!ckptDirName.empty())
    ckptDir.emplace(ckptDirName, keep);
  int64_t step = 0;
  std::string lastCheckpoint;
  if (resumed) {
    const Checkpoint &ckpt = *resumed;
    const std::vector<uint64_t> &words = ckpt.state.rngState;
    auto inconsistent = [&](const std::string &what) {
      return reportError(makeError(ErrorCode::Weights, ckpt.path,
                                   ": cannot resume: ", what));
    };
    if (words.size() != 12)
      return inconsistent(cat("rng_state has ", words.size(),
                              " words, a moec-run train checkpoint 12"));
    Expected<BatchIteratorState> batchState = BatchIteratorState::fromWords(
        std::vector<uint64_t>(words.begin(), words.begin() + 5));
    if (!batchState)
      return inconsistent(batchState.error().message());
    Expected<NormalSampler> noiseState = NormalSampler::fromWords(
        std::vector<uint64_t>(words.begin() + 5, words.end()));
    if (!noiseState)
      return inconsistent(noiseState.error().message());
    if (Error e = it.restore(*batchState))
      return inconsistent(cat(e.message(), " (the train split has ", train->n,
                              " images now)"));
    if (batchState->seed != run.seed || batchState->position % batch != 0 ||
        ckpt.state.step != batchState->epoch * run.stepsPerEpoch +
                               batchState->position / batch ||
        ckpt.state.step > totalSteps)
      return inconsistent(cat("step ", ckpt.state.step, " does not match epoch ",
                              batchState->epoch, " position ",
                              batchState->position, " (", run.stepsPerEpoch,
                              " steps per epoch of batch ", batch, ")"));
    noise = *noiseState;
    if (Error e = session->restoreCheckpoint(ckpt))
      return reportError(e);
    step = ckpt.state.step;
    lastCheckpoint = ckpt.path;
    std::fprintf(stderr, "moec-run: resuming %s at step %" PRId64 "/%" PRId64
                         " (epoch %" PRId64 ")\n",
                 ckpt.path.c_str(), step, totalSteps, batchState->epoch + 1);
  } else {
    if (ckptDir) {
      Expected<std::optional<std::string>> latest =
          findLatestCheckpoint(ckptDir->dir());
      if (!latest)
        return reportError(latest.error());
      if (*latest)
        return usageError(cat(ckptDir->dir(),
                              " already holds a training run (latest: ",
                              **latest, "); continue it with --resume ",
                              ckptDir->dir(),
                              " or choose another --checkpoint-dir"));
    }
    if (int rc = setUpWeights(options, *session, run.seed, /*note=*/false))
      return rc;
    it.startEpoch(run.seed, 0);
  }

  // Metrics: a JSONL log and its plot, in the checkpoint directory unless
  // --log / --plot say where.
  std::string logPath = options.get(
      "--log", ckptDir ? ckptDir->dir() + "/metrics.jsonl" : std::string());
  std::string plotPath = options.get(
      "--plot", ckptDir ? ckptDir->dir() + "/metrics.svg" : std::string());
  if (ckptDir) {
    std::error_code ec;
    std::filesystem::create_directories(ckptDir->dir(), ec);
    if (ec)
      return reportWriteError(makeError(ErrorCode::Io, ckptDir->dir(),
                                        ": cannot create directory: ",
                                        ec.message()));
  }
  std::vector<MetricRecord> records;
  std::optional<MetricsLog> log;
  if (!logPath.empty()) {
    if (resumed) {
      if (Error e = truncateMetricsLog(logPath, step))
        return reportWriteError(e);
      if (std::filesystem::exists(logPath)) {
        Expected<std::vector<MetricRecord>> old = readMetricsLog(logPath);
        if (!old)
          return reportError(old.error());
        records = std::move(*old);
      }
    }
    Expected<MetricsLog> opened = MetricsLog::open(logPath, !resumed);
    if (!opened)
      return reportWriteError(opened.error());
    log.emplace(std::move(*opened));
  }
  auto record = [&](const MetricRecord &r) -> Error {
    records.push_back(r);
    if (log)
      return log->append(r);
    return Error::success();
  };

  // The train_step tensors.
  const std::string trainEntry = kEntryTrainStep;
  auto in = [&](const char *name) { return *session->input(trainEntry, name); };
  auto out = [&](const char *name) {
    return *session->output(trainEntry, name);
  };
  EntryTensor imagesIn = in("images"), labelsIn = in("labels"),
              stepIn = in("step"), totalIn = in("total_steps"),
              warmupIn = in("warmup_steps"), lrIn = in("lr");
  EntryTensor lossOut = out("loss"), ceOut = out("ce_loss"),
              auxOut = out("aux_loss"), correctOut = out("correct"),
              normOut = out("grad_norm"), lrOut = out("lr_used");
  std::vector<EntryTensor> noiseIn;
  for (const EntryTensor &t : session->inputs(trainEntry))
    if (t.spec->role == kRoleNormalNoise)
      noiseIn.push_back(t);
  std::vector<TensorRef> finiteChecked = {
      {lossOut.spec->name, lossOut.spec->shape, lossOut.f32()}};
  for (const EntryTensor &t : session->outputs(trainEntry))
    if (t.spec->role == kRoleGradient)
      finiteChecked.push_back({t.spec->name, t.spec->shape, t.f32()});

  auto writeCheckpoint = [&](const BatchIteratorState &batchState,
                            int64_t epoch, int64_t position) -> Error {
    if (!ckptDir)
      return Error::success();
    TrainState state;
    state.step = step;
    state.epoch = epoch;
    state.positionInEpoch = position;
    state.rngState = rngWords(batchState, noise);
    state.metadata = runMetadata(m, run);
    std::vector<Tensor> params = session->parameters();
    std::vector<Tensor> slots = session->state();
    std::vector<TensorRef> paramRefs, slotRefs;
    for (const Tensor &t : params)
      paramRefs.push_back({t.name, t.shape, t.data.data()});
    for (const Tensor &t : slots)
      slotRefs.push_back({t.name, t.shape, t.data.data()});
    Expected<SavedCheckpoint> saved = ckptDir->save(state, paramRefs, slotRefs);
    if (!saved)
      return saved.takeError();
    for (const std::string &warning : saved->warnings)
      std::fprintf(stderr, "moec-run: warning: %s\n", warning.c_str());
    lastCheckpoint = saved->path;
    return Error::success();
  };

  auto seconds = [](Clock::time_point from) {
    return std::chrono::duration<double>(Clock::now() - from).count();
  };
  // One step's inputs: the next batch of `batches`, the schedule and noise.
  auto fillStepInputs = [&](BatchIterator &batches, NormalSampler &sampler,
                            int64_t at) {
    batches.next(batch, imagesIn.f32(), labelsIn.i32());
    stepIn.f32()[0] = float(at);
    totalIn.f32()[0] = float(totalSteps);
    warmupIn.f32()[0] = float(warmupSteps);
    lrIn.f32()[0] = float(run.lr);
    for (const EntryTensor &t : noiseIn)
      for (int64_t k = 0; k < t.count(); ++k)
        t.f32()[k] = float(sampler.next());
  };

  double budgetEvalSeconds = 0; // --time-budget's estimate of one eval
  if (timeBudget > 0) {
    // Time train_step on real batches (a separate iterator and noise
    // stream, so the run itself is the one `--epochs N` would give) and
    // eval on a few test batches, then put the weights and optimizer state
    // back and keep the epochs that fit.
    session->setProfiling(false); // --profile times the training only
    Checkpoint before;
    before.path = "(the weights before timing)";
    before.params = session->parameters();
    before.optimizer = session->state();
    Expected<BatchIterator> timing =
        BatchIterator::create(*train, batchOptions);
    if (!timing)
      return reportError(timing.error());
    int64_t timingEpoch = 0;
    timing->startEpoch(run.seed, timingEpoch);
    NormalSampler timingNoise(parameterSeed(run.seed, "moec-run.train.timing"));
    // The median step: a burst of load from another tenant during the few
    // seconds of timing (it happens on shared hosts) moves the mean, and a
    // schedule planned from it would be far too short.
    double timedSeconds = 0;
    std::vector<double> stepSeconds;
    for (int64_t k = 0; stepSeconds.size() < 400 &&
                        (stepSeconds.size() < 8 || timedSeconds < 3);
         ++k) {
      if (timing->epochDone(batch))
        timing->startEpoch(run.seed, ++timingEpoch);
      fillStepInputs(*timing, timingNoise, k);
      auto start = Clock::now();
      if (Error e = session->run(trainEntry, batch))
        return reportError(e);
      if (k >= 2) { // the first steps warm the caches and the thread pool
        stepSeconds.push_back(seconds(start));
        timedSeconds += stepSeconds.back();
      }
    }
    std::nth_element(stepSeconds.begin(),
                     stepSeconds.begin() + stepSeconds.size() / 2,
                     stepSeconds.end());
    const double perStep = stepSeconds[stepSeconds.size() / 2];
    const int64_t testBatches = (test->n + batch - 1) / batch;
    const int64_t sampleBatches = std::min<int64_t>(4, testBatches);
    Dataset sample;
    sample.channels = test->channels;
    sample.height = test->height;
    sample.width = test->width;
    sample.n = std::min(test->n, sampleBatches * batch);
    sample.images.assign(test->images.begin(),
                         test->images.begin() + sample.n * test->imageSize());
    sample.labels.assign(test->labels.begin(), test->labels.begin() + sample.n);
    auto evalStart = Clock::now();
    if (Expected<EvalResult> r = evaluate(*session, sample); !r)
      return reportError(r.error());
    const double evalSeconds =
        seconds(evalStart) / double(sampleBatches) * double(testBatches);
    if (Error e = session->restoreCheckpoint(before))
      return reportError(e);
    session->setProfiling(profileTop > 0);
    budgetEvalSeconds = evalSeconds;

    const double perEpoch = perStep * double(run.stepsPerEpoch) +
                            (evalEveryEpoch ? evalSeconds : 0.0);
    const double spent = seconds(commandStart);
    const int64_t fit = epochsThatFit(timeBudget, spent, perEpoch,
                                      evalEveryEpoch ? 0.0 : evalSeconds);
    if (fit < 1)
      return reportError(makeError(
          ErrorCode::Argument, "--time-budget ", options.get("--time-budget"),
          ": not even one epoch fits (", formatFixed(perStep * 1000, 1),
          " ms per step, ", run.stepsPerEpoch, " steps and ",
          formatFixed(evalEveryEpoch ? evalSeconds : 0.0, 1),
          " s of evaluation per epoch: ", formatFixed(perEpoch, 1),
          " s per epoch; ", formatFixed(spent, 1),
          " s spent before training)"));
    run.epochs = fit;
    totalSteps = run.epochs * run.stepsPerEpoch;
    std::fprintf(stderr,
                 "moec-run: --time-budget %.0f s: %.1f ms per step, %.1f s "
                 "per evaluation, %.1f s per epoch; %" PRId64
                 " epochs fit (%.0f s spent before training, %.0f%% of the "
                 "budget kept free)\n",
                 timeBudget, perStep * 1000, evalSeconds, perEpoch, run.epochs,
                 spent, kTimeBudgetMargin * 100);
  }

  const bool tty = ::isatty(STDERR_FILENO);
  const int64_t epochImages = run.stepsPerEpoch * batch;
  const auto runStart = Clock::now();
  int64_t stepsThisRun = 0;
  double lastDraw = -1;
  // Interval accumulators (metrics log) and epoch ones (progress line).
  double intervalLoss = 0, intervalCe = 0, intervalAux = 0, intervalNorm = 0,
         intervalCorrect = 0, intervalSeconds = 0, lastLr = 0;
  int64_t intervalSteps = 0;
  std::optional<EvalResult> lastEval; // of the current weights
  bool stopped = false;

  // One train record for the steps since the last one.
  auto flushInterval = [&](int64_t epoch) -> Error {
    if (intervalSteps == 0)
      return Error::success();
    MetricRecord r;
    r.step = step;
    r.epoch = epoch + 1;
    r.loss = intervalLoss / double(intervalSteps);
    r.lr = lastLr;
    r.imagesPerSec = intervalSeconds > 0
                         ? double(intervalSteps * batch) / intervalSeconds
                         : 0.0;
    r.extra = {{"ce_loss", intervalCe / double(intervalSteps)},
               {"aux_loss", intervalAux / double(intervalSteps)},
               {"grad_norm", intervalNorm / double(intervalSteps)},
               {"accuracy", intervalCorrect / double(intervalSteps * batch)}};
    intervalLoss = intervalCe = intervalAux = intervalNorm = intervalCorrect =
        intervalSeconds = 0;
    intervalSteps = 0;
    return record(r);
  };
  auto printEval = [&](const EvalResult &r, const char *what) {
    std::printf("%s: test loss %.4f, test top-1 %.2f%% (%.0f/%" PRId64 ")\n",
                what, r.loss(), 100 * r.top1(), r.correct, r.images);
    for (const auto &[name, counts] : r.routing) {
      std::printf("  %s:", name.c_str());
      for (double c : counts)
        std::printf(" %.0f", c);
      std::printf("\n");
    }
    std::fflush(stdout);
  };

  const int64_t firstEpoch = it.epoch();
  const double trainingStart = seconds(commandStart);
  for (int64_t epoch = firstEpoch; epoch < run.epochs && !stopped; ++epoch) {
    if (epoch != it.epoch())
      it.startEpoch(run.seed, epoch);
    double epochLoss = 0, epochSeconds = 0;
    int64_t epochSteps = 0;
    while (!it.epochDone(batch)) {
      if (maxSteps > 0 && step >= maxSteps) {
        stopped = true;
        break;
      }
      auto start = Clock::now();
      fillStepInputs(it, noise, step);
      if (Error e = session->run(trainEntry, batch))
        return reportError(e);
      if (Error e = checkFinite(step, finiteChecked)) {
        if (tty)
          std::fprintf(stderr, "\n");
        std::string kept =
            lastCheckpoint.empty()
                ? std::string("no checkpoint was written")
                : cat("the last checkpoint, ", lastCheckpoint,
                      ", is untouched");
        std::fprintf(stderr,
                     "moec-run: error: %s (train_step); training stopped, "
                     "%s\n",
                     e.message().c_str(), kept.c_str());
        return kExitFailure;
      }
      const double stepSeconds = seconds(start);
      ++step;
      ++stepsThisRun;
      lastEval.reset();
      const double loss = lossOut.value();
      epochLoss += loss;
      epochSeconds += stepSeconds;
      ++epochSteps;
      intervalLoss += loss;
      intervalCe += ceOut.value();
      intervalAux += auxOut.value();
      intervalNorm += normOut.value();
      intervalCorrect += correctOut.value();
      intervalSeconds += stepSeconds;
      lastLr = lrOut.value();
      ++intervalSteps;
      if (step % logEvery == 0)
        if (Error e = flushInterval(epoch))
          return reportWriteError(e);
      const double elapsed = seconds(runStart);
      if (tty && (elapsed - lastDraw >= 0.1 || it.epochDone(batch))) {
        double perStep = elapsed / double(stepsThisRun);
        std::fprintf(stderr, "\r%s\033[K",
                     formatProgress(epoch + 1, run.epochs, it.position(),
                                    epochImages, epochLoss / double(epochSteps),
                                    double(epochSteps * batch) / epochSeconds,
                                    perStep * double(totalSteps - step))
                         .c_str());
        std::fflush(stderr);
        lastDraw = elapsed;
      }
    }
    if (Error e = flushInterval(epoch))
      return reportWriteError(e);
    if (stopped)
      break;

    // The end of an epoch: progress, evaluation, checkpoint, plot.
    if (epochSteps > 0) {
      double perStep = seconds(runStart) / double(stepsThisRun);
      std::string line =
          formatProgress(epoch + 1, run.epochs, epochImages, epochImages,
                         epochLoss / double(epochSteps),
                         double(epochSteps * batch) / epochSeconds,
                         perStep * double(totalSteps - step));
      if (tty)
        std::fprintf(stderr, "\r%s\033[K\n", line.c_str());
      else
        std::fprintf(stderr, "%s\n", line.c_str());
    }
    if (evalEveryEpoch) {
      Expected<EvalResult> result = evaluate(*session, *test);
      if (!result)
        return reportError(result.error());
      lastEval = *result;
      printEval(*result, cat("epoch ", epoch + 1, "/", run.epochs).c_str());
      MetricRecord r;
      r.step = step;
      r.epoch = epoch + 1;
      r.split = "eval";
      r.loss = result->loss();
      r.top1 = result->top1();
      if (Error e = record(r))
        return reportWriteError(e);
    }
    // --time-budget on a shared host whose speed drifts (by 10 % within
    // minutes, by 2x during a burst of load from another tenant) re-plans
    // from the epochs seen so far. While every step so far was a warm-up
    // step (their learning rate does not depend on the total), the count
    // moves freely, up or down: the run stays the one `--epochs N` gives
    // for the new N. After the warm-up it only shortens, when the rest
    // would overrun (the cosine schedule is shortened from that step).
    if (timeBudget > 0 && epoch + 1 < run.epochs &&
        seconds(commandStart) - trainingStart >= kReplanAfterSeconds) {
      BudgetProgress p;
      p.budget = timeBudget;
      p.elapsed = seconds(commandStart);
      p.perEpoch = (p.elapsed - trainingStart) / double(epoch + 1 - firstEpoch);
      p.finalEval = evalEveryEpoch ? 0.0 : budgetEvalSeconds;
      p.epochsDone = epoch + 1;
      p.epochsPlanned = run.epochs;
      p.stepsDone = step;
      p.warmupSteps = warmupSteps;
      const EpochReplan plan = replanEpochs(p);
      if (plan.kind == EpochReplan::Kind::Warmup)
        std::fprintf(stderr,
                     "moec-run: --time-budget %.0f s: epochs take %.1f s "
                     "here, %s than timed; %" PRId64 " epochs fit, not %" PRId64
                     " (still in the warm-up: the run is the one --epochs "
                     "%" PRId64 " gives)\n",
                     timeBudget, p.perEpoch,
                     plan.epochs > run.epochs ? "less" : "more", plan.epochs,
                     run.epochs, plan.epochs);
      else if (plan.kind == EpochReplan::Kind::Shorten)
        std::fprintf(stderr,
                     "moec-run: --time-budget %.0f s: epochs take %.1f s "
                     "here, more than timed; %" PRId64
                     " epochs fit, not %" PRId64 " (the schedule is "
                     "shortened from step %" PRId64 ")\n",
                     timeBudget, p.perEpoch, plan.epochs, run.epochs, step);
      run.epochs = plan.epochs;
      totalSteps = run.epochs * run.stepsPerEpoch;
    }
    BatchIteratorState next = it.state();
    next.epoch = epoch + 1;
    next.position = 0;
    if (Error e = writeCheckpoint(next, epoch + 1, 0))
      return reportWriteError(e);
    if (!plotPath.empty())
      if (Error e = writeLossPlotSvg(records, plotPath))
        return reportWriteError(e);
  }

  if (stopped) {
    if (Error e = writeCheckpoint(it.state(), it.epoch(), it.position()))
      return reportWriteError(e);
    if (tty)
      std::fprintf(stderr, "\n");
    std::fprintf(stderr,
                 "moec-run: stopped after step %" PRId64 " (--max-steps)%s%s\n",
                 step, ckptDir ? "; continue with --resume " : "",
                 ckptDir ? ckptDir->dir().c_str() : "");
    if (!plotPath.empty())
      if (Error e = writeLossPlotSvg(records, plotPath))
        return reportWriteError(e);
  }

  if (!lastEval) {
    Expected<EvalResult> result = evaluate(*session, *test);
    if (!result)
      return reportError(result.error());
    lastEval = *result;
    if (!evalEveryEpoch || stopped || stepsThisRun == 0)
      printEval(*result, cat("step ", step).c_str());
  }
  std::printf("test accuracy: %.2f%%\n", 100 * lastEval->top1());
  if (profileTop > 0)
    printProfile(*session, static_cast<size_t>(profileTop), kEntryTrainStep);
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
             "--limit", "--profile"},
            runInfer}},
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
