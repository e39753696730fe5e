//===- make-seeds.cpp - writes the fuzz targets' seed corpora -------------===//
//
// moec-fuzz-seeds OUT SOURCE_DIR writes OUT/<target>/* for every fuzz
// target: the spec examples and bad specs of SOURCE_DIR, the runtime tests'
// synthetic artifacts (TestUtil.h), and small safetensors, checkpoint, IDX,
// CIFAR-10 and PNG files. Everything is derived here, so no binary seed is
// checked in.
//
//===----------------------------------------------------------------------===//

#include "FuzzUtil.h"

#include "../../runtime/test/TestUtil.h"

#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/SafeTensors.h"

#include <png.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace moec::rt;

namespace {

void write(const fs::path &path, const std::vector<uint8_t> &bytes) {
  fs::create_directories(path.parent_path());
  moec::fuzz::writeFile(path.string(), bytes.data(), bytes.size());
}

std::vector<uint8_t> readAll(const fs::path &path) {
  return test::readBytes(path.string());
}

void be32(std::vector<uint8_t> &out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8)
    out.push_back(uint8_t(v >> shift));
}

/// The idx target's input: LE32 length, images file, labels file.
std::vector<uint8_t> idxInput(const std::vector<uint8_t> &images,
                              const std::vector<uint8_t> &labels) {
  std::vector<uint8_t> out;
  uint32_t n = uint32_t(images.size());
  for (int shift = 0; shift < 32; shift += 8)
    out.push_back(uint8_t(n >> shift));
  out.insert(out.end(), images.begin(), images.end());
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

std::vector<uint8_t> idxImages(uint32_t count, uint32_t rows, uint32_t cols,
                               const std::vector<uint8_t> &pixels) {
  std::vector<uint8_t> out;
  be32(out, 2051);
  be32(out, count);
  be32(out, rows);
  be32(out, cols);
  out.insert(out.end(), pixels.begin(), pixels.end());
  return out;
}

std::vector<uint8_t> idxLabels(const std::vector<uint8_t> &labels) {
  std::vector<uint8_t> out;
  be32(out, 2049);
  be32(out, uint32_t(labels.size()));
  out.insert(out.end(), labels.begin(), labels.end());
  return out;
}

/// The first `count` images and labels of the installed Fashion-MNIST test
/// split, or nothing when it is not installed.
void fashionSlice(const fs::path &out, uint32_t count) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  auto gunzip = [](const std::string &path, size_t bytes) {
    std::vector<uint8_t> data(bytes);
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f)
      return std::vector<uint8_t>();
    int got = gzread(f, data.data(), unsigned(bytes));
    gzclose(f);
    data.resize(got > 0 ? size_t(got) : 0);
    return data;
  };
  std::vector<uint8_t> images =
      gunzip(dir + "t10k-images-idx3-ubyte.gz", 16 + size_t(count) * 784);
  std::vector<uint8_t> labels =
      gunzip(dir + "t10k-labels-idx1-ubyte.gz", 8 + size_t(count));
  if (images.size() != 16 + size_t(count) * 784 ||
      labels.size() != 8 + size_t(count))
    return;
  for (std::vector<uint8_t> *file : {&images, &labels}) {
    std::vector<uint8_t> n;
    be32(n, count);
    std::memcpy(file->data() + 4, n.data(), 4);
  }
  write(out, idxInput(images, labels));
}

std::vector<uint8_t> cifarRecords(int count, int badLabelAt = -1) {
  std::vector<uint8_t> out;
  for (int i = 0; i < count; ++i) {
    out.push_back(i == badLabelAt ? 12 : uint8_t(i % 10));
    for (int p = 0; p < 3072; ++p)
      out.push_back(uint8_t((p * 7 + i * 13) % 256));
  }
  return out;
}

/// A PNG in memory, with the png target's 3-byte geometry prefix.
std::vector<uint8_t> pngInput(uint8_t channelsBit, uint32_t format, int width,
                              int height, const std::vector<uint8_t> &pixels,
                              const std::vector<uint8_t> &colormap = {}) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = png_uint_32(width);
  image.height = png_uint_32(height);
  image.format = format;
  image.colormap_entries = png_uint_32(colormap.size() / 3);
  png_alloc_size_t size = 0;
  const void *map = colormap.empty() ? nullptr : colormap.data();
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, pixels.data(), 0,
                                 map))
    return {};
  std::vector<uint8_t> out = {channelsBit, uint8_t(height - 1),
                              uint8_t(width - 1)};
  out.resize(3 + size);
  if (!png_image_write_to_memory(&image, out.data() + 3, &size, 0,
                                 pixels.data(), 0, map))
    return {};
  out.resize(3 + size);
  return out;
}

