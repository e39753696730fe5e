//===- SafeTensorsTest.cpp - safetensors reading and writing --------------===//

#include "moec/Runtime/SafeTensors.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

using namespace moec::rt;
using namespace moec::rt::test;

namespace {

/// A safetensors file from header JSON text and a data buffer.
std::vector<uint8_t> rawSafeTensors(const std::string &header,
                                    const std::vector<float> &data) {
  std::vector<uint8_t> out(8);
  uint64_t size = header.size();
  std::memcpy(out.data(), &size, 8);
  out.insert(out.end(), header.begin(), header.end());
  const auto *bytes = reinterpret_cast<const uint8_t *>(data.data());
  out.insert(out.end(), bytes, bytes + data.size() * 4);
  return out;
}

/// `"NAME": {"dtype": DTYPE, "shape": SHAPE, "data_offsets": OFFSETS}`.
std::string entry(const char *name, const char *dtype, const char *shape,
                  const char *offsets) {
  return std::string("\"") + name + "\": {\"dtype\": \"" + dtype +
         "\", \"shape\": " + shape + ", \"data_offsets\": " + offsets + "}";
}

std::string parseError(const std::string &header,
                       const std::vector<float> &data = {1, 2, 3, 4}) {
  std::vector<uint8_t> bytes = rawSafeTensors(header, data);
  Expected<SafeTensors> result =
      parseSafeTensors(bytes.data(), bytes.size(), "w.safetensors");
  EXPECT_FALSE(result);
  if (result)
    return "";
  EXPECT_EQ(result.error().code(), ErrorCode::Weights);
  return result.error().message();
}

TEST(SafeTensors, RoundTrip) {
  TempDir dir;
  std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 5.0f, 6.0f};
  std::vector<float> b = {42.0f};
  std::string path = dir / "w.safetensors";
  ASSERT_FALSE(writeSafeTensors(
      path, {{"z.first", {2, 3}, a.data()}, {"a.second", {1}, b.data()}},
      {{"model", "tiny"}}));
  // The data buffer starts 8-byte aligned.
  std::vector<uint8_t> bytes = readBytes(path);
  uint64_t headerSize;
  std::memcpy(&headerSize, bytes.data(), 8);
  EXPECT_EQ(headerSize % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + headerSize + (a.size() + b.size()) * 4);

  Expected<SafeTensors> read = readSafeTensors(path);
  ASSERT_TRUE(read) << read.error().message();
  ASSERT_EQ(read->tensors.size(), 2u);
  // Written (and so read back) in the given order, not sorted by name.
  EXPECT_EQ(read->tensors[0].name, "z.first");
  EXPECT_EQ(read->tensors[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(read->tensors[0].data, a);
  EXPECT_EQ(read->tensors[1].name, "a.second");
  EXPECT_EQ(read->tensors[1].data, b);
  EXPECT_EQ(read->metadata.at("model"), "tiny");
  ASSERT_NE(read->find("a.second"), nullptr);
  EXPECT_EQ(read->find("missing"), nullptr);

  // No temporary files are left next to it.
  int files = 0;
  for (const auto &entry : std::filesystem::directory_iterator(dir.path())) {
    (void)entry;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

// Entry point inputs and outputs (moec-run call) may be I32; weights stay
// F32 unless the caller asks for I32.
TEST(SafeTensors, I32Tensors) {
  TempDir dir;
  std::vector<int32_t> labels = {3, -1, 2147483647, 0};
  std::vector<float> x = {0.5f, 1.5f};
  std::string path = dir / "io.safetensors";
  ASSERT_FALSE(writeSafeTensors(
      path, {TensorRef("labels", {4}, labels.data()), {"x", {2}, x.data()}}));
  std::vector<uint8_t> bytes = readBytes(path);
  std::string text(bytes.begin(), bytes.end());
  EXPECT_NE(text.find(R"("labels":{"dtype":"I32","shape":[4])"),
            std::string::npos)
      << text;

  Expected<SafeTensors> read = readSafeTensors(path, TensorTypes::F32AndI32);
  ASSERT_TRUE(read) << read.error().message();
  const Tensor *t = read->find("labels");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->dtype, DType::I32);
  EXPECT_EQ(t->ints, labels);
  EXPECT_TRUE(t->data.empty());
  EXPECT_EQ(read->find("x")->dtype, DType::F32);
  EXPECT_EQ(read->find("x")->data, x);

  Expected<SafeTensors> f32Only = readSafeTensors(path);
  ASSERT_FALSE(f32Only);
  EXPECT_EQ(f32Only.error().message(),
            path + ": tensor 'labels' has dtype I32; only F32 is supported");

  std::vector<uint8_t> f16 = rawSafeTensors(
      R"({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})",
      {1});
  Expected<SafeTensors> both = parseSafeTensors(
      f16.data(), f16.size(), "io.safetensors", TensorTypes::F32AndI32);
  ASSERT_FALSE(both);
  EXPECT_EQ(both.error().message(), "io.safetensors: tensor 'a' has dtype "
                                    "F16; only F32 and I32 are supported");
  std::vector<uint8_t> shortI32 = rawSafeTensors(
      R"({"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 4]}})",
      {1});
  Expected<SafeTensors> bad = parseSafeTensors(
      shortI32.data(), shortI32.size(), "io.safetensors",
      TensorTypes::F32AndI32);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message(), "io.safetensors: tensor 'a' has 4 bytes of "
                                   "data, but I32 [2] needs 8");
}

