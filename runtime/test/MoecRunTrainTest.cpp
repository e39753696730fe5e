//===- MoecRunTrainTest.cpp - moec-run call and train ---------------------===//
//
// Runs the built moec-run on the trainable test model (TestUtil.h,
// TestKernels.c "The trainable model") with tiny Fashion-MNIST-format IDX
// files: `call` against an in-process Session, and the train loop's
// output, checkpoints, metrics, bitwise resume, non-finite stops and flag
// errors.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"
#include "moec/Runtime/Batches.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Data.h"
#include "moec/Runtime/Metrics.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Session.h"

#include <gtest/gtest.h>
#include <png.h>

#include <regex>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

class MoecRunTrain : public ::testing::Test {
protected:
  void SetUp() override {
    model = dir / "train.moec";
    writeBytes(model, trainArtifact());
    data = dir / "data";
    fs::create_directories(data);
    // 10 train images (2 steps of 4 per epoch, 2 dropped), 6 test images
    // (a padded last eval batch). No label 9: that one poisons b's
    // gradient.
    makeIdxSplit(data, "train", 10, {0, 1, 2, 3, 4, 5, 6, 7, 8});
    makeIdxSplit(data, "t10k", 6, {2, 4, 6, 1, 3, 5});
    weights = dir / "w.safetensors";
    std::vector<float> w(16), b = {0.5f};
    for (size_t i = 0; i < 16; ++i)
      w[i] = 0.05f * float(int(i % 5) - 2);
    ASSERT_FALSE(writeSafeTensors(weights, {{"w", {16}, w.data()},
                                            {"b", {1}, b.data()}}));
  }

  CommandResult run(const std::string &args) {
    return runMoecRun(args, dir.path());
  }

  std::string train(const std::string &args) {
    return "train " + model + " --data " + data + " --threads 1 " + args;
  }

  std::string text(const std::string &path) {
    std::vector<uint8_t> bytes = readBytes(path);
    return std::string(bytes.begin(), bytes.end());
  }

  TempDir dir;
  std::string model, data, weights;
};

//===----------------------------------------------------------------------===//
// call
//===----------------------------------------------------------------------===//

TEST_F(MoecRunTrain, CallTrainStepMatchesTheSession) {
  std::vector<float> images = tinyImages(kBatch);
  std::vector<int32_t> labels = {1, 0, 3, 2};
  std::vector<float> noise = {0.5f, -1, 0.25f, 2, -0.5f, 0, 1, 1};
  float step = 3, total = 10, warmup = 2, lr = 0.01f;
  std::string inputs = dir / "in.safetensors";
  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 1, 4, 4}, images.data()},
               TensorRef("labels", {kBatch}, labels.data()),
               {"step", {}, &step},
               {"total_steps", {}, &total},
               {"warmup_steps", {}, &warmup},
               {"lr", {}, &lr},
               {"noise.blocks.0", {kBatch, 1, 2}, noise.data()}}));
  std::vector<float> mw(16, 0.25f), mb = {-1};
  std::string state = dir / "state.safetensors";
  ASSERT_FALSE(writeSafeTensors(state,
                                {{"optimizer.momentum.w", {16}, mw.data()},
                                 {"optimizer.momentum.b", {1}, mb.data()}}));
  std::string output = dir / "out.safetensors";
  CommandResult r = run("call " + model + " --entry train_step --weights " +
                        weights + " --inputs " + inputs + " -o " + output +
                        " --state " + state + " --threads 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  Expected<SafeTensors> got = readSafeTensors(output);
  ASSERT_TRUE(got) << got.error().message();

  // The same step in-process.
  Expected<std::shared_ptr<const Artifact>> artifact = Artifact::load(model);
  ASSERT_TRUE(artifact);
  Expected<std::unique_ptr<Session>> session =
      Session::create(*artifact, "cpu", 2);
  ASSERT_TRUE(session);
  Session &s = **session;
  ASSERT_FALSE(s.loadWeights(weights));
  ASSERT_FALSE(s.loadState(state));
  std::memcpy((*s.input("train_step", "images")).data, images.data(), 256);
  std::memcpy((*s.input("train_step", "labels")).data, labels.data(), 16);
  (*s.input("train_step", "step")).f32()[0] = step;
  (*s.input("train_step", "total_steps")).f32()[0] = total;
  (*s.input("train_step", "warmup_steps")).f32()[0] = warmup;
  (*s.input("train_step", "lr")).f32()[0] = lr;
  std::memcpy((*s.input("train_step", "noise.blocks.0")).data, noise.data(),
              32);
  ASSERT_FALSE(s.run("train_step", kBatch));

  std::vector<std::string> names;
  for (const Tensor &t : got->tensors)
    names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "loss", "ce_loss", "aux_loss", "correct", "grad_norm",
                       "lr_used", "grad.w", "grad.b", "updated.w", "updated.b",
                       "optimizer.momentum.w", "optimizer.momentum.b"}));
  for (const EntryTensor &out : s.outputs("train_step")) {
    const Tensor *t = got->find(out.spec->name);
    ASSERT_TRUE(t) << out.spec->name;
    EXPECT_EQ(t->shape, out.spec->shape);
    EXPECT_EQ(std::memcmp(t->data.data(), out.data, out.bytes()), 0)
        << out.spec->name;
  }
  // lr_used after the warm-up: lr (1 - 0.5 t / T).
  EXPECT_FLOAT_EQ(got->find("lr_used")->data[0], 0.01f * (1 - 0.5f * 3 / 10));
  for (const Tensor &p : s.parameters())
    EXPECT_EQ(got->find("updated." + p.name)->data, p.data) << p.name;
  for (const Tensor &t : s.state())
    EXPECT_EQ(got->find(t.name)->data, t.data) << t.name;
  // The state came from --state: momentum = 0.9 * -1 + grad.b.
  EXPECT_FLOAT_EQ(got->find("optimizer.momentum.b")->data[0],
                  0.9f * -1 + got->find("grad.b")->data[0]);
  EXPECT_EQ(got->metadata.at("entry"), "train_step");
}

