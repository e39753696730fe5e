//===- FileUtil.h - reading files and writing them atomically ---*- C++ -*-===//
//
// Whole-file reads, and writes that never leave a half-written file: the
// data goes to a temporary file in the target's directory, renamed over the
// target once complete.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_FILEUTIL_H
#define MOEC_RUNTIME_FILEUTIL_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <string>
#include <vector>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "the runtime reads and writes little-endian files in place");

namespace moec::rt {

/// "strerror(errno)".
std::string systemError(int errnum);

/// The whole of `path`; Io errors read "PATH: cannot open: REASON".
Expected<std::vector<uint8_t>> readFile(const std::string &path);

/// A file written to a temporary name in the target's directory and renamed
/// over the target by commit(), so a failed write leaves the old file (or no
/// file) behind. Destroying an uncommitted AtomicFile removes the temporary.
/// A target that is a symbolic link is resolved first: its final target is
/// replaced (or created) atomically and the link stays.
/// A character or block device or a FIFO is written through, never replaced;
/// a directory or other special file is an Io error.
class AtomicFile {
public:
  static Expected<AtomicFile> create(const std::string &path);
  AtomicFile(AtomicFile &&other) noexcept;
  AtomicFile &operator=(AtomicFile &&) = delete;
  AtomicFile(const AtomicFile &) = delete;
  ~AtomicFile();

  Error write(const void *data, size_t size);
  /// Flushes, closes and renames onto the target.
  Error commit();

private:
  AtomicFile(std::string path, std::string tempPath, int fd)
      : path_(std::move(path)), tempPath_(std::move(tempPath)), fd_(fd) {}
  void discard();

  std::string path_, tempPath_;
  int fd_ = -1;
};

/// Writes `size` bytes to `path` through an AtomicFile.
Error writeFileAtomic(const std::string &path, const void *data, size_t size);

} // namespace moec::rt

#endif // MOEC_RUNTIME_FILEUTIL_H
