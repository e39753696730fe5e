//===- MoecRunTest.cpp - the moec-run command line ------------------------===//
//
// Runs the built moec-run on the tiny model (TestUtil.h) and checks exit
// codes, stdout and stderr.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"
#include "moec/Runtime/SafeTensors.h"

#include <gtest/gtest.h>
#include <png.h>

#include <sys/wait.h>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

using Result = CommandResult;

class MoecRun : public ::testing::Test {
protected:
  void SetUp() override {
    model = dir / "tiny.moec";
    writeBytes(model, tinyArtifact());
    weights = dir / "w.safetensors";
    ASSERT_FALSE(writeSafeTensors(
        weights, {{"head.scale", {3}, kScale}, {"head.bias", {3}, kBias}}));
  }

  /// Runs `moec-run ARGS` (ARGS is shell text).
  Result run(const std::string &args) { return runMoecRun(args, dir.path()); }

  /// An image-folder dataset of 4x4 gray PNGs in `root`/`split`: class "a"
  /// dark (sum < 0), "b" dark, "c" bright; with scale (1, 2, 3) and zero
  /// bias the model predicts a for dark and c for bright images: accuracy
  /// 4/6. `bright` images per class are bright instead (for a train split
  /// that differs).
  std::string makeDataset(const std::string &split = "test", int bright = 0) {
    std::string root = dir / "pngs";
    for (const char *cls : {"a", "b", "c"}) {
      std::string folder = root + "/" + split + "/" + cls;
      std::filesystem::create_directories(folder);
      for (int i = 0; i < 2; ++i) {
        png_image image;
        std::memset(&image, 0, sizeof(image));
        image.version = PNG_IMAGE_VERSION;
        image.width = 4;
        image.height = 4;
        image.format = PNG_FORMAT_GRAY;
        bool light = cls[0] == 'c' || i < bright;
        std::vector<uint8_t> pixels(16, light ? 200 : 20 + i);
        std::string path = folder + "/" + std::to_string(i) + ".png";
        EXPECT_TRUE(png_image_write_to_file(&image, path.c_str(), 0,
                                            pixels.data(), 0, nullptr));
      }
    }
    return root;
  }

  static constexpr float kScale[3] = {1, 2, 3};
  static constexpr float kBias[3] = {0, 0, 0};
  TempDir dir;
  std::string model, weights;
};

TEST_F(MoecRun, Usage) {
  Result r = run("");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("moec-run: error: no command given"), std::string::npos);
  EXPECT_NE(r.err.find("usage: moec-run"), std::string::npos);
  EXPECT_EQ(run("--help").rc, 0);
  EXPECT_EQ(run("frobnicate x.moec").rc, 2);
  r = run("inspect");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'inspect' needs a MODEL"), std::string::npos);
  r = run("inspect " + model + " --bogus 1");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("unknown option '--bogus' for 'inspect'"),
            std::string::npos);
  r = run("infer " + model + " --threads abc");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--threads: expected an integer in [0, 4096], got "
                       "'abc'"),
            std::string::npos);
  r = run("infer " + model + " --batch");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("option '--batch' needs a value"), std::string::npos);
  r = run("infer " + model + " --split=valid");
  EXPECT_EQ(r.rc, 2);
  r = run("init " + model);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'init' needs -o W.safetensors"), std::string::npos);
  r = run("run " + model + " --weights " + weights);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("'run' needs --input"), std::string::npos);
}

TEST_F(MoecRun, Inspect) {
  Result r = run("inspect " + model);
  ASSERT_EQ(r.rc, 0) << r.err;
  for (const char *expected :
       {"model:        tiny", "target:       cpu", "version:      1.0",
        "input   images     f32[4, 1, 4, 4]", "output  logits     f32[4, 3]",
        "head.scale", "head.bias", "param count:              6",
        "active params per image:  6", "FLOPs per image:          22",
        "arena bytes:              448",
        "kernels:                  3, section"})
    EXPECT_NE(r.out.find(expected), std::string::npos)
        << "missing '" << expected << "' in:\n"
        << r.out;
}

TEST_F(MoecRun, InitWritesSeededWeights) {
  std::string a = dir / "a.safetensors", b = dir / "b.safetensors",
              c = dir / "c.safetensors";
  ASSERT_EQ(run("init " + model + " -o " + a + " --seed 5").rc, 0);
  ASSERT_EQ(run("init " + model + " --seed=5 -o " + b).rc, 0);
  ASSERT_EQ(run("init " + model + " -o " + c).rc, 0);
  EXPECT_EQ(readBytes(a), readBytes(b));
  EXPECT_NE(readBytes(a), readBytes(c));
  Expected<SafeTensors> read = readSafeTensors(a);
  ASSERT_TRUE(read) << read.error().message();
  EXPECT_EQ(read->tensors[0].name, "head.scale");

  Result r = run("init " + model + " -o " + dir / "no/such/dir/w.safetensors");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("cannot create"), std::string::npos);
}

