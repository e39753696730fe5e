//===- Artifact.cpp - loading and validating .moec artifacts --------------===//
//
// The container checks run in file order of trust: magic, version, size,
// checksum, section table, then the JSON sections' schemas. Every failure
// names the file and, for JSON, the JSON pointer of the offending value.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Artifact.h"

#include "JsonCheck.h"
#include "ManifestNormalization.h"
#include "ManifestTraining.h"
#include "PlanCheck.h"
#include "moec/Runtime/ArtifactFormat.h"
#include "moec/Runtime/FileUtil.h"
#include "moec/Runtime/Limits.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <set>

using nlohmann::json;

namespace moec::rt {

namespace fmt = moec::artifact;

int64_t numElements(const std::vector<int64_t> &shape) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

std::string formatShape(const std::vector<int64_t> &shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    out += cat(i ? ", " : "", shape[i]);
  return out + "]";
}

const char *initKindName(InitKind kind) {
  switch (kind) {
  case InitKind::Zeros:
    return "zeros";
  case InitKind::Ones:
    return "ones";
  case InitKind::Normal:
    return "normal";
  case InitKind::TruncNormal:
    return "trunc_normal";
  case InitKind::Constant:
    return "constant";
  }
  return "?";
}

std::vector<std::string> Plan::kernelNames() const {
  std::vector<std::string> names;
  std::set<std::string> seen;
  // "infer" first, then the other entry points in name order.
  auto add = [&](const std::vector<Dispatch> &dispatches) {
    for (const Dispatch &d : dispatches)
      if (seen.insert(d.kernel).second)
        names.push_back(d.kernel);
  };
  auto infer = entries.find("infer");
  if (infer != entries.end())
    add(infer->second);
  for (const auto &[name, dispatches] : entries)
    if (name != "infer")
      add(dispatches);
  return names;
}

//===----------------------------------------------------------------------===//
// Manifest
//===----------------------------------------------------------------------===//

static bool isSymbolName(const std::string &s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0])))
    return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
}

const TensorSpec *EntrySpec::input(const std::string &name) const {
  for (const TensorSpec &t : inputs)
    if (t.name == name)
      return &t;
  return nullptr;
}

const TensorSpec *EntrySpec::output(const std::string &name) const {
  for (const TensorSpec &t : outputs)
    if (t.name == name)
      return &t;
  return nullptr;
}

/// Reads an entry point's input or output tensor.
static bool readTensor(JsonCheck &check, const json &value,
                       const std::string &at, uint64_t arenaBytes,
                       TensorSpec &out) {
  if (!check.isObject(value, at) ||
      !check.getString(value, at, "name", out.name, /*nonEmpty=*/true) ||
      !check.getShape(value, at, "shape", out.shape) ||
      !check.getString(value, at, "dtype", out.dtype) ||
      !check.getUInt(value, at, "offset", out.offset))
    return false;
  if (out.dtype != "f32" && out.dtype != "i32")
    return check.fail(
        jsonPointer(at, "dtype"),
        cat("unsupported dtype '", out.dtype, "' (expected f32 or i32)"));
  if (value.contains("role") &&
      !check.getString(value, at, "role", out.role, /*nonEmpty=*/true))
    return false;
  if (out.offset % 4 != 0)
    return check.fail(jsonPointer(at, "offset"),
                      cat("must be a multiple of 4, got ", out.offset));
  uint64_t bytes = out.bytes();
  if (out.offset > arenaBytes || bytes > arenaBytes - out.offset)
    return check.fail(at, cat("tensor '", out.name, "' (offset ", out.offset,
                              ", ", bytes,
                              " bytes) does not fit in the arena (arena_bytes ",
                              arenaBytes, ")"));
  return true;
}

