//===- spec.cpp - fuzz target: the model spec parser ----------------------===//
//
// Feeds the input as spec text to parseSpec (JSON parsing, schema checks,
// presets, limits and the memory estimate). Seeds: examples/*.json and
// test/Frontend/bad-specs/*.json.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/Spec.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  moec::spec::ParseResult result = moec::spec::parseSpec(text, "fuzz");
  if (result)
    (void)moec::spec::estimateTotals(*result.spec);
  return 0;
}
