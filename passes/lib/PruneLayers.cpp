//===- PruneLayers.cpp - moe-prune-layers ---------------------------------===//
//
// Replaces the MoE layers a routing profile finds not specialising by a
// dense FFN; see the pass description in Passes.td.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/BitVector.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"

namespace moec {
#define GEN_PASS_DEF_PRUNELAYERSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec::moe;

namespace {

/// What the pass reads of one layer of a profile.
struct ProfiledLayer {
  double imageNmi = 0, tokenNmi = 0, gateMass = 1;
  int64_t experts = 0, mostUsed = 0;
  std::vector<double> load;
};

/// Reads the profile's layers; an error message names the file and what is
/// wrong.
FailureOr<llvm::StringMap<ProfiledLayer>> readProfile(StringRef path,
                                                      std::string &error) {
  auto buffer = llvm::MemoryBuffer::getFile(path);
  if (!buffer) {
    error = "cannot read the profile '" + path.str() +
            "': " + buffer.getError().message();
    return failure();
  }
  llvm::Expected<llvm::json::Value> parsed =
      llvm::json::parse((*buffer)->getBuffer());
  if (!parsed) {
    error = "the profile '" + path.str() +
            "' is not JSON: " + llvm::toString(parsed.takeError());
    return failure();
  }
  auto fail = [&](const Twine &what) {
    error = "the profile '" + path.str() + "': " + what.str();
    return failure();
  };
  const llvm::json::Object *root = parsed->getAsObject();
  if (!root || root->getString("format") != "moec-routing-profile")
    return fail("not a moec routing profile (format is not "
                "\"moec-routing-profile\"; moec-run analyze writes one)");
  if (root->getInteger("version") != 1)
    return fail("unsupported version (expected 1)");
  const llvm::json::Array *layers = root->getArray("layers");
  if (!layers)
    return fail("/layers is missing");
  llvm::StringMap<ProfiledLayer> out;
  for (auto [i, value] : llvm::enumerate(*layers)) {
    std::string at = "/layers/" + std::to_string(i);
    const llvm::json::Object *layer = value.getAsObject();
    if (!layer)
      return fail(at + " is not an object");
    std::optional<StringRef> name = layer->getString("name");
    std::optional<double> imageNmi = layer->getNumber("image_nmi"),
                          tokenNmi = layer->getNumber("token_nmi"),
                          gateMass = layer->getNumber("gate_mass_per_token");
    std::optional<int64_t> experts = layer->getInteger("experts"),
                           mostUsed = layer->getInteger("most_used_expert");
    const llvm::json::Array *load = layer->getArray("load");
    if (!name || !imageNmi || !tokenNmi || !gateMass || !experts ||
        !mostUsed || !load)
      return fail(at + ": needs name, image_nmi, token_nmi, "
                       "gate_mass_per_token, experts, most_used_expert and "
                       "load");
    ProfiledLayer p;
    p.imageNmi = *imageNmi;
    p.tokenNmi = *tokenNmi;
    p.gateMass = *gateMass;
    p.experts = *experts;
    p.mostUsed = *mostUsed;
    for (const llvm::json::Value &v : *load) {
      std::optional<double> share = v.getAsNumber();
      if (!share)
        return fail(at + "/load: not a number");
      p.load.push_back(*share);
    }
    if (p.experts < 1 || int64_t(p.load.size()) != p.experts ||
        p.mostUsed < 0 || p.mostUsed >= p.experts)
      return fail(at + ": load must have `experts` entries and "
                       "most_used_expert must be one of them");
    if (!out.try_emplace(*name, std::move(p)).second)
      return fail(at + ": layer '" + *name + "' is listed twice");
  }
  return out;
}

/// One MoE layer of a function, as the frontend emits it.
struct MoELayerOps {
  std::string name; ///< "blocks.3.moe"
  RouterOp router;
  DispatchOp dispatch;
  ExpertsOp experts;
  CombineOp combine;
  /// With routing groups: the view of the combined tokens back to images.
  ReshapeOp reshapeBack;
  /// With a shared expert: the add of the routed and shared outputs.
  AddOp add;
  SharedExpertOp shared;
};

std::optional<MoELayerOps> matchLayer(ExpertsOp experts) {
  MoELayerOps layer;
  layer.experts = experts;
  auto w1 = experts.getFc1Weight().getDefiningOp<ParamOp>();
  layer.dispatch = experts.getInput().getDefiningOp<DispatchOp>();
  if (!w1 || !layer.dispatch || !experts->hasOneUse())
    return std::nullopt;
  StringRef suffix = ".experts.fc1.weight";
  if (!w1.getName().ends_with(suffix))
    return std::nullopt;
  layer.name = w1.getName().drop_back(suffix.size()).str();
  layer.router = layer.dispatch.getDispatch().getDefiningOp<RouterOp>();
  layer.combine = dyn_cast<CombineOp>(*experts->getUsers().begin());
  if (!layer.router || !layer.combine ||
      layer.combine.getCombine() != layer.router.getCombine())
    return std::nullopt;
  Value y = layer.combine.getResult();
  if (y.hasOneUse())
    if (auto reshape = dyn_cast<ReshapeOp>(*y.getUsers().begin())) {
      layer.reshapeBack = reshape;
      y = reshape.getResult();
    }
  if (y.hasOneUse())
    if (auto add = dyn_cast<AddOp>(*y.getUsers().begin())) {
      Value other = add.getOperand(0) == y ? add.getOperand(1)
                                           : add.getOperand(0);
      if (auto shared = other.getDefiningOp<SharedExpertOp>()) {
        layer.add = add;
        layer.shared = shared;
      }
    }
  return layer;
}

/// Erases `op`'s results from the function's results.
void dropFromResults(func::FuncOp fn, Operation *op) {
  auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
  llvm::BitVector drop(ret.getNumOperands());
  for (OpOperand &use : ret->getOpOperands())
    if (use.get().getDefiningOp() == op)
      drop.set(use.getOperandNumber());
  if (drop.none())
    return;
  ret->eraseOperands(drop);
  (void)fn.eraseResults(drop);
}

struct PruneLayersPass
    : public moec::impl::PruneLayersPassBase<PruneLayersPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto fail = [&](const Twine &message) {
      module.emitError() << "moe-prune-layers: " << message;
      signalPassFailure();
    };
    if (criterion != "image-nmi" && criterion != "token-nmi")
      return fail("criterion must be image-nmi or token-nmi, got '" +
                  criterion + "'");
    if (replacement != "top" && replacement != "mean")
      return fail("replacement must be top or mean, got '" + replacement +
                  "'");
    if (profile.empty() && layers.empty())
      return fail("needs a profile (profile=PATH) or the layers to prune "
                  "(layers=NAME,...)");
    llvm::StringMap<ProfiledLayer> profiled;
    if (!profile.empty()) {
      std::string error;
      FailureOr<llvm::StringMap<ProfiledLayer>> read =
          readProfile(profile, error);
      if (failed(read))
        return fail(error);
      profiled = std::move(*read);
    }