TEST(SafeTensors, ScalarAndEmptyTensors) {
  TempDir dir;
  float x = 7;
  std::string path = dir / "s.safetensors";
  ASSERT_FALSE(writeSafeTensors(path, {{"scalar", {}, &x}}));
  Expected<SafeTensors> read = readSafeTensors(path);
  ASSERT_TRUE(read) << read.error().message();
  EXPECT_TRUE(read->tensors[0].shape.empty());
  EXPECT_EQ(read->tensors[0].data, std::vector<float>{7});
}

TEST(SafeTensors, ReadsForeignLayouts) {
  // Header padded with spaces, tensors out of name order, __metadata__.
  std::string header = R"({"__metadata__": {"format": "pt"}, )" +
                       entry("b", "F32", "[1]", "[12, 16]") + ", " +
                       entry("a", "F32", "[3]", "[0, 12]") + "}   ";
  std::vector<uint8_t> bytes = rawSafeTensors(header, {1, 2, 3, 4});
  Expected<SafeTensors> read =
      parseSafeTensors(bytes.data(), bytes.size(), "w.safetensors");
  ASSERT_TRUE(read) << read.error().message();
  ASSERT_EQ(read->tensors.size(), 2u);
  EXPECT_EQ(read->tensors[0].name, "a"); // data-offset order
  EXPECT_EQ(read->tensors[0].data, (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(read->tensors[1].data, (std::vector<float>{4}));
  EXPECT_EQ(read->metadata.at("format"), "pt");
}

TEST(SafeTensors, Errors) {
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}})"),
      "w.safetensors: tensor 'a' has dtype F16; only F32 is supported");
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 4]}})"),
      "w.safetensors: tensor 'a' has an unknown dtype 'Q4'");
  EXPECT_EQ(parseError(R"({"a": {"dtype": "F32", "shape": [2]}})"),
            "w.safetensors: tensor 'a' has no data_offsets [begin, end]");
  EXPECT_EQ(parseError(R"({"a": {"shape": [2], "data_offsets": [0, 8]}})"),
            "w.safetensors: tensor 'a' has no dtype string");
  EXPECT_EQ(parseError(R"({"a": {"dtype": "F32", "data_offsets": [0, 8]}})"),
            "w.safetensors: tensor 'a' has no shape array");
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})"),
      "w.safetensors: tensor 'a' has a bad shape [-2] (expected "
      "non-negative integers)");
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 24]}})"),
      "w.safetensors: tensor 'a' has data_offsets [8, 24] outside the "
      "data buffer (16 bytes)");
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 4]}})"),
      "w.safetensors: tensor 'a' has data_offsets [8, 4] outside the "
      "data buffer (16 bytes)");
  EXPECT_EQ(
      parseError(
          R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})"),
      "w.safetensors: tensor 'a' has 8 bytes of data, but F32 [3] "
      "needs 12");
  EXPECT_EQ(parseError("{" + entry("a", "F32", "[2]", "[0, 8]") + ", " +
                       entry("b", "F32", "[2]", "[4, 12]") + "}"),
            "w.safetensors: tensors 'a' and 'b' overlap in the data buffer");
  EXPECT_EQ(parseError(R"({"__metadata__": {"n": 3}})"),
            "w.safetensors: __metadata__ entry 'n' is not a string");
  EXPECT_EQ(parseError(R"({"__metadata__": 3})"),
            "w.safetensors: __metadata__ is not an object");
  EXPECT_EQ(parseError(R"([1, 2])"),
            "w.safetensors: the header is not a JSON object");
  EXPECT_EQ(parseError(R"({"a": 5})"),
            "w.safetensors: tensor 'a' is not a JSON object");
  EXPECT_EQ(
      parseError(R"({"a": )")
          .rfind("w.safetensors: invalid JSON: parse error at line 1, column",
                 0),
      0u);
}

