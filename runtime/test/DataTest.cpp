//===- DataTest.cpp - dataset loaders -------------------------------------===//

#include "moec/Runtime/Data.h"

#include "TestUtil.h"

#include <gtest/gtest.h>
#include <png.h>
#include <zlib.h>

#include <cmath>

using namespace moec::rt;
using namespace moec::rt::test;

namespace {

void putBigEndian(std::vector<uint8_t> &out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(uint8_t(v >> shift));
}

std::vector<uint8_t> idxImages(uint32_t n, uint32_t rows, uint32_t cols,
                               uint32_t magic = 2051) {
  std::vector<uint8_t> out;
  putBigEndian(out, magic);
  putBigEndian(out, n);
  putBigEndian(out, rows);
  putBigEndian(out, cols);
  for (uint32_t i = 0; i < n * rows * cols; ++i)
    out.push_back(uint8_t(i * 7 % 256));
  return out;
}

std::vector<uint8_t> idxLabels(uint32_t n, uint32_t magic = 2049) {
  std::vector<uint8_t> out;
  putBigEndian(out, magic);
  putBigEndian(out, n);
  for (uint32_t i = 0; i < n; ++i)
    out.push_back(uint8_t(i % 10));
  return out;
}

void writeGz(const std::string &path, const std::vector<uint8_t> &bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())),
            int(bytes.size()));
  gzclose(f);
}

float fmnist(uint8_t p) { return (p / 255.0f - 0.2860f) / 0.3530f; }

TEST(Data, FashionMnistGzip) {
  TempDir dir;
  writeGz(dir / "t10k-images-idx3-ubyte.gz", idxImages(5, 3, 4));
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", idxLabels(5));
  Expected<Dataset> data = loadFashionMnist(dir.path(), "test");
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->n, 5);
  EXPECT_EQ(data->channels, 1);
  EXPECT_EQ(data->height, 3);
  EXPECT_EQ(data->width, 4);
  ASSERT_EQ(data->images.size(), 60u);
  for (uint32_t i = 0; i < 60; ++i)
    EXPECT_FLOAT_EQ(data->images[i], fmnist(uint8_t(i * 7 % 256)));
  EXPECT_EQ(data->labels, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(data->classNames.size(), 10u);
  EXPECT_EQ(data->classNames[9], "Ankle boot");

  Expected<Dataset> limited = loadFashionMnist(dir.path(), "test", 2);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->n, 2);
  EXPECT_EQ(limited->images.size(), 24u);
}

TEST(Data, FashionMnistRaw) {
  TempDir dir;
  writeBytes(dir / "train-images-idx3-ubyte", idxImages(4, 2, 2));
  writeBytes(dir / "train-labels-idx1-ubyte", idxLabels(4));
  Expected<Dataset> data = loadFashionMnist(dir.path(), "train");
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->n, 4);
  EXPECT_FLOAT_EQ(data->images[1], fmnist(7));

  // The .gz file wins when both exist.
  writeGz(dir / "train-images-idx3-ubyte.gz", idxImages(4, 2, 2, 1234));
  data = loadFashionMnist(dir.path(), "train");
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().code(), ErrorCode::Data);
  EXPECT_EQ(data.error().message(),
            dir / "train-images-idx3-ubyte.gz: bad magic 1234 (expected 2051)");
}