/// Names within `list` are unique and no two tensors share bytes: the
/// runtime writes every input before the first dispatch and reads every
/// output after the last.
static bool checkDistinct(JsonCheck &check, const std::vector<TensorSpec> &list,
                          const std::string &at, const char *what) {
  std::set<std::string> names;
  for (size_t i = 0; i < list.size(); ++i)
    if (!names.insert(list[i].name).second)
      return check.fail(jsonPointer(jsonPointer(at, i), "name"),
                        cat("duplicate ", what, " '", list[i].name, "'"));
  std::vector<size_t> order(list.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return list[a].offset < list[b].offset;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const TensorSpec &prev = list[order[i - 1]];
    const TensorSpec &cur = list[order[i]];
    if (prev.bytes() > 0 && cur.bytes() > 0 &&
        prev.offset + prev.bytes() > cur.offset)
      return check.fail(jsonPointer(at, order[i]),
                        cat(what, " '", cur.name, "' overlaps ", what, " '",
                            prev.name, "' in the arena"));
  }
  return true;
}

static bool readEntry(JsonCheck &check, const json &value,
                      const std::string &at, uint64_t arenaBytes,
                      EntrySpec &out) {
  if (!check.isObject(value, at))
    return false;
  for (auto [key, list] : {std::pair<const char *, std::vector<TensorSpec> *>{
                               "inputs", &out.inputs},
                           {"outputs", &out.outputs}}) {
    const json *array = check.member(value, at, key);
    std::string arrayAt = jsonPointer(at, key);
    if (!array || !check.isArray(*array, arrayAt))
      return false;
    for (size_t i = 0; i < array->size(); ++i) {
      TensorSpec tensor;
      if (!readTensor(check, (*array)[i], jsonPointer(arrayAt, i), arenaBytes,
                      tensor))
        return false;
      list->push_back(std::move(tensor));
    }
  }
  if (!checkDistinct(check, out.inputs, jsonPointer(at, "inputs"), "input") ||
      !checkDistinct(check, out.outputs, jsonPointer(at, "outputs"), "output"))
    return false;
  return check.getInt(value, at, "flops", 0, out.flops) &&
         check.getInt(value, at, "flops_per_image", 0, out.flopsPerImage);
}

/// The "infer" signature: images [batch, C, H, W] in, logits [batch, K] out.
static bool checkInferSignature(JsonCheck &check, const Manifest &m) {
  const EntrySpec &infer = m.infer();
  std::string at = "/entries/infer";
  if (infer.inputs.size() != 1)
    return check.fail(jsonPointer(at, "inputs"),
                      cat("expected exactly one input (the images), got ",
                          infer.inputs.size()));
  if (infer.outputs.size() != 1)
    return check.fail(jsonPointer(at, "outputs"),
                      cat("expected exactly one output (the logits), got ",
                          infer.outputs.size()));
  std::vector<int64_t> images = {m.batch, m.channels, m.height, m.width};
  if (infer.inputs[0].shape != images)
    return check.fail("/entries/infer/inputs/0/shape",
                      cat("is ", formatShape(infer.inputs[0].shape),
                          ", but [batch, channels, height, width] is ",
                          formatShape(images)));
  if (infer.inputs[0].dtype != "f32")
    return check.fail("/entries/infer/inputs/0/dtype",
                      cat("the images must be f32, got ",
                          infer.inputs[0].dtype));
  std::vector<int64_t> logits = {m.batch, m.classes};
  if (infer.outputs[0].shape != logits)
    return check.fail("/entries/infer/outputs/0/shape",
                      cat("is ", formatShape(infer.outputs[0].shape),
                          ", but [batch, classes] is ", formatShape(logits)));
  if (infer.outputs[0].dtype != "f32")
    return check.fail("/entries/infer/outputs/0/dtype",
                      cat("the logits must be f32, got ",
                          infer.outputs[0].dtype));
  return true;
}

