//===- Predictions.h - per-image predictions of moec-run infer --*- C++ -*-===//
//
// The rows `moec-run infer --predictions FILE` writes: for each image its
// file (image folders) and index, the predicted class (the highest logit,
// the first on ties), that class's softmax probability and logit, and the
// label when the data has one. Written as CSV or JSON (by the file's
// extension), atomically (FileUtil.h).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_PREDICTIONS_H
#define MOEC_RUNTIME_PREDICTIONS_H

#include "moec/Runtime/Error.h"

#include <cstdint>
#include <string>
#include <vector>

namespace moec::rt {

/// One image's prediction.
struct Prediction {
  int64_t index = 0; ///< position in the data (0-based)
  std::string image; ///< the image's file; "" when the data has none
  int32_t predicted = 0;
  double probability = 0; ///< softmax of the logits, at `predicted`
  double logit = 0;       ///< the logit of `predicted`
  int32_t label = -1;     ///< -1 when unknown
};

/// The prediction for one row of `classes` logits (index, image and label
/// are left for the caller).
Prediction predictRow(const float *logits, int64_t classes);

/// The formats `--predictions` takes.
enum class PredictionsFormat { Csv, Json };
/// The format of `path` by its extension (".csv" or ".json",
/// case-insensitive); an Argument error for any other.
Expected<PredictionsFormat> predictionsFormat(const std::string &path);

/// CSV with a header line, one row per image:
///   index,image,predicted,class,probability,logit,label
///   0,shoes/a.png,7,Sneaker,0.912345,5.4321,7
/// `class` is classNames[predicted] (empty when there are no names), image
/// and label are empty when unknown; fields with a comma, quote or line
/// break are quoted (RFC 4180).
std::string formatPredictionsCsv(const std::vector<Prediction> &predictions,
                                 const std::vector<std::string> &classNames);
/// A JSON array of {"index", "image" (string or null), "predicted",
/// "class" (string or null), "probability", "logit", "label" (integer or
/// null)}, one object per line.
std::string formatPredictionsJson(const std::vector<Prediction> &predictions,
                                  const std::vector<std::string> &classNames);

/// Writes the predictions to `path` atomically in the format of its
/// extension.
Error writePredictions(const std::string &path,
                       const std::vector<Prediction> &predictions,
                       const std::vector<std::string> &classNames);

} // namespace moec::rt

#endif // MOEC_RUNTIME_PREDICTIONS_H
