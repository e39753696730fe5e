//===- ArtifactTest.cpp - the .moec reader --------------------------------===//

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Session.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <functional>

using namespace moec::rt;
using namespace moec::rt::test;
using nlohmann::json;

namespace {

Error loadError(const std::vector<uint8_t> &bytes) {
  Expected<std::shared_ptr<const Artifact>> a =
      Artifact::fromBytes(bytes, "model.moec");
  EXPECT_FALSE(a);
  return a ? Error() : a.takeError();
}

TEST(Artifact, LoadsTheTinyModel) {
  TempDir dir;
  writeBytes(dir / "tiny.moec", tinyArtifact());
  Expected<std::shared_ptr<const Artifact>> loaded =
      Artifact::load(dir / "tiny.moec");
  ASSERT_TRUE(loaded) << loaded.error().message();
  const Artifact &a = **loaded;
  EXPECT_EQ(a.versionMajor(), 1u);
  EXPECT_EQ(a.sections().size(), 3u);
  const Manifest &m = a.manifest();
  EXPECT_EQ(m.model, "tiny");
  EXPECT_EQ(m.batch, 4);
  EXPECT_EQ(m.imageSize(), 16);
  EXPECT_EQ(m.classes, 3);
  EXPECT_EQ(m.datasetKind, "image-folder");
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[0].name, "head.scale");
  EXPECT_EQ(m.params[0].init, InitKind::Normal);
  EXPECT_DOUBLE_EQ(m.params[0].std, 0.5);
  EXPECT_EQ(m.params[1].offset, 64u);
  EXPECT_EQ(m.infer().outputs[0].offset, 384u);
  EXPECT_EQ(m.infer().flopsPerImage, 22);
  EXPECT_EQ(m.spec, R"({"name":"tiny"})");
  const std::vector<Dispatch> &plan = a.plan().entries.at("infer");
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].parallel, Dispatch::Parallel::Fixed);
  EXPECT_EQ(plan[0].range(2), 3);
  EXPECT_EQ(plan[1].range(2), 2);
  EXPECT_EQ(plan[2].args[1].space, BufferArg::Space::Param);
  EXPECT_EQ(a.plan().kernelNames(),
            (std::vector<std::string>{"moec_k0", "moec_k1", "moec_k2"}));
  EXPECT_GT(a.kernelsSize(), 0u);
}

TEST(Artifact, ContainerErrors) {
  std::vector<uint8_t> good = tinyArtifact();

  std::vector<uint8_t> truncated(good.begin(), good.end() - 1000);
  Error e = loadError(truncated);
  EXPECT_EQ(e.code(), ErrorCode::Format);
  EXPECT_EQ(e.message(), cat("model.moec: truncated (header says ", good.size(),
                             " bytes, file has ", truncated.size(), ")"));

  e = loadError(std::vector<uint8_t>(good.begin(), good.begin() + 20));
  EXPECT_EQ(e.message(), "model.moec: truncated (file has 20 bytes, less "
                         "than the 64-byte header)");

  std::vector<uint8_t> corrupted = good;
  corrupted[good.size() / 2] ^= 0x01;
  e = loadError(corrupted);
  EXPECT_EQ(e.code(), ErrorCode::Checksum);
  EXPECT_EQ(e.message(), "model.moec: checksum mismatch (file is corrupted)");

  std::vector<uint8_t> badMagic = good;
  badMagic[0] = 'X';
  e = loadError(badMagic);
  EXPECT_EQ(e.code(), ErrorCode::Format);
  EXPECT_EQ(e.message(), "model.moec: not a moec artifact (bad magic)");

  ArtifactBuilder v2;
  v2.versionMajor = 2;
  v2.add("manifest", "{}");
  e = loadError(v2.build());
  EXPECT_EQ(e.code(), ErrorCode::Version);
  EXPECT_EQ(e.message(), "model.moec: artifact version 2.0 is not supported "
                         "(this runtime reads 1.x)");

  std::vector<uint8_t> trailing = good;
  trailing.push_back(0);
  e = loadError(trailing);
  EXPECT_EQ(e.message(), cat("model.moec: header says ", good.size(),
                             " bytes, but the file has ", good.size() + 1,
                             " (trailing bytes)"));
}

