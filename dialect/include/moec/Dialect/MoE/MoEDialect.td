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
  }];
  let useDefaultAttributePrinterParser = 0;
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
    I32EnumAttrCase<"Sinkhorn", 4, "sinkhorn">]> {
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
    I32EnumAttrCase<"TruncNormal", 3, "trunc_normal">]> {
  let cppNamespace = "::moec::moe";
}

#endif // MOEC_DIALECT_MOE_MOEDIALECT_TD
