//===- TestUtil.h - helpers shared by the runtime tests ---------*- C++ -*-===//
//
// A scratch directory, file helpers, and the test models: synthetic .moec
// artifacts built from TestKernels.c (moec_test_kernels) or, for target
// cuda, hand-written PTX, with their manifest and plan JSON, packed by
// ArtifactBuilder.
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
#include <sys/wait.h>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace moec::rt::test {

/// Whether `part` occurs in `text`.
inline bool contains(const std::string &text, const std::string &part) {
  return text.find(part) != std::string::npos;
}

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
  /// 1.0 unless a fixture uses the 1.1 training fields (trainArtifact):
  /// readers must keep accepting 1.0 files whatever minor the writer is at.
  uint32_t versionMinor = 0;

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

// The trainable model (TestKernels.c, "The trainable model"): 1x4x4
// images, 10 classes (a fashion-mnist artifact, so that tiny IDX files make
// its dataset), batch 4, parameters w [16] and b [1], SGD momentum state.
constexpr int64_t kTrainClasses = 10;

inline nlohmann::json tensor(const char *name, std::vector<int64_t> shape,
                             const char *dtype, int64_t offset,
                             const char *role = nullptr) {
  nlohmann::json t = {{"name", name},
                      {"shape", shape},
                      {"dtype", dtype},
                      {"offset", offset}};
  if (role)
    t["role"] = role;
  return t;
}

inline nlohmann::json trainManifest() {
  using nlohmann::json;
  return json{
      {"model", "tinytrain"},
      {"target", "cpu"},
      {"compiler", "moec-test"},
      {"batch", kBatch},
      {"input", {{"channels", 1}, {"height", 4}, {"width", 4}}},
      {"classes", kTrainClasses},
      {"dataset", {{"kind", "fashion-mnist"}, {"path", ""}}},
      {"param_bytes", 256},
      {"param_count", 17},
      {"active_params_per_image", 17},
      {"arena_bytes", 672},
      {"params", json::array({{{"name", "w"},
                               {"shape", {16}},
                               {"dtype", "f32"},
                               {"offset", 0},
                               {"init", "normal"},
                               {"std", 0.1}},
                              {{"name", "b"},
                               {"shape", {1}},
                               {"dtype", "f32"},
                               {"offset", 64},
                               {"init", "zeros"}}})},
      {"state", json::array({{{"name", "optimizer.momentum.w"},
                              {"shape", {16}},
                              {"dtype", "f32"},
                              {"offset", 128},
                              {"init", "zeros"}},
                             {{"name", "optimizer.momentum.b"},
                              {"shape", {1}},
                              {"dtype", "f32"},
                              {"offset", 192},
                              {"init", "zeros"}}})},
      {"optimizer",
       {{"kind", "sgd"},
        {"lr", 0.001},
        {"weight_decay", 0.0},
        {"momentum", 0.9},
        {"grad_clip", 0.0}}},
      {"train",
       {{"batch", kBatch},
        {"epochs", 3},
        {"warmup_epochs", 1},
        {"label_smoothing", 0.0},
        {"seed", 0},
        {"schedule", "cosine"},
        {"augment", {{"crop_padding", 1}, {"horizontal_flip", true}}}}},
      {"entries",
       {{"infer",
         {{"inputs", json::array({tensor("images", {kBatch, 1, 4, 4}, "f32",
                                         0)})},
          {"outputs", json::array({tensor("logits", {kBatch, kTrainClasses},
                                          "f32", 512)})},
          {"flops", kBatch * 40},
          {"flops_per_image", 40}}},
        {"train_step",
         {{"inputs",
           json::array({tensor("images", {kBatch, 1, 4, 4}, "f32", 0),
                        tensor("labels", {kBatch}, "i32", 256),
                        tensor("step", {}, "f32", 272),
                        tensor("total_steps", {}, "f32", 276),
                        tensor("warmup_steps", {}, "f32", 280),
                        tensor("lr", {}, "f32", 284),
                        tensor("noise.blocks.0", {kBatch, 1, 2}, "f32", 288,
                               "normal_noise")})},
          {"outputs", json::array({tensor("loss", {}, "f32", 336),
                                   tensor("ce_loss", {}, "f32", 340),
                                   tensor("aux_loss", {}, "f32", 344),
                                   tensor("correct", {}, "f32", 348),
                                   tensor("grad_norm", {}, "f32", 352),
                                   tensor("lr_used", {}, "f32", 356),
                                   tensor("grad.w", {16}, "f32", 384,
                                          "gradient"),
                                   tensor("grad.b", {1}, "f32", 448,
                                          "gradient")})},
          {"flops", kBatch * 120},
          {"flops_per_image", 120}}},
        {"eval",
         {{"inputs",
           json::array({tensor("images", {kBatch, 1, 4, 4}, "f32", 0),
                        tensor("labels", {kBatch}, "i32", 256),
                        tensor("mask", {kBatch}, "f32", 464)})},
          {"outputs",
           json::array({tensor("loss_sum", {}, "f32", 480),
                        tensor("correct", {}, "f32", 484),
                        tensor("routing.blocks.0", {2}, "f32", 488,
                               "routing_counts")})},
          {"flops", kBatch * 40},
          {"flops_per_image", 40}}}}},
      {"spec", {{"name", "tinytrain"}}}};
}

