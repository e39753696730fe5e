//===- cifar.cpp - fuzz target: the CIFAR-10 binary reader ----------------===//
//
// Writes the input as test_batch.bin in a scratch directory and reads it
// with loadCifar10(dir, "test") (3073-byte records, label checks). Seeds:
// a few synthetic records (moec-fuzz-seeds).
//
//===----------------------------------------------------------------------===//

#include "FuzzUtil.h"

#include "moec/Runtime/Data.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string dir = moec::fuzz::scratchDir("cifar");
  moec::fuzz::writeFile(dir + "/test_batch.bin", data, size);
  auto dataset = moec::rt::loadCifar10(dir, "test");
  (void)dataset;
  return 0;
}
