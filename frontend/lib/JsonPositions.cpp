//===- JsonPositions.cpp - Source positions of JSON values ----------------===//
//
// An iterative (so arbitrarily deep documents cannot overflow the stack)
// scanner over well-formed JSON text. It does not validate beyond what it
// needs to find its way: nlohmann::json has already accepted the text.
//
//===----------------------------------------------------------------------===//

#include "JsonPositions.h"

#include <cstdint>
#include <set>
#include <vector>

using namespace moec::spec;
using namespace moec::spec::detail;

namespace {

/// Values nested deeper than this get no positions of their own (they map to
/// their closest recorded ancestor) and their objects are not checked for
/// duplicate keys. Without a limit, pointers would make deeply nested input
/// cost quadratic time and memory; no spec value is nested anywhere near
/// this deep.
constexpr std::size_t kMaxDepth = 64;

class Scanner {
public:
  explicit Scanner(std::string_view text) : text(text) {}

  std::optional<JsonPositions> run();

private:
  /// An object or array being scanned.
  struct Frame {
    Frame(bool isObject, bool tracked, std::string pointer)
        : isObject(isObject), tracked(tracked), pointer(std::move(pointer)) {}

    bool isObject;
    /// Whether the members or elements get positions (see kMaxDepth).
    bool tracked;
    std::string pointer;
    std::size_t index = 0;
    std::set<std::string> seenKeys;
  };

  bool atEnd() const { return pos >= text.size(); }
  char peek() const { return atEnd() ? '\0' : text[pos]; }
  SourcePos here() const {
    return {static_cast<unsigned>(line),
            static_cast<unsigned>(pos - lineStart + 1)};
  }
  void skipWhitespace();
  /// Reads a string literal starting at the opening quote; decodes it into
  /// `out` when given.
  bool readString(std::string *out);
  /// Skips a number or literal (true, false, null).
  bool skipScalar();
  /// Reads `"key" :` and, in a tracked frame, sets `pointer` to the
  /// member's pointer.
  bool readMember(Frame &frame, std::string &pointer);

  std::string_view text;
  std::size_t pos = 0;
  std::size_t line = 1;
  std::size_t lineStart = 0;
  JsonPositions result;
};

} // namespace

void Scanner::skipWhitespace() {
  while (!atEnd()) {
    char c = text[pos];
    if (c == '\n') {
      ++line;
      lineStart = pos + 1;
    } else if (c != ' ' && c != '\t' && c != '\r') {
      return;
    }
    ++pos;
  }
}