TEST(Artifact, SkipChecksumForFuzzing) {
  // LoadOptions::verifyChecksum = false (the fuzz target's setting) skips
  // only the checksum; the default still checks it.
  std::vector<uint8_t> bytes = tinyArtifact();
  moec::artifact::FileHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  header.checksum ^= 1;
  std::memcpy(bytes.data(), &header, sizeof(header));
  EXPECT_EQ(loadError(bytes).code(), ErrorCode::Checksum);
  LoadOptions options;
  options.verifyChecksum = false;
  auto artifact = Artifact::fromBytes(bytes, "model.moec", options);
  ASSERT_TRUE(artifact) << artifact.error().message();
  EXPECT_EQ((*artifact)->manifest().model, "tiny");
  // Other container checks stay on.
  bytes.push_back(0);
  artifact = Artifact::fromBytes(bytes, "model.moec", options);
  ASSERT_FALSE(artifact);
  EXPECT_EQ(artifact.error().code(), ErrorCode::Format);
}

TEST(Artifact, SectionErrors) {
  ArtifactBuilder noPlan;
  noPlan.add("manifest", tinyManifest().dump());
  noPlan.add("kernels", kernelLibrary());
  Error e = loadError(noPlan.build());
  EXPECT_EQ(e.code(), ErrorCode::Format);
  EXPECT_EQ(e.message(), "model.moec: missing required section 'plan'");

  ArtifactBuilder twice;
  twice.add("manifest", tinyManifest().dump());
  twice.add("manifest", tinyManifest().dump());
  EXPECT_EQ(loadError(twice.build()).message(),
            "model.moec: duplicate section 'manifest'");

  // A section entry pointing past the end.
  std::vector<uint8_t> bytes = tinyArtifact();
  moec::artifact::FileHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  moec::artifact::SectionEntry entry;
  uint8_t *first = bytes.data() + header.sectionTableOffset;
  std::memcpy(&entry, first, sizeof(entry));
  entry.size = bytes.size();
  std::memcpy(first, &entry, sizeof(entry));
  fixChecksum(bytes);
  EXPECT_EQ(loadError(bytes).message(),
            cat("model.moec: section 'manifest' (offset 64, ", bytes.size(),
                " bytes) lies outside the file (", bytes.size(), " bytes)"));

  // Overlapping sections.
  bytes = tinyArtifact();
  first = bytes.data() + header.sectionTableOffset;
  std::memcpy(&entry, first, sizeof(entry));
  moec::artifact::SectionEntry second;
  std::memcpy(&second, first + sizeof(entry), sizeof(second));
  second.offset = entry.offset + 64; // inside the manifest
  second.size = 1;
  std::memcpy(first + sizeof(entry), &second, sizeof(second));
  fixChecksum(bytes);
  EXPECT_EQ(loadError(bytes).message(),
            "model.moec: sections 'manifest' and 'plan' overlap");

  // A section table beyond the file.
  bytes = tinyArtifact();
  std::memcpy(&header, bytes.data(), sizeof(header));
  header.sectionCount = 1000;
  std::memcpy(bytes.data(), &header, sizeof(header));
  EXPECT_EQ(loadError(bytes).message(),
            cat("model.moec: section table (offset ", header.sectionTableOffset,
                ", 1000 entries) lies outside the file (", bytes.size(),
                " bytes)"));

  ArtifactBuilder notElf;
  notElf.add("manifest", tinyManifest().dump());
  notElf.add("plan", tinyPlan().dump());
  notElf.add("kernels", std::string(100, 'x'));
  EXPECT_EQ(loadError(notElf.build()).message(),
            "model.moec: the kernels section is not an ELF file");
}

TEST(Artifact, BadJson) {
  ArtifactBuilder b;
  b.add("manifest", "{\"model\": ");
  b.add("plan", tinyPlan().dump());
  b.add("kernels", kernelLibrary());
  Error e = loadError(b.build());
  EXPECT_EQ(e.code(), ErrorCode::Format);
  EXPECT_EQ(e.message().rfind("model.moec: manifest: invalid JSON: parse "
                              "error at line 1, column 11",
                              0),
            0u)
      << e.message();

  ArtifactBuilder p;
  p.add("manifest", tinyManifest().dump());
  p.add("plan", "[1,");
  p.add("kernels", kernelLibrary());
  EXPECT_EQ(loadError(p.build()).message().rfind(
                "model.moec: plan: invalid JSON: ", 0),
            0u);
}

/// The message for the tiny model with `edit` applied to its manifest.
std::string manifestError(const std::function<void(json &)> &edit) {
  json manifest = tinyManifest();
  edit(manifest);
  return loadError(tinyArtifact(manifest)).message();
}

std::string planError(const std::function<void(json &)> &edit) {
  json plan = tinyPlan();
  edit(plan);
  return loadError(tinyArtifact(tinyManifest(), plan)).message();
}