    // A fused layer has no dispatch and experts of its own to rebuild.
    WalkResult fused = module.walk([&](RoutedFFNOp op) {
      op.emitError() << "moe-prune-layers: this MoE layer is already fused "
                        "(moe.routed_ffn); run the pass before "
                        "moe-fuse-routing";
      return WalkResult::interrupt();
    });
    if (fused.wasInterrupted())
      return signalPassFailure();

    // The module's MoE layers, per function.
    SmallVector<MoELayerOps> found;
    llvm::StringMap<int64_t> experts;
    WalkResult walked = module.walk([&](ExpertsOp op) {
      std::optional<MoELayerOps> layer = matchLayer(op);
      if (!layer) {
        op.emitError() << "moe-prune-layers: not a MoE layer as the frontend "
                          "builds it (router, dispatch, experts, combine); "
                          "run the pass before moe-fuse-routing";
        return WalkResult::interrupt();
      }
      experts[layer->name] = cast<RankedTensorType>(op.getFc1Weight().getType())
                                 .getDimSize(0);
      found.push_back(std::move(*layer));
      return WalkResult::advance();
    });
    if (walked.wasInterrupted())
      return signalPassFailure();

    // The profile must describe this model (checked in name order, so that
    // the first mismatch reported does not depend on hashing).
    if (!profile.empty()) {
      auto sortedKeys = [](const auto &map) {
        SmallVector<std::string> keys;
        for (const auto &entry : map)
          keys.push_back(entry.getKey().str());
        llvm::sort(keys);
        return keys;
      };
      for (const std::string &name : sortedKeys(experts)) {
        auto it = profiled.find(name);
        if (it == profiled.end())
          return fail("the profile has no layer '" + name +
                      "': it was made for another model");
        if (it->second.experts != experts[name])
          return fail("layer '" + name + "' has " + Twine(experts[name]) +
                      " experts, the profile " + Twine(it->second.experts));
      }
      for (const std::string &name : sortedKeys(profiled))
        if (!experts.count(name))
          return fail("the profile's layer '" + name +
                      "' is not a MoE layer of this model");
    }