// As strict as the format: one entry per name, tensors that tile the data
// buffer, and a bounded header.
TEST(SafeTensors, StrictLayout) {
  EXPECT_EQ(parseError("{" + entry("a", "F32", "[2]", "[0, 8]") + ", " +
                       entry("a", "F32", "[2]", "[8, 16]") + "}"),
            "w.safetensors: the header names 'a' twice");
  EXPECT_EQ(parseError(R"({"a": {"dtype": "F32", "dtype": "F32", "shape": [4],)"
                       R"( "data_offsets": [0, 16]}})"),
            "w.safetensors: the header names 'dtype' twice");
  EXPECT_EQ(parseError("{" + entry("a", "F32", "[1]", "[0, 4]") + ", " +
                       entry("b", "F32", "[2]", "[8, 16]") + "}"),
            "w.safetensors: a gap of 4 bytes between tensors 'a' and 'b' in "
            "the data buffer");
  EXPECT_EQ(parseError("{" + entry("a", "F32", "[3]", "[4, 16]") + "}"),
            "w.safetensors: a gap of 4 bytes before the first tensor, 'a'");
  EXPECT_EQ(parseError("{" + entry("a", "F32", "[3]", "[0, 12]") + "}"),
            "w.safetensors: 4 bytes after the last tensor's data");
  EXPECT_EQ(parseError("{}"),
            "w.safetensors: 16 bytes after the last tensor's data");

  std::vector<uint8_t> bytes = rawSafeTensors("{}", {});
  uint64_t huge = kMaxSafeTensorsHeader + 1;
  std::memcpy(bytes.data(), &huge, 8);
  Expected<SafeTensors> r =
      parseSafeTensors(bytes.data(), bytes.size(), "w.safetensors");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(),
            "w.safetensors: header length 100000001 exceeds the limit of "
            "100000000 bytes");
}

TEST(SafeTensors, ContainerErrors) {
  uint8_t small[4] = {1, 2, 3, 4};
  Expected<SafeTensors> r = parseSafeTensors(small, 4, "w.safetensors");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "w.safetensors: not a safetensors file (4 "
                                 "bytes, less than the 8-byte header length)");

  std::vector<uint8_t> bytes = rawSafeTensors("{}", {});
  uint64_t huge = 1000;
  std::memcpy(bytes.data(), &huge, 8);
  r = parseSafeTensors(bytes.data(), bytes.size(), "w.safetensors");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message(), "w.safetensors: truncated (header length "
                                 "1000 exceeds the file's 2 bytes after it)");

  r = readSafeTensors("/nonexistent/w.safetensors");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ErrorCode::Io);
  EXPECT_EQ(r.error().message(), "/nonexistent/w.safetensors: cannot open: "
                                 "No such file or directory");
}

TEST(SafeTensors, WriteErrorsKeepTheOldFile) {
  TempDir dir;
  float x = 1;
  Error e =
      writeSafeTensors(dir / "missing-dir/w.safetensors", {{"x", {1}, &x}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Io);
  EXPECT_NE(e.message().find("missing-dir/w.safetensors: cannot create"),
            std::string::npos);

  std::string path = dir / "w.safetensors";
  writeText(path, "precious");
  e = writeSafeTensors(path, {{"x", {1}, &x}, {"x", {1}, &x}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(), path + ": duplicate tensor name 'x'");
  std::vector<uint8_t> kept = readBytes(path);
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "precious");
}

} // namespace