TEST(Artifact, ManifestSchemaErrors) {
  const std::string m = "model.moec: manifest: ";
  EXPECT_EQ(manifestError([](json &j) { j["params"][1]["shape"] = {0}; }),
            m + "/params/1/shape: expected an array of positive integers");
  EXPECT_EQ(manifestError([](json &j) { j["params"][0]["shape"] = "3"; }),
            m + "/params/0/shape: expected an array of positive integers");
  EXPECT_EQ(manifestError([](json &j) { j.erase("batch"); }),
            m + "/batch: required field is missing");
  EXPECT_EQ(manifestError([](json &j) { j["batch"] = 0; }),
            m + "/batch: expected a positive integer, got 0");
  EXPECT_EQ(manifestError([](json &j) { j["batch"] = 2.5; }),
            m + "/batch: expected a positive integer, got 2.5");
  EXPECT_EQ(manifestError([](json &j) { j["model"] = 3; }),
            m + "/model: expected a non-empty string");
  EXPECT_EQ(manifestError([](json &j) { j["input"].erase("height"); }),
            m + "/input/height: required field is missing");
  EXPECT_EQ(manifestError([](json &j) { j["input"] = 1; }),
            m + "/input: expected an object");
  EXPECT_EQ(manifestError([](json &j) { j["dataset"]["kind"] = "mnist"; }),
            m + "/dataset/kind: unknown dataset kind 'mnist' (expected one "
                "of: fashion-mnist, cifar10, image-folder)");
  EXPECT_EQ(manifestError([](json &j) { j["params"][1]["offset"] = 12; }),
            m + "/params/1/offset: must be a multiple of 64, got 12");
  EXPECT_EQ(manifestError([](json &j) { j["params"][1]["offset"] = 128; }),
            m + "/params/1: parameter 'head.bias' (offset 128, 12 bytes) "
                "does not fit in param_bytes (128)");
  EXPECT_EQ(manifestError([](json &j) {
              j["params"][1]["offset"] = 0;
              j["params"][1]["name"] = "head.b";
            }),
            m + "/params/1: parameter 'head.b' overlaps parameter "
                "'head.scale'");
  EXPECT_EQ(
      manifestError([](json &j) { j["params"][1]["name"] = "head.scale"; }),
      m + "/params/1/name: duplicate parameter 'head.scale'");
  EXPECT_EQ(manifestError([](json &j) { j["params"][0]["dtype"] = "bf16"; }),
            m + "/params/0/dtype: unsupported dtype 'bf16' (expected f32)");
  EXPECT_EQ(manifestError([](json &j) { j["params"][0]["init"] = "xavier"; }),
            m + "/params/0/init: unknown init kind 'xavier' (expected one "
                "of: zeros, ones, normal, trunc_normal, constant)");
  EXPECT_EQ(manifestError([](json &j) { j["params"][0].erase("std"); }),
            m + "/params/0/std: required field is missing");
  EXPECT_EQ(manifestError([](json &j) { j["params"][0]["std"] = -1; }),
            m + "/params/0/std: expected a positive number, got -1");
  EXPECT_EQ(manifestError([](json &j) { j["param_count"] = 7; }),
            m + "/param_count: is 7, but the parameters hold 6 values");
  EXPECT_EQ(manifestError([](json &j) { j["active_params_per_image"] = 9; }),
            m + "/active_params_per_image: 9 exceeds param_count (6)");
  EXPECT_EQ(manifestError([](json &j) { j["entries"].erase("infer"); }),
            m + "/entries/infer: required field is missing");
  EXPECT_EQ(manifestError([](json &j) {
              j["entries"]["infer"]["inputs"][0]["shape"] = {4, 1, 4, 5};
            }),
            m + "/entries/infer/inputs/0/shape: is [4, 1, 4, 5], but [batch, "
                "channels, height, width] is [4, 1, 4, 4]");
  EXPECT_EQ(manifestError([](json &j) {
              j["entries"]["infer"]["outputs"][0]["offset"] = 420;
            }),
            m + "/entries/infer/outputs/0: tensor 'logits' (offset 420, 48 "
                "bytes) does not fit in the arena (arena_bytes 448)");
  EXPECT_EQ(manifestError([](json &j) {
              j["entries"]["infer"]["outputs"] = json::array();
            }),
            m + "/entries/infer/outputs: expected exactly one output (the "
                "logits), got 0");
  EXPECT_EQ(manifestError([](json &j) {
              j["entries"]["infer"].erase("flops_per_image");
            }),
            m + "/entries/infer/flops_per_image: required field is missing");
  EXPECT_EQ(manifestError([](json &j) { j = json::array(); }),
            "model.moec: manifest: expected an object");
}

