//===- SpecTest.cpp - Tests for the JSON model spec parser ----------------===//
//
// Unit tests for moec/Frontend/Spec.h: the reference example, placement
// rules, presets, defaults, router kinds, positions and exact error messages.
// With MOEC_SOURCE_DIR defined, also parses every examples/*.json and checks
// test/Frontend/bad-specs against its EXPECTED.txt.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include "SpecTestUtil.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

using namespace moec::spec;
using namespace moec::spec::spectest;

namespace {

std::vector<int64_t> blocksFor(const std::string &placement, int depth) {
  Spec spec = parseOk(withMoE(R"({"placement": )" + placement +
                                  R"(, "experts": 4,
      "router": {"kind": "token-choice"}})",
                              depth));
  return spec.moe.blocks;
}

} // namespace

//===----------------------------------------------------------------------===//
// Valid specs
//===----------------------------------------------------------------------===//

TEST(SpecTest, ReferenceExample) {
  Spec spec = parseOk(kReference);
  EXPECT_EQ(spec.sourceName, "t.json");
  EXPECT_EQ(spec.name, "vimoe-tiny-fmnist");
  EXPECT_EQ(spec.extends, "");

  const ModelSpec &m = spec.model;
  EXPECT_EQ(m.input.channels, 1);
  EXPECT_EQ(m.input.height, 28);
  EXPECT_EQ(m.input.width, 28);
  EXPECT_EQ(m.patchSize, 4);
  EXPECT_EQ(m.width, 64);
  EXPECT_EQ(m.depth, 6);
  EXPECT_EQ(m.heads, 4);
  EXPECT_DOUBLE_EQ(m.mlpRatio, 2.0);
  EXPECT_EQ(m.mlpHidden, 128);
  EXPECT_EQ(m.classes, 10);
  EXPECT_EQ(m.pooling, Pooling::Cls);
  EXPECT_EQ(m.activation, Activation::Gelu);
  EXPECT_DOUBLE_EQ(m.layerNormEps, 1e-6);
  EXPECT_EQ(m.numPatches(), 49);
  EXPECT_EQ(m.numTokens(), 50);

  const MoESpec &moe = spec.moe;
  EXPECT_TRUE(moe.enabled);
  EXPECT_EQ(moe.rule, PlacementRule::LastN);
  EXPECT_EQ(moe.n, 2);
  EXPECT_EQ(moe.blocks, (std::vector<int64_t>{3, 5}));
  EXPECT_TRUE(moe.isMoEBlock(3));
  EXPECT_TRUE(moe.isMoEBlock(5));
  EXPECT_FALSE(moe.isMoEBlock(4));
  EXPECT_EQ(moe.experts, 4);
  EXPECT_EQ(moe.topK, 2);
  EXPECT_EQ(moe.expertHidden, 128);
  EXPECT_EQ(moe.router.kind, RouterKind::TokenChoice);
  EXPECT_DOUBLE_EQ(moe.router.noiseStd, 1.0);
  EXPECT_EQ(moe.router.sinkhornIters, 0);
  EXPECT_EQ(moe.router.slotsPerExpert, 0);
  EXPECT_DOUBLE_EQ(moe.capacityFactorTrain, 1.25);
  EXPECT_DOUBLE_EQ(moe.capacityFactorEval, 2.0);
  EXPECT_FALSE(moe.sharedExpert);
  EXPECT_DOUBLE_EQ(moe.aux.importance, 0.005);
  EXPECT_DOUBLE_EQ(moe.aux.load, 0.005);
  EXPECT_DOUBLE_EQ(moe.aux.balance, 0.0);
  EXPECT_DOUBLE_EQ(moe.aux.zLoss, 0.0);
  EXPECT_DOUBLE_EQ(moe.aux.superClass, 0.0);
  EXPECT_TRUE(moe.superClassMap.empty());

  const TrainSpec &t = spec.train;
  EXPECT_EQ(t.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_DOUBLE_EQ(t.optimizer.lr, 0.001);
  EXPECT_DOUBLE_EQ(t.optimizer.weightDecay, 0.05);
  EXPECT_DOUBLE_EQ(t.optimizer.beta1, 0.9);
  EXPECT_DOUBLE_EQ(t.optimizer.beta2, 0.999);
  EXPECT_DOUBLE_EQ(t.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(t.optimizer.gradClip, 1.0);
  EXPECT_EQ(t.schedule.kind, ScheduleKind::Cosine);
  EXPECT_DOUBLE_EQ(t.schedule.warmupEpochs, 2.0);
  EXPECT_DOUBLE_EQ(t.schedule.minLrRatio, 0.0);
  EXPECT_EQ(t.batch, 128);
  EXPECT_EQ(t.epochs, 25);
  EXPECT_DOUBLE_EQ(t.labelSmoothing, 0.1);
  EXPECT_EQ(t.seed, 0u);

  const DataSpec &d = spec.data;
  EXPECT_EQ(d.dataset, DatasetKind::FashionMnist);
  EXPECT_EQ(d.path, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(d.cropPadding, 2);
  EXPECT_TRUE(d.horizontalFlip);
}

TEST(SpecTest, PlacementRules) {
  using Blocks = std::vector<int64_t>;
  EXPECT_EQ(blocksFor(R"({"rule": "every-n", "n": 2})", 6), (Blocks{1, 3, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "every-n", "n": 3})", 6), (Blocks{2, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "every-n", "n": 1})", 3), (Blocks{0, 1, 2}));
  EXPECT_EQ(blocksFor(R"({"rule": "every-n", "n": 6})", 6), (Blocks{5}));
  EXPECT_EQ(blocksFor(R"({"rule": "every-n", "n": 2})", 7), (Blocks{1, 3, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "last-n", "n": 1})", 6), (Blocks{5}));
  EXPECT_EQ(blocksFor(R"({"rule": "last-n", "n": 2})", 6), (Blocks{3, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "last-n", "n": 3})", 6), (Blocks{1, 3, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "last-n", "n": 3})", 5), (Blocks{0, 2, 4}));
  EXPECT_EQ(blocksFor(R"({"rule": "blocks", "blocks": [5, 0, 3]})", 6),
            (Blocks{0, 3, 5}));
  EXPECT_EQ(blocksFor(R"({"rule": "blocks", "blocks": [2]})", 6), (Blocks{2}));

  Spec spec = parseOk(withMoE(R"({"placement": {"rule": "every-n", "n": 3},
      "experts": 2, "router": {"kind": "token-choice"}})"));
  EXPECT_EQ(spec.moe.rule, PlacementRule::EveryN);
  EXPECT_EQ(spec.moe.n, 3);
  EXPECT_FALSE(spec.moe.isMoEBlock(0));
  EXPECT_TRUE(spec.moe.isMoEBlock(2));
}

TEST(SpecTest, PresetNames) {
  EXPECT_EQ(presetNames(),
            (std::vector<std::string>{"vit-tiny", "vit-small", "vit-base"}));
}

TEST(SpecTest, PresetsAndMerging) {
  const std::string data =
      R"("data": {"dataset": "image-folder", "path": "/images"})";
  struct {
    const char *name;
    int64_t width, heads;
  } presets[] = {
      {"vit-tiny", 192, 3}, {"vit-small", 384, 6}, {"vit-base", 768, 12}};
  for (const auto &preset : presets) {
    Spec spec = parseOk(std::string(R"({"name": "p", "extends": ")") +
                        preset.name + "\", " + data + "}");
    EXPECT_EQ(spec.extends, preset.name);
    EXPECT_EQ(spec.model.input.channels, 3);
    EXPECT_EQ(spec.model.input.height, 224);
    EXPECT_EQ(spec.model.input.width, 224);
    EXPECT_EQ(spec.model.patchSize, 16);
    EXPECT_EQ(spec.model.width, preset.width);
    EXPECT_EQ(spec.model.depth, 12);
    EXPECT_EQ(spec.model.heads, preset.heads);
    EXPECT_EQ(spec.model.mlpHidden, 4 * preset.width);
    EXPECT_EQ(spec.model.classes, 1000);
    EXPECT_EQ(spec.model.pooling, Pooling::Cls);
    EXPECT_FALSE(spec.moe.enabled);
  }

  // A width override keeps the preset's depth; "input" merges key-wise.
  Spec spec = parseOk(R"({"name": "p", "extends": "vit-tiny",
      "model": {"width": 384, "heads": 6, "input": {"height": 32,
      "width": 32}, "patch_size": 4, "classes": 10},
      "data": {"dataset": "cifar10", "path": "/c"}})");
  EXPECT_EQ(spec.model.width, 384);
  EXPECT_EQ(spec.model.heads, 6);
  EXPECT_EQ(spec.model.depth, 12);
  EXPECT_EQ(spec.model.input.channels, 3);
  EXPECT_EQ(spec.model.input.height, 32);
  EXPECT_EQ(spec.model.patchSize, 4);
  EXPECT_EQ(spec.model.mlpHidden, 1536);
  EXPECT_EQ(spec.data.dataset, DatasetKind::Cifar10);

  // Preset-only values are attributed to the "extends" value.
  SourcePos extendsPos = spec.positionOf("/extends");
  EXPECT_EQ(extendsPos.line, 1u);
  EXPECT_EQ(extendsPos.column, 26u);
  SourcePos depthPos = spec.positionOf("/model/depth");
  EXPECT_EQ(depthPos.line, extendsPos.line);
  EXPECT_EQ(depthPos.column, extendsPos.column);
  SourcePos channelsPos = spec.positionOf("/model/input/channels");
  EXPECT_EQ(channelsPos.column, extendsPos.column);
  SourcePos widthPos = spec.positionOf("/model/width");
  EXPECT_EQ(widthPos.line, 2u);
  EXPECT_EQ(widthPos.column, 26u);

  // Errors in preset values point at "extends".
  EXPECT_EQ(errorOf(R"({"name": "p", "extends": "vit-tiny",
      "model": {"input": {"height": 28, "width": 28}},
      "data": {"dataset": "image-folder", "path": "/x"}})"),
            "t.json:1:26: /model/patch_size: must divide the input height "
            "(28) and width (28), got 16");
  EXPECT_EQ(errorOf(R"({"name": "p", "extends": "vit-tiny",
      "model": {"width": 200}, "data": {"dataset": "image-folder",
      "path": "/x"}})"),
            "t.json:1:26: /model/heads: must divide width (200), got 3");
}

