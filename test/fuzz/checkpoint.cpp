//===- checkpoint.cpp - fuzz target: the checkpoint reader ----------------===//
//
// Writes the input to a scratch file and reads it with loadCheckpoint (the
// safetensors container, then the checkpoint metadata: format, step, epoch,
// position, RNG state, optimizer tensor names). Seeds: checkpoints written
// by saveCheckpoint in moec-fuzz-seeds.
//
//===----------------------------------------------------------------------===//

#include "FuzzUtil.h"

#include "moec/Runtime/Checkpoint.h"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const std::string path =
      moec::fuzz::scratchDir() + "/checkpoint.safetensors";
  moec::fuzz::writeFile(path, data, size);
  auto ckpt = moec::rt::loadCheckpoint(path);
  if (ckpt)
    (void)ckpt->optimizerSlots();
  return 0;
}