    // Which layers go.
    llvm::StringSet<> prune;
    SmallVector<Attribute> record;
    Builder attrs(&getContext());
    if (!layers.empty()) {
      for (const std::string &name : layers) {
        if (!experts.count(name))
          return fail("layers: '" + name + "' is not a MoE layer of this "
                      "model");
        prune.insert(name);
      }
    } else {
      for (const auto &entry : profiled) {
        double value = criterion == "image-nmi" ? entry.getValue().imageNmi
                                                : entry.getValue().tokenNmi;
        if (value < threshold)
          prune.insert(entry.getKey());
      }
    }
    if (failed(checkSharedRouters(found, prune)))
      return signalPassFailure();

    llvm::StringMap<std::string> replacedBy;
    for (MoELayerOps &layer : found) {
      if (!prune.contains(layer.name))
        continue;
      const ProfiledLayer *p = nullptr;
      if (auto it = profiled.find(layer.name); it != profiled.end())
        p = &it->second;
      if (!layer.shared && !p)
        return fail("layer '" + layer.name + "' has no shared expert: its "
                    "replacement needs the profile's expert loads "
                    "(profile=PATH)");
      if (failed(pruneLayer(layer, p)))
        return signalPassFailure();
      replacedBy[layer.name] =
          layer.shared ? "shared" : replacement.getValue();
    }
    SmallVector<std::string> names;
    for (const auto &entry : replacedBy)
      names.push_back(entry.getKey().str());
    llvm::sort(names);
    for (const std::string &name : names) {
      SmallVector<NamedAttribute> fields{
          attrs.getNamedAttr("layer", attrs.getStringAttr(name)),
          attrs.getNamedAttr("replacement",
                             attrs.getStringAttr(replacedBy[name]))};
      if (auto it = profiled.find(name); it != profiled.end() &&
                                         layers.empty()) {
        fields.push_back(attrs.getNamedAttr(
            "criterion", attrs.getStringAttr(criterion.getValue())));
        fields.push_back(attrs.getNamedAttr(
            "value", attrs.getF64FloatAttr(criterion == "image-nmi"
                                               ? it->second.imageNmi
                                               : it->second.tokenNmi)));
        fields.push_back(attrs.getNamedAttr(
            "threshold", attrs.getF64FloatAttr(threshold)));
      }
      record.push_back(attrs.getDictionaryAttr(fields));
    }
    if (!record.empty()) {
      // Pruning twice keeps both records.
      if (ArrayAttr before =
              MoEDialect::PrunedLayersAttrHelper(&getContext())
                  .getAttr(module))
        record.insert(record.begin(), before.begin(), before.end());
      MoEDialect::PrunedLayersAttrHelper(&getContext())
          .setAttr(module, attrs.getArrayAttr(record));
    }
  }

  /// A model-scope router: later layers' routers read the first layer's
  /// router input and weight. Pruning some but not all of them would
  /// leave a kept layer deciding with a pruned layer's router.
  LogicalResult checkSharedRouters(MutableArrayRef<MoELayerOps> found,
                                   const llvm::StringSet<> &prune) {
    for (MoELayerOps &a : found)
      for (MoELayerOps &b : found)
        if (a.router->getParentOp() == b.router->getParentOp() &&
            a.router != b.router &&
            a.router.getWeight() == b.router.getWeight() &&
            prune.contains(a.name) && !prune.contains(b.name))
          return a.router.emitError()
                 << "moe-prune-layers: cannot prune '" << a.name
                 << "' alone: its router also decides for '" << b.name
                 << "' (router scope model); prune both or neither";
    return success();
  }

  /// A new parameter of the dense FFN, initialised as `like` is and
  /// carrying over `source` with `coefficients`.
  Value carriedParam(OpBuilder &b, ParamOp like, StringRef name,
                     ArrayRef<int64_t> shape, ArrayRef<double> coefficients) {
    auto type = RankedTensorType::get(
        shape, cast<RankedTensorType>(like.getType()).getElementType());
    auto param = ParamOp::create(b, like.getLoc(), type, name, like.getInit(),
                                 like.getStdAttr(), like.getValueAttr(),
                                 like.getNoDecay());
    MoEDialect::CarryOverAttrHelper(b.getContext())
        .setAttr(param, b.getDictionaryAttr(
                            {b.getNamedAttr("source", b.getStringAttr(
                                                          like.getName())),
                             b.getNamedAttr("coefficients",
                                            b.getDenseF64ArrayAttr(
                                                coefficients))}));
    return param;
  }