TEST(Data, FashionMnistErrors) {
  TempDir dir;
  auto error = [&](const char *split = "test") {
    Expected<Dataset> data = loadFashionMnist(dir.path(), split);
    EXPECT_FALSE(data);
    return data ? std::string() : data.error().message();
  };
  EXPECT_EQ(error(), dir.path() + ": no Fashion-MNIST test images (neither "
                                  "t10k-images-idx3-ubyte.gz nor "
                                  "t10k-images-idx3-ubyte exists)");
  writeGz(dir / "t10k-images-idx3-ubyte.gz", idxImages(5, 3, 4));
  EXPECT_EQ(error(), dir.path() + ": no Fashion-MNIST test labels (neither "
                                  "t10k-labels-idx1-ubyte.gz nor "
                                  "t10k-labels-idx1-ubyte exists)");
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", idxLabels(5, 2051));
  EXPECT_EQ(error(), dir / "t10k-labels-idx1-ubyte.gz: bad magic 2051 "
                           "(expected 2049)");
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", idxLabels(6));
  EXPECT_EQ(error(), dir / "t10k-labels-idx1-ubyte.gz: has 6 labels, but " +
                         dir / "t10k-images-idx3-ubyte.gz has 5 images");
  std::vector<uint8_t> images = idxImages(5, 3, 4);
  images.resize(images.size() - 10);
  writeGz(dir / "t10k-images-idx3-ubyte.gz", images);
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", idxLabels(5));
  EXPECT_EQ(error(), dir / "t10k-images-idx3-ubyte.gz: truncated (expected "
                           "60 bytes of pixels, got 50)");
  // A header claiming far more images than the file holds.
  images = idxImages(5, 3, 4);
  images[4] = 0x3b; // 1'000'000'000 images
  images[5] = 0x9a;
  images[6] = 0xca;
  images[7] = 0x00;
  std::vector<uint8_t> manyLabels = idxLabels(0);
  std::copy(images.begin() + 4, images.begin() + 8, manyLabels.begin() + 4);
  writeGz(dir / "t10k-images-idx3-ubyte.gz", images);
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", manyLabels);
  EXPECT_EQ(error(), dir / "t10k-images-idx3-ubyte.gz: truncated (expected "
                           "12000000000 bytes of pixels, got 60)");
  // Large images too (found by the idx fuzzer: 196608 images of 1024 x 768
  // made the first 4096-image slice a 3 GiB allocation).
  images = idxImages(1, 1024, 768);
  images.resize(16 + 100);
  images[4] = 0x00;
  images[5] = 0x03;
  images[6] = 0x00;
  images[7] = 0x00;
  manyLabels = idxLabels(0);
  std::copy(images.begin() + 4, images.begin() + 8, manyLabels.begin() + 4);
  writeGz(dir / "t10k-images-idx3-ubyte.gz", images);
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", manyLabels);
  EXPECT_EQ(error(), dir / "t10k-images-idx3-ubyte.gz: truncated (expected "
                           "154618822656 bytes of pixels, got 100)");
  std::vector<uint8_t> labels = idxLabels(5);
  labels.back() = 10;
  writeGz(dir / "t10k-images-idx3-ubyte.gz", idxImages(5, 3, 4));
  writeGz(dir / "t10k-labels-idx1-ubyte.gz", labels);
  EXPECT_EQ(error(), dir / "t10k-labels-idx1-ubyte.gz: label 4 is 10 "
                           "(expected 0..9)");
  // A corrupt gzip stream.
  std::vector<uint8_t> gz = readBytes(dir / "t10k-images-idx3-ubyte.gz");
  for (size_t i = 12; i < gz.size() - 8; ++i)
    gz[i] ^= 0x5a;
  writeBytes(dir / "t10k-images-idx3-ubyte.gz", gz);
  EXPECT_EQ(error().rfind(dir / "t10k-images-idx3-ubyte.gz: ", 0), 0u);

  EXPECT_EQ(error("valid"), "unknown split 'valid' (expected train or test)");
  Expected<Dataset> missing = loadFashionMnist(dir / "nope", "test");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().message(), dir / "nope: no such directory");
}

std::vector<uint8_t> cifarRecords(int n, int labelBase) {
  std::vector<uint8_t> out;
  for (int r = 0; r < n; ++r) {
    out.push_back(uint8_t((labelBase + r) % 10));
    for (int i = 0; i < 3072; ++i)
      out.push_back(uint8_t((i / 1024) * 100 + r));
  }
  return out;
}

TEST(Data, Cifar10) {
  TempDir dir;
  writeBytes(dir / "test_batch.bin", cifarRecords(3, 0));
  Expected<Dataset> data = loadCifar10(dir.path(), "test");
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->n, 3);
  EXPECT_EQ(data->imageSize(), 3072);
  EXPECT_EQ(data->labels, (std::vector<int32_t>{0, 1, 2}));
  const float mean[3] = {0.4914f, 0.4822f, 0.4465f};
  const float stdv[3] = {0.2470f, 0.2435f, 0.2616f};
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 3; ++c)
      EXPECT_FLOAT_EQ(data->images[size_t(r * 3072 + c * 1024 + 5)],
                      ((c * 100 + r) / 255.0f - mean[c]) / stdv[c]);
  EXPECT_EQ(data->classNames[0], "airplane");

  // Training batches, in the archive's subfolder.
  std::filesystem::create_directory(dir / "cifar-10-batches-bin");
  for (int b = 1; b <= 5; ++b)
    writeBytes(
        dir / ("cifar-10-batches-bin/data_batch_" + std::to_string(b) + ".bin"),
        cifarRecords(2, b));
  data = loadCifar10(dir.path(), "train");
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->n, 10);
  EXPECT_EQ(data->labels[0], 1);
  EXPECT_EQ(data->labels[9], 6);
  data = loadCifar10(dir.path(), "train", 3);
  ASSERT_TRUE(data);
  EXPECT_EQ(data->n, 3);
  EXPECT_EQ(data->labels, (std::vector<int32_t>{1, 2, 2}));
}

