//===- SpecToMoE.cpp - build a moe module from a spec ---------------------===//
//
// Emits a pre-norm ViT: patch embedding, optional class token, position
// embedding, `depth` blocks of (LN -> attention -> residual, LN -> MLP or MoE
// -> residual), a final LN, pooling and the classifier head. Result types
// come from the dialect's shape rules, so the builder and the verifiers
// cannot disagree.
//
//===----------------------------------------------------------------------===//

#include "moec/Frontend/SpecToMoE.h"

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/ShapeRules.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"

#include <cmath>
#include <functional>
#include <string>

using namespace mlir;
using namespace moec;
using namespace moec::moe;

namespace {

moe::Activation toActivation(spec::Activation a) {
  switch (a) {
  case spec::Activation::Gelu:
    return moe::Activation::Gelu;
  case spec::Activation::GeluTanh:
    return moe::Activation::GeluTanh;
  case spec::Activation::Relu:
    return moe::Activation::Relu;
  case spec::Activation::Silu:
    return moe::Activation::Silu;
  }
  llvm_unreachable("unknown activation");
}

RouterKind toRouterKind(spec::RouterKind k) {
  switch (k) {
  case spec::RouterKind::TokenChoice:
    return RouterKind::TokenChoice;
  case spec::RouterKind::ExpertChoice:
    return RouterKind::ExpertChoice;
  case spec::RouterKind::Soft:
    return RouterKind::Soft;
  case spec::RouterKind::PerImage:
    return RouterKind::PerImage;
  case spec::RouterKind::Sinkhorn:
    return RouterKind::Sinkhorn;
  case spec::RouterKind::SinkhornExpertChoice:
    return RouterKind::SinkhornExpertChoice;
  }
  llvm_unreachable("unknown router kind");
}

/// Whether an entry function runs in training or evaluation mode.
enum class Mode { Infer, Train };

/// Emits one entry function's body. Shapes come from ShapeRules; a failure
/// there means the spec validator let an inconsistent spec through, which
/// the module verifier then reports.
class ModelEmitter {
public:
  ModelEmitter(OpBuilder &b, const spec::Spec &spec, Mode mode)
      : b(b), spec(spec), model(spec.model), mode(mode), f32(b.getF32Type()) {}