  LogicalResult pruneLayer(MoELayerOps &layer, const ProfiledLayer *p) {
    RouterOp router = layer.router;
    auto fn = router->getParentOfType<func::FuncOp>();
    if (!fn)
      return router.emitError() << "moe-prune-layers: the router is not in "
                                   "a function";
    // What reads the routing besides the layer: losses and statistics.
    SmallVector<Operation *> readers;
    for (Value v : router->getResults())
      for (Operation *user : v.getUsers()) {
        if (user == layer.dispatch || user == layer.combine ||
            llvm::is_contained(readers, user))
          continue;
        if (!isa<AuxLossOp, RoutingCountsOp, RoutingStatsOp>(user))
          return user->emitError()
                 << "moe-prune-layers: cannot prune '" << layer.name
                 << "': its routing is read by this op";
        readers.push_back(user);
      }

    // The replacement.
    if (layer.shared) {
      layer.add.getResult().replaceAllUsesWith(layer.shared.getResult());
      layer.add->erase();
      if (layer.reshapeBack)
        layer.reshapeBack->erase();
    } else {
      OpBuilder b(layer.combine);
      ExpertsOp ex = layer.experts;
      const int64_t e = p->experts;
      std::vector<double> mix(size_t(e), 0.0);
      if (replacement == "top") {
        mix[size_t(p->mostUsed)] = 1.0;
      } else {
        double total = 0;
        for (double v : p->load)
          total += v;
        for (int64_t i = 0; i < e; ++i)
          mix[size_t(i)] = total > 0 ? p->load[size_t(i)] / total : 1.0 / e;
      }
      std::vector<double> scaled(mix);
      for (double &v : scaled)
        v *= p->gateMass;
      auto shape = [](Value v) {
        return cast<RankedTensorType>(v.getType()).getShape().drop_front();
      };
      auto like = [](Value v) { return v.getDefiningOp<ParamOp>(); };
      ParamOp w1 = like(ex.getFc1Weight()), b1 = like(ex.getFc1Bias()),
              w2 = like(ex.getFc2Weight()), b2 = like(ex.getFc2Bias());
      if (!w1 || !b1 || !w2 || !b2)
        return ex.emitError() << "moe-prune-layers: the experts' weights "
                                 "are not parameters";
      const std::string dense = layer.name + ".dense.";
      Value nw1 = carriedParam(b, w1, dense + "fc1.weight",
                               shape(ex.getFc1Weight()), mix);
      Value nb1 = carriedParam(b, b1, dense + "fc1.bias",
                               shape(ex.getFc1Bias()), mix);
      Value nw2 = carriedParam(b, w2, dense + "fc2.weight",
                               shape(ex.getFc2Weight()), scaled);
      Value nb2 = carriedParam(b, b2, dense + "fc2.bias",
                               shape(ex.getFc2Bias()), scaled);
      Value tokens = layer.dispatch.getInput();
      auto ffn = SharedExpertOp::create(b, ex.getLoc(), tokens.getType(),
                                        ex.getActivation(), tokens, nw1, nb1,
                                        nw2, nb2);
      layer.combine.getResult().replaceAllUsesWith(ffn.getResult());
    }

    // Losses and statistics of the routing go with it.
    for (Operation *reader : readers) {
      if (auto aux = dyn_cast<AuxLossOp>(reader)) {
        for (Operation *user :
             llvm::make_early_inc_range(aux.getLoss().getUsers())) {
          auto sum = dyn_cast<SumLossesOp>(user);
          if (!sum)
            return user->emitError() << "moe-prune-layers: an auxiliary "
                                        "loss of '"
                                     << layer.name
                                     << "' is read by this op (expected "
                                        "moe.sum_losses)";
          SmallVector<Value> terms;
          for (Value t : sum.getTerms())
            if (t != aux.getLoss())
              terms.push_back(t);
          sum->setOperands(terms);
        }
      } else {
        dropFromResults(fn, reader);
      }
      reader->dropAllUses();
      reader->erase();
    }
    // The routed path, then whatever only it used (parameters, the cosine
    // gate's normalisation, the reshape into routing groups).
    Value noise = router.getNoise();
    SmallVector<Operation *> dead{layer.combine, layer.experts, layer.dispatch,
                                  router};
    SmallVector<Operation *> worklist;
    llvm::DenseSet<Operation *> erased(dead.begin(), dead.end());
    for (Operation *op : dead) {
      for (Value v : op->getOperands())
        if (Operation *def = v.getDefiningOp())
          worklist.push_back(def);
      op->dropAllUses();
      op->erase();
    }
    while (!worklist.empty()) {
      Operation *op = worklist.pop_back_val();
      if (erased.contains(op) || !isOpTriviallyDead(op))
        continue;
      for (Value v : op->getOperands())
        if (Operation *def = v.getDefiningOp())
          worklist.push_back(def);
      erased.insert(op);
      op->erase();
    }
    if (auto arg = dyn_cast_or_null<BlockArgument>(noise);
        arg && arg.use_empty())
      (void)fn.eraseArgument(arg.getArgNumber());
    return success();
  }
};

} // namespace
