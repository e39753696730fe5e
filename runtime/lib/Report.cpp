//===- Report.cpp - text reports of a model and its kernel timings --------===//

#include "moec/Runtime/Report.h"

#include "Format.h"

#include <algorithm>
#include <cinttypes>
#include <map>
#include <utility>
#include <vector>

namespace moec::rt {

namespace {

/// "1.2 MiB" (for at least 1 KiB).
std::string humanBytes(uint64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  return formatPrintf("%.1f %s", value, units[unit]);
}

/// "1.23 M" (for at least 1000).
std::string humanCount(double value) {
  const char *units[] = {"", " K", " M", " G", " T"};
  int unit = 0;
  while (value >= 1000 && unit < 4) {
    value /= 1000;
    ++unit;
  }
  return formatPrintf("%.2f%s", value, units[unit]);
}

/// " (1.23 M)" for counts of at least 1000, else "".
std::string countNote(int64_t value) {
  return value >= 1000 ? " (" + humanCount(double(value)) + ")" : "";
}

/// " (1.2 MiB)" for sizes of at least 1 KiB, else "".
std::string bytesNote(uint64_t value) {
  return value >= 1024 ? " (" + humanBytes(value) + ")" : "";
}

} // namespace

std::string inspectReport(const Artifact &a) {
  const Manifest &m = a.manifest();
  std::string out;
  appendPrintf(out, "model:        %s\n", m.model.c_str());
  appendPrintf(out, "target:       %s\n", m.target.c_str());
  appendPrintf(out, "compiler:     %s\n", m.compiler.c_str());
  if (!m.targetCpu.empty())
    appendPrintf(out, "target cpu:   %s (%zu ISA features)\n",
                 m.targetCpu.c_str(), m.targetFeatures.size());
  if (m.target == kTargetCuda)
    appendPrintf(out, "cuda:         %s, %" PRId64 " threads per block, %s\n",
                 m.cuda.arch.c_str(), m.cuda.blockThreads,
                 m.cuda.format.c_str());
  appendPrintf(out, "precision:    %s\n",
               m.precision == "bf16"
                   ? "bf16 GEMM operands, fp32 accumulation and weights"
                   : "fp32");
  if (!m.prunedLayers.empty()) {
    std::string list;
    for (const std::string &l : m.prunedLayers)
      list += (list.empty() ? "" : ", ") + l;
    appendPrintf(out, "pruned:       %s\n", list.c_str());
  }
  appendPrintf(out, "version:      %u.%u\n", a.versionMajor(),
               a.versionMinor());
  appendPrintf(out, "file size:    %" PRIu64 " bytes\n", a.fileSize());
  appendPrintf(out, "batch:        %" PRId64 "\n", m.batch);
  appendPrintf(out, "input:        %" PRId64 "x%" PRId64 "x%" PRId64 "\n",
               m.channels, m.height, m.width);
  appendPrintf(out, "classes:      %" PRId64 "\n", m.classes);
  appendPrintf(out, "dataset:      %s (%s)\n", m.datasetKind.c_str(),
               m.datasetPath.empty() ? "no path" : m.datasetPath.c_str());
  if (!m.normalizationMean.empty()) {
    std::string mean, std;
    for (size_t c = 0; c < m.normalizationMean.size(); ++c) {
      appendPrintf(mean, "%s%g", c ? ", " : "", m.normalizationMean[c]);
      appendPrintf(std, "%s%g", c ? ", " : "", m.normalizationStd[c]);
    }
    appendPrintf(out, "normalized:   mean (%s), std (%s)\n", mean.c_str(),
                 std.c_str());
  }
  appendPrintf(out, "\nentry points:\n");
  for (const auto &[name, entry] : m.entries) {
    auto dispatches = a.plan().entries.find(name);
    appendPrintf(out, "  %s (%zu dispatches, %" PRId64 " FLOPs per batch)\n",
                 name.c_str(),
                 dispatches == a.plan().entries.end()
                     ? size_t(0)
                     : dispatches->second.size(),
                 entry.flops);
    auto role = [](const TensorSpec &t) {
      return t.role.empty() ? std::string() : " (" + t.role + ")";
    };
    for (const TensorSpec &t : entry.inputs)
      appendPrintf(out, "    input   %-10s %s%s%s\n", t.name.c_str(),
                   t.dtype.c_str(), formatShape(t.shape).c_str(),
                   role(t).c_str());
    for (const TensorSpec &t : entry.outputs)
      appendPrintf(out, "    output  %-10s %s%s%s\n", t.name.c_str(),
                   t.dtype.c_str(), formatShape(t.shape).c_str(),
                   role(t).c_str());
  }
  if (m.optimizer) {
    const OptimizerSpec &o = *m.optimizer;
    appendPrintf(out,
                 "\noptimizer:    %s, lr %g, weight decay %g, betas (%g, %g), "
                 "eps %g, momentum %g, grad clip %g\n",
                 o.kind.c_str(), o.lr, o.weightDecay, o.beta1, o.beta2, o.eps,
                 o.momentum, o.gradClip);
  }
  if (m.train) {
    const TrainSpec &t = *m.train;
    appendPrintf(out,
                 "train:        batch %" PRId64 ", %" PRId64
                 " epochs, warm-up %g epochs, schedule %s, label smoothing "
                 "%g, seed %" PRIu64 ", crop padding %" PRId64 ", flip %s\n",
                 t.batch, t.epochs, t.warmupEpochs,
                 t.schedule.empty() ? "-" : t.schedule.c_str(),
                 t.labelSmoothing, t.seed, t.cropPadding,
                 t.horizontalFlip ? "on" : "off");
  }

  size_t nameWidth = 4, shapeWidth = 5;
  for (const ParamSpec &p : m.params) {
    nameWidth = std::max(nameWidth, p.name.size());
    shapeWidth = std::max(shapeWidth, formatShape(p.shape).size());
  }
  appendPrintf(out, "\nparameters:\n");
  appendPrintf(out, "  %-*s  %-*s  %12s  %s\n", int(nameWidth), "name",
               int(shapeWidth), "shape", "count", "init");
  for (const ParamSpec &p : m.params) {
    std::string init = initKindName(p.init);
    if (p.init == InitKind::Normal || p.init == InitKind::TruncNormal)
      init += cat("(std ", p.std, ")");
    if (p.init == InitKind::Constant)
      init += cat("(", p.value, ")");
    appendPrintf(out, "  %-*s  %-*s  %12" PRId64 "  %s\n", int(nameWidth),
                 p.name.c_str(), int(shapeWidth), formatShape(p.shape).c_str(),
                 p.count(), init.c_str());
  }
  if (!m.state.empty()) {
    int64_t values = 0;
    for (const ParamSpec &p : m.state)
      values += p.count();
    appendPrintf(out, "\nstate: %zu tensors, %" PRId64 " values (%s, ...)\n",
                 m.state.size(), values, m.state[0].name.c_str());
  }
  const EntrySpec &infer = m.infer();
  appendPrintf(out, "\n");
  appendPrintf(out, "param count:              %" PRId64 "%s\n", m.paramCount,
               countNote(m.paramCount).c_str());
  appendPrintf(out, "active params per image:  %" PRId64 "%s\n",
               m.activeParamsPerImage,
               countNote(m.activeParamsPerImage).c_str());
  appendPrintf(out, "FLOPs per image:          %" PRId64 "%s\n",
               infer.flopsPerImage, countNote(infer.flopsPerImage).c_str());
  appendPrintf(out, "param bytes:              %" PRIu64 "%s\n", m.paramBytes,
               bytesNote(m.paramBytes).c_str());
  appendPrintf(out, "arena bytes:              %" PRIu64 "%s\n", m.arenaBytes,
               bytesNote(m.arenaBytes).c_str());
  appendPrintf(out,
               "kernels:                  %zu, section %" PRIu64 " bytes%s\n",
               a.plan().kernelNames().size(), a.kernelsSize(),
               bytesNote(a.kernelsSize()).c_str());
  return out;
}

std::string profileReport(Session &session, size_t top,
                          const std::string &entry) {
  auto planned = session.artifact().plan().entries.find(entry);
  if (planned == session.artifact().plan().entries.end())
    return "";
  const std::vector<Dispatch> &plan = planned->second;
  const std::vector<double> &secs = entry == kEntryInfer
                                        ? session.dispatchSeconds()
                                        : session.entrySeconds(entry);
  const std::vector<double> &flops = entry == kEntryInfer
                                         ? session.dispatchFlops()
                                         : session.entryFlops(entry);
  if (secs.size() != plan.size() || flops.size() != plan.size())
    return "";
  double total = 0, totalFlops = 0;
  struct OpTotals {
    double seconds = 0, flops = 0;
    int count = 0;
  };
  std::map<std::string, OpTotals> byOp;
  for (size_t i = 0; i < plan.size(); ++i) {
    total += secs[i];
    totalFlops += flops[i];
    OpTotals &t = byOp[plan[i].op];
    t.seconds += secs[i];
    t.flops += flops[i];
    t.count += 1;
  }
  if (total <= 0)
    return "";
  // GFLOP/s from the cost model's FLOPs (multiply-adds count 2); "-" for
  // ops without FLOPs (copies, fills).
  auto rate = [](double f, double s) {
    std::string r;
    if (f > 0 && s > 0)
      appendPrintf(r, "%.1f", f / s * 1e-9);
    else
      r = "-";
    return r;
  };
  std::vector<std::pair<double, std::string>> ops;
  for (auto &[op, timing] : byOp)
    ops.push_back({timing.seconds, op});
  std::sort(ops.rbegin(), ops.rend());
  std::string out;
  appendPrintf(out, "\nprofile: %.3f s in %zu dispatches, %s GFLOP/s\n",
               total, plan.size(), rate(totalFlops, total).c_str());
  appendPrintf(out, "  %-26s %10s %7s %6s %8s\n", "op", "seconds", "share",
               "count", "GFLOP/s");
  for (auto &[t, op] : ops)
    appendPrintf(out, "  %-26s %10.4f %6.1f%% %6d %8s\n", op.c_str(), t,
                 100 * t / total, byOp[op].count,
                 rate(byOp[op].flops, t).c_str());
  std::vector<size_t> order(plan.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return secs[a] > secs[b]; });
  appendPrintf(out, "  %-10s %-26s %-28s %10s %7s %8s\n", "kernel", "op",
               "name", "seconds", "share", "GFLOP/s");
  for (size_t k = 0; k < std::min(top, order.size()); ++k) {
    const Dispatch &d = plan[order[k]];
    appendPrintf(out, "  %-10s %-26s %-28s %10.4f %6.1f%% %8s\n",
                 d.kernel.c_str(), d.op.c_str(), d.name.c_str(),
                 secs[order[k]], 100 * secs[order[k]] / total,
                 rate(flops[order[k]], secs[order[k]]).c_str());
  }
  return out;
}

} // namespace moec::rt