TEST_F(MoecRunTrain, CallEvalAndInfer) {
  std::vector<float> images = tinyImages(kBatch);
  std::vector<int32_t> labels = {1, 0, 3, 2};
  std::vector<float> mask = {1, 1, 0, 0};
  std::string inputs = dir / "in.safetensors", output = dir / "out.safetensors";
  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 1, 4, 4}, images.data()},
               TensorRef("labels", {kBatch}, labels.data()),
               {"mask", {kBatch}, mask.data()}}));
  CommandResult r = run("call " + model + " --entry eval --weights " +
                        weights + " --inputs " + inputs + " -o " + output);
  ASSERT_EQ(r.rc, 0) << r.err;
  Expected<SafeTensors> got = readSafeTensors(output);
  ASSERT_TRUE(got) << got.error().message();
  ASSERT_EQ(got->tensors.size(), 3u); // no updated.* for eval
  const Tensor *routing = got->find("routing.blocks.0");
  ASSERT_TRUE(routing);
  EXPECT_EQ(routing->data[0] + routing->data[1], 2); // two masked-in images

  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 1, 4, 4}, images.data()}}));
  r = run("call " + model + " --entry infer --weights " + weights +
          " --inputs " + inputs + " -o " + output);
  ASSERT_EQ(r.rc, 0) << r.err;
  got = readSafeTensors(output);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->find("logits")->shape,
            (std::vector<int64_t>{kBatch, kTrainClasses}));
}

