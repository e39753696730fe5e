//===- TrainerTest.cpp - the Trainer library on the trainable model -------===//
//
// Trains the trainable test model (TestUtil.h, TestKernels.c "The
// trainable model") through moec::rt::Trainer: a step against a reference
// computed here from the model's definition, evaluation against a
// reference, step-by-step against run() and against moec-run train, bitwise
// checkpoint round trips and resumes, the output streams, and errors.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Trainer.h"

#include "TestUtil.h"
#include "moec/Runtime/Weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <regex>
#include <sstream>

using namespace moec::rt;
using namespace moec::rt::test;
namespace fs = std::filesystem;

namespace {

/// The reference for one step of the trainable model, in double: the
/// scores, loss, gradients and the SGD-with-momentum update of
/// TestKernels.c's moec_t1 from zero momentum.
struct ReferenceStep {
  double ce = 0, aux = 0, correct = 0, lr = 0;
  std::vector<double> w;
  double b = 0;
};

ReferenceStep referenceStep(const std::vector<float> &images,
                            const std::vector<int32_t> &labels,
                            const std::vector<float> &noise,
                            const std::vector<float> &w, float b, double t,
                            double total, double warmup, double lr) {
  ReferenceStep r;
  std::vector<double> gw(16);
  double gb = 0;
  for (size_t p = 0; p < 16; ++p) {
    gw[p] = 0.002 * w[p];
    r.aux += 0.001 * double(w[p]) * w[p];
  }
  for (size_t i = 0; i < size_t(kBatch); ++i) {
    double s = b + 0.1 * (double(noise[2 * i]) + noise[2 * i + 1]);
    for (size_t p = 0; p < 16; ++p)
      s += double(images[i * 16 + p]) * w[p];
    double res = s - labels[i];
    r.ce += res * res / double(kBatch);
    r.correct += std::abs(res) < 0.5;
    gb += 2 * res / double(kBatch);
    for (size_t p = 0; p < 16; ++p)
      gw[p] += 2 * res * images[i * 16 + p] / double(kBatch);
  }
  r.lr = t < warmup ? lr * (t + 1) / warmup : lr * (1 - 0.5 * t / total);
  for (size_t p = 0; p < 16; ++p)
    r.w.push_back(w[p] - r.lr * gw[p]);
  r.b = b - r.lr * gb;
  return r;
}

void expectNear(double actual, double expected, const char *what) {
  EXPECT_NEAR(actual, expected, 1e-5 * std::max(1.0, std::abs(expected)))
      << what;
}

class TrainerTest : public ::testing::Test {
protected:
  void SetUp() override {
    model = dir / "train.moec";
    writeBytes(model, trainArtifact());
    data = dir / "data";
    makeTrainData(data);
    Expected<std::shared_ptr<const Artifact>> loaded = Artifact::load(model);
    ASSERT_TRUE(loaded) << loaded.error().message();
    artifact = *loaded;
  }

  std::unique_ptr<Session> newSession(int threads = 1) {
    Expected<std::unique_ptr<Session>> s =
        Session::create(artifact, "cpu", threads);
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(*s) : nullptr;
  }

  TrainerOptions options(int64_t epochs = 3) {
    TrainerOptions o;
    o.dataDir = data;
    o.epochs = epochs;
    return o;
  }

  std::unique_ptr<Trainer> create(Session &session, TrainerOptions o,
                                  TrainerOutput output = {}) {
    Expected<std::unique_ptr<Trainer>> t =
        Trainer::create(session, std::move(o), std::move(output));
    EXPECT_TRUE(t) << t.error().message();
    return t ? std::move(*t) : nullptr;
  }

