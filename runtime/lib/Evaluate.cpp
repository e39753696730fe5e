//===- Evaluate.cpp - a model's dataset and its eval entry point ----------===//

#include "moec/Runtime/Evaluate.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

namespace moec::rt {

Error checkDatasetFits(const Manifest &m, const Dataset &data,
                       const std::string &dir, const std::string &kind) {
  if (data.channels != m.channels || data.height != m.height ||
      data.width != m.width)
    return makeError(
        ErrorCode::Data, dir, ": ", kind.empty() ? m.datasetKind : kind,
        " images are ", data.channels, "x", data.height, "x", data.width,
        ", but the model expects ", m.channels, "x", m.height, "x", m.width);
  if (int64_t(data.classNames.size()) > m.classes)
    return makeError(ErrorCode::Data, dir, ": the dataset has ",
                     data.classNames.size(), " classes, but the model has ",
                     m.classes);
  if (data.n == 0)
    return makeError(ErrorCode::Data, dir, ": no images");
  return Error::success();
}

std::string splitPath(const std::string &kind, const std::string &dir,
                      const std::string &split) {
  return kind == "image-folder" ? dir + "/" + split : dir;
}

Normalization modelNormalization(const Manifest &m) {
  Normalization n = normalizationFor(m.datasetKind);
  if (m.normalizationMean.empty() || m.normalizationStd.empty())
    return n;
  for (size_t c = 0; c < 3; ++c) {
    size_t from = std::min(c, m.normalizationMean.size() - 1);
    n.mean[c] = static_cast<float>(m.normalizationMean[from]);
    n.std[c] = static_cast<float>(
        m.normalizationStd[std::min(c, m.normalizationStd.size() - 1)]);
  }
  return n;
}

Expected<Dataset> loadModelSplit(const Manifest &m, const std::string &dir,
                                 const std::string &split, int64_t limit) {
  std::string from = splitPath(m.datasetKind, dir, split);
  const Normalization norm = modelNormalization(m);
  Expected<Dataset> data = loadDataset(m.datasetKind, from, split, m.channels,
                                       m.height, m.width, limit, &norm);
  if (!data)
    return data.takeError();
  if (Error e = checkDatasetFits(m, *data, from))
    return e;
  return data;
}

/// Letters and digits of `name`, lower-cased: how class folders are
/// matched to class names.
static std::string classKey(const std::string &name) {
  std::string key;
  for (unsigned char c : name)
    if (std::isalnum(c))
      key += static_cast<char>(std::tolower(c));
  return key;
}

/// Relabels an image folder by the model's class names when every folder
/// matches one of them.
static void labelByModelClasses(const Manifest &m, Dataset &data) {
  std::vector<std::string> names = datasetClassNames(m.datasetKind);
  if (names.empty() || int64_t(names.size()) != m.classes ||
      data.classNames.empty())
    return;
  std::vector<int32_t> mapping;
  for (const std::string &folder : data.classNames) {
    auto it = std::find_if(names.begin(), names.end(), [&](const auto &n) {
      return classKey(n) == classKey(folder);
    });
    if (it == names.end())
      return;
    mapping.push_back(static_cast<int32_t>(it - names.begin()));
  }
  for (int32_t &label : data.labels)
    if (label >= 0)
      label = mapping[size_t(label)];
  data.classNames = std::move(names);
}

Expected<Dataset> loadInferenceData(const Manifest &m,
                                    const InferenceSource &source,
                                    std::string *fromOut) {
  const std::string kind = source.kind.empty() ? m.datasetKind : source.kind;
  std::string from = source.dir;
  if (kind == "image-folder") {
    // DIR itself only when it is a folder without split folders.
    namespace fs = std::filesystem;
    std::error_code ec;
    bool splitFolders = fs::is_directory(source.dir + "/train", ec) ||
                        fs::is_directory(source.dir + "/test", ec);
    if (source.splitGiven || splitFolders || !fs::is_directory(source.dir, ec))
      from = splitPath(kind, source.dir, source.split);
  }
  if (fromOut)
    *fromOut = from;
  const Normalization norm = modelNormalization(m);
  Expected<Dataset> data =
      loadDataset(kind, from, source.split, m.channels, m.height, m.width,
                  source.limit, &norm, /*allowUnlabeled=*/true);
  if (!data)
    return data.takeError();
  if (kind == "image-folder" && m.datasetKind != kind)
    labelByModelClasses(m, *data);
  if (Error e = checkDatasetFits(m, *data, from, kind))
    return e;
  return data;
}

RoutingInfo routingInfo(const Manifest &m) {
  RoutingInfo info;
  nlohmann::json spec =
      nlohmann::json::parse(m.spec, nullptr, /*allow_exceptions=*/false);
  if (spec.is_discarded() || !spec.is_object())
    return info;
  auto object = [](const nlohmann::json &j, const char *key) {
    auto it = j.find(key);
    return it != j.end() && it->is_object() ? &*it : nullptr;
  };
  const nlohmann::json *moe = object(spec, "moe");
  const nlohmann::json *router = moe ? object(*moe, "router") : nullptr;
  if (!router || !router->contains("kind") || !(*router)["kind"].is_string())
    return info;
  info.router = (*router)["kind"].get<std::string>();
  info.topK = 1;
  if (moe->contains("top_k") && (*moe)["top_k"].is_number_integer())
    info.topK = (*moe)["top_k"].get<int64_t>();
  // Presets (docs/spec.md) have patch size 16 and "cls" pooling.
  int64_t patch = spec.contains("extends") ? 16 : 0;
  std::string pooling = "cls";
  if (const nlohmann::json *model = object(spec, "model")) {
    if (model->contains("patch_size") &&
        (*model)["patch_size"].is_number_integer())
      patch = (*model)["patch_size"].get<int64_t>();
    if (model->contains("pooling") && (*model)["pooling"].is_string())
      pooling = (*model)["pooling"].get<std::string>();
  }
  if (patch > 0 && m.height % patch == 0 && m.width % patch == 0)
    info.tokensPerImage =
        (m.height / patch) * (m.width / patch) + (pooling == "cls" ? 1 : 0);
  return info;
}

std::optional<double> droppedShare(const RoutingInfo &routing,
                                   const std::vector<double> &counts,
                                   int64_t images) {
  const std::string &kind = routing.router;
  if (kind != "token-choice" && kind != "sinkhorn" && kind != "per-image")
    return std::nullopt;
  if (routing.tokensPerImage <= 0 || routing.topK <= 0 || images <= 0)
    return std::nullopt;
  double placed = 0;
  for (double c : counts)
    placed += c;
  double choices =
      double(images) * double(routing.tokensPerImage) * double(routing.topK);
  return std::clamp(1.0 - placed / choices, 0.0, 1.0);
}

std::string droppedShareKey(const std::string &routingOutput) {
  const std::string prefix = "routing.";
  return "dropped_share." + (routingOutput.rfind(prefix, 0) == 0
                                 ? routingOutput.substr(prefix.size())
                                 : routingOutput);
}

int64_t fillEvalBatch(const Dataset &data, int64_t done, int64_t batch,
                      const EntryTensor &images, const EntryTensor &labels,
                      const EntryTensor &mask) {
  const int64_t size = data.imageSize();
  const int64_t count = std::min(batch, data.n - done);
  std::memcpy(images.f32(), data.images.data() + done * size,
              size_t(count * size) * 4);
  std::fill(images.f32() + count * size, images.f32() + batch * size, 0.0f);
  for (int64_t i = 0; i < batch; ++i) {
    labels.i32()[i] = i < count ? data.labels[size_t(done + i)] : 0;
    mask.f32()[i] = i < count ? 1.0f : 0.0f;
  }
  return count;
}

Expected<EvalResult> evaluate(Session &session, const Dataset &data) {
  const Manifest &m = session.manifest();
  if (Error e = session.checkEntry(kEntryEval))
    return e;
  const int64_t batch = m.batch;
  Expected<EntryTensor> images = session.input(kEntryEval, "images");
  Expected<EntryTensor> labels = session.input(kEntryEval, "labels");
  Expected<EntryTensor> mask = session.input(kEntryEval, "mask");
  Expected<EntryTensor> lossSum = session.output(kEntryEval, "loss_sum");
  Expected<EntryTensor> correct = session.output(kEntryEval, "correct");
  for (auto *t : {&images, &labels, &mask, &lossSum, &correct})
    if (!*t)
      return t->takeError();
  std::vector<EntryTensor> routing;
  EvalResult result;
  for (const EntryTensor &out : session.outputs(kEntryEval))
    if (out.spec->role == kRoleRoutingCounts) {
      routing.push_back(out);
      result.routing.push_back(
          {out.spec->name, std::vector<double>(size_t(out.count()), 0.0)});
    }
  for (int64_t done = 0; done < data.n; done += batch) {
    fillEvalBatch(data, done, batch, *images, *labels, *mask);
    if (Error e = session.run(kEntryEval, batch))
      return e;
    result.lossSum += lossSum->value();
    result.correct += correct->value();
    for (size_t r = 0; r < routing.size(); ++r)
      for (int64_t e = 0; e < routing[r].count(); ++e)
        result.routing[r].second[size_t(e)] += routing[r].value(e);
  }
  result.images = data.n;
  const RoutingInfo info = routingInfo(m);
  for (const auto &layer : result.routing)
    result.dropped.push_back(droppedShare(info, layer.second, data.n));
  return result;
}

} // namespace moec::rt