TEST_F(MoecRunTrain, CallErrors) {
  std::vector<float> images = tinyImages(kBatch);
  std::vector<float> labelsF = {1, 0, 3, 2};
  std::vector<int32_t> labels = {1, 0, 3, 2};
  std::vector<float> mask = {1, 1, 0, 0};
  std::string inputs = dir / "in.safetensors", output = dir / "out.safetensors";
  auto call = [&](const std::string &entry) {
    return run("call " + model + " --entry " + entry + " --weights " +
               weights + " --inputs " + inputs + " -o " + output);
  };
  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 1, 4, 4}, images.data()},
               TensorRef("labels", {kBatch}, labels.data())}));
  CommandResult r = call("eval");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, "moec-run: error: " + inputs +
                                  ": missing input 'mask' of entry point "
                                  "'eval' (F32 [4])"))
      << r.err;
  EXPECT_FALSE(fs::exists(output));

  ASSERT_FALSE(writeSafeTensors(inputs,
                                {{"images", {kBatch, 1, 4, 4}, images.data()},
                                 {"labels", {kBatch}, labelsF.data()},
                                 {"mask", {kBatch}, mask.data()}}));
  r = call("eval");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, inputs + ": input 'labels' has dtype F32, "
                                       "entry point 'eval' expects I32"))
      << r.err;

  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 16}, images.data()},
               TensorRef("labels", {kBatch}, labels.data()),
               {"mask", {kBatch}, mask.data()}}));
  r = call("eval");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, inputs + ": input 'images' has shape [4, 16], "
                                       "entry point 'eval' expects [4, 1, 4, "
                                       "4]"))
      << r.err;

  ASSERT_FALSE(writeSafeTensors(
      inputs, {{"images", {kBatch, 1, 4, 4}, images.data()},
               TensorRef("labels", {kBatch}, labels.data()),
               {"mask", {kBatch}, mask.data()},
               {"lr", {1}, mask.data()}}));
  r = call("eval");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, inputs + ": unexpected tensor 'lr' (entry point "
                                       "'eval' has no such input)"))
      << r.err;

  r = call("backward");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, model + ": the model has no entry point "
                                      "'backward' (it has: eval, infer, "
                                      "train_step)"))
      << r.err;

  r = run("call " + model + " --entry eval --weights " + weights + " -o " +
          output);
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, "'call' needs --inputs")) << r.err;
  r = run("call " + model + " --entry eval --weights " + weights +
          " --inputs " + dir / "none.safetensors" + " -o " + output);
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, "none.safetensors: cannot open")) << r.err;
  r = run("call " + model + " --entry eval --weights " + weights +
          " --inputs " + inputs + " -o " + output + " --state " + weights);
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, weights + ": missing tensor "
                                        "'optimizer.momentum.w'"))
      << r.err;
}

//===----------------------------------------------------------------------===//
// train
//===----------------------------------------------------------------------===//