  /// The error message of a Trainer::create that must fail with `kind`.
  std::string createError(TrainerOptions o, TrainFailure kind,
                          ErrorCode code = ErrorCode::Argument) {
    std::unique_ptr<Session> s = newSession();
    TrainFailure failure = TrainFailure::None;
    Expected<std::unique_ptr<Trainer>> t =
        Trainer::create(*s, std::move(o), {}, &failure);
    EXPECT_FALSE(t);
    if (t)
      return "";
    EXPECT_EQ(failure, kind) << t.error().message();
    EXPECT_EQ(t.error().code(), code) << t.error().message();
    return t.error().message();
  }

  static std::vector<float> flat(const std::vector<Tensor> &tensors) {
    std::vector<float> out;
    for (const Tensor &t : tensors)
      out.insert(out.end(), t.data.begin(), t.data.end());
    return out;
  }

  TempDir dir;
  std::string model, data;
  std::shared_ptr<const Artifact> artifact;
};

// The first steps feed train_step the batch, noise and schedule the
// runtime documents: the step's outputs and the updated parameters match a
// reference computed from the model's definition.
TEST_F(TrainerTest, StepMatchesTheReference) {
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, options(2));
  ASSERT_TRUE(trainer);
  EXPECT_EQ(trainer->settings().stepsPerEpoch, 2);
  EXPECT_EQ(trainer->totalSteps(), 4);
  EXPECT_EQ(trainer->warmupSteps(), 2); // round(1 epoch x 2 steps)
  EXPECT_EQ(trainer->settings().lr, 0.001);
  EXPECT_EQ(trainer->settings().seed, 0u);

  // The inputs, rebuilt independently: the seed-0 initial weights, the
  // seed-0 epoch-0 batch with the manifest's augmentation, the noise.
  ParamSpec wSpec;
  wSpec.name = "w";
  wSpec.shape = {16};
  wSpec.init = InitKind::Normal;
  wSpec.std = 0.1;
  std::vector<float> w(16);
  initParameter(wSpec, 0, w.data());
  BatchOptions batchOptions;
  batchOptions.dropLast = true;
  batchOptions.augment.cropPadding = 1;
  batchOptions.augment.horizontalFlip = true;
  batchOptions.normalization = normalizationFor("fashion-mnist");
  Expected<BatchIterator> it =
      BatchIterator::create(trainer->trainData(), batchOptions);
  ASSERT_TRUE(it);
  it->startEpoch(0, 0);
  std::vector<float> images(size_t(kBatch * 16));
  std::vector<int32_t> labels(static_cast<size_t>(kBatch));
  ASSERT_EQ(it->next(kBatch, images.data(), labels.data()), kBatch);
  NormalSampler sampler(parameterSeed(0, "moec-run.train.noise"));
  std::vector<float> noise(8);
  for (float &z : noise)
    z = float(sampler.next());
  ReferenceStep ref =
      referenceStep(images, labels, noise, w, 0.0f, 0, 4, 2, 0.001);

  Expected<StepResult> step = trainer->step();
  ASSERT_TRUE(step) << step.error().message();
  EXPECT_EQ(step->step, 1);
  EXPECT_EQ(step->epoch, 1);
  EXPECT_FLOAT_EQ(float(step->lr), 0.0005f); // step 0 of a 2-step warm-up
  expectNear(step->lr, ref.lr, "lr");
  expectNear(step->ceLoss, ref.ce, "ce_loss");
  expectNear(step->auxLoss, ref.aux, "aux_loss");
  expectNear(step->loss, ref.ce + ref.aux, "loss");
  EXPECT_EQ(step->correct, ref.correct);
  std::vector<Tensor> params = session->parameters();
  ASSERT_EQ(params.size(), 2u);
  for (size_t p = 0; p < 16; ++p)
    expectNear(params[0].data[p], ref.w[p], "w");
  expectNear(params[1].data[0], ref.b, "b");
  EXPECT_EQ(trainer->stepsDone(), 1);

