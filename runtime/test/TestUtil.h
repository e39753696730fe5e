//===- TestUtil.h - helpers shared by the runtime tests ---------*- C++ -*-===//
//
// A scratch directory, file helpers, and the tiny test model: a synthetic
// .moec artifact built from TestKernels.c (moec_test_kernels) with its
// manifest and plan JSON, packed by ArtifactBuilder.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_TEST_TESTUTIL_H
#define MOEC_RUNTIME_TEST_TESTUTIL_H

#include "moec/Runtime/ArtifactFormat.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace moec::rt::test {

/// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
public:
  TempDir() {
    const char *base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base && *base ? base : "/tmp") + "/moec-rt-test-XXXXXX";
    std::vector<char> buffer(pattern.begin(), pattern.end());
    buffer.push_back('\0');
    if (::mkdtemp(buffer.data()))
      path_ = buffer.data();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty())
      std::filesystem::remove_all(path_, ec);
  }
  const std::string &path() const { return path_; }
  std::string operator/(const std::string &name) const {
    return path_ + "/" + name;
  }

private:
  std::string path_;
};

inline std::vector<uint8_t> readBytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline void writeBytes(const std::string &path, const void *data, size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char *>(data), std::streamsize(size));
}

inline void writeBytes(const std::string &path,
                       const std::vector<uint8_t> &bytes) {
  writeBytes(path, bytes.data(), bytes.size());
}

inline void writeText(const std::string &path, const std::string &text) {
  writeBytes(path, text.data(), text.size());
}

/// Packs sections into the .moec container (ArtifactFormat.h).
struct ArtifactBuilder {
  std::vector<std::pair<std::string, std::string>> sections;
  uint32_t versionMajor = artifact::kVersionMajor;
  uint32_t versionMinor = artifact::kVersionMinor;

  void add(const std::string &name, std::string bytes) {
    sections.emplace_back(name, std::move(bytes));
  }

  std::vector<uint8_t> build() const {
    using namespace moec::artifact;
    std::vector<uint8_t> out(sizeof(FileHeader), 0);
    std::vector<SectionEntry> table;
    for (const auto &[name, bytes] : sections) {
      out.resize(alignTo(out.size()), 0);
      SectionEntry entry{};
      std::strncpy(entry.name, name.c_str(), sizeof(entry.name));
      entry.offset = out.size();
      entry.size = bytes.size();
      table.push_back(entry);
      out.insert(out.end(), bytes.begin(), bytes.end());
    }
    out.resize(alignTo(out.size()), 0);
    FileHeader header{};
    std::memcpy(header.magic, kMagic, sizeof(kMagic));
    header.versionMajor = versionMajor;
    header.versionMinor = versionMinor;
    header.sectionCount = table.size();
    header.sectionTableOffset = out.size();
    const auto *raw = reinterpret_cast<const uint8_t *>(table.data());
    out.insert(out.end(), raw, raw + table.size() * sizeof(SectionEntry));
    header.fileSize = out.size();
    header.checksum =
        fnv1a64(out.data() + sizeof(FileHeader), out.size() - sizeof(header));
    std::memcpy(out.data(), &header, sizeof(header));
    return out;
  }
};

/// Recomputes the header checksum of a built artifact (after a test edits
/// it on purpose).
inline void fixChecksum(std::vector<uint8_t> &bytes) {
  using namespace moec::artifact;
  FileHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  header.checksum =
      fnv1a64(bytes.data() + sizeof(header), bytes.size() - sizeof(header));
  std::memcpy(bytes.data(), &header, sizeof(header));
}

// The tiny model: 1x4x4 images, 3 classes, batch 4.
constexpr int64_t kPixels = 16;
constexpr int64_t kClasses = 3;
constexpr int64_t kBatch = 4;

