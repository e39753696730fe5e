//===- SpecLayersTest.cpp - Tests for per-layer MoE settings --------------===//
//
// Unit tests for /moe/layers (per-layer MoE settings merged over /moe) and
// the "did you mean" suggestions of unknown keys and names.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include "SpecTestUtil.h"

#include <gtest/gtest.h>

using namespace moec::spec;
using namespace moec::spec::spectest;

namespace {

/// A depth-6 model whose blocks 1, 3 and 5 are MoE layers (noisy top-2
/// token-choice, 4 experts), with `layers` as /moe/layers and `extra` as
/// further /moe members.
std::string withLayers(const std::string &layers,
                       const std::string &extra = "") {
  return withMoE(R"({"placement": {"rule": "every-n", "n": 2}, "experts": 4,
      "top_k": 2, "router": {"kind": "token-choice", "noise_std": 1.0},
      "capacity_factor": {"train": 1.25, "eval": 2.0}, )" +
                 extra + R"("layers": )" + layers + "}");
}

} // namespace

TEST(SpecTest, LayersDefaultToModelWide) {
  Spec spec = parseOk(withLayers("{}"));
  const MoESpec &moe = spec.moe;
  ASSERT_EQ(moe.layers.size(), 3u);
  for (const MoELayerSpec &layer : moe.layers) {
    EXPECT_EQ(layer.pointer, "");
    EXPECT_EQ(layer.settings.experts, 4);
    EXPECT_EQ(layer.settings.topK, 2);
    EXPECT_EQ(layer.settings.router.kind, RouterKind::TokenChoice);
    EXPECT_EQ(layer.settings.router.noiseStd, 1.0);
    EXPECT_EQ(layer.settings.capacityFactorTrain, 1.25);
    EXPECT_EQ(layer.settings.capacityFactorEval, 2.0);
    EXPECT_EQ(layer.settings.expertHidden, 256);
    EXPECT_FALSE(layer.settings.sharedExpert);
  }
  EXPECT_EQ(moe.layer(3).block, 3);
  // Without "layers" at all, too.
  Spec plain = parseOk(kReference);
  ASSERT_EQ(plain.moe.layers.size(), 2u);
  EXPECT_EQ(plain.moe.layer(5).settings.topK, 2);
}

