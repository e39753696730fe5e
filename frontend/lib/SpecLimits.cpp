//===- SpecLimits.cpp - moec JSON model spec: size limits -----------------===//
//
// Estimates what a spec costs (parameters, FLOPs, activation bytes) from its
// fields alone, and checks those totals against the caps of Spec.h's
// `limits` and against the machine's memory (docs/spec.md#limits). Every
// field is already within its own cap here, so the estimates, computed in
// double, stay finite.
//
//===----------------------------------------------------------------------===//

#include "SpecParser.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <unistd.h>

using namespace moec::spec;
using namespace moec::spec::detail;

namespace {

/// "1.5 GiB", "512 MiB", "3 KiB": a byte count for messages.
std::string formatBytes(double bytes) {
  const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 6) {
    bytes /= 1024;
    ++unit;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), unit == 0 ? "%.0f %s" : "%.3g %s", bytes,
                units[unit]);
  return buf;
}

/// "2.5e+12" style for counts too large to print in full.
std::string formatCount(double count) {
  char buf[64];
  if (count < 1e15)
    std::snprintf(buf, sizeof(buf), "%.0f", count);
  else
    std::snprintf(buf, sizeof(buf), "%.3g", count);
  return buf;
}

/// Slots an MoE layer processes per image: experts × capacity (docs/spec.md
/// #router), every chosen expert's tokens for per-image, the slots for
/// soft.
double slotsPerImage(const MoELayerSettings &s, double tokens) {
  double experts = static_cast<double>(s.experts);
  switch (s.router.kind) {
  case RouterKind::Soft:
    return experts * static_cast<double>(s.router.slotsPerExpert);
  case RouterKind::PerImage:
    return static_cast<double>(s.topK) * tokens;
  default:
    break;
  }
  double k = s.router.kind == RouterKind::ExpertChoice ||
                     s.router.kind == RouterKind::SinkhornExpertChoice
                 ? 1.0
                 : static_cast<double>(s.topK);
  double factor = std::max(s.capacityFactorTrain, s.capacityFactorEval);
  double capacity =
      std::min(tokens, std::max(1.0, std::ceil(k * tokens * factor / experts)));
  return experts * capacity;
}

} // namespace

SpecTotals moec::spec::estimateTotals(const Spec &spec) {
  const ModelSpec &m = spec.model;
  double c = static_cast<double>(m.input.channels);
  double patch = static_cast<double>(m.patchSize);
  double d = static_cast<double>(m.width);
  double hidden = static_cast<double>(m.mlpHidden);
  double heads = static_cast<double>(m.heads);
  double patches = static_cast<double>(m.numPatches());
  double t = static_cast<double>(m.numTokens());
  double classes = static_cast<double>(m.classes);

  SpecTotals out;
  double largest = c * static_cast<double>(m.input.height) *
                   static_cast<double>(m.input.width);
  double act = largest;
  auto tensor = [&](double elements) {
    largest = std::max(largest, elements);
    act += elements;
  };

  // Patch embedding, class token, position embedding.
  out.parameters =
      c * patch * patch * d + d + t * d + (m.pooling == Pooling::Cls ? d : 0);
  out.flopsPerImage = 2 * patches * c * patch * patch * d;
  tensor(t * d);

  for (int64_t block = 0; block < m.depth; ++block) {
    // Attention: two layer norms, qkv, the scores and their softmax, the
    // projection.
    out.parameters += 4 * d * d + 8 * d;
    out.flopsPerImage += 8 * t * d * d + 4 * t * t * d;
    for (int i = 0; i < 9; ++i)
      tensor(t * d);
    tensor(heads * t * t);
    tensor(heads * t * t);

    if (!spec.moe.isMoEBlock(block)) {
      out.parameters += 2 * d * hidden + hidden + d;
      out.flopsPerImage += 4 * t * d * hidden;
      tensor(t * hidden);
      tensor(t * hidden);
      continue;
    }
    const MoELayerSettings &s = spec.moe.layer(block).settings;
    double experts = static_cast<double>(s.experts);
    double eh = static_cast<double>(s.expertHidden);
    double slots = slotsPerImage(s, t);
    double expertParams = 2 * d * eh + eh + d;
    // The router: a D x E*P weight, or a cosine gate's codes (after a
    // D x gate_dim projection when it has one) and its scale.
    double columns = experts * static_cast<double>(
                                   std::max<int64_t>(1, s.router.slotsPerExpert));
    double gateDim = s.router.gateDim > 0 ? s.router.gateDim : d;
    double routerParams = gateDim * columns;
    double routerFlops = 2 * t * gateDim * columns;
    if (s.router.cosine) {
      routerParams += 1;
      routerFlops += 4 * t * gateDim;
      if (s.router.gateDim > 0) {
        routerParams += d * gateDim;
        routerFlops += 2 * t * d * gateDim;
      }
    }
    // A model-scope router's weights belong to the first MoE layer.
    if (s.router.modelScope && block != spec.moe.blocks.front())
      routerParams = 0;
    out.parameters += routerParams + experts * expertParams;
    out.expertParameters += experts * expertParams;
    out.flopsPerImage += routerFlops + 4 * slots * d * eh;
    tensor(t * experts);
    tensor(t * experts);
    tensor(slots * d);
    tensor(slots * eh);
    tensor(slots * eh);
    tensor(slots * d);
    if (s.router.kind == RouterKind::Soft) {
      double weights = t * slots;
      out.flopsPerImage += 4 * weights * d;
      tensor(weights);
      tensor(weights);
    }
    if (s.router.kind == RouterKind::Sinkhorn ||
        s.router.kind == RouterKind::SinkhornExpertChoice) {
      double iters = static_cast<double>(s.router.sinkhornIters);
      out.flopsPerImage += 4 * iters * t * experts;
      for (int64_t i = 0; i < s.router.sinkhornIters; ++i)
        tensor(t * experts);
    }
    if (s.sharedExpert) {
      out.parameters += expertParams;
      out.flopsPerImage += 4 * t * d * eh;
      tensor(t * eh);
      tensor(t * eh);
    }
  }

  // Final layer norm and the head.
  out.parameters += 2 * d + d * classes + classes;
  out.flopsPerImage += 2 * d * classes;
  tensor(classes);

  out.largestTensorBytesPerImage = 4 * largest;
  out.activationBytesPerImage = 4 * act;
  return out;
}