TEST(SpecTest, Defaults) {
  Spec spec = parseOk(fmnist());
  EXPECT_FALSE(spec.moe.enabled);
  EXPECT_TRUE(spec.moe.blocks.empty());
  EXPECT_FALSE(spec.moe.isMoEBlock(5));
  EXPECT_DOUBLE_EQ(spec.model.mlpRatio, 4.0);
  EXPECT_EQ(spec.model.mlpHidden, 256);
  EXPECT_EQ(spec.model.pooling, Pooling::Cls);
  EXPECT_EQ(spec.model.activation, Activation::Gelu);
  EXPECT_DOUBLE_EQ(spec.model.layerNormEps, 1e-6);

  const TrainSpec &t = spec.train;
  EXPECT_EQ(t.optimizer.kind, OptimizerKind::AdamW);
  EXPECT_DOUBLE_EQ(t.optimizer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(t.optimizer.weightDecay, 0.05);
  EXPECT_DOUBLE_EQ(t.optimizer.eps, 1e-8);
  EXPECT_DOUBLE_EQ(t.optimizer.momentum, 0.9);
  EXPECT_DOUBLE_EQ(t.optimizer.gradClip, 1.0);
  EXPECT_EQ(t.schedule.kind, ScheduleKind::Cosine);
  EXPECT_DOUBLE_EQ(t.schedule.warmupEpochs, 0.0);
  EXPECT_DOUBLE_EQ(t.schedule.minLrRatio, 0.0);
  EXPECT_EQ(t.batch, 128);
  EXPECT_EQ(t.epochs, 10);
  EXPECT_DOUBLE_EQ(t.labelSmoothing, 0.0);
  EXPECT_EQ(t.seed, 0u);

  EXPECT_EQ(spec.data.dataset, DatasetKind::FashionMnist);
  EXPECT_EQ(spec.data.path, "/usr/share/datasets/fashion-mnist");
  EXPECT_EQ(spec.data.cropPadding, 0);
  EXPECT_FALSE(spec.data.horizontalFlip);

  // MoE defaults.
  spec = parseOk(withMoE(R"({"placement": {"rule": "last-n", "n": 1},
      "experts": 8, "router": {"kind": "token-choice"}})"));
  EXPECT_EQ(spec.moe.topK, 1);
  EXPECT_EQ(spec.moe.expertHidden, 256);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorTrain, 1.0);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorEval, 1.0);
  EXPECT_FALSE(spec.moe.sharedExpert);
  EXPECT_DOUBLE_EQ(spec.moe.router.noiseStd, 0.0);
  EXPECT_DOUBLE_EQ(spec.moe.aux.importance, 0.0);
  EXPECT_DOUBLE_EQ(spec.moe.aux.superClass, 0.0);

  // Other explicit values.
  spec = parseOk(R"({"name": "t", "model": {"input": {"channels": 1,
      "height": 28, "width": 28}, "patch_size": 7, "width": 3, "depth": 1,
      "heads": 1, "mlp_ratio": 0.5, "classes": 10, "pooling": "mean",
      "activation": "silu", "layer_norm_eps": 1e-5},
      "train": {"optimizer": {"kind": "sgd", "momentum": 0.5},
      "schedule": {"kind": "constant", "min_lr_ratio": 1},
      "seed": 9223372036854775807}})");
  EXPECT_EQ(spec.model.mlpHidden, 2); // llround(1.5)
  EXPECT_EQ(spec.model.pooling, Pooling::Mean);
  EXPECT_EQ(spec.model.numTokens(), 16);
  EXPECT_EQ(spec.model.activation, Activation::Silu);
  EXPECT_DOUBLE_EQ(spec.model.layerNormEps, 1e-5);
  EXPECT_EQ(spec.train.optimizer.kind, OptimizerKind::Sgd);
  EXPECT_DOUBLE_EQ(spec.train.optimizer.momentum, 0.5);
  EXPECT_EQ(spec.train.schedule.kind, ScheduleKind::Constant);
  EXPECT_EQ(spec.train.seed, 9223372036854775807ull);
}