  /// Emits the ops from images to logits and returns the logits.
  Value emitLogits(Value images) {
    int64_t d = model.width;
    Location embedLoc = loc("patch_embed", "/model/patch_size");
    int64_t p = model.patchSize;
    Value wPatch = param("patch_embed.proj.weight",
                         {model.input.channels * p * p, d}, embedLoc);
    Value bPatch = zeros("patch_embed.proj.bias", {d}, embedLoc);
    Value x = create<PatchEmbedOp>(
        embedLoc,
        infer(embedLoc, [&](EmitErrorFn e) {
          return inferPatchEmbedShape(e, shape(images), shape(wPatch),
                                      shape(bPatch), p);
        }),
        images, wPatch, bPatch, b.getI64IntegerAttr(p));

    if (model.pooling == spec::Pooling::Cls) {
      Location clsLoc = loc("cls_token", "/model/pooling");
      Value cls = ParamOp::create(b, clsLoc, tensor({d}), "cls_token",
                                  InitKind::Normal, b.getF64FloatAttr(1e-6),
                                  FloatAttr(), /*no_decay=*/true);
      x = create<ClassTokenOp>(clsLoc, infer(clsLoc, [&](EmitErrorFn e) {
                                 return inferClassTokenShape(e, shape(x),
                                                             shape(cls));
                               }),
                               x, cls);
    }
    Location posLoc = loc("pos_embed", "/model/input");
    Value pos = param("pos_embed", {model.numTokens(), d}, posLoc,
                      /*decay=*/false);
    x = create<PosEmbedOp>(posLoc, tensorLike(x), x, pos);

    for (int64_t i = 0; i < model.depth; ++i)
      x = emitBlock(i, x);

    Location headLoc = loc("norm", "/model/layer_norm_eps");
    x = layerNorm("norm", x, headLoc);
    Location poolLoc = loc("pool", "/model/pooling");
    auto poolKind = model.pooling == spec::Pooling::Cls ? PoolKind::Cls
                                                        : PoolKind::Mean;
    Value pooled = create<PoolOp>(
        poolLoc,
        infer(poolLoc, [&](EmitErrorFn e) { return inferPoolShape(e, shape(x)); }),
        poolKind, x);
    Location clsHeadLoc = loc("head", "/model/classes");
    Value wHead = param("head.weight", {d, model.classes}, clsHeadLoc);
    Value bHead = zeros("head.bias", {model.classes}, clsHeadLoc);
    return create<ClassifierHeadOp>(
        clsHeadLoc, infer(clsHeadLoc, [&](EmitErrorFn e) {
          return inferClassifierHeadShape(e, shape(pooled), shape(wHead),
                                          shape(bHead));
        }),
        pooled, wHead, bHead);
  }

private:
  Value emitBlock(int64_t i, Value x) {
    std::string prefix = "blocks." + std::to_string(i);
    int64_t d = model.width;

    Location attnLoc = loc(prefix + ".attn", "/model/heads");
    Value h = layerNorm(prefix + ".norm1", x, attnLoc);
    Value wqkv = param(prefix + ".attn.qkv.weight", {d, 3 * d}, attnLoc);
    Value bqkv = zeros(prefix + ".attn.qkv.bias", {3 * d}, attnLoc);
    Value wo = param(prefix + ".attn.proj.weight", {d, d}, attnLoc);
    Value bo = zeros(prefix + ".attn.proj.bias", {d}, attnLoc);
    Value attn = create<AttentionOp>(attnLoc, tensorLike(h), h, wqkv, bqkv, wo,
                                     bo, b.getI64IntegerAttr(model.heads));
    x = create<AddOp>(attnLoc, tensorLike(x), x, attn);

    bool isMoE = spec.moe.enabled && spec.moe.isMoEBlock(i);
    Location ffnLoc = isMoE ? loc(prefix + ".moe", "/moe/placement")
                            : loc(prefix + ".mlp", "/model/mlp_ratio");
    h = layerNorm(prefix + ".norm2", x, ffnLoc);
    Value y = isMoE ? emitMoE(prefix + ".moe", spec.moe.layer(i), h)
                    : emitMlp(prefix, h);
    return create<AddOp>(ffnLoc, tensorLike(x), x, y);
  }

  Value emitMlp(const std::string &prefix, Value h) {
    Location l = loc(prefix + ".mlp", "/model/mlp_ratio");
    int64_t d = model.width, hidden = model.mlpHidden;
    Value w1 = param(prefix + ".mlp.fc1.weight", {d, hidden}, l);
    Value b1 = zeros(prefix + ".mlp.fc1.bias", {hidden}, l);
    Value w2 = param(prefix + ".mlp.fc2.weight", {hidden, d}, l);
    Value b2 = zeros(prefix + ".mlp.fc2.bias", {d}, l);
    Value u = dense(h, w1, b1, l);
    u = create<ActivationOp>(l, tensorLike(u), toActivation(model.activation),
                             u);
    return dense(u, w2, b2, l);
  }

  /// The pointer of a layer's setting `key`: in the layer's /moe/layers
  /// entry if it gives one, else in /moe.
  std::string settingPointer(const spec::MoELayerSpec &layer,
                             const std::string &key) {
    std::string own = layer.pointer + "/" + key;
    if (!layer.pointer.empty() && spec.positions.count(own))
      return own;
    return "/moe/" + key;
  }