TEST_F(MoecRunTrain, TrainsEvaluatesAndCheckpoints) {
  std::string ckpt = dir / "ckpt", final = dir / "final.safetensors";
  CommandResult r = run(train("--epochs 2 --checkpoint-dir " + ckpt +
                              " --log-every 1 -o " + final));
  ASSERT_EQ(r.rc, 0) << r.err;
  // stdout: an eval per epoch with the routing counts, then the accuracy.
  std::regex evalLine(R"(epoch 1/2: test loss [0-9.]+, test top-1 [0-9.]+% )"
                      R"(\([0-9]+/6\)\n  routing\.blocks\.0: [0-9]+ [0-9]+\n)"
                      R"(epoch 2/2: test loss )");
  EXPECT_TRUE(std::regex_search(r.out, evalLine)) << r.out;
  std::smatch accuracy;
  ASSERT_TRUE(std::regex_search(
      r.out, accuracy, std::regex(R"(\ntest accuracy: ([0-9]+\.[0-9]{2})%\n$)")))
      << r.out;
  // stderr is not a terminal: one progress line per epoch, no '\r'.
  EXPECT_TRUE(std::regex_search(
      r.err, std::regex(R"(^epoch 1/2 \[#+\] 8/8 loss [0-9.]+ [0-9]+ img/s )"
                        R"(ETA [0-9:-]+\nepoch 2/2 \[#+\] 8/8 loss )")))
      << r.err;
  EXPECT_FALSE(contains(r.err, "\r"));

  // The checkpoints: one per epoch, latest names the last.
  EXPECT_EQ(text(ckpt + "/latest"), "ckpt-4.safetensors\n");
  EXPECT_TRUE(fs::exists(ckpt + "/ckpt-2.safetensors"));
  Expected<Checkpoint> last = loadLatestCheckpoint(ckpt);
  ASSERT_TRUE(last) << last.error().message();
  EXPECT_EQ(last->state.step, 4);
  EXPECT_EQ(last->state.epoch, 2);
  EXPECT_EQ(last->state.positionInEpoch, 0);
  EXPECT_EQ(last->state.rngState.size(), 12u);
  EXPECT_EQ(last->state.rngState[0], kBatchStateTag);
  EXPECT_EQ(last->state.rngState[5], kNormalSamplerTag);
  EXPECT_EQ(last->state.metadata.at("model"), "tinytrain");
  EXPECT_EQ(last->state.metadata.at("optimizer"), "sgd");
  EXPECT_EQ(last->state.metadata.at("epochs"), "2");
  EXPECT_EQ(last->state.metadata.at("lr"), "0.001");
  EXPECT_EQ(last->state.metadata.at("seed"), "0");
  EXPECT_EQ(last->optimizerSlots(), std::vector<std::string>{"momentum"});
  // Training moved the momentum off zero; -o holds the checkpoint's weights.
  EXPECT_NE(last->findOptimizer("momentum", "w")->data,
            std::vector<float>(16, 0.0f));
  Expected<SafeTensors> finalWeights = readSafeTensors(final);
  ASSERT_TRUE(finalWeights);
  EXPECT_EQ(finalWeights->find("w")->data, last->findParam("w")->data);
  EXPECT_EQ(finalWeights->find("b")->data, last->findParam("b")->data);

  // Metrics: a train record per step (--log-every 1) and an eval record per
  // epoch, and the plot.
  Expected<std::vector<MetricRecord>> records =
      readMetricsLog(ckpt + "/metrics.jsonl");
  ASSERT_TRUE(records) << records.error().message();
  std::vector<std::string> kinds;
  for (const MetricRecord &m : *records)
    kinds.push_back(cat(m.split, m.step));
  EXPECT_EQ(kinds, (std::vector<std::string>{"train1", "train2", "eval2",
                                             "train3", "train4", "eval4"}));
  EXPECT_TRUE((*records)[0].lr.has_value());
  EXPECT_TRUE((*records)[0].extra.count("grad_norm"));
  // warm-up W = round(1 epoch x 2 steps): step 0 runs at lr / 2.
  EXPECT_FLOAT_EQ(float(*(*records)[0].lr), 0.0005f);
  EXPECT_FLOAT_EQ(float(*(*records)[1].lr), 0.001f);
  EXPECT_FLOAT_EQ(float(*(*records)[3].lr), 0.001f * (1 - 0.5f * 2 / 4));
  EXPECT_TRUE(contains(text(ckpt + "/metrics.svg"), "<svg"));

  // The accuracy is that of the final weights (moec-run infer agrees).
  CommandResult inferred = run("infer " + model + " --weights " + final +
                               " --data " + data);
  ASSERT_EQ(inferred.rc, 0) << inferred.err;
  std::smatch counted;
  ASSERT_TRUE(std::regex_search(inferred.out, counted,
                                std::regex(R"(\(([0-9]+)/6\))")));
  char expected[16];
  std::snprintf(expected, sizeof(expected), "%.2f",
                100.0 * std::stoi(counted[1]) / 6);
  EXPECT_EQ(accuracy[1].str(), expected);

  // A second fresh run into the same directory is refused.
  r = run(train("--epochs 2 --checkpoint-dir " + ckpt));
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, ckpt + " already holds a training run "
                                     "(latest: " +
                                     ckpt + "/ckpt-4.safetensors); continue "
                                            "it with --resume " +
                                     ckpt))
      << r.err;
}