TEST(SpecTest, RouterKinds) {
  auto moe = [](const std::string &router, const std::string &extra = "") {
    return withMoE(R"({"placement": {"rule": "every-n", "n": 2},
        "experts": 4, "router": )" +
                   router + extra + "}");
  };

  Spec spec = parseOk(moe(R"({"kind": "token-choice", "noise_std": 0.5})",
                          R"(, "top_k": 4, "capacity_factor": 1.5)"));
  EXPECT_EQ(spec.moe.router.kind, RouterKind::TokenChoice);
  EXPECT_DOUBLE_EQ(spec.moe.router.noiseStd, 0.5);
  EXPECT_EQ(spec.moe.topK, 4);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorTrain, 1.5);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorEval, 1.5);

  spec = parseOk(moe(R"({"kind": "expert-choice"})",
                     R"(, "capacity_factor": {"eval": 3})"));
  EXPECT_EQ(spec.moe.router.kind, RouterKind::ExpertChoice);
  EXPECT_EQ(spec.moe.topK, 0);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorTrain, 1.0);
  EXPECT_DOUBLE_EQ(spec.moe.capacityFactorEval, 3.0);

  spec = parseOk(moe(R"({"kind": "soft"})"));
  EXPECT_EQ(spec.moe.router.kind, RouterKind::Soft);
  EXPECT_EQ(spec.moe.topK, 0);
  EXPECT_EQ(spec.moe.router.slotsPerExpert, 1);
  EXPECT_EQ(spec.moe.router.sinkhornIters, 0);
  spec = parseOk(moe(R"({"kind": "soft", "slots_per_expert": 4})",
                     R"(, "shared_expert": true)"));
  EXPECT_EQ(spec.moe.router.slotsPerExpert, 4);
  EXPECT_TRUE(spec.moe.sharedExpert);

  spec = parseOk(moe(R"({"kind": "per-image"})",
                     R"(, "top_k": 2, "super_class_map":
                        [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])"));
  EXPECT_EQ(spec.moe.router.kind, RouterKind::PerImage);
  EXPECT_EQ(spec.moe.topK, 2);
  EXPECT_EQ(spec.moe.superClassMap,
            (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3, 0, 1}));
  EXPECT_DOUBLE_EQ(spec.moe.aux.superClass, 0.3);

  spec = parseOk(moe(R"({"kind": "sinkhorn"})"));
  EXPECT_EQ(spec.moe.router.kind, RouterKind::Sinkhorn);
  EXPECT_EQ(spec.moe.router.sinkhornIters, 3);
  EXPECT_EQ(spec.moe.topK, 1);
  spec = parseOk(moe(R"({"kind": "sinkhorn", "iterations": 7})"));
  EXPECT_EQ(spec.moe.router.sinkhornIters, 7);

  // Keys a kind does not use. Noise exists for every kind but soft (its
  // softmaxes over tokens and slots choose nothing).
  EXPECT_EQ(errorOf(moe(R"({"kind": "soft", "noise_std": 1})")),
            "t.json:3:63: /moe/router/noise_std: not used by router kind "
            "'soft'");
  for (const char *kind : {"expert-choice", "per-image", "sinkhorn"}) {
    spec = parseOk(moe(std::string(R"({"kind": ")") + kind +
                       R"(", "noise_std": 0.5})"));
    EXPECT_EQ(spec.moe.router.noiseStd, 0.5) << kind;
  }
  EXPECT_EQ(errorOf(moe(R"({"kind": "expert-choice", "batch_prioritized": true})")),
            "t.json:3:80: /moe/router/batch_prioritized: not used by router "
            "kind 'expert-choice'");
  spec = parseOk(moe(R"({"kind": "sinkhorn", "batch_prioritized": true})"));
  EXPECT_TRUE(spec.moe.router.batchPrioritized);
  EXPECT_EQ(errorOf(moe(R"({"kind": "token-choice", "iterations": 2})")),
            "t.json:3:72: /moe/router/iterations: not used by router kind "
            "'token-choice'");
  EXPECT_EQ(errorOf(moe(R"({"kind": "sinkhorn", "slots_per_expert": 2})")),
            "t.json:3:74: /moe/router/slots_per_expert: not used by router "
            "kind 'sinkhorn'");
  EXPECT_EQ(errorOf(moe(R"({"kind": "soft"})", R"(, "top_k": 1)")),
            "t.json:3:60: /moe/top_k: not used by router kind 'soft'");
  EXPECT_EQ(errorOf(moe(R"({"kind": "expert-choice"})", R"(, "top_k": 1)")),
            "t.json:3:69: /moe/top_k: not used by router kind "
            "'expert-choice'");
  EXPECT_EQ(errorOf(moe(R"({"kind": "soft"})", R"(, "capacity_factor": 2)")),
            "t.json:3:70: /moe/capacity_factor: not used by router kind "
            "'soft'");
}

