//===- CApiTest.cpp - the C API, end to end on the tiny model -------------===//
//
// Builds the tiny artifact (TestUtil.h) from the compiled TestKernels.c and
// runs it only through moec_runtime.h; trains the trainable one the same
// way (CApiTrain).
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/moec_runtime.h"

#include "TestUtil.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Weights.h"

#include <gtest/gtest.h>

#include <cmath>
#include <thread>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

const float kScale[3] = {1.0f, 2.0f, 3.0f};
const float kBias[3] = {0.5f, 0.0f, -1.0f};

class CApi : public ::testing::Test {
protected:
  void SetUp() override {
    modelPath = dir / "tiny.moec";
    writeBytes(modelPath, tinyArtifact());
    weightsPath = dir / "w.safetensors";
    ASSERT_FALSE(writeSafeTensors(
        weightsPath, {{"head.scale", {3}, kScale}, {"head.bias", {3}, kBias}}));
    ASSERT_EQ(moec_model_load(modelPath.c_str(), &model), MOEC_OK)
        << moec_last_error();
  }
  void TearDown() override { moec_model_release(model); }

  moec_session *session(int threads = 1) {
    moec_session *s = nullptr;
    EXPECT_EQ(moec_session_create(model, "cpu", threads, &s), MOEC_OK)
        << moec_last_error();
    return s;
  }

  /// Loads an artifact file holding `bytes`; returns the status.
  moec_status load(const std::vector<uint8_t> &bytes) {
    std::string path = dir / "other.moec";
    writeBytes(path, bytes);
    moec_model *m = reinterpret_cast<moec_model *>(1);
    moec_status status = moec_model_load(path.c_str(), &m);
    EXPECT_EQ(m, nullptr);
    return status;
  }

  TempDir dir;
  std::string modelPath, weightsPath;
  moec_model *model = nullptr;
};

TEST_F(CApi, ModelInfo) {
  EXPECT_STREQ(moec_model_name(model), "tiny");
  EXPECT_EQ(moec_model_batch(model), kBatch);
  EXPECT_EQ(moec_model_classes(model), kClasses);
  int64_t c, h, w;
  moec_model_input_shape(model, &c, &h, &w);
  EXPECT_EQ(c * h * w, kPixels);
  EXPECT_STREQ(moec_status_name(MOEC_ERROR_CHECKSUM), "checksum");
}

TEST_F(CApi, InferMatchesTheReference) {
  const int64_t n = 10; // chunks of 4, 4 and 2
  std::vector<float> images = tinyImages(n);
  std::vector<float> expected = tinyReference(images, n, kScale, kBias);
  for (int threads : {1, 2, 3, 8}) {
    moec_session *s = session(threads);
    ASSERT_NE(s, nullptr);
    ASSERT_EQ(moec_session_load_weights(s, weightsPath.c_str()), MOEC_OK)
        << moec_last_error();
    std::vector<float> logits(size_t(n * kClasses), -99.0f);
    ASSERT_EQ(moec_session_infer(s, images.data(), n, logits.data()), MOEC_OK)
        << moec_last_error();
    for (size_t i = 0; i < expected.size(); ++i)
      EXPECT_FLOAT_EQ(logits[i], expected[i])
          << "threads " << threads << ", logit " << i;
    // Zero images is a no-op.
    EXPECT_EQ(moec_session_infer(s, nullptr, 0, nullptr), MOEC_OK);
    moec_session_release(s);
  }
}

TEST_F(CApi, SessionsOutliveTheirModelAndRunInParallel) {
  moec_session *a = session(1), *b = session(2);
  moec_model_release(model);
  model = nullptr;
  ASSERT_EQ(moec_session_load_weights(a, weightsPath.c_str()), MOEC_OK);
  ASSERT_EQ(moec_session_load_weights(b, weightsPath.c_str()), MOEC_OK);
  const int64_t n = 37;
  std::vector<float> images = tinyImages(n);
  std::vector<float> expected = tinyReference(images, n, kScale, kBias);
  std::vector<float> la(expected.size()), lb(expected.size());
  moec_status sa = MOEC_ERROR_INTERNAL, sb = MOEC_ERROR_INTERNAL;
  std::thread ta(
      [&] { sa = moec_session_infer(a, images.data(), n, la.data()); });
  std::thread tb(
      [&] { sb = moec_session_infer(b, images.data(), n, lb.data()); });
  ta.join();
  tb.join();
  EXPECT_EQ(sa, MOEC_OK);
  EXPECT_EQ(sb, MOEC_OK);
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_FLOAT_EQ(la[i], expected[i]);
    EXPECT_FLOAT_EQ(lb[i], expected[i]);
  }
  moec_session_release(a);
  moec_session_release(b);
}