  // The schedule: step 1 ends the warm-up, step 2 decays (t = 2 of 4).
  step = trainer->step();
  ASSERT_TRUE(step);
  EXPECT_FLOAT_EQ(float(step->lr), 0.001f);
  EXPECT_EQ(trainer->epoch(), 1); // the step ended epoch 1
  step = trainer->step();
  ASSERT_TRUE(step);
  EXPECT_EQ(step->epoch, 2);
  EXPECT_FLOAT_EQ(float(step->lr), 0.001f * (1 - 0.5f * 2 / 4));
}

// evaluate() runs eval over the whole test split, the last batch padded
// and masked: its loss and accuracy match a reference on the weights.
TEST_F(TrainerTest, EvaluateMatchesTheReference) {
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, options());
  ASSERT_TRUE(trainer);
  ASSERT_TRUE(trainer->step());
  Expected<EvalResult> result = trainer->evaluate();
  ASSERT_TRUE(result) << result.error().message();
  const Dataset &test = trainer->testData();
  ASSERT_EQ(test.n, 6);
  std::vector<Tensor> params = session->parameters();
  double loss = 0, correct = 0, low = 0;
  for (int64_t i = 0; i < test.n; ++i) {
    double s = params[1].data[0];
    for (size_t p = 0; p < 16; ++p)
      s += double(test.images[size_t(i) * 16 + p]) * params[0].data[p];
    double r = s - test.labels[size_t(i)];
    loss += r * r;
    correct += std::abs(r) < 0.5;
    low += s < 4.5;
  }
  EXPECT_EQ(result->images, 6);
  expectNear(result->loss(), loss / 6, "loss");
  EXPECT_EQ(result->correct, correct);
  ASSERT_EQ(result->routing.size(), 1u);
  EXPECT_EQ(result->routing[0].first, "routing.blocks.0");
  EXPECT_EQ(result->routing[0].second, (std::vector<double>{low, 6 - low}));
}