inline nlohmann::json tinyManifest() {
  using nlohmann::json;
  return json{{"model", "tiny"},
              {"target", "cpu"},
              {"compiler", "moec-test"},
              {"batch", kBatch},
              {"input", {{"channels", 1}, {"height", 4}, {"width", 4}}},
              {"classes", kClasses},
              {"dataset", {{"kind", "image-folder"}, {"path", ""}}},
              {"param_bytes", 128},
              {"param_count", 6},
              {"active_params_per_image", 6},
              {"arena_bytes", 448},
              {"params", json::array({{{"name", "head.scale"},
                                       {"shape", {3}},
                                       {"dtype", "f32"},
                                       {"offset", 0},
                                       {"init", "normal"},
                                       {"std", 0.5}},
                                      {{"name", "head.bias"},
                                       {"shape", {3}},
                                       {"dtype", "f32"},
                                       {"offset", 64},
                                       {"init", "zeros"}}})},
              {"entries",
               {{"infer",
                 {{"inputs", json::array({{{"name", "images"},
                                           {"shape", {kBatch, 1, 4, 4}},
                                           {"dtype", "f32"},
                                           {"offset", 0}}})},
                  {"outputs", json::array({{{"name", "logits"},
                                            {"shape", {kBatch, kClasses}},
                                            {"dtype", "f32"},
                                            {"offset", 384}}})},
                  {"flops", kBatch * 22},
                  {"flops_per_image", 22}}}}},
              {"spec", {{"name", "tiny"}}}};
}

inline nlohmann::json arg(const char *space, int64_t offset) {
  return {{"space", space}, {"offset", offset}};
}

inline nlohmann::json tinyPlan() {
  using nlohmann::json;
  return json{
      {"entries",
       {{"infer",
         json::array(
             {{{"kernel", "moec_k0"},
               {"op", "test.copy"},
               {"name", "bias"},
               {"parallel", "fixed"},
               {"tiles", 3},
               {"args", json::array({arg("param", 64), arg("arena", 320)})}},
              {{"kernel", "moec_k1"},
               {"op", "test.sum"},
               {"name", "sum"},
               {"parallel", "images"},
               {"tiles", kBatch},
               {"args", json::array({arg("arena", 0), arg("arena", 256)})}},
              {{"kernel", "moec_k2"},
               {"op", "test.scale"},
               {"name", "head"},
               {"parallel", "images"},
               {"tiles", kBatch},
               {"args",
                json::array({arg("arena", 256), arg("param", 0),
                             arg("arena", 320), arg("arena", 384)})}}})}}}};
}

inline std::string kernelLibrary() {
  std::vector<uint8_t> bytes = readBytes(MOEC_TEST_KERNELS);
  return std::string(bytes.begin(), bytes.end());
}

/// The tiny model's artifact with the given manifest and plan.
inline std::vector<uint8_t>
tinyArtifact(const nlohmann::json &manifest = tinyManifest(),
             const nlohmann::json &plan = tinyPlan()) {
  ArtifactBuilder builder;
  builder.add("manifest", manifest.dump());
  builder.add("plan", plan.dump());
  builder.add("kernels", kernelLibrary());
  return builder.build();
}

/// What the tiny model computes for `n` images.
inline std::vector<float> tinyReference(const std::vector<float> &images,
                                        int64_t n, const float scale[3],
                                        const float bias[3]) {
  std::vector<float> logits(size_t(n * kClasses));
  for (int64_t i = 0; i < n; ++i) {
    float sum = 0;
    for (int64_t p = 0; p < kPixels; ++p)
      sum += images[size_t(i * kPixels + p)];
    for (int64_t k = 0; k < kClasses; ++k)
      logits[size_t(i * kClasses + k)] = sum * scale[k] + bias[k];
  }
  return logits;
}

/// Deterministic test images.
inline std::vector<float> tinyImages(int64_t n) {
  std::vector<float> images(size_t(n * kPixels));
  for (size_t i = 0; i < images.size(); ++i)
    images[i] = float(int(i * 37 % 23) - 11) / 8.0f;
  return images;
}

} // namespace moec::rt::test

#endif // MOEC_RUNTIME_TEST_TESTUTIL_H