TEST(Artifact, PlanSchemaErrors) {
  const std::string p = "model.moec: plan: ";
  EXPECT_EQ(planError([](json &j) { j["entries"].erase("infer"); }),
            p + "/entries/infer: required field is missing");
  EXPECT_EQ(planError([](json &j) { j["entries"]["train"] = json::array(); }),
            p + "/entries/train: the manifest has no entry point 'train'");
  EXPECT_EQ(planError([](json &j) { j["entries"]["infer"] = json::array(); }),
            p + "/entries/infer: has no dispatches");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][1]["parallel"] = "tokens";
            }),
            p + "/entries/infer/1/parallel: unknown parallel kind 'tokens' "
                "(expected one of: images, fixed)");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["kernel"] = "moec k2";
            }),
            p + "/entries/infer/2/kernel: 'moec k2' is not a valid symbol "
                "name");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["args"][3]["offset"] = 448;
            }),
            p + "/entries/infer/2/args/3/offset: 448 is outside the arena "
                "(448 bytes)");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["args"][1]["space"] = "global";
            }),
            p + "/entries/infer/2/args/1/space: unknown buffer space "
                "'global' (expected one of: arena, param)");
  EXPECT_EQ(planError([](json &j) { j["entries"]["infer"][0].erase("tiles"); }),
            p + "/entries/infer/0/tiles: required field is missing");
}

// A plan whose checksum matches is still checked whole before anything
// runs: argument counts, extents and tile counts.
TEST(Artifact, PlanValidation) {
  const std::string p = "model.moec: plan: ";
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][0]["args"] = json::array();
            }),
            p + "/entries/infer/0/args: expected 1 to 1024 arguments, got 0");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["kernel"] = "moec_k1";
            }),
            p + "/entries/infer/2/args: 4 arguments, but kernel 'moec_k1' "
                "takes 2 (at /entries/infer/1)");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][0]["tiles"] = int64_t(1) << 62;
            }),
            p + "/entries/infer/0/tiles: 4611686018427387904 tiles, more "
                "than the limit of 1048576");
  EXPECT_EQ(planError([](json &j) { j["entries"]["infer"][1]["tiles"] = 5; }),
            p + "/entries/infer/1/tiles: 5 tiles, but an images dispatch "
                "runs over the batch (4) or a divisor of it (routing "
                "groups)");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["args"][1]["offset"] = 4;
            }),
            p + "/entries/infer/2/args/1/offset: 4 is not the start of a "
                "parameter or state tensor");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][0]["args"][0]["bytes"] = 128;
            }),
            p + "/entries/infer/0/args/0: bytes [64, 192) extend past the "
                "end of the parameter block (128 bytes)");
  EXPECT_EQ(planError([](json &j) {
              j["entries"]["infer"][2]["args"][3] = {
                  {"space", "arena"}, {"offset", 444}, {"bytes", 48}};
            }),
            p + "/entries/infer/2/args/3: bytes [444, 492) extend past the "
                "end of the arena (448 bytes)");
  // Extents inside the blocks load.
  json plan = tinyPlan();
  plan["entries"]["infer"][2]["args"][3]["bytes"] = 48;
  plan["entries"]["infer"][2]["args"][1]["bytes"] = 12;
  EXPECT_TRUE(Artifact::fromBytes(tinyArtifact(tinyManifest(), plan), "m"));
}

// A kernels section whose ELF headers point past its end is refused before
// dlopen maps it (which would raise SIGBUS).
TEST(Artifact, TruncatedKernels) {
  std::string library = kernelLibrary();
  ASSERT_GT(library.size(), 4096u);
  ArtifactBuilder cut;
  cut.add("manifest", tinyManifest().dump());
  cut.add("plan", tinyPlan().dump());
  cut.add("kernels", library.substr(0, 4096));
  Error e = loadError(cut.build());
  EXPECT_EQ(e.code(), ErrorCode::Format);
  EXPECT_TRUE(
      e.message().find("model.moec: the kernels section (4096 bytes) is "
                       "truncated: ") == 0)
      << e.message();

  // Program headers past the end.
  std::string moved = library;
  uint64_t phoff = library.size();
  std::memcpy(moved.data() + 32, &phoff, 8);
  ArtifactBuilder bad;
  bad.add("manifest", tinyManifest().dump());
  bad.add("plan", tinyPlan().dump());
  bad.add("kernels", moved);
  EXPECT_NE(loadError(bad.build()).message().find("program headers at offset "),
            std::string::npos);
}

} // namespace

