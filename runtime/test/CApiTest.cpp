//===- CApiTest.cpp - the C API, end to end on the tiny model -------------===//
//
// Builds the tiny artifact (TestUtil.h) from the compiled TestKernels.c and
// runs it only through moec_runtime.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/moec_runtime.h"

#include "TestUtil.h"
#include "moec/Runtime/SafeTensors.h"
#include "moec/Runtime/Weights.h"

#include <gtest/gtest.h>

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
  json manifest = tinyManifest();
  manifest["target"] = "cuda";
  path = dir / "cuda.moec";
  writeBytes(path, tinyArtifact(manifest));
  ASSERT_EQ(moec_model_load(path.c_str(), &m), MOEC_OK);
  EXPECT_EQ(moec_session_create(m, "cpu", 1, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            path + ": the model was compiled for target 'cuda'; device 'cpu' "
                   "cannot run it");
  moec_model_release(m);

  EXPECT_EQ(moec_session_create(model, "tpu", 1, &s), MOEC_ERROR_ARGUMENT);
  EXPECT_EQ(std::string(moec_last_error()),
            "unknown device 'tpu' (this runtime has: cpu)");
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
