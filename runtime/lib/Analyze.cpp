//===- Analyze.cpp - routing analysis of a trained model ------------------===//

#include "moec/Runtime/Analyze.h"

#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/FileUtil.h"

#include "Format.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <tuple>

namespace moec::rt {

namespace {

using json = nlohmann::ordered_json;

/// A layer's router kind and k: moe's, overridden by moe.layers[block]
/// (docs/spec.md#per-layer-settings: a layer of another kind without a
/// top_k inherits moe's, or 1).
void layerRouter(const json &spec, int64_t block, LayerProfile &layer) {
  auto object = [](const json &j, const char *key) -> const json * {
    auto it = j.find(key);
    return it != j.end() && it->is_object() ? &*it : nullptr;
  };
  const json *moe = spec.is_object() ? object(spec, "moe") : nullptr;
  if (!moe)
    return;
  auto read = [&](const json &from) {
    if (const json *router = object(from, "router"))
      if (router->contains("kind") && (*router)["kind"].is_string())
        layer.router = (*router)["kind"].get<std::string>();
    if (from.contains("top_k") && from["top_k"].is_number_integer())
      layer.topK = from["top_k"].get<int64_t>();
  };
  layer.topK = 1;
  read(*moe);
  if (const json *layers = object(*moe, "layers"))
    if (const json *own = object(*layers, std::to_string(block).c_str()))
      read(*own);
  if (layer.router == "expert-choice" || layer.router == "soft" ||
      layer.router == "sinkhorn-expert-choice")
    layer.topK = 0;
}

/// "routing_tokens.blocks.3.moe" -> "blocks.3.moe"; block 3.
std::string layerName(const std::string &output, int64_t &block) {
  std::string name = output.substr(output.find('.') + 1);
  block = -1;
  if (name.rfind("blocks.", 0) == 0)
    block = std::atoll(name.c_str() + 7);
  return name;
}

/// The statistics of one layer in the analyze entry's outputs.
struct LayerOutputs {
  EntryTensor tokens, weights, probs, entropy;
};

double entropyOf(const std::vector<double> &p) {
  double h = 0;
  for (double v : p)
    if (v > 0)
      h -= v * std::log(v);
  return h;
}

/// I(class; expert) in nats of class x expert counts, and its NMI.
std::pair<double, double>
mutualInformation(const std::vector<std::vector<double>> &counts) {
  const size_t k = counts.size(), e = k ? counts[0].size() : 0;
  double total = 0;
  std::vector<double> pc(k, 0.0), pe(e, 0.0);
  for (size_t c = 0; c < k; ++c)
    for (size_t j = 0; j < e; ++j) {
      pc[c] += counts[c][j];
      pe[j] += counts[c][j];
      total += counts[c][j];
    }
  if (total <= 0)
    return {0.0, 0.0};
  double mi = 0;
  for (size_t c = 0; c < k; ++c)
    for (size_t j = 0; j < e; ++j)
      if (double n = counts[c][j]; n > 0)
        mi += n / total * std::log(n * total / (pc[c] * pe[j]));
  for (double &v : pc)
    v /= total;
  for (double &v : pe)
    v /= total;
  const double hc = entropyOf(pc), he = entropyOf(pe);
  mi = std::max(0.0, mi);
  return {mi, hc > 0 && he > 0 ? std::min(1.0, 2 * mi / (hc + he)) : 0.0};
}

/// Loads, mutual information, NMI, routing degree and expert similarity
/// from the class x expert counts (all zero when nothing was routed).
void classDependence(LayerProfile &layer) {
  const size_t k = layer.classTokens.size(), e = size_t(layer.experts);
  layer.load.assign(e, 0.0);
  layer.expertSimilarity.assign(e, std::vector<double>(e, 0.0));
  double total = 0, degree = 0;
  for (const std::vector<double> &row : layer.classTokens) {
    for (size_t j = 0; j < e; ++j) {
      layer.load[j] += row[j];
      total += row[j];
    }
    degree += *std::max_element(row.begin(), row.end());
  }
  if (total <= 0)
    return;
  for (double &v : layer.load)
    v /= total;
  layer.routingDegree = degree / total;
  layer.mostUsedExpert =
      std::max_element(layer.load.begin(), layer.load.end()) -
      layer.load.begin();
  std::tie(layer.mutualInformation, layer.tokenNmi) =
      mutualInformation(layer.classTokens);
  layer.imageNmi = mutualInformation(layer.classDominant).second;
  for (size_t a = 0; a < e; ++a)
    for (size_t b = 0; b < e; ++b) {
      double dot = 0, na = 0, nb = 0;
      for (size_t c = 0; c < k; ++c) {
        dot += layer.classTokens[c][a] * layer.classTokens[c][b];
        na += layer.classTokens[c][a] * layer.classTokens[c][a];
        nb += layer.classTokens[c][b] * layer.classTokens[c][b];
      }
      layer.expertSimilarity[a][b] =
          na > 0 && nb > 0 ? dot / std::sqrt(na * nb) : 0.0;
    }
}

/// Parameter counts of a layer from the manifest's table.
void layerParams(const Manifest &m, LayerProfile &layer) {
  const std::string prefix = layer.name + ".";
  for (const ParamSpec &p : m.params) {
    if (p.name.rfind(prefix, 0) != 0)
      continue;
    std::string rest = p.name.substr(prefix.size());
    if (rest.rfind("experts.", 0) == 0)
      layer.paramsPerExpert += p.count() / std::max<int64_t>(1, layer.experts);
    else
      layer.alwaysActiveParams += p.count();
    if (rest.rfind("shared.", 0) == 0)
      layer.sharedExpert = true;
  }
}

} // namespace

Expected<RoutingProfile> analyzeRouting(Session &session, const Dataset &data) {
  const Manifest &m = session.manifest();
  if (Error e = session.checkEntry(kEntryAnalyze))
    return e;
  if (!data.labeled())
    return makeError(ErrorCode::Data,
                     "the routing analysis needs labelled images (it relates "
                     "each image's class to its experts)");
  const int64_t batch = m.batch;
  Expected<EntryTensor> images = session.input(kEntryAnalyze, "images");
  Expected<EntryTensor> labels = session.input(kEntryAnalyze, "labels");
  Expected<EntryTensor> mask = session.input(kEntryAnalyze, "mask");
  Expected<EntryTensor> correct = session.output(kEntryAnalyze, "correct");
  for (auto *t : {&images, &labels, &mask, &correct})
    if (!*t)
      return t->takeError();

  json spec = json::parse(m.spec, nullptr, /*allow_exceptions=*/false);
  const RoutingInfo info = routingInfo(m);
  RoutingProfile profile;
  profile.model = m.model;
  profile.classNames = data.classNames;
  if (spec.is_object() && spec.contains("moe") && spec["moe"].is_object() &&
      spec["moe"].contains("super_class_map") &&
      spec["moe"]["super_class_map"].is_array())
    for (const json &v : spec["moe"]["super_class_map"])
      if (v.is_number_integer())
        profile.superClassMap.push_back(v.get<int64_t>());
  const size_t classes = size_t(std::max<int64_t>(
      m.classes, int64_t(data.classNames.size())));

  // The analyze outputs, grouped per layer in manifest order.
  std::vector<LayerOutputs> outputs;
  std::map<std::string, size_t> index;
  for (const EntryTensor &out : session.outputs(kEntryAnalyze)) {
    if (out.spec->role != kRoleRoutingStats)
      continue;
    const std::string &name = out.spec->name;
    const std::string what = name.substr(0, name.find('.'));
    int64_t block = -1;
    std::string layer = layerName(name, block);
    if (!index.count(layer)) {
      index[layer] = outputs.size();
      outputs.emplace_back();
      LayerProfile lp;
      lp.name = layer;
      lp.block = block;
      profile.layers.push_back(lp);
    }
    LayerOutputs &lo = outputs[index[layer]];
    LayerProfile &lp = profile.layers[index[layer]];
    if (what == "routing_tokens") {
      lo.tokens = out;
      lp.experts = out.spec->shape.size() == 2 ? out.spec->shape[1] : 0;
    } else if (what == "routing_weights") {
      lo.weights = out;
    } else if (what == "routing_probs") {
      lo.probs = out;
    } else if (what == "routing_entropy") {
      lo.entropy = out;
    }
  }
  for (size_t l = 0; l < outputs.size(); ++l) {
    const LayerOutputs &lo = outputs[l];
    LayerProfile &lp = profile.layers[l];
    if (!lo.tokens.spec || !lo.weights.spec || !lo.probs.spec ||
        !lo.entropy.spec || lp.experts < 1)
      return makeError(ErrorCode::Format, "the analyze entry point lacks "
                                            "one of the routing statistics "
                                            "(tokens, weights, probs, "
                                            "entropy) of ",
                       lp.name);
    layerRouter(spec, lp.block, lp);
    lp.tokensPerImage = info.tokensPerImage;
    lp.classTokens.assign(classes, std::vector<double>(size_t(lp.experts)));
    lp.classDominant = lp.classTokens;
    lp.importance.assign(size_t(lp.experts), 0.0);
    lp.expertsUsedHistogram.assign(size_t(lp.experts) + 1, 0);
    layerParams(m, lp);
  }

  // Per-layer sums over the images.
  std::vector<double> gateMass(outputs.size()), entropy(outputs.size()),
      used(outputs.size()), superHits(outputs.size()),
      dispatched(outputs.size());
  double hits = 0;
  for (int64_t done = 0; done < data.n; done += batch) {
    const int64_t count =
        fillEvalBatch(data, done, batch, *images, *labels, *mask);
    if (Error e = session.run(kEntryAnalyze, batch))
      return e;
    hits += correct->value();
    for (size_t l = 0; l < outputs.size(); ++l) {
      const LayerOutputs &lo = outputs[l];
      LayerProfile &lp = profile.layers[l];
      const int64_t e = lp.experts;
      for (int64_t i = 0; i < count; ++i) {
        const int32_t label = data.labels[size_t(done + i)];
        int64_t reached = 0, top = 0, dominant = 0;
        for (int64_t j = 0; j < e; ++j) {
          const double t = lo.tokens.value(i * e + j);
          const double p = lo.probs.value(i * e + j);
          lp.classTokens[size_t(label)][size_t(j)] += t;
          lp.importance[size_t(j)] += p;
          gateMass[l] += lo.weights.value(i * e + j);
          dispatched[l] += t;
          reached += t >= 0.5 ? 1 : 0;
          if (p > lo.probs.value(i * e + top))
            top = j;
          if (t > lo.tokens.value(i * e + dominant))
            dominant = j;
        }
        lp.classDominant[size_t(label)][size_t(dominant)] += 1;
        lp.expertsUsedHistogram[size_t(reached)] += 1;
        used[l] += double(reached);
        entropy[l] += lo.entropy.value(i);
        if (size_t(label) < profile.superClassMap.size() &&
            profile.superClassMap[size_t(label)] == top)
          superHits[l] += 1;
      }
    }
  }

  const double n = double(data.n);
  profile.images = data.n;
  profile.top1 = hits / n;
  profile.params = m.paramCount;
  profile.activatedParamsPerImage = double(m.paramCount);
  for (size_t l = 0; l < outputs.size(); ++l) {
    LayerProfile &lp = profile.layers[l];
    classDependence(lp);
    for (double &v : lp.importance)
      v /= n;
    lp.expertsPerImage = used[l] / n;
    lp.routingEntropy = entropy[l] / n;
    if (lp.tokensPerImage > 0)
      lp.gateMassPerToken = gateMass[l] / (n * double(lp.tokensPerImage));
    RoutingInfo layerInfo = info;
    layerInfo.router = lp.router;
    layerInfo.topK = lp.topK;
    std::vector<double> counts(size_t(lp.experts), 0.0);
    counts[0] = dispatched[l];
    lp.droppedFraction = droppedShare(layerInfo, counts, data.n);
    if (!profile.superClassMap.empty())
      lp.superClassAccuracy = superHits[l] / n;
    lp.activatedParamsPerImage = double(lp.alwaysActiveParams) +
                                 lp.expertsPerImage * double(lp.paramsPerExpert);
    profile.activatedParamsPerImage -=
        double(lp.experts * lp.paramsPerExpert) - lp.expertsPerImage *
                                                      double(lp.paramsPerExpert);
  }
  return profile;
}

std::string routingProfileJson(const RoutingProfile &p, double threshold) {
  json root;
  root["format"] = kProfileFormat;
  root["version"] = kProfileVersion;
  root["model"] = p.model;
  root["dataset"] = {{"kind", p.datasetKind},
                     {"dir", p.dataDir},
                     {"split", p.split},
                     {"images", p.images}};
  root["classes"] = p.classNames;
  root["top1"] = p.top1;
  root["params"] = p.params;
  root["activated_params_per_image"] = p.activatedParamsPerImage;
  root["nmi_threshold"] = threshold;
  if (!p.superClassMap.empty())
    root["super_class_map"] = p.superClassMap;
  json layers = json::array();
  for (const LayerProfile &l : p.layers) {
    json j;
    j["name"] = l.name;
    j["block"] = l.block;
    j["router"] = l.router;
    j["experts"] = l.experts;
    j["top_k"] = l.topK;
    j["tokens_per_image"] = l.tokensPerImage;
    j["shared_expert"] = l.sharedExpert;
    j["image_nmi"] = l.imageNmi;
    j["specialises"] = l.imageNmi >= threshold;
    j["token_nmi"] = l.tokenNmi;
    j["mutual_information"] = l.mutualInformation;
    j["routing_degree"] = l.routingDegree;
    j["routing_entropy"] = l.routingEntropy;
    j["load"] = l.load;
    j["importance"] = l.importance;
    j["most_used_expert"] = l.mostUsedExpert;
    j["gate_mass_per_token"] = l.gateMassPerToken;
    j["experts_per_image"] = {{"mean", l.expertsPerImage},
                              {"histogram", l.expertsUsedHistogram}};
    j["dropped_fraction"] =
        l.droppedFraction ? json(*l.droppedFraction) : json(nullptr);
    j["super_class_accuracy"] =
        l.superClassAccuracy ? json(*l.superClassAccuracy) : json(nullptr);
    j["params_per_expert"] = l.paramsPerExpert;
    j["always_active_params"] = l.alwaysActiveParams;
    j["activated_params_per_image"] = l.activatedParamsPerImage;
    j["class_expert_tokens"] = l.classTokens;
    j["class_dominant_expert"] = l.classDominant;
    j["expert_similarity"] = l.expertSimilarity;
    layers.push_back(std::move(j));
  }
  root["layers"] = std::move(layers);
  return root.dump(2) + "\n";
}

Error writeRoutingProfile(const RoutingProfile &p, const std::string &dir,
                          double threshold) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    return makeError(ErrorCode::Io, dir, ": ", ec.message());
  const std::pair<std::string, std::string> files[] = {
      {"profile.json", routingProfileJson(p, threshold)},
      {"heatmaps.svg", heatmapsSvg(p)},
      {"specialisation.svg", specialisationSvg(p, threshold)}};
  for (const auto &[name, body] : files)
    if (Error e = writeFileAtomic(dir + "/" + name, body.data(), body.size()))
      return e;
  return Error::success();
}

