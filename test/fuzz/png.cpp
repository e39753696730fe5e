//===- png.cpp - fuzz target: the image-folder (PNG) reader ---------------===//
//
// The input: 3 bytes choosing the expected geometry (channels 1 or 3 from
// byte 0's low bit, height and width 1 + byte % 16), then a PNG file. It is
// written as <scratch>/png/cls/a.png and read with loadImageFolder (libpng
// decoding, color conversion to gray or RGB, the size check). Seeds: small
// gray, RGB, RGBA and palette PNGs (moec-fuzz-seeds).
//
//===----------------------------------------------------------------------===//

#include "FuzzUtil.h"

#include "moec/Runtime/Data.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string dir = moec::fuzz::scratchDir("png");
  static const std::string cls = moec::fuzz::scratchDir("png/cls");
  if (size < 3)
    return 0;
  int64_t channels = (data[0] & 1) ? 3 : 1;
  int64_t height = 1 + data[1] % 16, width = 1 + data[2] % 16;
  moec::fuzz::writeFile(cls + "/a.png", data + 3, size - 3);
  auto dataset = moec::rt::loadImageFolder(dir, channels, height, width);
  (void)dataset;
  return 0;
}
