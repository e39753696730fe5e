//===- ManifestNormalization.cpp - the manifest's normalization -----------===//

#include "ManifestNormalization.h"

#include <cmath>

namespace moec::rt {

bool readDatasetNormalization(JsonCheck &check, const nlohmann::json &dataset,
                              Manifest &m) {
  const std::string at = "/dataset/normalization";
  const nlohmann::json *value =
      check.member(dataset, "/dataset", "normalization", /*required=*/false);
  if (!value)
    return true;
  if (!check.isObject(*value, at))
    return false;
  using Field = std::pair<const char *, std::vector<double> *>;
  for (auto [key, out] : {Field{"mean", &m.normalizationMean},
                          Field{"std", &m.normalizationStd}}) {
    const std::string keyAt = jsonPointer(at, key);
    const nlohmann::json *array = check.member(*value, at, key);
    if (!array || !check.isArray(*array, keyAt))
      return false;
    if (int64_t(array->size()) != m.channels)
      return check.fail(keyAt, cat("has ", array->size(),
                                   " values, but the model has ", m.channels,
                                   " channels"));
    for (size_t i = 0; i < array->size(); ++i) {
      const nlohmann::json &v = (*array)[i];
      bool isStd = out == &m.normalizationStd;
      if (!v.is_number() || !std::isfinite(v.get<double>()) ||
          (isStd && !(v.get<double>() > 0)))
        return check.fail(jsonPointer(keyAt, i),
                          isStd ? "expected a positive number"
                                : "expected a finite number");
      out->push_back(v.get<double>());
    }
  }
  return true;
}

} // namespace moec::rt