TEST_F(CApi, InitAndSaveWeights) {
  moec_session *s = session();
  std::vector<float> images = tinyImages(1), logits(kClasses);
  EXPECT_EQ(moec_session_infer(s, images.data(), 1, logits.data()),
            MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            modelPath + ": no weights (load or initialize them before "
                        "inference)");
  EXPECT_EQ(moec_session_save_weights(s, (dir / "none.safetensors").c_str()),
            MOEC_ERROR_ARGUMENT);

  ASSERT_EQ(moec_session_init_weights(s, 7), MOEC_OK);
  std::string saved = dir / "init.safetensors";
  ASSERT_EQ(moec_session_save_weights(s, saved.c_str()), MOEC_OK)
      << moec_last_error();
  Expected<SafeTensors> read = readSafeTensors(saved);
  ASSERT_TRUE(read) << read.error().message();
  ASSERT_EQ(read->tensors.size(), 2u);
  EXPECT_EQ(read->tensors[0].name, "head.scale"); // manifest order
  EXPECT_EQ(read->tensors[1].name, "head.bias");
  EXPECT_EQ(read->metadata.at("model"), "tiny");
  ParamSpec scale;
  scale.name = "head.scale";
  scale.shape = {3};
  scale.init = InitKind::Normal;
  scale.std = 0.5;
  std::vector<float> expected(3);
  initParameter(scale, 7, expected.data());
  EXPECT_EQ(read->tensors[0].data, expected);
  EXPECT_EQ(read->tensors[1].data, std::vector<float>(3, 0.0f));

  // Saved weights load back and give the same logits.
  std::vector<float> before(kClasses), after(kClasses);
  ASSERT_EQ(moec_session_infer(s, images.data(), 1, before.data()), MOEC_OK);
  moec_session *t = session(2);
  ASSERT_EQ(moec_session_load_weights(t, saved.c_str()), MOEC_OK);
  ASSERT_EQ(moec_session_infer(t, images.data(), 1, after.data()), MOEC_OK);
  EXPECT_EQ(before, after);
  moec_session_release(t);
  moec_session_release(s);
}

TEST_F(CApi, WeightErrors) {
  moec_session *s = session();
  auto load = [&](const std::vector<TensorRef> &tensors) {
    std::string path = dir / "bad.safetensors";
    EXPECT_FALSE(writeSafeTensors(path, tensors));
    EXPECT_EQ(moec_session_load_weights(s, path.c_str()), MOEC_ERROR_WEIGHTS);
    return std::string(moec_last_error());
  };
  const float six[6] = {};
  std::string path = dir / "bad.safetensors";
  EXPECT_EQ(load({{"head.scale", {3}, kScale}}),
            path + ": missing tensor 'head.bias'");
  EXPECT_EQ(load({{"head.scale", {3, 2}, six}, {"head.bias", {3}, kBias}}),
            path + ": tensor 'head.scale' has shape [3, 2], the model "
                   "expects [3]");
  EXPECT_EQ(load({{"head.scale", {3}, kScale},
                  {"head.bias", {3}, kBias},
                  {"foo", {1}, kBias}}),
            path + ": unexpected tensor 'foo' (the model has no such "
                   "parameter)");
  EXPECT_EQ(moec_session_load_weights(s, (dir / "nope").c_str()),
            MOEC_ERROR_IO);
  EXPECT_EQ(std::string(moec_last_error()),
            dir / "nope: cannot open: No such file or directory");
  moec_session_release(s);
}