TEST(Data, Cifar10Errors) {
  TempDir dir;
  Expected<Dataset> data = loadCifar10(dir.path(), "test");
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            dir.path() + ": no CIFAR-10 test batch test_batch.bin");
  std::vector<uint8_t> records = cifarRecords(2, 0);
  records.pop_back();
  writeBytes(dir / "test_batch.bin", records);
  data = loadCifar10(dir.path(), "test");
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            dir / "test_batch.bin: size 6145 is not a positive multiple of "
                  "the 3073-byte record");
  records = cifarRecords(2, 0);
  records[3073] = 12;
  writeBytes(dir / "test_batch.bin", records);
  data = loadCifar10(dir.path(), "test");
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            dir / "test_batch.bin: record 1 has label 12 (expected 0..9)");
  writeBytes(dir / "data_batch_1.bin", cifarRecords(1, 0));
  data = loadCifar10(dir.path(), "train");
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            dir.path() + ": no CIFAR-10 train batch data_batch_2.bin");
}

/// Writes a PNG with libpng's simplified API.
void writePng(const std::string &path, uint32_t format, int width, int height,
              const std::vector<uint8_t> &pixels,
              const std::vector<uint8_t> &colormap = {}) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(width);
  image.height = png_uint_32(height);
  image.format = format;
  image.colormap_entries = png_uint_32(colormap.size() / 3);
  ASSERT_TRUE(
      png_image_write_to_file(&image, path.c_str(), 0, pixels.data(), 0,
                              colormap.empty() ? nullptr : colormap.data()))
      << image.message;
}

float half(uint8_t p) { return (p / 255.0f - 0.5f) / 0.5f; }

TEST(Data, ImageFolder) {
  TempDir dir;
  std::filesystem::create_directories(dir / "cat");
  std::filesystem::create_directories(dir / "ant");
  // ant/: a gray and a palette image; cat/: RGB and RGBA.
  writePng(dir / "ant/b.png", PNG_FORMAT_GRAY, 2, 2, {0, 51, 102, 255});
  writePng(dir / "ant/a.png", PNG_FORMAT_RGB_COLORMAP, 2, 2, {0, 1, 1, 0},
           {10, 20, 30, 200, 100, 50});
  writePng(dir / "cat/x.png", PNG_FORMAT_RGB, 2, 2,
           {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9});
  writePng(dir / "cat/y.png", PNG_FORMAT_RGBA, 2, 2,
           {255, 0, 0, 0, 0, 255, 0, 128, 0, 0, 255, 255, 9, 9, 9, 1});
  writeText(dir / "cat/notes.txt", "ignored");

  Expected<Dataset> rgb = loadImageFolder(dir.path(), 3, 2, 2);
  ASSERT_TRUE(rgb) << rgb.error().message();
  EXPECT_EQ(rgb->n, 4);
  EXPECT_EQ(rgb->classNames, (std::vector<std::string>{"ant", "cat"}));
  EXPECT_EQ(rgb->labels, (std::vector<int32_t>{0, 0, 1, 1}));
  // ant/a.png (palette): pixel 1 is color 1 = (200, 100, 50).
  EXPECT_FLOAT_EQ(rgb->images[0 * 12 + 0 * 4 + 1], half(200));
  EXPECT_FLOAT_EQ(rgb->images[0 * 12 + 1 * 4 + 1], half(100));
  EXPECT_FLOAT_EQ(rgb->images[0 * 12 + 2 * 4 + 0], half(30));
  // ant/b.png (gray) is replicated into every channel.
  for (int c = 0; c < 3; ++c)
    EXPECT_FLOAT_EQ(rgb->images[size_t(1 * 12 + c * 4 + 1)], half(51));
  // cat/x.png (RGB), pixel 0 is red: planes R, G, B.
  EXPECT_FLOAT_EQ(rgb->images[2 * 12 + 0], half(255));
  EXPECT_FLOAT_EQ(rgb->images[2 * 12 + 4], half(0));
  // cat/y.png (RGBA): alpha is dropped, not composited.
  EXPECT_FLOAT_EQ(rgb->images[3 * 12 + 0], half(255));
  EXPECT_FLOAT_EQ(rgb->images[3 * 12 + 3], half(9));

  Expected<Dataset> gray = loadImageFolder(dir.path(), 1, 2, 2);
  ASSERT_TRUE(gray) << gray.error().message();
  EXPECT_FLOAT_EQ(gray->images[4 + 2], half(102)); // gray stays gray
  EXPECT_FLOAT_EQ(gray->images[8 + 0], half(76));  // luma of red
  EXPECT_FLOAT_EQ(gray->images[8 + 1], half(150)); // luma of green
  EXPECT_FLOAT_EQ(gray->images[8 + 2], half(29));  // luma of blue

  Expected<Dataset> limited = loadImageFolder(dir.path(), 1, 2, 2, 3);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->n, 3);
}

