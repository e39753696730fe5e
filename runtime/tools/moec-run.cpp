//===- moec-run.cpp - run compiled moec models ----------------------------===//
//
// moec-run infer|inspect|init|run MODEL ...; see usage() and
// docs/runtime.md. Exit codes: 0 success, 1 runtime failure (device,
// internal, writing outputs), 2 bad usage or bad input (flags, artifact,
// weights, data).
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/FileUtil.h"
#include "moec/Runtime/Session.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
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
    for (const TensorSpec &t : entry.inputs)
      std::printf("    input   %-10s %s%s\n", t.name.c_str(), t.dtype.c_str(),
                  formatShape(t.shape).c_str());
    for (const TensorSpec &t : entry.outputs)
      std::printf("    output  %-10s %s%s\n", t.name.c_str(), t.dtype.c_str(),
                  formatShape(t.shape).c_str());
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
void printProfile(const Session &session, size_t top) {
  const std::vector<Dispatch> &plan =
      session.artifact().plan().entries.at("infer");
  const std::vector<double> &secs = session.dispatchSeconds();
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
  if (data.channels != m.channels || data.height != m.height ||
      data.width != m.width)
    return reportError(makeError(
        ErrorCode::Data, dir, ": ", m.datasetKind, " images are ",
        data.channels, "x", data.height, "x", data.width,
        ", but the model expects ", m.channels, "x", m.height, "x", m.width));
  if (int64_t(data.classNames.size()) > m.classes)
    return reportError(makeError(ErrorCode::Data, dir, ": the dataset has ",
                                 data.classNames.size(),
                                 " classes, but the model has ", m.classes));
  if (data.n == 0)
    return reportError(makeError(ErrorCode::Data, dir, ": no images"));

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
