//===- ManifestTraining.cpp - the manifest's training parts ---------------===//
//
// The training side of a manifest (artifact 1.1, docs/training-abi.md): the
// train_step and eval signatures, the optimizer and train settings, and the
// optimizer state tensors. Internal to the runtime library.
//
//===----------------------------------------------------------------------===//

#include "ManifestTraining.h"

#include "moec/Runtime/ArtifactFormat.h"
#include "moec/Runtime/Limits.h"

#include <algorithm>
#include <set>

using nlohmann::json;

namespace moec::rt {

namespace fmt = moec::artifact;

//===----------------------------------------------------------------------===//
// Training entry points (artifact 1.1, docs/training-abi.md)
//===----------------------------------------------------------------------===//

namespace {

/// A tensor an entry point must have: its name, dtype ("" = f32 or i32),
/// shape, and how the shape reads in messages ("[batch]").
struct Required {
  const char *name;
  const char *dtype;
  std::vector<int64_t> shape;
  const char *shapeText;
};

} // namespace

/// The index of `req` in `list` (at `at`, "inputs" or "outputs"), checking
/// its dtype and shape; -1 after recording a failure.
static long findRequired(JsonCheck &check, const std::vector<TensorSpec> &list,
                         const std::string &at, const char *what,
                         const Required &req) {
  for (size_t i = 0; i < list.size(); ++i) {
    const TensorSpec &t = list[i];
    if (t.name != req.name)
      continue;
    std::string tensorAt = jsonPointer(at, i);
    if (*req.dtype && t.dtype != req.dtype) {
      check.fail(jsonPointer(tensorAt, "dtype"),
                 cat("'", req.name, "' must be ", req.dtype, ", got ",
                     t.dtype));
      return -1;
    }
    if (t.shape != req.shape) {
      check.fail(jsonPointer(tensorAt, "shape"),
                 cat("is ", formatShape(t.shape), ", but ", req.shapeText,
                     " is ", formatShape(req.shape)));
      return -1;
    }
    return long(i);
  }
  std::string dtype = *req.dtype ? req.dtype : "f32 or i32";
  check.fail(at, cat("missing ", what, " '", req.name, "' (", req.shapeText,
                     " ", dtype, ")"));
  return -1;
}

/// Checks that every tensor of `reqs` is in `list`; the indices found go to
/// `found`.
static bool findAllRequired(JsonCheck &check,
                            const std::vector<TensorSpec> &list,
                            const std::string &at, const char *what,
                            const std::vector<Required> &reqs,
                            std::set<size_t> &found) {
  for (const Required &req : reqs) {
    long index = findRequired(check, list, at, what, req);
    if (index < 0)
      return false;
    found.insert(size_t(index));
  }
  return true;
}

static std::string nameList(const std::vector<Required> &reqs) {
  std::string out;
  for (const Required &r : reqs)
    out += cat(out.empty() ? "" : ", ", r.name);
  return out;
}

bool checkTrainStepSignature(JsonCheck &check, const Manifest &m) {
  const EntrySpec &entry = *m.entry(kEntryTrainStep);
  const std::string at = "/entries/train_step";
  const std::vector<int64_t> scalar = {};
  std::vector<Required> inputs = {
      {"images", "f32", {m.batch, m.channels, m.height, m.width},
       "[batch, channels, height, width]"},
      {"labels", "i32", {m.batch}, "[batch]"},
      {"step", "f32", scalar, "a scalar"},
      {"total_steps", "f32", scalar, "a scalar"},
      {"warmup_steps", "f32", scalar, "a scalar"},
      {"lr", "f32", scalar, "a scalar"}};
  std::set<size_t> named;
  std::string inputsAt = jsonPointer(at, "inputs");
  if (!findAllRequired(check, entry.inputs, inputsAt, "input", inputs, named))
    return false;
  for (size_t i = 0; i < entry.inputs.size(); ++i) {
    if (named.count(i))
      continue;
    const TensorSpec &t = entry.inputs[i];
    std::string tensorAt = jsonPointer(inputsAt, i);
    if (t.role != kRoleNormalNoise)
      return check.fail(tensorAt,
                        cat("input '", t.name,
                            "' is neither one the runtime fills by name (",
                            nameList(inputs), ") nor of role ",
                            kRoleNormalNoise));
    if (t.dtype != "f32")
      return check.fail(jsonPointer(tensorAt, "dtype"),
                        cat("role ", kRoleNormalNoise, " needs f32, got ",
                            t.dtype));
  }

  std::vector<Required> outputs = {{"loss", "f32", scalar, "a scalar"},
                                   {"ce_loss", "f32", scalar, "a scalar"},
                                   {"aux_loss", "f32", scalar, "a scalar"},
                                   {"correct", "", scalar, "a scalar"},
                                   {"grad_norm", "f32", scalar, "a scalar"},
                                   {"lr_used", "f32", scalar, "a scalar"}};
  std::string outputsAt = jsonPointer(at, "outputs");
  named.clear();
  if (!findAllRequired(check, entry.outputs, outputsAt, "output", outputs,
                       named))
    return false;
  for (size_t i = 0; i < entry.outputs.size(); ++i) {
    const TensorSpec &t = entry.outputs[i];
    if (t.role != kRoleGradient)
      continue;
    std::string tensorAt = jsonPointer(outputsAt, i);
    const std::string prefix = "grad.";
    const ParamSpec *param = nullptr;
    if (t.name.compare(0, prefix.size(), prefix) == 0)
      for (const ParamSpec &p : m.params)
        if (p.name == t.name.substr(prefix.size()))
          param = &p;
    if (!param)
      return check.fail(jsonPointer(tensorAt, "name"),
                        cat("gradient '", t.name,
                            "' is not named grad.<param> of a parameter"));
    if (t.dtype != "f32")
      return check.fail(jsonPointer(tensorAt, "dtype"),
                        cat("role ", kRoleGradient, " needs f32, got ",
                            t.dtype));
    if (t.shape != param->shape)
      return check.fail(jsonPointer(tensorAt, "shape"),
                        cat("is ", formatShape(t.shape), ", but parameter '",
                            param->name, "' is ", formatShape(param->shape)));
  }
  return true;
}

bool checkEvalSignature(JsonCheck &check, const Manifest &m,
                        const std::string &entryName) {
  const EntrySpec &entry = *m.entry(entryName);
  const std::string at = "/entries/" + entryName;
  std::vector<Required> inputs = {
      {"images", "f32", {m.batch, m.channels, m.height, m.width},
       "[batch, channels, height, width]"},
      {"labels", "i32", {m.batch}, "[batch]"},
      {"mask", "f32", {m.batch}, "[batch]"}};
  std::set<size_t> named;
  std::string inputsAt = jsonPointer(at, "inputs");
  if (!findAllRequired(check, entry.inputs, inputsAt, "input", inputs, named))
    return false;
  for (size_t i = 0; i < entry.inputs.size(); ++i)
    if (!named.count(i))
      return check.fail(jsonPointer(inputsAt, i),
                        cat("input '", entry.inputs[i].name,
                            "' is not one ", entryName, " takes (",
                            nameList(inputs),
                            ")"));
  std::vector<Required> outputs = {{"loss_sum", "f32", {}, "a scalar"},
                                   {"correct", "", {}, "a scalar"}};
  std::string outputsAt = jsonPointer(at, "outputs");
  named.clear();
  if (!findAllRequired(check, entry.outputs, outputsAt, "output", outputs,
                       named))
    return false;
  for (size_t i = 0; i < entry.outputs.size(); ++i) {
    const TensorSpec &t = entry.outputs[i];
    if (t.role == kRoleRoutingCounts && t.shape.size() != 1)
      return check.fail(jsonPointer(jsonPointer(outputsAt, i), "shape"),
                        cat("is ", formatShape(t.shape),
                            ", but routing counts are [experts]"));
    if (t.role == kRoleRoutingStats &&
        (t.dtype != "f32" || t.shape.empty() || t.shape.size() > 2 ||
         t.shape[0] != m.batch))
      return check.fail(jsonPointer(outputsAt, i),
                        cat("is ", t.dtype, " ", formatShape(t.shape),
                            ", but routing statistics are f32 [", m.batch,
                            ", experts] or [", m.batch, "]"));
  }
  return true;
}

bool readOptimizer(JsonCheck &check, const json &root, Manifest &m) {
  const json *value = check.member(root, "", "optimizer", /*required=*/false);
  if (!value)
    return true;
  const std::string at = "/optimizer";
  OptimizerSpec o;
  if (!check.isObject(*value, at) ||
      !check.getString(*value, at, "kind", o.kind, /*nonEmpty=*/true) ||
      !check.getPositiveNumber(*value, at, "lr", o.lr))
    return false;
  if (Error e = checkLearningRate(o.lr, ErrorCode::Format, "lr"))
    return check.fail("/optimizer/lr", e.message().substr(4));
  const std::pair<const char *, double *> optional[] = {
      {"weight_decay", &o.weightDecay}, {"beta1", &o.beta1},
      {"beta2", &o.beta2},              {"eps", &o.eps},
      {"momentum", &o.momentum},        {"grad_clip", &o.gradClip}};
  for (auto [key, out] : optional)
    if (value->contains(key) &&
        !check.getNumber(*value, at, key, 0, kMaxOptimizerValue, *out))
      return false;
  m.optimizer = o;
  return true;
}

bool readTrain(JsonCheck &check, const json &root, Manifest &m) {
  const json *value = check.member(root, "", "train", /*required=*/false);
  if (!value)
    return true;
  const std::string at = "/train";
  TrainSpec t;
  if (!check.isObject(*value, at) ||
      !check.getInt(*value, at, "batch", 1, t.batch) ||
      !check.getInt(*value, at, "epochs", 1, t.epochs))
    return false;
  if (t.epochs > kMaxEpochs)
    return check.fail("/train/epochs",
                      cat("expected at most ", kMaxEpochs, ", got ", t.epochs));
  if (t.batch != m.batch)
    return check.fail("/train/batch",
                      cat("is ", t.batch, ", but /batch is ", m.batch,
                          " (the artifact's batch is the train batch)"));
  if (value->contains("warmup_epochs") &&
      !check.getNumber(*value, at, "warmup_epochs", 0, double(kMaxEpochs),
                       t.warmupEpochs))
    return false;
  if (value->contains("label_smoothing") &&
      !check.getNumber(*value, at, "label_smoothing", 0, 1, t.labelSmoothing))
    return false;
  if (value->contains("seed") && !check.getUInt(*value, at, "seed", t.seed))
    return false;
  if (value->contains("schedule") &&
      !check.getString(*value, at, "schedule", t.schedule))
    return false;
  if (const json *augment =
          check.member(*value, at, "augment", /*required=*/false)) {
    const std::string augmentAt = "/train/augment";
    if (!check.isObject(*augment, augmentAt))
      return false;
    if (augment->contains("crop_padding") &&
        !check.getInt(*augment, augmentAt, "crop_padding", 0, t.cropPadding))
      return false;
    if (augment->contains("horizontal_flip") &&
        !check.getBool(*augment, augmentAt, "horizontal_flip",
                       t.horizontalFlip))
      return false;
    if (t.cropPadding > 0 && m.channels > 3)
      return check.fail("/train/augment/crop_padding",
                        cat("random crop supports at most 3 channels, the "
                            "model has ",
                            m.channels));
  }
  m.train = t;
  return true;
}

/// Splits "optimizer.<slot>.<param>" (Checkpoint.h naming).
static bool splitStateName(const std::string &name, std::string &slot,
                           std::string &param) {
  const std::string prefix = "optimizer.";
  if (name.compare(0, prefix.size(), prefix) != 0)
    return false;
  size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size() ||
      dot + 1 == name.size())
    return false;
  slot = name.substr(prefix.size(), dot - prefix.size());
  param = name.substr(dot + 1);
  return true;
}