TEST(Data, ImageFolderErrors) {
  TempDir dir;
  auto error = [&](int64_t channels = 1, int64_t size = 2) {
    Expected<Dataset> data = loadImageFolder(dir.path(), channels, size, size);
    EXPECT_FALSE(data);
    return data ? std::string() : data.error().message();
  };
  EXPECT_EQ(error(),
            dir.path() + ": no class folders (expected DIR/<class>/*.png)");
  std::filesystem::create_directories(dir / "a");
  EXPECT_EQ(error(), dir / "a: no .png images");
  writePng(dir / "a/big.png", PNG_FORMAT_GRAY, 3, 3,
           std::vector<uint8_t>(9, 1));
  EXPECT_EQ(error(),
            dir /
                "a/big.png: image is 3x3, the model expects 2x2 (moec-run does "
                "not resize; resize the images to 2x2)");
  EXPECT_TRUE(loadImageFolder(dir.path(), 1, 3, 3));
  writeText(dir / "a/broken.png", "not a png at all");
  EXPECT_EQ(error(1, 3).rfind(dir / "a/broken.png: cannot read PNG: ", 0), 0u);
  EXPECT_EQ(error(2), dir.path() + ": image folders hold 1- or 3-channel "
                                   "images; the model expects 2");
}

TEST(Data, LoadDatasetDispatches) {
  Expected<Dataset> data = loadDataset("mnist", "/nowhere", "test", 1, 28, 28);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(),
            "unknown dataset kind 'mnist' (expected one of: fashion-mnist, "
            "cifar10, image-folder)");
  data = loadDataset("cifar10", "/nowhere", "test", 3, 32, 32);
  ASSERT_FALSE(data);
  EXPECT_EQ(data.error().message(), "/nowhere: no such directory");
}

TEST(Data, RealFashionMnist) {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  if (!std::filesystem::exists(dir + "/t10k-images-idx3-ubyte.gz") &&
      !std::filesystem::exists(dir + "/t10k-images-idx3-ubyte"))
    GTEST_SKIP() << dir << " not installed (package dataset-fashion-mnist)";
  Expected<Dataset> data = loadFashionMnist(dir, "test");
  ASSERT_TRUE(data) << data.error().message();
  EXPECT_EQ(data->n, 10000);
  EXPECT_EQ(data->height, 28);
  EXPECT_EQ(data->width, 28);
  std::vector<int> perClass(10, 0);
  for (int32_t label : data->labels)
    ++perClass[size_t(label)];
  for (int count : perClass)
    EXPECT_EQ(count, 1000);
  // The normalization constants are the training set's: the test set's
  // normalized mean and std come out close to 0 and 1.
  double sum = 0, sq = 0;
  for (float x : data->images) {
    sum += x;
    sq += double(x) * x;
  }
  double mean = sum / double(data->images.size());
  double stdv = std::sqrt(sq / double(data->images.size()) - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(stdv, 1.0, 0.02);
}

} // namespace
