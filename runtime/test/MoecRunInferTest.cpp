//===- MoecRunInferTest.cpp - moec-run infer on a user's data, export -----===//
//
// Runs the built moec-run on the tiny model (TestUtil.h): --dataset and the
// model's normalization, --predictions, checkpoints as --weights, and
// `moec-run export`.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/SafeTensors.h"

#include <gtest/gtest.h>
#include <png.h>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

using Result = CommandResult;

class MoecRunInfer : public ::testing::Test {
protected:
  void SetUp() override {
    weights = dir / "w.safetensors";
    ASSERT_FALSE(writeSafeTensors(
        weights, {{"head.scale", {3}, kScale}, {"head.bias", {3}, kBias}}));
  }

  Result run(const std::string &args) { return runMoecRun(args, dir.path()); }

  /// The tiny model (logits = scale x sum of the normalized pixels), as
  /// trained on `kind`, with `normalization` in its manifest unless null.
  std::string model(const std::string &kind, const json &normalization) {
    json manifest = tinyManifest();
    manifest["dataset"]["kind"] = kind;
    if (!normalization.is_null())
      manifest["dataset"]["normalization"] = normalization;
    std::string path = dir / (kind + std::to_string(models++) + ".moec");
    writeBytes(path, tinyArtifact(manifest));
    return path;
  }

  /// A 4x4 gray PNG of one value.
  void png(const std::string &path, uint8_t value, int size = 4) {
    std::filesystem::create_directories(
        std::filesystem::path(path).parent_path());
    png_image image;
    std::memset(&image, 0, sizeof(image));
    image.version = PNG_IMAGE_VERSION;
    image.width = png_uint_32(size);
    image.height = png_uint_32(size);
    image.format = PNG_FORMAT_GRAY;
    std::vector<uint8_t> pixels(size_t(size) * size, value);
    ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), 0, pixels.data(),
                                        0, nullptr));
  }

  /// DIR/a and DIR/b dark (20), DIR/c bright (200), two images each.
  std::string folder() {
    std::string root = dir / "pngs";
    for (const char *cls : {"a", "b", "c"})
      for (int i = 0; i < 2; ++i)
        png(root + "/" + cls + "/" + std::to_string(i) + ".png",
            cls[0] == 'c' ? 200 : 20);
    return root;
  }

  static constexpr float kScale[3] = {1, 2, 3};
  static constexpr float kBias[3] = {0, 0, 0};
  TempDir dir;
  std::string weights;
  int models = 0;
};

// A Fashion-MNIST model reads an image folder at run time, normalized as
// the manifest says it was trained.
TEST_F(MoecRunInfer, AnyModelReadsAnImageFolder) {
  std::string data = folder();
  // Fashion-MNIST's constants (no normalization field: the kind's): dark
  // images are negative (class a), bright ones positive (class c).
  std::string fmnist = model("fashion-mnist", nullptr);
  Result r = run("infer " + fmnist + " --weights " + weights + " --data " +
                 data + " --dataset image-folder");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.6667 (4/6)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("moec-run: note: image-folder images normalized as the "
                       "model was trained (mean/std 0.286/0.353)"),
            std::string::npos)
      << r.err;
  // With mean 0 every pixel is positive: all c.
  std::string zero = model("fashion-mnist", {{"mean", {0}}, {"std", {1}}});
  r = run("infer " + zero + " --weights " + weights + " --data " + data +
          " --dataset image-folder");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.3333 (2/6)\n"), std::string::npos) << r.out;
  // An image-folder model's own data uses its normalization too.
  std::string own = model("image-folder", {{"mean", {0}}, {"std", {1}}});
  r = run("infer " + own + " --weights " + weights + " --data " + data);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.3333 (2/6)\n"), std::string::npos) << r.out;
  r = run("inspect " + own);
  EXPECT_NE(r.out.find("\nnormalized:   mean (0), std (1)\n"),
            std::string::npos)
      << r.out;

  // Bad kinds, missing folders, other geometry.
  r = run("infer " + fmnist + " --weights " + weights + " --data " + data +
          " --dataset mnist");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--dataset: expected fashion-mnist, cifar10 or "
                       "image-folder, got 'mnist'"),
            std::string::npos)
      << r.err;
  r = run("infer " + fmnist + " --weights " + weights + " --dataset cifar10");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--dataset cifar10 needs --data DIR"), std::string::npos)
      << r.err;
  std::string cifar = dir / "cifar";
  std::filesystem::create_directories(cifar);
  writeBytes(cifar + "/test_batch.bin", std::vector<uint8_t>(3073, 1));
  r = run("infer " + fmnist + " --weights " + weights + " --data " + cifar +
          " --dataset cifar10");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find(cifar + ": cifar10 images are 3x32x32, but the model "
                               "expects 1x4x4"),
            std::string::npos)
      << r.err;
  png(dir / "big/0.png", 20, 8);
  r = run("infer " + fmnist + " --weights " + weights + " --data " +
          dir / "big" + " --dataset image-folder");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("big/0.png: image is 8x8, the model expects 4x4"),
            std::string::npos)
      << r.err;
}