/// The optional "state" array: like params, init zeros, named
/// optimizer.<slot>.<param>, sharing bytes with no parameter or other
/// state tensor.
bool readState(JsonCheck &check, const json &root, Manifest &m) {
  const json *state = check.member(root, "", "state", /*required=*/false);
  if (!state)
    return true;
  if (!check.isArray(*state, "/state"))
    return false;
  std::set<std::string> names;
  for (const ParamSpec &p : m.params)
    names.insert(p.name);
  for (size_t i = 0; i < state->size(); ++i) {
    const json &value = (*state)[i];
    std::string at = jsonPointer("/state", i);
    ParamSpec s;
    std::string init;
    if (!check.isObject(value, at) ||
        !check.getString(value, at, "name", s.name, /*nonEmpty=*/true) ||
        !check.getShape(value, at, "shape", s.shape) ||
        !check.getString(value, at, "dtype", s.dtype) ||
        !check.getUInt(value, at, "offset", s.offset) ||
        !check.getEnum(value, at, "init", {"zeros"}, "state init", init))
      return false;
    std::string slot, param;
    if (!splitStateName(s.name, slot, param))
      return check.fail(jsonPointer(at, "name"),
                        cat("state tensor '", s.name,
                            "' is not named optimizer.<slot>.<param>"));
    if (!names.insert(s.name).second)
      return check.fail(jsonPointer(at, "name"),
                        cat("duplicate state tensor '", s.name, "'"));
    if (std::none_of(m.params.begin(), m.params.end(),
                     [&](const ParamSpec &p) { return p.name == param; }))
      return check.fail(jsonPointer(at, "name"),
                        cat("state tensor '", s.name, "' names no parameter ('",
                            param, "' is not a parameter)"));
    if (s.dtype != "f32")
      return check.fail(
          jsonPointer(at, "dtype"),
          cat("unsupported dtype '", s.dtype, "' (expected f32)"));
    if (s.offset % fmt::kAlignment != 0)
      return check.fail(
          jsonPointer(at, "offset"),
          cat("must be a multiple of ", fmt::kAlignment, ", got ", s.offset));
    uint64_t bytes = static_cast<uint64_t>(s.count()) * 4;
    if (s.offset > m.paramBytes || bytes > m.paramBytes - s.offset)
      return check.fail(
          at, cat("state tensor '", s.name, "' (offset ", s.offset, ", ",
                  bytes, " bytes) does not fit in param_bytes (", m.paramBytes,
                  ")"));
    s.init = InitKind::Zeros;
    m.state.push_back(std::move(s));
  }

  // No state tensor shares bytes with a parameter or another state tensor
  // (parameters among themselves are checked by readParams).
  struct Span {
    uint64_t begin, end;
    bool isState;
    size_t index;
  };
  std::vector<Span> spans;
  for (size_t i = 0; i < m.params.size(); ++i)
    spans.push_back({m.params[i].offset,
                     m.params[i].offset + uint64_t(m.params[i].count()) * 4,
                     false, i});
  for (size_t i = 0; i < m.state.size(); ++i)
    spans.push_back({m.state[i].offset,
                     m.state[i].offset + uint64_t(m.state[i].count()) * 4,
                     true, i});
  std::sort(spans.begin(), spans.end(), [](const Span &a, const Span &b) {
    return a.begin < b.begin || (a.begin == b.begin && a.isState < b.isState);
  });
  auto describe = [&](const Span &s) {
    return s.isState ? cat("state tensor '", m.state[s.index].name, "'")
                     : cat("parameter '", m.params[s.index].name, "'");
  };
  for (size_t i = 1; i < spans.size(); ++i) {
    const Span &prev = spans[i - 1], &cur = spans[i];
    if (prev.end > cur.begin && (prev.isState || cur.isState)) {
      const Span &state = cur.isState ? cur : prev;
      const Span &other = cur.isState ? prev : cur;
      return check.fail(jsonPointer("/state", state.index),
                        cat(describe(state), " overlaps ", describe(other)));
    }
  }
  return true;
}

} // namespace moec::rt