// step() by step, runEpoch() and run() are the same run, and the one
// `moec-run train` gives, bit for bit.
TEST_F(TrainerTest, StepsEpochsAndRunAgree) {
  std::unique_ptr<Session> a = newSession();
  std::unique_ptr<Trainer> byRun = create(*a, options());
  ASSERT_TRUE(byRun);
  Expected<EvalResult> final = byRun->run();
  ASSERT_TRUE(final) << final.error().message();
  EXPECT_TRUE(byRun->finished());
  EXPECT_TRUE(byRun->done());
  EXPECT_FALSE(byRun->stopped());
  EXPECT_EQ(byRun->stepsDone(), 6);

  std::unique_ptr<Session> b = newSession();
  std::unique_ptr<Trainer> bySteps = create(*b, options());
  ASSERT_TRUE(bySteps);
  int64_t steps = 0;
  while (!bySteps->done()) {
    Expected<StepResult> step = bySteps->step();
    ASSERT_TRUE(step) << step.error().message();
    EXPECT_EQ(step->step, ++steps);
    EXPECT_EQ(step->epoch, (steps + 1) / 2);
  }
  EXPECT_EQ(steps, 6);
  EXPECT_EQ(flat(b->parameters()), flat(a->parameters()));
  EXPECT_EQ(flat(b->state()), flat(a->state()));
  Expected<EvalResult> evaluated = bySteps->evaluate();
  ASSERT_TRUE(evaluated);
  EXPECT_EQ(evaluated->lossSum, final->lossSum);
  EXPECT_EQ(evaluated->correct, final->correct);

  std::unique_ptr<Session> c = newSession();
  std::unique_ptr<Trainer> byEpochs = create(*c, options());
  ASSERT_TRUE(byEpochs);
  for (int64_t epoch = 1; epoch <= 3; ++epoch) {
    ASSERT_FALSE(byEpochs->runEpoch());
    EXPECT_EQ(byEpochs->stepsDone(), 2 * epoch);
    EXPECT_EQ(byEpochs->epoch(), epoch);
  }
  EXPECT_EQ(flat(c->parameters()), flat(a->parameters()));

  std::string saved = dir / "lib.safetensors", tool = dir / "tool.safetensors";
  ASSERT_FALSE(a->saveWeights(saved));
  CommandResult r = runMoecRun("train " + model + " --data " + data +
                                   " --threads 1 --epochs 3 -o " + tool,
                               dir.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(readBytes(tool), readBytes(saved));
  char accuracy[64];
  std::snprintf(accuracy, sizeof(accuracy), "test accuracy: %.2f%%\n",
                100 * final->top1());
  EXPECT_TRUE(contains(r.out, accuracy)) << r.out;

  // Control: another seed is another run.
  std::unique_ptr<Session> d = newSession();
  TrainerOptions other = options();
  other.seed = 1;
  std::unique_ptr<Trainer> seeded = create(*d, other);
  ASSERT_TRUE(seeded && seeded->run());
  EXPECT_NE(flat(d->parameters()), flat(a->parameters()));
}

// A checkpoint saved mid-epoch and loaded back continues bitwise as the
// run went on from where it was saved; so does a run resumed from a
// checkpoint directory in a new session.
TEST_F(TrainerTest, CheckpointRoundTripIsBitwise) {
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, options());
  ASSERT_TRUE(trainer);
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(trainer->step());
  std::string path = dir / "mid.safetensors";
  ASSERT_FALSE(trainer->saveCheckpoint(path));
  EXPECT_EQ(trainer->lastCheckpoint(), path);
  Expected<Checkpoint> saved = loadCheckpoint(path);
  ASSERT_TRUE(saved) << saved.error().message();
  EXPECT_EQ(saved->state.step, 3);
  EXPECT_EQ(saved->state.epoch, 1);
  EXPECT_EQ(saved->state.positionInEpoch, 4);
  EXPECT_EQ(saved->state.rngState.size(), 12u);
  EXPECT_EQ(saved->state.metadata.at("epochs"), "3");
  EXPECT_EQ(saved->state.metadata.at("lr"), "0.001");
  EXPECT_EQ(saved->findParam("w")->data, session->parameters()[0].data);

  std::vector<StepResult> first;
  for (int i = 0; i < 3; ++i) {
    Expected<StepResult> s = trainer->step();
    ASSERT_TRUE(s);
    first.push_back(*s);
  }
  const std::vector<float> params = flat(session->parameters());
  const std::vector<float> state = flat(session->state());
  ASSERT_NE(state, std::vector<float>(state.size(), 0.0f));

  ASSERT_FALSE(trainer->loadCheckpoint(path));
  EXPECT_EQ(trainer->stepsDone(), 3);
  EXPECT_EQ(trainer->epoch(), 1);
  EXPECT_FALSE(trainer->done());
  EXPECT_EQ(flat(session->parameters()), flat(saved->params));
  for (int i = 0; i < 3; ++i) {
    Expected<StepResult> s = trainer->step();
    ASSERT_TRUE(s);
    EXPECT_EQ(s->step, first[size_t(i)].step);
    EXPECT_EQ(s->loss, first[size_t(i)].loss);
    EXPECT_EQ(s->gradNorm, first[size_t(i)].gradNorm);
  }
  EXPECT_EQ(flat(session->parameters()), params);
  EXPECT_EQ(flat(session->state()), state);
  EXPECT_TRUE(trainer->finished());

  // --max-steps 4 into a directory, then a resume in a fresh session.
  std::string ckpt = dir / "ckpt";
  TrainerOptions stopAt = options();
  stopAt.checkpointDir = ckpt;
  stopAt.maxSteps = 4;
  std::unique_ptr<Session> first4 = newSession();
  std::unique_ptr<Trainer> stopped = create(*first4, stopAt);
  ASSERT_TRUE(stopped);
  ASSERT_TRUE(stopped->run());
  EXPECT_TRUE(stopped->stopped());
  EXPECT_EQ(stopped->stepsDone(), 4);
  EXPECT_EQ(stopped->lastCheckpoint(), ckpt + "/ckpt-4.safetensors");
  Expected<StepResult> refused = stopped->step();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message(),
            model + ": training is done (step 4 of 6, the --max-steps limit)");
  EXPECT_EQ(stopped->lastFailure(), TrainFailure::Options);

  TrainerOptions resume;
  resume.dataDir = data;
  resume.resumeDir = ckpt;
  std::unique_ptr<Session> rest = newSession();
  std::unique_ptr<Trainer> resumed = create(*rest, resume);
  ASSERT_TRUE(resumed);
  EXPECT_EQ(resumed->stepsDone(), 4);
  EXPECT_EQ(resumed->settings().epochs, 3);
  ASSERT_TRUE(resumed->run());
  EXPECT_EQ(flat(rest->parameters()), params);
  EXPECT_EQ(flat(rest->state()), state);
  EXPECT_EQ(resumed->lastCheckpoint(), ckpt + "/ckpt-6.safetensors");
}