  Value emitMoE(const std::string &prefix, const spec::MoELayerSpec &layer,
                Value tokens) {
    const spec::MoELayerSettings &moe = layer.settings;
    int64_t d = model.width, e = moe.experts, hidden = moe.expertHidden;

    // Routing groups of n images: the router, its dispatch and its combine
    // see [B/n, n*T, D], one group per row (a view of the same buffer).
    Value h = tokens;
    int64_t n = moe.router.groupSize;
    if (n > 1) {
      ArrayRef<int64_t> ts = shape(tokens);
      h = create<ReshapeOp>(loc(prefix + ".groups",
                                settingPointer(layer, "router")),
                            tensor({ts[0] / n, n * ts[1], ts[2]}), tokens);
    }

    Location routerLoc =
        loc(prefix + ".router", settingPointer(layer, "router"));
    RouterConfig config;
    config.kind = toRouterKind(moe.router.kind);
    if (moe.topK > 0)
      config.k = moe.topK;
    bool usesCapacity = config.kind == RouterKind::TokenChoice ||
                        config.kind == RouterKind::ExpertChoice ||
                        config.kind == RouterKind::Sinkhorn ||
                        config.kind == RouterKind::SinkhornExpertChoice;
    if (usesCapacity)
      config.capacityFactor = mode == Mode::Train ? moe.capacityFactorTrain
                                                  : moe.capacityFactorEval;
    // Router noise is a training feature (the router's noise operand); the
    // spec parser accepts noise_std for every kind but soft.
    if (mode == Mode::Train && moe.router.noiseStd > 0.0 &&
        config.kind != RouterKind::Soft)
      config.noiseStd = moe.router.noiseStd;
    if (config.kind == RouterKind::Sinkhorn ||
        config.kind == RouterKind::SinkhornExpertChoice)
      config.sinkhornIters = moe.router.sinkhornIters;
    config.batchPrioritized = moe.router.batchPrioritized;
    config.classToken = moe.router.classToken;
    if (config.kind == RouterKind::Soft)
      config.slotsPerExpert = moe.router.slotsPerExpert;
    int64_t slots = config.slotsPerExpert.value_or(1);

    // The model's one router ("scope": "model"): every layer after the
    // first decides from the first layer's tokens, weight and noise, so
    // its decisions are the first layer's (its fused layer recomputes them
    // from that gate input).
    MoELayer *first = nullptr;
    if (moe.router.modelScope && !layers.empty())
      first = &layers.front();
    auto [routerIn, wRouter] =
        first ? std::pair(first->router.getInput(), first->router.getWeight())
        : moe.router.cosine
            ? cosineGate(prefix, moe.router, h, e * slots, routerLoc)
            : std::pair(h, param(prefix + ".router.weight", {d, e * slots},
                                 routerLoc));
    FailureOr<RouterShapes> shapes = inferRouterShapes(
        [&] { return emitError(routerLoc); }, shape(routerIn), shape(wRouter),
        config, e);
    if (failed(shapes))
      llvm::report_fatal_error("spec validation accepted an invalid router");
    auto optI64 = [&](std::optional<int64_t> v) {
      return v ? b.getI64IntegerAttr(*v) : IntegerAttr();
    };
    auto optF64 = [&](std::optional<double> v) {
      return v ? b.getF64FloatAttr(*v) : FloatAttr();
    };
    // Noisy top-k in training: standard normal samples are an input the
    // runtime fills from its seeded generator before every step.
    Value noise;
    if (first)
      noise = first->noise;
    else if (config.noiseStd && newInput)
      noise = newInput("noise." + prefix, tensor(shapes->logits));
    auto router = RouterOp::create(
        b, routerLoc, tensor(shapes->dispatch), tensor(shapes->combine),
        tensor(shapes->logits), config.kind, routerIn, wRouter, noise,
        optI64(config.k), optF64(config.capacityFactor),
        optF64(config.noiseStd), optI64(config.sinkhornIters),
        optI64(config.slotsPerExpert), config.batchPrioritized,
        config.classToken);
    layers.push_back({prefix, router, noise, /*sharesRouter=*/first != nullptr});

    Location expertsLoc =
        loc(prefix + ".experts", settingPointer(layer, "experts"));
    Value xs = create<DispatchOp>(
        expertsLoc, infer(expertsLoc, [&](EmitErrorFn err) {
          return inferDispatchShape(err, shape(h), shape(router.getDispatch()));
        }),
        h, router.getDispatch());
    Value w1 = param(prefix + ".experts.fc1.weight", {e, d, hidden}, expertsLoc);
    Value b1 = zeros(prefix + ".experts.fc1.bias", {e, hidden}, expertsLoc);
    Value w2 = param(prefix + ".experts.fc2.weight", {e, hidden, d}, expertsLoc);
    Value b2 = zeros(prefix + ".experts.fc2.bias", {e, d}, expertsLoc);
    Value ys = create<ExpertsOp>(expertsLoc, tensorLike(xs),
                                 toActivation(model.activation), xs, w1, b1, w2,
                                 b2);
    Value y = create<CombineOp>(expertsLoc, tensorLike(h), ys,
                                router.getCombine());
    if (n > 1)
      y = create<ReshapeOp>(y.getLoc(), tensorLike(tokens), y);

    if (moe.sharedExpert) {
      Location sharedLoc =
          loc(prefix + ".shared", settingPointer(layer, "shared_expert"));
      Value sw1 = param(prefix + ".shared.fc1.weight", {d, hidden}, sharedLoc);
      Value sb1 = zeros(prefix + ".shared.fc1.bias", {hidden}, sharedLoc);
      Value sw2 = param(prefix + ".shared.fc2.weight", {hidden, d}, sharedLoc);
      Value sb2 = zeros(prefix + ".shared.fc2.bias", {d}, sharedLoc);
      Value s = create<SharedExpertOp>(sharedLoc, tensorLike(tokens),
                                       toActivation(model.activation), tokens,
                                       sw1, sb1, sw2, sb2);
      y = create<AddOp>(sharedLoc, tensorLike(y), y, s);
    }
    return y;
  }