static bool readParams(JsonCheck &check, const json &root, Manifest &m) {
  const json *params = check.member(root, "", "params");
  if (!params || !check.isArray(*params, "/params"))
    return false;
  std::set<std::string> names;
  for (size_t i = 0; i < params->size(); ++i) {
    const json &value = (*params)[i];
    std::string at = jsonPointer("/params", i);
    ParamSpec p;
    std::string init;
    if (!check.isObject(value, at) ||
        !check.getString(value, at, "name", p.name, /*nonEmpty=*/true) ||
        !check.getShape(value, at, "shape", p.shape) ||
        !check.getString(value, at, "dtype", p.dtype) ||
        !check.getUInt(value, at, "offset", p.offset) ||
        !check.getEnum(value, at, "init",
                       {"zeros", "ones", "normal", "trunc_normal", "constant"},
                       "init kind", init))
      return false;
    if (!names.insert(p.name).second)
      return check.fail(jsonPointer(at, "name"),
                        cat("duplicate parameter '", p.name, "'"));
    if (p.dtype != "f32")
      return check.fail(
          jsonPointer(at, "dtype"),
          cat("unsupported dtype '", p.dtype, "' (expected f32)"));
    if (p.offset % fmt::kAlignment != 0)
      return check.fail(
          jsonPointer(at, "offset"),
          cat("must be a multiple of ", fmt::kAlignment, ", got ", p.offset));
    uint64_t bytes = static_cast<uint64_t>(p.count()) * 4;
    if (p.offset > m.paramBytes || bytes > m.paramBytes - p.offset)
      return check.fail(
          at, cat("parameter '", p.name, "' (offset ", p.offset, ", ", bytes,
                  " bytes) does not fit in param_bytes (", m.paramBytes, ")"));
    if (init == "zeros")
      p.init = InitKind::Zeros;
    else if (init == "ones")
      p.init = InitKind::Ones;
    else if (init == "constant") {
      p.init = InitKind::Constant;
      if (!check.getNumber(value, at, "value", -3.0e38, 3.0e38, p.value))
        return false;
    } else {
      p.init = init == "normal" ? InitKind::Normal : InitKind::TruncNormal;
      if (!check.getPositiveNumber(value, at, "std", p.std))
        return false;
    }
    m.params.push_back(std::move(p));
  }

  // No two parameters share bytes.
  std::vector<size_t> order(m.params.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return m.params[a].offset < m.params[b].offset;
  });
  for (size_t i = 1; i < order.size(); ++i) {
    const ParamSpec &prev = m.params[order[i - 1]];
    const ParamSpec &cur = m.params[order[i]];
    if (prev.offset + static_cast<uint64_t>(prev.count()) * 4 > cur.offset)
      return check.fail(jsonPointer("/params", order[i]),
                        cat("parameter '", cur.name, "' overlaps parameter '",
                            prev.name, "'"));
  }

  int64_t total = 0;
  for (const ParamSpec &p : m.params)
    total += p.count();
  if (total != m.paramCount)
    return check.fail("/param_count",
                      cat("is ", m.paramCount, ", but the parameters hold ",
                          total, " values"));
  if (m.activeParamsPerImage > m.paramCount)
    return check.fail("/active_params_per_image",
                      cat(m.activeParamsPerImage, " exceeds param_count (",
                          m.paramCount, ")"));
  return true;
}

/// Target "cuda": the "cuda" object, and no target CPU. Other targets
/// ignore a "cuda" object.
static bool readCudaTarget(JsonCheck &check, const json &root, Manifest &m) {
  if (m.target != kTargetCuda)
    return true;
  if (!m.targetCpu.empty() || !m.targetFeatures.empty())
    return check.fail("/target_cpu",
                      cat("names CPU '", m.targetCpu, "' with ",
                          m.targetFeatures.size(),
                          " features, but a cuda artifact has no target CPU "
                          "(omit it or leave it empty)"));
  const json *cuda = check.member(root, "", "cuda");
  if (!cuda || !check.isObject(*cuda, "/cuda"))
    return false;
  CudaTarget &t = m.cuda;
  if (!check.getEnum(*cuda, "/cuda", "arch", {"sm_80", "sm_90a"},
                     "CUDA architecture", t.arch) ||
      !check.getInt(*cuda, "/cuda", "block_threads", 1, t.blockThreads) ||
      !check.getEnum(*cuda, "/cuda", "format", {"ptx"}, "kernel format",
                     t.format))
    return false;
  if (t.blockThreads > kMaxCudaBlockThreads)
    return check.fail("/cuda/block_threads",
                      cat("expected at most ", kMaxCudaBlockThreads,
                          " (threads per block), got ", t.blockThreads));
  return true;
}

