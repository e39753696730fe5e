//===- InferenceTest.cpp - data, normalization and reports for users ------===//
//
// The manifest's normalization (artifact 1.2) and modelNormalization,
// loadInferenceData (unlabeled folders, class names, geometry), the
// predictions file, weights read from checkpoints, the training ETA and the
// dropped-token share of evaluations.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/Metrics.h"
#include "moec/Runtime/Predictions.h"
#include "moec/Runtime/Trainer.h"

#include <gtest/gtest.h>
#include <png.h>

#include <cmath>
#include <sstream>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

/// A `size`x`size` gray PNG of one value at `path`.
void writeGrayPng(const std::string &path, int size, uint8_t value) {
  std::filesystem::create_directories(
      std::filesystem::path(path).parent_path());
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(size);
  image.height = png_uint_32(size);
  image.format = PNG_FORMAT_GRAY;
  std::vector<uint8_t> pixels(size_t(size) * size, value);
  ASSERT_TRUE(png_image_write_to_file(&image, path.c_str(), 0, pixels.data(), 0,
                                      nullptr));
}

Manifest parse(const json &manifest) {
  Expected<Manifest> m = parseManifest(manifest.dump(), "m");
  EXPECT_TRUE(m) << m.error().message();
  return m ? *m : Manifest();
}

std::string parseError(const json &manifest) {
  Expected<Manifest> m = parseManifest(manifest.dump(), "m");
  return m ? std::string("(parsed)") : m.error().message();
}

TEST(Inference, ManifestNormalizationIsOptional) {
  json manifest = tinyManifest();
  manifest["dataset"]["kind"] = "fashion-mnist";
  Manifest old = parse(manifest);
  EXPECT_TRUE(old.normalizationMean.empty());
  // Without the field: the dataset kind's constants, bit for bit.
  Normalization n = modelNormalization(old);
  Normalization f = normalizationFor("fashion-mnist");
  EXPECT_EQ(std::memcmp(&n, &f, sizeof(n)), 0);

  // The compiler writes the loader's constants as decimals; they read back
  // as the same floats.
  manifest["dataset"]["normalization"] = {{"mean", {0.286}}, {"std", {0.353}}};
  Manifest with = parse(manifest);
  ASSERT_EQ(with.normalizationMean, std::vector<double>{0.286});
  n = modelNormalization(with);
  EXPECT_EQ(std::memcmp(&n, &f, sizeof(n)), 0);
  for (const char *kind : {"fashion-mnist", "cifar10", "image-folder"}) {
    moec::artifact::DatasetNormalization d =
        moec::artifact::datasetNormalization(kind);
    Normalization loader = normalizationFor(kind);
    for (int c = 0; c < 3; ++c) {
      EXPECT_EQ(float(json::parse(json(d.mean[c]).dump()).get<double>()),
                loader.mean[c]);
      EXPECT_EQ(float(json::parse(json(d.std[c]).dump()).get<double>()),
                loader.std[c]);
    }
  }

  // Another normalization wins over the kind's.
  manifest["dataset"]["normalization"] = {{"mean", {0.25}}, {"std", {0.5}}};
  n = modelNormalization(parse(manifest));
  EXPECT_EQ(n.mean[0], 0.25f);
  EXPECT_EQ(n.std[2], 0.5f);
}

TEST(Inference, ManifestNormalizationErrors) {
  json manifest = tinyManifest();
  manifest["dataset"]["normalization"] = {{"mean", {0.5, 0.5}}, {"std", {0.5}}};
  EXPECT_EQ(parseError(manifest), "m: /dataset/normalization/mean: has 2 "
                                  "values, but the model has 1 channels");
  manifest["dataset"]["normalization"] = {{"mean", {0.5}}, {"std", {0}}};
  EXPECT_EQ(parseError(manifest),
            "m: /dataset/normalization/std/0: expected a positive number");
  manifest["dataset"]["normalization"] = {{"mean", {"x"}}, {"std", {1}}};
  EXPECT_EQ(parseError(manifest),
            "m: /dataset/normalization/mean/0: expected a finite number");
  manifest["dataset"]["normalization"] = {{"mean", {0.5}}};
  EXPECT_NE(parseError(manifest).find("/dataset/normalization"),
            std::string::npos);
}

