//===- Trainer.cpp - training a model with its train_step entry -----------===//
//
// Setting up a run (options, settings, data, weights or the resumed
// checkpoint, metrics), the steps and epoch ends, and checkpoints. The
// time-budget planning is in TrainerBudget.cpp.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Trainer.h"

#include "Format.h"
#include "moec/Runtime/Finite.h"
#include "moec/Runtime/Limits.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

namespace moec::rt {

namespace {

/// "%.17g": a double that reads back exactly.
std::string exactNumber(double value) { return formatPrintf("%.17g", value); }

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
std::map<std::string, std::string> runMetadata(const Manifest &m,
                                               const TrainSettings &run) {
  return {{"model", m.model},
          {"optimizer", m.optimizer->kind},
          {"seed", std::to_string(run.seed)},
          {"epochs", std::to_string(run.epochs)},
          {"lr", exactNumber(run.lr)},
          {"batch", std::to_string(run.batch)},
          {"steps_per_epoch", std::to_string(run.stepsPerEpoch)},
          {"threads", std::to_string(run.threads)}};
}

/// A checkpoint's metadata value `key` as an unsigned decimal integer.
Error metadataInteger(const Checkpoint &ckpt, const char *key, uint64_t &out) {
  auto it = ckpt.state.metadata.find(key);
  std::string text = it == ckpt.state.metadata.end() ? "" : it->second;
  bool digits = !text.empty() && text.size() <= 20 &&
                std::all_of(text.begin(), text.end(),
                            [](char c) { return c >= '0' && c <= '9'; });
  errno = 0;
  unsigned long long value =
      digits ? std::strtoull(text.c_str(), nullptr, 10) : 0;
  if (!digits || errno == ERANGE)
    return makeError(ErrorCode::Weights, ckpt.path,
                     ": not a moec-run train checkpoint (metadata '", key,
                     "' is '", text, "')");
  out = value;
  return Error::success();
}

/// The settings a checkpoint records (threads included), after checking
/// that it is one of model `m`'s runs.
Expected<TrainSettings> checkpointSettings(const Checkpoint &ckpt,
                                           const Manifest &m) {
  auto meta = ckpt.state.metadata;
  if (meta["model"] != m.model)
    return makeError(ErrorCode::Weights, ckpt.path, ": a checkpoint of model '",
                     meta["model"], "', not '", m.model, "'");
  uint64_t seed, epochs, batch, threads;
  using Field = std::pair<const char *, uint64_t *>;
  for (auto [key, out] : {Field{"seed", &seed}, Field{"epochs", &epochs},
                          Field{"batch", &batch}, Field{"threads", &threads}})
    if (Error e = metadataInteger(ckpt, key, *out))
      return e;
  char *end = nullptr;
  double lr = std::strtod(meta["lr"].c_str(), &end);
  if (meta["lr"].empty() || *end != '\0')
    return makeError(ErrorCode::Weights, ckpt.path,
                     ": not a moec-run train checkpoint (metadata 'lr' is '",
                     meta["lr"], "')");
  if (Error e = checkLearningRate(lr, ErrorCode::Weights,
                                  cat(ckpt.path, ": metadata 'lr'")))
    return e;
  if (Error e = checkEpochs(int64_t(std::min<uint64_t>(epochs, INT64_MAX)),
                            ErrorCode::Weights,
                            cat(ckpt.path, ": metadata 'epochs'")))
    return e;
  TrainSettings settings;
  settings.seed = seed;
  settings.epochs = int64_t(epochs);
  settings.lr = lr;
  settings.batch = int64_t(batch);
  settings.threads = int(threads);
  return settings;
}

} // namespace

//===----------------------------------------------------------------------===//
// Options
//===----------------------------------------------------------------------===//

Error TrainerOptions::check() const {
  auto bad = [](const auto &...args) {
    return makeError(ErrorCode::Argument, args...);
  };
  if (resumeDir && weights)
    return bad("--weights sets the starting weights of a new run; a run "
               "continued with --resume starts from its checkpoint");
  if (timeBudget > 0 && epochs)
    return bad("--time-budget chooses the number of epochs; give either "
               "--time-budget or --epochs");
  if (timeBudget > 0 && resumeDir)
    return bad("--time-budget chooses the number of epochs of a new run; a "
               "run continued with --resume keeps the epochs it started "
               "with");
  if (useSessionWeights && (resumeDir || weights))
    return bad("the session's weights start a new run; they cannot be "
               "combined with --weights or --resume");
  if (epochs)
    if (Error e = checkEpochs(*epochs, ErrorCode::Argument, "--epochs"))
      return e;
  if (batch && *batch < 1)
    return bad("--batch: expected at least 1, got ", *batch);
  if (lr)
    if (Error e = checkLearningRate(*lr, ErrorCode::Argument, "--lr"))
      return e;
  if (keepCheckpoints < 0)
    return bad("--keep-checkpoints: expected at least 0, got ",
               keepCheckpoints);
  if (logEvery < 1)
    return bad("--log-every: expected at least 1, got ", logEvery);
  if (maxSteps < 0)
    return bad("--max-steps: expected at least 0 (no limit), got ", maxSteps);
  if (!(std::isfinite(timeBudget) && timeBudget >= 0))
    return bad("--time-budget: expected a positive number of seconds, got ",
               timeBudget);
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Setting up
//===----------------------------------------------------------------------===//

Trainer::Trainer(Session &session, TrainerOptions options, TrainerOutput output)
    : session_(session), m_(session.manifest()), options_(std::move(options)),
      output_(std::move(output)) {
  start_ = options_.start.value_or(Clock::now());
}

Trainer::~Trainer() = default;

Expected<std::unique_ptr<Trainer>> Trainer::create(Session &session,
                                                   TrainerOptions options,
                                                   TrainerOutput output,
                                                   TrainFailure *failure) {
  if (failure)
    *failure = TrainFailure::None;
  if (Error e = options.check()) {
    if (failure)
      *failure = TrainFailure::Options;
    return e;
  }
  std::unique_ptr<Trainer> trainer(
      new Trainer(session, std::move(options), std::move(output)));
  if (Error e = trainer->setUp()) {
    if (failure)
      *failure = trainer->failure_;
    return e;
  }
  trainer->failure_ = TrainFailure::None;
  return trainer;
}

Error Trainer::fail(TrainFailure kind, Error error) {
  failure_ = kind;
  return error;
}

std::string Trainer::shown(const char *flag, const std::string &value) const {
  auto it = options_.flagText.find(flag);
  return it == options_.flagText.end() ? value : it->second;
}

Error Trainer::setUp() {
  session_.setProfiling(options_.profile);
  const std::string &model = session_.artifact().path();
  for (const char *entry : {kEntryTrainStep, kEntryEval})
    if (!m_.entry(entry))
      return fail(TrainFailure::Input,
                  makeError(ErrorCode::Argument, model, ": the model has no '",
                            entry,
                            "' entry point, so it cannot be trained (compile "
                            "a trainable spec; see docs/training-abi.md)"));
  if (!m_.optimizer || !m_.train) // the manifest checks guarantee them
    return fail(TrainFailure::Input,
                makeError(ErrorCode::Format, model,
                          ": manifest: no 'optimizer' or 'train' settings"));
  const int64_t batch = m_.batch;
  if (options_.batch && *options_.batch != batch)
    return fail(TrainFailure::Options,
                makeError(ErrorCode::Argument, "--batch ", *options_.batch,
                          ": ", model, " was compiled for batch ", batch,
                          "; the batch is fixed at compile time, recompile "
                          "with `moec compile --batch ",
                          *options_.batch, "` to train with batch ",
                          *options_.batch));
  dataDir_ = options_.dataDir.value_or(m_.datasetPath);
  if (dataDir_.empty())
    return fail(TrainFailure::Options,
                makeError(ErrorCode::Argument, model,
                          ": the manifest names no dataset path; pass --data "
                          "DIR"));

  // The run's settings: the options, else the manifest's defaults; a
  // resumed run keeps the ones it started with.
  std::optional<Checkpoint> resumed;
  if (options_.resumeDir) {
    Expected<Checkpoint> ckpt = loadLatestCheckpoint(*options_.resumeDir);
    if (!ckpt)
      return fail(TrainFailure::Input, ckpt.takeError());
    resumed = std::move(*ckpt);
  }
  if (Error e = resolveSettings(resumed))
    return e;

  Expected<Dataset> train = loadModelSplit(m_, dataDir_, "train");
  if (!train)
    return fail(TrainFailure::Input, train.takeError());
  train_ = std::move(*train);
  Expected<Dataset> test = loadModelSplit(m_, dataDir_, "test");
  if (!test)
    return fail(TrainFailure::Input, test.takeError());
  test_ = std::move(*test);
  if (train_.n < batch)
    return fail(TrainFailure::Input,
                makeError(ErrorCode::Data, dataDir_, ": the train split has ",
                          train_.n, " images, fewer than one batch (", batch,
                          ")"));
  settings_.stepsPerEpoch = train_.n / batch;
  warmupSteps_ =
      std::llround(m_.train->warmupEpochs * double(settings_.stepsPerEpoch));

  BatchOptions batchOptions;
  batchOptions.shuffle = true;
  batchOptions.dropLast = true;
  batchOptions.augment.cropPadding = m_.train->cropPadding;
  batchOptions.augment.horizontalFlip = m_.train->horizontalFlip;
  batchOptions.normalization = normalizationFor(m_.datasetKind);
  Expected<BatchIterator> batches = BatchIterator::create(train_, batchOptions);
  if (!batches)
    return fail(TrainFailure::Input, batches.takeError());
  batches_.emplace(std::move(*batches));
  noise_ = NormalSampler(parameterSeed(settings_.seed, "moec-run.train.noise"));

  const std::string checkpointDir = options_.checkpointDir.value_or(
      options_.resumeDir.value_or(std::string()));
  if (!checkpointDir.empty())
    checkpointDir_.emplace(checkpointDir, options_.keepCheckpoints);
  if (resumed) {
    if (Error e = restore(*resumed))
      return e;
    message(formatPrintf(
        "resuming %s at step %" PRId64 "/%" PRId64 " (epoch %" PRId64 ")",
        resumed->path.c_str(), step_, totalSteps(), batches_->epoch() + 1));
  } else {
    if (checkpointDir_) {
      const std::string &dir = checkpointDir_->dir();
      Expected<std::optional<std::string>> latest = findLatestCheckpoint(dir);
      if (!latest)
        return fail(TrainFailure::Input, latest.takeError());
      if (*latest)
        return fail(TrainFailure::Options,
                    makeError(ErrorCode::Argument, dir,
                              " already holds a training run (latest: ",
                              **latest, "); continue it with --resume ", dir,
                              " or choose another --checkpoint-dir"));
    }
    if (options_.weights) {
      std::string note;
      if (Error e = session_.loadWeights(*options_.weights, &note))
        return fail(TrainFailure::Input, std::move(e));
      if (!note.empty())
        message("note: " + note);
    } else if (options_.useSessionWeights) {
      if (!session_.hasWeights())
        return fail(TrainFailure::Options,
                    makeError(ErrorCode::Argument, model,
                              ": no weights to start from (load or "
                              "initialize the session's weights first)"));
    } else {
      session_.initWeights(settings_.seed);
    }
    session_.resetState();
    batches_->startEpoch(settings_.seed, 0);
  }

  if (Error e = setUpMetrics(resumed.has_value()))
    return e;
  if (Error e = setUpTensors())
    return fail(TrainFailure::Input, std::move(e));
  if (options_.timeBudget > 0)
    if (Error e = planTimeBudget())
      return e;

  runStart_ = Clock::now();
  epoch_ = firstEpoch_ = batches_->epoch();
  trainingStart_ = secondsSince(start_);
  return Error::success();
}

Error Trainer::resolveSettings(const std::optional<Checkpoint> &resumed) {
  settings_.batch = m_.batch;
  settings_.threads = session_.threads();
  settings_.seed = options_.seed.value_or(m_.train->seed);
  settings_.epochs = options_.epochs.value_or(m_.train->epochs);
  settings_.lr = options_.lr.value_or(m_.optimizer->lr);
  if (!resumed)
    return Error::success();
  Expected<TrainSettings> stored = checkpointSettings(*resumed, m_);
  if (!stored)
    return fail(TrainFailure::Input, stored.takeError());
  auto differs = [&](const char *flag, const std::string &given,
                     const std::string &was) {
    return fail(TrainFailure::Options,
                makeError(ErrorCode::Argument, flag, " ", given,
                          " differs from the run being resumed (", was,
                          "); a resumed run keeps the settings it started "
                          "with"));
  };
  if (options_.seed && *options_.seed != stored->seed)
    return differs("--seed", shown("--seed", std::to_string(*options_.seed)),
                   std::to_string(stored->seed));
  if (options_.epochs && *options_.epochs != stored->epochs)
    return differs("--epochs",
                   shown("--epochs", std::to_string(*options_.epochs)),
                   std::to_string(stored->epochs));
  if (options_.lr && *options_.lr != stored->lr)
    return differs("--lr", shown("--lr", cat(*options_.lr)),
                   resumed->state.metadata.at("lr"));
  if (stored->batch != m_.batch)
    return fail(TrainFailure::Input,
                makeError(ErrorCode::Weights, resumed->path,
                          ": the run used batch ", stored->batch,
                          ", the model's batch is ", m_.batch));
  if (stored->threads != session_.threads())
    message(formatPrintf("note: the run used %d threads, this one %d; "
                         "reductions split over threads may round "
                         "differently from an uninterrupted run",
                         stored->threads, session_.threads()));
  settings_.seed = stored->seed;
  settings_.epochs = stored->epochs;
  settings_.lr = stored->lr;
  return Error::success();
}

Error Trainer::restore(const Checkpoint &ckpt) {
  const std::vector<uint64_t> &words = ckpt.state.rngState;
  auto inconsistent = [&](const std::string &what) {
    return fail(TrainFailure::Input, makeError(ErrorCode::Weights, ckpt.path,
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
  BatchIterator batches = *batches_;
  if (Error e = batches.restore(*batchState))
    return inconsistent(
        cat(e.message(), " (the train split has ", train_.n, " images now)"));
  const int64_t batch = settings_.batch;
  if (batchState->seed != settings_.seed || batchState->position % batch != 0 ||
      ckpt.state.step != batchState->epoch * settings_.stepsPerEpoch +
                             batchState->position / batch ||
      ckpt.state.step > totalSteps())
    return inconsistent(cat("step ", ckpt.state.step, " does not match epoch ",
                            batchState->epoch, " position ",
                            batchState->position, " (", settings_.stepsPerEpoch,
                            " steps per epoch of batch ", batch, ")"));
  if (Error e = session_.restoreCheckpoint(ckpt))
    return fail(TrainFailure::Input, std::move(e));
  *batches_ = std::move(batches);
  noise_ = *noiseState;
  step_ = ckpt.state.step;
  epoch_ = batches_->epoch();
  lastCheckpoint_ = ckpt.path;
  lastEval_.reset();
  return Error::success();
}

Error Trainer::setUpMetrics(bool resumed) {
  // A JSONL log and its plot, in the checkpoint directory unless the
  // options say where.
  std::string dir = checkpointDir_ ? checkpointDir_->dir() : std::string();
  logPath_ =
      options_.logPath.value_or(dir.empty() ? "" : dir + "/metrics.jsonl");
  plotPath_ =
      options_.plotPath.value_or(dir.empty() ? "" : dir + "/metrics.svg");
  if (checkpointDir_) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec)
      return fail(TrainFailure::Output,
                  makeError(ErrorCode::Io, dir,
                            ": cannot create directory: ", ec.message()));
  }
  if (logPath_.empty())
    return Error::success();
  if (resumed) {
    if (Error e = truncateMetricsLog(logPath_, step_))
      return fail(TrainFailure::Output, std::move(e));
    if (std::filesystem::exists(logPath_)) {
      Expected<std::vector<MetricRecord>> old = readMetricsLog(logPath_);
      if (!old)
        return fail(TrainFailure::Input, old.takeError());
      records_ = std::move(*old);
    }
  }
  Expected<MetricsLog> opened = MetricsLog::open(logPath_, !resumed);
  if (!opened)
    return fail(TrainFailure::Output, opened.takeError());
  log_.emplace(std::move(*opened));
  return Error::success();
}

Error Trainer::setUpTensors() {
  auto bind = [&](bool input, const char *name, EntryTensor &out) -> Error {
    Expected<EntryTensor> t = input ? session_.input(kEntryTrainStep, name)
                                    : session_.output(kEntryTrainStep, name);
    if (!t)
      return t.takeError();
    out = *t;
    return Error::success();
  };
  using Binding = std::pair<const char *, EntryTensor *>;
  for (auto [name, tensor] :
       {Binding{"images", &imagesIn_}, Binding{"labels", &labelsIn_},
        Binding{"step", &stepIn_}, Binding{"total_steps", &totalIn_},
        Binding{"warmup_steps", &warmupIn_}, Binding{"lr", &lrIn_}})
    if (Error e = bind(true, name, *tensor))
      return e;
  for (auto [name, tensor] :
       {Binding{"loss", &lossOut_}, Binding{"ce_loss", &ceOut_},
        Binding{"aux_loss", &auxOut_}, Binding{"correct", &correctOut_},
        Binding{"grad_norm", &normOut_}, Binding{"lr_used", &lrOut_}})
    if (Error e = bind(false, name, *tensor))
      return e;
  for (const EntryTensor &t : session_.inputs(kEntryTrainStep))
    if (t.spec->role == kRoleNormalNoise)
      noiseIn_.push_back(t);
  finiteChecked_ = {
      {lossOut_.spec->name, lossOut_.spec->shape, lossOut_.f32()}};
  for (const EntryTensor &t : session_.outputs(kEntryTrainStep))
    if (t.spec->role == kRoleGradient)
      finiteChecked_.push_back({t.spec->name, t.spec->shape, t.f32()});
  // The updated parameters and optimizer state, before any is written.
  for (TensorRef &view : session_.blockViews())
    finiteChecked_.push_back(std::move(view));
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Training
//===----------------------------------------------------------------------===//

bool Trainer::done() const {
  return finished() || (options_.maxSteps > 0 && step_ >= options_.maxSteps);
}

Error Trainer::doneError() {
  return fail(TrainFailure::Options,
              makeError(ErrorCode::Argument, session_.artifact().path(),
                        ": training is done (step ", step_, " of ",
                        totalSteps(),
                        finished() ? "" : ", the --max-steps limit", ")"));
}

double Trainer::secondsSince(Clock::time_point from) const {
  return std::chrono::duration<double>(Clock::now() - from).count();
}

void Trainer::fillStepInputs(BatchIterator &batches, NormalSampler &sampler,
                             int64_t at) {
  batches.next(settings_.batch, imagesIn_.f32(), labelsIn_.i32());
  stepIn_.f32()[0] = float(at);
  totalIn_.f32()[0] = float(totalSteps());
  warmupIn_.f32()[0] = float(warmupSteps_);
  lrIn_.f32()[0] = float(settings_.lr);
  for (const EntryTensor &t : noiseIn_)
    for (int64_t k = 0; k < t.count(); ++k)
      t.f32()[k] = float(sampler.next());
}

Expected<StepResult> Trainer::step() {
  failure_ = TrainFailure::None;
  if (done())
    return doneError();
  const int64_t batch = settings_.batch;
  if (batches_->epochDone(batch)) {
    // Restored at the end of an epoch: that epoch's end comes first.
    if (Error e = finishEpoch())
      return e;
    if (done())
      return doneError();
  }
  auto start = Clock::now();
  fillStepInputs(*batches_, noise_, step_);
  if (Error e = session_.run(kEntryTrainStep, batch))
    return fail(TrainFailure::Input, std::move(e));
  // The block views are a host copy on a device without host-accessible
  // memory (nothing to do on the cpu device).
  session_.refreshBlockViews();
  if (Error e = checkFinite(step_, finiteChecked_))
    return fail(TrainFailure::NonFinite, std::move(e));
  StepResult r;
  r.seconds = secondsSince(start);
  ++step_;
  ++stepsThisRun_;
  lastEval_.reset();
  r.step = step_;
  r.epoch = epoch_ + 1;
  r.loss = lossOut_.value();
  r.ceLoss = ceOut_.value();
  r.auxLoss = auxOut_.value();
  r.gradNorm = normOut_.value();
  r.lr = lrOut_.value();
  r.correct = correctOut_.value();
  epochLoss_ += r.loss;
  epochSeconds_ += r.seconds;
  ++epochSteps_;
  intervalLoss_ += r.loss;
  intervalCe_ += r.ceLoss;
  intervalAux_ += r.auxLoss;
  intervalNorm_ += r.gradNorm;
  intervalCorrect_ += r.correct;
  intervalSeconds_ += r.seconds;
  lastLr_ = r.lr;
  ++intervalSteps_;
  if (step_ % options_.logEvery == 0)
    if (Error e = flushInterval(epoch_))
      return fail(TrainFailure::Output, std::move(e));
  drawProgress();
  if (batches_->epochDone(batch))
    if (Error e = finishEpoch())
      return e;
  return r;
}

Error Trainer::runEpoch() {
  failure_ = TrainFailure::None;
  if (finished() || stopped_)
    return doneError();
  const int64_t epoch = epoch_;
  while (epoch_ == epoch) {
    if (batches_->epochDone(settings_.batch)) {
      if (Error e = finishEpoch())
        return e;
      continue;
    }
    if (options_.maxSteps > 0 && step_ >= options_.maxSteps)
      return stop();
    if (Expected<StepResult> s = step(); !s)
      return s.takeError();
  }
  return Error::success();
}

Expected<EvalResult> Trainer::run() {
  failure_ = TrainFailure::None;
  while (!finished() && !stopped_)
    if (Error e = runEpoch())
      return e;
  if (!lastEval_) {
    Expected<EvalResult> result = rt::evaluate(session_, test_);
    if (!result)
      return fail(TrainFailure::Input, result.takeError());
    lastEval_ = *result;
    if (!options_.evalEveryEpoch || stopped_ || stepsThisRun_ == 0) {
      printEval(*result, cat("step ", step_));
      // Logged like an epoch's evaluation, unless the log has this step's.
      bool logged = std::any_of(records_.begin(), records_.end(),
                                [&](const MetricRecord &r) {
                                  return r.split == "eval" && r.step == step_;
                                });
      if (!logged) {
        if (Error e = recordEval(*result, finished() ? epoch_ : epoch_ + 1))
          return fail(TrainFailure::Output, std::move(e));
        if (Error e = writePlot())
          return fail(TrainFailure::Output, std::move(e));
      }
    }
  }
  return *lastEval_;
}

Expected<EvalResult> Trainer::evaluate() {
  failure_ = TrainFailure::None;
  if (!lastEval_) {
    Expected<EvalResult> result = rt::evaluate(session_, test_);
    if (!result)
      return fail(TrainFailure::Input, result.takeError());
    lastEval_ = *result;
  }
  return *lastEval_;
}

Error Trainer::finishEpoch() {
  const int64_t batch = settings_.batch;
  const int64_t epochImages = settings_.stepsPerEpoch * batch;
  if (Error e = flushInterval(epoch_))
    return fail(TrainFailure::Output, std::move(e));
  // The end of an epoch: progress, evaluation, checkpoint, plot.
  if (epochSteps_ > 0 && output_.messages) {
    double perStep = secondsSince(runStart_) / double(stepsThisRun_);
    std::string line = formatProgress(
        epoch_ + 1, settings_.epochs, epochImages, epochImages,
        epochLoss_ / double(epochSteps_),
        double(epochSteps_ * batch) / epochSeconds_,
        trainEtaSeconds(perStep, step_, totalSteps(), options_.maxSteps));
    if (output_.progressInPlace)
      *output_.messages << "\r" << line << "\033[K\n" << std::flush;
    else
      *output_.messages << line << "\n" << std::flush;
  }
  if (options_.evalEveryEpoch) {
    Expected<EvalResult> result = rt::evaluate(session_, test_);
    if (!result)
      return fail(TrainFailure::Input, result.takeError());
    lastEval_ = *result;
    printEval(*result, cat("epoch ", epoch_ + 1, "/", settings_.epochs));
    if (Error e = recordEval(*result, epoch_ + 1))
      return fail(TrainFailure::Output, std::move(e));
  }
  replanTimeBudget();
  if (Error e = writeCheckpoint())
    return fail(TrainFailure::Output, std::move(e));
  if (Error e = writePlot())
    return fail(TrainFailure::Output, std::move(e));

  ++epoch_;
  epochLoss_ = epochSeconds_ = 0;
  epochSteps_ = 0;
  if (epoch_ < settings_.epochs)
    batches_->startEpoch(settings_.seed, epoch_);
  return Error::success();
}

Error Trainer::stop() {
  stopped_ = true;
  if (Error e = flushInterval(epoch_))
    return fail(TrainFailure::Output, std::move(e));
  if (Error e = writeCheckpoint())
    return fail(TrainFailure::Output, std::move(e));
  if (output_.messages && output_.progressInPlace)
    *output_.messages << "\n";
  message(formatPrintf("stopped after step %" PRId64 " (--max-steps)%s%s",
                       step_, checkpointDir_ ? "; continue with --resume " : "",
                       checkpointDir_ ? checkpointDir_->dir().c_str() : ""));
  if (Error e = writePlot())
    return fail(TrainFailure::Output, std::move(e));
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Metrics and output
//===----------------------------------------------------------------------===//

Error Trainer::record(const MetricRecord &r) {
  records_.push_back(r);
  if (log_)
    return log_->append(r);
  return Error::success();
}

Error Trainer::recordEval(const EvalResult &result, int64_t epoch) {
  MetricRecord r;
  r.step = step_;
  r.epoch = epoch;
  r.split = "eval";
  r.loss = result.loss();
  r.top1 = result.top1();
  for (size_t i = 0; i < result.routing.size(); ++i)
    if (i < result.dropped.size() && result.dropped[i])
      r.extra[droppedShareKey(result.routing[i].first)] = *result.dropped[i];
  return record(r);
}

Error Trainer::flushInterval(int64_t epoch) {
  if (intervalSteps_ == 0)
    return Error::success();
  const int64_t batch = settings_.batch;
  MetricRecord r;
  r.step = step_;
  r.epoch = epoch + 1;
  r.loss = intervalLoss_ / double(intervalSteps_);
  r.lr = lastLr_;
  r.imagesPerSec = intervalSeconds_ > 0
                       ? double(intervalSteps_ * batch) / intervalSeconds_
                       : 0.0;
  r.extra = {{"ce_loss", intervalCe_ / double(intervalSteps_)},
             {"aux_loss", intervalAux_ / double(intervalSteps_)},
             {"grad_norm", intervalNorm_ / double(intervalSteps_)},
             {"accuracy", intervalCorrect_ / double(intervalSteps_ * batch)}};
  intervalLoss_ = intervalCe_ = intervalAux_ = intervalNorm_ =
      intervalCorrect_ = intervalSeconds_ = 0;
  intervalSteps_ = 0;
  return record(r);
}

Error Trainer::writePlot() {
  if (plotPath_.empty())
    return Error::success();
  return writeLossPlotSvg(records_, plotPath_);
}

void Trainer::printEval(const EvalResult &r, const std::string &what) {
  if (!output_.results)
    return;
  std::string text =
      formatPrintf("%s: test loss %.4f, test top-1 %.2f%% (%.0f/%" PRId64 ")\n",
                   what.c_str(), r.loss(), 100 * r.top1(), r.correct, r.images);
  for (size_t i = 0; i < r.routing.size(); ++i) {
    const auto &[name, counts] = r.routing[i];
    appendPrintf(text, "  %s:", name.c_str());
    for (double c : counts)
      appendPrintf(text, " %.0f", c);
    if (i < r.dropped.size() && r.dropped[i])
      appendPrintf(text, " (dropped %.2f%%)", 100 * *r.dropped[i]);
    text += "\n";
  }
  *output_.results << text << std::flush;
}

void Trainer::message(const std::string &text) {
  if (output_.messages)
    *output_.messages << output_.prefix << text << "\n" << std::flush;
}

void Trainer::drawProgress() {
  if (!output_.messages || !output_.progressInPlace)
    return;
  const int64_t batch = settings_.batch;
  const double elapsed = secondsSince(runStart_);
  if (elapsed - lastDraw_ < 0.1 && !batches_->epochDone(batch))
    return;
  double perStep = elapsed / double(stepsThisRun_);
  *output_.messages << "\r"
                    << formatProgress(
                           epoch_ + 1, settings_.epochs, batches_->position(),
                           settings_.stepsPerEpoch * batch,
                           epochLoss_ / double(epochSteps_),
                           double(epochSteps_ * batch) / epochSeconds_,
                           trainEtaSeconds(perStep, step_, totalSteps(),
                                           options_.maxSteps))
                    << "\033[K" << std::flush;
  lastDraw_ = elapsed;
}

//===----------------------------------------------------------------------===//
// Checkpoints
//===----------------------------------------------------------------------===//

BatchIteratorState Trainer::nextBatchState() const {
  BatchIteratorState state = batches_->state();
  if (batches_->epochDone(settings_.batch)) {
    state.epoch = batches_->epoch() + 1;
    state.position = 0;
  }
  return state;
}

TrainState Trainer::trainState() const {
  BatchIteratorState batchState = nextBatchState();
  TrainState state;
  state.step = step_;
  state.epoch = batchState.epoch;
  state.positionInEpoch = batchState.position;
  state.rngState = rngWords(batchState, noise_);
  state.metadata = runMetadata(m_, settings_);
  return state;
}

namespace {
/// The session's parameters and optimizer state, copied out, and views of
/// them for the checkpoint writers.
struct CheckpointTensors {
  std::vector<Tensor> params, slots;
  std::vector<TensorRef> paramRefs, slotRefs;
  explicit CheckpointTensors(Session &session)
      : params(session.parameters()), slots(session.state()) {
    for (const Tensor &t : params)
      paramRefs.push_back({t.name, t.shape, t.data.data()});
    for (const Tensor &t : slots)
      slotRefs.push_back({t.name, t.shape, t.data.data()});
  }
};
} // namespace

Error Trainer::writeCheckpoint() {
  if (!checkpointDir_)
    return Error::success();
  TrainState state = trainState();
  CheckpointTensors tensors(session_);
  Expected<SavedCheckpoint> saved =
      checkpointDir_->save(state, tensors.paramRefs, tensors.slotRefs);
  if (!saved)
    return saved.takeError();
  for (const std::string &warning : saved->warnings)
    message("warning: " + warning);
  lastCheckpoint_ = saved->path;
  return Error::success();
}

Error Trainer::saveCheckpoint(const std::string &path) {
  failure_ = TrainFailure::None;
  TrainState state = trainState();
  CheckpointTensors tensors(session_);
  if (Error e = rt::saveCheckpoint(path, state, tensors.paramRefs,
                                   tensors.slotRefs))
    return fail(TrainFailure::Output, std::move(e));
  lastCheckpoint_ = path;
  return Error::success();
}

Error Trainer::loadCheckpoint(const std::string &path) {
  failure_ = TrainFailure::None;
  Expected<Checkpoint> ckpt = rt::loadCheckpoint(path);
  if (!ckpt)
    return fail(TrainFailure::Input, ckpt.takeError());
  Expected<TrainSettings> stored = checkpointSettings(*ckpt, m_);
  if (!stored)
    return fail(TrainFailure::Input, stored.takeError());
  if (stored->seed != settings_.seed || stored->epochs != settings_.epochs ||
      stored->lr != settings_.lr || stored->batch != settings_.batch)
    return fail(TrainFailure::Options,
                makeError(ErrorCode::Argument, path,
                          ": a checkpoint of another run (seed ", stored->seed,
                          ", epochs ", stored->epochs, ", lr ",
                          ckpt->state.metadata.at("lr"), ", batch ",
                          stored->batch, "; this run has seed ", settings_.seed,
                          ", epochs ", settings_.epochs, ", lr ",
                          exactNumber(settings_.lr), ", batch ",
                          settings_.batch, ")"));
  if (Error e = restore(*ckpt))
    return e;
  // The steps since the checkpoint are undone: so are their metrics.
  epochLoss_ = epochSeconds_ = 0;
  epochSteps_ = 0;
  intervalLoss_ = intervalCe_ = intervalAux_ = intervalNorm_ =
      intervalCorrect_ = intervalSeconds_ = 0;
  intervalSteps_ = 0;
  stopped_ = false;
  records_.erase(
      std::remove_if(records_.begin(), records_.end(),
                     [&](const MetricRecord &r) { return r.step > step_; }),
      records_.end());
  if (log_) {
    // The log is rewritten: reopen it after.
    log_.reset();
    if (Error e = truncateMetricsLog(logPath_, step_))
      return fail(TrainFailure::Output, std::move(e));
    Expected<MetricsLog> opened = MetricsLog::open(logPath_);
    if (!opened)
      return fail(TrainFailure::Output, opened.takeError());
    log_.emplace(std::move(*opened));
  }
  return Error::success();
}

} // namespace moec::rt