TEST_F(MoecRun, RunRawFiles) {
  const int64_t n = 9;
  std::vector<float> images = tinyImages(n);
  std::string input = dir / "x.f32", output = dir / "y.f32";
  writeBytes(input, images.data(), images.size() * 4);
  for (const char *threads : {"1", "2", "0"}) {
    Result r = run("run " + model + " --weights " + weights + " --input " +
                   input + " --output " + output + " --threads " + threads);
    ASSERT_EQ(r.rc, 0) << r.err;
    std::vector<uint8_t> bytes = readBytes(output);
    ASSERT_EQ(bytes.size(), size_t(n * kClasses * 4));
    std::vector<float> logits(size_t(n * kClasses));
    std::memcpy(logits.data(), bytes.data(), bytes.size());
    std::vector<float> expected = tinyReference(images, n, kScale, kBias);
    for (size_t i = 0; i < logits.size(); ++i)
      EXPECT_FLOAT_EQ(logits[i], expected[i]);
  }

  writeBytes(input, images.data(), 100);
  Result r = run("run " + model + " --weights " + weights + " --input " +
                 input + " --output " + output);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find(input + ": 100 bytes is not a positive multiple of "
                               "one image (1x4x4 f32 = 64 bytes)"),
            std::string::npos)
      << r.err;

  std::string badWeights = dir / "bad.safetensors";
  ASSERT_FALSE(writeSafeTensors(badWeights, {{"head.scale", {3}, kScale}}));
  r = run("run " + model + " --weights " + badWeights + " --input " + input +
          " --output " + output);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("moec-run: error: " + badWeights +
                       ": missing tensor 'head.bias'"),
            std::string::npos)
      << r.err;
}

TEST_F(MoecRun, InferOnAnImageFolder) {
  std::string data = makeDataset();
  Result r = run("infer " + model + " --weights " + weights + " --data " +
                 data + " --threads 2");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.6667 (4/6)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("throughput: "), std::string::npos);
  EXPECT_NE(r.out.find(" images/s (threads 2, batch 4)"), std::string::npos)
      << r.out;
  // stderr is not a terminal: one summary line, no progress bar.
  EXPECT_NE(r.err.find("moec-run: 6 images in "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos);

  r = run("infer " + model + " --weights " + weights + " --data " + data +
          " --batch 3 --limit 4");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.5000 (2/4)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("batch 3)"), std::string::npos);

  r = run("infer " + model + " --data " + data + " --seed 3");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("note: no --weights given; using random initial "
                       "weights (seed 3)"),
            std::string::npos)
      << r.err;

  r = run("infer " + model + " --weights " + weights + " --data " + data +
          " --batch 5");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--batch 5 exceeds the model's batch (4)"),
            std::string::npos);

  r = run("infer " + model + " --weights " + weights);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("the manifest names no dataset path; pass --data DIR"),
            std::string::npos)
      << r.err;

  r = run("infer " + model + " --weights " + weights + " --data " +
          dir / "missing");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("moec-run: error: " + dir / "missing" +
                       "/test: no such directory"),
            std::string::npos)
      << r.err;

  // More classes in the data than the model has.
  std::filesystem::create_directories(data + "/test/d");
  std::filesystem::copy_file(data + "/test/a/0.png", data + "/test/d/0.png");
  r = run("infer " + model + " --weights " + weights + " --data " + data);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find(data + "/test: the dataset has 4 classes, but the "
                              "model has 3"),
            std::string::npos)
      << r.err;
}

// An image-folder model reads DIR/<split> (DIR/test unless --split train),
// as train does: from the artifact's own dataset path as from --data.
TEST_F(MoecRun, InferReadsTheImageFolderSplit) {
  std::string data = makeDataset("test");
  makeDataset("train", /*bright=*/1); // a and b: one dark, one bright
  json manifest = tinyManifest();
  manifest["dataset"]["path"] = data;
  std::string own = dir / "own.moec";
  writeBytes(own, tinyArtifact(manifest));
  Result r = run("infer " + own + " --weights " + weights);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.6667 (4/6)\n"), std::string::npos) << r.out;
  r = run("infer " + own + " --weights " + weights + " --split train");
  ASSERT_EQ(r.rc, 0) << r.err;
  // The bright a and b images are predicted c, the dark b one a: 3 right.
  EXPECT_NE(r.out.find("accuracy: 0.5000 (3/6)\n"), std::string::npos) << r.out;
  r = run("infer " + model + " --weights " + weights + " --data " + data +
          " --split train");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("accuracy: 0.5000 (3/6)\n"), std::string::npos) << r.out;

  // Without DIR/test, the error names the split folder.
  std::filesystem::remove_all(data + "/test");
  r = run("infer " + own + " --weights " + weights);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("moec-run: error: " + data + "/test: no such directory"),
            std::string::npos)
      << r.err;
}

TEST_F(MoecRun, BadArtifacts) {
  std::vector<uint8_t> bytes = tinyArtifact();
  bytes.resize(bytes.size() - 10);
  std::string bad = dir / "bad.moec";
  writeBytes(bad, bytes);
  Result r = run("inspect " + bad);
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("moec-run: error: " + bad + ": truncated (header says"),
            std::string::npos)
      << r.err;
  r = run("infer " + dir / "absent.moec");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("absent.moec: cannot open: No such file or directory"),
            std::string::npos);
}

} // namespace