// Evaluations go to `results`, notes and progress to `messages`, with the
// prefix; the metrics log and the records agree.
TEST_F(TrainerTest, ReportsToTheGivenStreams) {
  std::ostringstream results, messages;
  TrainerOutput output;
  output.results = &results;
  output.messages = &messages;
  output.prefix = "test: ";
  TrainerOptions o = options(2);
  std::string ckpt = dir / "ckpt";
  o.checkpointDir = ckpt;
  o.logEvery = 1;
  o.maxSteps = 3;
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, o, output);
  ASSERT_TRUE(trainer);
  Expected<EvalResult> result = trainer->run();
  ASSERT_TRUE(result) << result.error().message();
  EXPECT_TRUE(std::regex_search(
      results.str(),
      std::regex(R"(^epoch 1/2: test loss [0-9.]+, test top-1 [0-9.]+% )"
                 R"(\([0-9]/6\)\n  routing\.blocks\.0: [0-9]+ [0-9]+\n)"
                 R"(step 3: test loss [0-9.]+, test top-1 [0-9.]+% )"
                 R"(\([0-9]/6\)\n  routing\.blocks\.0: [0-9]+ [0-9]+\n$)")))
      << results.str();
  EXPECT_TRUE(std::regex_search(
      messages.str(),
      std::regex(R"(^epoch 1/2 \[#+\] 8/8 loss [0-9.]+ [0-9]+ img/s ETA )"
                 R"([0-9:-]+\ntest: stopped after step 3 \(--max-steps\); )"
                 R"(continue with --resume )" +
                 ckpt + "\n$")))
      << messages.str();

  std::vector<std::string> kinds;
  for (const MetricRecord &r : trainer->records())
    kinds.push_back(cat(r.split, r.step));
  // The final evaluation of the stopped run is logged too.
  EXPECT_EQ(kinds, (std::vector<std::string>{"train1", "train2", "eval2",
                                             "train3", "eval3"}));
  Expected<std::vector<MetricRecord>> logged =
      readMetricsLog(ckpt + "/metrics.jsonl");
  ASSERT_TRUE(logged);
  ASSERT_EQ(logged->size(), 5u);
  EXPECT_EQ((*logged)[4].split, "eval");
  EXPECT_EQ((*logged)[4].epoch, 2);
  EXPECT_EQ((*logged)[4].top1, trainer->records()[4].top1);
  EXPECT_EQ((*logged)[2].split, "eval");
  EXPECT_EQ((*logged)[2].top1, trainer->records()[2].top1);
  EXPECT_EQ((*logged)[3].loss, trainer->records()[3].loss);

  // Resuming prints a note; without streams a trainer prints nothing.
  messages.str("");
  TrainerOptions resume;
  resume.dataDir = data;
  resume.resumeDir = ckpt;
  std::unique_ptr<Session> next = newSession(2);
  std::unique_ptr<Trainer> resumed = create(*next, resume, output);
  ASSERT_TRUE(resumed);
  EXPECT_EQ(messages.str(),
            "test: note: the run used 1 threads, this one 2; reductions split "
            "over threads may round differently from an uninterrupted run\n"
            "test: resuming " +
                ckpt + "/ckpt-3.safetensors at step 3/4 (epoch 2)\n");
  EXPECT_EQ(resumed->records().size(), 5u); // the log read back
}

