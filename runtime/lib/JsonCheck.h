//===- JsonCheck.h - schema checks with JSON-pointer errors -----*- C++ -*-===//
//
// Internal to the runtime library. A JsonCheck reads typed fields out of a
// parsed nlohmann::json value and records the first failure as an Error
// "WHERE: /json/pointer: what is wrong". Nothing here throws.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_JSONCHECK_H
#define MOEC_RUNTIME_LIB_JSONCHECK_H

#include "moec/Runtime/Error.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace moec::rt {

/// Parses `text` as JSON into `out`; on a syntax error returns
/// "WHERE: invalid JSON: parse error at line L, column C: ...".
template <typename Json>
Error parseJson(const char *begin, const char *end, const std::string &where,
                ErrorCode code, Json &out) {
  try {
    out = Json::parse(begin, end);
  } catch (const std::exception &e) {
    std::string what = e.what();
    size_t bracket = what.find("] ");
    if (bracket != std::string::npos)
      what = what.substr(bracket + 2);
    return makeError(code, where, ": invalid JSON: ", what);
  }
  return Error::success();
}

/// "/a/b" with '~' and '/' escaped as JSON Pointer requires.
std::string jsonPointer(const std::string &parent, const std::string &key);
std::string jsonPointer(const std::string &parent, size_t index);

class JsonCheck {
public:
  using json = nlohmann::json;

  JsonCheck(std::string where, ErrorCode code)
      : where_(std::move(where)), code_(code) {}

  bool failed() const { return static_cast<bool>(error_); }
  Error takeError() { return std::move(error_); }

  /// Records "WHERE: POINTER: MESSAGE" (the first failure wins) and returns
  /// false.
  bool fail(const std::string &pointer, const std::string &message);

  /// `value` must be an object / an array.
  bool isObject(const json &value, const std::string &pointer);
  bool isArray(const json &value, const std::string &pointer);

  /// Member `key` of the object `obj` (at `pointer`); nullptr when absent,
  /// which is a failure if `required`.
  const json *member(const json &obj, const std::string &pointer,
                     const char *key, bool required = true);

  /// Typed members; each returns false (recording why) when the member is
  /// missing or of the wrong type.
  bool getString(const json &obj, const std::string &pointer, const char *key,
                 std::string &out, bool nonEmpty = false);
  /// One of `choices`.
  bool getEnum(const json &obj, const std::string &pointer, const char *key,
               std::initializer_list<const char *> choices, const char *what,
               std::string &out);
  /// An integer >= `min` (and within int64).
  bool getInt(const json &obj, const std::string &pointer, const char *key,
              int64_t min, int64_t &out);
  bool getUInt(const json &obj, const std::string &pointer, const char *key,
               uint64_t &out);
  /// A finite number > 0.
  bool getPositiveNumber(const json &obj, const std::string &pointer,
                         const char *key, double &out);
  /// A finite number >= `min` (and <= `max`; a `max` of 1e6 or more is a
  /// safety cap, named in the message only when the value exceeds it).
  bool getNumber(const json &obj, const std::string &pointer, const char *key,
                 double min, double max, double &out);
  /// true or false.
  bool getBool(const json &obj, const std::string &pointer, const char *key,
               bool &out);
  /// An array of positive integers whose product fits easily in int64.
  bool getShape(const json &obj, const std::string &pointer, const char *key,
                std::vector<int64_t> &out);

private:
  std::string where_;
  ErrorCode code_;
  Error error_;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_JSONCHECK_H
