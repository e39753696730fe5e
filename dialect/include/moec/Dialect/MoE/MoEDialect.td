//===- MoEDialect.td - moe dialect definition --------------*- tablegen -*-===//
//
// The moe dialect: tensor-level ops for ViT / ViMoE graphs.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEDIALECT_TD
#define MOEC_DIALECT_MOE_MOEDIALECT_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/IR/EnumAttr.td"

def MoE_Dialect : Dialect {
  let name = "moe";
  let cppNamespace = "::moec::moe";
  let summary = "Tensor-level ops for vision Mixture-of-Experts models.";
  let description = [{
    The `moe` dialect models a Vision Transformer with Mixture-of-Experts
    layers at tensor level: patch embedding, layer norm, multi-head
    self-attention, dense layers, activations, pooling, the classifier head and
    its loss, and the MoE family (`moe.router`, `moe.dispatch`, `moe.experts`,
    `moe.combine`, `moe.shared_expert`).

    Routing follows the unified dispatch/combine formulation of "Routers in
    Vision Mixture of Experts" (Liu et al.): a router produces a dispatch tensor
    `D[g, s, e, c]` and a combine tensor `C[g, s, e, c]` for every group `g`
    (one image), token `s`, expert `e` and slot `c` of that expert's capacity.
    Expert inputs are `X~[e, g, c] = sum_s D[g, s, e, c] * x[g, s]`, outputs
    `y[g, s] = sum_{e, c} C[g, s, e, c] * Expert_e(X~[e, g, c])`. Token-choice
    top-k, expert-choice, Sinkhorn, soft and per-image routers differ only in
    how they compute `D` and `C`.

    Parameters are `moe.param` ops naming an entry of the model's parameter
    table; weights of dense layers are stored `[in, out]`.

    The passes annotate ops and functions with the discardable attributes
    declared below (`moe.name`, `moe.flops`, `moe.parallel`, ...); the
    dialect verifies the type of every `moe.*` attribute on an op and
    rejects names it does not declare.
  }];
  let discardableAttrs = (ins
    // Names and roles (ops; function arguments and results).
    "::mlir::StringAttr":$name,
    "::mlir::StringAttr":$role,
    // moe-annotate-costs.
    "::mlir::IntegerAttr":$flops,
    "::mlir::IntegerAttr":$params,
    "::mlir::IntegerAttr":$active_params,
    // The frontend's training settings, read by moe-autodiff.
    "::moec::moe::OptimizerAttr":$optimizer,
    // On the module: the JSON spec it was built from (moec compile of moe
    // IR takes the manifest's model and training settings from it).
    "::mlir::StringAttr":$spec,
    // moe-prune-layers: on a moe.param, how its value derives from another
    // parameter of the unpruned model ({source = "name", coefficients =
    // array<f64: ...>}: the sum over the source's first dimension, entry e
    // times coefficients[e]); on the module, the layers it pruned.
    "::mlir::DictionaryAttr":$carry_over,
    "::mlir::ArrayAttr":$pruned_layers,
    // moe-autodiff: optimizer state parameters and parameter updates.
    "::mlir::UnitAttr":$state,
    "::mlir::UnitAttr":$update,
    // moe-lower-to-kernels: kernels and the plan's calls.
    "::mlir::UnitAttr":$kernel,
    "::mlir::StringAttr":$op,
    "::moec::moe::KernelParallelismAttr":$parallel,
    "::mlir::IntegerAttr":$tiles,
    "::mlir::IntegerAttr":$fused,
    // moe-bf16-contractions: a contraction over bf16 pairs (the pair
    // dimension last).
    "::mlir::UnitAttr":$bf16_pairs,
    // On a kernel's linalg op: stays f32 whatever the precision or target
    // (a router's logits: routing decisions must not depend on bf16
    // rounding).
    "::mlir::UnitAttr":$fp32,
    // moe-gpu-tile: how an scf.parallel maps onto a block ("warps", or
    // absent: threads) and the tensor-core instruction a tile matmul stands
    // for. moe-gpu-map-kernels: a gpu.func kernel's scratch bytes per unit,
    // and on the module every kernel's ({name = bytes}).
    "::mlir::StringAttr":$gpu_map,
    "::mlir::StringAttr":$gpu_mma,
    "::mlir::IntegerAttr":$scratch_bytes,
    "::mlir::DictionaryAttr":$kernel_scratch,
    // moe-plan-memory.
    "::mlir::IntegerAttr":$arena_offset,
    "::mlir::IntegerAttr":$arena_bytes,
    "::mlir::IntegerAttr":$param_offset,
    "::mlir::IntegerAttr":$param_bytes
  );
  let hasOperationAttrVerify = 1;
  let useDefaultAttributePrinterParser = 1;
}

class MoE_Op<string mnemonic, list<Trait> traits = []>
    : Op<MoE_Dialect, mnemonic, traits>;

//===----------------------------------------------------------------------===//
// Enums
//===----------------------------------------------------------------------===//

