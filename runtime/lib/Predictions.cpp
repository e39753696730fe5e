//===- Predictions.cpp - per-image predictions of moec-run infer ----------===//

#include "moec/Runtime/Predictions.h"

#include "Format.h"
#include "moec/Runtime/FileUtil.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cinttypes>
#include <cmath>

namespace moec::rt {

Prediction predictRow(const float *logits, int64_t classes) {
  Prediction p;
  if (classes <= 0)
    return p;
  const float *best = std::max_element(logits, logits + classes);
  p.predicted = static_cast<int32_t>(best - logits);
  p.logit = *best;
  // Softmax at the maximum: 1 / sum(exp(l - max)).
  double sum = 0;
  for (int64_t c = 0; c < classes; ++c)
    sum += std::exp(double(logits[c]) - double(*best));
  p.probability = sum > 0 ? 1.0 / sum : 0.0;
  return p;
}

Expected<PredictionsFormat> predictionsFormat(const std::string &path) {
  size_t dot = path.find_last_of('.');
  std::string ext = dot == std::string::npos ? "" : path.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (ext == ".csv")
    return PredictionsFormat::Csv;
  if (ext == ".json")
    return PredictionsFormat::Json;
  return makeError(ErrorCode::Argument, "--predictions ", path,
                   ": expected a .csv or .json file");
}

static const std::string *className(const std::vector<std::string> &names,
                                    int32_t index) {
  return index >= 0 && size_t(index) < names.size() ? &names[size_t(index)]
                                                    : nullptr;
}

/// A CSV field, quoted when it holds a comma, quote or line break.
static std::string csvField(const std::string &text) {
  if (text.find_first_of(",\"\r\n") == std::string::npos)
    return text;
  std::string out = "\"";
  for (char c : text) {
    if (c == '"')
      out += '"';
    out += c;
  }
  return out + "\"";
}

std::string formatPredictionsCsv(const std::vector<Prediction> &predictions,
                                 const std::vector<std::string> &classNames) {
  std::string out = "index,image,predicted,class,probability,logit,label\n";
  for (const Prediction &p : predictions) {
    const std::string *name = className(classNames, p.predicted);
    appendPrintf(out, "%" PRId64 ",%s,%d,%s,%.6g,%.6g,", p.index,
                 csvField(p.image).c_str(), p.predicted,
                 name ? csvField(*name).c_str() : "", p.probability, p.logit);
    if (p.label >= 0)
      appendPrintf(out, "%d", p.label);
    out += "\n";
  }
  return out;
}

std::string formatPredictionsJson(const std::vector<Prediction> &predictions,
                                  const std::vector<std::string> &classNames) {
  using json = nlohmann::ordered_json;
  std::string out = "[";
  for (size_t i = 0; i < predictions.size(); ++i) {
    const Prediction &p = predictions[i];
    const std::string *name = className(classNames, p.predicted);
    json row{{"index", p.index},
             {"image", p.image.empty() ? json() : json(p.image)},
             {"predicted", p.predicted},
             {"class", name ? json(*name) : json()},
             {"probability",
              std::isfinite(p.probability) ? json(p.probability) : json()},
             {"logit", std::isfinite(p.logit) ? json(p.logit) : json()},
             {"label", p.label >= 0 ? json(p.label) : json()}};
    out += i ? ",\n " : "\n ";
    out += row.dump(-1, ' ', /*ensure_ascii=*/false,
                    json::error_handler_t::replace);
  }
  out += predictions.empty() ? "]\n" : "\n]\n";
  return out;
}

Error writePredictions(const std::string &path,
                       const std::vector<Prediction> &predictions,
                       const std::vector<std::string> &classNames) {
  Expected<PredictionsFormat> format = predictionsFormat(path);
  if (!format)
    return format.takeError();
  std::string text = *format == PredictionsFormat::Csv
                         ? formatPredictionsCsv(predictions, classNames)
                         : formatPredictionsJson(predictions, classNames);
  return writeFileAtomic(path, text.data(), text.size());
}

} // namespace moec::rt