// The manifest's target_cpu features are checked against this CPU before
// the kernels are loaded: a missing ISA extension is a clear error, not a
// SIGILL. Unknown feature names are ignored.
TEST(Artifact, TargetCpuFeatures) {
  TempDir dir;
  nlohmann::json manifest = tinyManifest();
  manifest["target_cpu"] = {{"name", "test-cpu"},
                            {"features", {"avx512f", "some-future-feature"}}};
  writeBytes(dir / "cpu.moec", tinyArtifact(manifest));
  Expected<std::shared_ptr<const Artifact>> loaded =
      Artifact::load(dir / "cpu.moec");
  ASSERT_TRUE(loaded) << loaded.error().message();
  EXPECT_EQ((*loaded)->manifest().targetCpu, "test-cpu");
  ASSERT_EQ((*loaded)->manifest().targetFeatures.size(), 2u);
  Expected<std::unique_ptr<Session>> session =
      Session::create(*loaded, "cpu", 1);
  if (__builtin_cpu_supports("avx512f")) {
    EXPECT_TRUE(session) << session.error().message();
  } else {
    ASSERT_FALSE(session);
    EXPECT_NE(session.error().message().find(
                  "compiled for test-cpu with avx512f, which this CPU lacks"),
              std::string::npos)
        << session.error().message();
  }

  manifest["target_cpu"]["features"] = {1, 2};
  writeBytes(dir / "bad.moec", tinyArtifact(manifest));
  Expected<std::shared_ptr<const Artifact>> bad =
      Artifact::load(dir / "bad.moec");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find(
                "/target_cpu/features: expected an array of strings"),
            std::string::npos)
      << bad.error().message();
}

// "precision" (moec compile --precision): optional, "fp32" when absent,
// anything but fp32 and bf16 refused with the pointer.
TEST(Artifact, Precision) {
  TempDir dir;
  nlohmann::json manifest = tinyManifest();
  writeBytes(dir / "absent.moec", tinyArtifact(manifest));
  Expected<std::shared_ptr<const Artifact>> absent =
      Artifact::load(dir / "absent.moec");
  ASSERT_TRUE(absent) << absent.error().message();
  EXPECT_EQ((*absent)->manifest().precision, "fp32");

  manifest["precision"] = "bf16";
  writeBytes(dir / "bf16.moec", tinyArtifact(manifest));
  Expected<std::shared_ptr<const Artifact>> bf16 =
      Artifact::load(dir / "bf16.moec");
  ASSERT_TRUE(bf16) << bf16.error().message();
  EXPECT_EQ((*bf16)->manifest().precision, "bf16");

  for (nlohmann::json bad : {nlohmann::json("fp16"), nlohmann::json(16)}) {
    manifest["precision"] = bad;
    writeBytes(dir / "bad.moec", tinyArtifact(manifest));
    Expected<std::shared_ptr<const Artifact>> refused =
        Artifact::load(dir / "bad.moec");
    ASSERT_FALSE(refused) << bad.dump();
    EXPECT_NE(refused.error().message().find("/precision"), std::string::npos)
        << refused.error().message();
  }
}

//===----------------------------------------------------------------------===//
// Artifact 1.1: state, optimizer, train, i32 tensors, roles, train_step and
// eval signatures (docs/training-abi.md)
//===----------------------------------------------------------------------===//