Expected<Manifest> parseManifest(const std::string &text,
                                 const std::string &where) {
  json root;
  if (Error e = parseJson(text.data(), text.data() + text.size(), where,
                          ErrorCode::Format, root))
    return e;
  JsonCheck check(where, ErrorCode::Format);
  Manifest m;
  auto parse = [&]() -> bool {
    if (!check.isObject(root, ""))
      return false;
    const json *input, *dataset, *entries;
    if (!check.getString(root, "", "model", m.model, /*nonEmpty=*/true) ||
        !check.getString(root, "", "target", m.target, /*nonEmpty=*/true) ||
        !check.getString(root, "", "compiler", m.compiler) ||
        !check.getInt(root, "", "batch", 1, m.batch) ||
        !(input = check.member(root, "", "input")) ||
        !check.getInt(*input, "/input", "channels", 1, m.channels) ||
        !check.getInt(*input, "/input", "height", 1, m.height) ||
        !check.getInt(*input, "/input", "width", 1, m.width) ||
        !check.getInt(root, "", "classes", 1, m.classes) ||
        !(dataset = check.member(root, "", "dataset")) ||
        !check.getEnum(*dataset, "/dataset", "kind",
                       {"fashion-mnist", "cifar10", "image-folder"},
                       "dataset kind", m.datasetKind) ||
        !check.getString(*dataset, "/dataset", "path", m.datasetPath) ||
        !readDatasetNormalization(check, *dataset, m) ||
        !check.getUInt(root, "", "param_bytes", m.paramBytes) ||
        !check.getInt(root, "", "param_count", 0, m.paramCount) ||
        !check.getInt(root, "", "active_params_per_image", 0,
                      m.activeParamsPerImage) ||
        !check.getUInt(root, "", "arena_bytes", m.arenaBytes))
      return false;
    if (!readParams(check, root, m))
      return false;
    if (!(entries = check.member(root, "", "entries")) ||
        !check.isObject(*entries, "/entries"))
      return false;
    if (!entries->contains("infer"))
      return check.fail("/entries/infer", "required field is missing");
    for (const auto &[name, value] : entries->items()) {
      EntrySpec entry;
      if (!readEntry(check, value, jsonPointer("/entries", name), m.arenaBytes,
                     entry))
        return false;
      m.entries.emplace(name, std::move(entry));
    }
    if (!checkInferSignature(check, m))
      return false;
    if (!readState(check, root, m) || !readOptimizer(check, root, m) ||
        !readTrain(check, root, m))
      return false;
    if (m.entry(kEntryTrainStep)) {
      if (!m.optimizer)
        return check.fail("/optimizer", "required when the model has a "
                                        "train_step entry point");
      if (!m.train)
        return check.fail("/train", "required when the model has a "
                                    "train_step entry point");
      if (!checkTrainStepSignature(check, m))
        return false;
    }
    for (const char *name : {kEntryEval, kEntryAnalyze})
      if (m.entry(name) && !checkEvalSignature(check, m, name))
        return false;
    if (const json *spec = check.member(root, "", "spec", /*required=*/false))
      m.spec = spec->dump();
    if (const json *pruned =
            check.member(root, "", "pruned_layers", /*required=*/false)) {
      if (!check.isArray(*pruned, "/pruned_layers"))
        return false;
      for (size_t i = 0; i < pruned->size(); ++i) {
        const std::string at = jsonPointer("/pruned_layers", i);
        std::string layer, replacement;
        if (!check.isObject((*pruned)[i], at) ||
            !check.getString((*pruned)[i], at, "layer", layer) ||
            !check.getString((*pruned)[i], at, "replacement", replacement))
          return false;
        m.prunedLayers.push_back(layer + " (" + replacement + ")");
      }
    }
    if (check.member(root, "", "precision", /*required=*/false)) {
      if (!check.getString(root, "", "precision", m.precision))
        return false;
      if (m.precision != "fp32" && m.precision != "bf16")
        return check.fail("/precision", cat("expected \"fp32\" or \"bf16\", got \"",
                                            m.precision, "\""));
    }
    if (const json *cpu =
            check.member(root, "", "target_cpu", /*required=*/false)) {
      if (!check.getString(*cpu, "/target_cpu", "name", m.targetCpu))
        return false;
      const json *features = check.member(*cpu, "/target_cpu", "features");
      if (!features)
        return false;
      if (!features->is_array())
        return check.fail("/target_cpu/features", "expected an array of strings");
      for (const json &f : *features) {
        if (!f.is_string())
          return check.fail("/target_cpu/features",
                            "expected an array of strings");
        m.targetFeatures.push_back(f.get<std::string>());
      }
    }
    return readCudaTarget(check, root, m);
  };
  if (!parse())
    return check.takeError();
  return m;
}