TEST(SpecTest, Positions) {
  Spec spec = parseOk(kReference);
  SourcePos root = spec.positionOf("");
  EXPECT_EQ(root.line, 1u);
  EXPECT_EQ(root.column, 1u);
  SourcePos noise = spec.positionOf("/moe/router/noise_std");
  EXPECT_EQ(noise.line, 26u);
  EXPECT_EQ(noise.column, 20u);
  SourcePos channels = spec.positionOf("/model/input/channels");
  EXPECT_EQ(channels.line, 5u);
  EXPECT_EQ(channels.column, 19u);
  SourcePos moe = spec.positionOf("/moe");
  EXPECT_EQ(moe.line, 17u);
  EXPECT_EQ(moe.column, 10u);
  // Absent values (defaults) fall back to the closest ancestor.
  SourcePos slots = spec.positionOf("/moe/router/slots_per_expert");
  EXPECT_EQ(slots.line, 24u);
  EXPECT_EQ(slots.column, 15u);
  SourcePos missing = spec.positionOf("/nope/deeper");
  EXPECT_EQ(missing.line, 1u);
  EXPECT_EQ(missing.column, 1u);
  EXPECT_EQ(spec.positions.count("/moe/aux_loss/load"), 1u);
  EXPECT_EQ(spec.positions.count("/moe/aux_loss/balance"), 0u);

  // Array elements, and pointer escaping of odd keys (in an error).
  spec = parseOk(withMoE(R"({"placement": {"rule": "blocks",
      "blocks": [1, 3]}, "experts": 2, "router": {"kind": "soft"}})"));
  SourcePos second = spec.positionOf("/moe/placement/blocks/1");
  EXPECT_EQ(second.line, 3u);
  EXPECT_EQ(second.column, 21u);
  EXPECT_EQ(errorOf(R"({"name": "t", "a/b~c": 1})"),
            "t.json:1:15: /a~1b~0c: unknown key (expected one of: name, "
            "extends, model, moe, train, data)");
  // Byte order mark and CRLF line ends.
  EXPECT_EQ(errorOf("\xEF\xBB\xBF{\r\n  \"name\": 5,\r\n"
                    "  \"extends\": \"vit-tiny\"\r\n}"),
            "t.json:2:11: /name: expected a string, got a number");
}