namespace {

std::string trainManifestError(const std::function<void(json &)> &edit) {
  json manifest = trainManifest();
  edit(manifest);
  Expected<std::shared_ptr<const Artifact>> a =
      Artifact::fromBytes(trainArtifact(manifest), "model.moec");
  EXPECT_FALSE(a) << "the edited manifest was accepted";
  return a ? std::string() : a.error().message();
}

json &trainInput(json &j, size_t i) {
  return j["entries"]["train_step"]["inputs"][i];
}
json &trainOutput(json &j, size_t i) {
  return j["entries"]["train_step"]["outputs"][i];
}

TEST(Artifact, LoadsTrainingFields) {
  Expected<std::shared_ptr<const Artifact>> loaded =
      Artifact::fromBytes(trainArtifact(), "train.moec");
  ASSERT_TRUE(loaded) << loaded.error().message();
  const Artifact &a = **loaded;
  EXPECT_EQ(a.versionMinor(), 1u);
  const Manifest &m = a.manifest();
  ASSERT_EQ(m.state.size(), 2u);
  EXPECT_EQ(m.state[0].name, "optimizer.momentum.w");
  EXPECT_EQ(m.state[0].offset, 128u);
  EXPECT_EQ(m.state[0].init, InitKind::Zeros);
  EXPECT_EQ(m.state[1].shape, (std::vector<int64_t>{1}));
  ASSERT_TRUE(m.optimizer);
  EXPECT_EQ(m.optimizer->kind, "sgd");
  EXPECT_DOUBLE_EQ(m.optimizer->lr, 0.001);
  EXPECT_DOUBLE_EQ(m.optimizer->momentum, 0.9);
  EXPECT_DOUBLE_EQ(m.optimizer->beta1, 0); // absent
  ASSERT_TRUE(m.train);
  EXPECT_EQ(m.train->batch, 4);
  EXPECT_EQ(m.train->epochs, 3);
  EXPECT_DOUBLE_EQ(m.train->warmupEpochs, 1);
  EXPECT_EQ(m.train->schedule, "cosine");
  EXPECT_EQ(m.train->cropPadding, 1);
  EXPECT_TRUE(m.train->horizontalFlip);
  const EntrySpec *train = m.entry("train_step");
  ASSERT_TRUE(train);
  ASSERT_TRUE(train->input("labels"));
  EXPECT_EQ(train->input("labels")->dtype, "i32");
  EXPECT_EQ(train->input("noise.blocks.0")->role, "normal_noise");
  EXPECT_EQ(train->input("lr")->shape, std::vector<int64_t>{});
  EXPECT_EQ(train->output("grad.w")->role, "gradient");
  EXPECT_EQ(train->output("loss")->role, "");
  EXPECT_FALSE(train->output("nope"));
  EXPECT_EQ(m.entry("eval")->output("routing.blocks.0")->role,
            "routing_counts");
  EXPECT_FALSE(m.entry("backward"));
  EXPECT_EQ(a.plan().entries.at("train_step").size(), 2u);

  // A 1.0 manifest has none of it.
  Expected<std::shared_ptr<const Artifact>> tiny =
      Artifact::fromBytes(tinyArtifact(), "tiny.moec");
  ASSERT_TRUE(tiny) << tiny.error().message();
  EXPECT_TRUE((*tiny)->manifest().state.empty());
  EXPECT_FALSE((*tiny)->manifest().optimizer);
  EXPECT_FALSE((*tiny)->manifest().train);

  // Unknown fields are ignored; optional ones may be left out.
  json manifest = trainManifest();
  manifest["train"]["future"] = {1, 2};
  manifest["optimizer"]["schedule_details"] = "x";
  trainInput(manifest, 0)["layout"] = "nchw";
  manifest["train"].erase("augment");
  manifest["train"].erase("seed");
  manifest["optimizer"].erase("grad_clip");
  Expected<std::shared_ptr<const Artifact>> lenient =
      Artifact::fromBytes(trainArtifact(manifest), "train.moec");
  ASSERT_TRUE(lenient) << lenient.error().message();
  EXPECT_EQ((*lenient)->manifest().train->cropPadding, 0);
  EXPECT_FALSE((*lenient)->manifest().train->horizontalFlip);

  // A model may have eval without train_step, and no state at all.
  manifest = trainManifest();
  manifest.erase("state");
  manifest.erase("optimizer");
  manifest.erase("train");
  manifest["entries"].erase("train_step");
  json plan = trainPlan();
  plan["entries"].erase("train_step");
  Expected<std::shared_ptr<const Artifact>> evalOnly =
      Artifact::fromBytes(trainArtifact(manifest, plan), "eval.moec");
  ASSERT_TRUE(evalOnly) << evalOnly.error().message();
}

TEST(Artifact, StateSchemaErrors) {
  const std::string m = "model.moec: manifest: ";
  EXPECT_EQ(
      trainManifestError([](json &j) { j["state"] = json::array({1}); }),
      m + "/state/0: expected an object");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"] = 3; }),
            m + "/state: expected an array");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][0]["offset"] = 100; }),
            m + "/state/0/offset: must be a multiple of 64, got 100");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][1]["offset"] = 256; }),
            m + "/state/1: state tensor 'optimizer.momentum.b' (offset 256, 4 "
                "bytes) does not fit in param_bytes (256)");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][1]["offset"] = 64; }),
            m + "/state/1: state tensor 'optimizer.momentum.b' overlaps "
                "parameter 'b'");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][1]["offset"] = 0; }),
            m + "/state/1: state tensor 'optimizer.momentum.b' overlaps "
                "parameter 'w'");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][1]["offset"] = 128; }),
            m + "/state/1: state tensor 'optimizer.momentum.b' overlaps "
                "state tensor 'optimizer.momentum.w'");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][0]["init"] = "ones"; }),
            m + "/state/0/init: unknown state init 'ones' (expected one of: "
                "zeros)");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][0].erase("init"); }),
            m + "/state/0/init: required field is missing");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][0]["dtype"] = "i32"; }),
            m + "/state/0/dtype: unsupported dtype 'i32' (expected f32)");
  EXPECT_EQ(trainManifestError([](json &j) { j["state"][0]["name"] = "m.w"; }),
            m + "/state/0/name: state tensor 'm.w' is not named "
                "optimizer.<slot>.<param>");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["state"][0]["name"] = "optimizer.w"; }),
      m + "/state/0/name: state tensor 'optimizer.w' is not named "
          "optimizer.<slot>.<param>");
  EXPECT_EQ(trainManifestError(
                [](json &j) { j["state"][0]["name"] = "optimizer.m.head"; }),
            m + "/state/0/name: state tensor 'optimizer.m.head' names no "
                "parameter ('head' is not a parameter)");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["state"][1]["name"] = "optimizer.momentum.w";
            }),
            m + "/state/1/name: duplicate state tensor "
                "'optimizer.momentum.w'");
}