// N steps in one run, and k steps plus a resume for the rest, give bitwise
// identical weights, optimizer state and checkpoints: mid-epoch and at an
// epoch boundary, across several resumes, with augmentation and noise on.
TEST_F(MoecRunTrain, ResumeIsBitwiseIdentical) {
  std::string full = dir / "full", a = dir / "full.safetensors";
  CommandResult r =
      run(train("--epochs 3 --checkpoint-dir " + full + " -o " + a));
  ASSERT_EQ(r.rc, 0) << r.err;
  const std::vector<uint8_t> reference = readBytes(a);
  const std::vector<uint8_t> referenceCkpt =
      readBytes(full + "/ckpt-6.safetensors");
  ASSERT_FALSE(reference.empty());

  struct Plan {
    const char *name;
    std::vector<int> stops; // --max-steps of the interrupted runs
  };
  for (const Plan &plan : {Plan{"mid", {3}}, Plan{"boundary", {2}},
                           Plan{"chain", {1, 4, 5}}}) {
    SCOPED_TRACE(plan.name);
    std::string ckpt = dir / plan.name, out = dir / "out.safetensors";
    r = run(train("--epochs 3 --checkpoint-dir " + ckpt + " --max-steps " +
                  std::to_string(plan.stops[0])));
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_TRUE(contains(r.err, "moec-run: stopped after step " +
                                    std::to_string(plan.stops[0]) +
                                    " (--max-steps); continue with --resume " +
                                    ckpt))
        << r.err;
    EXPECT_TRUE(contains(r.out, "test accuracy: ")) << r.out;
    EXPECT_EQ(text(ckpt + "/latest"),
              "ckpt-" + std::to_string(plan.stops[0]) + ".safetensors\n");
    for (size_t i = 1; i < plan.stops.size(); ++i) {
      r = run("train " + model + " --data " + data + " --threads 1 --resume " +
              ckpt + " --max-steps " + std::to_string(plan.stops[i]));
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_TRUE(contains(r.err, "resuming " + ckpt + "/ckpt-" +
                                      std::to_string(plan.stops[i - 1]) +
                                      ".safetensors at step " +
                                      std::to_string(plan.stops[i - 1]) +
                                      "/6"))
          << r.err;
    }
    r = run("train " + model + " --data " + data + " --threads 1 --resume " +
            ckpt + " -o " + out);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(readBytes(out), reference);
    EXPECT_EQ(readBytes(ckpt + "/ckpt-6.safetensors"), referenceCkpt);
  }

  // Control: a different seed (order, augmentation, noise, init) differs,
  // so the equality above is not vacuous.
  std::string other = dir / "other.safetensors";
  r = run(train("--epochs 3 --seed 1 -o " + other));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(readBytes(other), reference);
  // And so does starting from the same weights but another noise stream:
  // --weights with the seed-0 initial weights and --seed 1.
  std::string init0 = dir / "init0.safetensors";
  ASSERT_EQ(run("init " + model + " -o " + init0).rc, 0);
  std::string same = dir / "same.safetensors";
  r = run(train("--epochs 3 --weights " + init0 + " -o " + same));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(readBytes(same), reference); // --weights = the seed-0 init
}

TEST_F(MoecRunTrain, ResumeKeepsTheMetricsLogConsistent) {
  std::string ckpt = dir / "ckpt";
  ASSERT_EQ(run(train("--epochs 2 --checkpoint-dir " + ckpt +
                      " --log-every 1 --max-steps 3"))
                .rc,
            0);
  // Records logged after the checkpoint (none here, but a crash could leave
  // some) are dropped on resume.
  {
    Expected<MetricsLog> log = MetricsLog::open(ckpt + "/metrics.jsonl");
    ASSERT_TRUE(log);
    MetricRecord stale;
    stale.step = 99;
    ASSERT_FALSE(log->append(stale));
  }
  CommandResult r =
      run("train " + model + " --data " + data + " --threads 1 --resume " +
          ckpt + " --log-every 1");
  ASSERT_EQ(r.rc, 0) << r.err;
  Expected<std::vector<MetricRecord>> records =
      readMetricsLog(ckpt + "/metrics.jsonl");
  ASSERT_TRUE(records) << records.error().message();
  std::vector<std::string> kinds;
  for (const MetricRecord &m : *records)
    kinds.push_back(cat(m.split, m.step));
  // eval3: the final evaluation of the run stopped by --max-steps.
  EXPECT_EQ(kinds,
            (std::vector<std::string>{"train1", "train2", "eval2", "train3",
                                      "eval3", "train4", "eval4"}));
}

/// The train iterator moec-run train builds for the test model (seed 0,
/// the manifest's augmentation, dropping the short last batch).
BatchIterator trainIterator(const Dataset &train) {
  BatchOptions options;
  options.dropLast = true;
  options.augment.cropPadding = 1;
  options.augment.horizontalFlip = true;
  options.normalization = normalizationFor("fashion-mnist");
  Expected<BatchIterator> it = BatchIterator::create(train, options);
  EXPECT_TRUE(it) << it.error().message();
  return std::move(*it);
}

/// The 0-based index of the first train step whose batch holds label 9.
int64_t firstPoisonedStep(const std::string &dataDir, int64_t epochs) {
  Expected<Dataset> train = loadFashionMnist(dataDir, "train");
  EXPECT_TRUE(train) << train.error().message();
  BatchIterator it = trainIterator(*train);
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < epochs; ++epoch) {
    it.startEpoch(0, epoch);
    int32_t labels[kBatch];
    while (it.next(kBatch, nullptr, labels) > 0) {
      for (int32_t y : labels)
        if (y == 9)
          return step;
      ++step;
    }
  }
  return -1;
}

