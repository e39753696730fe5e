//===- ArtifactFormat.h - the .moec container format ------------*- C++ -*-===//
//
// The on-disk layout of a compiled model (docs/artifact.md). The runtime
// owns this schema; the compiler includes this header to write it. Plain
// C++17, no dependencies.
//
// A .moec file is little-endian:
//   FileHeader (64 bytes)
//   sections, each starting at a 64-byte aligned offset
//   section table: sectionCount SectionEntry records
// The checksum (FNV-1a 64) covers every byte after the header.
//
// Sections:
//   "manifest"  JSON: model, entry points and signatures, parameter table,
//               FLOPs and parameter counts, arena size.
//   "plan"      JSON: per entry point, the ordered kernel dispatches with
//               their buffer arguments (arena / parameter offsets).
//   "kernels"   target "cpu": an x86-64 ELF shared object exporting every
//               kernel named in the plan, each `void kernel(void **args,
//               int64_t begin, int64_t end)`: args[i] points at the i-th
//               buffer argument of the dispatch; the kernel computes tiles
//               [begin, end) of its parallel dimension (images, for every
//               inference kernel).
//               target "cuda": PTX text and one NUL byte, an `.entry` per
//               plan kernel with the parameters (.u64 args..., .u64 begin,
//               .u64 scratch), launched over range blocks of the manifest's
//               cuda.block_threads threads (docs/artifact.md, "Target
//               cuda").
//
// The manifest's optional dataset.normalization (1.2) records the
// per-channel mean and std the model was trained with: the constants of
// datasetNormalization below for the spec's dataset.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_ARTIFACTFORMAT_H
#define MOEC_RUNTIME_ARTIFACTFORMAT_H

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace moec::artifact {

inline constexpr char kMagic[8] = {'M', 'O', 'E', 'C', 'A', 'R', 'T', '\0'};
/// Readers reject another major version; minor versions only add.
inline constexpr uint32_t kVersionMajor = 1;
inline constexpr uint32_t kVersionMinor = 2;
/// Section payloads and the section table start at multiples of this.
inline constexpr uint64_t kAlignment = 64;

inline constexpr const char *kManifestSection = "manifest";
inline constexpr const char *kPlanSection = "plan";
inline constexpr const char *kKernelsSection = "kernels";

struct FileHeader {
  char magic[8];
  uint32_t versionMajor;
  uint32_t versionMinor;
  uint64_t fileSize;
  uint64_t sectionCount;
  uint64_t sectionTableOffset;
  /// FNV-1a 64 of bytes [sizeof(FileHeader), fileSize).
  uint64_t checksum;
  uint8_t reserved[16];
};
static_assert(sizeof(FileHeader) == 64, "header layout");

struct SectionEntry {
  /// NUL-padded section name.
  char name[16];
  uint64_t offset;
  uint64_t size;
  uint64_t reserved[2];
};
static_assert(sizeof(SectionEntry) == 48, "section entry layout");

inline constexpr uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
inline constexpr uint64_t kFnvPrime = 0x100000001b3ULL;

/// FNV-1a 64; pass the previous result as `hash` to continue a running sum.
inline uint64_t fnv1a64(const void *data, size_t size,
                        uint64_t hash = kFnvOffsetBasis) {
  const auto *bytes = static_cast<const unsigned char *>(data);
  for (size_t i = 0; i < size; ++i) {
    hash ^= bytes[i];
    hash *= kFnvPrime;
  }
  return hash;
}

inline uint64_t alignTo(uint64_t value, uint64_t alignment = kAlignment) {
  return (value + alignment - 1) / alignment * alignment;
}

/// Per-channel normalization x = (pixel / 255 - mean[c]) / std[c]; one-channel
/// data uses element 0.
struct DatasetNormalization {
  double mean[3];
  double std[3];
};

/// What the runtime's loader of dataset kind `kind` ("fashion-mnist",
/// "cifar10", "image-folder") applies; any other kind gets image-folder's.
/// The runtime uses these as floats (static_cast<float>).
inline DatasetNormalization datasetNormalization(const char *kind) {
  if (std::strcmp(kind, "fashion-mnist") == 0)
    return {{0.2860, 0.2860, 0.2860}, {0.3530, 0.3530, 0.3530}};
  if (std::strcmp(kind, "cifar10") == 0)
    return {{0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616}};
  return {{0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}};
}

} // namespace moec::artifact

#endif // MOEC_RUNTIME_ARTIFACTFORMAT_H
