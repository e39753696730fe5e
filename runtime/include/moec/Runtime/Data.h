//===- Data.h - evaluation datasets -----------------------------*- C++ -*-===//
//
// Loaders for the datasets a manifest can name. Each returns normalized
// float images in NCHW order: x = (pixel / 255 - mean[c]) / std[c] with
//
//   fashion-mnist  mean 0.2860                    std 0.3530
//   cifar10        mean (0.4914, 0.4822, 0.4465)  std (0.2470, 0.2435, 0.2616)
//   image-folder   mean 0.5 per channel           std 0.5 per channel
//
// (artifact::datasetNormalization). A loader given a Normalization applies
// it instead: a model's data is normalized as the model was trained
// (modelNormalization in Evaluate.h).
//
// Malformed or unreadable files give Data (or Io) errors naming the file.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_DATA_H
#define MOEC_RUNTIME_DATA_H

#include "moec/Runtime/Error.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace moec::rt {

struct Dataset {
  int64_t n = 0;
  int64_t channels = 0, height = 0, width = 0;
  /// n x channels x height x width normalized floats.
  std::vector<float> images;
  /// n labels in [0, classNames.size()), or -1 for an image without one
  /// (an unlabeled image folder).
  std::vector<int32_t> labels;
  std::vector<std::string> classNames;
  /// Image folders: each image's file; empty for the other kinds.
  std::vector<std::string> files;

  /// Whether every image has a label.
  bool labeled() const {
    return std::all_of(labels.begin(), labels.end(),
                       [](int32_t l) { return l >= 0; });
  }

  int64_t imageSize() const { return channels * height * width; }
};

/// Per-channel normalization constants (one-channel data uses element 0).
struct Normalization {
  float mean[3];
  float std[3];
};
/// The constants of dataset kind `kind` ("fashion-mnist", "cifar10",
/// "image-folder"); image-folder's apply to every channel.
Normalization normalizationFor(const std::string &kind);

/// The class names of dataset kind `kind` (Fashion-MNIST's, CIFAR-10's);
/// empty for image-folder and unknown kinds.
std::vector<std::string> datasetClassNames(const std::string &kind);

/// A negative limit loads every image; otherwise at most `limit` (the
/// first ones, in file order).
constexpr int64_t kNoLimit = -1;

/// Fashion-MNIST IDX files in `dir`: {train,t10k}-{images-idx3,labels-idx1}
/// -ubyte, gzipped (".gz", preferred when both exist) or raw. `split` is
/// "train" or "test".
Expected<Dataset> loadFashionMnist(const std::string &dir,
                                   const std::string &split,
                                   int64_t limit = kNoLimit,
                                   const Normalization *norm = nullptr);

/// CIFAR-10 binary batches in `dir` (or `dir`/cifar-10-batches-bin):
/// data_batch_1..5.bin for "train", test_batch.bin for "test"; 3073-byte
/// records (label byte, 1024 R, 1024 G, 1024 B).
Expected<Dataset> loadCifar10(const std::string &dir, const std::string &split,
                              int64_t limit = kNoLimit,
                              const Normalization *norm = nullptr);

/// PNG images in `dir`/<class>/*.png, classes sorted by folder name, files
/// by name. Gray, RGB, RGBA and palette images are converted to `channels`
/// (1: luma 0.299 R + 0.587 G + 0.114 B; 3: RGB; alpha is dropped); every
/// image must be `height` x `width`. With `allowUnlabeled`, a `dir`
/// without class folders but with PNGs directly in it is read as unlabeled
/// images (labels -1, no class names).
Expected<Dataset> loadImageFolder(const std::string &dir, int64_t channels,
                                  int64_t height, int64_t width,
                                  int64_t limit = kNoLimit,
                                  const Normalization *norm = nullptr,
                                  bool allowUnlabeled = false);

/// Dispatches on `kind`; for image-folder, `split` is unused and the image
/// geometry comes from channels/height/width.
Expected<Dataset> loadDataset(const std::string &kind, const std::string &dir,
                              const std::string &split, int64_t channels,
                              int64_t height, int64_t width,
                              int64_t limit = kNoLimit,
                              const Normalization *norm = nullptr,
                              bool allowUnlabeled = false);

} // namespace moec::rt

#endif // MOEC_RUNTIME_DATA_H