TEST(Artifact, OptimizerAndTrainSchemaErrors) {
  const std::string m = "model.moec: manifest: ";
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"].erase("lr"); }),
            m + "/optimizer/lr: required field is missing");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"]["lr"] = 0; }),
            m + "/optimizer/lr: expected a positive number, got 0");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"]["lr"] = 1e39; }),
            m + "/optimizer/lr: expected a positive number representable in "
                "f32 (at most 3.4028235e+38, at least 1.4e-45), got 1e+39");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"]["eps"] = 1e300; }),
            m + "/optimizer/eps: expected at most 3.40282e+38, got 1e+300");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["train"]["epochs"] = 1ll << 62; }),
      m + "/train/epochs: expected at most 1000000, got 4611686018427387904");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["train"]["warmup_epochs"] = 1e300; }),
      m + "/train/warmup_epochs: expected at most 1e+06, got 1e+300");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"]["kind"] = ""; }),
            m + "/optimizer/kind: expected a non-empty string");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["optimizer"]["momentum"] = -0.5; }),
      m + "/optimizer/momentum: expected a non-negative number, got -0.5");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"]["eps"] = "1"; }),
            m + "/optimizer/eps: expected a non-negative number, got \"1\"");
  EXPECT_EQ(trainManifestError([](json &j) { j["optimizer"] = 1; }),
            m + "/optimizer: expected an object");
  EXPECT_EQ(trainManifestError([](json &j) { j["train"]["batch"] = 8; }),
            m + "/train/batch: is 8, but /batch is 4 (the artifact's batch "
                "is the train batch)");
  EXPECT_EQ(trainManifestError([](json &j) { j["train"].erase("epochs"); }),
            m + "/train/epochs: required field is missing");
  EXPECT_EQ(trainManifestError([](json &j) { j["train"]["epochs"] = 0; }),
            m + "/train/epochs: expected a positive integer, got 0");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["train"]["warmup_epochs"] = -1; }),
      m + "/train/warmup_epochs: expected a non-negative number, got -1");
  EXPECT_EQ(
      trainManifestError([](json &j) { j["train"]["label_smoothing"] = 1.5; }),
      m + "/train/label_smoothing: expected a number in [0, 1], got 1.5");
  EXPECT_EQ(trainManifestError([](json &j) { j["train"]["seed"] = -3; }),
            m + "/train/seed: expected a non-negative integer, got -3");
  EXPECT_EQ(trainManifestError(
                [](json &j) { j["train"]["augment"]["crop_padding"] = 1.5; }),
            m + "/train/augment/crop_padding: expected a non-negative "
                "integer, got 1.5");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["train"]["augment"]["horizontal_flip"] = 1;
            }),
            m + "/train/augment/horizontal_flip: expected true or false, got "
                "1");
  EXPECT_EQ(trainManifestError([](json &j) { j.erase("train"); }),
            m + "/train: required when the model has a train_step entry "
                "point");
  EXPECT_EQ(trainManifestError([](json &j) { j.erase("optimizer"); }),
            m + "/optimizer: required when the model has a train_step entry "
                "point");
}