TEST(Inference, ImageFoldersForAnyModel) {
  TempDir dir;
  json manifest = tinyManifest();
  manifest["dataset"]["kind"] = "fashion-mnist";
  manifest["dataset"]["normalization"] = {{"mean", {0.0}}, {"std", {1.0}}};
  Manifest m = parse(manifest);

  // Unlabeled PNGs directly in the folder, normalized as the model was.
  std::string flat = dir / "flat";
  writeGrayPng(flat + "/x.png", 4, 51);
  writeGrayPng(flat + "/y.PNG", 4, 255);
  InferenceSource source;
  source.kind = "image-folder";
  source.dir = flat;
  std::string from;
  Expected<Dataset> data = loadInferenceData(m, source, &from);
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(from, flat);
  EXPECT_EQ(data->n, 2);
  EXPECT_FALSE(data->labeled());
  EXPECT_EQ(data->labels, (std::vector<int32_t>{-1, -1}));
  EXPECT_EQ(data->files,
            (std::vector<std::string>{flat + "/x.png", flat + "/y.PNG"}));
  EXPECT_FLOAT_EQ(data->images[0], 0.2f); // (51 / 255 - 0) / 1
  EXPECT_FLOAT_EQ(data->images[16], 1.0f);

  // Class folders named after the model's classes follow its labels (a
  // model of Fashion-MNIST's 10 classes).
  manifest["classes"] = 10;
  manifest["entries"]["infer"]["outputs"][0]["shape"] = {kBatch, 10};
  manifest["arena_bytes"] = 1024;
  m = parse(manifest);
  std::string named = dir / "named";
  writeGrayPng(named + "/sneaker/0.png", 4, 10);
  writeGrayPng(named + "/t-shirt top/0.png", 4, 10);
  source.dir = named;
  data = loadInferenceData(m, source);
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->labels, (std::vector<int32_t>{7, 0}));
  EXPECT_EQ(data->classNames.size(), 10u);
  // Other names: folder indices.
  writeGrayPng(named + "/zebra/0.png", 4, 10);
  data = loadInferenceData(m, source);
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->labels, (std::vector<int32_t>{0, 1, 2}));

  // A folder with split folders is read at DIR/<split>.
  std::string split = dir / "split";
  writeGrayPng(split + "/test/a/0.png", 4, 10);
  source.dir = split;
  data = loadInferenceData(m, source, &from);
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(from, split + "/test");

  // Geometry: a clear error naming the file.
  std::string big = dir / "big";
  writeGrayPng(big + "/0.png", 5, 10);
  source.dir = big;
  data = loadInferenceData(m, source);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            big + "/0.png: image is 5x5, the model expects 4x4 (moec-run "
                  "does not resize; resize the images to 4x4)");
  // An empty folder.
  std::filesystem::create_directories(dir / "empty");
  source.dir = dir / "empty";
  data = loadInferenceData(m, source);
  ASSERT_FALSE(data);
  EXPECT_NE(data.error().message().find("no class folders and no .png images"),
            std::string::npos);
  // Training still needs class folders.
  Expected<Dataset> train = loadImageFolder(flat, 1, 4, 4);
  ASSERT_FALSE(train);
  EXPECT_NE(train.error().message().find("no class folders"),
            std::string::npos);
}

TEST(Inference, Predictions) {
  const float logits[3] = {1.0f, 3.0f, 3.0f};
  Prediction p = predictRow(logits, 3);
  EXPECT_EQ(p.predicted, 1); // the first of a tie
  EXPECT_FLOAT_EQ(float(p.logit), 3.0f);
  double sum = std::exp(-2.0) + 2;
  EXPECT_NEAR(p.probability, 1 / sum, 1e-12);

  std::vector<Prediction> rows(2, p);
  rows[0].image = "dir/a,b.png";
  rows[0].label = 1;
  rows[1].index = 1;
  EXPECT_EQ(formatPredictionsCsv(rows, {"x", "y", "z"}),
            "index,image,predicted,class,probability,logit,label\n"
            "0,\"dir/a,b.png\",1,y,0.468311,3,1\n"
            "1,,1,y,0.468311,3,\n");
  json j = json::parse(formatPredictionsJson(rows, {}));
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["image"], "dir/a,b.png");
  EXPECT_EQ(j[0]["label"], 1);
  EXPECT_TRUE(j[0]["class"].is_null());
  EXPECT_TRUE(j[1]["image"].is_null());
  EXPECT_TRUE(j[1]["label"].is_null());
  EXPECT_EQ(j[1]["index"], 1);
  EXPECT_NEAR(j[1]["probability"].get<double>(), 1 / sum, 1e-12);

  EXPECT_TRUE(predictionsFormat("a.CSV"));
  EXPECT_TRUE(predictionsFormat("a.json"));
  Expected<PredictionsFormat> bad = predictionsFormat("a.txt");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(),
            "--predictions a.txt: expected a .csv or .json file");
}