std::vector<uint8_t> ramp(size_t n) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = uint8_t(i * 37 % 256);
  return out;
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 3) {
    std::cerr << "usage: moec-fuzz-seeds OUT SOURCE_DIR\n";
    return 2;
  }
  const fs::path out = argv[1], source = argv[2];

  // spec: the examples and the bad specs.
  for (const fs::path &dir :
       {source / "examples", source / "test/Frontend/bad-specs"})
    for (const auto &entry : fs::directory_iterator(dir))
      if (entry.path().extension() == ".json")
        write(out / "spec" /
                  (dir.filename().string() + "-" +
                   entry.path().filename().string()),
              readAll(entry.path()));

  // artifact: the runtime tests' tiny and trainable models.
  write(out / "artifact/tiny.moec", test::tinyArtifact());
  write(out / "artifact/train.moec", test::trainArtifact());

  // safetensors and checkpoint.
  const fs::path scratch = moec::fuzz::scratchDir("seeds");
  std::vector<float> w = {0.5f, -1.0f, 2.0f, 0.25f, 3.0f, -0.5f};
  std::vector<int32_t> ints = {1, 2, 3};
  std::vector<float> m(w.size(), 0.125f);
  auto check = [](Error e) {
    if (e) {
      std::cerr << "moec-fuzz-seeds: " << e.message() << "\n";
      std::exit(1);
    }
  };
  check(writeSafeTensors(
      (scratch / "a.safetensors").string(),
      {TensorRef("w", {2, 3}, w.data()), TensorRef("b", {3}, ints.data())},
      {{"note", "seed"}}));
  write(out / "safetensors/weights.safetensors",
        readAll(scratch / "a.safetensors"));
  check(writeSafeTensors((scratch / "b.safetensors").string(),
                         {TensorRef("s", {}, w.data())}));
  write(out / "safetensors/scalar.safetensors",
        readAll(scratch / "b.safetensors"));

  TrainState state;
  state.step = 12;
  state.epoch = 1;
  state.positionInEpoch = 4;
  state.rngState = {1, 2, 3, 4};
  state.metadata = {{"model", "seed"}};
  check(saveCheckpoint(
      (scratch / "c.safetensors").string(), state,
      {TensorRef("w", {2, 3}, w.data())},
      {TensorRef(optimizerTensorName("m", "w"), {2, 3}, m.data())}));
  write(out / "checkpoint/adam.safetensors",
        readAll(scratch / "c.safetensors"));
  check(saveCheckpoint((scratch / "d.safetensors").string(), TrainState(),
                       {TensorRef("w", {6}, w.data())}));
  write(out / "checkpoint/plain.safetensors",
        readAll(scratch / "d.safetensors"));
  fs::remove_all(moec::fuzz::scratchDir());

  // idx: tiny 4x4 pairs and a slice of the real test split.
  write(out / "idx/tiny",
        idxInput(idxImages(3, 4, 4, ramp(48)), idxLabels({0, 5, 9})));
  write(out / "idx/one",
        idxInput(idxImages(1, 28, 28, ramp(784)), idxLabels({7})));
  fashionSlice(out / "idx/fashion-mnist-8", 8);

  // cifar: whole records, a short tail and a bad label.
  write(out / "cifar/two", cifarRecords(2));
  std::vector<uint8_t> tail = cifarRecords(1);
  tail.resize(tail.size() + 100, 3);
  write(out / "cifar/tail", tail);
  write(out / "cifar/bad-label", cifarRecords(2, 1));

  // png: gray, RGB, RGBA, palette.
  write(out / "png/gray", pngInput(0, PNG_FORMAT_GRAY, 4, 4, ramp(16)));
  write(out / "png/rgb", pngInput(1, PNG_FORMAT_RGB, 4, 3, ramp(36)));
  write(out / "png/rgba", pngInput(1, PNG_FORMAT_RGBA, 2, 2, ramp(16)));
  write(out / "png/palette", pngInput(0, PNG_FORMAT_RGB_COLORMAP, 2, 2,
                                      {0, 1, 1, 0}, {255, 0, 0, 0, 0, 255}));
  return 0;
}
