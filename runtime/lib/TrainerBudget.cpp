//===- TrainerBudget.cpp - fitting a training run into a time budget ------===//
//
// TrainerOptions::timeBudget: before training, time train_step and eval
// here and keep the epochs that fit; after each epoch, re-plan from the
// epochs seen so far. The arithmetic is TimeBudget.h's.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Trainer.h"

#include "Format.h"
#include "moec/Runtime/TimeBudget.h"

#include <algorithm>
#include <cinttypes>

namespace moec::rt {

namespace {

/// Training time before the epochs seen are trusted more than the timing
/// (below it, timer noise and one-off costs dominate).
constexpr double kReplanAfterSeconds = 10;

/// `value` with `digits` digits after the point.
std::string formatFixed(double value, int digits) {
  return formatPrintf("%.*f", digits, value);
}

} // namespace

Error Trainer::planTimeBudget() {
  // Time train_step on real batches (a separate iterator and noise stream,
  // so the run itself is the one `--epochs N` would give) and eval on a few
  // test batches, then put the weights and optimizer state back and keep
  // the epochs that fit.
  const int64_t batch = settings_.batch;
  session_.setProfiling(false); // profiling times the training only
  Checkpoint before;
  before.path = "(the weights before timing)";
  before.params = session_.parameters();
  before.optimizer = session_.state();
  Expected<BatchIterator> timing =
      BatchIterator::create(train_, batches_->options());
  if (!timing)
    return fail(TrainFailure::Input, timing.takeError());
  int64_t timingEpoch = 0;
  timing->startEpoch(settings_.seed, timingEpoch);
  NormalSampler timingNoise(
      parameterSeed(settings_.seed, "moec-run.train.timing"));
  // The median step: a burst of load from another tenant during the few
  // seconds of timing (it happens on shared hosts) moves the mean, and a
  // schedule planned from it would be far too short.
  double timedSeconds = 0;
  std::vector<double> stepSeconds;
  for (int64_t k = 0;
       stepSeconds.size() < 400 && (stepSeconds.size() < 8 || timedSeconds < 3);
       ++k) {
    if (timing->epochDone(batch))
      timing->startEpoch(settings_.seed, ++timingEpoch);
    fillStepInputs(*timing, timingNoise, k);
    auto start = Clock::now();
    if (Error e = session_.run(kEntryTrainStep, batch))
      return fail(TrainFailure::Input, std::move(e));
    if (k >= 2) { // the first steps warm the caches and the thread pool
      stepSeconds.push_back(secondsSince(start));
      timedSeconds += stepSeconds.back();
    }
  }
  std::nth_element(stepSeconds.begin(),
                   stepSeconds.begin() + stepSeconds.size() / 2,
                   stepSeconds.end());
  const double perStep = stepSeconds[stepSeconds.size() / 2];
  const int64_t testBatches = (test_.n + batch - 1) / batch;
  const int64_t sampleBatches = std::min<int64_t>(4, testBatches);
  Dataset sample;
  sample.channels = test_.channels;
  sample.height = test_.height;
  sample.width = test_.width;
  sample.n = std::min(test_.n, sampleBatches * batch);
  sample.images.assign(test_.images.begin(),
                       test_.images.begin() + sample.n * test_.imageSize());
  sample.labels.assign(test_.labels.begin(), test_.labels.begin() + sample.n);
  auto evalStart = Clock::now();
  if (Expected<EvalResult> r = rt::evaluate(session_, sample); !r)
    return fail(TrainFailure::Input, r.takeError());
  const double evalSeconds =
      secondsSince(evalStart) / double(sampleBatches) * double(testBatches);
  if (Error e = session_.restoreCheckpoint(before))
    return fail(TrainFailure::Input, std::move(e));
  session_.setProfiling(options_.profile);
  budgetEvalSeconds_ = evalSeconds;

  const bool evalEveryEpoch = options_.evalEveryEpoch;
  const double budget = options_.timeBudget;
  const double perEpoch = perStep * double(settings_.stepsPerEpoch) +
                          (evalEveryEpoch ? evalSeconds : 0.0);
  const double spent = secondsSince(start_);
  const int64_t fit = epochsThatFit(budget, spent, perEpoch,
                                    evalEveryEpoch ? 0.0 : evalSeconds);
  if (fit < 1)
    return fail(
        TrainFailure::Input,
        makeError(ErrorCode::Argument, "--time-budget ",
                  shown("--time-budget", cat(budget)),
                  ": not even one epoch fits (", formatFixed(perStep * 1000, 1),
                  " ms per step, ", settings_.stepsPerEpoch, " steps and ",
                  formatFixed(evalEveryEpoch ? evalSeconds : 0.0, 1),
                  " s of evaluation per epoch: ", formatFixed(perEpoch, 1),
                  " s per epoch; ", formatFixed(spent, 1),
                  " s spent before training)"));
  settings_.epochs = fit;
  message(formatPrintf("--time-budget %.0f s: %.1f ms per step, %.1f s per "
                       "evaluation, %.1f s per epoch; %" PRId64
                       " epochs fit (%.0f s spent before training, %.0f%% of "
                       "the budget kept free)",
                       budget, perStep * 1000, evalSeconds, perEpoch,
                       settings_.epochs, spent, kTimeBudgetMargin * 100));
  return Error::success();
}

void Trainer::replanTimeBudget() {
  // On a shared host whose speed drifts (by 10 % within minutes, by 2x
  // during a burst of load from another tenant) the run re-plans from the
  // epochs seen so far. While every step so far was a warm-up step (their
  // learning rate does not depend on the total), the count moves freely, up
  // or down: the run stays the one `--epochs N` gives for the new N. After
  // the warm-up it only shortens, when the rest would overrun (the cosine
  // schedule is shortened from that step).
  const double budget = options_.timeBudget;
  if (!(budget > 0) || epoch_ + 1 >= settings_.epochs ||
      secondsSince(start_) - trainingStart_ < kReplanAfterSeconds)
    return;
  BudgetProgress p;
  p.budget = budget;
  p.elapsed = secondsSince(start_);
  p.perEpoch = (p.elapsed - trainingStart_) / double(epoch_ + 1 - firstEpoch_);
  p.finalEval = options_.evalEveryEpoch ? 0.0 : budgetEvalSeconds_;
  p.epochsDone = epoch_ + 1;
  p.epochsPlanned = settings_.epochs;
  p.stepsDone = step_;
  p.warmupSteps = warmupSteps_;
  const EpochReplan plan = replanEpochs(p);
  if (plan.kind == EpochReplan::Kind::Warmup)
    message(formatPrintf(
        "--time-budget %.0f s: epochs take %.1f s here, %s than timed; "
        "%" PRId64 " epochs fit, not %" PRId64 " (still in the warm-up: the "
        "run is the one --epochs %" PRId64 " gives)",
        budget, p.perEpoch, plan.epochs > settings_.epochs ? "less" : "more",
        plan.epochs, settings_.epochs, plan.epochs));
  else if (plan.kind == EpochReplan::Kind::Shorten)
    message(formatPrintf("--time-budget %.0f s: epochs take %.1f s here, more "
                         "than timed; %" PRId64 " epochs fit, not %" PRId64
                         " (the schedule is shortened from step %" PRId64 ")",
                         budget, p.perEpoch, plan.epochs, settings_.epochs,
                         step_));
  settings_.epochs = plan.epochs;
}

} // namespace moec::rt
