//===- JsonCheck.cpp - schema checks with JSON-pointer errors -------------===//
//
// Internal to the runtime library.
//
//===----------------------------------------------------------------------===//

#include "JsonCheck.h"

#include <cmath>
#include <limits>

namespace moec::rt {

std::string jsonPointer(const std::string &parent, const std::string &key) {
  std::string out = parent + "/";
  for (char c : key) {
    if (c == '~')
      out += "~0";
    else if (c == '/')
      out += "~1";
    else
      out += c;
  }
  return out;
}

std::string jsonPointer(const std::string &parent, size_t index) {
  return cat(parent, "/", index);
}

bool JsonCheck::fail(const std::string &pointer, const std::string &message) {
  if (!error_) {
    if (pointer.empty())
      error_ = makeError(code_, where_, ": ", message);
    else
      error_ = makeError(code_, where_, ": ", pointer, ": ", message);
  }
  return false;
}

bool JsonCheck::isObject(const json &value, const std::string &pointer) {
  return value.is_object() || fail(pointer, "expected an object");
}

bool JsonCheck::isArray(const json &value, const std::string &pointer) {
  return value.is_array() || fail(pointer, "expected an array");
}

const JsonCheck::json *JsonCheck::member(const json &obj,
                                         const std::string &pointer,
                                         const char *key, bool required) {
  if (!obj.is_object()) {
    fail(pointer, "expected an object");
    return nullptr;
  }
  auto it = obj.find(key);
  if (it == obj.end()) {
    if (required)
      fail(jsonPointer(pointer, key), "required field is missing");
    return nullptr;
  }
  return &*it;
}

bool JsonCheck::getString(const json &obj, const std::string &pointer,
                          const char *key, std::string &out, bool nonEmpty) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  if (!value->is_string() ||
      (nonEmpty && value->get_ref<const std::string &>().empty()))
    return fail(jsonPointer(pointer, key),
                nonEmpty ? "expected a non-empty string" : "expected a string");
  out = value->get<std::string>();
  return true;
}

bool JsonCheck::getEnum(const json &obj, const std::string &pointer,
                        const char *key,
                        std::initializer_list<const char *> choices,
                        const char *what, std::string &out) {
  std::string value;
  if (!getString(obj, pointer, key, value))
    return false;
  std::string list;
  for (const char *choice : choices) {
    if (value == choice) {
      out = value;
      return true;
    }
    list += list.empty() ? "" : ", ";
    list += choice;
  }
  return fail(
      jsonPointer(pointer, key),
      cat("unknown ", what, " '", value, "' (expected one of: ", list, ")"));
}

static const char *describeMin(int64_t min) {
  if (min == 1)
    return "expected a positive integer";
  if (min == 0)
    return "expected a non-negative integer";
  return "expected an integer";
}

bool JsonCheck::getInt(const json &obj, const std::string &pointer,
                       const char *key, int64_t min, int64_t &out) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  std::string at = jsonPointer(pointer, key);
  int64_t v;
  if (value->is_number_unsigned()) {
    uint64_t u = value->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return fail(at, cat(describeMin(min), ", got ", u, " (too large)"));
    v = static_cast<int64_t>(u);
  } else if (value->is_number_integer()) {
    v = value->get<int64_t>();
  } else {
    return fail(at, cat(describeMin(min), ", got ", value->dump()));
  }
  if (v < min)
    return fail(at, cat(describeMin(min), ", got ", v));
  out = v;
  return true;
}

bool JsonCheck::getUInt(const json &obj, const std::string &pointer,
                        const char *key, uint64_t &out) {
  int64_t v;
  if (!getInt(obj, pointer, key, 0, v))
    return false;
  out = static_cast<uint64_t>(v);
  return true;
}

bool JsonCheck::getPositiveNumber(const json &obj, const std::string &pointer,
                                  const char *key, double &out) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  if (!value->is_number() || !std::isfinite(value->get<double>()) ||
      value->get<double>() <= 0)
    return fail(jsonPointer(pointer, key),
                cat("expected a positive number, got ", value->dump()));
  out = value->get<double>();
  return true;
}

bool JsonCheck::getNumber(const json &obj, const std::string &pointer,
                          const char *key, double min, double max,
                          double &out) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  if (!value->is_number() || !std::isfinite(value->get<double>()) ||
      value->get<double>() < min || value->get<double>() > max) {
    // A max of 1e6 or more is a safety cap, named only when exceeded.
    const bool capped = max >= 1e6;
    if (capped && value->is_number() && std::isfinite(value->get<double>()) &&
        value->get<double>() > max)
      return fail(jsonPointer(pointer, key),
                  cat("expected at most ", max, ", got ", value->dump()));
    std::string range = capped
                            ? (min == 0 ? std::string("a non-negative number")
                                        : cat("a number >= ", min))
                            : cat("a number in [", min, ", ", max, "]");
    return fail(jsonPointer(pointer, key),
                cat("expected ", range, ", got ", value->dump()));
  }
  out = value->get<double>();
  return true;
}

bool JsonCheck::getBool(const json &obj, const std::string &pointer,
                        const char *key, bool &out) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  if (!value->is_boolean())
    return fail(jsonPointer(pointer, key),
                cat("expected true or false, got ", value->dump()));
  out = value->get<bool>();
  return true;
}

bool JsonCheck::getShape(const json &obj, const std::string &pointer,
                         const char *key, std::vector<int64_t> &out) {
  const json *value = member(obj, pointer, key);
  if (!value)
    return false;
  std::string at = jsonPointer(pointer, key);
  if (!value->is_array())
    return fail(at, "expected an array of positive integers");
  // Keep element counts (and byte sizes) far from int64 overflow.
  constexpr int64_t kMaxElements = int64_t(1) << 56;
  std::vector<int64_t> shape;
  int64_t elements = 1;
  for (const json &dim : *value) {
    if (!dim.is_number_integer() || dim.get<int64_t>() <= 0 ||
        (dim.is_number_unsigned() &&
         dim.get<uint64_t>() >
             static_cast<uint64_t>(std::numeric_limits<int64_t>::max())))
      return fail(at, "expected an array of positive integers");
    int64_t d = dim.get<int64_t>();
    if (d > kMaxElements / elements)
      return fail(at, cat("shape ", value->dump(), " is too large"));
    elements *= d;
    shape.push_back(d);
  }
  out = std::move(shape);
  return true;
}

} // namespace moec::rt
