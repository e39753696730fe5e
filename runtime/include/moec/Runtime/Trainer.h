//===- Trainer.h - training a model with its train_step entry ---*- C++ -*-===//
//
// A Trainer runs a training run on a Session whose model has the
// train_step and eval entry points (docs/training-abi.md): the data order,
// augmentation and noise, the learning-rate schedule's inputs, non-finite
// checks, evaluations, checkpoints, the metrics log and plot, and the
// --time-budget planning. `moec-run train` is a command line over it, and
// the C API's moec_trainer_* functions wrap it.
//
//   TrainerOptions options;
//   options.epochs = 3;
//   options.checkpointDir = "ckpt";
//   Expected<std::unique_ptr<Trainer>> trainer =
//       Trainer::create(session, options);
//   if (!trainer) ...;
//   Expected<EvalResult> result = (*trainer)->run(); // or step() by step
//   session.saveWeights("final.safetensors");
//
// The run is a pure function of the starting weights, the settings (seed,
// epochs, lr, batch; a time budget chooses the epochs from timings) and the
// thread count: a run resumed from any of its checkpoints gives bitwise the
// parameters, state and checkpoints of an uninterrupted one
// (docs/runtime.md, "Resume guarantee").
//
// A Trainer prints nothing unless TrainerOutput names streams: evaluations
// go to `results`, notes, warnings and the progress line to `messages`.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_TRAINER_H
#define MOEC_RUNTIME_TRAINER_H

#include "moec/Runtime/Batches.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/Metrics.h"
#include "moec/Runtime/Session.h"
#include "moec/Runtime/Weights.h"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

namespace moec::rt {

/// How a failed Trainer call should be reported, beyond its ErrorCode;
/// moec-run train turns these into its exit codes.
enum class TrainFailure {
  None,
  /// Bad input (artifact, weights, data, checkpoint) or a device or
  /// internal failure: the Error's code says which.
  Input,
  /// Options that contradict each other, the model or the run being
  /// resumed (a usage error on a command line).
  Options,
  /// A file could not be written: a checkpoint, the metrics log or plot.
  Output,
  /// A NaN or infinity in the loss or a gradient stopped the run (a Data
  /// error "step 5: non-finite value nan at grad.b[0]"); nothing more was
  /// written, the last checkpoint is untouched.
  NonFinite,
};

/// What to train. Unset optionals take the manifest's values. The messages
/// of a bad combination name the moec-run train flags.
struct TrainerOptions {
  /// The dataset folder; unset: the manifest's dataset.path.
  std::optional<std::string> dataDir;
  /// Unset: the manifest's train.epochs (or the run's, when resuming).
  std::optional<int64_t> epochs;
  /// Must equal the model's batch, which is fixed at compile time.
  std::optional<int64_t> batch;
  /// The peak learning rate; unset: the manifest's optimizer.lr.
  std::optional<double> lr;
  /// Unset: the manifest's train.seed.
  std::optional<uint64_t> seed;
  /// Where to write checkpoints (and, by default, the metrics log and
  /// plot); unset: the resumed directory, else none; "" for none.
  std::optional<std::string> checkpointDir;
  /// Continue the run whose newest checkpoint `DIR/latest` names.
  std::optional<std::string> resumeDir;
  /// Checkpoints kept in checkpointDir (0: all).
  int64_t keepCheckpoints = 3;
  /// The starting weights of a new run (safetensors); unset: the initial
  /// weights of the seed.
  std::optional<std::string> weights;
  /// The metrics log (JSON lines) and loss plot (SVG); unset:
  /// metrics.jsonl and metrics.svg in checkpointDir (none without one);
  /// "" for none.
  std::optional<std::string> logPath, plotPath;
  /// A train record every logEvery steps (and at each epoch's end).
  int64_t logEvery = 10;
  /// run() stops after this many steps, counted from the start of the run
  /// (resumed steps included), and writes a checkpoint there; 0: no limit.
  int64_t maxSteps = 0;
  /// Evaluate on the test split after every epoch, or only at the end.
  bool evalEveryEpoch = true;
  /// Time every train_step dispatch (Session::setProfiling).
  bool profile = false;
  /// Start a new run from the session's current parameters (which must be
  /// set) instead of `weights` or the seed's initial weights.
  bool useSessionWeights = false;
  /// Seconds from `start` the run should fit in (> 0): the epochs are
  /// chosen, and re-planned after each epoch, instead of `epochs`.
  double timeBudget = 0;
  /// When the budget started counting; unset: when create() is called.
  std::optional<std::chrono::steady_clock::time_point> start;
  /// Options as the user wrote them, by flag ({"--lr", "1e-3"},
  /// {"--time-budget", "20m"}), for messages; others are shown as numbers.
  std::map<std::string, std::string> flagText;