  /// A cosine gate's router input and weight: the tokens (projected to
  /// gate_dim when set) normalised, and the `columns` expert codes
  /// normalised, times the learned scale; the router's logits x * W are
  /// then scale * cos(token, code).
  std::pair<Value, Value> cosineGate(const std::string &prefix,
                                     const spec::RouterSpec &router, Value h,
                                     int64_t columns, Location l) {
    constexpr double kEps = 1e-6;
    Value tokens = h;
    int64_t dim = model.width;
    if (router.gateDim > 0) {
      Value proj = param(prefix + ".router.projection", {dim, router.gateDim},
                         l);
      tokens = dense(h, proj, Value(), l);
      dim = router.gateDim;
    }
    auto normalize = [&](Value x, Value scale, int64_t along) {
      return create<L2NormalizeOp>(l, tensorLike(x), x, scale,
                                   b.getI64IntegerAttr(along),
                                   b.getF64FloatAttr(kEps));
    };
    // Codes of norm about 1 (std 1/sqrt(dim), LeCun's), so that the
    // optimizer turns them at the rate it moves other weights.
    Value codes = ParamOp::create(b, l, tensor({dim, columns}),
                                  prefix + ".router.weight",
                                  InitKind::TruncNormal,
                                  b.getF64FloatAttr(1.0 / std::sqrt(dim)),
                                  FloatAttr(), /*no_decay=*/false);
    Value scale = ParamOp::create(b, l, tensor({1}), prefix + ".router.scale",
                                  InitKind::Constant, FloatAttr(),
                                  b.getF64FloatAttr(router.gateScale),
                                  /*no_decay=*/true);
    return {normalize(tokens, Value(), 2), normalize(codes, scale, 0)};
  }

  Value layerNorm(const std::string &name, Value x, Location l) {
    int64_t d = model.width;
    Value g = ParamOp::create(b, l, tensor({d}), name + ".weight",
                              InitKind::Ones, FloatAttr(), FloatAttr(),
                              /*no_decay=*/true);
    Value beta = zeros(name + ".bias", {d}, l);
    return create<LayerNormOp>(l, tensorLike(x), x, g, beta,
                               b.getF64FloatAttr(model.layerNormEps));
  }

  Value dense(Value x, Value w, Value bias, Location l) {
    return create<DenseOp>(l, infer(l, [&](EmitErrorFn e) {
                             return inferDenseShape(
                                 e, shape(x), shape(w),
                                 bias ? std::optional(shape(bias))
                                      : std::nullopt);
                           }),
                           x, w, bias);
  }