// A NaN gradient stops the step with a Data error naming the step and
// tensor; nothing is written.
TEST_F(TrainerTest, NonFiniteGradient) {
  std::string poisoned = dir / "poisoned";
  makeTrainData(poisoned, /*poisoned=*/true);
  TrainerOptions o = options();
  o.dataDir = poisoned;
  o.checkpointDir = dir / "ckpt";
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, o);
  ASSERT_TRUE(trainer);
  // Seed 0 shuffles 10 images to 5 3 8 2 ...: image 8 (label 9) is in the
  // first batch.
  Expected<StepResult> step = trainer->step();
  ASSERT_FALSE(step);
  EXPECT_EQ(step.error().code(), ErrorCode::Data);
  EXPECT_EQ(step.error().message(),
            "step 0: non-finite value nan at grad.b[0]");
  EXPECT_EQ(trainer->lastFailure(), TrainFailure::NonFinite);
  EXPECT_EQ(trainer->stepsDone(), 0);
  EXPECT_EQ(trainer->lastCheckpoint(), "");
  EXPECT_FALSE(fs::exists(dir / "ckpt/latest"));
}

// A learning rate that f32 holds but the update overflows: the loss and
// gradients are finite, the updated parameters are not. The step stops
// before anything is written.
TEST_F(TrainerTest, NonFiniteParameters) {
  TrainerOptions o = options();
  o.lr = 3.4e38;
  o.checkpointDir = dir / "ckpt";
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, o);
  ASSERT_TRUE(trainer);
  Expected<StepResult> step = trainer->step();
  ASSERT_FALSE(step);
  EXPECT_EQ(step.error().code(), ErrorCode::Data);
  EXPECT_TRUE(contains(step.error().message(), "step 0: non-finite value "))
      << step.error().message();
  EXPECT_FALSE(contains(step.error().message(), "grad."))
      << step.error().message();
  EXPECT_EQ(trainer->lastFailure(), TrainFailure::NonFinite);
  EXPECT_EQ(trainer->stepsDone(), 0);
  EXPECT_FALSE(fs::exists(dir / "ckpt/latest"));
}

