//===- MoecRunTrain.cpp - moec-run train ----------------------------------===//
//
// Parses train's flags into TrainerOptions, runs the Trainer, prints the
// final accuracy and profile, writes -o, and maps the Trainer's failure
// kinds to exit codes.
//
//===----------------------------------------------------------------------===//

#include "MoecRun.h"

#include "moec/Runtime/Report.h"
#include "moec/Runtime/Trainer.h"

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <unistd.h>

namespace moec::run {

/// Parses a finite number > 0; false (with `message`) if not.
static bool parsePositiveNumber(const std::string &flag,
                                const std::string &text, double &out,
                                std::string &message) {
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
static bool parseDuration(const std::string &flag, const std::string &text,
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
static int reportTrainError(const Error &error, TrainFailure failure,
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
      !integerFlag(options, "--keep-checkpoints", 0, 1u << 30, keep, message) ||
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

} // namespace moec::run