TEST(Inference, CheckpointsAreWeights) {
  TempDir dir;
  const float w[2] = {1, 2}, m[2] = {3, 4};
  TrainState state;
  state.step = 7;
  state.metadata["model"] = "tiny";
  std::string file = dir / "c.safetensors";
  ASSERT_FALSE(saveCheckpoint(file, state, {{"w", {2}, w}},
                              {{"optimizer.m.w", {2}, m}}));
  std::string note, source;
  Expected<SafeTensors> read = readWeights(file, &note, &source);
  ASSERT_TRUE(read) << read.error().message();
  ASSERT_EQ(read->tensors.size(), 1u);
  EXPECT_EQ(read->tensors[0].name, "w");
  EXPECT_EQ(read->tensors[0].data, (std::vector<float>{1, 2}));
  EXPECT_EQ(read->metadata,
            (std::map<std::string, std::string>{{"model", "tiny"}}));
  EXPECT_EQ(note, file + " is a training checkpoint (step 7); using its "
                         "model parameters, not its optimizer state");
  EXPECT_EQ(source, file);

  // A checkpoint directory: what `latest` names.
  CheckpointDir ckpts(dir / "ckpt");
  ASSERT_TRUE(ckpts.save(state, {{"w", {2}, w}}, {{"optimizer.m.w", {2}, m}}));
  read = readWeights(dir / "ckpt", &note, &source);
  ASSERT_TRUE(read) << read.error().message();
  EXPECT_EQ(source, ckpts.pathForStep(7));
  EXPECT_EQ(read->tensors.size(), 1u);
  // A directory without `latest`.
  read = readWeights(dir.path(), &note);
  ASSERT_FALSE(read);
  EXPECT_NE(read.error().message().find("a directory without a 'latest'"),
            std::string::npos);
  // A plain weights file is read as it is, without a note.
  std::string plain = dir / "w.safetensors";
  ASSERT_FALSE(writeSafeTensors(plain, {{"w", {2}, w}}));
  read = readWeights(plain, &note, &source);
  ASSERT_TRUE(read);
  EXPECT_TRUE(note.empty());
  EXPECT_EQ(source, plain);
}

TEST(Inference, EtaRespectsMaxSteps) {
  EXPECT_DOUBLE_EQ(trainEtaSeconds(0.5, 10, 100), 45.0);
  EXPECT_DOUBLE_EQ(trainEtaSeconds(0.5, 10, 100, 30), 10.0);
  EXPECT_DOUBLE_EQ(trainEtaSeconds(0.5, 10, 100, 300), 45.0);
  EXPECT_DOUBLE_EQ(trainEtaSeconds(0.5, 30, 100, 30), 0.0);
}

TEST(Inference, DroppedShare) {
  Manifest m;
  m.height = m.width = 28;
  m.spec = R"({"model": {"patch_size": 4}, "moe": {"top_k": 2,
               "router": {"kind": "token-choice"}}})";
  RoutingInfo info = routingInfo(m);
  EXPECT_EQ(info.router, "token-choice");
  EXPECT_EQ(info.topK, 2);
  EXPECT_EQ(info.tokensPerImage, 50); // 7 x 7 patches + the class token
  // 10 images: 1000 token-choices, 900 found a slot.
  EXPECT_DOUBLE_EQ(*droppedShare(info, {400, 300, 200}, 10), 0.1);

  m.spec = R"({"extends": "vit-tiny", "model": {"pooling": "mean"},
               "moe": {"router": {"kind": "sinkhorn"}}})";
  info = routingInfo(m);
  EXPECT_EQ(info.topK, 1);
  EXPECT_EQ(info.tokensPerImage, 0); // 28 is no multiple of the preset's 16
  EXPECT_FALSE(droppedShare(info, {1, 2}, 10));
  m.height = m.width = 32;
  info = routingInfo(m);
  EXPECT_EQ(info.tokensPerImage, 4);
  EXPECT_DOUBLE_EQ(*droppedShare(info, {10, 30}, 10), 0.0);

  // Routers without token-choices, and dense models, have no share.
  for (const char *kind : {"expert-choice", "soft"}) {
    info.router = kind;
    EXPECT_FALSE(droppedShare(info, {10, 30}, 10)) << kind;
  }
  m.spec = R"({"name": "dense"})";
  EXPECT_EQ(routingInfo(m).router, "");
  EXPECT_EQ(droppedShareKey("routing.blocks.3.moe"),
            "dropped_share.blocks.3.moe");
}