  /// A weight: truncated normal, weight decay unless `decay` is false.
  /// (Weight decay applies to weight matrices only, timm's rule: not to
  /// biases, norm weights, the class token or the position embedding.)
  Value param(const std::string &name, ArrayRef<int64_t> s, Location l,
              bool decay = true) {
    return ParamOp::create(b, l, tensor(s), name, InitKind::TruncNormal,
                           b.getF64FloatAttr(0.02), FloatAttr(),
                           /*no_decay=*/!decay);
  }
  /// A bias: zeros, no weight decay.
  Value zeros(const std::string &name, ArrayRef<int64_t> s, Location l) {
    return ParamOp::create(b, l, tensor(s), name, InitKind::Zeros, FloatAttr(),
                           FloatAttr(), /*no_decay=*/true);
  }

  template <typename OpTy, typename... Args>
  Value create(Location l, Type resultType, Args &&...args) {
    return OpTy::create(b, l, resultType, std::forward<Args>(args)...);
  }

  /// Runs a shape rule. The spec validator guarantees consistent shapes, so
  /// a failure is an internal error: its diagnostic lands at `l`.
  template <typename Fn> Type infer(Location l, Fn &&rule) {
    FailureOr<Shape> s = rule([&] { return emitError(l); });
    if (failed(s))
      llvm::report_fatal_error("spec validation accepted inconsistent shapes");
    return tensor(*s);
  }

  static ArrayRef<int64_t> shape(Value v) {
    return cast<RankedTensorType>(v.getType()).getShape();
  }
  RankedTensorType tensor(ArrayRef<int64_t> s) {
    return RankedTensorType::get(s, f32);
  }
  static Type tensorLike(Value v) { return v.getType(); }

  /// A location naming the op's role ("blocks.3.moe.router") inside the
  /// position of `pointer`'s value in the spec file.
  Location loc(const std::string &role, const std::string &pointer) {
    spec::SourcePos pos = spec.positionOf(pointer);
    Location file = FileLineColLoc::get(b.getStringAttr(spec.sourceName),
                                        pos.line, pos.column);
    return NameLoc::get(b.getStringAttr(role), file);
  }

  OpBuilder &b;
  const spec::Spec &spec;
  const spec::ModelSpec &model;
  Mode mode;
  Type f32;

public:
  /// One MoE layer as emitted: its router and, in training, its noise.
  struct MoELayer {
    std::string prefix;
    RouterOp router;
    Value noise;
    /// Decides with the model's router (the first layer's): its logits
    /// are the first layer's, so it adds no auxiliary losses.
    bool sharesRouter = false;
  };
  std::vector<MoELayer> layers;
  /// Adds an input (function argument) named `name`; set by the caller.
  std::function<Value(const std::string &, RankedTensorType)> newInput;
};

} // namespace