uint64_t moec::spec::physicalMemoryBytes() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long pageSize = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || pageSize <= 0)
    return 0;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(pageSize);
}

std::optional<SpecError> moec::spec::checkMemory(const Spec &spec,
                                                 int64_t batch, bool training,
                                                 uint64_t memoryBytes) {
  if (memoryBytes == 0)
    memoryBytes = physicalMemoryBytes();
  if (memoryBytes == 0)
    return std::nullopt;
  SpecTotals totals = estimateTotals(spec);
  double images = static_cast<double>(batch);
  // Inference keeps about one block's tensors alive at a time; its lower
  // bound is the largest tensor. Training keeps every activation, and the
  // parameters, gradients and AdamW's two moments (4 floats each).
  double activations = images * (training ? totals.activationBytesPerImage
                                          : totals.largestTensorBytesPerImage);
  double state = (training ? 16 : 4) * totals.parameters;
  double need = activations + state;
  if (need <= static_cast<double>(memoryBytes))
    return std::nullopt;
  std::string pointer = "/train/batch";
  std::string message =
      std::string(training ? "a training step" : "inference") +
      " needs at least " + formatBytes(need) + " (" + std::to_string(batch) +
      " images x " +
      formatBytes(training ? totals.activationBytesPerImage
                           : totals.largestTensorBytesPerImage) +
      " of activations, plus " + formatBytes(state) + " of parameters" +
      (training ? ", gradients and optimizer state" : "") +
      "), more than this machine's memory (" +
      formatBytes(static_cast<double>(memoryBytes)) +
      "); use a smaller batch or model";
  return SpecError{spec.sourceName, spec.positionOf(pointer), pointer,
                   std::move(message)};
}

bool SpecParser::checkTotals(const Spec &spec) {
  SpecTotals totals = estimateTotals(spec);
  // Blame the experts when they hold most of the parameters.
  std::string where = totals.expertParameters > totals.parameters / 2
                          ? "/moe/experts"
                          : "/model/width";
  if (totals.parameters > limits::kMaxParameters)
    return fail(where, "the model would have " +
                           formatCount(totals.parameters) +
                           " parameters, more than the limit of " +
                           formatCount(limits::kMaxParameters));
  if (totals.flopsPerImage > limits::kMaxFlopsPerImage)
    return fail("/model/input",
                "the forward pass would take " +
                    formatCount(totals.flopsPerImage) +
                    " floating-point operations per image, more than the "
                    "limit of 1e13");
  if (totals.largestTensorBytesPerImage > limits::kMaxTensorBytesPerImage)
    return fail("/model/input",
                "one image's largest activation would take " +
                    formatBytes(totals.largestTensorBytesPerImage) +
                    ", more than the limit of " +
                    formatBytes(limits::kMaxTensorBytesPerImage));
  if (totals.activationBytesPerImage > limits::kMaxImageActivationBytes)
    return fail("/model/input",
                "one image's activations would take " +
                    formatBytes(totals.activationBytesPerImage) +
                    ", more than the limit of " +
                    formatBytes(limits::kMaxImageActivationBytes));
  return true;
}