TEST(Artifact, TrainStepSignatureErrors) {
  const std::string m = "model.moec: manifest: ";
  const std::string at = m + "/entries/train_step/";
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 1)["dtype"] = "u8"; }),
            at + "inputs/1/dtype: unsupported dtype 'u8' (expected f32 or "
                 "i32)");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainInput(j, 1)["dtype"] = "f32"; }),
      at + "inputs/1/dtype: 'labels' must be i32, got f32");
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 1)["shape"] = {3}; }),
            at + "inputs/1/shape: is [3], but [batch] is [4]");
  EXPECT_EQ(trainManifestError([](json &j) {
              trainInput(j, 0)["shape"] = {4, 1, 4, 3};
            }),
            at + "inputs/0/shape: is [4, 1, 4, 3], but [batch, channels, "
                 "height, width] is [4, 1, 4, 4]");
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 5)["shape"] = {1}; }),
            at + "inputs/5/shape: is [1], but a scalar is []");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["train_step"]["inputs"].erase(3);
            }),
            at + "inputs: missing input 'total_steps' (a scalar f32)");
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 6).erase("role"); }),
            at + "inputs/6: input 'noise.blocks.0' is neither one the runtime "
                 "fills by name (images, labels, step, total_steps, "
                 "warmup_steps, lr) nor of role normal_noise");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainInput(j, 6)["dtype"] = "i32"; }),
      at + "inputs/6/dtype: role normal_noise needs f32, got i32");
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 6)["role"] = 7; }),
            at + "inputs/6/role: expected a non-empty string");
  EXPECT_EQ(trainManifestError([](json &j) { trainInput(j, 6)["offset"] = 0; }),
            at + "inputs/6: input 'noise.blocks.0' overlaps input 'images' "
                 "in the arena");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainInput(j, 6)["name"] = "lr"; }),
      at + "inputs/6/name: duplicate input 'lr'");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["train_step"]["outputs"].erase(4);
            }),
            at + "outputs: missing output 'grad_norm' (a scalar f32)");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["train_step"]["outputs"].erase(3);
            }),
            at + "outputs: missing output 'correct' (a scalar f32 or i32)");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 5)["shape"] = {4}; }),
      at + "outputs/5/shape: is [4], but a scalar is []");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 7)["name"] = "grad.c"; }),
      at + "outputs/7/name: gradient 'grad.c' is not named grad.<param> of a "
           "parameter");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 7)["name"] = "gb"; }),
      at + "outputs/7/name: gradient 'gb' is not named grad.<param> of a "
           "parameter");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 7)["shape"] = {2}; }),
      at + "outputs/7/shape: is [2], but parameter 'b' is [1]");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 6)["dtype"] = "i32"; }),
      at + "outputs/6/dtype: role gradient needs f32, got i32");
  EXPECT_EQ(
      trainManifestError([](json &j) { trainOutput(j, 7)["offset"] = 400; }),
      at + "outputs/7: output 'grad.b' overlaps output 'grad.w' in the arena");
  EXPECT_EQ(trainManifestError([](json &j) {
              trainOutput(j, 7)["offset"] = 672;
            }),
            at + "outputs/7: tensor 'grad.b' (offset 672, 4 bytes) does not "
                 "fit in the arena (arena_bytes 672)");
  // The i32 dtype is for training entries; infer stays f32.
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["infer"]["inputs"][0]["dtype"] = "i32";
            }),
            m + "/entries/infer/inputs/0/dtype: the images must be f32, got "
                "i32");
}

TEST(Artifact, EvalSignatureErrors) {
  const std::string at = "model.moec: manifest: /entries/eval/";
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["eval"]["inputs"].erase(2);
            }),
            at + "inputs: missing input 'mask' ([batch] f32)");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["eval"]["inputs"].push_back(
                  tensor("noise.blocks.0", {4, 1, 2}, "f32", 288,
                         "normal_noise"));
            }),
            at + "inputs/3: input 'noise.blocks.0' is not one eval takes "
                 "(images, labels, mask)");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["eval"]["inputs"][2]["dtype"] = "i32";
            }),
            at + "inputs/2/dtype: 'mask' must be f32, got i32");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["eval"]["outputs"].erase(0);
            }),
            at + "outputs: missing output 'loss_sum' (a scalar f32)");
  EXPECT_EQ(trainManifestError([](json &j) {
              j["entries"]["eval"]["outputs"][2]["shape"] = {2, 1};
            }),
            at + "outputs/2/shape: is [2, 1], but routing counts are "
                 "[experts]");
  // correct may be i32.
  json manifest = trainManifest();
  manifest["entries"]["eval"]["outputs"][1]["dtype"] = "i32";
  EXPECT_TRUE(Artifact::fromBytes(trainArtifact(manifest), "m.moec"));
}

TEST(Artifact, TrainingPlanErrors) {
  json plan = trainPlan();
  plan["entries"].erase("eval");
  Expected<std::shared_ptr<const Artifact>> a =
      Artifact::fromBytes(trainArtifact(trainManifest(), plan), "model.moec");
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().message(),
            "model.moec: plan: /entries/eval: the manifest's entry point "
            "'eval' has no dispatches in the plan");
  plan = trainPlan();
  plan["entries"]["train_step"][1]["args"][9]["offset"] = 256;
  a = Artifact::fromBytes(trainArtifact(trainManifest(), plan), "model.moec");
  ASSERT_FALSE(a);
  EXPECT_EQ(a.error().message(),
            "model.moec: plan: /entries/train_step/1/args/9/offset: 256 is "
            "outside the param (256 bytes)");
}

} // namespace