//===----------------------------------------------------------------------===//
// Plan
//===----------------------------------------------------------------------===//

static bool readDispatch(JsonCheck &check, const json &value,
                         const std::string &at, const Manifest &m,
                         Dispatch &d) {
  std::string parallel;
  if (!check.isObject(value, at) ||
      !check.getString(value, at, "kernel", d.kernel, /*nonEmpty=*/true))
    return false;
  if (!isSymbolName(d.kernel))
    return check.fail(jsonPointer(at, "kernel"),
                      cat("'", d.kernel, "' is not a valid symbol name"));
  if (!check.getString(value, at, "op", d.op) ||
      !check.getString(value, at, "name", d.name) ||
      !check.getEnum(value, at, "parallel", {"images", "fixed"},
                     "parallel kind", parallel) ||
      !check.getInt(value, at, "tiles", 0, d.tiles) ||
      (value.contains("flops") &&
       !check.getInt(value, at, "flops", 0, d.flops)) ||
      (value.contains("scratch_bytes") &&
       !check.getUInt(value, at, "scratch_bytes", d.scratchBytes)))
    return false;
  d.parallel = parallel == "images" ? Dispatch::Parallel::Images
                                    : Dispatch::Parallel::Fixed;
  // An images dispatch runs over the batch's images, or over its routing
  // groups (batch / tiles images each).
  if (d.parallel == Dispatch::Parallel::Images) {
    if (d.tiles < 1 || d.tiles > m.batch || m.batch % d.tiles != 0)
      return check.fail(jsonPointer(at, "tiles"),
                        cat(d.tiles, " tiles, but an images dispatch runs "
                                     "over the batch (",
                            m.batch, ") or a divisor of it (routing groups)"));
    d.imagesPerStep = m.batch / d.tiles;
  }
  const json *args = check.member(value, at, "args");
  std::string argsAt = jsonPointer(at, "args");
  if (!args || !check.isArray(*args, argsAt))
    return false;
  for (size_t i = 0; i < args->size(); ++i) {
    std::string argAt = jsonPointer(argsAt, i);
    std::string space;
    BufferArg arg;
    if (!check.getEnum((*args)[i], argAt, "space", {"arena", "param"},
                       "buffer space", space) ||
        !check.getUInt((*args)[i], argAt, "offset", arg.offset) ||
        ((*args)[i].contains("bytes") &&
         !check.getUInt((*args)[i], argAt, "bytes", arg.bytes)))
      return false;
    arg.space =
        space == "arena" ? BufferArg::Space::Arena : BufferArg::Space::Param;
    uint64_t limit =
        arg.space == BufferArg::Space::Arena ? m.arenaBytes : m.paramBytes;
    if (arg.offset >= limit)
      return check.fail(
          jsonPointer(argAt, "offset"),
          cat(arg.offset, " is outside the ", space, " (", limit, " bytes)"));
    if (arg.offset % 4 != 0)
      return check.fail(jsonPointer(argAt, "offset"),
                        cat("must be a multiple of 4, got ", arg.offset));
    d.args.push_back(arg);
  }
  return true;
}