std::string routingProfileTable(const RoutingProfile &p, double threshold) {
  std::string out;
  appendPrintf(out,
               "%s: %" PRId64 " %s images, top-1 %.2f%%, %" PRId64
               " parameters, %.0f activated per image\n",
               p.model.c_str(), p.images, p.split.c_str(), 100 * p.top1,
               p.params, p.activatedParamsPerImage);
  appendPrintf(out, "%-16s %-22s %9s %9s %7s %8s %12s %8s  %s\n", "layer",
               "router", "image-NMI", "token-NMI", "degree", "entropy",
               "experts/img", "dropped", "specialises");
  for (const LayerProfile &l : p.layers) {
    std::string dropped = "-";
    if (l.droppedFraction) {
      dropped.clear();
      appendPrintf(dropped, "%.1f%%", 100 * *l.droppedFraction);
    }
    appendPrintf(out, "%-16s %-22s %9.4f %9.4f %7.3f %8.3f %12.2f %8s  %s\n",
                 l.name.c_str(), l.router.c_str(), l.imageNmi, l.tokenNmi,
                 l.routingDegree, l.routingEntropy, l.expertsPerImage,
                 dropped.c_str(), l.imageNmi >= threshold ? "yes" : "no");
  }
  appendPrintf(out, "(image-NMI threshold %g)\n", threshold);
  return out;
}

} // namespace moec::rt