TEST_F(TrainerTest, CreateErrors) {
  std::string tiny = dir / "tiny.moec";
  writeBytes(tiny, tinyArtifact());
  {
    Expected<std::shared_ptr<const Artifact>> t = Artifact::load(tiny);
    ASSERT_TRUE(t);
    Expected<std::unique_ptr<Session>> s = Session::create(*t, "cpu", 1);
    ASSERT_TRUE(s);
    TrainFailure failure;
    Expected<std::unique_ptr<Trainer>> trainer =
        Trainer::create(**s, options(), {}, &failure);
    ASSERT_FALSE(trainer);
    EXPECT_EQ(failure, TrainFailure::Input);
    EXPECT_EQ(trainer.error().message(),
              tiny + ": the model has no 'train_step' entry point, so it "
                     "cannot be trained (compile a trainable spec; see "
                     "docs/training-abi.md)");
  }

  TrainerOptions o = options();
  o.batch = 8;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--batch 8: " + model +
                " was compiled for batch 4; the batch is fixed at compile "
                "time, recompile with `moec compile --batch 8` to train with "
                "batch 8");
  o = options();
  o.dataDir.reset();
  EXPECT_EQ(createError(o, TrainFailure::Options),
            model + ": the manifest names no dataset path; pass --data DIR");
  o = options();
  o.dataDir = dir / "missing";
  EXPECT_EQ(createError(o, TrainFailure::Input, ErrorCode::Data),
            dir / "missing" + ": no such directory");
  o = options();
  o.resumeDir = dir / "r";
  o.weights = dir / "w";
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--weights sets the starting weights of a new run; a run "
            "continued with --resume starts from its checkpoint");
  o = options();
  o.timeBudget = 60;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--time-budget chooses the number of epochs; give either "
            "--time-budget or --epochs");
  o = options();
  o.lr = -1;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--lr: expected a positive number representable in f32 (at most "
            "3.4028235e+38, at least 1.4e-45), got -1");
  // A learning rate that overflows f32 would train with lr = inf.
  o = options();
  o.lr = 1e39;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--lr: expected a positive number representable in f32 (at most "
            "3.4028235e+38, at least 1.4e-45), got 1e+39");
  o = options();
  o.epochs = int64_t(1) << 62;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--epochs: expected 1 to 1000000 epochs, got 4611686018427387904");
  o = options();
  o.logEvery = 0;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--log-every: expected at least 1, got 0");
  o = options();
  o.weights = dir / "none.safetensors";
  EXPECT_EQ(createError(o, TrainFailure::Input, ErrorCode::Io),
            dir / "none.safetensors: cannot open: No such file or directory");
  o = options();
  o.useSessionWeights = true;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            model + ": no weights to start from (load or initialize the "
                    "session's weights first)");

  // A checkpoint directory holding a run, and a resume with other settings
  // (as the user spelled them).
  std::string ckpt = dir / "ckpt";
  {
    TrainerOptions first = options(2);
    first.checkpointDir = ckpt;
    first.maxSteps = 1;
    std::unique_ptr<Session> s = newSession();
    std::unique_ptr<Trainer> t = create(*s, first);
    ASSERT_TRUE(t && t->run());
  }
  o = options(2);
  o.checkpointDir = ckpt;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            ckpt + " already holds a training run (latest: " + ckpt +
                "/ckpt-1.safetensors); continue it with --resume " + ckpt +
                " or choose another --checkpoint-dir");
  o = options(2);
  o.resumeDir = ckpt;
  o.seed = 7;
  o.flagText["--seed"] = "007";
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--seed 007 differs from the run being resumed (0); a resumed run "
            "keeps the settings it started with");
  o = options(3);
  o.resumeDir = ckpt;
  EXPECT_EQ(createError(o, TrainFailure::Options),
            "--epochs 3 differs from the run being resumed (2); a resumed run "
            "keeps the settings it started with");

  // A checkpoint whose settings are out of range does not resume.
  const std::string latest = ckpt + "/ckpt-1.safetensors";
  Expected<SafeTensors> file = readSafeTensors(latest);
  ASSERT_TRUE(file);
  std::vector<TensorRef> refs;
  for (const Tensor &t : file->tensors)
    refs.push_back({t.name, t.shape, t.data.data()});
  auto resumeWith = [&](const char *key, const char *value) {
    std::map<std::string, std::string> meta = file->metadata;
    meta[key] = value;
    EXPECT_FALSE(writeSafeTensors(latest, refs, meta));
    TrainerOptions r = options();
    r.resumeDir = ckpt;
    return createError(r, TrainFailure::Input, ErrorCode::Weights);
  };
  EXPECT_EQ(resumeWith("lr", "nan"),
            latest + ": metadata 'lr': expected a positive number "
                     "representable in f32 (at most 3.4028235e+38, at least "
                     "1.4e-45), got nan");
  EXPECT_EQ(resumeWith("lr", "1e39"),
            latest + ": metadata 'lr': expected a positive number "
                     "representable in f32 (at most 3.4028235e+38, at least "
                     "1.4e-45), got 1e+39");
  EXPECT_EQ(resumeWith("epochs", "4611686018427387904"),
            latest + ": metadata 'epochs': expected 1 to 1000000 epochs, got "
                     "4611686018427387904");
}