TEST_F(CApi, ArtifactErrors) {
  std::vector<uint8_t> good = tinyArtifact();
  std::string other = dir / "other.moec";

  EXPECT_EQ(load(std::vector<uint8_t>(good.begin(), good.end() - 1000)),
            MOEC_ERROR_FORMAT);
  EXPECT_EQ(std::string(moec_last_error()),
            cat(other, ": truncated (header says ", good.size(),
                " bytes, file has ", good.size() - 1000, ")"));

  std::vector<uint8_t> corrupted = good;
  corrupted[good.size() - 100] ^= 0x80;
  EXPECT_EQ(load(corrupted), MOEC_ERROR_CHECKSUM);
  EXPECT_EQ(std::string(moec_last_error()),
            other + ": checksum mismatch (file is corrupted)");

  std::vector<uint8_t> v2 = good;
  uint32_t two = 2;
  std::memcpy(v2.data() + 8, &two, 4);
  EXPECT_EQ(load(v2), MOEC_ERROR_VERSION);
  EXPECT_EQ(std::string(moec_last_error()),
            other + ": artifact version 2.0 is not supported (this runtime "
                    "reads 1.x)");

  std::vector<uint8_t> magic = good;
  magic[3] = 'X';
  EXPECT_EQ(load(magic), MOEC_ERROR_FORMAT);
  EXPECT_EQ(std::string(moec_last_error()),
            other + ": not a moec artifact (bad magic)");

  ArtifactBuilder noKernels;
  noKernels.add("manifest", tinyManifest().dump());
  noKernels.add("plan", tinyPlan().dump());
  EXPECT_EQ(load(noKernels.build()), MOEC_ERROR_FORMAT);
  EXPECT_EQ(std::string(moec_last_error()),
            other + ": missing required section 'kernels'");

  json manifest = tinyManifest();
  manifest["params"][0]["shape"] = {3, -1};
  EXPECT_EQ(load(tinyArtifact(manifest)), MOEC_ERROR_FORMAT);
  EXPECT_EQ(std::string(moec_last_error()),
            other + ": manifest: /params/0/shape: expected an array of "
                    "positive integers");

  ArtifactBuilder badJson;
  badJson.add("manifest", "not json");
  badJson.add("plan", tinyPlan().dump());
  badJson.add("kernels", kernelLibrary());
  EXPECT_EQ(load(badJson.build()), MOEC_ERROR_FORMAT);
  EXPECT_EQ(std::string(moec_last_error())
                .rfind(other + ": manifest: invalid JSON: ", 0),
            0u);

  moec_model *absent = reinterpret_cast<moec_model *>(1);
  EXPECT_EQ(moec_model_load((dir / "absent.moec").c_str(), &absent),
            MOEC_ERROR_IO);
  EXPECT_EQ(absent, nullptr);
}

