//===- SessionTest.cpp - running entry points by name ---------------------===//
//
// Session::run, input()/output(), and the state tensors on the trainable
// test model (TestUtil.h, TestKernels.c "The trainable model").
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Session.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

std::unique_ptr<Session> trainSession(int threads = 1) {
  Expected<std::shared_ptr<const Artifact>> artifact =
      Artifact::fromBytes(trainArtifact(), "train.moec");
  EXPECT_TRUE(artifact) << artifact.error().message();
  if (!artifact)
    return nullptr;
  Expected<std::unique_ptr<Session>> session =
      Session::create(*artifact, "cpu", threads);
  EXPECT_TRUE(session) << session.error().message();
  return session ? std::move(*session) : nullptr;
}

EntryTensor in(Session &s, const char *entry, const char *name) {
  Expected<EntryTensor> t = s.input(entry, name);
  EXPECT_TRUE(t) << t.error().message();
  return *t;
}

EntryTensor out(Session &s, const char *entry, const char *name) {
  Expected<EntryTensor> t = s.output(entry, name);
  EXPECT_TRUE(t) << t.error().message();
  return *t;
}

float scalar(Session &s, const char *entry, const char *name) {
  return out(s, entry, name).f32()[0];
}

TEST(Session, StateStartsZeroed) {
  std::unique_ptr<Session> s = trainSession();
  ASSERT_TRUE(s);
  std::vector<Tensor> state = s->state();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state[0].name, "optimizer.momentum.w");
  EXPECT_EQ(state[0].data, std::vector<float>(16, 0.0f));
  EXPECT_EQ(state[1].name, "optimizer.momentum.b");
  // Parameters and state share the parameter block, apart.
  s->initWeights(3);
  EXPECT_EQ(s->state()[0].data, std::vector<float>(16, 0.0f));
  EXPECT_EQ(s->parameters().size(), 2u);
}

// One train_step: the inputs written through input() reach the kernels,
// the outputs come back through output(), and the parameters and state are
// updated in place. The reference is TestKernels.c's arithmetic.
TEST(Session, RunTrainStep) {
  for (int threads : {1, 3}) {
    std::unique_ptr<Session> s = trainSession(threads);
    ASSERT_TRUE(s);
    s->initWeights(7);
    std::vector<Tensor> params = s->parameters();
    std::vector<float> w = params[0].data, b = params[1].data;

    std::vector<float> images = tinyImages(kBatch);
    const int32_t labels[kBatch] = {1, 0, 3, 2};
    const float noise[kBatch * 2] = {0.5f, -1, 0.25f, 2, -0.5f, 0, 1, 1};
    EntryTensor imagesIn = in(*s, "train_step", "images");
    ASSERT_EQ(imagesIn.bytes(), images.size() * 4);
    std::memcpy(imagesIn.data, images.data(), imagesIn.bytes());
    EntryTensor labelsIn = in(*s, "train_step", "labels");
    EXPECT_TRUE(labelsIn.isI32());
    EXPECT_EQ(labelsIn.dtype(), DType::I32);
    std::memcpy(labelsIn.i32(), labels, sizeof(labels));
    in(*s, "train_step", "step").f32()[0] = 0;
    in(*s, "train_step", "total_steps").f32()[0] = 10;
    in(*s, "train_step", "warmup_steps").f32()[0] = 2;
    in(*s, "train_step", "lr").f32()[0] = 0.01f;
    std::memcpy(in(*s, "train_step", "noise.blocks.0").data, noise,
                sizeof(noise));
    ASSERT_FALSE(s->run("train_step", kBatch));

    // Reference.
    float scores[kBatch], ce = 0, correct = 0, gb = 0, gw[16], aux = 0,
                          norm = 0;
    for (int p = 0; p < 16; ++p) {
      gw[p] = 0.002f * w[p];
      aux += 0.001f * w[p] * w[p];
    }
    for (int i = 0; i < kBatch; ++i) {
      float sc = b[0];
      for (int p = 0; p < 16; ++p)
        sc += images[size_t(i * 16 + p)] * w[size_t(p)];
      scores[i] = sc + 0.1f * (noise[i * 2] + noise[i * 2 + 1]);
      float r = scores[i] - float(labels[i]);
      ce += r * r / kBatch;
      correct += std::fabs(r) < 0.5f;
      gb += 2 * r / kBatch;
      for (int p = 0; p < 16; ++p)
        gw[p] += 2 * r * images[size_t(i * 16 + p)] / kBatch;
    }
    for (float g : gw)
      norm += g * g;
    norm = std::sqrt(norm + gb * gb);
    const float lrUsed = 0.01f * 1 / 2; // warm-up: lr (t+1) / W
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "ce_loss"), ce);
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "aux_loss"), aux);
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "loss"), ce + aux);
    EXPECT_EQ(scalar(*s, "train_step", "correct"), correct);
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "grad_norm"), norm);
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "lr_used"), lrUsed);
    EntryTensor gradW = out(*s, "train_step", "grad.w");
    EXPECT_EQ(gradW.spec->role, "gradient");
    for (int p = 0; p < 16; ++p)
      EXPECT_FLOAT_EQ(gradW.f32()[p], gw[p]);
    EXPECT_FLOAT_EQ(out(*s, "train_step", "grad.b").value(), gb);

    // In place: momentum = g (it started at 0), p -= lr_used * momentum.
    std::vector<Tensor> state = s->state();
    std::vector<Tensor> updated = s->parameters();
    for (int p = 0; p < 16; ++p) {
      EXPECT_FLOAT_EQ(state[0].data[size_t(p)], gw[p]);
      EXPECT_FLOAT_EQ(updated[0].data[size_t(p)], w[size_t(p)] - lrUsed * gw[p]);
    }
    EXPECT_FLOAT_EQ(state[1].data[0], gb);
    EXPECT_FLOAT_EQ(updated[1].data[0], b[0] - lrUsed * gb);

    // A second step after the warm-up uses the schedule and the momentum.
    in(*s, "train_step", "step").f32()[0] = 4;
    ASSERT_FALSE(s->run("train_step", kBatch));
    EXPECT_FLOAT_EQ(scalar(*s, "train_step", "lr_used"),
                    0.01f * (1.0f - 0.5f * 4 / 10));
    float g2 = out(*s, "train_step", "grad.b").value();
    EXPECT_FLOAT_EQ(s->state()[1].data[0], 0.9f * gb + g2);
  }
}

