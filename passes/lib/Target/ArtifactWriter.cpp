//===- ArtifactWriter.cpp - write a .moec artifact ------------------------===//

#include "moec/Passes/ArtifactWriter.h"

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Runtime/ArtifactFormat.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/StringMap.h"

#include <algorithm>

#include <nlohmann/json.hpp>

using namespace mlir;
using namespace moec;
using json = nlohmann::ordered_json;

namespace {
json shapeOf(Type t) {
  json shape = json::array();
  for (int64_t d : cast<RankedTensorType>(t).getShape())
    shape.push_back(d);
  return shape;
}

int64_t intAttr(Operation *op, StringRef name) {
  auto attr = op->getAttrOfType<IntegerAttr>(name);
  return attr ? attr.getInt() : -1;
}

void appendSection(std::string &out, std::vector<artifact::SectionEntry> &table,
                   const char *name, StringRef payload) {
  out.resize(artifact::alignTo(out.size()), '\0');
  artifact::SectionEntry entry{};
  std::strncpy(entry.name, name, sizeof(entry.name));
  entry.offset = out.size();
  entry.size = payload.size();
  table.push_back(entry);
  out.append(payload.data(), payload.size());
}
} // namespace

FailureOr<std::string> moec::buildArtifact(ModuleOp plan,
                                           ArrayRef<std::string> entries,
                                           const ArtifactModelInfo &info,
                                           StringRef kernelLibrary) {
  json params = json::array(), state = json::array();
  llvm::StringMap<int64_t> paramOffsets;
  json manifestEntries = json::object(), planEntries = json::object();
  int64_t arenaBytes = 0, paramBytes = 0, batch = 0, paramCount = 0,
          activeParams = 0;

  for (const std::string &entry : entries) {
    auto fn = plan.lookupSymbol<func::FuncOp>(entry);
    if (!fn ||
        !fn->hasAttr(moec::moe::MoEDialect::ArenaBytesAttrHelper::getNameStr()))
      return plan.emitError() << "no memory-planned entry '" << entry << "'";
    arenaBytes = std::max(
        arenaBytes,
        intAttr(fn, moec::moe::MoEDialect::ArenaBytesAttrHelper::getNameStr()));
    paramBytes = std::max(
        paramBytes,
        intAttr(fn, moec::moe::MoEDialect::ParamBytesAttrHelper::getNameStr()));
    if (entry == entries.front()) {
      paramCount =
          intAttr(fn, moec::moe::MoEDialect::ParamsAttrHelper::getNameStr());
      activeParams = intAttr(
          fn, moec::moe::MoEDialect::ActiveParamsAttrHelper::getNameStr());
    }

    // Where every tensor of the plan lives.
    DenseMap<Value, json> where;
    for (BlockArgument arg : fn.getArguments()) {
      auto off = fn.getArgAttrOfType<IntegerAttr>(
          arg.getArgNumber(),
          moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr());
      where[arg] = json{{"space", "arena"}, {"offset", off.getInt()}};
    }
    for (auto p : fn.getOps<moe::ParamOp>()) {
      int64_t off = intAttr(
          p, moec::moe::MoEDialect::ParamOffsetAttrHelper::getNameStr());
      where[p.getResult()] = json{{"space", "param"}, {"offset", off}};
      auto [it, inserted] = paramOffsets.try_emplace(p.getName(), off);
      if (!inserted) {
        if (it->second != off)
          return p.emitOpError()
                 << "has offset " << off << " in '" << entry
                 << "' but another entry point puts it at " << it->second;
        continue;
      }
      json entryJson{{"name", p.getName().str()},
                     {"shape", shapeOf(p.getType())},
                     {"dtype", "f32"},
                     {"offset", off},
                     {"init", moe::stringifyInitKind(p.getInit()).str()}};
      if (auto std = p.getStd())
        entryJson["std"] = std->convertToDouble();
      if (auto value = p.getValue())
        entryJson["value"] = value->convertToDouble();
      (p->hasAttr(moec::moe::MoEDialect::StateAttrHelper::getNameStr())
           ? state
           : params)
          .push_back(std::move(entryJson));
    }

    json dispatches = json::array();
    for (Operation &op : fn.getBody().front()) {
      // Views share their source's bytes.
      if (isa<tensor::CollapseShapeOp, tensor::ExpandShapeOp>(op)) {
        auto it = where.find(op.getOperand(0));
        if (it == where.end())
          return op.emitOpError() << "reshapes a tensor that is not a planned "
                                     "buffer";
        json loc = it->second;
        where[op.getResult(0)] = loc;
        continue;
      }
      auto call = dyn_cast<func::CallOp>(op);
      if (!call)
        continue;
      unsigned numDests = call.getNumResults();
      unsigned numArgs = call.getNumOperands() - 2; // drop begin, end
      for (unsigned r = 0; r < numDests; ++r) {
        Value dest = call.getOperand(numArgs - numDests + r);
        if (dest.getDefiningOp<moe::ParamOp>()) {
          where[call.getResult(r)] = where[dest];
          continue;
        }
        auto empty = dest.getDefiningOp<tensor::EmptyOp>();
        if (!empty ||
            !empty->hasAttr(
                moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr()))
          return call.emitOpError() << "destination #" << r
                                    << " has no arena offset";
        json loc{
            {"space", "arena"},
            {"offset",
             intAttr(
                 empty,
                 moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr())}};
        where[dest] = loc;
        where[call.getResult(r)] = loc;
      }
      json args = json::array();
      for (unsigned i = 0; i < numArgs; ++i) {
        auto it = where.find(call.getOperand(i));
        if (it == where.end())
          return call.emitOpError() << "operand #" << i << " of a call to '"
                                    << call.getCallee() << "' in '" << entry
                                    << "' is not a planned buffer";
        json arg = it->second;
        // The tensor's extent, so that the runtime checks that the whole
        // tensor lies inside its space, not only its offset.
        if (auto t = dyn_cast<RankedTensorType>(call.getOperand(i).getType());
            t && t.hasStaticShape())
          arg["bytes"] = t.getNumElements() *
                         ((t.getElementTypeBitWidth() + 7) / 8);
        args.push_back(std::move(arg));
      }
      auto parallelism = [](Operation *op) -> std::string {
        auto a = moec::moe::MoEDialect::ParallelAttrHelper(op->getContext())
                     .getAttr(op);
        return a ? moec::moe::stringifyKernelParallelism(a.getValue()).str()
                 : std::string();
      };
      auto str = [&](StringRef name) {
        auto a = call->getAttrOfType<StringAttr>(name);
        return a ? a.str() : std::string();
      };
      json dispatch{
          {"kernel", call.getCallee().str()},
          {"op", str(moec::moe::MoEDialect::OpAttrHelper::getNameStr())},
          {"name", str(moec::moe::MoEDialect::NameAttrHelper::getNameStr())},
          {"parallel", parallelism(call)},
          {"tiles",
           intAttr(call, moec::moe::MoEDialect::TilesAttrHelper::getNameStr())},
          {"flops",
           intAttr(call, moec::moe::MoEDialect::FlopsAttrHelper::getNameStr())},
          {"args", std::move(args)}};
      if (info.cuda) {
        auto scratch = info.cuda->scratchBytes.find(call.getCallee().str());
        if (scratch != info.cuda->scratchBytes.end() && scratch->second > 0)
          dispatch["scratch_bytes"] = scratch->second;
      }
      dispatches.push_back(std::move(dispatch));
    }

    auto tensorJson = [&](StringAttr name, StringAttr role, Type t,
                          int64_t offset, StringRef fallback) {
      auto rt = cast<RankedTensorType>(t);
      json j{{"name", name ? name.str() : fallback.str()},
             {"shape", shapeOf(t)},
             {"dtype", rt.getElementType().isInteger(32) ? "i32" : "f32"},
             {"offset", offset}};
      if (role)
        j["role"] = role.str();
      return j;
    };
    json inputs = json::array(), outputs = json::array();
    for (BlockArgument arg : fn.getArguments()) {
      unsigned i = arg.getArgNumber();
      inputs.push_back(tensorJson(
          fn.getArgAttrOfType<StringAttr>(
              i, moec::moe::MoEDialect::NameAttrHelper::getNameStr()),
          fn.getArgAttrOfType<StringAttr>(
              i, moec::moe::MoEDialect::RoleAttrHelper::getNameStr()),
          arg.getType(), where[arg]["offset"], "input"));
    }
    for (auto [i, t] : llvm::enumerate(fn.getResultTypes())) {
      auto off = fn.getResultAttrOfType<IntegerAttr>(
          i, moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr());
      outputs.push_back(tensorJson(
          fn.getResultAttrOfType<StringAttr>(
              i, moec::moe::MoEDialect::NameAttrHelper::getNameStr()),
          fn.getResultAttrOfType<StringAttr>(
              i, moec::moe::MoEDialect::RoleAttrHelper::getNameStr()),
          t, off ? off.getInt() : -1, i == 0 ? "logits" : "output"));
    }
    auto images = cast<RankedTensorType>(fn.getArgumentTypes()[0]);
    batch = images.getDimSize(0);
    int64_t flops =
        intAttr(fn, moec::moe::MoEDialect::FlopsAttrHelper::getNameStr());
    manifestEntries[entry] = {{"inputs", std::move(inputs)},
                              {"outputs", std::move(outputs)},
                              {"flops", flops},
                              {"flops_per_image", batch > 0 ? flops / batch : 0}};
    planEntries[entry] = std::move(dispatches);
  }

  json spec = json::parse(info.specJson, nullptr, /*allow_exceptions=*/false);
  // The normalization the runtime's loader of the spec's dataset applies,
  // per channel (artifact 1.2): what the model is trained with.
  artifact::DatasetNormalization norm =
      artifact::datasetNormalization(info.datasetKind.c_str());
  json mean = json::array(), stdDev = json::array();
  for (int64_t c = 0; c < info.channels; ++c) {
    int64_t i = std::min<int64_t>(c, 2);
    mean.push_back(norm.mean[i]);
    stdDev.push_back(norm.std[i]);
  }
  json manifest{{"model", info.model},
                {"target", info.target},
                {"compiler", "moec 0.2.0"},
                {"precision", info.precision},
                {"batch", batch},
                {"input",
                 {{"channels", info.channels},
                  {"height", info.height},
                  {"width", info.width}}},
                {"classes", info.classes},
                {"dataset",
                 {{"kind", info.datasetKind},
                  {"path", info.datasetPath},
                  {"normalization",
                   {{"mean", std::move(mean)}, {"std", std::move(stdDev)}}}}},
                {"param_bytes", paramBytes},
                {"param_count", paramCount},
                {"active_params_per_image", activeParams},
                {"arena_bytes", arenaBytes},
                {"params", std::move(params)}};
  if (info.cuda)
    manifest["cuda"] = json{{"arch", info.cuda->arch},
                            {"block_threads", info.cuda->blockThreads},
                            {"format", "ptx"}};
  else
    manifest["target_cpu"] =
        json{{"name", info.targetCpu}, {"features", info.targetFeatures}};
  if (!state.empty())
    manifest["state"] = std::move(state);
  if (info.train) {
    const ArtifactTrainInfo &t = *info.train;
    manifest["optimizer"] = {{"kind", t.optimizer}, {"lr", t.lr},
                             {"weight_decay", t.weightDecay}, {"beta1", t.beta1},
                             {"beta2", t.beta2}, {"eps", t.eps},
                             {"momentum", t.momentum}, {"grad_clip", t.gradClip}};
    manifest["train"] = {{"batch", t.batch},
                         {"epochs", t.epochs},
                         {"warmup_epochs", t.warmupEpochs},
                         {"label_smoothing", t.labelSmoothing},
                         {"seed", t.seed},
                         {"schedule", t.schedule},
                         {"min_lr_ratio", t.minLrRatio},
                         {"augment",
                          {{"crop_padding", t.cropPadding},
                           {"horizontal_flip", t.horizontalFlip}}}};
  }
  manifest["entries"] = std::move(manifestEntries);
  manifest["spec"] = spec.is_discarded() ? json::object() : spec;
  // moe-prune-layers' record: which MoE layers became dense FFNs, and why.
  if (ArrayAttr pruned =
          moe::MoEDialect::PrunedLayersAttrHelper(plan.getContext())
              .getAttr(plan)) {
    json layers = json::array();
    for (Attribute entry : pruned) {
      json layer = json::object();
      for (NamedAttribute field : cast<DictionaryAttr>(entry)) {
        if (auto s = dyn_cast<StringAttr>(field.getValue()))
          layer[field.getName().str()] = s.str();
        else if (auto f = dyn_cast<FloatAttr>(field.getValue()))
          layer[field.getName().str()] = f.getValueAsDouble();
      }
      layers.push_back(std::move(layer));
    }
    manifest["pruned_layers"] = std::move(layers);
  }
  json planJson{{"entries", std::move(planEntries)}};

  std::string out(sizeof(artifact::FileHeader), '\0');
  std::vector<artifact::SectionEntry> table;
  appendSection(out, table, artifact::kManifestSection, manifest.dump(1));
  appendSection(out, table, artifact::kPlanSection, planJson.dump(1));
  appendSection(out, table, artifact::kKernelsSection, kernelLibrary);
  out.resize(artifact::alignTo(out.size()), '\0');
  uint64_t tableOffset = out.size();
  out.append(reinterpret_cast<const char *>(table.data()),
             table.size() * sizeof(artifact::SectionEntry));

  artifact::FileHeader header{};
  std::memcpy(header.magic, artifact::kMagic, sizeof(header.magic));
  header.versionMajor = artifact::kVersionMajor;
  header.versionMinor = artifact::kVersionMinor;
  header.fileSize = out.size();
  header.sectionCount = table.size();
  header.sectionTableOffset = tableOffset;
  header.checksum = artifact::fnv1a64(out.data() + sizeof(header),
                                      out.size() - sizeof(header));
  std::memcpy(out.data(), &header, sizeof(header));
  return out;
}
