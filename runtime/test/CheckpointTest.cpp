//===- CheckpointTest.cpp - training checkpoints --------------------------===//

#include "moec/Runtime/Checkpoint.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace moec::rt;
using namespace moec::rt::test;
namespace fs = std::filesystem;

namespace {

/// A model's parameters and Adam-style m and v, all filled from `base`.
struct FakeModel {
  std::vector<float> weight, bias, mWeight, mBias, vWeight, vBias;

  explicit FakeModel(float base) {
    for (int i = 0; i < 6; ++i) {
      weight.push_back(base + float(i) * 0.25f);
      mWeight.push_back(base * 2 + float(i));
      vWeight.push_back(base * 3 + float(i) * 1e-3f);
    }
    for (int i = 0; i < 3; ++i) {
      bias.push_back(-base - float(i));
      mBias.push_back(base + 100 + float(i));
      vBias.push_back(base + 200 + float(i));
    }
  }
  std::vector<TensorRef> params() const {
    return {{"head.weight", {2, 3}, weight.data()},
            {"head.bias", {3}, bias.data()}};
  }
  std::vector<TensorRef> optimizer() const {
    return {{optimizerTensorName("m", "head.weight"), {2, 3}, mWeight.data()},
            {optimizerTensorName("m", "head.bias"), {3}, mBias.data()},
            {optimizerTensorName("v", "head.weight"), {2, 3}, vWeight.data()},
            {optimizerTensorName("v", "head.bias"), {3}, vBias.data()}};
  }
};

std::vector<ParamSpec> specs() {
  ParamSpec w, b;
  w.name = "head.weight";
  w.shape = {2, 3};
  b.name = "head.bias";
  b.shape = {3};
  return {w, b};
}

TrainState sampleState(int64_t step) {
  TrainState state;
  state.step = step;
  state.epoch = 3;
  state.positionInEpoch = 640;
  state.rngState = {1, 0xdeadbeefcafef00dULL,
                    std::numeric_limits<uint64_t>::max(), 0};
  state.metadata = {{"model", "tiny"}, {"optimizer", "adamw"}};
  return state;
}

std::vector<std::string> listDir(const std::string &dir) {
  std::vector<std::string> names;
  for (const auto &entry : fs::directory_iterator(dir))
    names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void expectModel(const Checkpoint &ckpt, const FakeModel &model) {
  std::vector<float> out(6);
  ASSERT_FALSE(ckpt.copyParam("head.weight", {2, 3}, out.data()));
  EXPECT_EQ(out, model.weight);
  out.resize(3);
  ASSERT_FALSE(ckpt.copyParam("head.bias", {3}, out.data()));
  EXPECT_EQ(out, model.bias);
  ASSERT_FALSE(ckpt.copyOptimizer("v", "head.bias", {3}, out.data()));
  EXPECT_EQ(out, model.vBias);
  out.resize(6);
  ASSERT_FALSE(ckpt.copyOptimizer("m", "head.weight", {2, 3}, out.data()));
  EXPECT_EQ(out, model.mWeight);
}

} // namespace

TEST(Checkpoint, RngStateHex) {
  std::vector<uint64_t> words = {0, 1, 0xfedcba9876543210ULL};
  std::string text = formatRngState(words);
  EXPECT_EQ(text, "0000000000000000,0000000000000001,fedcba9876543210");
  Expected<std::vector<uint64_t>> back = parseRngState(text);
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, words);
  EXPECT_EQ(formatRngState({}), "");
  EXPECT_TRUE(parseRngState("") && parseRngState("")->empty());
  EXPECT_FALSE(parseRngState("123"));
  EXPECT_FALSE(parseRngState("000000000000000g"));
  EXPECT_FALSE(parseRngState("0000000000000000,"));
}

