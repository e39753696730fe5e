//===- Data.cpp - evaluation datasets -------------------------------------===//

#include "moec/Runtime/Data.h"

#include "moec/Runtime/ArtifactFormat.h"
#include "moec/Runtime/FileUtil.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <png.h>
#include <zlib.h>

namespace fs = std::filesystem;

namespace moec::rt {

Normalization normalizationFor(const std::string &kind) {
  artifact::DatasetNormalization d =
      artifact::datasetNormalization(kind.c_str());
  Normalization n;
  for (int c = 0; c < 3; ++c) {
    n.mean[c] = static_cast<float>(d.mean[c]);
    n.std[c] = static_cast<float>(d.std[c]);
  }
  return n;
}

std::vector<std::string> datasetClassNames(const std::string &kind) {
  if (kind == "fashion-mnist")
    return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  if (kind == "cifar10")
    return {"airplane", "automobile", "bird",  "cat",  "deer",
            "dog",      "frog",       "horse", "ship", "truck"};
  return {};
}

/// Normalizes `count` 8-bit pixels of channel `c` into `out`.
static void normalize(const uint8_t *pixels, size_t count,
                      const Normalization &norm, int c, float *out) {
  const float mean = norm.mean[c], scale = 1.0f / norm.std[c];
  for (size_t i = 0; i < count; ++i)
    out[i] = (static_cast<float>(pixels[i]) / 255.0f - mean) * scale;
}

static Error checkSplit(const std::string &split) {
  if (split != "train" && split != "test")
    return makeError(ErrorCode::Argument, "unknown split '", split,
                     "' (expected train or test)");
  return Error::success();
}

static Error checkDirectory(const std::string &dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return makeError(ErrorCode::Data, dir,
                     fs::exists(dir, ec) ? ": not a directory"
                                         : ": no such directory");
  return Error::success();
}

//===----------------------------------------------------------------------===//
// Fashion-MNIST
//===----------------------------------------------------------------------===//

namespace {

/// A gzip or raw file read through zlib.
class GzReader {
public:
  ~GzReader() {
    if (file_)
      gzclose(file_);
  }
  Error open(const std::string &path) {
    path_ = path;
    errno = 0;
    file_ = gzopen(path.c_str(), "rb");
    if (!file_)
      return makeError(ErrorCode::Io, path, ": cannot open: ",
                       errno ? systemError(errno) : "out of memory");
    gzbuffer(file_, 1 << 17);
    return Error::success();
  }
  /// Reads up to `size` bytes into `out`, fewer only at the end of the file;
  /// `got` says how many.
  Error readSome(void *out, size_t size, size_t &got) {
    auto *bytes = static_cast<uint8_t *>(out);
    got = 0;
    while (got < size) {
      unsigned chunk = static_cast<unsigned>(
          std::min<size_t>(size - got, static_cast<size_t>(1) << 30));
      int n = gzread(file_, bytes + got, chunk);
      if (n < 0) {
        int errnum;
        const char *message = gzerror(file_, &errnum);
        return makeError(ErrorCode::Data, path_, ": cannot decompress: ",
                         errnum == Z_ERRNO ? systemError(errno) : message);
      }
      if (n == 0)
        break;
      got += static_cast<size_t>(n);
    }
    if (got < size) {
      int errnum;
      const char *message = gzerror(file_, &errnum);
      if (errnum != Z_OK && errnum != Z_BUF_ERROR)
        return makeError(ErrorCode::Data, path_,
                         ": cannot decompress: ", message);
    }
    return Error::success();
  }
  /// Reads exactly `size` bytes; `what` names them in the truncation error.
  Error read(void *out, size_t size, const char *what) {
    size_t got;
    if (Error e = readSome(out, size, got))
      return e;
    if (got < size)
      return truncated(size, got, what);
    return Error::success();
  }
  Error truncated(size_t expected, size_t got, const char *what) const {
    return makeError(ErrorCode::Data, path_, ": truncated (expected ", expected,
                     " bytes of ", what, ", got ", got, ")");
  }
  Error readBigEndian(uint32_t &out, const char *what) {
    uint8_t b[4];
    if (Error e = read(b, 4, what))
      return e;
    out = (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) |
          (uint32_t(b[2]) << 8) | uint32_t(b[3]);
    return Error::success();
  }

private:
  std::string path_;
  gzFile file_ = nullptr;
};

} // namespace

/// DIR/NAME.gz if it exists, else DIR/NAME if it exists.
static Expected<std::string>
findIdx(const std::string &dir, const std::string &name, const char *what) {
  std::error_code ec;
  std::string gz = (fs::path(dir) / (name + ".gz")).string();
  if (fs::exists(gz, ec))
    return gz;
  std::string raw = (fs::path(dir) / name).string();
  if (fs::exists(raw, ec))
    return raw;
  return makeError(ErrorCode::Data, dir, ": no Fashion-MNIST ", what,
                   " (neither ", name, ".gz nor ", name, " exists)");
}

Expected<Dataset> loadFashionMnist(const std::string &dir,
                                   const std::string &split, int64_t limit,
                                   const Normalization *norm) {
  if (Error e = checkSplit(split))
    return e;
  if (Error e = checkDirectory(dir))
    return e;
  std::string prefix = split == "train" ? "train" : "t10k";
  Expected<std::string> imagesPath =
      findIdx(dir, prefix + "-images-idx3-ubyte", (split + " images").c_str());
  if (!imagesPath)
    return imagesPath.takeError();
  Expected<std::string> labelsPath =
      findIdx(dir, prefix + "-labels-idx1-ubyte", (split + " labels").c_str());
  if (!labelsPath)
    return labelsPath.takeError();

  GzReader images, labels;
  uint32_t magic, count, rows, cols, labelMagic, labelCount;
  if (Error e = images.open(*imagesPath))
    return e;
  if (Error e = images.readBigEndian(magic, "header"))
    return e;
  if (magic != 2051)
    return makeError(ErrorCode::Data, *imagesPath, ": bad magic ", magic,
                     " (expected 2051)");
  if (Error e = images.readBigEndian(count, "header"))
    return e;
  if (Error e = images.readBigEndian(rows, "header"))
    return e;
  if (Error e = images.readBigEndian(cols, "header"))
    return e;
  if (rows == 0 || cols == 0 || rows > 4096 || cols > 4096)
    return makeError(ErrorCode::Data, *imagesPath, ": bad image size ", rows,
                     "x", cols);
  if (Error e = labels.open(*labelsPath))
    return e;
  if (Error e = labels.readBigEndian(labelMagic, "header"))
    return e;
  if (labelMagic != 2049)
    return makeError(ErrorCode::Data, *labelsPath, ": bad magic ", labelMagic,
                     " (expected 2049)");
  if (Error e = labels.readBigEndian(labelCount, "header"))
    return e;
  if (labelCount != count)
    return makeError(ErrorCode::Data, *labelsPath, ": has ", labelCount,
                     " labels, but ", *imagesPath, " has ", count, " images");

  Dataset data;
  data.n = limit >= 0 ? std::min<int64_t>(limit, count) : count;
  data.channels = 1;
  data.height = rows;
  data.width = cols;
  data.classNames = datasetClassNames("fashion-mnist");
  const Normalization normalization =
      norm ? *norm : normalizationFor("fashion-mnist");
  // Read in slices of at most 4096 images and 16 MiB so that a header
  // claiming more (or larger) images than the file holds fails on
  // truncation, not on a huge allocation.
  const size_t imagePixels = size_t(rows) * cols;
  const int64_t kSlice = std::clamp<int64_t>(
      int64_t((size_t(16) << 20) / imagePixels), 1, 4096);
  for (int64_t done = 0; done < data.n; done += kSlice) {
    int64_t count = std::min(kSlice, data.n - done);
    std::vector<uint8_t> raw(size_t(count) * imagePixels);
    size_t got;
    if (Error e = images.readSome(raw.data(), raw.size(), got))
      return e;
    if (got < raw.size())
      return images.truncated(size_t(data.n) * imagePixels,
                              size_t(done) * imagePixels + got, "pixels");
    data.images.resize(size_t(done + count) * imagePixels);
    normalize(raw.data(), raw.size(), normalization, 0,
              data.images.data() + size_t(done) * imagePixels);
  }
  std::vector<uint8_t> rawLabels(static_cast<size_t>(data.n));
  if (Error e = labels.read(rawLabels.data(), rawLabels.size(), "labels"))
    return e;
  data.labels.resize(rawLabels.size());
  for (size_t i = 0; i < rawLabels.size(); ++i) {
    if (rawLabels[i] >= data.classNames.size())
      return makeError(ErrorCode::Data, *labelsPath, ": label ", i, " is ",
                       int(rawLabels[i]), " (expected 0..9)");
    data.labels[i] = rawLabels[i];
  }
  return data;
}

//===----------------------------------------------------------------------===//
// CIFAR-10
//===----------------------------------------------------------------------===//

Expected<Dataset> loadCifar10(const std::string &dir, const std::string &split,
                              int64_t limit, const Normalization *norm) {
  if (Error e = checkSplit(split))
    return e;
  if (Error e = checkDirectory(dir))
    return e;
  std::vector<std::string> names;
  if (split == "train")
    for (int i = 1; i <= 5; ++i)
      names.push_back(cat("data_batch_", i, ".bin"));
  else
    names.push_back("test_batch.bin");

  // The archive unpacks into cifar-10-batches-bin/; accept either folder.
  std::error_code ec;
  fs::path root = dir;
  if (!fs::exists(root / names[0], ec) &&
      fs::exists(root / "cifar-10-batches-bin" / names[0], ec))
    root /= "cifar-10-batches-bin";

  constexpr size_t kRecord = 3073, kPlane = 1024;
  Dataset data;
  data.channels = 3;
  data.height = 32;
  data.width = 32;
  data.classNames = datasetClassNames("cifar10");
  const Normalization normalization =
      norm ? *norm : normalizationFor("cifar10");
  for (const std::string &name : names) {
    if (limit >= 0 && data.n >= limit)
      break;
    std::string path = (root / name).string();
    if (!fs::exists(path, ec))
      return makeError(ErrorCode::Data, dir, ": no CIFAR-10 ", split, " batch ",
                       name);
    Expected<std::vector<uint8_t>> bytes = readFile(path);
    if (!bytes)
      return bytes.takeError();
    if (bytes->empty() || bytes->size() % kRecord != 0)
      return makeError(ErrorCode::Data, path, ": size ", bytes->size(),
                       " is not a positive multiple of the ", kRecord,
                       "-byte record");
    int64_t records = static_cast<int64_t>(bytes->size() / kRecord);
    if (limit >= 0)
      records = std::min(records, limit - data.n);
    data.images.resize(size_t(data.n + records) * 3 * kPlane);
    for (int64_t r = 0; r < records; ++r) {
      const uint8_t *record = bytes->data() + r * kRecord;
      if (record[0] >= 10)
        return makeError(ErrorCode::Data, path, ": record ", r, " has label ",
                         int(record[0]), " (expected 0..9)");
      data.labels.push_back(record[0]);
      float *out = data.images.data() + size_t(data.n + r) * 3 * kPlane;
      for (int c = 0; c < 3; ++c)
        normalize(record + 1 + c * kPlane, kPlane, normalization, c,
                  out + c * kPlane);
    }
    data.n += records;
  }
  return data;
}

//===----------------------------------------------------------------------===//
// PNG folders
//===----------------------------------------------------------------------===//

static bool isPng(const fs::path &path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  return ext == ".png";
}

/// Reads `path` as 8-bit RGBA and converts it to `channels` normalized
/// planes at `out`.
static Error readPng(const std::string &path, int64_t channels, int64_t height,
                     int64_t width, const Normalization &norm, float *out) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str()))
    return makeError(ErrorCode::Data, path,
                     ": cannot read PNG: ", image.message);
  if (image.width != width || image.height != height) {
    png_image_free(&image);
    return makeError(ErrorCode::Data, path, ": image is ", image.width, "x",
                     image.height, ", the model expects ", width, "x", height,
                     " (moec-run does not resize; resize the images to ", width,
                     "x", height, ")");
  }
  image.format = PNG_FORMAT_RGBA;
  std::vector<uint8_t> rgba(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, rgba.data(), 0, nullptr))
    return makeError(ErrorCode::Data, path,
                     ": cannot decode PNG: ", image.message);
  const size_t pixels = size_t(height) * width;
  std::vector<uint8_t> plane(pixels);
  for (int64_t c = 0; c < channels; ++c) {
    for (size_t i = 0; i < pixels; ++i) {
      const uint8_t *p = &rgba[i * 4];
      if (channels == 1)
        plane[i] = static_cast<uint8_t>(
            (p[0] * 299 + p[1] * 587 + p[2] * 114 + 500) / 1000);
      else
        plane[i] = p[c];
    }
    normalize(plane.data(), pixels, norm, static_cast<int>(c),
              out + c * pixels);
  }
  return Error::success();
}