  /// Argument errors for values out of range or options that contradict
  /// each other (resume with weights, a time budget with epochs or resume).
  Error check() const;
};

/// Where a Trainer reports what it does; null streams print nothing.
struct TrainerOutput {
  /// Evaluations: "epoch 3/25: test loss 0.4123, test top-1 85.12%
  /// (8512/10000)" and a line of routing counts per routing output, with
  /// the layer's dropped-token share when the router has one
  /// ("(dropped 1.25%)", droppedShare in Evaluate.h).
  std::ostream *results = nullptr;
  /// Notes ("resuming ..."), warnings, the time-budget plan, and the
  /// progress line ("epoch 3/25 [####....] 12800/60000 loss ...").
  std::ostream *messages = nullptr;
  /// Put before each note, warning or plan line, e.g. "moec-run: ".
  std::string prefix;
  /// Redraw the progress line in place ('\r', for a terminal) instead of
  /// writing one line per epoch.
  bool progressInPlace = false;
};

/// The settings a run keeps in its checkpoints and checks on resume.
struct TrainSettings {
  uint64_t seed = 0;
  int64_t epochs = 0;
  double lr = 0;
  int64_t batch = 0;
  int64_t stepsPerEpoch = 0;
  int threads = 0;
};

/// The outputs of one train_step.
struct StepResult {
  int64_t step = 0;  ///< steps done, this one included
  int64_t epoch = 0; ///< the 1-based epoch the step belongs to
  double loss = 0, ceLoss = 0, auxLoss = 0, gradNorm = 0;
  double lr = 0;      ///< the learning rate used (lr_used)
  double correct = 0; ///< images of the batch classified right
  double seconds = 0; ///< wall time of the step
};

class Trainer {
public:
  /// Prepares a run on `session` (which must outlive the trainer): checks
  /// the model and options, loads both splits of the dataset, sets up the
  /// weights (options.weights, the seed's initial ones, or the resumed
  /// checkpoint's) and the optimizer state, opens the metrics log and, with
  /// a time budget, times train_step and eval to choose the epochs. On
  /// failure, `failure` (if given) says how to report the error.
  static Expected<std::unique_ptr<Trainer>>
  create(Session &session, TrainerOptions options, TrainerOutput output = {},
         TrainFailure *failure = nullptr);
  ~Trainer();
  Trainer(const Trainer &) = delete;
  Trainer &operator=(const Trainer &) = delete;

  /// One train_step on the next batch. The step that ends an epoch also
  /// runs the epoch's end: metrics, the progress line, the evaluation
  /// (with evalEveryEpoch), the time-budget re-plan, the checkpoint and
  /// the plot. An Argument error once the run is done().
  Expected<StepResult> step();
  /// Steps to the end of the current epoch (including its end), or until
  /// maxSteps, where it stops (stop checkpoint, plot) and stopped() turns
  /// true. An Argument error once the run is done().
  Error runEpoch();
  /// Trains to the end of the run (or maxSteps), then returns the
  /// evaluation of the final weights on the test split (the last epoch's,
  /// or a new one, printed as "step N: test loss ..." and logged as an
  /// "eval" record, with the plot redrawn, when no epoch's evaluation is of
  /// these weights).
  Expected<EvalResult> run();
  /// Evaluates the current weights on the test split (no record, no
  /// output); kept until the next step.
  Expected<EvalResult> evaluate();

  /// Writes a checkpoint of the current position (parameters, state, step,
  /// data order and noise generator, settings) to `path`, atomically.
  Error saveCheckpoint(const std::string &path);
  /// Continues from the checkpoint at `path`, which must be of this model
  /// and run (seed, epochs, lr, batch) at a step of this train split: the
  /// parameters, state, step, data order and noise become the
  /// checkpoint's; the metrics log is cut back to its step. A checkpoint
  /// that cannot be read or is not of this run changes nothing.
  Error loadCheckpoint(const std::string &path);

