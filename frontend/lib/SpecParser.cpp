//===- SpecParser.cpp - moec JSON model spec readers ----------------------===//
//
// The spec validator's diagnostics, key checks and scalar readers, and the
// formatting helpers its messages use.
//
//===----------------------------------------------------------------------===//

#include "SpecParser.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

using namespace moec::spec;
using namespace moec::spec::detail;

//===----------------------------------------------------------------------===//
// Formatting helpers
//===----------------------------------------------------------------------===//

namespace moec::spec::detail {

/// Shortest "%g"-like form that reads back as `value`: plain notation for
/// magnitudes in [1e-4, 1e17), otherwise an exponent without padding zeros
/// ("1e-6" rather than "1e-06").
std::string formatNumber(double value) {
  char buf[64];
  int precision = 1;
  for (; precision < 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value)
      break;
  }
  std::snprintf(buf, sizeof(buf), "%.*g", precision, value);
  std::string out = buf;
  std::size_t e = out.find('e');
  if (e == std::string::npos)
    return out;
  int exponent = std::atoi(out.c_str() + e + 1);
  if (exponent >= 0 && exponent < 17) {
    // "%g" switched to an exponent only because few digits are significant
    // (30 -> "3e+01"); print all the integer digits instead.
    std::snprintf(buf, sizeof(buf), "%.*g", exponent + 1, value);
    return buf;
  }
  std::string digits = out.substr(e + 2);
  digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
  return out.substr(0, e + 2) + digits;
}

/// "an object", "a string", ... as used in "expected X, got Y".
const char *describeType(const Json &value) {
  switch (value.type()) {
  case Json::value_t::object:
    return "an object";
  case Json::value_t::array:
    return "an array";
  case Json::value_t::string:
    return "a string";
  case Json::value_t::boolean:
    return "a boolean";
  case Json::value_t::number_integer:
  case Json::value_t::number_unsigned:
  case Json::value_t::number_float:
    return "a number";
  case Json::value_t::null:
    return "null";
  default:
    return "an unsupported value";
  }
}

std::string joinKeys(const KeyList &keys) {
  std::string out;
  for (const char *key : keys) {
    if (!out.empty())
      out += ", ";
    out += key;
  }
  return out;
}

std::string childPointer(const std::string &pointer, const char *key) {
  return pointer + "/" + key;
}

std::string childPointer(const std::string &pointer, std::size_t index) {
  return pointer + "/" + std::to_string(index);
}

const Json *member(const Json &object, const char *key) {
  if (!object.is_object())
    return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

/// The entry for `pointer` in `map`, or for its closest ancestor.
SourcePos lookUpwards(const std::map<std::string, SourcePos> &map,
                      std::string pointer) {
  while (true) {
    auto it = map.find(pointer);
    if (it != map.end())
      return it->second;
    if (pointer.empty())
      return SourcePos();
    pointer.erase(pointer.rfind('/'));
  }
}

} // namespace moec::spec::detail

