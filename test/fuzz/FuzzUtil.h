//===- FuzzUtil.h - helpers shared by the fuzz targets ----------*- C++ -*-===//
//
// The file-based readers (checkpoints, datasets) read from disk, so their
// fuzz targets write each input into one scratch directory per process and
// overwrite it on every run.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TEST_FUZZ_FUZZUTIL_H
#define MOEC_TEST_FUZZ_FUZZUTIL_H

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <unistd.h>

namespace moec::fuzz {

/// A directory under $TMPDIR (or /tmp) private to this process, created on
/// first use; `sub` names a subdirectory inside it (created too).
inline std::string scratchDir(const std::string &sub = "") {
  static const std::string root = [] {
    const char *tmp = std::getenv("TMPDIR");
    std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/moec-fuzz-" +
                      std::to_string(getpid());
    std::filesystem::create_directories(dir);
    return dir;
  }();
  std::string dir = sub.empty() ? root : root + "/" + sub;
  std::filesystem::create_directories(dir);
  return dir;
}

/// Writes `size` bytes to `path`, replacing it.
inline void writeFile(const std::string &path, const uint8_t *data,
                      size_t size) {
  FILE *f = std::fopen(path.c_str(), "wb");
  if (!f)
    std::abort();
  if (size && std::fwrite(data, 1, size, f) != size)
    std::abort();
  std::fclose(f);
}

} // namespace moec::fuzz

#endif // MOEC_TEST_FUZZ_FUZZUTIL_H