//===----------------------------------------------------------------------===//
// Errors
//===----------------------------------------------------------------------===//

TEST(SpecTest, SyntaxErrors) {
  EXPECT_EQ(errorOf(""), "t.json:1:1: /: malformed JSON: syntax error while "
                         "parsing value - unexpected end of input; expected "
                         "'[', '{', or a literal");
  EXPECT_EQ(errorOf("{\n  \"name\": \"t\",\n}"),
            "t.json:3:1: /: malformed JSON: syntax error while parsing "
            "object key - unexpected '}'; expected string literal");
  EXPECT_EQ(errorOf("{\"name\": \"t\"} x"),
            "t.json:1:15: /: malformed JSON: syntax error while parsing "
            "value - invalid literal; last read: '\"t\"} x'; expected end "
            "of input");
  EXPECT_EQ(errorOf("{\"name\": \"t\" \"model\": 1}"),
            "t.json:1:20: /: malformed JSON: syntax error while parsing "
            "object - unexpected string literal; expected '}'");
  EXPECT_EQ(errorOf("{\"name\": \"t\",\n \"name\": \"u\"}"),
            "t.json:2:2: /name: duplicate key");
  EXPECT_EQ(errorOf("{\"name\": \"t\", \"moe\": {\"experts\": 2,\n"
                    "  \"router\": {}, \"experts\": 3}}"),
            "t.json:2:17: /moe/experts: duplicate key");
  EXPECT_EQ(errorOf("[1, 2]"), "t.json:1:1: /: expected an object, got an "
                               "array");
  // Deep nesting must not exhaust the stack.
  std::string deep = R"({"name": "t", "extends": "vit-tiny", "x": )" +
                     std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_EQ(errorOf(deep), "t.json:1:38: /x: unknown key (expected one of: "
                           "name, extends, model, moe, train, data)");
  deep = R"({"name": "t", "extends": "vit-tiny", "model": {"input": {)"
         R"("channels": )" +
         std::string(100000, '[') + std::string(100000, ']') + "}}}";
  EXPECT_EQ(errorOf(deep), "t.json:1:70: /model/input/channels: expected an "
                           "integer, got an array");
  deep = R"({"name": "t", "model": )" + std::string(100000, '[') +
         std::string(100000, ']') + "}";
  EXPECT_EQ(errorOf(deep), "t.json:1:24: /model: expected an object, got an "
                           "array");
}

TEST(SpecTest, FileErrors) {
  ParseResult result = parseSpecFile("/nonexistent/spec.json");
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error->str(), "/nonexistent/spec.json:0:0: /: cannot "
                                 "read file: No such file or directory");
}

TEST(SpecTest, TypeErrors) {
  EXPECT_EQ(errorOf(R"({"name": null, "extends": "vit-tiny"})"),
            "t.json:1:10: /name: expected a string, got null");
  EXPECT_EQ(errorOf(R"({"name": "", "extends": "vit-tiny"})"),
            "t.json:1:10: /name: expected a non-empty string, got an empty "
            "string");
  EXPECT_EQ(errorOf(referenceWith(R"("width": 64)", R"("width": "64")")),
            "t.json:10:14: /model/width: expected an integer, got a string");
  EXPECT_EQ(
      errorOf(referenceWith(R"("patch_size": 4)", R"("patch_size": 2.5)")),
      "t.json:9:19: /model/patch_size: expected an integer, got a "
      "number");
  EXPECT_EQ(errorOf(referenceWith(R"("mlp_ratio": 2)", R"("mlp_ratio": true)")),
            "t.json:13:18: /model/mlp_ratio: expected a number, got a "
            "boolean");
  EXPECT_EQ(errorOf(referenceWith(R"("shared_expert": false)",
                                  R"("shared_expert": 0)")),
            "t.json:32:22: /moe/shared_expert: expected a boolean, got a "
            "number");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "last-n", "n": 1},
      "experts": 2, "router": {"kind": "soft"}, "aux_loss": []})")),
            "t.json:3:61: /moe/aux_loss: expected an object, got an array");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "last-n", "n": 1},
      "experts": 2, "router": {"kind": "token-choice"},
      "capacity_factor": "x"})")),
            "t.json:4:26: /moe/capacity_factor: expected a number or an "
            "object, got a string");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "blocks",
      "blocks": 3}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:3:17: /moe/placement/blocks: expected an array, got a "
            "number");
  EXPECT_EQ(errorOf(fmnist(R"("train": {"seed": -1})")),
            "t.json:2:123: /train/seed: must be >= 0, got -1");
  EXPECT_EQ(errorOf(fmnist(R"("train": {"batch": 9223372036854775808})")),
            "t.json:2:124: /train/batch: must be <= 65536, got "
            "9223372036854775808");
}