def MoE_RouterKind : I32EnumAttr<"RouterKind", "how a router assigns tokens to experts", [
    I32EnumAttrCase<"TokenChoice", 0, "token_choice">,
    I32EnumAttrCase<"ExpertChoice", 1, "expert_choice">,
    I32EnumAttrCase<"Soft", 2, "soft">,
    I32EnumAttrCase<"PerImage", 3, "per_image">,
    I32EnumAttrCase<"Sinkhorn", 4, "sinkhorn">,
    I32EnumAttrCase<"SinkhornExpertChoice", 5, "sinkhorn_expert_choice">]> {
  let cppNamespace = "::moec::moe";
}

def MoE_Activation : I32EnumAttr<"Activation", "element-wise activation function", [
    I32EnumAttrCase<"Gelu", 0, "gelu">,
    I32EnumAttrCase<"GeluTanh", 1, "gelu_tanh">,
    I32EnumAttrCase<"Relu", 2, "relu">,
    I32EnumAttrCase<"Silu", 3, "silu">]> {
  let cppNamespace = "::moec::moe";
}

def MoE_PoolKind : I32EnumAttr<"PoolKind", "how token features become one image feature", [
    I32EnumAttrCase<"Cls", 0, "cls">,
    I32EnumAttrCase<"Mean", 1, "mean">]> {
  let cppNamespace = "::moec::moe";
}

def MoE_AuxLossKind : I32EnumAttr<"AuxLossKind", "router auxiliary loss", [
    I32EnumAttrCase<"Importance", 0, "importance">,
    I32EnumAttrCase<"Load", 1, "load">,
    I32EnumAttrCase<"Balance", 2, "balance">,
    I32EnumAttrCase<"ZLoss", 3, "z_loss">,
    I32EnumAttrCase<"SuperClass", 4, "super_class">]> {
  let cppNamespace = "::moec::moe";
}

def MoE_InitKind : I32EnumAttr<"InitKind", "parameter initialisation", [
    I32EnumAttrCase<"Zeros", 0, "zeros">,
    I32EnumAttrCase<"Ones", 1, "ones">,
    I32EnumAttrCase<"Normal", 2, "normal">,
    I32EnumAttrCase<"TruncNormal", 3, "trunc_normal">,
    I32EnumAttrCase<"Constant", 4, "constant">]> {
  let cppNamespace = "::moec::moe";
}

def MoE_OptimizerKind : I32EnumAttr<"OptimizerKind", "parameter update rule", [
    I32EnumAttrCase<"AdamW", 0, "adamw">,
    I32EnumAttrCase<"Sgd", 1, "sgd">]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}

def MoE_ScheduleKind : I32EnumAttr<"ScheduleKind", "learning-rate schedule after warm-up", [
    I32EnumAttrCase<"Cosine", 0, "cosine">,
    I32EnumAttrCase<"Constant", 1, "constant">]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}

def MoE_KernelParallelism : I32EnumAttr<"KernelParallelism",
    "how the runtime splits a kernel's work over threads", [
    I32EnumAttrCase<"Images", 0, "images">,
    I32EnumAttrCase<"Fixed", 1, "fixed">]> {
  let cppNamespace = "::moec::moe";
  let genSpecializedAttr = 0;
}

//===----------------------------------------------------------------------===//
// Attributes
//===----------------------------------------------------------------------===//

class MoE_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<MoE_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

def MoE_KernelParallelismAttr
    : EnumAttr<MoE_Dialect, MoE_KernelParallelism, "parallelism"> {
  let summary = "How a kernel call's range is split over threads";
  let description = [{
    `images`: a per-image kernel; the runtime splits the image range.
    `fixed`: a whole-batch kernel over `moe.tiles` tiles of its outermost
    dimension; the runtime splits the tiles.
  }];
  let assemblyFormat = "`<` $value `>`";
}

def MoE_OptimizerAttr : MoE_Attr<"Optimizer", "optimizer"> {
  let summary = "The optimizer and schedule moe-autodiff builds into train_step";
  let description = [{
    The frontend puts the spec's `/train/optimizer` and `/train/schedule`
    on `train_forward`; moe-autodiff reads them to build the update. The
    learning rate is a `train_step` input (the runtime's schedule and
    `--lr`); `lr` here is the spec's base rate, carried for reference.

    ```mlir
    func.func @train_forward(...) attributes {moe.optimizer = #moe.optimizer<
        kind = adamw, lr = 1.000000e-03 : f64,
        weight_decay = 5.000000e-02 : f64, beta1 = 9.000000e-01 : f64,
        beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64,
        momentum = 9.000000e-01 : f64, grad_clip = 1.000000e+00 : f64,
        schedule = cosine, min_lr_ratio = 0.000000e+00 : f64>}
    ```
  }];
  let parameters = (ins
    EnumParameter<MoE_OptimizerKind>:$kind,
    "::mlir::FloatAttr":$lr,
    "::mlir::FloatAttr":$weight_decay,
    "::mlir::FloatAttr":$beta1,
    "::mlir::FloatAttr":$beta2,
    "::mlir::FloatAttr":$eps,
    "::mlir::FloatAttr":$momentum,
    "::mlir::FloatAttr":$grad_clip,
    EnumParameter<MoE_ScheduleKind>:$schedule,
    "::mlir::FloatAttr":$min_lr_ratio);
  let assemblyFormat = "`<` struct(params) `>`";
}

#endif // MOEC_DIALECT_MOE_MOEDIALECT_TD