TEST(SpecTest, LayersMerge) {
  // A new router kind starts from its own defaults: no noise, no k; the
  // capacity factors are inherited.
  Spec spec = parseOk(withLayers(
      R"({"5": {"router": {"kind": "expert-choice"}, "experts": 8}})"));
  const MoELayerSettings &last = spec.moe.layer(5).settings;
  EXPECT_EQ(spec.moe.layer(5).pointer, "/moe/layers/5");
  EXPECT_EQ(last.router.kind, RouterKind::ExpertChoice);
  EXPECT_EQ(last.experts, 8);
  EXPECT_EQ(last.topK, 0);
  EXPECT_EQ(last.router.noiseStd, 0.0);
  EXPECT_EQ(last.capacityFactorTrain, 1.25);
  EXPECT_EQ(last.capacityFactorEval, 2.0);
  // The model-wide values and the other layers are untouched.
  EXPECT_EQ(spec.moe.experts, 4);
  EXPECT_EQ(spec.moe.router.kind, RouterKind::TokenChoice);
  EXPECT_EQ(spec.moe.layer(1).settings.experts, 4);
  EXPECT_EQ(spec.moe.layer(3).settings.router.kind, RouterKind::TokenChoice);

  // The same kind inherits the router's other keys; objects merge key by
  // key.
  spec = parseOk(withLayers(R"({"3": {"top_k": 1,
      "router": {"noise_std": 0.5}, "capacity_factor": {"eval": 1.0},
      "shared_expert": true, "expert_hidden": 32}})"));
  const MoELayerSettings &mid = spec.moe.layer(3).settings;
  EXPECT_EQ(mid.router.kind, RouterKind::TokenChoice);
  EXPECT_EQ(mid.router.noiseStd, 0.5);
  EXPECT_EQ(mid.topK, 1);
  EXPECT_EQ(mid.capacityFactorTrain, 1.25);
  EXPECT_EQ(mid.capacityFactorEval, 1.0);
  EXPECT_TRUE(mid.sharedExpert);
  EXPECT_EQ(mid.expertHidden, 32);

  // A kind with a k keeps the inherited k; a number sets both factors.
  spec = parseOk(withLayers(R"({"1": {"router": {"kind": "sinkhorn"},
      "capacity_factor": 3}, "5": {"router": {"kind": "soft",
      "slots_per_expert": 2}}})"));
  const MoELayerSettings &first = spec.moe.layer(1).settings;
  EXPECT_EQ(first.router.kind, RouterKind::Sinkhorn);
  EXPECT_EQ(first.topK, 2);
  EXPECT_EQ(first.router.sinkhornIters, 3);
  EXPECT_EQ(first.router.noiseStd, 0.0);
  EXPECT_EQ(first.capacityFactorTrain, 3.0);
  EXPECT_EQ(first.capacityFactorEval, 3.0);
  EXPECT_EQ(spec.moe.layer(5).settings.router.kind, RouterKind::Soft);
  EXPECT_EQ(spec.moe.layer(5).settings.topK, 0);
  EXPECT_EQ(spec.moe.layer(5).settings.router.slotsPerExpert, 2);

  // From a kind without k to one with: k = 1.
  spec = parseOk(withMoE(R"({"placement": {"rule": "last-n", "n": 1},
      "experts": 4, "router": {"kind": "expert-choice"},
      "layers": {"5": {"router": {"kind": "per-image"}}}})"));
  EXPECT_EQ(spec.moe.layer(5).settings.topK, 1);

  // The load loss applies to the layers with a noisy token-choice router.
  parseOk(withLayers(R"({"1": {"router": {"kind": "expert-choice"}}})",
                     R"("aux_loss": {"load": 0.01}, )"));
}