/// The PNG files directly in `dir`, sorted by name.
static Error listPngs(const fs::path &dir, std::vector<fs::path> &out) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec))
    if (isPng(it->path()) && !it->is_directory(ec))
      out.push_back(it->path());
  if (ec)
    return makeError(ErrorCode::Io, dir.string(),
                     ": cannot list: ", ec.message());
  std::sort(out.begin(), out.end());
  return Error::success();
}

Expected<Dataset> loadImageFolder(const std::string &dir, int64_t channels,
                                  int64_t height, int64_t width, int64_t limit,
                                  const Normalization *norm,
                                  bool allowUnlabeled) {
  if (channels != 1 && channels != 3)
    return makeError(ErrorCode::Data, dir,
                     ": image folders hold 1- or "
                     "3-channel images; the model expects ",
                     channels);
  if (height <= 0 || width <= 0)
    return makeError(ErrorCode::Argument, dir, ": bad image size ", height, "x",
                     width);
  if (Error e = checkDirectory(dir))
    return e;
  std::error_code ec;
  std::vector<fs::path> classDirs;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end;
       it.increment(ec))
    if (it->is_directory(ec))
      classDirs.push_back(it->path());
  if (ec)
    return makeError(ErrorCode::Io, dir, ": cannot list: ", ec.message());
  std::sort(classDirs.begin(), classDirs.end());

  Dataset data;
  data.channels = channels;
  data.height = height;
  data.width = width;
  std::vector<std::pair<fs::path, int32_t>> files;
  if (classDirs.empty()) {
    // Unlabeled images directly in DIR.
    std::vector<fs::path> images;
    if (allowUnlabeled)
      if (Error e = listPngs(dir, images))
        return e;
    if (images.empty())
      return makeError(ErrorCode::Data, dir,
                       allowUnlabeled
                           ? ": no class folders and no .png images "
                             "(expected DIR/<class>/*.png or DIR/*.png)"
                           : ": no class folders (expected DIR/<class>/*.png)");
    for (fs::path &image : images)
      files.emplace_back(std::move(image), -1);
  }
  for (size_t label = 0; label < classDirs.size(); ++label) {
    data.classNames.push_back(classDirs[label].filename().string());
    std::vector<fs::path> images;
    if (Error e = listPngs(classDirs[label], images))
      return e;
    if (images.empty())
      return makeError(ErrorCode::Data, classDirs[label].string(),
                       ": no .png images");
    for (fs::path &image : images)
      files.emplace_back(std::move(image), static_cast<int32_t>(label));
  }
  if (limit >= 0 && files.size() > static_cast<size_t>(limit))
    files.resize(static_cast<size_t>(limit));

  const Normalization normalization =
      norm ? *norm : normalizationFor("image-folder");
  data.n = static_cast<int64_t>(files.size());
  data.images.resize(size_t(data.n) * data.imageSize());
  for (size_t i = 0; i < files.size(); ++i) {
    if (Error e =
            readPng(files[i].first.string(), channels, height, width,
                    normalization, data.images.data() + i * data.imageSize()))
      return e;
    data.labels.push_back(files[i].second);
    data.files.push_back(files[i].first.string());
  }
  return data;
}

Expected<Dataset> loadDataset(const std::string &kind, const std::string &dir,
                              const std::string &split, int64_t channels,
                              int64_t height, int64_t width, int64_t limit,
                              const Normalization *norm, bool allowUnlabeled) {
  if (kind == "fashion-mnist")
    return loadFashionMnist(dir, split, limit, norm);
  if (kind == "cifar10")
    return loadCifar10(dir, split, limit, norm);
  if (kind == "image-folder")
    return loadImageFolder(dir, channels, height, width, limit, norm,
                           allowUnlabeled);
  return makeError(ErrorCode::Argument, "unknown dataset kind '", kind,
                   "' (expected one of: fashion-mnist, cifar10, image-folder)");
}

} // namespace moec::rt