TEST(Session, RunEvalWithMask) {
  std::unique_ptr<Session> s = trainSession();
  ASSERT_TRUE(s);
  const float w[16] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  const float b[1] = {0};
  SafeTensors weights;
  weights.tensors = {Tensor("w", {16}, {w, w + 16}),
                     Tensor("b", {1}, {b, b + 1})};
  ASSERT_FALSE(s->bindWeights(weights, "w.safetensors"));
  // Score = first pixel: 2, 5, 7, 100 (padding).
  EntryTensor images = in(*s, "eval", "images");
  std::memset(images.data, 0, images.bytes());
  const float first[kBatch] = {2, 5, 7, 100};
  for (int i = 0; i < kBatch; ++i)
    images.f32()[i * 16] = first[i];
  const int32_t labels[kBatch] = {2, 4, 3, 0};
  std::memcpy(in(*s, "eval", "labels").data, labels, sizeof(labels));
  const float mask[kBatch] = {1, 1, 1, 0};
  std::memcpy(in(*s, "eval", "mask").data, mask, sizeof(mask));
  ASSERT_FALSE(s->run("eval", kBatch));
  EXPECT_EQ(scalar(*s, "eval", "loss_sum"), 0 + 1 + 16);
  EXPECT_EQ(scalar(*s, "eval", "correct"), 1);
  EntryTensor routing = out(*s, "eval", "routing.blocks.0");
  EXPECT_EQ(routing.count(), 2);
  EXPECT_EQ(routing.value(0), 1); // score < 4.5
  EXPECT_EQ(routing.value(1), 2);

  // infer still works on the same session, exactly as before.
  std::vector<float> logits(size_t(2 * kTrainClasses));
  std::vector<float> two(images.f32(), images.f32() + 32);
  ASSERT_FALSE(s->infer(two.data(), 2, logits.data()));
  EXPECT_EQ(logits[2], 0);  // image 0: score 2, class 2
  EXPECT_EQ(logits[10 + 5], 0); // image 1: score 5, class 5
  EXPECT_EQ(logits[10 + 4], -1);
}

TEST(Session, EntryErrors) {
  std::unique_ptr<Session> s = trainSession();
  ASSERT_TRUE(s);
  Error e = s->run("train_step", 4);
  EXPECT_EQ(e.code(), ErrorCode::Argument);
  EXPECT_EQ(e.message(), "train.moec: no weights (load or initialize them "
                         "before running 'train_step')");
  s->initWeights(0);
  e = s->run("backward", 4);
  EXPECT_EQ(e.message(), "train.moec: the model has no entry point "
                         "'backward' (it has: eval, infer, train_step)");
  e = s->run("eval", 5);
  EXPECT_EQ(e.message(),
            "eval: image count 5 is outside [1, 4] (the model's batch)");
  e = s->run("eval", 0);
  EXPECT_EQ(e.code(), ErrorCode::Argument);
  Expected<EntryTensor> t = s->input("eval", "noise");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message(),
            "train.moec: entry point 'eval' has no input 'noise'");
  t = s->output("train_step", "images");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message(),
            "train.moec: entry point 'train_step' has no output 'images'");
  t = s->output("nope", "x");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().message(), "train.moec: the model has no entry point "
                                 "'nope' (it has: eval, infer, train_step)");
  EXPECT_EQ(s->inputs("train_step").size(), 7u);
  EXPECT_EQ(s->outputs("eval").size(), 3u);
}