TEST(Checkpoint, RoundTrip) {
  TempDir dir;
  FakeModel model(1.5f);
  std::string path = dir / "ckpt.safetensors";
  TrainState state = sampleState(1234);
  ASSERT_FALSE(saveCheckpoint(path, state, model.params(), model.optimizer()));

  // The file is plain safetensors with the documented names and metadata.
  Expected<SafeTensors> raw = readSafeTensors(path);
  ASSERT_TRUE(raw) << raw.error().message();
  EXPECT_EQ(raw->tensors.size(), 6u);
  EXPECT_NE(raw->find("optimizer.m.head.weight"), nullptr);
  EXPECT_NE(raw->find("optimizer.v.head.bias"), nullptr);
  EXPECT_EQ(raw->metadata.at("format"), "moec-checkpoint/1");
  EXPECT_EQ(raw->metadata.at("step"), "1234");
  EXPECT_EQ(raw->metadata.at("epoch"), "3");
  EXPECT_EQ(raw->metadata.at("position"), "640");
  EXPECT_EQ(raw->metadata.at("rng_state"),
            "0000000000000001,deadbeefcafef00d,ffffffffffffffff,"
            "0000000000000000");
  EXPECT_EQ(raw->metadata.at("model"), "tiny");
  EXPECT_EQ(raw->metadata.at("data_checksum").size(), 16u);

  Expected<Checkpoint> ckpt = loadCheckpoint(path);
  ASSERT_TRUE(ckpt) << ckpt.error().message();
  EXPECT_EQ(ckpt->path, path);
  EXPECT_EQ(ckpt->state.step, 1234);
  EXPECT_EQ(ckpt->state.epoch, 3);
  EXPECT_EQ(ckpt->state.positionInEpoch, 640);
  EXPECT_EQ(ckpt->state.rngState, state.rngState);
  EXPECT_EQ(ckpt->state.metadata, state.metadata);
  EXPECT_EQ(ckpt->params.size(), 2u);
  EXPECT_EQ(ckpt->optimizer.size(), 4u);
  EXPECT_EQ(ckpt->optimizerSlots(), (std::vector<std::string>{"m", "v"}));
  expectModel(*ckpt, model);
  EXPECT_FALSE(ckpt->check(specs(), {"m", "v"}));
}

TEST(Checkpoint, CheckNamesTheProblem) {
  TempDir dir;
  FakeModel model(0);
  std::string path = dir / "c.safetensors";
  ASSERT_FALSE(
      saveCheckpoint(path, sampleState(1), model.params(), model.optimizer()));
  Expected<Checkpoint> ckpt = loadCheckpoint(path);
  ASSERT_TRUE(ckpt);

  std::vector<ParamSpec> more = specs();
  more.push_back(more[0]);
  more.back().name = "head.extra";
  Error e = ckpt->check(more, {"m", "v"});
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Weights);
  EXPECT_EQ(e.message(), path + ": missing tensor 'head.extra'");

  std::vector<ParamSpec> reshaped = specs();
  reshaped[1].shape = {4};
  e = ckpt->check(reshaped, {"m"});
  EXPECT_EQ(e.message(),
            path + ": tensor 'head.bias' has shape [3], expected [4]");

  e = ckpt->check(specs(), {"m", "v", "s"});
  EXPECT_EQ(e.message(), path + ": missing tensor 'optimizer.s.head.weight'");

  e = ckpt->check(specs(), {"m"});
  ASSERT_TRUE(e);
  EXPECT_TRUE(contains(e.message(), "unexpected tensor 'optimizer.v."))
      << e.message();

  std::vector<ParamSpec> fewer = specs();
  fewer.pop_back();
  e = ckpt->check(fewer, {});
  ASSERT_TRUE(e);
  EXPECT_TRUE(contains(e.message(), "unexpected tensor 'head.bias'"))
      << e.message();

  std::vector<float> out(6);
  e = ckpt->copyParam("head.weight", {3, 2}, out.data());
  EXPECT_EQ(e.message(),
            path + ": tensor 'head.weight' has shape [2, 3], expected [3, 2]");
  EXPECT_EQ(ckpt->findOptimizer("m", "nothing"), nullptr);
}

