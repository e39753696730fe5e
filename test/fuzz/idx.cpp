//===- idx.cpp - fuzz target: the Fashion-MNIST IDX reader ----------------===//
//
// The input holds two files: a 4-byte little-endian length N, then N bytes
// of t10k-images-idx3-ubyte, then the rest as t10k-labels-idx1-ubyte
// (N is clamped to what is there). Both are written to a scratch directory
// and read with loadFashionMnist(dir, "test"). Seeds: tiny IDX pairs and a
// slice of the installed Fashion-MNIST test split (moec-fuzz-seeds).
//
//===----------------------------------------------------------------------===//

#include "FuzzUtil.h"

#include "moec/Runtime/Data.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string dir = moec::fuzz::scratchDir("idx");
  if (size < 4)
    return 0;
  size_t n = size_t(data[0]) | size_t(data[1]) << 8 | size_t(data[2]) << 16 |
             size_t(data[3]) << 24;
  data += 4;
  size -= 4;
  n = std::min(n, size);
  moec::fuzz::writeFile(dir + "/t10k-images-idx3-ubyte", data, n);
  moec::fuzz::writeFile(dir + "/t10k-labels-idx1-ubyte", data + n, size - n);
  auto dataset = moec::rt::loadFashionMnist(dir, "test");
  (void)dataset;
  return 0;
}