TEST(Session, BindStateAndRestoreCheckpoint) {
  std::unique_ptr<Session> s = trainSession();
  ASSERT_TRUE(s);
  TempDir dir;
  std::vector<float> mw(16), mb = {-2};
  for (size_t i = 0; i < 16; ++i)
    mw[i] = float(i) / 4;
  std::string statePath = dir / "state.safetensors";
  ASSERT_FALSE(writeSafeTensors(statePath,
                                {{"optimizer.momentum.w", {16}, mw.data()},
                                 {"optimizer.momentum.b", {1}, mb.data()}}));
  ASSERT_FALSE(s->loadState(statePath));
  EXPECT_EQ(s->state()[0].data, mw);
  EXPECT_EQ(s->state()[1].data, mb);
  s->resetState();
  EXPECT_EQ(s->state()[1].data, std::vector<float>{0});

  std::string bad = dir / "bad.safetensors";
  ASSERT_FALSE(
      writeSafeTensors(bad, {{"optimizer.momentum.w", {16}, mw.data()}}));
  Error e = s->loadState(bad);
  EXPECT_EQ(e.code(), ErrorCode::Weights);
  EXPECT_EQ(e.message(), bad + ": missing tensor 'optimizer.momentum.b'");
  ASSERT_FALSE(writeSafeTensors(bad, {{"optimizer.momentum.w", {16}, mw.data()},
                                      {"optimizer.momentum.b", {1}, mb.data()},
                                      {"w", {1}, mb.data()}}));
  e = s->loadState(bad);
  EXPECT_EQ(e.message(), bad + ": unexpected tensor 'w' (the model has no "
                               "such state tensor)");
  ASSERT_FALSE(writeSafeTensors(bad, {{"optimizer.momentum.w", {4}, mw.data()},
                                      {"optimizer.momentum.b", {1}, mb.data()}}));
  e = s->loadState(bad);
  EXPECT_EQ(e.message(), bad + ": tensor 'optimizer.momentum.w' has shape "
                               "[4], the model expects [16]");
  EXPECT_EQ(s->state()[1].data, std::vector<float>{0}); // unchanged

  // A checkpoint holds both; restoring sets both, or neither.
  std::vector<float> w(16, 0.5f), b = {3};
  std::string ckpt = dir / "ckpt.safetensors";
  TrainState state;
  state.step = 5;
  ASSERT_FALSE(saveCheckpoint(
      ckpt, state, {{"w", {16}, w.data()}, {"b", {1}, b.data()}},
      {{"optimizer.momentum.w", {16}, mw.data()},
       {"optimizer.momentum.b", {1}, mb.data()}}));
  Expected<Checkpoint> loaded = loadCheckpoint(ckpt);
  ASSERT_TRUE(loaded) << loaded.error().message();
  std::unique_ptr<Session> fresh = trainSession();
  ASSERT_FALSE(fresh->hasWeights());
  ASSERT_FALSE(fresh->restoreCheckpoint(*loaded));
  EXPECT_TRUE(fresh->hasWeights());
  EXPECT_EQ(fresh->parameters()[0].data, w);
  EXPECT_EQ(fresh->parameters()[1].data, b);
  EXPECT_EQ(fresh->state()[0].data, mw);
  EXPECT_EQ(fresh->state()[1].data, mb);

  ASSERT_FALSE(saveCheckpoint(ckpt, state,
                              {{"w", {16}, w.data()}, {"b", {1}, b.data()}},
                              {{"optimizer.momentum.w", {16}, mw.data()}}));
  loaded = loadCheckpoint(ckpt);
  ASSERT_TRUE(loaded);
  std::unique_ptr<Session> other = trainSession();
  e = other->restoreCheckpoint(*loaded);
  EXPECT_EQ(e.message(), ckpt + ": missing tensor 'optimizer.momentum.b'");
  EXPECT_FALSE(other->hasWeights());
  EXPECT_EQ(other->state()[0].data, std::vector<float>(16, 0.0f));
}

} // namespace