Expected<Plan> parsePlan(const std::string &text, const Manifest &manifest,
                         const std::string &where) {
  json root;
  if (Error e = parseJson(text.data(), text.data() + text.size(), where,
                          ErrorCode::Format, root))
    return e;
  JsonCheck check(where, ErrorCode::Format);
  Plan plan;
  auto parse = [&]() -> bool {
    const json *entries;
    if (!check.isObject(root, "") ||
        !(entries = check.member(root, "", "entries")) ||
        !check.isObject(*entries, "/entries"))
      return false;
    if (!entries->contains("infer"))
      return check.fail("/entries/infer", "required field is missing");
    for (const auto &[name, value] : entries->items()) {
      std::string at = jsonPointer("/entries", name);
      if (!manifest.entries.count(name))
        return check.fail(at,
                          cat("the manifest has no entry point '", name, "'"));
      if (!check.isArray(value, at))
        return false;
      if (value.empty())
        return check.fail(at, "has no dispatches");
      std::vector<Dispatch> dispatches;
      for (size_t i = 0; i < value.size(); ++i) {
        Dispatch d;
        if (!readDispatch(check, value[i], jsonPointer(at, i), manifest, d))
          return false;
        dispatches.push_back(std::move(d));
      }
      plan.entries.emplace(name, std::move(dispatches));
    }
    for (const auto &[name, entry] : manifest.entries)
      if (!plan.entries.count(name))
        return check.fail(jsonPointer("/entries", name),
                          cat("the manifest's entry point '", name,
                              "' has no dispatches in the plan"));
    return true;
  };
  if (!parse())
    return check.takeError();
  return plan;
}

//===----------------------------------------------------------------------===//
// Container
//===----------------------------------------------------------------------===//

Expected<std::shared_ptr<const Artifact>>
Artifact::load(const std::string &path, const LoadOptions &options) {
  Expected<std::vector<uint8_t>> bytes = readFile(path);
  if (!bytes)
    return bytes.takeError();
  return fromBytes(std::move(*bytes), path, options);
}

const SectionInfo *Artifact::section(const std::string &name) const {
  for (const SectionInfo &s : sections_)
    if (s.name == name)
      return &s;
  return nullptr;
}