TEST(Checkpoint, SaveRejectsBadInput) {
  TempDir dir;
  FakeModel model(0);
  std::string path = dir / "c.safetensors";
  auto message = [&](const TrainState &state,
                     const std::vector<TensorRef> &params,
                     const std::vector<TensorRef> &optimizer) {
    Error e = saveCheckpoint(path, state, params, optimizer);
    EXPECT_TRUE(e);
    EXPECT_EQ(e.code(), ErrorCode::Argument);
    return e.message();
  };
  TrainState reserved = sampleState(5);
  reserved.metadata["step"] = "7";
  EXPECT_TRUE(contains(message(reserved, model.params(), {}),
                       "metadata key 'step' is reserved"));
  TrainState negative = sampleState(-1);
  EXPECT_TRUE(contains(message(negative, model.params(), {}), "negative"));

  std::vector<TensorRef> badParams = model.params();
  badParams[0].name = "optimizer.m.x";
  EXPECT_TRUE(contains(message(sampleState(1), badParams, {}),
                       "reserved prefix 'optimizer.'"));
  std::vector<TensorRef> badSlot = {
      {"optimizer.head.weight", {2, 3}, model.mWeight.data()}};
  // "head" is read as the slot and "weight" as the parameter.
  EXPECT_TRUE(contains(message(sampleState(1), model.params(), badSlot),
                       "names no parameter"));
  std::vector<TensorRef> unnamed = {{"optimizer.m", {3}, model.mBias.data()}};
  EXPECT_TRUE(contains(message(sampleState(1), model.params(), unnamed),
                       "is not named optimizer.<slot>.<param>"));
  std::vector<TensorRef> duplicate = model.params();
  duplicate.push_back(duplicate[0]);
  EXPECT_TRUE(contains(message(sampleState(1), duplicate, {}),
                       "duplicate tensor name 'head.weight'"));
  EXPECT_FALSE(fs::exists(path));
}

TEST(Checkpoint, LoadErrorsNameTheFileAndField) {
  TempDir dir;
  FakeModel model(0);
  auto loadError = [&](const std::string &path) {
    Expected<Checkpoint> ckpt = loadCheckpoint(path);
    EXPECT_FALSE(ckpt);
    return ckpt ? std::string() : ckpt.error().message();
  };

  EXPECT_TRUE(contains(loadError(dir / "missing.safetensors"),
                       dir / "missing.safetensors: cannot open"));

  // Plain weights are not a checkpoint.
  std::string weights = dir / "weights.safetensors";
  ASSERT_FALSE(writeSafeTensors(weights, model.params(), {{"model", "x"}}));
  EXPECT_EQ(loadError(weights),
            weights + ": not a moec checkpoint (no 'format' metadata)");

  auto withMetadata = [&](const std::string &name,
                          std::map<std::string, std::string> metadata) {
    std::string path = dir / name;
    std::map<std::string, std::string> full = {{"format", kCheckpointFormat},
                                               {"step", "10"},
                                               {"epoch", "0"},
                                               {"position", "0"},
                                               {"rng_state", ""}};
    for (auto &[key, value] : metadata)
      if (value == "<erase>")
        full.erase(key);
      else
        full[key] = value;
    EXPECT_FALSE(writeSafeTensors(path, model.params(), full));
    return path;
  };
  std::string ok = withMetadata("ok.safetensors", {});
  EXPECT_TRUE(loadCheckpoint(ok));

  std::string path = withMetadata("step.safetensors", {{"step", "12x"}});
  EXPECT_EQ(loadError(path),
            path + ": bad metadata 'step': '12x' is not a non-negative "
                   "integer");
  path = withMetadata("epoch.safetensors", {{"epoch", "<erase>"}});
  EXPECT_EQ(loadError(path), path + ": missing metadata 'epoch'");
  path = withMetadata("pos.safetensors", {{"position", "-3"}});
  EXPECT_TRUE(contains(loadError(path), "bad metadata 'position'"));
  path = withMetadata("rng.safetensors", {{"rng_state", "xyz"}});
  EXPECT_TRUE(contains(loadError(path), path + ": bad metadata 'rng_state'"));
  path = withMetadata("format.safetensors", {{"format", "moec-checkpoint/9"}});
  EXPECT_TRUE(contains(loadError(path), "unsupported checkpoint format"));

  // An optimizer tensor for a parameter the file lacks.
  std::string orphan = dir / "orphan.safetensors";
  std::vector<TensorRef> tensors = model.params();
  tensors.push_back({"optimizer.m.ghost", {3}, model.mBias.data()});
  ASSERT_FALSE(writeSafeTensors(orphan, tensors,
                                {{"format", kCheckpointFormat},
                                 {"step", "1"},
                                 {"epoch", "0"},
                                 {"position", "0"},
                                 {"rng_state", ""}}));
  EXPECT_EQ(loadError(orphan),
            orphan + ": optimizer tensor 'optimizer.m.ghost' has no "
                     "parameter 'ghost' in the file");

  // A flipped bit in the data: the data checksum catches it, on load and
  // when the checkpoint is read as weights.
  std::string summed = dir / "summed.safetensors";
  ASSERT_FALSE(saveCheckpoint(summed, sampleState(3), model.params(),
                              model.optimizer()));
  std::vector<uint8_t> flipped = readBytes(summed);
  flipped[flipped.size() - 5] ^= 0x04;
  std::string corrupt = dir / "corrupt.safetensors";
  writeBytes(corrupt, flipped);
  EXPECT_TRUE(contains(loadError(corrupt),
                       corrupt + ": data checksum mismatch (metadata "
                                 "'data_checksum' is '"))
      << loadError(corrupt);
  Expected<SafeTensors> asWeights = readWeights(corrupt);
  ASSERT_FALSE(asWeights);
  EXPECT_TRUE(contains(asWeights.error().message(), "data checksum mismatch"));
  EXPECT_TRUE(loadCheckpoint(summed));

  // A truncated checkpoint.
  std::string good = dir / "good.safetensors";
  ASSERT_FALSE(
      saveCheckpoint(good, sampleState(3), model.params(), model.optimizer()));
  std::vector<uint8_t> bytes = readBytes(good);
  bytes.resize(bytes.size() - 10);
  std::string cut = dir / "cut.safetensors";
  writeBytes(cut, bytes);
  EXPECT_TRUE(contains(loadError(cut), cut + ": tensor '"));
}