  Session &session() { return session_; }
  const TrainSettings &settings() const { return settings_; }
  /// Steps done (resumed ones included).
  int64_t stepsDone() const { return step_; }
  /// epochs x steps per epoch (the time budget may re-plan the epochs).
  int64_t totalSteps() const {
    return settings_.epochs * settings_.stepsPerEpoch;
  }
  int64_t warmupSteps() const { return warmupSteps_; }
  /// The 0-based epoch of the next step (== epochs when finished()).
  int64_t epoch() const { return epoch_; }
  /// Every epoch is done.
  bool finished() const { return epoch_ >= settings_.epochs; }
  /// finished(), or maxSteps steps are done.
  bool done() const;
  /// run() or runEpoch() stopped at maxSteps.
  bool stopped() const { return stopped_; }
  const Dataset &trainData() const { return train_; }
  const Dataset &testData() const { return test_; }
  /// Every metrics record of the run so far (a resumed run's log included).
  const std::vector<MetricRecord> &records() const { return records_; }
  /// The checkpoint written or resumed last ("" if none).
  const std::string &lastCheckpoint() const { return lastCheckpoint_; }
  /// How the last failed call should be reported (None after a success).
  TrainFailure lastFailure() const { return failure_; }

private:
  using Clock = std::chrono::steady_clock;

  Trainer(Session &session, TrainerOptions options, TrainerOutput output);
  Error setUp();
  Error resolveSettings(const std::optional<Checkpoint> &resumed);
  Error setUpMetrics(bool resumed);
  Error setUpTensors();
  /// Checks `ckpt` against this run's data and settings and continues from
  /// it; on error nothing is changed.
  Error restore(const Checkpoint &ckpt);
  /// Times train_step and eval and chooses the epochs (TrainerBudget.cpp).
  Error planTimeBudget();
  /// After an epoch: re-plans the epochs from the ones seen so far.
  void replanTimeBudget();

  /// One step's inputs: the next batch of `batches`, the schedule, noise.
  void fillStepInputs(BatchIterator &batches, NormalSampler &sampler,
                      int64_t at);
  Error finishEpoch();
  Error stop();
  Error flushInterval(int64_t epoch);
  Error record(const MetricRecord &r);
  /// Logs an evaluation of the current weights as an "eval" record.
  Error recordEval(const EvalResult &result, int64_t epoch);
  Error writePlot();
  /// Where the next step starts: the iterator's state, or the next epoch's
  /// start when the current one is done.
  BatchIteratorState nextBatchState() const;
  TrainState trainState() const;
  Error writeCheckpoint();
  void printEval(const EvalResult &r, const std::string &what);
  /// A note, warning or plan line on output_.messages.
  void message(const std::string &text);
  /// Redraws the progress line in place (at most every 0.1 s).
  void drawProgress();
  double secondsSince(Clock::time_point from) const;
  /// options_.flagText's spelling of `flag`, else `value`.
  std::string shown(const char *flag, const std::string &value) const;
  /// The Argument error of a call after the run is done.
  Error doneError();
  /// Records `kind` as lastFailure() and returns `error`.
  Error fail(TrainFailure kind, Error error);

  Session &session_;
  const Manifest &m_;
  TrainerOptions options_;
  TrainerOutput output_;
  TrainSettings settings_;
  int64_t warmupSteps_ = 0;
  std::string dataDir_;

  Dataset train_, test_;
  std::optional<BatchIterator> batches_;
  NormalSampler noise_{0};
  std::optional<CheckpointDir> checkpointDir_;
  std::string lastCheckpoint_;
  std::string logPath_, plotPath_;
  std::vector<MetricRecord> records_;
  std::optional<MetricsLog> log_;

  // The train_step tensors.
  EntryTensor imagesIn_, labelsIn_, stepIn_, totalIn_, warmupIn_, lrIn_;
  EntryTensor lossOut_, ceOut_, auxOut_, correctOut_, normOut_, lrOut_;
  std::vector<EntryTensor> noiseIn_;
  std::vector<TensorRef> finiteChecked_;

  int64_t step_ = 0;
  int64_t epoch_ = 0;
  bool stopped_ = false;
  TrainFailure failure_ = TrainFailure::None;
  /// The evaluation of the current weights, if any.
  std::optional<EvalResult> lastEval_;

  // Timing: the budget counts from start_; progress and re-planning from
  // the end of create().
  Clock::time_point start_, runStart_;
  double trainingStart_ = 0;
  double budgetEvalSeconds_ = 0;
  int64_t firstEpoch_ = 0;
  int64_t stepsThisRun_ = 0;
  double lastDraw_ = -1;
  // The current epoch's steps (progress line) and those since the last
  // train record.
  double epochLoss_ = 0, epochSeconds_ = 0;
  int64_t epochSteps_ = 0;
  double intervalLoss_ = 0, intervalCe_ = 0, intervalAux_ = 0,
         intervalNorm_ = 0, intervalCorrect_ = 0, intervalSeconds_ = 0,
         lastLr_ = 0;
  int64_t intervalSteps_ = 0;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_TRAINER_H
