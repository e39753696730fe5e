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
//   "kernels"   an x86-64 ELF shared object exporting every kernel named in
//               the plan, each `void kernel(void **args, int64_t begin,
//               int64_t end)`: args[i] points at the i-th buffer argument of
//               the dispatch; the kernel computes tiles [begin, end) of its
//               parallel dimension (images, for every inference kernel).
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
inline constexpr uint32_t kVersionMinor = 1;
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

} // namespace moec::artifact

#endif // MOEC_RUNTIME_ARTIFACTFORMAT_H