TEST(SpecTest, StructureErrors) {
  EXPECT_EQ(errorOf(R"({"model": {}})"),
            "t.json:1:1: /: missing required key 'name'");
  EXPECT_EQ(errorOf(R"({"name": "t"})"),
            "t.json:1:1: /: missing required key 'model'");
  EXPECT_EQ(errorOf(R"({"name": "t", "model": {"input": {"channels": 1,
      "height": 28, "width": 28}, "patch_size": 4, "width": 64, "heads": 4,
      "classes": 10}})"),
            "t.json:1:24: /model: missing required key 'depth'");
  EXPECT_EQ(errorOf(R"({"name": "t", "model": {"input": {"channels": 1,
      "width": 28}, "patch_size": 4, "width": 64, "heads": 4, "depth": 1,
      "classes": 10}})"),
            "t.json:1:34: /model/input: missing required key 'height'");
  EXPECT_EQ(errorOf(referenceWith(R"("pooling": "cls")",
                                  R"("pooling": "cls", "dropout": 0.1)")),
            "t.json:15:23: /model/dropout: unknown key (expected one of: "
            "input, patch_size, width, depth, heads, mlp_ratio, classes, "
            "pooling, activation, layer_norm_eps)");
  EXPECT_EQ(errorOf(referenceWith(R"("experts": 4)", R"("expert": 4)")),
            "t.json:22:5: /moe/expert: unknown key, did you mean 'experts'? "
            "(expected one of: placement, experts, router, top_k, "
            "expert_hidden, capacity_factor, shared_expert, aux_loss, "
            "super_class_map, layers)");
  EXPECT_EQ(errorOf(withMoE(R"({"experts": 4, "router": {"kind": "soft"}})")),
            "t.json:2:112: /moe: missing required key 'placement'");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "every-n", "n": 2,
      "blocks": [1]}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:3:7: /moe/placement/blocks: unknown key (expected one "
            "of: rule, n)");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "blocks", "n": 2,
      "blocks": [1]}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:2:145: /moe/placement/n: unknown key (expected one of: "
            "rule, blocks)");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "last-n"},
      "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:2:126: /moe/placement: missing required key 'n'");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "every-n", "n": 1},
      "experts": 2, "router": {}})")),
            "t.json:3:31: /moe/router: missing required key 'kind'");
  EXPECT_EQ(errorOf(referenceWith(R"("grad_clip": 1.0)",
                                  R"("grad_clip": 1.0, "nesterov": true)")),
            "t.json:43:25: /train/optimizer/nesterov: unknown key (expected "
            "one of: kind, lr, weight_decay, betas, eps, momentum, "
            "grad_clip)");
}

TEST(SpecTest, EnumErrors) {
  EXPECT_EQ(
      errorOf(referenceWith(R"("kind": "token-choice")", R"("kind": "top-k")")),
      "t.json:25:15: /moe/router/kind: unknown router kind 'top-k' "
      "(expected one of: token-choice, expert-choice, soft, per-image, "
      "sinkhorn, sinkhorn-expert-choice)");
  EXPECT_EQ(
      errorOf(referenceWith(R"("pooling": "cls")", R"("pooling": "max")")),
      "t.json:15:16: /model/pooling: unknown pooling 'max' (expected "
      "one of: cls, mean)");
  EXPECT_EQ(
      errorOf(referenceWith(R"("pooling": "cls")", R"("activation": "tanh")")),
      "t.json:15:19: /model/activation: unknown activation 'tanh' "
      "(expected one of: gelu, gelu_tanh, relu, silu)");
  EXPECT_EQ(
      errorOf(referenceWith(R"("rule": "last-n")", R"("rule": "first-n")")),
      "t.json:19:15: /moe/placement/rule: unknown placement rule "
      "'first-n' (expected one of: every-n, last-n, blocks)");
  EXPECT_EQ(errorOf(referenceWith(R"("kind": "adamw")", R"("kind": "adam")")),
            "t.json:40:15: /train/optimizer/kind: unknown optimizer kind "
            "'adam', did you mean 'adamw'? (expected one of: adamw, sgd)");
  EXPECT_EQ(errorOf(referenceWith(R"("kind": "cosine")", R"("kind": "step")")),
            "t.json:46:15: /train/schedule/kind: unknown schedule kind "
            "'step' (expected one of: cosine, constant)");
  EXPECT_EQ(errorOf(referenceWith(R"("dataset": "fashion-mnist")",
                                  R"("dataset": "mnist")")),
            "t.json:55:16: /data/dataset: unknown dataset 'mnist' (expected "
            "one of: fashion-mnist, cifar10, image-folder)");
  EXPECT_EQ(errorOf(R"({"name": "t", "extends": "vit-huge"})"),
            "t.json:1:26: /extends: unknown preset 'vit-huge' (expected one "
            "of: vit-tiny, vit-small, vit-base)");
}

