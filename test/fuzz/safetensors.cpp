//===- safetensors.cpp - fuzz target: the safetensors reader --------------===//
//
// Feeds the input to parseSafeTensors, accepting F32 and I32 tensors.
// Seeds: small weights files written by moec-fuzz-seeds.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/SafeTensors.h"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  auto file = moec::rt::parseSafeTensors(data, size, "fuzz.safetensors",
                                         moec::rt::TensorTypes::F32AndI32);
  (void)file;
  return 0;
}
