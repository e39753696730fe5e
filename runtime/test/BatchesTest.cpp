//===- BatchesTest.cpp - shuffled, augmented training batches -------------===//
//
// The expected orders and crop offsets below come from an independent
// re-implementation of the algorithm documented in Batches.h.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Batches.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>

using namespace moec::rt;
using namespace moec::rt::test;

namespace {

/// n images of c x h x w; pixel p of image i is 1000 i + p; label i % 7.
Dataset syntheticDataset(int64_t n, int64_t c, int64_t h, int64_t w) {
  Dataset data;
  data.n = n;
  data.channels = c;
  data.height = h;
  data.width = w;
  data.images.resize(size_t(n * c * h * w));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < c * h * w; ++p)
      data.images[size_t(i * c * h * w + p)] = float(1000 * i + p);
  for (int64_t i = 0; i < n; ++i)
    data.labels.push_back(int32_t(i % 7));
  data.classNames = {"0", "1", "2", "3", "4", "5", "6"};
  return data;
}

BatchIterator makeIterator(const Dataset &data, BatchOptions options = {}) {
  Expected<BatchIterator> it = BatchIterator::create(data, options);
  EXPECT_TRUE(it) << it.error().message();
  return std::move(*it);
}

std::vector<int64_t> orderOf(const Dataset &data, uint64_t seed,
                             int64_t epoch) {
  BatchIterator it = makeIterator(data);
  it.startEpoch(seed, epoch);
  return it.order();
}

/// Every batch of one epoch, images and labels concatenated.
struct Epoch {
  std::vector<float> images;
  std::vector<int32_t> labels;
  std::vector<int64_t> counts;
};

void drain(BatchIterator &it, int64_t batch, Epoch &out) {
  const int64_t size = it.dataset().imageSize();
  std::vector<float> images(size_t(batch * size));
  std::vector<int32_t> labels(static_cast<size_t>(batch));
  while (int64_t count = it.next(batch, images.data(), labels.data())) {
    out.counts.push_back(count);
    out.images.insert(out.images.end(), images.begin(),
                      images.begin() + count * size);
    out.labels.insert(out.labels.end(), labels.begin(), labels.begin() + count);
  }
}

bool bitwiseEqual(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void putBigEndian(std::vector<uint8_t> &out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(uint8_t(v >> shift));
}

} // namespace

TEST(Batches, EpochKeys) {
  // The shuffle key of (0, 0) is splitmix64's first output from state 0.
  EpochKeys keys = epochKeys(0, 0);
  EXPECT_EQ(keys.shuffle, 0xe220a8397b1dcdafULL);
  EXPECT_EQ(keys.augment, 0x6e789e6aa1b965f4ULL);
}

TEST(Batches, UniformBelowInRange) {
  Xoshiro256 rng(1);
  std::vector<int> histogram(5, 0);
  for (int i = 0; i < 5000; ++i) {
    uint64_t v = uniformBelow(rng, 5);
    ASSERT_LT(v, 5u);
    ++histogram[v];
  }
  for (int h : histogram) {
    EXPECT_GT(h, 850);
    EXPECT_LT(h, 1150);
  }
  EXPECT_EQ(uniformBelow(rng, 1), 0u);
}

TEST(Batches, ShuffleDeterministicPermutation) {
  Dataset data = syntheticDataset(10, 1, 2, 2);
  // Check values from the reference implementation.
  EXPECT_EQ(orderOf(data, 0, 0),
            (std::vector<int64_t>{5, 3, 8, 2, 0, 6, 7, 1, 4, 9}));
  EXPECT_EQ(orderOf(data, 42, 1),
            (std::vector<int64_t>{0, 6, 1, 7, 2, 3, 9, 5, 4, 8}));

  Dataset big = syntheticDataset(1000, 1, 1, 1);
  std::vector<int64_t> a = orderOf(big, 7, 3);
  EXPECT_EQ(a, orderOf(big, 7, 3)); // same seed and epoch: same order
  EXPECT_NE(a, orderOf(big, 7, 4)); // another epoch
  EXPECT_NE(a, orderOf(big, 8, 3)); // another seed
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> identity(1000);
  std::iota(identity.begin(), identity.end(), int64_t(0));
  EXPECT_EQ(sorted, identity); // a permutation
  EXPECT_NE(a, identity);

  BatchOptions inOrder;
  inOrder.shuffle = false;
  BatchIterator it = makeIterator(big, inOrder);
  it.startEpoch(7, 3);
  EXPECT_EQ(it.order(), identity);
}