TEST_F(MoecRunTrain, NonFiniteGradientStopsAndKeepsTheLastCheckpoint) {
  std::string ckpt = dir / "ckpt";
  ASSERT_EQ(run(train("--epochs 3 --checkpoint-dir " + ckpt +
                      " --max-steps 2"))
                .rc,
            0);
  const std::vector<uint8_t> saved = readBytes(ckpt + "/ckpt-2.safetensors");
  ASSERT_FALSE(saved.empty());

  // The same images, but the one epoch 0 dropped is now labeled 9:
  // train_step's gradient for b turns NaN at the first later batch holding
  // it.
  Expected<Dataset> clean = loadFashionMnist(data, "train");
  ASSERT_TRUE(clean);
  BatchIterator it = trainIterator(*clean);
  it.startEpoch(0, 0);
  std::vector<uint8_t> labels(clean->labels.begin(), clean->labels.end());
  labels[size_t(it.order()[9])] = 9;
  makeIdxSplit(data, "train", 10, labels);
  int64_t bad = firstPoisonedStep(data, 3);
  ASSERT_GE(bad, 2);
  CommandResult r =
      run("train " + model + " --data " + data + " --threads 1 --resume " +
          ckpt);
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "moec-run: error: step " + std::to_string(bad) +
                                  ": non-finite value nan at grad.b[0] "
                                  "(train_step); training stopped, the last "
                                  "checkpoint, " +
                                  ckpt + "/ckpt-2.safetensors, is untouched\n"))
      << "first bad step " << bad << "\n"
      << r.err;
  EXPECT_FALSE(contains(r.out, "test accuracy"));
  EXPECT_EQ(text(ckpt + "/latest"), "ckpt-2.safetensors\n");
  EXPECT_EQ(readBytes(ckpt + "/ckpt-2.safetensors"), saved);
  Expected<std::vector<int64_t>> steps = CheckpointDir(ckpt).steps();
  ASSERT_TRUE(steps);
  EXPECT_EQ(*steps, std::vector<int64_t>{2});
}

TEST_F(MoecRunTrain, NonFiniteLossNamesTheStep) {
  std::string ckpt = dir / "ckpt";
  // lr 1e30: step 0 throws the weights to ~1e30, step 1's loss overflows.
  CommandResult r =
      run(train("--epochs 2 --lr 1e30 --checkpoint-dir " + ckpt));
  EXPECT_EQ(r.rc, 1);
  EXPECT_TRUE(contains(r.err, "moec-run: error: step 1: non-finite value inf "
                              "at loss[0] (train_step); training stopped, no "
                              "checkpoint was written\n"))
      << r.err;
  EXPECT_FALSE(fs::exists(ckpt + "/latest"));
}