inline nlohmann::json trainPlan() {
  using nlohmann::json;
  auto dispatch = [](const char *kernel, const char *name, bool images,
                     json args) {
    return json{{"kernel", kernel},
                {"op", std::string("test.") + name},
                {"name", name},
                {"parallel", images ? "images" : "fixed"},
                {"tiles", images ? kBatch : 1},
                {"args", std::move(args)}};
  };
  json train = json::array(
      {dispatch("moec_t0", "score", true,
                {arg("arena", 0), arg("param", 0), arg("param", 64),
                 arg("arena", 288), arg("arena", 320)}),
       dispatch("moec_t1", "update", false,
                {arg("arena", 320), arg("arena", 256), arg("arena", 0),
                 arg("arena", 272), arg("arena", 276), arg("arena", 280),
                 arg("arena", 284), arg("param", 0), arg("param", 64),
                 arg("param", 128), arg("param", 192), arg("arena", 336),
                 arg("arena", 340), arg("arena", 344), arg("arena", 348),
                 arg("arena", 352), arg("arena", 356), arg("arena", 384),
                 arg("arena", 448)})});
  json eval = json::array(
      {dispatch("moec_e0", "score", true,
                {arg("arena", 0), arg("param", 0), arg("param", 64),
                 arg("arena", 320)}),
       dispatch("moec_e1", "eval", false,
                {arg("arena", 320), arg("arena", 256), arg("arena", 464),
                 arg("arena", 480), arg("arena", 484), arg("arena", 488)})});
  json infer = json::array({dispatch("moec_i0", "logits", true,
                                     {arg("arena", 0), arg("param", 0),
                                      arg("param", 64), arg("arena", 512)})});
  return json{{"entries",
               {{"infer", infer}, {"train_step", train}, {"eval", eval}}}};
}

/// The trainable model's artifact (version 1.1).
inline std::vector<uint8_t>
trainArtifact(const nlohmann::json &manifest = trainManifest(),
              const nlohmann::json &plan = trainPlan()) {
  ArtifactBuilder builder;
  builder.versionMinor = 1;
  builder.add("manifest", manifest.dump());
  builder.add("plan", plan.dump());
  builder.add("kernels", kernelLibrary());
  return builder.build();
}

// The cuda test model ("tinycuda", target cuda): 1x4x8 images, 32 classes,
// batch 4, no parameters; logits = 2 * images + 1, from two hand-written
// PTX kernels launched with blocks of 32 threads, one block per image:
// moec_g0 (images -> logits, x2) and moec_g1 (logits + 1 through a
// 128-byte scratch slice per image, scratch_bytes 128). Without a GPU it
// exercises the loader and the target checks; with one, the cuda device.
constexpr int64_t kCudaPixels = 32;