TEST_F(CApi, SessionErrors) {
  // A kernel the plan names but the library lacks.
  json plan = tinyPlan();
  plan["entries"]["infer"][1]["kernel"] = "moec_k9";
  std::string path = dir / "k9.moec";
  writeBytes(path, tinyArtifact(tinyManifest(), plan));
  moec_model *m = nullptr;
  ASSERT_EQ(moec_model_load(path.c_str(), &m), MOEC_OK) << moec_last_error();
  moec_session *s = reinterpret_cast<moec_session *>(1);
  EXPECT_EQ(moec_session_create(m, "cpu", 1, &s), MOEC_ERROR_FORMAT);
  EXPECT_EQ(s, nullptr);
  EXPECT_EQ(std::string(moec_last_error()),
            path + ": kernel 'moec_k9' named in the plan is not in the "
                   "kernels section");
  moec_model_release(m);

  // A model for another target.
  path = dir / "cuda.moec";
  writeBytes(path, cudaArtifact());
  ASSERT_EQ(moec_model_load(path.c_str(), &m), MOEC_OK);
  EXPECT_EQ(moec_session_create(m, "cpu", 1, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            path + ": compiled for target 'cuda'; run it with --device=cuda");
  // "cuda" is a device: a cpu model is refused for its target, whether or
  // not a GPU is here; the cuda model gets a session or a device error.
  EXPECT_EQ(moec_session_create(model, "cuda", 0, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_NE(std::string(moec_last_error()).find("run it with --device=cpu"),
            std::string::npos);
  moec_status status = moec_session_create(m, "cuda", 0, &s);
  if (status == MOEC_OK) {
    moec_session_release(s);
  } else {
    EXPECT_EQ(status, MOEC_ERROR_DEVICE);
    EXPECT_EQ(std::string(moec_last_error()).rfind("device 'cuda': ", 0), 0u)
        << moec_last_error();
  }
  moec_model_release(m);

  EXPECT_EQ(moec_session_create(model, "tpu", 1, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            "unknown device 'tpu' (this runtime has: cpu, cuda)");
  EXPECT_EQ(moec_session_create(model, "cpu", -2, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_session_create(nullptr, "cpu", 1, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_model_load(nullptr, &m), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_session_infer(nullptr, nullptr, 1, nullptr),
            MOEC_ERROR_ARGUMENT);

  moec_session *ok = session();
  ASSERT_EQ(moec_session_init_weights(ok, 1), MOEC_OK);
  EXPECT_EQ(moec_session_infer(ok, nullptr, -1, nullptr), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()), "infer: negative image count -1");
  EXPECT_EQ(moec_session_infer(ok, nullptr, 2, nullptr), MOEC_ERROR_ARGUMENT);
  moec_session_release(ok);
}

} // namespace

//===----------------------------------------------------------------------===//
// Training
//===----------------------------------------------------------------------===//

namespace {

/// The trainable model (TestUtil.h) and its dataset, trained through the C
/// API only.
class CApiTrain : public ::testing::Test {
protected:
  void SetUp() override {
    modelPath = dir / "train.moec";
    writeBytes(modelPath, trainArtifact());
    data = dir / "data";
    makeTrainData(data);
    ASSERT_EQ(moec_model_load(modelPath.c_str(), &model), MOEC_OK)
        << moec_last_error();
    ASSERT_EQ(moec_session_create(model, "cpu", 1, &session), MOEC_OK)
        << moec_last_error();
    moec_train_options_init(&options);
    options.data_dir = data.c_str();
  }
  void TearDown() override {
    moec_session_release(session);
    moec_model_release(model);
  }

  moec_trainer *trainer(const moec_train_options &o) {
    moec_trainer *t = nullptr;
    EXPECT_EQ(moec_trainer_create(session, &o, &t), MOEC_OK)
        << moec_last_error();
    return t;
  }

  /// The session's parameters as saved safetensors bytes.
  std::vector<uint8_t> weights(moec_session *s, const std::string &name) {
    std::string path = dir / name;
    EXPECT_EQ(moec_session_save_weights(s, path.c_str()), MOEC_OK)
        << moec_last_error();
    return readBytes(path);
  }

  TempDir dir;
  std::string modelPath, data;
  moec_model *model = nullptr;
  moec_session *session = nullptr;
  moec_train_options options;
};

TEST_F(CApiTrain, OptionDefaults) {
  moec_train_options o;
  std::memset(&o, 0x5a, sizeof(o));
  moec_train_options_init(&o);
  EXPECT_EQ(o.data_dir, nullptr);
  EXPECT_EQ(o.epochs, 0);
  EXPECT_EQ(o.lr, 0);
  EXPECT_EQ(o.has_seed, 0);
  EXPECT_EQ(o.checkpoint_dir, nullptr);
  EXPECT_EQ(o.resume_dir, nullptr);
  EXPECT_EQ(o.keep_checkpoints, 3);
  EXPECT_EQ(o.log_every, 10);
  EXPECT_EQ(o.max_steps, 0);
  EXPECT_EQ(o.eval_every_epoch, 1);
  EXPECT_EQ(o.time_budget, 0);
  moec_train_options_init(nullptr); // ignored
}

// Steps through the C API are the run moec-run train gives, bit for bit,
// with the schedule the manifest sets (3 epochs of 2 steps, warm-up 2).
TEST_F(CApiTrain, StepsMatchMoecRunTrain) {
  moec_trainer *t = trainer(options);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(moec_trainer_total_steps(t), 6);
  EXPECT_EQ(moec_trainer_steps_done(t), 0);
  std::vector<double> lrs;
  while (!moec_trainer_done(t)) {
    moec_train_step_result r;
    ASSERT_EQ(moec_trainer_step(t, &r), MOEC_OK) << moec_last_error();
    EXPECT_EQ(r.step, moec_trainer_steps_done(t));
    EXPECT_EQ(r.epoch, (r.step + 1) / 2);
    EXPECT_TRUE(std::isfinite(r.loss) && r.loss > 0);
    EXPECT_FLOAT_EQ(float(r.loss), float(r.ce_loss + r.aux_loss));
    EXPECT_GE(r.accuracy, 0);
    EXPECT_LE(r.accuracy, 1);
    lrs.push_back(r.lr);
  }
  ASSERT_EQ(lrs.size(), 6u);
  // Warm-up lr (t+1)/2, then lr (1 - 0.5 t / 6).
  for (size_t k = 0; k < lrs.size(); ++k)
    EXPECT_FLOAT_EQ(float(lrs[k]), k < 2 ? 0.001f * float(k + 1) / 2
                                         : 0.001f * (1 - 0.5f * float(k) / 6))
        << "step " << k;
  moec_train_step_result r;
  EXPECT_EQ(moec_trainer_step(t, &r), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            modelPath + ": training is done (step 6 of 6)");

  moec_eval_result eval;
  ASSERT_EQ(moec_trainer_evaluate(t, &eval), MOEC_OK) << moec_last_error();
  EXPECT_EQ(eval.images, 6);
  EXPECT_DOUBLE_EQ(eval.top1, double(eval.correct) / 6);

  std::string tool = dir / "tool.safetensors";
  CommandResult run = runMoecRun("train " + modelPath + " --data " + data +
                                     " --threads 1 -o " + tool,
                                 dir.path());
  ASSERT_EQ(run.rc, 0) << run.err;
  EXPECT_EQ(weights(session, "c.safetensors"), readBytes(tool));
  char accuracy[64];
  std::snprintf(accuracy, sizeof(accuracy), "test accuracy: %.2f%%\n",
                100 * eval.top1);
  EXPECT_NE(run.out.find(accuracy), std::string::npos) << run.out;
  moec_trainer_release(t);
}

// A checkpoint saved through the C API and loaded back continues bitwise;
// so does a new trainer resuming a directory of checkpoints.
TEST_F(CApiTrain, CheckpointRoundTripIsBitwise) {
  std::string ckpt = dir / "ckpt";
  options.checkpoint_dir = ckpt.c_str();
  options.max_steps = 4;
  moec_trainer *t = trainer(options);
  ASSERT_NE(t, nullptr);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(moec_trainer_step(t, nullptr), MOEC_OK) << moec_last_error();
  std::string mid = dir / "mid.safetensors";
  ASSERT_EQ(moec_trainer_save_checkpoint(t, mid.c_str()), MOEC_OK)
      << moec_last_error();
  moec_eval_result first, second;
  ASSERT_EQ(moec_trainer_run(t, &first), MOEC_OK) << moec_last_error();
  EXPECT_EQ(moec_trainer_steps_done(t), 4); // max_steps
  EXPECT_TRUE(moec_trainer_done(t));
  const std::vector<uint8_t> after = weights(session, "a.safetensors");
  const std::vector<uint8_t> stopCheckpoint =
      readBytes(ckpt + "/ckpt-4.safetensors");
  ASSERT_FALSE(stopCheckpoint.empty());

  ASSERT_EQ(moec_trainer_load_checkpoint(t, mid.c_str()), MOEC_OK)
      << moec_last_error();
  EXPECT_EQ(moec_trainer_steps_done(t), 3);
  EXPECT_FALSE(moec_trainer_done(t));
  EXPECT_NE(weights(session, "m.safetensors"), after);
  ASSERT_EQ(moec_trainer_run(t, &second), MOEC_OK) << moec_last_error();
  EXPECT_EQ(weights(session, "b.safetensors"), after);
  EXPECT_EQ(readBytes(ckpt + "/ckpt-4.safetensors"), stopCheckpoint);
  EXPECT_EQ(second.loss, first.loss);
  EXPECT_EQ(second.correct, first.correct);
  moec_trainer_release(t);

  // The rest in a fresh session, resumed from the directory, equals an
  // uninterrupted run.
  moec_session *fresh = nullptr, *whole = nullptr;
  ASSERT_EQ(moec_session_create(model, "cpu", 1, &fresh), MOEC_OK);
  ASSERT_EQ(moec_session_create(model, "cpu", 1, &whole), MOEC_OK);
  moec_train_options resume;
  moec_train_options_init(&resume);
  resume.data_dir = data.c_str();
  resume.resume_dir = ckpt.c_str();
  moec_trainer *resumed = nullptr, *uninterrupted = nullptr;
  ASSERT_EQ(moec_trainer_create(fresh, &resume, &resumed), MOEC_OK)
      << moec_last_error();
  EXPECT_EQ(moec_trainer_steps_done(resumed), 4);
  ASSERT_EQ(moec_trainer_run(resumed, nullptr), MOEC_OK) << moec_last_error();
  moec_train_options plain;
  moec_train_options_init(&plain);
  plain.data_dir = data.c_str();
  ASSERT_EQ(moec_trainer_create(whole, &plain, &uninterrupted), MOEC_OK);
  ASSERT_EQ(moec_trainer_run(uninterrupted, nullptr), MOEC_OK);
  EXPECT_EQ(moec_trainer_steps_done(uninterrupted), 6);
  EXPECT_EQ(weights(fresh, "r.safetensors"), weights(whole, "u.safetensors"));
  // The trainers keep their sessions alive.
  moec_session_release(fresh);
  moec_session_release(whole);
  EXPECT_EQ(moec_trainer_evaluate(resumed, &first), MOEC_OK);
  moec_trainer_release(resumed);
  moec_trainer_release(uninterrupted);
}

TEST_F(CApiTrain, Errors) {
  moec_trainer *t = reinterpret_cast<moec_trainer *>(1);
  EXPECT_EQ(moec_trainer_create(nullptr, &options, &t), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            "moec_trainer_create: null session or trainer");
  EXPECT_EQ(moec_trainer_step(nullptr, nullptr), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_run(nullptr, nullptr), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_run_epoch(nullptr), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_evaluate(nullptr, nullptr), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_save_checkpoint(nullptr, "x"), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_load_checkpoint(nullptr, "x"), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(moec_trainer_steps_done(nullptr), 0);
  EXPECT_EQ(moec_trainer_done(nullptr), 1);
  moec_trainer_release(nullptr);

  // Options that contradict each other; a data folder that is not there.
  moec_train_options o = options;
  o.resume_dir = "somewhere";
  o.weights = "w.safetensors";
  EXPECT_EQ(moec_trainer_create(session, &o, &t), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(t, nullptr);
  EXPECT_EQ(std::string(moec_last_error()),
            "--weights sets the starting weights of a new run; a run "
            "continued with --resume starts from its checkpoint");
  std::string missing = dir / "missing";
  o = options;
  o.data_dir = missing.c_str();
  EXPECT_EQ(moec_trainer_create(session, &o, &t), MOEC_ERROR_DATA);
  EXPECT_EQ(std::string(moec_last_error()), missing + ": no such directory");

  // A model without training entry points.
  moec_model *tiny = nullptr;
  moec_session *tinySession = nullptr;
  std::string tinyPath = dir / "tiny.moec";
  writeBytes(tinyPath, tinyArtifact());
  ASSERT_EQ(moec_model_load(tinyPath.c_str(), &tiny), MOEC_OK);
  ASSERT_EQ(moec_session_create(tiny, "cpu", 1, &tinySession), MOEC_OK);
  EXPECT_EQ(moec_trainer_create(tinySession, &options, &t),
            MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            tinyPath + ": the model has no 'train_step' entry point, so it "
                       "cannot be trained (compile a trainable spec; see "
                       "docs/training-abi.md)");
  moec_session_release(tinySession);
  moec_model_release(tiny);

  // A NaN gradient (label 9 in the first batch), and a missing checkpoint.
  std::string poisoned = dir / "poisoned";
  makeTrainData(poisoned, /*poisoned=*/true);
  o = options;
  o.data_dir = poisoned.c_str();
  t = trainer(o);
  ASSERT_NE(t, nullptr);
  moec_train_step_result r;
  EXPECT_EQ(moec_trainer_step(t, &r), MOEC_ERROR_DATA);
  EXPECT_EQ(std::string(moec_last_error()),
            "step 0: non-finite value nan at grad.b[0]");
  EXPECT_EQ(moec_trainer_steps_done(t), 0);
  std::string none = dir / "none.safetensors";
  EXPECT_EQ(moec_trainer_load_checkpoint(t, none.c_str()), MOEC_ERROR_IO);
  EXPECT_EQ(std::string(moec_last_error()),
            none + ": cannot open: No such file or directory");
  EXPECT_EQ(moec_trainer_evaluate(t, nullptr), MOEC_ERROR_ARGUMENT);
  moec_trainer_release(t);
}

} // namespace