TEST_F(TrainerTest, LoadCheckpointErrorsChangeNothing) {
  std::unique_ptr<Session> session = newSession();
  std::unique_ptr<Trainer> trainer = create(*session, options());
  ASSERT_TRUE(trainer);
  ASSERT_TRUE(trainer->step());
  std::string path = dir / "one.safetensors";
  ASSERT_FALSE(trainer->saveCheckpoint(path));
  ASSERT_TRUE(trainer->step());
  const std::vector<float> params = flat(session->parameters());

  Error e = trainer->loadCheckpoint(dir / "none.safetensors");
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Io);
  EXPECT_EQ(trainer->lastFailure(), TrainFailure::Input);

  // A checkpoint of another run (seed 1).
  std::unique_ptr<Session> other = newSession();
  TrainerOptions seeded = options();
  seeded.seed = 1;
  std::unique_ptr<Trainer> otherTrainer = create(*other, seeded);
  ASSERT_TRUE(otherTrainer);
  std::string otherPath = dir / "other.safetensors";
  ASSERT_FALSE(otherTrainer->saveCheckpoint(otherPath));
  e = trainer->loadCheckpoint(otherPath);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(), otherPath + ": a checkpoint of another run (seed 1, "
                                     "epochs 3, lr 0.001, batch 4; this run "
                                     "has seed 0, epochs 3, lr 0.001, batch "
                                     "4)");
  EXPECT_EQ(trainer->lastFailure(), TrainFailure::Options);

  // One whose step does not match its data position.
  Expected<Checkpoint> ckpt = loadCheckpoint(path);
  ASSERT_TRUE(ckpt);
  ckpt->state.step = 2;
  std::vector<TensorRef> refs, slots;
  for (const Tensor &t : ckpt->params)
    refs.push_back({t.name, t.shape, t.data.data()});
  for (const Tensor &t : ckpt->optimizer)
    slots.push_back({t.name, t.shape, t.data.data()});
  std::string bad = dir / "bad.safetensors";
  ASSERT_FALSE(saveCheckpoint(bad, ckpt->state, refs, slots));
  e = trainer->loadCheckpoint(bad);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(), bad + ": cannot resume: step 2 does not match "
                               "epoch 0 position 4 (2 steps per epoch of "
                               "batch 4)");
  EXPECT_EQ(trainer->stepsDone(), 2);
  EXPECT_EQ(flat(session->parameters()), params);
}

// A new run may start from the session's weights, like from a file.
TEST_F(TrainerTest, StartsFromTheSessionsWeights) {
  std::vector<float> w(16, 0.02f), b = {0.5f};
  std::string weights = dir / "w.safetensors";
  ASSERT_FALSE(
      writeSafeTensors(weights, {{"w", {16}, w.data()}, {"b", {1}, b.data()}}));
  std::unique_ptr<Session> fromFile = newSession();
  TrainerOptions o = options();
  o.weights = weights;
  std::unique_ptr<Trainer> a = create(*fromFile, o);
  ASSERT_TRUE(a && a->run());

  std::unique_ptr<Session> fromSession = newSession();
  ASSERT_FALSE(fromSession->loadWeights(weights));
  o = options();
  o.useSessionWeights = true;
  std::unique_ptr<Trainer> c = create(*fromSession, o);
  ASSERT_TRUE(c && c->run());
  EXPECT_EQ(flat(fromSession->parameters()), flat(fromFile->parameters()));
  // Control: the seed's initial weights give another run.
  std::unique_ptr<Session> fromSeed = newSession();
  std::unique_ptr<Trainer> d = create(*fromSeed, options());
  ASSERT_TRUE(d && d->run());
  EXPECT_NE(flat(fromSeed->parameters()), flat(fromFile->parameters()));
}

TEST(TrainerData, SplitPaths) {
  EXPECT_EQ(splitPath("image-folder", "/d", "test"), "/d/test");
  EXPECT_EQ(splitPath("image-folder", "/d", "train"), "/d/train");
  EXPECT_EQ(splitPath("fashion-mnist", "/d", "test"), "/d");
  EXPECT_EQ(splitPath("cifar10", "/d", "train"), "/d");
}

} // namespace
