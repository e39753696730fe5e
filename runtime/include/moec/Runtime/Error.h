//===- Error.h - runtime errors and Expected<T> -----------------*- C++ -*-===//
//
// Every fallible runtime call returns an Error or an Expected<T>: a code (the
// C API's moec_status) and one message naming what went wrong and where,
// e.g. "model.moec: truncated (header says 123456 bytes, file has 1000)".
// Nothing in the runtime throws across its API.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_ERROR_H
#define MOEC_RUNTIME_ERROR_H

#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace moec::rt {

/// The failure kinds; the values equal the C API's moec_status values.
enum class ErrorCode {
  Ok = 0,
  Io = 1,       ///< a file cannot be opened, read or written
  Format = 2,   ///< a malformed artifact (container, manifest, plan, kernels)
  Version = 3,  ///< an artifact of an unsupported major version
  Checksum = 4, ///< an artifact whose checksum does not match
  Weights = 5,  ///< a malformed weights file or one that does not fit
  Data = 6,     ///< a malformed or unsuitable dataset
  Argument = 7, ///< a bad argument to an API call
  Device = 8,   ///< the device failed (allocation, threads, kernel loading)
  Internal = 9, ///< a bug in the runtime
};

/// A short lower-case name of `code` ("io", "format", ...).
const char *errorCodeName(ErrorCode code);

/// Success (the default) or a failure with a code and a message. Like
/// llvm::Error, it converts to true on failure: `if (Error e = f()) return e;`
class [[nodiscard]] Error {
public:
  Error() = default;
  Error(ErrorCode code, std::string message)
      : code_(code), message_(std::move(message)) {}

  static Error success() { return Error(); }

  explicit operator bool() const { return code_ != ErrorCode::Ok; }
  ErrorCode code() const { return code_; }
  const std::string &message() const { return message_; }

private:
  ErrorCode code_ = ErrorCode::Ok;
  std::string message_;
};

/// A value or an Error. Converts to true when it holds a value.
template <typename T> class [[nodiscard]] Expected {
public:
  Expected(T value) : value_(std::move(value)) {}
  Expected(Error error) : error_(std::move(error)) {}

  explicit operator bool() const { return value_.has_value(); }
  T &operator*() { return *value_; }
  const T &operator*() const { return *value_; }
  T *operator->() { return &*value_; }
  const T *operator->() const { return &*value_; }

  const Error &error() const { return error_; }
  Error takeError() { return std::move(error_); }

private:
  std::optional<T> value_;
  Error error_;
};

/// Concatenates its arguments with operator<<.
template <typename... Args> std::string cat(const Args &...args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// Error(code, cat(args...)).
template <typename... Args>
Error makeError(ErrorCode code, const Args &...args) {
  return Error(code, cat(args...));
}

} // namespace moec::rt

#endif // MOEC_RUNTIME_ERROR_H