TEST(Batches, ShortLastBatch) {
  Dataset data = syntheticDataset(10, 1, 2, 2);
  BatchIterator it = makeIterator(data);
  EXPECT_EQ(it.next(4, nullptr, nullptr), 0); // not started
  it.startEpoch(1, 0);
  EXPECT_EQ(it.batchesPerEpoch(4), 3);
  Epoch epoch;
  drain(it, 4, epoch);
  EXPECT_EQ(epoch.counts, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_TRUE(it.epochDone(4));
  EXPECT_EQ(it.next(4, nullptr, nullptr), 0);
  // The batches follow the order, images and labels alike.
  ASSERT_EQ(epoch.labels.size(), 10u);
  for (size_t k = 0; k < 10; ++k) {
    int64_t index = it.order()[k];
    EXPECT_EQ(epoch.labels[k], data.labels[size_t(index)]);
    for (int64_t p = 0; p < 4; ++p)
      EXPECT_EQ(epoch.images[k * 4 + size_t(p)],
                data.images[size_t(index * 4 + p)]);
  }

  BatchOptions drop;
  drop.dropLast = true;
  BatchIterator dropping = makeIterator(data, drop);
  dropping.startEpoch(1, 0);
  EXPECT_EQ(dropping.batchesPerEpoch(4), 2);
  Epoch dropped;
  drain(dropping, 4, dropped);
  EXPECT_EQ(dropped.counts, (std::vector<int64_t>{4, 4}));
  EXPECT_TRUE(dropping.epochDone(4));
  EXPECT_EQ(dropping.position(), 10);
  // Exact multiples lose nothing.
  dropping.startEpoch(1, 0);
  Epoch fives;
  drain(dropping, 5, fives);
  EXPECT_EQ(fives.counts, (std::vector<int64_t>{5, 5}));
}

TEST(Batches, CreateRejectsBadInput) {
  Dataset data = syntheticDataset(3, 1, 2, 2);
  data.labels.pop_back();
  Expected<BatchIterator> it = BatchIterator::create(data);
  ASSERT_FALSE(it);
  EXPECT_EQ(it.error().code(), ErrorCode::Argument);
  EXPECT_NE(it.error().message().find("2 labels for 3 images"),
            std::string::npos)
      << it.error().message();

  Dataset four = syntheticDataset(2, 4, 2, 2);
  BatchOptions crop;
  crop.augment.cropPadding = 1;
  EXPECT_FALSE(BatchIterator::create(four, crop));
  crop.augment.cropPadding = -1;
  EXPECT_FALSE(BatchIterator::create(syntheticDataset(2, 1, 2, 2), crop));
  BatchOptions zeroStd;
  zeroStd.augment.cropPadding = 1;
  zeroStd.normalization = {{0, 0, 0}, {0, 1, 1}};
  EXPECT_FALSE(BatchIterator::create(syntheticDataset(2, 1, 2, 2), zeroStd));
}

// A Fashion-MNIST file loaded by the real loader: 5 images of 3x3, pixel
// (y, x) of image i is 10 i + 3 y + x + 1 and image 4 is all zeros. With
// padding 1, seed 7, epoch 0, the reference gives per position (dy, dx,
// flip): 0: (0, 0, no), 1: (2, 0, no), 2: (1, 2, yes), 3: (2, 2, no).
TEST(Batches, CropAndFlipKnownPixels) {
  TempDir dir;
  std::vector<uint8_t> images, labels;
  putBigEndian(images, 2051);
  putBigEndian(images, 5);
  putBigEndian(images, 3);
  putBigEndian(images, 3);
  for (int i = 0; i < 5; ++i)
    for (int p = 0; p < 9; ++p)
      images.push_back(i == 4 ? 0 : uint8_t(10 * i + p + 1));
  putBigEndian(labels, 2049);
  putBigEndian(labels, 5);
  for (int i = 0; i < 5; ++i)
    labels.push_back(uint8_t(i));
  writeBytes(dir / "train-images-idx3-ubyte", images);
  writeBytes(dir / "train-labels-idx1-ubyte", labels);
  Expected<Dataset> data = loadFashionMnist(dir.path(), "train");
  ASSERT_TRUE(data) << data.error().message();

  BatchOptions options;
  options.shuffle = false;
  options.augment.cropPadding = 1;
  options.augment.horizontalFlip = true;
  options.normalization = normalizationFor("fashion-mnist");
  BatchIterator it = makeIterator(*data, options);
  it.startEpoch(7, 0);

  // The padding is exactly what a 0 pixel normalizes to.
  const float zero = data->images[4 * 9];
  EXPECT_EQ(std::memcmp(&zero, &data->images[4 * 9 + 8], sizeof(float)), 0);
  const float pad = it.padValue(0);
  EXPECT_EQ(std::memcmp(&pad, &zero, sizeof(float)), 0)
      << pad << " vs " << zero;
  EXPECT_NEAR(pad, -0.2860f / 0.3530f, 1e-6);

  auto a = [&](int i, int y, int x) {
    return data->images[size_t(i * 9 + y * 3 + x)];
  };
  const float P = pad;
  std::vector<std::vector<float>> expected = {
      // position 0: window at (0, 0) of the padded image
      {P, P, P, P, a(0, 0, 0), a(0, 0, 1), P, a(0, 1, 0), a(0, 1, 1)},
      // position 1: window at (2, 0)
      {P, a(1, 1, 0), a(1, 1, 1), P, a(1, 2, 0), a(1, 2, 1), P, P, P},
      // position 2: window at (1, 2), then mirrored
      {P, a(2, 0, 2), a(2, 0, 1), P, a(2, 1, 2), a(2, 1, 1), P, a(2, 2, 2),
       a(2, 2, 1)},
      // position 3: window at (2, 2)
      {a(3, 1, 1), a(3, 1, 2), P, a(3, 2, 1), a(3, 2, 2), P, P, P, P},
  };
  std::vector<float> batch(4 * 9);
  std::vector<int32_t> batchLabels(4);
  ASSERT_EQ(it.next(4, batch.data(), batchLabels.data()), 4);
  EXPECT_EQ(batchLabels, (std::vector<int32_t>{0, 1, 2, 3}));
  for (size_t k = 0; k < 4; ++k) {
    std::vector<float> got(batch.begin() + k * 9, batch.begin() + k * 9 + 9);
    EXPECT_TRUE(bitwiseEqual(got, expected[k])) << "position " << k;
  }
}

TEST(Batches, CropPadsEachChannelWithItsNormalizedZero) {
  // A CIFAR-10 record of zeros, loaded by the real loader, gives the
  // normalized zero of each channel.
  TempDir dir;
  std::vector<uint8_t> record(3073, 0);
  record[0] = 3;
  writeBytes(dir / "test_batch.bin", record);
  Expected<Dataset> zeros = loadCifar10(dir.path(), "test");
  ASSERT_TRUE(zeros) << zeros.error().message();

  Dataset data = syntheticDataset(1, 3, 4, 4);
  BatchOptions options;
  options.shuffle = false;
  options.augment.cropPadding = 4; // windows are mostly padding
  options.normalization = normalizationFor("cifar10");
  BatchIterator it = makeIterator(data, options);
  for (int64_t c = 0; c < 3; ++c) {
    float want = zeros->images[size_t(c * 1024)];
    float got = it.padValue(c);
    EXPECT_EQ(std::memcmp(&want, &got, sizeof(float)), 0) << "channel " << c;
  }
  // Over many epochs every crop offset shows up and the output is always a
  // shifted copy of the image with padding elsewhere.
  std::vector<int> seenDy(9, 0), seenDx(9, 0);
  std::vector<float> out(48);
  for (int64_t epoch = 0; epoch < 400; ++epoch) {
    it.startEpoch(11, epoch);
    ASSERT_EQ(it.next(1, out.data(), nullptr), 1);
    // Find the shift from any image pixel: value 1000*0 + c*16 + sy*4 + sx.
    int dy = -1, dx = -1;
    for (int64_t y = 0; y < 4 && dy < 0; ++y)
      for (int64_t x = 0; x < 4; ++x) {
        float v = out[size_t(y * 4 + x)];
        if (v >= 0 && v < 16 && v == float(int(v))) {
          int sy = int(v) / 4, sx = int(v) % 4;
          dy = int(sy - y + 4), dx = int(sx - x + 4);
          break;
        }
      }
    if (dy < 0) { // all padding: |shift| = 4 in some direction
      for (int64_t c = 0; c < 3; ++c)
        for (int64_t p = 0; p < 16; ++p)
          ASSERT_EQ(out[size_t(c * 16 + p)], it.padValue(c));
      continue;
    }
    ++seenDy[size_t(dy)];
    ++seenDx[size_t(dx)];
    for (int64_t c = 0; c < 3; ++c)
      for (int64_t y = 0; y < 4; ++y)
        for (int64_t x = 0; x < 4; ++x) {
          int64_t sy = y + dy - 4, sx = x + dx - 4;
          float want = sy < 0 || sy >= 4 || sx < 0 || sx >= 4
                           ? it.padValue(c)
                           : float(c * 16 + sy * 4 + sx);
          ASSERT_EQ(out[size_t(c * 16 + y * 4 + x)], want);
        }
  }
  for (int d = 1; d < 8; ++d) {
    EXPECT_GT(seenDy[size_t(d)], 0) << d;
    EXPECT_GT(seenDx[size_t(d)], 0) << d;
  }
}

TEST(Batches, FlipIsAFairCoinAndMirrors) {
  Dataset data = syntheticDataset(2000, 1, 2, 3);
  BatchOptions options;
  options.augment.horizontalFlip = true;
  BatchIterator it = makeIterator(data, options);
  it.startEpoch(5, 2);
  std::vector<float> out(6);
  int flipped = 0;
  for (int64_t k = 0; k < data.n; ++k) {
    ASSERT_EQ(it.next(1, out.data(), nullptr), 1);
    float base = float(1000 * it.order()[size_t(k)]);
    std::vector<float> plain = {base,     base + 1, base + 2,
                                base + 3, base + 4, base + 5};
    std::vector<float> mirror = {base + 2, base + 1, base,
                                 base + 5, base + 4, base + 3};
    if (out == mirror)
      ++flipped;
    else
      ASSERT_EQ(out, plain);
  }
  EXPECT_GT(flipped, 900);
  EXPECT_LT(flipped, 1100);
}

TEST(Batches, AugmentationIndependentOfBatchSize) {
  Dataset data = syntheticDataset(23, 2, 4, 4);
  BatchOptions options;
  options.augment.cropPadding = 2;
  options.augment.horizontalFlip = true;
  BatchIterator a = makeIterator(data, options),
                b = makeIterator(data, options);
  a.startEpoch(3, 1);
  b.startEpoch(3, 1);
  Epoch byThree, bySeven;
  drain(a, 3, byThree);
  drain(b, 7, bySeven);
  EXPECT_TRUE(bitwiseEqual(byThree.images, bySeven.images));
  EXPECT_EQ(byThree.labels, bySeven.labels);
}

TEST(Batches, ResumeReproducesBitwise) {
  Dataset data = syntheticDataset(23, 1, 4, 4);
  BatchOptions options;
  options.augment.cropPadding = 1;
  options.augment.horizontalFlip = true;
  options.normalization = normalizationFor("fashion-mnist");
  const uint64_t seed = 1234;
  const int64_t batch = 5;

  // Uninterrupted: epochs 0 and 1.
  BatchIterator straight = makeIterator(data, options);
  Epoch full;
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    straight.startEpoch(seed, epoch);
    drain(straight, batch, full);
  }

  for (int64_t stopAfter : {0, 2, 4, 5, 7}) {
    // Interrupted after `stopAfter` batches (5 per epoch), state saved as
    // words, restored into a fresh iterator.
    BatchIterator first = makeIterator(data, options);
    Epoch resumed;
    std::vector<float> images(size_t(batch * 16));
    std::vector<int32_t> labels(static_cast<size_t>(batch));
    int64_t epoch = 0, done = 0;
    first.startEpoch(seed, epoch);
    while (done < stopAfter) {
      if (first.epochDone(batch))
        first.startEpoch(seed, ++epoch);
      int64_t count = first.next(batch, images.data(), labels.data());
      resumed.images.insert(resumed.images.end(), images.begin(),
                            images.begin() + count * 16);
      resumed.labels.insert(resumed.labels.end(), labels.begin(),
                            labels.begin() + count);
      ++done;
    }
    std::vector<uint64_t> words = first.state().toWords();
    Expected<BatchIteratorState> state = BatchIteratorState::fromWords(words);
    ASSERT_TRUE(state) << state.error().message();

    BatchIterator second = makeIterator(data, options);
    ASSERT_FALSE(second.restore(*state));
    EXPECT_EQ(second.epoch(), state->epoch);
    EXPECT_EQ(second.position(), state->position);
    epoch = second.epoch();
    for (;;) {
      drain(second, batch, resumed);
      if (epoch == 1)
        break;
      second.startEpoch(seed, ++epoch);
    }
    EXPECT_TRUE(bitwiseEqual(resumed.images, full.images))
        << "stopped after " << stopAfter;
    EXPECT_EQ(resumed.labels, full.labels);
  }
}