namespace {

/// Optimal string alignment distance between `a` and `b`, compared
/// case-insensitively.
std::size_t editDistance(std::string_view a, std::string_view b) {
  auto lower = [](char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  };
  std::vector<std::vector<std::size_t>> d(
      a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] =
          std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
          lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

} // namespace

std::string
moec::spec::detail::didYouMean(std::string_view typed,
                               const std::vector<const char *> &candidates) {
  // Long enough user input is not compared at all: the table is quadratic.
  if (typed.empty() || typed.size() > 64)
    return "";
  // Up to a third of the typed name may differ (at least one edit).
  std::size_t limit = std::max<std::size_t>(1, typed.size() / 3);
  const char *best = nullptr;
  std::size_t bestDistance = limit + 1;
  for (const char *candidate : candidates) {
    std::size_t distance = editDistance(typed, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best ? std::string(", did you mean '") + best + "'?" : "";
}

//===----------------------------------------------------------------------===//
// SpecParser: diagnostics and readers
//===----------------------------------------------------------------------===//

bool SpecParser::fail(const std::string &pointer, std::string message) {
  error = SpecError{sourceName, lookUpwards(values, pointer), pointer,
                    std::move(message)};
  return false;
}

bool SpecParser::failAtKey(const std::string &pointer, std::string message) {
  auto it = keys.find(pointer);
  if (it == keys.end())
    return fail(pointer, std::move(message));
  error = SpecError{sourceName, it->second, pointer, std::move(message)};
  return false;
}

bool SpecParser::notUsedBy(const std::string &pointer, const char *what,
                           const char *kind) {
  return fail(pointer, std::string("not used by ") + what + " '" + kind + "'");
}

bool SpecParser::expectObject(const Json &value, const std::string &pointer) {
  if (value.is_object())
    return true;
  return fail(pointer,
              std::string("expected an object, got ") + describeType(value));
}

bool SpecParser::checkKeys(const Json &object, const std::string &pointer,
                           const KeyList &allowed) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    const std::string &key = it.key();
    bool known = std::any_of(allowed.begin(), allowed.end(),
                             [&](const char *name) { return key == name; });
    if (!known)
      return failAtKey(pointer + "/" + escapePointerToken(key),
                       "unknown key" + didYouMean(key, allowed) +
                           " (expected one of: " + joinKeys(allowed) + ")");
  }
  return true;
}

bool SpecParser::requireKeys(const Json &object, const std::string &pointer,
                             const KeyList &required) {
  for (const char *key : required)
    if (!member(object, key))
      return fail(pointer, std::string("missing required key '") + key + "'");
  return true;
}

bool SpecParser::readInt(const Json &value, const std::string &pointer,
                         int64_t min, int64_t &out, int64_t max) {
  if (!value.is_number_integer())
    return fail(pointer,
                std::string("expected an integer, got ") + describeType(value));
  if (value.is_number_unsigned()) {
    uint64_t u = *value.get_ptr<const Json::number_unsigned_t *>();
    if (u > static_cast<uint64_t>(max))
      return fail(pointer, "must be <= " + std::to_string(max) + ", got " +
                               std::to_string(u));
    out = static_cast<int64_t>(u);
  } else {
    out = *value.get_ptr<const Json::number_integer_t *>();
  }
  if (out < min)
    return fail(pointer, "must be >= " + std::to_string(min) + ", got " +
                             std::to_string(out));
  if (out > max)
    return fail(pointer, "must be <= " + std::to_string(max) + ", got " +
                             std::to_string(out));
  return true;
}

bool SpecParser::readUInt(const Json &value, const std::string &pointer,
                          uint64_t &out, uint64_t max) {
  if (!value.is_number_integer())
    return fail(pointer,
                std::string("expected an integer, got ") + describeType(value));
  if (!value.is_number_unsigned()) {
    int64_t i = *value.get_ptr<const Json::number_integer_t *>();
    if (i < 0)
      return fail(pointer, "must be >= 0, got " + std::to_string(i));
    out = static_cast<uint64_t>(i);
  } else {
    out = *value.get_ptr<const Json::number_unsigned_t *>();
  }
  if (out > max)
    return fail(pointer, "must be <= " + std::to_string(max) + ", got " +
                             std::to_string(out));
  return true;
}

bool SpecParser::readNumber(const Json &value, const std::string &pointer,
                            Range range, double &out) {
  if (!value.is_number())
    return fail(pointer,
                std::string("expected a number, got ") + describeType(value));
  double x = value.get<double>();
  if (!std::isfinite(x))
    return fail(pointer, "expected a finite number, got " + formatNumber(x));
  // The kernels and moec-run read every setting in f32: beyond its range it
  // would become infinite.
  if (std::fabs(x) > limits::kMaxNumber)
    return fail(pointer, "must be <= " + formatNumber(limits::kMaxNumber) +
                             " in magnitude (the largest f32), got " +
                             formatNumber(x));
  if (!range.contains(x))
    return fail(pointer,
                "must be " + range.describe() + ", got " + formatNumber(x));
  out = x;
  return true;
}

bool SpecParser::readBool(const Json &value, const std::string &pointer,
                          bool &out) {
  if (!value.is_boolean())
    return fail(pointer,
                std::string("expected a boolean, got ") + describeType(value));
  out = *value.get_ptr<const Json::boolean_t *>();
  return true;
}

bool SpecParser::readString(const Json &value, const std::string &pointer,
                            std::string &out) {
  if (!value.is_string())
    return fail(pointer,
                std::string("expected a string, got ") + describeType(value));
  out = *value.get_ptr<const Json::string_t *>();
  return true;
}

bool SpecParser::readNonEmptyString(const Json &value,
                                    const std::string &pointer,
                                    std::string &out) {
  if (!readString(value, pointer, out))
    return false;
  if (out.empty())
    return fail(pointer, "expected a non-empty string, got an empty string");
  return true;
}

bool SpecParser::optInt(const Json &object, const std::string &pointer,
                        const char *key, int64_t min, int64_t &out,
                        int64_t max) {
  const Json *value = member(object, key);
  return !value || readInt(*value, childPointer(pointer, key), min, out, max);
}

bool SpecParser::optNumber(const Json &object, const std::string &pointer,
                           const char *key, Range range, double &out) {
  const Json *value = member(object, key);
  return !value || readNumber(*value, childPointer(pointer, key), range, out);
}

bool SpecParser::optBool(const Json &object, const std::string &pointer,
                         const char *key, bool &out) {
  const Json *value = member(object, key);
  return !value || readBool(*value, childPointer(pointer, key), out);
}