TEST_F(MoecRunInfer, WritesPredictions) {
  std::string data = folder();
  std::string own = model("image-folder", nullptr);
  std::string csv = dir / "out.csv";
  Result r = run("infer " + own + " --weights " + weights + " --data " + data +
                 " --predictions " + csv);
  ASSERT_EQ(r.rc, 0) << r.err;
  std::vector<uint8_t> bytes = readBytes(csv);
  std::string text(bytes.begin(), bytes.end());
  EXPECT_EQ(text.rfind("index,image,predicted,class,probability,logit,label\n"
                       "0," +
                           data + "/a/0.png,0,a,",
                       0),
            0u)
      << text;
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 7);
  EXPECT_NE(text.find("\n5," + data + "/c/1.png,2,c,"), std::string::npos);
  EXPECT_EQ(text.substr(text.size() - 3), ",2\n"); // the label of c/1.png

  // Unlabeled images directly in a folder: no accuracy, no labels.
  std::string flat = dir / "flat";
  png(flat + "/dark.png", 20);
  png(flat + "/light.png", 200);
  std::string out = dir / "out.json";
  r = run("infer " + own + " --weights " + weights + " --data " + flat +
          " --predictions " + out);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: n/a (the images have no labels)\n"),
            std::string::npos)
      << r.out;
  bytes = readBytes(out);
  json j = json::parse(std::string(bytes.begin(), bytes.end()));
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["image"], flat + "/dark.png");
  EXPECT_EQ(j[0]["predicted"], 0);
  EXPECT_EQ(j[1]["predicted"], 2);
  EXPECT_TRUE(j[1]["label"].is_null());
  EXPECT_GT(j[1]["probability"].get<double>(), 0.5);
  EXPECT_LE(j[1]["probability"].get<double>(), 1.0);

  // A bad extension is a usage error before anything runs.
  r = run("infer " + own + " --weights " + weights + " --data " + flat +
          " --predictions " + dir / "out.txt");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("expected a .csv or .json file"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir / "out.txt"));
}

// A checkpoint (file or directory) is accepted as --weights, and `export`
// writes its parameters as a weights file.
TEST_F(MoecRunInfer, CheckpointsAsWeightsAndExport) {
  std::string data = folder();
  std::string own = model("image-folder", nullptr);
  const float momentum[3] = {9, 9, 9};
  TrainState state;
  state.step = 12;
  state.metadata["model"] = "tiny";
  CheckpointDir ckpt(dir / "ckpt");
  ASSERT_TRUE(
      ckpt.save(state, {{"head.scale", {3}, kScale}, {"head.bias", {3}, kBias}},
                {{"optimizer.m.head.scale", {3}, momentum},
                 {"optimizer.m.head.bias", {3}, momentum}}));
  std::string file = ckpt.pathForStep(12);
  for (const std::string &w : {file, ckpt.dir()}) {
    Result r = run("infer " + own + " --weights " + w + " --data " + data);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("accuracy: 0.6667 (4/6)\n"), std::string::npos);
    EXPECT_NE(r.err.find("moec-run: note: " + file +
                         " is a training checkpoint (step 12); using its "
                         "model parameters, not its optimizer state"),
              std::string::npos)
        << r.err;
  }

  std::string exported = dir / "exported.safetensors";
  Result r = run("export " + ckpt.dir() + " -o " + exported);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("wrote the 2 model parameters of " + file),
            std::string::npos)
      << r.err;
  Expected<SafeTensors> out = readSafeTensors(exported);
  ASSERT_TRUE(out) << out.error().message();
  ASSERT_EQ(out->tensors.size(), 2u);
  EXPECT_EQ(out->tensors[0].name, "head.scale");
  EXPECT_EQ(out->tensors[0].data, (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(out->tensors[1].name, "head.bias");
  EXPECT_EQ(out->metadata.at("model"), "tiny");
  r = run("infer " + own + " --weights " + exported + " --data " + data);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("checkpoint"), std::string::npos) << r.err;

  r = run("export " + weights + " -o " + dir / "x.safetensors");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find(weights + ": not a moec checkpoint"), std::string::npos)
      << r.err;
  r = run("export " + file);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'export' needs -o W.safetensors"), std::string::npos);
  r = run("export -o " + exported);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'export' needs a CHECKPOINT"), std::string::npos);
  r = run("--help");
  EXPECT_NE(r.out.find("export CHECKPOINT -o W.safetensors"),
            std::string::npos);
}

} // namespace