TEST(Batches, RestoreChecksState) {
  Dataset data = syntheticDataset(10, 1, 2, 2);
  BatchOptions crop;
  crop.augment.cropPadding = 1;
  BatchIterator it = makeIterator(data, crop);
  it.startEpoch(9, 2);
  it.next(3, nullptr, nullptr);
  BatchIteratorState state = it.state();
  EXPECT_EQ(state.seed, 9u);
  EXPECT_EQ(state.epoch, 2);
  EXPECT_EQ(state.position, 3);

  // Other options or another dataset size: refused.
  BatchIterator plain = makeIterator(data);
  Error e = plain.restore(state);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Argument);
  Dataset other = syntheticDataset(11, 1, 2, 2);
  BatchIterator larger = makeIterator(other, crop);
  EXPECT_TRUE(static_cast<bool>(larger.restore(state)));

  BatchIteratorState beyond = state;
  beyond.position = 11;
  EXPECT_TRUE(static_cast<bool>(makeIterator(data, crop).restore(beyond)));

  std::vector<uint64_t> words = state.toWords();
  EXPECT_EQ(words.size(), 5u);
  EXPECT_EQ(words[0], kBatchStateTag);
  words[0] ^= 1;
  EXPECT_FALSE(BatchIteratorState::fromWords(words));
  words.pop_back();
  EXPECT_FALSE(BatchIteratorState::fromWords(words));
}
