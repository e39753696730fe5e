//===- MoecRun.h - moec-run's commands and shared helpers -------*- C++ -*-===//
//
// moec-run is split by command group: moec-run.cpp (main, the command line,
// the helpers below), MoecRunInfer.cpp (infer, run, call), MoecRunTrain.cpp
// (train) and MoecRunModel.cpp (inspect, init, export, analyze). The work
// lives in the runtime library; these files parse flags, call it and turn
// its errors into messages and exit codes.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_TOOLS_MOECRUN_H
#define MOEC_RUNTIME_TOOLS_MOECRUN_H

#include "moec/Runtime/Error.h"
#include "moec/Runtime/Session.h"

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>

namespace moec::run {

using namespace moec::rt;

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitBadInput = 2;

/// Reports a usage error (with the usage text); exit 2.
int usageError(const std::string &message);
/// Reports `error`; input errors exit 2, device and internal errors 1.
int reportError(const Error &error);
/// Reports a failure to write an output: a runtime failure, exit 1.
int reportWriteError(const Error &error);

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

/// Parses a decimal integer in [min, max]; false (with `message`) if not.
bool parseInteger(const std::string &flag, const std::string &text,
                  uint64_t min, uint64_t max, uint64_t &out,
                  std::string &message);

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

/// Loads MODEL and creates a session on --device (cpu unless given) with
/// `threads` threads; returns an exit code on failure.
int openSession(const Options &options, int threads,
                std::unique_ptr<Session> &out);
/// Loads --weights, or initializes from --seed (with a note when `note`).
int setUpWeights(const Options &options, Session &session, uint64_t seed,
                 bool note);

/// The commands.
int runInfer(const Options &options);
int runRun(const Options &options);
int runCall(const Options &options);
int runTrain(const Options &options);
int runInspect(const Options &options);
int runInit(const Options &options);
int runExport(const Options &options);
int runAnalyze(const Options &options);

} // namespace moec::run

#endif // MOEC_RUNTIME_TOOLS_MOECRUN_H