TEST(Checkpoint, DirectoryLatestAndKeepLast) {
  TempDir dir;
  std::string ckdir = dir / "run/checkpoints"; // created on demand
  CheckpointDir checkpoints(ckdir, /*keepLast=*/2);

  Expected<std::optional<std::string>> none = findLatestCheckpoint(ckdir);
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
  Expected<Checkpoint> missing = checkpoints.loadLatest();
  ASSERT_FALSE(missing);
  EXPECT_TRUE(contains(missing.error().message(), "no checkpoint"));

  for (int64_t step : {100, 200, 300, 400}) {
    FakeModel model(static_cast<float>(step));
    Expected<SavedCheckpoint> saved =
        checkpoints.save(sampleState(step), model.params(), model.optimizer());
    ASSERT_TRUE(saved) << saved.error().message();
    EXPECT_EQ(saved->path,
              ckdir + "/ckpt-" + std::to_string(step) + ".safetensors");
    EXPECT_TRUE(saved->warnings.empty());
    if (step == 300) {
      EXPECT_EQ(saved->removed,
                std::vector<std::string>{ckdir + "/ckpt-100.safetensors"});
    }
  }
  Expected<std::vector<int64_t>> steps = checkpoints.steps();
  ASSERT_TRUE(steps);
  EXPECT_EQ(*steps, (std::vector<int64_t>{300, 400}));
  EXPECT_EQ(listDir(ckdir),
            (std::vector<std::string>{"ckpt-300.safetensors",
                                      "ckpt-400.safetensors", "latest"}));
  std::vector<uint8_t> latestBytes = readBytes(ckdir + "/latest");
  EXPECT_EQ(std::string(latestBytes.begin(), latestBytes.end()),
            "ckpt-400.safetensors\n");

  Expected<Checkpoint> latest = loadLatestCheckpoint(ckdir);
  ASSERT_TRUE(latest) << latest.error().message();
  EXPECT_EQ(latest->state.step, 400);
  expectModel(*latest, FakeModel(400));

  // keepLast <= 0 keeps everything.
  CheckpointDir all(ckdir, 0);
  FakeModel model(1);
  ASSERT_TRUE(all.save(sampleState(500), model.params(), model.optimizer()));
  ASSERT_TRUE(all.save(sampleState(600), model.params(), model.optimizer()));
  EXPECT_EQ(*all.steps(), (std::vector<int64_t>{300, 400, 500, 600}));
}