TEST(SpecTest, RangeErrors) {
  EXPECT_EQ(errorOf(referenceWith(R"("depth": 6)", R"("depth": 0)")),
            "t.json:11:14: /model/depth: must be >= 1, got 0");
  EXPECT_EQ(errorOf(referenceWith(R"("classes": 10)", R"("classes": 1)")),
            "t.json:14:16: /model/classes: must be >= 2, got 1");
  EXPECT_EQ(errorOf(referenceWith(R"("mlp_ratio": 2)", R"("mlp_ratio": -1)")),
            "t.json:13:18: /model/mlp_ratio: must be > 0, got -1");
  EXPECT_EQ(
      errorOf(referenceWith(R"("mlp_ratio": 2)", R"("mlp_ratio": 0.001)")),
      "t.json:13:18: /model/mlp_ratio: round(mlp_ratio * width) must "
      "be >= 1, got round(0.001 * 64) = 0");
  EXPECT_EQ(errorOf(referenceWith(R"("patch_size": 4)", R"("patch_size": 5)")),
            "t.json:9:19: /model/patch_size: must divide the input height "
            "(28) and width (28), got 5");
  EXPECT_EQ(errorOf(referenceWith(R"("heads": 4)", R"("heads": 5)")),
            "t.json:12:14: /model/heads: must divide width (64), got 5");
  EXPECT_EQ(errorOf(referenceWith(R"("top_k": 2)", R"("top_k": 9)")),
            "t.json:23:14: /moe/top_k: must be <= experts (4), got 9");
  EXPECT_EQ(errorOf(referenceWith(R"("top_k": 2)", R"("top_k": 0)")),
            "t.json:23:14: /moe/top_k: must be >= 1, got 0");
  EXPECT_EQ(errorOf(referenceWith(R"("n": 2)", R"("n": 4)")),
            "t.json:20:12: /moe/placement/n: last-n needs 2n-1 <= depth (6), "
            "got n = 4");
  EXPECT_EQ(errorOf(referenceWith(R"("rule": "last-n",
      "n": 2)",
                                  R"("rule": "every-n",
      "n": 7)")),
            "t.json:20:12: /moe/placement/n: must be <= depth (6), got 7");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "blocks",
      "blocks": [3, 5, 3]}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:3:24: /moe/placement/blocks/2: duplicate block 3 (also "
            "at /moe/placement/blocks/0)");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "blocks",
      "blocks": [-1]}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:3:18: /moe/placement/blocks/0: must be in [0, 6), got -1");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "blocks",
      "blocks": []}, "experts": 2, "router": {"kind": "soft"}})")),
            "t.json:3:17: /moe/placement/blocks: expected a non-empty array, "
            "got an empty array");
  EXPECT_EQ(errorOf(referenceWith(R"("eval": 2.0)", R"("eval": 0)")),
            "t.json:30:15: /moe/capacity_factor/eval: must be > 0, got 0");
  EXPECT_EQ(errorOf(referenceWith(R"("label_smoothing": 0.1)",
                                  R"("label_smoothing": 1.5)")),
            "t.json:51:24: /train/label_smoothing: must be in [0, 1), got "
            "1.5");
  EXPECT_EQ(errorOf(referenceWith(R"("lr": 0.001)", R"("lr": -1)")),
            "t.json:41:13: /train/optimizer/lr: must be > 0, got -1");
  EXPECT_EQ(
      errorOf(referenceWith(R"("grad_clip": 1.0)", R"("betas": [0.9, 1.0])")),
      "t.json:43:22: /train/optimizer/betas/1: must be in [0, 1), got "
      "1");
  EXPECT_EQ(errorOf(referenceWith(R"("grad_clip": 1.0)", R"("betas": [0.9])")),
            "t.json:43:16: /train/optimizer/betas: expected an array of 2 "
            "numbers, got 1 elements");
  EXPECT_EQ(
      errorOf(referenceWith(R"("warmup_epochs": 2)", R"("warmup_epochs": 25)")),
      "t.json:47:24: /train/schedule/warmup_epochs: must be < epochs "
      "(25), got 25");
  EXPECT_EQ(errorOf(referenceWith(R"("warmup_epochs": 2)",
                                  R"("min_lr_ratio": 1.01)")),
            "t.json:47:23: /train/schedule/min_lr_ratio: must be in [0, 1], "
            "got 1.01");
  EXPECT_EQ(
      errorOf(referenceWith(R"("crop_padding": 2)", R"("crop_padding": -2)")),
      "t.json:58:23: /data/augment/crop_padding: must be >= 0, got -2");
  EXPECT_EQ(
      errorOf(referenceWith(R"("importance": 0.005)", R"("importance": -0.5)")),
      "t.json:34:21: /moe/aux_loss/importance: must be >= 0, got -0.5");
}

