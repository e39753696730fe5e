//===- FileUtil.cpp - reading files and writing them atomically -----------===//

#include "moec/Runtime/FileUtil.h"

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace moec::rt {

std::string systemError(int errnum) { return std::strerror(errnum); }

Expected<std::vector<uint8_t>> readFile(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return makeError(ErrorCode::Io, path,
                     ": cannot open: ", systemError(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return makeError(ErrorCode::Io, path, ": cannot stat: ", systemError(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return makeError(ErrorCode::Io, path, ": is a directory, not a file");
  }
  std::vector<uint8_t> bytes;
  if (st.st_size > 0)
    bytes.reserve(static_cast<size_t>(st.st_size));
  uint8_t buffer[1 << 16];
  for (;;) {
    ssize_t got = ::read(fd, buffer, sizeof(buffer));
    if (got < 0) {
      if (errno == EINTR)
        continue;
      int err = errno;
      ::close(fd);
      return makeError(ErrorCode::Io, path,
                       ": read failed: ", systemError(err));
    }
    if (got == 0)
      break;
    bytes.insert(bytes.end(), buffer, buffer + got);
  }
  ::close(fd);
  return bytes;
}

Expected<AtomicFile> AtomicFile::create(const std::string &path) {
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string temp = cat(path, ".tmp.", ::getpid(), ".", counter++);
    int fd =
        ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0)
      return AtomicFile(path, temp, fd);
    if (errno != EEXIST)
      return makeError(ErrorCode::Io, path,
                       ": cannot create: ", systemError(errno));
  }
  return makeError(ErrorCode::Io, path,
                   ": cannot create a temporary file next to it");
}

AtomicFile::AtomicFile(AtomicFile &&other) noexcept
    : path_(std::move(other.path_)), tempPath_(std::move(other.tempPath_)),
      fd_(other.fd_) {
  other.fd_ = -1;
  other.tempPath_.clear();
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() {
  if (fd_ >= 0)
    ::close(fd_);
  fd_ = -1;
  if (!tempPath_.empty())
    ::unlink(tempPath_.c_str());
  tempPath_.clear();
}

Error AtomicFile::write(const void *data, size_t size) {
  if (fd_ < 0)
    return makeError(ErrorCode::Internal, path_, ": write after commit");
  const auto *bytes = static_cast<const char *>(data);
  while (size > 0) {
    ssize_t put = ::write(fd_, bytes, size);
    if (put < 0) {
      if (errno == EINTR)
        continue;
      int err = errno;
      discard();
      return makeError(ErrorCode::Io, path_,
                       ": write failed: ", systemError(err));
    }
    bytes += put;
    size -= static_cast<size_t>(put);
  }
  return Error::success();
}

Error AtomicFile::commit() {
  if (fd_ < 0)
    return makeError(ErrorCode::Internal, path_, ": commit without a file");
  int err = ::fsync(fd_) == 0 ? 0 : errno;
  if (::close(fd_) != 0 && err == 0)
    err = errno;
  fd_ = -1;
  if (err != 0) {
    discard();
    return makeError(ErrorCode::Io, path_,
                     ": write failed: ", systemError(err));
  }
  fd_ = -1;
  if (::rename(tempPath_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    discard();
    return makeError(ErrorCode::Io, path_,
                     ": cannot write: ", systemError(err));
  }
  tempPath_.clear();
  return Error::success();
}

Error writeFileAtomic(const std::string &path, const void *data, size_t size) {
  Expected<AtomicFile> file = AtomicFile::create(path);
  if (!file)
    return file.takeError();
  if (Error e = file->write(data, size))
    return e;
  return file->commit();
}

} // namespace moec::rt