/// The PTX of moec_g0 and moec_g1 (sm_80; ptxas-clean for sm_80 and
/// sm_90a).
inline std::string cudaPtx() {
  return ".version 8.0\n"
         ".target sm_80\n"
         ".address_size 64\n"
         "\n"
         "// moec_g0: out[u ntid + t] = 2 in[u ntid + t], u = begin + block.\n"
         ".visible .entry moec_g0(\n"
         "  .param .u64 moec_g0_in,\n"
         "  .param .u64 moec_g0_out,\n"
         "  .param .u64 moec_g0_begin,\n"
         "  .param .u64 moec_g0_scratch)\n"
         "{\n"
         "  .reg .b32 %r<4>;\n"
         "  .reg .b64 %rd<12>;\n"
         "  .reg .f32 %f<3>;\n"
         "  ld.param.u64 %rd1, [moec_g0_in];\n"
         "  ld.param.u64 %rd2, [moec_g0_out];\n"
         "  ld.param.u64 %rd3, [moec_g0_begin];\n"
         "  cvta.to.global.u64 %rd1, %rd1;\n"
         "  cvta.to.global.u64 %rd2, %rd2;\n"
         "  mov.u32 %r1, %ctaid.x;\n"
         "  mov.u32 %r2, %ntid.x;\n"
         "  mov.u32 %r3, %tid.x;\n"
         "  cvt.u64.u32 %rd4, %r1;\n"
         "  add.s64 %rd4, %rd4, %rd3;\n"
         "  cvt.u64.u32 %rd5, %r2;\n"
         "  mul.lo.s64 %rd6, %rd4, %rd5;\n"
         "  cvt.u64.u32 %rd7, %r3;\n"
         "  add.s64 %rd8, %rd6, %rd7;\n"
         "  shl.b64 %rd8, %rd8, 2;\n"
         "  add.s64 %rd9, %rd1, %rd8;\n"
         "  add.s64 %rd10, %rd2, %rd8;\n"
         "  ld.global.f32 %f1, [%rd9];\n"
         "  add.f32 %f2, %f1, %f1;\n"
         "  st.global.f32 [%rd10], %f2;\n"
         "  ret;\n"
         "}\n"
         "\n"
         "// moec_g1: x[u * ntid + t] += 1 through the block's scratch slice\n"
         "// (ntid floats at scratch + block ntid 4): each thread stores\n"
         "// its value + 1 there, and after a barrier writes back its\n"
         "// neighbour's.\n"
         ".visible .entry moec_g1(\n"
         "  .param .u64 moec_g1_x,\n"
         "  .param .u64 moec_g1_begin,\n"
         "  .param .u64 moec_g1_scratch)\n"
         "{\n"
         "  .reg .b32 %r<6>;\n"
         "  .reg .b64 %rd<20>;\n"
         "  .reg .f32 %f<4>;\n"
         "  ld.param.u64 %rd1, [moec_g1_x];\n"
         "  ld.param.u64 %rd2, [moec_g1_begin];\n"
         "  ld.param.u64 %rd3, [moec_g1_scratch];\n"
         "  cvta.to.global.u64 %rd1, %rd1;\n"
         "  cvta.to.global.u64 %rd3, %rd3;\n"
         "  mov.u32 %r1, %ctaid.x;\n"
         "  mov.u32 %r2, %ntid.x;\n"
         "  mov.u32 %r3, %tid.x;\n"
         "  cvt.u64.u32 %rd4, %r1;\n"
         "  cvt.u64.u32 %rd5, %r2;\n"
         "  cvt.u64.u32 %rd6, %r3;\n"
         "  add.s64 %rd7, %rd4, %rd2;\n"
         "  mul.lo.s64 %rd8, %rd7, %rd5;\n"
         "  mul.lo.s64 %rd9, %rd4, %rd5;\n"
         "  add.s64 %rd10, %rd8, %rd6;\n"
         "  shl.b64 %rd10, %rd10, 2;\n"
         "  add.s64 %rd10, %rd1, %rd10;\n"
         "  add.s64 %rd11, %rd9, %rd6;\n"
         "  shl.b64 %rd11, %rd11, 2;\n"
         "  add.s64 %rd11, %rd3, %rd11;\n"
         "  ld.global.f32 %f1, [%rd10];\n"
         "  add.f32 %f2, %f1, 0f3F800000;\n"
         "  st.global.f32 [%rd11], %f2;\n"
         "  bar.sync 0;\n"
         "  add.u32 %r4, %r3, 1;\n"
         "  rem.u32 %r5, %r4, %r2;\n"
         "  cvt.u64.u32 %rd12, %r5;\n"
         "  add.s64 %rd13, %rd8, %rd12;\n"
         "  shl.b64 %rd13, %rd13, 2;\n"
         "  add.s64 %rd13, %rd1, %rd13;\n"
         "  add.s64 %rd14, %rd9, %rd12;\n"
         "  shl.b64 %rd14, %rd14, 2;\n"
         "  add.s64 %rd14, %rd3, %rd14;\n"
         "  ld.global.f32 %f3, [%rd14];\n"
         "  st.global.f32 [%rd13], %f3;\n"
         "  ret;\n"
         "}\n";
}

inline nlohmann::json cudaManifest() {
  using nlohmann::json;
  return json{
      {"model", "tinycuda"},
      {"target", "cuda"},
      {"compiler", "moec-test"},
      {"cuda", {{"arch", "sm_80"}, {"block_threads", 32}, {"format", "ptx"}}},
      {"batch", kBatch},
      {"input", {{"channels", 1}, {"height", 4}, {"width", 8}}},
      {"classes", kCudaPixels},
      {"dataset", {{"kind", "image-folder"}, {"path", ""}}},
      {"param_bytes", 0},
      {"param_count", 0},
      {"active_params_per_image", 0},
      {"arena_bytes", 1024},
      {"params", json::array()},
      {"entries",
       {{"infer",
         {{"inputs", json::array({{{"name", "images"},
                                   {"shape", {kBatch, 1, 4, 8}},
                                   {"dtype", "f32"},
                                   {"offset", 0}}})},
          {"outputs", json::array({{{"name", "logits"},
                                    {"shape", {kBatch, kCudaPixels}},
                                    {"dtype", "f32"},
                                    {"offset", 512}}})},
          {"flops", kBatch * 64},
          {"flops_per_image", 64}}}}}};
}

