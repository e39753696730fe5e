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

/// Where an output named `path` goes: a symbolic link's final target (so
/// the link stays; a target that does not exist yet is created), else
/// `path`.
static Expected<std::string> outputTarget(const std::string &path) {
  std::string target = path;
  for (int hops = 0; hops < 40; ++hops) {
    struct stat st;
    if (::lstat(target.c_str(), &st) != 0 || !S_ISLNK(st.st_mode))
      return target;
    std::vector<char> buffer(size_t(st.st_size > 0 ? st.st_size : 255) + 1);
    ssize_t length = ::readlink(target.c_str(), buffer.data(), buffer.size());
    if (length < 0 || size_t(length) >= buffer.size())
      return makeError(ErrorCode::Io, path, ": cannot read the symbolic link ",
                       target);
    std::string next(buffer.data(), size_t(length));
    size_t slash = target.rfind('/');
    if (next.empty() || next[0] == '/' || slash == std::string::npos)
      target = next;
    else
      target = target.substr(0, slash + 1) + next;
  }
  return makeError(ErrorCode::Io, path, ": too many levels of symbolic links");
}

Expected<AtomicFile> AtomicFile::create(const std::string &path) {
  // What the path names, through any links: a device or a pipe is written
  // through as named (so /dev/stdout reaches whatever fd 1 is), never
  // replaced.
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      return makeError(ErrorCode::Io, path,
                       ": cannot write: is a directory, not a file");
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) || S_ISFIFO(st.st_mode)) {
      int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd < 0)
        return makeError(ErrorCode::Io, path,
                         ": cannot open: ", systemError(errno));
      return AtomicFile(path, std::string(), fd);
    }
    if (!S_ISREG(st.st_mode))
      return makeError(ErrorCode::Io, path,
                       ": cannot write: not a regular file, device or pipe");
  }
  Expected<std::string> target = outputTarget(path);
  if (!target)
    return target.takeError();
  static std::atomic<unsigned> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string temp = cat(*target, ".tmp.", ::getpid(), ".", counter++);
    int fd =
        ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0)
      return AtomicFile(*target, temp, fd);
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
  const bool direct = tempPath_.empty();
  // A device or pipe written through is only closed (fsync may not apply).
  int err = direct || ::fsync(fd_) == 0 ? 0 : errno;
  if (::close(fd_) != 0 && err == 0)
    err = errno;
  fd_ = -1;
  if (err != 0) {
    discard();
    return makeError(ErrorCode::Io, path_,
                     ": write failed: ", systemError(err));
  }
  if (direct)
    return Error::success();
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
