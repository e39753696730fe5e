//===- Batches.cpp - shuffled, augmented training batches -----------------===//

#include "moec/Runtime/Batches.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

namespace moec::rt {

static constexpr uint64_t kEpochMix = 0x9e3779b97f4a7c15ULL;
static constexpr uint64_t kPositionMix = 0xd1b54a32d192ed03ULL;

EpochKeys epochKeys(uint64_t seed, int64_t epoch) {
  uint64_t state = seed ^ (static_cast<uint64_t>(epoch) * kEpochMix);
  EpochKeys keys;
  keys.shuffle = splitmix64(state);
  keys.augment = splitmix64(state);
  return keys;
}

uint64_t uniformBelow(Xoshiro256 &rng, uint64_t bound) {
  // Lemire, "Fast Random Integer Generation in an Interval" (2019).
  unsigned __int128 m = static_cast<unsigned __int128>(rng.next()) *
                        static_cast<unsigned __int128>(bound);
  uint64_t low = static_cast<uint64_t>(m);
  if (low < bound) {
    const uint64_t threshold = (0 - bound) % bound;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(rng.next()) * bound;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

//===----------------------------------------------------------------------===//
// BatchIteratorState
//===----------------------------------------------------------------------===//

std::vector<uint64_t> BatchIteratorState::toWords() const {
  return {kBatchStateTag, seed, static_cast<uint64_t>(epoch),
          static_cast<uint64_t>(position), fingerprint};
}

Expected<BatchIteratorState>
BatchIteratorState::fromWords(const std::vector<uint64_t> &words) {
  if (words.size() != 5)
    return makeError(ErrorCode::Argument, "batch iterator state has ",
                     words.size(), " words (expected 5)");
  if (words[0] != kBatchStateTag)
    return makeError(ErrorCode::Argument,
                     "batch iterator state does not start with its tag");
  BatchIteratorState state;
  state.seed = words[1];
  state.epoch = static_cast<int64_t>(words[2]);
  state.position = static_cast<int64_t>(words[3]);
  state.fingerprint = words[4];
  return state;
}

//===----------------------------------------------------------------------===//
// BatchIterator
//===----------------------------------------------------------------------===//

Expected<BatchIterator> BatchIterator::create(const Dataset &data,
                                              BatchOptions options) {
  auto fail = [](const auto &...args) {
    return makeError(ErrorCode::Argument, "batch iterator: ", args...);
  };
  if (data.n < 0 || data.channels <= 0 || data.height <= 0 || data.width <= 0)
    return fail("bad dataset geometry (n ", data.n, ", ", data.channels, "x",
                data.height, "x", data.width, ")");
  if (data.images.size() != static_cast<size_t>(data.n * data.imageSize()))
    return fail("the dataset has ", data.images.size(), " floats of images, ",
                data.n, " images of ", data.imageSize(), " need ",
                data.n * data.imageSize());
  if (data.labels.size() != static_cast<size_t>(data.n))
    return fail("the dataset has ", data.labels.size(), " labels for ", data.n,
                " images");
  if (options.augment.cropPadding < 0)
    return fail("negative crop padding ", options.augment.cropPadding);
  if (options.augment.cropPadding > 0) {
    if (data.channels > 3)
      return fail("random crop supports at most 3 channels, the dataset has ",
                  data.channels);
    for (int64_t c = 0; c < data.channels; ++c)
      if (!std::isfinite(options.normalization.std[c]) ||
          options.normalization.std[c] == 0 ||
          !std::isfinite(options.normalization.mean[c]))
        return fail("bad normalization for channel ", c, " (mean ",
                    options.normalization.mean[c], ", std ",
                    options.normalization.std[c], ")");
  }
  return BatchIterator(data, options);
}

BatchIterator::BatchIterator(const Dataset &data, BatchOptions options)
    : data_(&data), options_(options) {
  if (options_.augment.cropPadding > 0)
    for (int64_t c = 0; c < data.channels; ++c) {
      // Exactly what Data.cpp computes for a 0 pixel.
      const Normalization &norm = options_.normalization;
      pad_[c] = (0.0f / 255.0f - norm.mean[c]) * (1.0f / norm.std[c]);
    }
}

uint64_t BatchIterator::fingerprint() const {
  const uint64_t fields[] = {
      static_cast<uint64_t>(data_->n),
      static_cast<uint64_t>(data_->channels),
      static_cast<uint64_t>(data_->height),
      static_cast<uint64_t>(data_->width),
      options_.shuffle ? 1u : 0u,
      static_cast<uint64_t>(options_.augment.cropPadding),
      options_.augment.horizontalFlip ? 1u : 0u};
  uint64_t hash = 0x6d6f6563ULL;
  for (uint64_t field : fields) {
    uint64_t state = hash ^ field;
    hash = splitmix64(state);
  }
  return hash;
}

void BatchIterator::startEpoch(uint64_t seed, int64_t epoch) {
  EpochKeys keys = epochKeys(seed, epoch);
  seed_ = seed;
  epoch_ = epoch;
  augmentKey_ = keys.augment;
  position_ = 0;
  started_ = true;
  order_.resize(static_cast<size_t>(data_->n));
  std::iota(order_.begin(), order_.end(), int64_t(0));
  if (!options_.shuffle)
    return;
  Xoshiro256 rng(keys.shuffle);
  for (int64_t i = data_->n - 1; i > 0; --i) {
    int64_t j = static_cast<int64_t>(uniformBelow(rng, uint64_t(i) + 1));
    std::swap(order_[size_t(i)], order_[size_t(j)]);
  }
}

void BatchIterator::fillImage(int64_t index, int64_t position,
                              float *out) const {
  const int64_t C = data_->channels, H = data_->height, W = data_->width;
  const float *src = data_->images.data() + index * data_->imageSize();
  const AugmentOptions &aug = options_.augment;
  if (!aug.enabled()) {
    std::memcpy(out, src, sizeof(float) * size_t(C * H * W));
    return;
  }
  Xoshiro256 rng(augmentKey_ ^
                 (static_cast<uint64_t>(position) * kPositionMix));
  const int64_t P = aug.cropPadding;
  int64_t dy = 0, dx = 0; // window origin in the padded image
  if (P > 0) {
    dy = static_cast<int64_t>(uniformBelow(rng, uint64_t(2 * P + 1)));
    dx = static_cast<int64_t>(uniformBelow(rng, uint64_t(2 * P + 1)));
  }
  const bool flip = aug.horizontalFlip && rng.uniform() < 0.5;
  for (int64_t c = 0; c < C; ++c) {
    const float pad = P > 0 ? pad_[c] : 0.0f;
    for (int64_t y = 0; y < H; ++y) {
      float *row = out + (c * H + y) * W;
      const int64_t sy = y + dy - P;
      if (sy < 0 || sy >= H) {
        std::fill(row, row + W, pad);
        continue;
      }
      const float *srcRow = src + (c * H + sy) * W;
      for (int64_t x = 0; x < W; ++x) {
        // Output column x shows cropped column (flip ? W-1-x : x).
        const int64_t sx = (flip ? W - 1 - x : x) + dx - P;
        row[x] = sx < 0 || sx >= W ? pad : srcRow[sx];
      }
    }
  }
}

int64_t BatchIterator::next(int64_t batch, float *images, int32_t *labels) {
  if (!started_ || batch <= 0)
    return 0;
  const int64_t remaining = data_->n - position_;
  int64_t count = std::min(batch, remaining);
  if (count <= 0)
    return 0;
  if (options_.dropLast && count < batch) {
    position_ = data_->n;
    return 0;
  }
  const int64_t size = data_->imageSize();
  for (int64_t i = 0; i < count; ++i) {
    const int64_t position = position_ + i;
    const int64_t index = order_[size_t(position)];
    if (images)
      fillImage(index, position, images + i * size);
    if (labels)
      labels[i] = data_->labels[size_t(index)];
  }
  position_ += count;
  return count;
}

bool BatchIterator::epochDone(int64_t batch) const {
  if (!started_ || batch <= 0)
    return true;
  const int64_t remaining = data_->n - position_;
  return remaining <= 0 || (options_.dropLast && remaining < batch);
}

int64_t BatchIterator::batchesPerEpoch(int64_t batch) const {
  if (batch <= 0)
    return 0;
  return options_.dropLast ? data_->n / batch : (data_->n + batch - 1) / batch;
}

BatchIteratorState BatchIterator::state() const {
  BatchIteratorState state;
  state.seed = seed_;
  state.epoch = epoch_;
  state.position = position_;
  state.fingerprint = fingerprint();
  return state;
}

Error BatchIterator::restore(const BatchIteratorState &state) {
  if (state.fingerprint != fingerprint())
    return makeError(ErrorCode::Argument,
                     "batch iterator state is for another dataset size or "
                     "other shuffle/augmentation options");
  if (state.position < 0 || state.position > data_->n)
    return makeError(ErrorCode::Argument, "batch iterator state position ",
                     state.position, " is outside the epoch (0..", data_->n,
                     ")");
  startEpoch(state.seed, state.epoch);
  position_ = state.position;
  return Error::success();
}

} // namespace moec::rt