TEST(SpecTest, LayersErrors) {
  EXPECT_EQ(errorOf(withLayers(R"({"2": {"experts": 8}})")),
            "t.json:4:67: /moe/layers/2: block 2 is not an MoE block (the "
            "placement selects blocks 1, 3, 5)");
  EXPECT_EQ(errorOf(withLayers(R"({"last": {"experts": 8}})")),
            "t.json:4:67: /moe/layers/last: expected a block index (a "
            "decimal integer such as \"3\"), got 'last'");
  EXPECT_EQ(errorOf(withLayers(R"({"05": {"experts": 8}})")),
            "t.json:4:67: /moe/layers/05: expected a block index (a decimal "
            "integer such as \"3\"), got '05'");
  EXPECT_EQ(errorOf(withLayers("[5]")),
            "t.json:4:66: /moe/layers: expected an object, got an array");
  EXPECT_EQ(errorOf(withLayers(R"({"5": 8})")),
            "t.json:4:72: /moe/layers/5: expected an object, got a number");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"aux_loss": {"load": 1}}})")),
            "t.json:4:73: /moe/layers/5/aux_loss: not a per-layer setting "
            "(set it in /moe)");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"expert": 8}})")),
            "t.json:4:73: /moe/layers/5/expert: unknown key, did you mean "
            "'experts'? (expected one of: experts, router, top_k, "
            "expert_hidden, capacity_factor, shared_expert)");
  EXPECT_EQ(
      errorOf(withLayers(R"({"5": {"router": {"kind": "expert_choice"}}})")),
      "t.json:4:92: /moe/layers/5/router/kind: unknown router kind "
      "'expert_choice', did you mean 'expert-choice'? (expected one of: "
      "token-choice, expert-choice, soft, per-image, sinkhorn, "
      "sinkhorn-expert-choice)");
  EXPECT_EQ(errorOf(withLayers(
                R"({"5": {"router": {"kind": "expert-choice"}, "top_k": 1}})")),
            "t.json:4:119: /moe/layers/5/top_k: not used by router kind "
            "'expert-choice'");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"experts": 3, "top_k": 4}})")),
            "t.json:4:96: /moe/layers/5/top_k: must be <= experts (3), got 4");
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "last-n", "n": 1},
      "experts": 4, "top_k": 3, "router": {"kind": "token-choice"},
      "layers": {"5": {"experts": 2}}})")),
            "t.json:4:35: /moe/layers/5/experts: must be >= top_k (3, from "
            "/moe/top_k), got 2");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"experts": 0}})")),
            "t.json:4:84: /moe/layers/5/experts: must be >= 1, got 0");
  EXPECT_EQ(errorOf(withLayers(
                R"({"5": {"router": {"kind": "soft", "noise_std": 1}}})")),
            "t.json:4:113: /moe/layers/5/router/noise_std: not used by router "
            "kind 'soft'");
  EXPECT_EQ(errorOf(withLayers(
                R"({"5": {"router": {"kind": "sinkhorn", "iterations": 0}}})")),
            "t.json:4:118: /moe/layers/5/router/iterations: must be >= 1, got "
            "0");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"router": {"kind": "soft"},
      "capacity_factor": 2}})")),
            "t.json:5:26: /moe/layers/5/capacity_factor: not used by router "
            "kind 'soft'");
  EXPECT_EQ(errorOf(withLayers(R"({"5": {"capacity_factor": {"train": 0}}})")),
            "t.json:4:102: /moe/layers/5/capacity_factor/train: must be > 0, "
            "got 0");
  // No layer left with a noisy token-choice router for the load loss.
  EXPECT_EQ(errorOf(withLayers(R"({"1": {"router": {"noise_std": 0}},
      "3": {"router": {"noise_std": 0}}, "5": {"router": {"noise_std": 0}}})",
                               R"("aux_loss": {"load": 0.01}, )")),
            "t.json:4:77: /moe/aux_loss/load: needs a token-choice router "
            "with noise_std > 0");
  // Every layer needs an expert per super-class.
  EXPECT_EQ(errorOf(withMoE(R"({"placement": {"rule": "last-n", "n": 2},
      "experts": 4, "router": {"kind": "per-image"},
      "super_class_map": [0, 1, 2, 3, 0, 1, 2, 3, 0, 1],
      "layers": {"3": {"experts": 3}}})")),
            "t.json:5:35: /moe/layers/3/experts: must be > the largest "
            "/moe/super_class_map entry (3), got 3");
}

TEST(SpecTest, DidYouMean) {
  EXPECT_EQ(
      errorOf(referenceWith(R"("noise_std": 1.0)", R"("nosie_std": 1.0)")),
      "t.json:26:7: /moe/router/nosie_std: unknown key, did you mean "
      "'noise_std'? (expected one of: kind, noise_std, iterations, "
      "slots_per_expert, batch_prioritized, input, gate, gate_dim, "
      "gate_scale, group_size, scope)");
  EXPECT_EQ(
      errorOf(referenceWith(R"("rule": "last-n")", R"("rule": "last_n")")),
      "t.json:19:15: /moe/placement/rule: unknown placement rule 'last_n', "
      "did you mean 'last-n'? (expected one of: every-n, last-n, blocks)");
  EXPECT_EQ(
      errorOf(referenceWith(R"("pooling": "cls")", R"("pooling": "CLS")")),
      "t.json:15:16: /model/pooling: unknown pooling 'CLS', did you "
      "mean 'cls'? (expected one of: cls, mean)");
  EXPECT_EQ(errorOf(R"({"name": "t", "extends": "vit-smal"})"),
            "t.json:1:26: /extends: unknown preset 'vit-smal', did you mean "
            "'vit-small'? (expected one of: vit-tiny, vit-small, vit-base)");
  // Far from every key: no guess.
  EXPECT_EQ(errorOf(referenceWith(R"("batch": 128)", R"("batch_size": 128)")),
            "t.json:49:5: /train/batch_size: unknown key (expected one of: "
            "optimizer, schedule, batch, epochs, label_smoothing, seed)");
}