OwningOpRef<ModuleOp> moec::buildMoEModule(MLIRContext &context,
                                           const spec::Spec &spec,
                                           const SpecToMoEOptions &options) {
  context.loadDialect<MoEDialect, func::FuncDialect>();
  OpBuilder b(&context);
  spec::SourcePos rootPos = spec.positionOf("");
  Location rootLoc = NameLoc::get(
      b.getStringAttr(spec.name),
      FileLineColLoc::get(b.getStringAttr(spec.sourceName), rootPos.line,
                          rootPos.column));
  OwningOpRef<ModuleOp> module = ModuleOp::create(rootLoc, spec.name);
  int64_t batch = options.batch > 0 ? options.batch : spec.train.batch;
  const spec::ModelSpec &m = spec.model;
  auto f32 = b.getF32Type();
  auto imagesType = RankedTensorType::get(
      {batch, m.input.channels, m.input.height, m.input.width}, f32);
  auto logitsType = RankedTensorType::get({batch, m.classes}, f32);
  auto labelsType = RankedTensorType::get({batch}, b.getI32Type());
  auto lossType = RankedTensorType::get({}, f32);

  b.setInsertionPointToEnd(module->getBody());
  // @infer: evaluation capacity, no router noise.
  {
    auto fn = func::FuncOp::create(b, rootLoc, "infer",
                                   b.getFunctionType({imagesType}, {logitsType}));
    fn.setArgAttr(0, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("images"));
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(fn.addEntryBlock());
    ModelEmitter emitter(b, spec, Mode::Infer);
    Value logits = emitter.emitLogits(fn.getArgument(0));
    func::ReturnOp::create(b, rootLoc, logits);
  }
  // @train_forward: training capacity and noise, plus the losses:
  // (loss, ce_loss, aux_loss, correct, logits).
  {
    auto fn = func::FuncOp::create(
        b, rootLoc, "train_forward",
        b.getFunctionType({imagesType, labelsType},
                          {lossType, lossType, lossType, lossType, logitsType}));
    fn.setArgAttr(0, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("images"));
    fn.setArgAttr(1, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("labels"));
    OpBuilder::InsertionGuard guard(b);
    Block *body = fn.addEntryBlock();
    b.setInsertionPointToStart(body);
    ModelEmitter emitter(b, spec, Mode::Train);
    emitter.newInput = [&](const std::string &name, RankedTensorType type) {
      unsigned idx = fn.getNumArguments();
      if (failed(fn.insertArgument(idx, type, {}, rootLoc)))
        llvm::report_fatal_error("cannot add an input");
      fn.setArgAttr(idx, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                    b.getStringAttr(name));
      fn.setArgAttr(idx, moec::moe::MoEDialect::RoleAttrHelper::getNameStr(),
                    b.getStringAttr("normal_noise"));
      return fn.getArgument(idx);
    };
    Value logits = emitter.emitLogits(fn.getArgument(0));
    Value labels = fn.getArgument(1);
    spec::SourcePos lsPos = spec.positionOf("/train/label_smoothing");
    Location lossLoc = NameLoc::get(
        b.getStringAttr("loss"),
        FileLineColLoc::get(b.getStringAttr(spec.sourceName), lsPos.line,
                            lsPos.column));
    Value ce = SoftmaxCrossEntropyOp::create(
        b, lossLoc, lossType, logits, labels,
        b.getF64FloatAttr(spec.train.labelSmoothing));

    // Router auxiliary losses, per MoE layer, weighted as the spec says.
    const spec::AuxLossWeights &aux = spec.moe.aux;
    spec::SourcePos auxPos = spec.positionOf("/moe/aux_loss");
    SmallVector<Value> auxTerms;
    for (auto &layer : emitter.layers) {
      if (layer.sharesRouter)
        continue;
      RouterOp r = layer.router;
      auto add = [&](AuxLossKind kind, double weight, bool withNoise,
                     bool withLabels) {
        if (weight <= 0)
          return;
        Location l = NameLoc::get(
            b.getStringAttr(layer.prefix + ".aux_loss." +
                            stringifyAuxLossKind(kind).str()),
            FileLineColLoc::get(b.getStringAttr(spec.sourceName), auxPos.line,
                                auxPos.column));
        Value noise = withNoise ? layer.noise : Value();
        auto op = AuxLossOp::create(
            b, l, lossType, AuxLossKindAttr::get(b.getContext(), kind),
            r.getLogits(), noise,
            withLabels ? labels : Value(), b.getF64FloatAttr(weight),
            noise ? r.getNoiseStdAttr() : FloatAttr(),
            kind == AuxLossKind::Load ? r.getKAttr() : IntegerAttr(),
            withLabels ? b.getDenseI64ArrayAttr(spec.moe.superClassMap)
                       : DenseI64ArrayAttr());
        auxTerms.push_back(op.getLoss());
      };
      add(AuxLossKind::Importance, aux.importance, false, false);
      if (layer.noise && r.getKind() == RouterKind::TokenChoice)
        add(AuxLossKind::Load, aux.load, true, false);
      add(AuxLossKind::Balance, aux.balance, !!layer.noise, false);
      add(AuxLossKind::ZLoss, aux.zLoss, false, false);
      if (!spec.moe.superClassMap.empty())
        add(AuxLossKind::SuperClass, aux.superClass, false, true);
    }
    Value auxTotal = SumLossesOp::create(b, lossLoc, lossType, auxTerms);
    Value loss =
        SumLossesOp::create(b, lossLoc, lossType, ValueRange{ce, auxTotal});
    auto metrics = ClassificationMetricsOp::create(
        b, lossLoc, TypeRange{lossType, lossType}, logits, labels, Value());
    func::ReturnOp::create(
        b, rootLoc,
        ValueRange{loss, ce, auxTotal, metrics.getCorrect(), logits});
    // The optimizer moe-autodiff builds into train_step.
    const spec::OptimizerSpec &opt = spec.train.optimizer;
    const spec::ScheduleSpec &sched = spec.train.schedule;
    auto f64 = [&](double v) { return b.getF64FloatAttr(v); };
    auto optimizer = moe::OptimizerAttr::get(
        b.getContext(),
        opt.kind == spec::OptimizerKind::Sgd ? moe::OptimizerKind::Sgd
                                             : moe::OptimizerKind::AdamW,
        f64(opt.lr), f64(opt.weightDecay), f64(opt.beta1), f64(opt.beta2),
        f64(opt.eps), f64(opt.momentum), f64(opt.gradClip),
        sched.kind == spec::ScheduleKind::Constant ? moe::ScheduleKind::Constant
                                                   : moe::ScheduleKind::Cosine,
        f64(sched.minLrRatio));
    moe::MoEDialect::OptimizerAttrHelper(b.getContext()).setAttr(fn, optimizer);
    const char *names[] = {"loss", "ce_loss", "aux_loss", "correct", "logits"};
    for (unsigned i = 0; i < 5; ++i)
      fn.setResultAttr(i, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                       b.getStringAttr(names[i]));
  }
  // @eval: evaluation capacity, no noise; sums over the masked images.
  // @analyze: the same model and metrics, with each MoE layer's per-image
  // routing statistics (moe.routing_stats) instead of its summed counts.
  auto emitEvaluation = [&](StringRef name, bool perImage) {
    auto maskType = RankedTensorType::get({batch}, f32);
    auto fn = func::FuncOp::create(
        b, rootLoc, name,
        b.getFunctionType({imagesType, labelsType, maskType}, {}));
    fn.setArgAttr(0, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("images"));
    fn.setArgAttr(1, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("labels"));
    fn.setArgAttr(2, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr("mask"));
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(fn.addEntryBlock());
    ModelEmitter emitter(b, spec, Mode::Infer);
    Value logits = emitter.emitLogits(fn.getArgument(0));
    auto metrics = ClassificationMetricsOp::create(
        b, rootLoc, TypeRange{lossType, lossType}, logits, fn.getArgument(1),
        fn.getArgument(2));
    SmallVector<Value> results{metrics.getLossSum(), metrics.getCorrect()};
    SmallVector<std::pair<std::string, StringRef>> names{{"loss_sum", ""},
                                                         {"correct", ""}};
    for (auto &layer : emitter.layers) {
      RouterOp r = layer.router;
      int64_t e = r.getNumExperts();
      if (!perImage) {
        results.push_back(RoutingCountsOp::create(
            b, r.getLoc(), RankedTensorType::get({e}, f32), r.getDispatch(),
            fn.getArgument(2)));
        names.push_back({"routing." + layer.prefix, "routing_counts"});
        continue;
      }
      auto perExpert = RankedTensorType::get({batch, e}, f32);
      auto stats = RoutingStatsOp::create(
          b, r.getLoc(),
          TypeRange{perExpert, perExpert, perExpert,
                    RankedTensorType::get({batch}, f32)},
          r.getDispatch(), r.getCombine(), r.getLogits());
      const char *what[] = {"tokens", "weights", "probs", "entropy"};
      for (unsigned i = 0; i < 4; ++i) {
        results.push_back(stats->getResult(i));
        names.push_back(
            {std::string("routing_") + what[i] + "." + layer.prefix,
             StringRef("routing_stats")});
      }
    }
    func::ReturnOp::create(b, rootLoc, results);
    fn.setType(b.getFunctionType(fn.getArgumentTypes(),
                                 ValueRange(results).getTypes()));
    for (auto [i, name] : llvm::enumerate(names)) {
      fn.setResultAttr(i, moec::moe::MoEDialect::NameAttrHelper::getNameStr(),
                       b.getStringAttr(name.first));
      if (!name.second.empty())
        fn.setResultAttr(i, moec::moe::MoEDialect::RoleAttrHelper::getNameStr(),
                         b.getStringAttr(name.second));
    }
  };
  emitEvaluation("eval", /*perImage=*/false);
  emitEvaluation("analyze", /*perImage=*/true);

  if (failed(verify(*module)))
    return nullptr;
  return module;
}
