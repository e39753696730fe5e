//===- moec-run.cpp - run compiled moec models ----------------------------===//
//
// moec-run infer|inspect|init|run|call|train|analyze MODEL ... and moec-run
// export CHECKPOINT -o W; see kUsage and docs/runtime.md. Exit codes: 0
// success, 1 runtime failure (device, internal, writing outputs, a
// non-finite loss or gradient in training), 2 bad usage or bad input (flags,
// artifact, weights, data, checkpoints).
// This file holds main, the command line and the helpers the commands
// share (MoecRun.h); the commands live in MoecRun*.cpp.
//
//===----------------------------------------------------------------------===//

#include "MoecRun.h"

#include "moec/Runtime/Artifact.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <utility>
#include <vector>

namespace moec::run {

namespace {

const char *const kUsage =
    "usage: moec-run <command> MODEL [options]\n"
    "\n"
    "commands:\n"
    "  infer MODEL [--weights W] [--seed S] [--data DIR]\n"
    "              [--dataset fashion-mnist|cifar10|image-folder]\n"
    "              [--split test|train] [--batch N] [--threads N] [--limit N]\n"
    "              [--predictions OUT.csv|OUT.json] [--profile N]\n"
    "              [--device cpu|cuda]\n"
    "      accuracy and throughput on a dataset (default: the manifest's\n"
    "      dataset, test split), normalized as the model was trained; an\n"
    "      image folder is DIR/<class>/*.png or, unlabeled, DIR/*.png;\n"
    "      --predictions writes each image's predicted class; random weights\n"
    "      without --weights\n"
    "  analyze MODEL --weights W -o DIR [--data DIR] [--split test|train]\n"
    "                [--limit N] [--threads N] [--threshold T]\n"
    "                [--device cpu|cuda]\n"
    "      routing analysis of every MoE layer over a labelled dataset:\n"
    "      writes DIR/profile.json (docs/analysis.md), DIR/heatmaps.svg\n"
    "      (class x expert) and DIR/specialisation.svg; T (default 0.05) is\n"
    "      the image-level NMI below which a layer does not specialise\n"
    "  inspect MODEL\n"
    "      model, entry points, parameters, FLOPs, memory and kernels\n"
    "  init MODEL -o W.safetensors [--seed S]\n"
    "      write the random initial weights (computed here, for a model of\n"
    "      any target)\n"
    "  run MODEL --weights W --input X.f32 --output Y.f32 [--threads N]\n"
    "            [--device cpu|cuda]\n"
    "      logits (n x classes f32) of raw images (n x C x H x W f32)\n"
    "  call MODEL --entry E --weights W --inputs IN.safetensors\n"
    "             -o OUT.safetensors [--state S.safetensors] [--threads N]\n"
    "             [--device cpu|cuda]\n"
    "      run entry point E once on a full batch: inputs and outputs by\n"
    "      their manifest names (train_step also writes updated.<param> and\n"
    "      the state tensors)\n"
    "  train MODEL [--data DIR] [--epochs N] [--batch N] [--lr X] [--seed S]\n"
    "              [--threads N] [--checkpoint-dir D] [--resume D]\n"
    "              [--keep-checkpoints K] [--weights W] [--log F.jsonl]\n"
    "              [--plot F.svg] [--log-every N] [--max-steps K]\n"
    "              [--eval-every-epoch on|off] [--profile N]\n"
    "              [--time-budget T] [-o FINAL.safetensors]\n"
    "              [--device cpu|cuda]\n"
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
    "  --threads 0 (the default) uses every core; --seed defaults to 0.\n"
    "  --device cuda runs a model compiled for target cuda on the first\n"
    "  visible GPU; the default, cpu, one compiled for target cpu.\n";

} // namespace

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

/// Parses argv[2..] for a command taking `allowed` flags (each with a
/// value). Returns false after reporting a usage error in `message`.
static bool parseOptions(int argc, char **argv,
                         const std::set<std::string> &allowed, Options &out,
                         std::string &message) {
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

int openSession(const Options &options, int threads,
                std::unique_ptr<Session> &out) {
  const std::string device = options.get("--device", kTargetCpu);
  if (device != kTargetCpu && device != kTargetCuda)
    return usageError(
        cat("--device: expected cpu or cuda, got '", device, "'"));
  Expected<std::shared_ptr<const Artifact>> artifact =
      Artifact::load(options.model);
  if (!artifact)
    return reportError(artifact.error());
  Expected<std::unique_ptr<Session>> session =
      Session::create(*artifact, device, threads);
  if (!session)
    return reportError(session.error());
  out = std::move(*session);
  return kExitOk;
}

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

} // namespace moec::run

using namespace moec::run;

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
             "--limit", "--profile", "--dataset", "--predictions", "--device"},
            runInfer}},
          {"export", {{"-o"}, runExport}},
          {"analyze",
           {{"--weights", "--data", "--split", "--limit", "--threads", "-o",
             "--threshold", "--device"},
            runAnalyze}},
          {"inspect", {{}, runInspect}},
          {"init", {{"-o", "--seed"}, runInit}},
          {"run",
           {{"--weights", "--input", "--output", "--threads", "--device"},
            runRun}},
          {"train",
           {{"--data", "--epochs", "--batch", "--lr", "--seed", "--threads",
             "--checkpoint-dir", "--resume", "--weights", "--log", "--plot",
             "--max-steps", "--eval-every-epoch", "--time-budget", "-o",
             "--keep-checkpoints", "--log-every", "--profile", "--device"},
            runTrain}},
          {"call",
           {{"--entry", "--weights", "--inputs", "-o", "--threads", "--state",
             "--device"},
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
