//===- Batches.h - shuffled, augmented training batches ---------*- C++ -*-===//
//
// A BatchIterator walks a Dataset one epoch at a time, in an order shuffled
// per (seed, epoch), and fills caller-owned batch buffers, optionally with
// random-crop and horizontal-flip augmentation. Everything is a pure
// function of (seed, epoch, position), so a run restored from state()
// continues bitwise identically:
//
//   mix        = seed XOR (uint64(epoch) * 0x9e3779b97f4a7c15)
//   shuffleKey = splitmix64(mix)        (first output from state `mix`)
//   augmentKey = splitmix64(mix)        (second output)
//
//   order      Fisher-Yates with Xoshiro256(shuffleKey): for i = n-1 down
//              to 1, j = uniform in [0, i], swap(order[i], order[j]);
//              uniform in [0, b) is Lemire's multiply-shift with rejection
//              on the 64-bit outputs.
//   augment    the image at position p of the epoch draws from its own
//              Xoshiro256(augmentKey XOR (uint64(p) * 0xd1b54a32d192ed03)):
//              with crop padding P > 0, first dy then dx, each uniform in
//              [0, 2P]; then, with flipping on, one uniform double (flip
//              when < 0.5).
//
// The per-position augmentation stream (counter-based rather than one
// sequential stream) makes a sample's augmentation independent of the batch
// sizes used to reach it, and makes the iterator's whole state (seed,
// epoch, position): there is no hidden generator state to save.
//
// Random crop: the normalized image is padded by P pixels on every side
// with the value a 0 pixel normalizes to, (0 - mean[c]) / std[c] per
// channel, and the H x W window at (dy, dx) of the padded image is taken.
// Flip mirrors the (cropped) image left to right.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_BATCHES_H
#define MOEC_RUNTIME_BATCHES_H

#include "moec/Runtime/Data.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/Weights.h"

#include <cstdint>
#include <vector>

namespace moec::rt {

struct AugmentOptions {
  /// Random-crop padding P in pixels; 0 disables the crop.
  int64_t cropPadding = 0;
  /// Mirror each image left to right with probability 0.5.
  bool horizontalFlip = false;

  bool enabled() const { return cropPadding > 0 || horizontalFlip; }
};

struct BatchOptions {
  /// Shuffle the order each epoch; false walks the dataset in file order.
  bool shuffle = true;
  /// Drop the last batch of an epoch when it would be short.
  bool dropLast = false;
  AugmentOptions augment;
  /// The dataset's normalization, for the crop padding value; channels
  /// beyond 3 are not supported.
  Normalization normalization = {{0, 0, 0}, {1, 1, 1}};
};

/// Where a BatchIterator stands. `fingerprint` identifies the dataset size
/// and the options that change the stream, so restoring into an iterator
/// that would produce different batches is an error.
struct BatchIteratorState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t position = 0;
  uint64_t fingerprint = 0;

  /// {kBatchStateTag, seed, epoch, position, fingerprint}: for
  /// TrainState::rngState.
  std::vector<uint64_t> toWords() const;
  /// The inverse of toWords(); Argument errors for a wrong size or tag.
  static Expected<BatchIteratorState>
  fromWords(const std::vector<uint64_t> &words);
};

/// The first word of BatchIteratorState::toWords() ("moecbat1").
constexpr uint64_t kBatchStateTag = 0x6d6f656362617431ULL;

class BatchIterator {
public:
  /// An iterator over `data`, which must outlive it and not change. Argument
  /// errors for a dataset whose sizes disagree, a negative padding, or (with
  /// a crop) more than 3 channels or a zero or non-finite normalization.
  static Expected<BatchIterator> create(const Dataset &data,
                                        BatchOptions options = {});

  /// Begins epoch `epoch` of the run seeded `seed`: computes its order and
  /// rewinds to position 0.
  void startEpoch(uint64_t seed, int64_t epoch);

  /// Fills the next min(batch, remaining) images (NCHW floats) and labels
  /// and returns how many; 0 once the epoch is done (or before the first
  /// startEpoch, or for batch <= 0). With dropLast, a short final batch is
  /// not returned (0, and the epoch is done). `images` holds batch x
  /// C x H x W floats and `labels` batch ints; either may be null to skip.
  int64_t next(int64_t batch, float *images, int32_t *labels);

  /// Whether next() would return 0 for this batch size.
  bool epochDone(int64_t batch) const;
  /// Batches per epoch for `batch` (the short one counted unless dropLast).
  int64_t batchesPerEpoch(int64_t batch) const;

  BatchIteratorState state() const;
  /// Continues from `state`: recomputes that epoch's order and seeks to its
  /// position. Argument errors when the fingerprint does not match this
  /// iterator's dataset and options or the position is out of range.
  Error restore(const BatchIteratorState &state);

  /// The dataset index of each position of the current epoch.
  const std::vector<int64_t> &order() const { return order_; }
  const Dataset &dataset() const { return *data_; }
  const BatchOptions &options() const { return options_; }
  int64_t epoch() const { return epoch_; }
  int64_t position() const { return position_; }
  bool started() const { return started_; }
  /// The value a 0 pixel of channel c normalizes to (the crop padding).
  float padValue(int64_t c) const { return pad_[c]; }

  /// Writes the augmented image of dataset index `index` at epoch position
  /// `position` to `out` (C x H x W floats). next() uses this; exposed for
  /// tests and tools.
  void fillImage(int64_t index, int64_t position, float *out) const;

private:
  BatchIterator(const Dataset &data, BatchOptions options);
  uint64_t fingerprint() const;

  const Dataset *data_;
  BatchOptions options_;
  float pad_[3] = {0, 0, 0};
  std::vector<int64_t> order_;
  uint64_t seed_ = 0;
  uint64_t augmentKey_ = 0;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  bool started_ = false;
};

/// The two per-epoch keys of the header comment (exposed for tests).
struct EpochKeys {
  uint64_t shuffle, augment;
};
EpochKeys epochKeys(uint64_t seed, int64_t epoch);

/// A uniform integer in [0, bound) from `rng` (Lemire, unbiased); bound > 0.
uint64_t uniformBelow(Xoshiro256 &rng, uint64_t bound);

} // namespace moec::rt

#endif // MOEC_RUNTIME_BATCHES_H