Expected<std::shared_ptr<const Artifact>>
Artifact::fromBytes(std::vector<uint8_t> bytes, const std::string &path,
                    const LoadOptions &options) {
  const uint64_t size = bytes.size();
  auto formatError = [&](const auto &...args) {
    return makeError(ErrorCode::Format, path, ": ", args...);
  };

  // Header.
  if (size < sizeof(fmt::kMagic) ||
      std::memcmp(bytes.data(), fmt::kMagic, sizeof(fmt::kMagic)) != 0)
    return formatError("not a moec artifact (bad magic)");
  if (size < sizeof(fmt::FileHeader))
    return formatError("truncated (file has ", size, " bytes, less than the ",
                       sizeof(fmt::FileHeader), "-byte header)");
  fmt::FileHeader header;
  std::memcpy(&header, bytes.data(), sizeof(header));
  if (header.versionMajor != fmt::kVersionMajor)
    return makeError(ErrorCode::Version, path, ": artifact version ",
                     header.versionMajor, ".", header.versionMinor,
                     " is not supported (this runtime reads ",
                     fmt::kVersionMajor, ".x)");
  if (header.fileSize > size)
    return formatError("truncated (header says ", header.fileSize,
                       " bytes, file has ", size, ")");
  if (header.fileSize < size)
    return formatError("header says ", header.fileSize,
                       " bytes, but the file "
                       "has ",
                       size, " (trailing bytes)");
  uint64_t checksum =
      fmt::fnv1a64(bytes.data() + sizeof(header), size - sizeof(header));
  if (options.verifyChecksum && checksum != header.checksum)
    return makeError(ErrorCode::Checksum, path,
                     ": checksum mismatch (file is corrupted)");

  // Section table.
  const uint64_t entrySize = sizeof(fmt::SectionEntry);
  uint64_t tableOffset = header.sectionTableOffset;
  if (tableOffset < sizeof(header) || tableOffset > size ||
      header.sectionCount > (size - tableOffset) / entrySize)
    return formatError("section table (offset ", tableOffset, ", ",
                       header.sectionCount, " entries) lies outside the file (",
                       size, " bytes)");
  if (tableOffset % fmt::kAlignment != 0)
    return formatError("section table offset ", tableOffset,
                       " is not a multiple of ", fmt::kAlignment);
  uint64_t tableEnd = tableOffset + header.sectionCount * entrySize;

  std::shared_ptr<Artifact> artifact(new Artifact());
  std::vector<SectionInfo> &sections = artifact->sections_;
  for (uint64_t i = 0; i < header.sectionCount; ++i) {
    fmt::SectionEntry entry;
    std::memcpy(&entry, bytes.data() + tableOffset + i * entrySize, entrySize);
    size_t nameLength = strnlen(entry.name, sizeof(entry.name));
    std::string name(entry.name, nameLength);
    bool printable = std::all_of(name.begin(), name.end(),
                                 [](char c) { return c > ' ' && c < 127; });
    if (name.empty() || !printable)
      return formatError("section ", i, " has an invalid name");
    for (const SectionInfo &s : sections)
      if (s.name == name)
        return formatError("duplicate section '", name, "'");
    if (entry.offset < sizeof(header) || entry.offset > size ||
        entry.size > size - entry.offset)
      return formatError("section '", name, "' (offset ", entry.offset, ", ",
                         entry.size, " bytes) lies outside the file (", size,
                         " bytes)");
    if (entry.offset % fmt::kAlignment != 0)
      return formatError("section '", name, "' offset ", entry.offset,
                         " is not a multiple of ", fmt::kAlignment);
    if (entry.offset < tableEnd && entry.offset + entry.size > tableOffset &&
        entry.size > 0)
      return formatError("section '", name, "' overlaps the section table");
    sections.push_back({name, entry.offset, entry.size});
  }
  std::vector<SectionInfo> sorted = sections;
  std::sort(sorted.begin(), sorted.end(),
            [](const SectionInfo &a, const SectionInfo &b) {
              return a.offset < b.offset;
            });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i - 1].offset + sorted[i - 1].size > sorted[i].offset)
      return formatError("sections '", sorted[i - 1].name, "' and '",
                         sorted[i].name, "' overlap");

  for (const char *required :
       {fmt::kManifestSection, fmt::kPlanSection, fmt::kKernelsSection})
    if (!artifact->section(required))
      return formatError("missing required section '", required, "'");

  artifact->path_ = path;
  artifact->versionMajor_ = header.versionMajor;
  artifact->versionMinor_ = header.versionMinor;
  artifact->bytes_ = std::move(bytes);
  for (size_t i = 0; i < sections.size(); ++i)
    if (sections[i].name == fmt::kKernelsSection)
      artifact->kernelsIndex_ = i;

  auto text = [&](const char *name) {
    const SectionInfo *s = artifact->section(name);
    const char *data =
        reinterpret_cast<const char *>(artifact->sectionData(*s));
    return std::string(data, s->size);
  };
  Expected<Manifest> manifest =
      parseManifest(text(fmt::kManifestSection), cat(path, ": manifest"));
  if (!manifest)
    return manifest.takeError();
  artifact->manifest_ = std::move(*manifest);
  Expected<Plan> plan = parsePlan(text(fmt::kPlanSection), artifact->manifest_,
                                  cat(path, ": plan"));
  if (!plan)
    return plan.takeError();
  artifact->plan_ = std::move(*plan);
  if (Error e =
          checkPlan(artifact->plan_, artifact->manifest_, cat(path, ": plan")))
    return e;

  if (Error e = artifact->manifest_.target == kTargetCuda
                    ? checkKernelsPtx(artifact->kernelsData(),
                                      artifact->kernelsSize(),
                                      artifact->plan_.kernelNames(), path)
                    : checkKernelsElf(artifact->kernelsData(),
                                      artifact->kernelsSize(), path))
    return e;
  return std::shared_ptr<const Artifact>(std::move(artifact));
}

} // namespace moec::rt
