//===- ArtifactWriter.cpp - write a .moec artifact ------------------------===//

#include "moec/Passes/ArtifactWriter.h"

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Runtime/ArtifactFormat.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "llvm/ADT/StringSet.h"

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

FailureOr<std::string> moec::buildArtifact(ModuleOp plan, StringRef entry,
                                           const ArtifactModelInfo &info,
                                           StringRef kernelLibrary) {
  auto fn = plan.lookupSymbol<func::FuncOp>(entry);
  if (!fn || !fn->hasAttr("moe.arena_bytes"))
    return plan.emitError() << "no memory-planned entry '" << entry << "'";

  // Where every tensor of the plan lives.
  DenseMap<Value, json> where;
  for (BlockArgument arg : fn.getArguments()) {
    auto off = fn.getArgAttrOfType<IntegerAttr>(arg.getArgNumber(),
                                                "moe.arena_offset");
    where[arg] = json{{"space", "arena"}, {"offset", off.getInt()}};
  }
  json params = json::array();
  llvm::StringSet<> seenParams;
  for (auto p : fn.getOps<moe::ParamOp>()) {
    int64_t off = intAttr(p, "moe.param_offset");
    where[p.getResult()] = json{{"space", "param"}, {"offset", off}};
    if (!seenParams.insert(p.getName()).second)
      continue;
    json entryJson{{"name", p.getName().str()},
                   {"shape", shapeOf(p.getType())},
                   {"dtype", "f32"},
                   {"offset", off},
                   {"init", moe::stringifyInitKind(p.getInit()).str()}};
    if (auto std = p.getStd())
      entryJson["std"] = std->convertToDouble();
    params.push_back(std::move(entryJson));
  }

  json dispatches = json::array();
  for (auto call : fn.getOps<func::CallOp>()) {
    unsigned numDests = call.getNumResults();
    unsigned numArgs = call.getNumOperands() - 2; // drop begin, end
    for (unsigned r = 0; r < numDests; ++r) {
      Value dest = call.getOperand(numArgs - numDests + r);
      auto empty = dest.getDefiningOp<tensor::EmptyOp>();
      if (!empty || !empty->hasAttr("moe.arena_offset"))
        return call.emitOpError() << "destination #" << r
                                  << " has no arena offset";
      json loc{{"space", "arena"},
               {"offset", intAttr(empty, "moe.arena_offset")}};
      where[dest] = loc;
      where[call.getResult(r)] = loc;
    }
    json args = json::array();
    for (unsigned i = 0; i < numArgs; ++i) {
      auto it = where.find(call.getOperand(i));
      if (it == where.end())
        return call.emitOpError() << "operand #" << i
                                  << " is not a planned buffer";
      args.push_back(it->second);
    }
    auto str = [&](StringRef name) {
      auto a = call->getAttrOfType<StringAttr>(name);
      return a ? a.str() : std::string();
    };
    dispatches.push_back(json{{"kernel", call.getCallee().str()},
                              {"op", str("moe.op")},
                              {"name", str("moe.name")},
                              {"parallel", str("moe.parallel")},
                              {"tiles", intAttr(call, "moe.tiles")},
                              {"args", std::move(args)}});
  }

  auto images = cast<RankedTensorType>(fn.getArgumentTypes()[0]);
  int64_t batch = images.getDimSize(0);
  json inputs = json::array(), outputs = json::array();
  for (BlockArgument arg : fn.getArguments()) {
    auto name = fn.getArgAttrOfType<StringAttr>(arg.getArgNumber(), "moe.name");
    inputs.push_back(json{{"name", name ? name.str() : "input"},
                          {"shape", shapeOf(arg.getType())},
                          {"dtype", "f32"},
                          {"offset", where[arg]["offset"]}});
  }
  for (auto [i, t] : llvm::enumerate(fn.getResultTypes())) {
    auto off = fn.getResultAttrOfType<IntegerAttr>(i, "moe.arena_offset");
    outputs.push_back(json{{"name", i == 0 ? "logits" : "output"},
                           {"shape", shapeOf(t)},
                           {"dtype", "f32"},
                           {"offset", off ? off.getInt() : -1}});
  }
  int64_t flops = intAttr(fn, "moe.flops");

  json spec = json::parse(info.specJson, nullptr, /*allow_exceptions=*/false);
  json manifest{
      {"model", info.model},
      {"target", info.target},
      {"compiler", "moec 0.1.0"},
      {"target_cpu",
       {{"name", info.targetCpu}, {"features", info.targetFeatures}}},
      {"batch", batch},
      {"input",
       {{"channels", info.channels}, {"height", info.height}, {"width", info.width}}},
      {"classes", info.classes},
      {"dataset", {{"kind", info.datasetKind}, {"path", info.datasetPath}}},
      {"param_bytes", intAttr(fn, "moe.param_bytes")},
      {"param_count", intAttr(fn, "moe.params")},
      {"active_params_per_image", intAttr(fn, "moe.active_params")},
      {"arena_bytes", intAttr(fn, "moe.arena_bytes")},
      {"params", std::move(params)},
      {"entries",
       {{entry.str(),
         {{"inputs", std::move(inputs)},
          {"outputs", std::move(outputs)},
          {"flops", flops},
          {"flops_per_image", batch > 0 ? flops / batch : 0}}}}},
      {"spec", spec.is_discarded() ? json::object() : spec}};
  json planJson{{"entries", {{entry.str(), std::move(dispatches)}}}};

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