TEST_F(MoecRunTrain, BadFlagsAndInputs) {
  auto expectError = [&](const std::string &args, const std::string &message,
                         int rc = 2) {
    CommandResult r = run(args);
    EXPECT_EQ(r.rc, rc) << args << "\n" << r.err;
    EXPECT_TRUE(contains(r.err, message)) << args << "\n" << r.err;
  };
  expectError(train("--batch 8"),
              "moec-run: error: --batch 8: " + model +
                  " was compiled for batch 4; the batch is fixed at compile "
                  "time, recompile with `moec compile --batch 8` to train "
                  "with batch 8");
  expectError(train("--epochs 0"),
              "--epochs: expected an integer in [1, 1073741824], got '0'");
  expectError(train("--lr abc"), "--lr: expected a positive number, got 'abc'");
  expectError(train("--lr -1"), "--lr: expected a positive number, got '-1'");
  expectError(train("--lr nan"), "--lr: expected a positive number, got 'nan'");
  expectError(train("--max-steps 0"),
              "--max-steps: expected an integer in [1, ");
  expectError(train("--eval-every-epoch maybe"),
              "--eval-every-epoch: expected on or off, got 'maybe'");
  expectError(train("--frobnicate 1"),
              "unknown option '--frobnicate' for 'train'");
  expectError(train("--resume " + dir / "r" + " --weights " + weights),
              "--weights sets the starting weights of a new run");
  expectError(train("--resume " + dir / "nothing"),
              dir / "nothing" + ": no checkpoint (no 'latest' file)");
  expectError("train " + model + " --threads 1",
              model + ": the manifest names no dataset path; pass --data DIR");
  expectError(train("") + " --data " + dir / "missing",
              "option '--data' given twice");
  expectError("train " + model + " --data " + dir / "missing",
              dir / "missing" + ": no such directory");

  // A model without training entry points.
  std::string tiny = dir / "tiny.moec";
  writeBytes(tiny, tinyArtifact());
  expectError("train " + tiny + " --data " + data,
              tiny + ": the model has no 'train_step' entry point, so it "
                     "cannot be trained");

  // Fewer train images than one batch.
  std::string small = dir / "small";
  fs::create_directories(small);
  makeIdxSplit(small, "train", 3, {1, 2, 3});
  makeIdxSplit(small, "t10k", 3, {1, 2, 3});
  expectError("train " + model + " --data " + small,
              small + ": the train split has 3 images, fewer than one batch "
                      "(4)");

  // A resumed run keeps its settings.
  std::string ckpt = dir / "ckpt";
  ASSERT_EQ(run(train("--epochs 2 --checkpoint-dir " + ckpt +
                      " --max-steps 1"))
                .rc,
            0);
  expectError(train("--resume " + ckpt + " --epochs 3"),
              "--epochs 3 differs from the run being resumed (2); a resumed "
              "run keeps the settings it started with");
  expectError(train("--resume " + ckpt + " --lr 0.5"),
              "--lr 0.5 differs from the run being resumed (0.001)");
  // Another train split size cannot continue the data order.
  expectError("train " + model + " --data " + small + " --resume " + ckpt,
              small + ": the train split has 3 images");
  std::string bigger = dir / "bigger";
  fs::create_directories(bigger);
  makeIdxSplit(bigger, "train", 12, {1, 2, 3});
  makeIdxSplit(bigger, "t10k", 3, {1, 2, 3});
  expectError("train " + model + " --data " + bigger + " --resume " + ckpt,
              ckpt + "/ckpt-1.safetensors: cannot resume: batch iterator "
                     "state is for another dataset size or other "
                     "shuffle/augmentation options (the train split has 12 "
                     "images now)");
}

// --time-budget times the model, puts the weights back and trains the
// epochs that fit: the run is the one `--epochs N` gives, bit for bit.
TEST_F(MoecRunTrain, TimeBudgetChoosesTheEpochs) {
  std::string a = dir / "budget.safetensors", ckpt = dir / "budget";
  CommandResult r = run(train("--time-budget 3 --max-steps 7 -o " + a +
                              " --checkpoint-dir " + ckpt));
  ASSERT_EQ(r.rc, 0) << r.err;
  std::smatch fit;
  ASSERT_TRUE(std::regex_search(
      r.err, fit,
      std::regex(R"(moec-run: --time-budget 3 s: [0-9.]+ ms per step, )"
                 R"([0-9.]+ s per evaluation, [0-9.]+ s per epoch; )"
                 R"(([0-9]+) epochs fit \([0-9]+ s spent before training, )"
                 R"(4% of the budget kept free\))")))
      << r.err;
  const std::string epochs = fit[1].str();
  Expected<Checkpoint> saved = loadLatestCheckpoint(ckpt);
  ASSERT_TRUE(bool(saved)) << saved.error().message();
  EXPECT_EQ(saved->state.metadata.at("epochs"), epochs);

  std::string b = dir / "epochs.safetensors";
  r = run(train("--epochs " + epochs + " --max-steps 7 -o " + b));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(readBytes(a), readBytes(b));
  // Control: another epoch count (another cosine schedule) differs.
  std::string c = dir / "other.safetensors";
  r = run(train(std::string("--epochs ") + (epochs == "3" ? "4" : "3") +
                " --max-steps 7 -o " + c));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(readBytes(a), readBytes(c));

  // A budget that no epoch fits, and flags that contradict it.
  r = run(train("--time-budget 0.001"));
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_TRUE(std::regex_search(
      r.err, std::regex(R"(moec-run: error: --time-budget 0.001: not even )"
                        R"(one epoch fits \([0-9.]+ ms per step, 2 steps )"
                        R"(and [0-9.]+ s of evaluation per epoch)")))
      << r.err;
  for (auto [args, message] : std::vector<std::pair<std::string, std::string>>{
           {"--time-budget 20x", "--time-budget: expected a duration "
                                 "(seconds, or a number with the suffix s, m "
                                 "or h), got '20x'"},
           {"--time-budget -5", "--time-budget: expected a duration"},
           {"--time-budget 1m --epochs 2",
            "--time-budget chooses the number of epochs; give either "
            "--time-budget or --epochs"},
           {"--time-budget 1h --resume " + ckpt,
            "--time-budget chooses the number of epochs of a new run; a run "
            "continued with --resume keeps the epochs it started with"}}) {
    r = run(train(args));
    EXPECT_EQ(r.rc, 2) << args;
    EXPECT_TRUE(contains(r.err, "moec-run: error: " + message)) << args << "\n"
                                                                << r.err;
  }
}