inline nlohmann::json cudaPlan() {
  using nlohmann::json;
  return json{
      {"entries",
       {{"infer",
         json::array(
             {{{"kernel", "moec_g0"},
               {"op", "test.double"},
               {"name", "double"},
               {"parallel", "images"},
               {"tiles", kBatch},
               {"args", json::array({arg("arena", 0), arg("arena", 512)})}},
              {{"kernel", "moec_g1"},
               {"op", "test.increment"},
               {"name", "increment"},
               {"parallel", "images"},
               {"tiles", kBatch},
               {"scratch_bytes", 128},
               {"args", json::array({arg("arena", 512)})}}})}}}};
}

/// The cuda test model's artifact; `kernels` is the kernels section as
/// is (cudaPtx() and its NUL by default).
inline std::vector<uint8_t>
cudaArtifact(const nlohmann::json &manifest = cudaManifest(),
             const nlohmann::json &plan = cudaPlan(),
             const std::string &kernels = cudaPtx() + std::string(1, '\0')) {
  ArtifactBuilder builder;
  builder.versionMinor = artifact::kVersionMinor;
  builder.add("manifest", manifest.dump());
  builder.add("plan", plan.dump());
  builder.add("kernels", kernels);
  return builder.build();
}
/// Big-endian IDX files of 4x4 images: DIR/{prefix}-images-idx3-ubyte and
/// DIR/{prefix}-labels-idx1-ubyte (prefix "train" or "t10k").
inline void writeIdx(const std::string &dir, const std::string &prefix,
                     const std::vector<uint8_t> &pixels,
                     const std::vector<uint8_t> &labels) {
  auto be32 = [](std::vector<uint8_t> &out, uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
      out.push_back(uint8_t(v >> shift));
  };
  std::vector<uint8_t> images, labelBytes;
  be32(images, 2051);
  be32(images, uint32_t(labels.size()));
  be32(images, 4);
  be32(images, 4);
  images.insert(images.end(), pixels.begin(), pixels.end());
  be32(labelBytes, 2049);
  be32(labelBytes, uint32_t(labels.size()));
  labelBytes.insert(labelBytes.end(), labels.begin(), labels.end());
  writeBytes(dir + "/" + prefix + "-images-idx3-ubyte", images);
  writeBytes(dir + "/" + prefix + "-labels-idx1-ubyte", labelBytes);
}

/// `n` 4x4 images whose brightness follows the label, labels cycling
/// through `labels`.
inline void makeIdxSplit(const std::string &dir, const std::string &prefix,
                         int n, const std::vector<uint8_t> &labels) {
  std::vector<uint8_t> pixels, ys;
  for (int i = 0; i < n; ++i) {
    uint8_t y = labels[size_t(i) % labels.size()];
    ys.push_back(y);
    for (int p = 0; p < 16; ++p)
      pixels.push_back(uint8_t((y * 25 + p * 3 + i * 7) % 256));
  }
  writeIdx(dir, prefix, pixels, ys);
}

/// The trainable model's tiny Fashion-MNIST-format dataset in `dir`: 10
/// train images (2 steps of 4 per epoch, 2 dropped) and 6 test images (a
/// padded last eval batch). No label 9 unless `poisoned`: label 9 poisons
/// b's gradient (TestKernels.c).
inline void makeTrainData(const std::string &dir, bool poisoned = false) {
  std::filesystem::create_directories(dir);
  std::vector<uint8_t> labels = {0, 1, 2, 3, 4, 5, 6, 7, 8};
  if (poisoned)
    labels.back() = 9;
  makeIdxSplit(dir, "train", 10, labels);
  makeIdxSplit(dir, "t10k", 6, {2, 4, 6, 1, 3, 5});
}

/// The result of running a command.
struct CommandResult {
  int rc;
  std::string out, err;
};

/// Runs `moec-run ARGS` (ARGS is shell text), capturing stdout and stderr
/// in files under `scratch`.
inline CommandResult runMoecRun(const std::string &args,
                                const std::string &scratch) {
  std::string out = scratch + "/stdout", err = scratch + "/stderr";
  std::string command = std::string("'") + MOEC_RUN_PATH + "' " + args +
                        " >'" + out + "' 2>'" + err + "' </dev/null";
  int status = std::system(command.c_str());
  auto text = [](const std::string &path) {
    std::vector<uint8_t> bytes = readBytes(path);
    return std::string(bytes.begin(), bytes.end());
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text(out), text(err)};
}

} // namespace moec::rt::test

#endif // MOEC_RUNTIME_TEST_TESTUTIL_H