// A --max-steps run's final evaluation is logged and plotted like an
// epoch's, with the dropped-token share of each MoE layer.
TEST(Inference, MaxStepsRunLogsItsEvaluation) {
  TempDir dir;
  json manifest = trainManifest();
  manifest["spec"] = {{"model", {{"patch_size", 4}}},
                      {"moe", {{"router", {{"kind", "token-choice"}}}}}};
  std::string model = dir / "train.moec";
  writeBytes(model, trainArtifact(manifest));
  std::string data = dir / "data";
  makeTrainData(data);
  Expected<std::shared_ptr<const Artifact>> artifact = Artifact::load(model);
  ASSERT_TRUE(artifact) << artifact.error().message();
  Expected<std::unique_ptr<Session>> session =
      Session::create(*artifact, "cpu", 1);
  ASSERT_TRUE(session);
  TrainerOptions options;
  options.dataDir = data;
  options.epochs = 3;
  options.maxSteps = 3;
  options.evalEveryEpoch = false;
  options.logPath = dir / "m.jsonl";
  options.plotPath = dir / "m.svg";
  std::ostringstream results;
  TrainerOutput output;
  output.results = &results;
  Expected<std::unique_ptr<Trainer>> trainer =
      Trainer::create(**session, options, output);
  ASSERT_TRUE(trainer) << trainer.error().message();
  Expected<EvalResult> result = (*trainer)->run();
  ASSERT_TRUE(result) << result.error().message();
  ASSERT_EQ(result->dropped.size(), 1u);
  ASSERT_TRUE(result->dropped[0]);
  double placed = 0;
  for (double c : result->routing[0].second)
    placed += c;
  // 6 test images x 2 tokens (one patch and the class token) x top-1.
  EXPECT_DOUBLE_EQ(*result->dropped[0],
                   std::clamp(1 - placed / 12.0, 0.0, 1.0));
  EXPECT_NE(results.str().find("(dropped "), std::string::npos)
      << results.str();

  Expected<std::vector<MetricRecord>> log = readMetricsLog(dir / "m.jsonl");
  ASSERT_TRUE(log) << log.error().message();
  ASSERT_FALSE(log->empty());
  const MetricRecord &last = log->back();
  EXPECT_EQ(last.split, "eval");
  EXPECT_EQ(last.step, 3);
  EXPECT_EQ(last.epoch, 2);
  EXPECT_EQ(last.top1, result->top1());
  ASSERT_TRUE(last.extra.count("dropped_share.blocks.0"));
  EXPECT_DOUBLE_EQ(last.extra.at("dropped_share.blocks.0"),
                   *result->dropped[0]);
  std::vector<uint8_t> svg = readBytes(dir / "m.svg");
  EXPECT_EQ(std::string(svg.begin(), svg.end()).find("no data"),
            std::string::npos);
}

// A new run starts from a checkpoint's parameters given as --weights.
TEST(Inference, TrainingStartsFromACheckpoint) {
  TempDir dir;
  std::string model = dir / "train.moec";
  writeBytes(model, trainArtifact());
  std::string data = dir / "data";
  makeTrainData(data);
  Expected<std::shared_ptr<const Artifact>> artifact = Artifact::load(model);
  ASSERT_TRUE(artifact) << artifact.error().message();
  auto newSession = [&]() {
    Expected<std::unique_ptr<Session>> s = Session::create(*artifact, "cpu", 1);
    EXPECT_TRUE(s);
    return std::move(*s);
  };
  std::unique_ptr<Session> first = newSession();
  TrainerOptions options;
  options.dataDir = data;
  options.epochs = 1;
  options.checkpointDir = dir / "ckpt";
  Expected<std::unique_ptr<Trainer>> trainer = Trainer::create(*first, options);
  ASSERT_TRUE(trainer) << trainer.error().message();
  ASSERT_TRUE((*trainer)->run());
  std::vector<Tensor> trained = first->parameters();

  std::unique_ptr<Session> second = newSession();
  TrainerOptions from;
  from.dataDir = data;
  from.epochs = 1;
  from.weights = dir / "ckpt";
  std::ostringstream messages;
  TrainerOutput output;
  output.messages = &messages;
  output.prefix = "test: ";
  Expected<std::unique_ptr<Trainer>> next =
      Trainer::create(*second, from, output);
  ASSERT_TRUE(next) << next.error().message();
  std::vector<Tensor> start = second->parameters();
  ASSERT_EQ(start.size(), trained.size());
  for (size_t i = 0; i < start.size(); ++i)
    EXPECT_EQ(start[i].data, trained[i].data) << start[i].name;
  EXPECT_NE(messages.str().find("test: note: " + dir / "ckpt" +
                                "/ckpt-2.safetensors is a training "
                                "checkpoint (step 2)"),
            std::string::npos)
      << messages.str();
}

} // namespace