TEST_F(MoecRunTrain, EvalOnlyAtTheEnd) {
  CommandResult r = run(train("--epochs 2 --eval-every-epoch off"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(contains(r.out, "epoch 1/2:")) << r.out;
  EXPECT_TRUE(std::regex_search(
      r.out, std::regex(R"(^step 4: test loss [0-9.]+, test top-1 [0-9.]+% )"
                        R"(\([0-9]/6\)\n  routing.blocks.0: [0-9]+ [0-9]+\n)"
                        R"(test accuracy: [0-9.]+%\n$)")))
      << r.out;
}

TEST_F(MoecRunTrain, InspectShowsTheTrainingFields) {
  CommandResult r = run("inspect " + model);
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char *expected :
       {"version:      1.1", "input   labels     i32[4]\n",
        "input   noise.blocks.0 f32[4, 1, 2] (normal_noise)",
        "output  grad.w     f32[16] (gradient)",
        "output  routing.blocks.0 f32[2] (routing_counts)",
        "optimizer:    sgd, lr 0.001, weight decay 0, betas (0, 0), eps 0, "
        "momentum 0.9, grad clip 0",
        "train:        batch 4, 3 epochs, warm-up 1 epochs, schedule cosine, "
        "label smoothing 0, seed 0, crop padding 1, flip on",
        "state: 2 tensors, 17 values (optimizer.momentum.w, ...)"})
    EXPECT_TRUE(contains(r.out, expected)) << "missing '" << expected
                                           << "' in:\n"
                                           << r.out;
}

// An image-folder model trains from DIR/train and evaluates on DIR/test.
TEST_F(MoecRunTrain, TrainsOnAnImageFolder) {
  json manifest = trainManifest();
  manifest["dataset"] = {{"kind", "image-folder"}, {"path", ""}};
  std::string folderModel = dir / "folder.moec";
  writeBytes(folderModel, trainArtifact(manifest));
  std::string root = dir / "pngs";
  for (const char *split : {"train", "test"})
    for (int cls = 0; cls < 3; ++cls) {
      std::string folder = root + "/" + split + "/" + char('a' + cls);
      fs::create_directories(folder);
      for (int i = 0; i < 3; ++i) {
        png_image image;
        std::memset(&image, 0, sizeof(image));
        image.version = PNG_IMAGE_VERSION;
        image.width = 4;
        image.height = 4;
        image.format = PNG_FORMAT_GRAY;
        std::vector<uint8_t> pixels(16, uint8_t(40 + 80 * cls + i));
        std::string path = folder + "/" + std::to_string(i) + ".png";
        ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), 0,
                                            pixels.data(), 0, nullptr));
      }
    }
  CommandResult r = run("train " + folderModel + " --data " + root +
                        " --epochs 1 --threads 1");
  ASSERT_EQ(r.rc, 0) << r.err;
  // 9 train images: 2 steps; 9 test images: 3 eval batches, the last
  // padded.
  EXPECT_TRUE(contains(r.err, "epoch 1/1 [####################] 8/8 loss "))
      << r.err;
  std::smatch routing;
  ASSERT_TRUE(std::regex_search(
      r.out, routing,
      std::regex(R"(epoch 1/1: test loss [0-9.]+, test top-1 )"
                 R"([0-9.]+% \([0-9]/9\)\n  routing.blocks.0: )"
                 R"(([0-9]+) ([0-9]+)\n)")))
      << r.out;
  // The padding of the last batch is masked out of the counts.
  EXPECT_EQ(std::stoi(routing[1]) + std::stoi(routing[2]), 9) << r.out;

  fs::remove_all(root + "/test");
  r = run("train " + folderModel + " --data " + root + " --epochs 1");
  EXPECT_EQ(r.rc, 2);
  EXPECT_TRUE(contains(r.err, root + "/test: no such directory")) << r.err;
}

} // namespace