TEST(SpecTest, CrossFieldErrors) {
  EXPECT_EQ(errorOf(referenceWith(R"("noise_std": 1.0)", R"("noise_std": 0)")),
            "t.json:35:15: /moe/aux_loss/load: needs a token-choice router "
            "with noise_std > 0");
  EXPECT_EQ(errorOf(referenceWith(R"("load": 0.005)", R"("super_class": 0.1)")),
            "t.json:35:22: /moe/aux_loss/super_class: needs "
            "/moe/super_class_map");
  EXPECT_EQ(errorOf(referenceWith(R"("shared_expert": false)",
                                  R"("super_class_map": [0, 1, 2])")),
            "t.json:32:24: /moe/super_class_map: must have one entry per "
            "class (10), got 3");
  EXPECT_EQ(errorOf(referenceWith(R"("shared_expert": false)",
                                  R"("super_class_map": [0, 1, 2, 3, 0,
                                     1, 2, 3, 4, 0])")),
            "t.json:33:47: /moe/super_class_map/8: must be in [0, 4), got 4");
  EXPECT_EQ(errorOf(referenceWith(R"("grad_clip": 1.0)", R"("momentum": 0.9)")),
            "t.json:43:19: /train/optimizer/momentum: not used by optimizer "
            "kind 'adamw'");
  EXPECT_EQ(errorOf(referenceWith(R"("kind": "adamw")",
                                  R"("kind": "sgd", "eps": 1e-6)")),
            "t.json:40:29: /train/optimizer/eps: not used by optimizer kind "
            "'sgd'");
  EXPECT_EQ(errorOf(referenceWith(R"("dataset": "fashion-mnist")",
                                  R"("dataset": "cifar10")")),
            "t.json:55:16: /data/dataset: cifar10 images are 3x32x32, but "
            "/model/input is 1x28x28");
  EXPECT_EQ(errorOf(referenceWith(R"("classes": 10)", R"("classes": 100)")),
            "t.json:55:16: /data/dataset: fashion-mnist has 10 classes, but "
            "/model/classes is 100");
  EXPECT_EQ(errorOf(R"({"name": "t", "extends": "vit-base",
      "data": {"dataset": "image-folder"}})"),
            "t.json:2:15: /data/path: required for dataset 'image-folder'");
  // Without a "data" section the dataset is Fashion-MNIST.
  EXPECT_EQ(errorOf(R"({"name": "t", "extends": "vit-base"})"),
            "t.json:1:1: /data/dataset: fashion-mnist images are 1x28x28, "
            "but /model/input is 3x224x224");
}

//===----------------------------------------------------------------------===//
// Files in the source tree
//===----------------------------------------------------------------------===//

#ifdef MOEC_SOURCE_DIR

namespace {

std::string readFile(const std::filesystem::path &path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

TEST(SpecTest, ExamplesParse) {
  std::filesystem::path dir =
      std::filesystem::path(MOEC_SOURCE_DIR) / "examples";
  int count = 0;
  for (const auto &entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".json")
      continue;
    ++count;
    ParseResult result = parseSpecFile(entry.path().string());
    EXPECT_TRUE(result) << entry.path() << ": "
                        << (result.error ? result.error->str() : "");
  }
  EXPECT_GE(count, 5);
}

TEST(SpecTest, BadSpecsMatchExpected) {
  std::filesystem::path dir = std::filesystem::path(MOEC_SOURCE_DIR) / "test" /
                              "Frontend" / "bad-specs";
  std::istringstream expected(readFile(dir / "EXPECTED.txt"));
  std::set<std::string> listed;
  std::string line;
  while (std::getline(expected, line)) {
    if (line.empty() || line[0] == '#')
      continue;
    std::size_t tab = line.find('\t');
    ASSERT_NE(tab, std::string::npos) << line;
    std::string file = line.substr(0, tab);
    listed.insert(file);
    ParseResult result = parseSpec(readFile(dir / file), file);
    ASSERT_FALSE(result) << file << " parsed";
    EXPECT_EQ(result.error->str(), line.substr(tab + 1)) << file;
  }
  EXPECT_GE(listed.size(), 20u);
  for (const auto &entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() == ".json") {
      EXPECT_EQ(listed.count(entry.path().filename().string()), 1u)
          << entry.path() << " is not in EXPECTED.txt";
    }
  }
}

#else

TEST(SpecTest, ExamplesParse) {
  GTEST_SKIP() << "MOEC_SOURCE_DIR is not defined";
}

TEST(SpecTest, BadSpecsMatchExpected) {
  GTEST_SKIP() << "MOEC_SOURCE_DIR is not defined";
}

#endif // MOEC_SOURCE_DIR
