//===- Format.h - printf-style formatting into strings ----------*- C++ -*-===//
//
// Internal to the runtime library. The reports and messages the library
// writes for moec-run (Report.cpp, Trainer.cpp) keep the tool's printf
// formats ("%.4f", "%" PRId64), formatted into strings so that the caller
// chooses where they go; the SVG plots escape their labels with escapeXml.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_FORMAT_H
#define MOEC_RUNTIME_LIB_FORMAT_H

#include <cstdarg>
#include <cstdio>
#include <string>

namespace moec::rt {

/// Appends printf(format, args) to `out`.
inline void appendVPrintf(std::string &out, const char *format, va_list args) {
  va_list copy;
  va_copy(copy, args);
  int size = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  if (size <= 0)
    return;
  const size_t old = out.size();
  out.resize(old + size_t(size) + 1);
  std::vsnprintf(&out[old], size_t(size) + 1, format, args);
  out.resize(old + size_t(size));
}

/// `text` with &, <, > and " as XML entities (the SVG plots' labels).
inline std::string escapeXml(const std::string &text) {
  std::string out;
  for (char c : text) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    default:
      out += c;
    }
  }
  return out;
}

/// Appends printf(format, ...) to `out`.
__attribute__((format(printf, 2, 3))) inline void
appendPrintf(std::string &out, const char *format, ...) {
  va_list args;
  va_start(args, format);
  appendVPrintf(out, format, args);
  va_end(args);
}

/// printf(format, ...) as a string.
__attribute__((format(printf, 1, 2))) inline std::string
formatPrintf(const char *format, ...) {
  std::string out;
  va_list args;
  va_start(args, format);
  appendVPrintf(out, format, args);
  va_end(args);
  return out;
}

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_FORMAT_H
