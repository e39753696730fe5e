//===- JsonPositions.h - Source positions of JSON values --------*- C++ -*-===//
//
// nlohmann::json does not track where values come from. This scanner walks
// the raw text of an already well-formed JSON document and records, for every
// value, its JSON pointer (RFC 6901) and the line and column of its first
// character, and, for every object member, the position of its key. It also
// spots duplicate keys, which nlohmann::json silently collapses.
//
// Private to the frontend library.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_FRONTEND_LIB_JSONPOSITIONS_H
#define MOEC_FRONTEND_LIB_JSONPOSITIONS_H

#include "moec/Frontend/Spec.h"

#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace moec::spec::detail {

struct JsonPositions {
  /// JSON pointer of a value -> position of its first character.
  std::map<std::string, SourcePos> values;
  /// JSON pointer of an object member -> position of its key's opening quote.
  std::map<std::string, SourcePos> keys;
  /// The first repeated key in document order, if any: the member's pointer
  /// and the position of the repeated (second) key.
  std::optional<std::pair<std::string, SourcePos>> duplicateKey;
};

/// Scans `text`, which must be well-formed JSON (RFC 8259, no comments, no
/// byte order mark). Returns std::nullopt if the text turns out not to be.
/// Lines and columns are 1-based; columns count bytes.
std::optional<JsonPositions> scanJsonPositions(std::string_view text);

/// 1-based line and column of the byte at `offset` in `text` (an offset at or
/// past the end gives the position just after the last character).
SourcePos positionOfOffset(std::string_view text, std::size_t offset);

/// Escapes one reference token of a JSON pointer: '~' -> "~0", '/' -> "~1".
std::string escapePointerToken(std::string_view token);

} // namespace moec::spec::detail

#endif // MOEC_FRONTEND_LIB_JSONPOSITIONS_H