TEST(Checkpoint, FailedSaveKeepsThePreviousCheckpoint) {
  TempDir dir;
  CheckpointDir checkpoints(dir.path(), /*keepLast=*/1);
  FakeModel first(7);
  ASSERT_TRUE(
      checkpoints.save(sampleState(100), first.params(), first.optimizer()));
  std::vector<uint8_t> before = readBytes(checkpoints.pathForStep(100));

  // The rename onto ckpt-200.safetensors fails: a directory is in the way.
  fs::create_directories(checkpoints.pathForStep(200) + "/blocker");
  FakeModel second(8);
  Expected<SavedCheckpoint> failed =
      checkpoints.save(sampleState(200), second.params(), second.optimizer());
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code(), ErrorCode::Io);
  EXPECT_TRUE(contains(failed.error().message(),
                       checkpoints.pathForStep(200) + ": cannot write"))
      << failed.error().message();

  // The previous checkpoint is intact, still latest, and nothing was pruned
  // or left behind.
  EXPECT_EQ(readBytes(checkpoints.pathForStep(100)), before);
  Expected<Checkpoint> latest = checkpoints.loadLatest();
  ASSERT_TRUE(latest) << latest.error().message();
  EXPECT_EQ(latest->state.step, 100);
  expectModel(*latest, first);
  EXPECT_EQ(listDir(dir.path()),
            (std::vector<std::string>{"ckpt-100.safetensors",
                                      "ckpt-200.safetensors", "latest"}));
  fs::remove_all(checkpoints.pathForStep(200));

  // A crash mid-write leaves only a temporary (here from another process,
  // pid 4194305 is above Linux's pid_max), and a crash between the
  // checkpoint and `latest` leaves a newer file that latest does not name.
  writeText(dir / "ckpt-300.safetensors.tmp.4194305.0", "half a checkpo");
  ASSERT_FALSE(saveCheckpoint(checkpoints.pathForStep(300), sampleState(300),
                              second.params(), second.optimizer()));
  latest = loadLatestCheckpoint(dir.path());
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->state.step, 100);

  // The next save prunes both the old checkpoints and the stale temporary.
  Expected<SavedCheckpoint> saved =
      checkpoints.save(sampleState(400), second.params(), second.optimizer());
  ASSERT_TRUE(saved) << saved.error().message();
  EXPECT_EQ(saved->removed.size(), 3u);
  EXPECT_EQ(listDir(dir.path()),
            (std::vector<std::string>{"ckpt-400.safetensors", "latest"}));
  latest = checkpoints.loadLatest();
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->state.step, 400);
  expectModel(*latest, second);
}

TEST(Checkpoint, WriteFailureMidFileKeepsThePreviousCheckpoint) {
  TempDir dir;
  CheckpointDir checkpoints(dir.path(), /*keepLast=*/1);
  FakeModel first(3);
  ASSERT_TRUE(
      checkpoints.save(sampleState(100), first.params(), first.optimizer()));
  std::vector<uint8_t> before = readBytes(checkpoints.pathForStep(100));

  // In a child limited to 64 KiB files, a 1 MiB checkpoint fails part way
  // through its data (EFBIG), as a full disk would.
  std::vector<float> big(1 << 18, 0.25f);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit = {64 << 10, 64 << 10};
    ::setrlimit(RLIMIT_FSIZE, &limit);
    std::vector<TensorRef> params = {{"head.weight", {1 << 18}, big.data()},
                                     {"head.bias", {3}, first.bias.data()}};
    Expected<SavedCheckpoint> saved =
        checkpoints.save(sampleState(200), params);
    bool ok = !saved && saved.error().code() == ErrorCode::Io &&
              saved.error().message().find("write failed") != std::string::npos;
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);

  EXPECT_EQ(readBytes(checkpoints.pathForStep(100)), before);
  EXPECT_EQ(listDir(dir.path()),
            (std::vector<std::string>{"ckpt-100.safetensors", "latest"}));
  Expected<Checkpoint> latest = checkpoints.loadLatest();
  ASSERT_TRUE(latest) << latest.error().message();
  EXPECT_EQ(latest->state.step, 100);
  expectModel(*latest, first);
}

TEST(Checkpoint, BadLatestFile) {
  TempDir dir;
  FakeModel model(2);
  writeText(dir / "latest", "../elsewhere.safetensors\n");
  Expected<Checkpoint> ckpt = loadLatestCheckpoint(dir.path());
  ASSERT_FALSE(ckpt);
  EXPECT_EQ(ckpt.error().message(),
            dir / "latest: does not name a checkpoint file in its directory");

  writeText(dir / "latest", "ckpt-9.safetensors\n");
  ckpt = loadLatestCheckpoint(dir.path());
  ASSERT_FALSE(ckpt);
  EXPECT_EQ(ckpt.error().message(),
            dir / "latest: names 'ckpt-9.safetensors', which does not exist");

  // latest names a file that is not a checkpoint.
  writeText(dir / "ckpt-9.safetensors", "garbage");
  ckpt = loadLatestCheckpoint(dir.path());
  ASSERT_FALSE(ckpt);
  EXPECT_TRUE(contains(ckpt.error().message(), dir / "ckpt-9.safetensors: "))
      << ckpt.error().message();
}
