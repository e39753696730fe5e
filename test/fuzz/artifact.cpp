//===- artifact.cpp - fuzz target: the .moec artifact loader --------------===//
//
// Feeds the input to Artifact::fromBytes with the checksum check off
// (LoadOptions::verifyChecksum), so that mutated inputs reach the section
// table, the manifest and plan schema checks and the kernels ELF check.
// Nothing is executed: kernels are loaded by a Device, not here. Seeds: the
// runtime tests' synthetic artifacts (moec-fuzz-seeds).
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Artifact.h"

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  moec::rt::LoadOptions options;
  options.verifyChecksum = false;
  auto artifact = moec::rt::Artifact::fromBytes(
      std::vector<uint8_t>(data, data + size), "fuzz.moec", options);
  if (artifact)
    (void)(*artifact)->plan().kernelNames();
  return 0;
}
