//===- SpecTestUtil.h - Helpers for the spec parser tests -------*- C++ -*-===//
//
// Spec texts and parse helpers shared by SpecTest.cpp and
// SpecLayersTest.cpp.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TEST_UNITTESTS_SPECTESTUTIL_H
#define MOEC_TEST_UNITTESTS_SPECTESTUTIL_H

#include "moec/Frontend/Spec.h"

#include <gtest/gtest.h>

#include <string>

namespace moec::spec::spectest {

inline ParseResult parse(const std::string &text) {
  return parseSpec(text, "t.json");
}

/// The error string for `text`, or "<parsed>" when it parses.
inline std::string errorOf(const std::string &text) {
  ParseResult result = parse(text);
  if (result)
    return "<parsed>";
  return result.error->str();
}

/// Parses `text`, failing the test (with the error) if it does not parse.
inline Spec parseOk(const std::string &text) {
  ParseResult result = parse(text);
  EXPECT_TRUE(result) << (result.error ? result.error->str() : "");
  return result ? *result.spec : Spec();
}

/// A valid Fashion-MNIST model (depth 6) with the given extra top-level
/// members, e.g. R"("moe": {...})".
inline std::string fmnist(const std::string &extra = "", int depth = 6) {
  std::string text = R"({"name": "t", "model": {"input": {"channels": 1,
      "height": 28, "width": 28}, "patch_size": 4, "width": 64, "depth": )" +
                     std::to_string(depth) + R"(, "heads": 4, "classes": 10})";
  if (!extra.empty())
    text += ", " + extra;
  return text + "}";
}

/// fmnist() with a "moe" section.
inline std::string withMoE(const std::string &moe, int depth = 6) {
  return fmnist(R"("moe": )" + moe, depth);
}

inline const char *const kReference = R"({
  "name": "vimoe-tiny-fmnist",
  "model": {
    "input": {
      "channels": 1,
      "height": 28,
      "width": 28
    },
    "patch_size": 4,
    "width": 64,
    "depth": 6,
    "heads": 4,
    "mlp_ratio": 2,
    "classes": 10,
    "pooling": "cls"
  },
  "moe": {
    "placement": {
      "rule": "last-n",
      "n": 2
    },
    "experts": 4,
    "top_k": 2,
    "router": {
      "kind": "token-choice",
      "noise_std": 1.0
    },
    "capacity_factor": {
      "train": 1.25,
      "eval": 2.0
    },
    "shared_expert": false,
    "aux_loss": {
      "importance": 0.005,
      "load": 0.005
    }
  },
  "train": {
    "optimizer": {
      "kind": "adamw",
      "lr": 0.001,
      "weight_decay": 0.05,
      "grad_clip": 1.0
    },
    "schedule": {
      "kind": "cosine",
      "warmup_epochs": 2
    },
    "batch": 128,
    "epochs": 25,
    "label_smoothing": 0.1,
    "seed": 0
  },
  "data": {
    "dataset": "fashion-mnist",
    "path": "/usr/share/datasets/fashion-mnist",
    "augment": {
      "crop_padding": 2,
      "horizontal_flip": true
    }
  }
}
)";

/// kReference with the first occurrence of `from` replaced by `to`.
inline std::string referenceWith(const std::string &from,
                                 const std::string &to) {
  std::string text = kReference;
  std::size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos)
    text.replace(at, from.size(), to);
  return text;
}

} // namespace moec::spec::spectest

#endif // MOEC_TEST_UNITTESTS_SPECTESTUTIL_H