static void appendUtf8(std::string &out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

static bool readHex4(std::string_view text, std::size_t at, uint32_t &out) {
  if (at + 4 > text.size())
    return false;
  out = 0;
  for (std::size_t i = at; i < at + 4; ++i) {
    char c = text[i];
    out <<= 4;
    if (c >= '0' && c <= '9')
      out |= static_cast<uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      out |= static_cast<uint32_t>(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
      out |= static_cast<uint32_t>(c - 'A' + 10);
    else
      return false;
  }
  return true;
}

bool Scanner::readString(std::string *out) {
  ++pos; // Opening quote.
  while (!atEnd()) {
    char c = text[pos++];
    if (c == '"')
      return true;
    if (c != '\\') {
      if (out)
        *out += c;
      continue;
    }
    if (atEnd())
      return false;
    char e = text[pos++];
    if (e == 'u') {
      uint32_t cp;
      if (!readHex4(text, pos, cp))
        return false;
      pos += 4;
      // A high surrogate followed by an escaped low surrogate is one code
      // point; nlohmann::json has rejected unpaired surrogates already.
      if (cp >= 0xD800 && cp <= 0xDBFF && pos + 6 <= text.size() &&
          text[pos] == '\\' && text[pos + 1] == 'u') {
        uint32_t low;
        if (readHex4(text, pos + 2, low) && low >= 0xDC00 && low <= 0xDFFF) {
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          pos += 6;
        }
      }
      if (out)
        appendUtf8(*out, cp);
      continue;
    }
    if (!out)
      continue;
    switch (e) {
    case 'b':
      *out += '\b';
      break;
    case 'f':
      *out += '\f';
      break;
    case 'n':
      *out += '\n';
      break;
    case 'r':
      *out += '\r';
      break;
    case 't':
      *out += '\t';
      break;
    default: // '"', '\\' and '/'.
      *out += e;
      break;
    }
  }
  return false;
}

bool Scanner::skipScalar() {
  std::size_t start = pos;
  while (!atEnd()) {
    char c = text[pos];
    if (c == ',' || c == ']' || c == '}' || c == ' ' || c == '\t' ||
        c == '\n' || c == '\r')
      break;
    ++pos;
  }
  return pos != start;
}

bool Scanner::readMember(Frame &frame, std::string &pointer) {
  skipWhitespace();
  if (peek() != '"')
    return false;
  SourcePos keyPos = here();
  std::string key;
  if (!readString(frame.tracked ? &key : nullptr))
    return false;
  skipWhitespace();
  if (peek() != ':')
    return false;
  ++pos;
  if (!frame.tracked)
    return true;
  pointer = frame.pointer + "/" + escapePointerToken(key);
  if (frame.seenKeys.insert(key).second)
    result.keys[pointer] = keyPos;
  else if (!result.duplicateKey)
    result.duplicateKey = std::make_pair(pointer, keyPos);
  return true;
}

std::optional<JsonPositions> Scanner::run() {
  std::vector<Frame> stack;
  // Pointer of the value about to be read.
  std::string pointer;
  while (true) {
    // Read one value at `pointer`.
    skipWhitespace();
    if (atEnd())
      return std::nullopt;
    bool tracked = stack.empty() || stack.back().tracked;
    if (tracked)
      result.values[pointer] = here();
    char c = peek();
    bool opened = false;
    if (c == '{' || c == '[') {
      ++pos;
      skipWhitespace();
      char close = c == '{' ? '}' : ']';
      if (peek() == close) {
        ++pos;
      } else {
        bool trackChildren = tracked && stack.size() < kMaxDepth;
        stack.emplace_back(c == '{', trackChildren,
                           trackChildren ? pointer : std::string());
        opened = true;
      }
    } else if (c == '"') {
      if (!readString(nullptr))
        return std::nullopt;
    } else if (!skipScalar()) {
      return std::nullopt;
    }

    if (opened) {
      Frame &frame = stack.back();
      if (frame.isObject) {
        if (!readMember(frame, pointer))
          return std::nullopt;
      } else if (frame.tracked) {
        pointer = frame.pointer + "/0";
      }
      continue;
    }

    // After a complete value: close containers until one has a next element.
    while (true) {
      skipWhitespace();
      if (stack.empty())
        return atEnd() ? std::optional<JsonPositions>(std::move(result))
                       : std::nullopt;
      Frame &frame = stack.back();
      char next = peek();
      if (next == ',') {
        ++pos;
        if (frame.isObject) {
          if (!readMember(frame, pointer))
            return std::nullopt;
        } else if (frame.tracked) {
          pointer = frame.pointer + "/" + std::to_string(++frame.index);
        }
        break;
      }
      if (next != (frame.isObject ? '}' : ']'))
        return std::nullopt;
      ++pos;
      stack.pop_back();
    }
  }
}

std::optional<JsonPositions>
moec::spec::detail::scanJsonPositions(std::string_view text) {
  return Scanner(text).run();
}

SourcePos moec::spec::detail::positionOfOffset(std::string_view text,
                                               std::size_t offset) {
  if (offset > text.size())
    offset = text.size();
  std::size_t line = 1;
  std::size_t lineStart = 0;
  for (std::size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      lineStart = i + 1;
    }
  }
  return {static_cast<unsigned>(line),
          static_cast<unsigned>(offset - lineStart + 1)};
}

std::string moec::spec::detail::escapePointerToken(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (char c : token) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}
