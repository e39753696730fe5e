//===- Error.cpp - runtime errors -----------------------------------------===//

#include "moec/Runtime/Error.h"

namespace moec::rt {

const char *errorCodeName(ErrorCode code) {
  switch (code) {
  case ErrorCode::Ok:
    return "ok";
  case ErrorCode::Io:
    return "io";
  case ErrorCode::Format:
    return "format";
  case ErrorCode::Version:
    return "version";
  case ErrorCode::Checksum:
    return "checksum";
  case ErrorCode::Weights:
    return "weights";
  case ErrorCode::Data:
    return "data";
  case ErrorCode::Argument:
    return "argument";
  case ErrorCode::Device:
    return "device";
  case ErrorCode::Internal:
    return "internal";
  }
  return "unknown";
}

} // namespace moec::rt
