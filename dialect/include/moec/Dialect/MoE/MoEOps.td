//===- MoEOps.td - moe dialect ops -------------------------*- tablegen -*-===//
//
// Ops of the moe dialect. Shape rules live once in ShapeRules.cpp and serve
// both the verifiers here and the frontend's builders.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEOPS_TD
#define MOEC_DIALECT_MOE_MOEOPS_TD

include "moec/Dialect/MoE/MoEDialect.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/IR/OpBase.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "moec/Dialect/MoE/MoEInterfaces.td"

def MoE_Differentiable : DeclareOpInterfaceMethods<MoE_DifferentiableOpInterface>;

def MoE_FloatTensor : RankedTensorOf<[AnyFloat]>;
def MoE_LabelTensor : RankedTensorOf<[I32, I64]>;

//===----------------------------------------------------------------------===//
// Parameters
//===----------------------------------------------------------------------===//

def MoE_ParamOp : MoE_Op<"param", [Pure]> {
  let summary = "A named entry of the model's parameter table.";
  let description = [{
    Yields the current value of the trainable parameter `name`. The runtime
    binds it from a weights file, or initialises it as `init` says when no
    weights are given: `zeros`, `ones`, `constant` (every element `value`),
    `normal` (std) or `trunc_normal` (std, truncated at two standard
    deviations, as timm/ViT do). Names are
    unique in a module and use timm's dotted style. `no_decay`: the
    optimizer applies no weight decay to it (the frontend marks biases,
    norm weights, the class token and the position embedding, timm's
    no-decay set).

    ```mlir
    %w = moe.param "blocks.0.attn.qkv.weight" init(trunc_normal, 2.000000e-02) : tensor<64x192xf32>
    %b = moe.param "blocks.0.attn.qkv.bias" init(zeros) no_decay : tensor<192xf32>
    %t = moe.param "blocks.3.moe.router.scale" init(constant = 1.000000e+01) no_decay : tensor<1xf32>
    ```
  }];
  let arguments = (ins StrAttr:$name, MoE_InitKind:$init,
                   OptionalAttr<F64Attr>:$std, OptionalAttr<F64Attr>:$value,
                   UnitAttr:$no_decay);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $name `init` `(` $init (`,` $std^)? (`=` $value^)? `)` (`no_decay` $no_decay^)? attr-dict
    `:` type($result)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// ViT ops
//===----------------------------------------------------------------------===//

def MoE_PatchEmbedOp : MoE_Op<"patch_embed", [Pure, MoE_Differentiable]> {
  let summary = "Splits images into patches and projects each patch linearly.";
  let description = [{
    `input` is `[N, C, H, W]`; `patch_size` P divides H and W. Every P x P
    patch, flattened in (channel, row, column) order, is multiplied by
    `weight` `[C*P*P, D]` and `bias` `[D]` is added. Patches are numbered
    row-major, giving `[N, (H/P)*(W/P), D]`.

    ```mlir
    %t = moe.patch_embed %img, %w, %b {patch_size = 4 : i64}
        : (tensor<8x1x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<8x49x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$weight,
                   MoE_FloatTensor:$bias, ConfinedAttr<I64Attr, [IntPositive]>:$patch_size);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight `,` $bias attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ClassTokenOp : MoE_Op<"class_token", [Pure, MoE_Differentiable]> {
  let summary = "Prepends a learned class token to every image's tokens.";
  let description = [{
    `input` is `[N, S, D]` and `token` is `[D]`; the result `[N, S+1, D]` has
    `token` at position 0 of every image, followed by the input tokens.

    ```mlir
    %x = moe.class_token %t, %cls : (tensor<8x49x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$token);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $token attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_PosEmbedOp : MoE_Op<"pos_embed", [Pure, MoE_Differentiable]> {
  let summary = "Adds a learned position embedding to every image's tokens.";
  let description = [{
    `input` is `[N, S, D]` and `embedding` is `[S, D]`; the result is
    `input[n, s, d] + embedding[s, d]`.

    ```mlir
    %y = moe.pos_embed %x, %pos : (tensor<8x50x64xf32>, tensor<50x64xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$embedding);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $embedding attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_LayerNormOp : MoE_Op<"layer_norm", [Pure, MoE_Differentiable]> {
  let summary = "Layer normalisation over the last dimension.";
  let description = [{
    For `input` `[..., D]`, `gamma` and `beta` `[D]`:
    `y = (x - mean(x)) / sqrt(var(x) + epsilon) * gamma + beta`, with mean and
    (biased) variance taken over the last dimension.

    ```mlir
    %y = moe.layer_norm %x, %g, %b {epsilon = 1.000000e-06 : f64}
        : (tensor<8x50x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$gamma,
                   MoE_FloatTensor:$beta, F64Attr:$epsilon);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $gamma `,` $beta attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AttentionOp : MoE_Op<"attention", [Pure, MoE_Differentiable]> {
  let summary = "Multi-head self-attention with fused QKV and output projections.";
  let description = [{
    `input` is `[N, S, D]`, `heads` divides D, `dh = D / heads`.
    `qkv = input * qkv_weight + qkv_bias` with `qkv_weight` `[D, 3D]`: columns
    `[0, D)` are the queries, `[D, 2D)` the keys, `[2D, 3D)` the values, and
    head `h` owns columns `h*dh .. (h+1)*dh` of each. Per image and head,
    `A = softmax(Q K^T / sqrt(dh))` over keys and `O = A V`; the heads are
    concatenated and projected: `result = O * out_weight + out_bias` with
    `out_weight` `[D, D]`.

    ```mlir
    %y = moe.attention %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64}
        : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>,
           tensor<64xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$qkv_weight,
                   MoE_FloatTensor:$qkv_bias, MoE_FloatTensor:$out_weight,
                   MoE_FloatTensor:$out_bias,
                   ConfinedAttr<I64Attr, [IntPositive]>:$heads);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $qkv_weight `,` $qkv_bias `,` $out_weight `,` $out_bias attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AttentionTrainOp : MoE_Op<"attention_train", [Pure]> {
  let summary = "moe.attention that also returns what its backward reads.";
  let description = [{
    The forward op of training: moe.attention's VJP replaces a
    `moe.attention` of `train_step` by this op, so that the backward reads
    the forward's intermediates instead of recomputing them. Operands,
    `heads` and `result` are moe.attention's. The other results are the
    residuals of its core: `qkv` `[N, S, 3D]` (the projected input, columns
    as in moe.attention), `output` `[N, S, D]` (the concatenated heads `O`,
    before the output projection) and `lse` `[N, heads, S]`, the
    log-sum-exp of every row of the scaled scores,
    `lse = log(sum_j exp(Q K^T / sqrt(dh)))`, from which the backward gets
    the probabilities with one exp per score and no row reductions.

    ```mlir
    %y, %qkv, %o, %lse = moe.attention_train %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64}
        : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>,
           tensor<64xf32>)
        -> (tensor<8x50x64xf32>, tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>)
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$qkv_weight,
                   MoE_FloatTensor:$qkv_bias, MoE_FloatTensor:$out_weight,
                   MoE_FloatTensor:$out_bias,
                   ConfinedAttr<I64Attr, [IntPositive]>:$heads);
  let results = (outs MoE_FloatTensor:$result, MoE_FloatTensor:$qkv,
                      MoE_FloatTensor:$output, MoE_FloatTensor:$lse);
  let assemblyFormat = [{
    $input `,` $qkv_weight `,` $qkv_bias `,` $out_weight `,` $out_bias attr-dict
    `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_AttentionGradOp : MoE_Op<"attention_grad", [Pure]> {
  let summary = "Backward pass of attention between its two projections.";
  let description = [{
    The vector-Jacobian product of moe.attention's core, built by
    moe.attention's VJP so that each image's attention backward runs in one
    kernel with its `[S, S]` probabilities in cache. `qkv` `[N, S, 3D]`,
    `output` `[N, S, D]` and `lse` `[N, heads, S]` are the residuals of
    moe.attention_train; `dheads` `[N, S, D]` is the cotangent of the
    concatenated heads `O`. Per image and head, with
    `P = exp(Q K^T / sqrt(dh) - lse)` (the softmax, from the saved row
    log-sum-exp): `dV = P^T dO`, `dS = P * (dO V^T - rowsum(dO * O)) / sqrt(dh)`,
    `dQ = dS K`, `dK = dS^T Q`. The result `dqkv` `[N, S, 3D]` holds dQ, dK
    and dV in the columns of Q, K and V.

    ```mlir
    %dqkv = moe.attention_grad %qkv, %o, %lse, %dheads {heads = 4 : i64}
        : (tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>, tensor<8x50x64xf32>)
        -> tensor<8x50x192xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$qkv, MoE_FloatTensor:$output,
                   MoE_FloatTensor:$lse, MoE_FloatTensor:$dheads,
                   ConfinedAttr<I64Attr, [IntPositive]>:$heads);
  let results = (outs MoE_FloatTensor:$dqkv);
  let assemblyFormat = [{
    $qkv `,` $output `,` $lse `,` $dheads attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_DenseOp : MoE_Op<"dense", [Pure, MoE_Differentiable]> {
  let summary = "Matrix multiplication over the last dimension, plus an optional bias.";
  let description = [{
    `input` is `[..., K]`, `weight` `[K, M]`, `bias` (optional) `[M]`:
    `result[..., m] = sum_k input[..., k] * weight[k, m] + bias[m]`.

    ```mlir
    %h = moe.dense %x, %w, %b : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>) -> tensor<8x50x128xf32>
    %p = moe.dense %x, %w : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$weight,
                   Optional<MoE_FloatTensor>:$bias);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $weight (`,` $bias^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ActivationOp : MoE_Op<"activation", [Pure, SameOperandsAndResultType, MoE_Differentiable]> {
  let summary = "Element-wise activation function.";
  let description = [{
    Applies `kind` element-wise: `gelu` (exact, with erf), `gelu_tanh` (the
    tanh approximation), `relu` or `silu` (x * sigmoid(x)).

    ```mlir
    %y = moe.activation gelu %x : tensor<8x50x128xf32>
    ```
  }];
  let arguments = (ins MoE_Activation:$kind, MoE_FloatTensor:$input);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = "$kind $input attr-dict `:` type($result)";
}

def MoE_ActivationTrainOp : MoE_Op<"activation_train", [Pure, SameOperandsAndResultType]> {
  let summary = "moe.activation that also returns its derivative, for the backward.";
  let description = [{
    The forward op of training: moe.activation's VJP replaces a
    `moe.activation` of `train_step` by this op. `result` is `kind(input)`
    and `derivative` is `kind'(input)`, computed in the same pass over the
    input (GELU's erf once for both), so the backward is one product with it.

    ```mlir
    %y, %dy = moe.activation_train gelu %x : tensor<8x50x128xf32>
    ```
  }];
  let arguments = (ins MoE_Activation:$kind, MoE_FloatTensor:$input);
  let results = (outs MoE_FloatTensor:$result, MoE_FloatTensor:$derivative);
  let assemblyFormat = "$kind $input attr-dict `:` type($result)";
}

def MoE_AddOp : MoE_Op<"add", [Pure, Commutative, SameOperandsAndResultType, MoE_Differentiable]> {
  let summary = "Element-wise addition (residual connections).";
  let description = [{
    `result = lhs + rhs`; both operands and the result have one type.

    ```mlir
    %y = moe.add %x, %r : tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$lhs, MoE_FloatTensor:$rhs);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def MoE_PoolOp : MoE_Op<"pool", [Pure, MoE_Differentiable]> {
  let summary = "Reduces every image's tokens to one feature vector.";
  let description = [{
    `input` is `[N, S, D]`, the result `[N, D]`: `cls` takes token 0 (the
    class token), `mean` averages over all S tokens.

    ```mlir
    %f = moe.pool cls %x : tensor<8x50x64xf32> -> tensor<8x64xf32>
    ```
  }];
  let arguments = (ins MoE_PoolKind:$kind, MoE_FloatTensor:$input);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = "$kind $input attr-dict `:` type($input) `->` type($result)";
  let hasVerifier = 1;
}

def MoE_ClassifierHeadOp : MoE_Op<"classifier_head", [Pure, MoE_Differentiable]> {
  let summary = "Linear classifier producing the model's logits.";
  let description = [{
    `input` `[N, D]` (pooled features), `weight` `[D, K]`, `bias` `[K]`:
    `logits = input * weight + bias`, `[N, K]` for K classes. Marks the
    model's output for passes that look for it.

    ```mlir
    %logits = moe.classifier_head %f, %w, %b : (tensor<8x64xf32>, tensor<64x10xf32>, tensor<10xf32>) -> tensor<8x10xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$weight,
                   MoE_FloatTensor:$bias);
  let results = (outs MoE_FloatTensor:$logits);
  let assemblyFormat = [{
    $input `,` $weight `,` $bias attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_SoftmaxCrossEntropyOp : MoE_Op<"softmax_cross_entropy", [Pure, MoE_Differentiable]> {
  let summary = "Mean softmax cross-entropy of logits against integer labels.";
  let description = [{
    `logits` `[N, K]`, `labels` `[N]` with values in `[0, K)`. With label
    smoothing `a`, the target of image n is `(1 - a) * onehot(labels[n]) + a / K`
    and the loss is `-(1/N) sum_n sum_k target[n, k] * log_softmax(logits[n])[k]`,
    a 0-d tensor.

    ```mlir
    %loss = moe.softmax_cross_entropy %logits, %labels {label_smoothing = 1.000000e-01 : f64}
        : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$logits, MoE_LabelTensor:$labels,
                   DefaultValuedAttr<F64Attr, "0.0">:$label_smoothing);
  let results = (outs MoE_FloatTensor:$loss);
  let assemblyFormat = [{
    $logits `,` $labels attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// MoE ops
//===----------------------------------------------------------------------===//

def MoE_ReshapeOp : MoE_Op<"reshape", [Pure, MoE_Differentiable]> {
  let summary = "The same elements in row-major order, another static shape.";
  let description = [{
    `result` holds `input`'s elements in the same row-major order; the two
    static shapes have the same number of elements. Routing groups are
    built with it: the tokens `[B, T, D]` of B images become `[B/n, n*T, D]`,
    one group of n images per row, for the router, its dispatch and its
    combine, and the combined output goes back to `[B, T, D]`. The CPU
    backend lowers it to a view of the same buffer (no copy).

    ```mlir
    %g = moe.reshape %h : (tensor<8x17x64xf32>) -> tensor<2x68x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_L2NormalizeOp : MoE_Op<"l2_normalize", [Pure, MoE_Differentiable]> {
  let summary = "Scales vectors to unit l2 norm, times an optional learned scale.";
  let description = [{
    Along dimension `dim` of `input`:
    `result = scale * x / sqrt(sum_dim x^2 + epsilon)`, with `scale` a
    one-element tensor `[1]` (1 when absent). The epsilon sits inside the
    square root, as in google-research/vmoe's Soft MoE router. The cosine
    gates of `moe.router` are built from it: the router's input is the
    normalised tokens (`dim` = the last) and its weight the normalised
    expert codes, one per column (`dim` = 0), times the learned scale, so
    the logits are `scale * cos(token, code)`.

    ```mlir
    %xn = moe.l2_normalize %x {dim = 2 : i64, epsilon = 1.000000e-06 : f64}
        : (tensor<8x50x16xf32>) -> tensor<8x50x16xf32>
    %wn = moe.l2_normalize %w scale %t {dim = 0 : i64, epsilon = 1.000000e-06 : f64}
        : (tensor<16x4xf32>, tensor<1xf32>) -> tensor<16x4xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, Optional<MoE_FloatTensor>:$scale,
                   ConfinedAttr<I64Attr, [IntNonNegative]>:$dim,
                   F64Attr:$epsilon);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input (`scale` $scale^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_RouterOp : MoE_Op<"router", [Pure, MoE_Differentiable]> {
  let summary = "Computes the dispatch and combine tensors of one MoE layer.";
  let description = [{
    `input` holds the tokens `[G, S, D]` of G routing groups, each routed
    on its own: one image per group, or with routing groups n images (the
    frontend views `[B, T, D]` as `[B/n, n*T, D]` with `moe.reshape`). The
    router has no bias: its logits are `L = x * weight` with `weight`
    `[D, E*P]` (P = `slots_per_expert` for `soft`, else 1); cosine gates
    are this product of normalised tokens and normalised, scaled codes
    (`moe.l2_normalize`), and the tokens the router reads need not be the
    ones `moe.dispatch` moves. It returns:

    * `dispatch` `D[G, S, E, C]`: expert input slot `(e, c)` of group g is
      `X~[e, g, c] = sum_s D[g, s, e, c] x[g, s]` (see `moe.dispatch`);
    * `combine` `C[G, S, E, C]`: token s's output is
      `sum_{e, c} C[g, s, e, c] Expert_e(X~[e, g, c])` (see `moe.combine`);
    * `logits` `[G, R, E*P]`: the clean router logits (never noisy), for the
      auxiliary losses; R = 1 for `per_image` (one decision per image), else
      S.

    Rules shared by the kinds:

    * The gates are `softmax(L)` over the E experts of each token. They are
      not renormalised over the experts a token is sent to: with top-2 of
      4 experts a token's two combine weights sum to less than 1.
    * Every ranking breaks ties towards the lower index: the lower expert
      index when a token ranks experts, the lower token index when an expert
      ranks tokens.
    * Capacity C, the last dimension of `dispatch`: for `token_choice` and
      `sinkhorn`, `C = min(S, max(1, ceil(k * S * capacity_factor / E)))`
      (computed in double precision); for `expert_choice` and
      `sinkhorn_expert_choice` the same with k = 1; for `per_image` C = S; for `soft` C = P.
    * For every kind but `soft`, `D` is 0/1, a slot holds at most one token,
      an expert's filled slots are `0 .. n_e - 1` (the rest of its slots are
      all zero), and `C = D * gate`.

    Kinds (google-research/vmoe names in brackets):

    * `token_choice` (top-k, V-MoE): each token picks its `k` highest-gate
      experts. Expert e's queue holds every token that picked e as its first
      choice, in token order, then every token that picked e as its second
      choice, in token order, and so on (V-MoE's order without batch
      priority); the token at queue position c takes slot c, and positions
      `>= C` are dropped (a token dropped by one expert may still be kept by
      its other choices). With `batch_prioritized` (V-MoE's Batch
      Prioritized Routing), each round of choices takes the tokens in order
      of their top gate, highest first (ties in token order), instead of
      token order: at low capacity the tokens dropped are the least
      confident ones.
    * `expert_choice` (Zhou et al.): the gates are the softmax over experts
      of each token, as above; then each expert takes the `C` tokens with
      the highest gate for it, its best token in slot 0, the next in slot 1,
      and so on. A token may be taken by several experts or by none.
    * `sinkhorn` (BASE-style balanced assignment): starts from the softmax
      gates, `Q = softmax(L)`, and runs `sinkhorn_iters` iterations, each
      first scaling every column (expert) of Q to sum `S / E`, then every
      row (token) to sum 1. Each token's k experts are the k highest of its
      row of Q; queues, slots and drops are then those of `token_choice`
      (`batch_prioritized` orders the tokens by their highest entry of Q).
      The combine weights are the softmax gates, not Q.
    * `sinkhorn_expert_choice` ("Routers in Vision MoE"): Q as for
      `sinkhorn`; each expert takes the `C` tokens with the highest Q for
      it (slots and capacity as for `expert_choice`), weighted by the
      softmax gates.
    * `soft` (Soft MoE, Puigcerver et al.): slot p of expert e is column
      `e*P + p` of L. `D[g, s, e, p]` is the softmax of that column over the
      S tokens (each slot a convex mix of all tokens); `C[g, s, e, p]` is
      the softmax of token s's row over all E*P slots (each token a convex
      mix of all slot outputs). Nothing is dropped.
    * `per_image` (Mobile V-MoE): one decision per image, from the mean
      token `m = (1/S) sum_s x[g, s]` (all S tokens of the input, a class
      token included): logits `m * weight` `[G, 1, E]`, gates their softmax.
      The image's k highest-gate experts each take all S tokens, token s in
      slot s (C = S, nothing is dropped): `D[g, s, e, c] = 1` iff e is
      chosen and c = s, weighted by the image's gate for e. With
      `class_token` the decision comes from the class token `x[g, 0]`
      instead of the mean token.

    Training: `noise` (optional, every kind but `soft`, with `noise_std`)
    holds standard normal samples of the logits' shape `[G, R, E]` (R = 1
    for `per_image`, else S); the gates that select, fill and weight become
    `softmax(L + noise_std / E * noise)` (V-MoE's noisy routing; `sinkhorn`
    starts its iterations from them). `logits` stays the clean logits.
    Without a `noise` operand, `noise_std` has no effect.

    Differentiation goes through the gate values only: for every kind but
    `soft`, `dgate = sum_slots dC * D`, then the softmax's VJP (for
    `sinkhorn` that of the softmax gates, not of the iterations); the
    choices, slot positions and drops are constants. `soft` differentiates
    both of its softmaxes.

    ```mlir
    %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 2.000000e+00 : f64}
        : (tensor<8x50x64xf32>, tensor<64x4xf32>)
        -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x50x4xf32>)
    ```
  }];
  let arguments = (ins MoE_RouterKind:$kind, MoE_FloatTensor:$input,
                   MoE_FloatTensor:$weight, Optional<MoE_FloatTensor>:$noise,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$k,
                   OptionalAttr<F64Attr>:$capacity_factor,
                   OptionalAttr<F64Attr>:$noise_std,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$sinkhorn_iters,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$slots_per_expert,
                   UnitAttr:$batch_prioritized, UnitAttr:$class_token);
  let results = (outs MoE_FloatTensor:$dispatch, MoE_FloatTensor:$combine,
                      MoE_FloatTensor:$logits);
  let assemblyFormat = [{
    $kind $input `,` $weight (`noise` $noise^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    /// Number of experts E (dim 2 of the dispatch tensor).
    int64_t getNumExperts();
    /// Slots per expert C (dim 3 of the dispatch tensor).
    int64_t getCapacity();
  }];
}

def MoE_DispatchOp : MoE_Op<"dispatch", [Pure, MoE_Differentiable]> {
  let summary = "Gathers tokens into expert slots with a dispatch tensor.";
  let description = [{
    `input` `[G, S, D]`, `dispatch` `[G, S, E, C]` (from `moe.router`); the
    result is expert-major, `[E, G, C, D]`:
    `result[e, g, c, :] = sum_s dispatch[g, s, e, c] * input[g, s, :]`.
    For every router but soft MoE the dispatch tensor is one-hot per slot,
    so each slot is a copy of one token's row, or zeros if the slot is
    unfilled.

    ```mlir
    %xs = moe.dispatch %x, %d : (tensor<8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<4x8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$dispatch);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $dispatch attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertsOp : MoE_Op<"experts", [Pure, MoE_Differentiable]> {
  let summary = "E expert FFNs applied to their slots: the grouped GEMM pair.";
  let description = [{
    `input` `[E, G, C, D]` holds each expert's slots. Expert e is a two-layer
    FFN with hidden size H: `fc1_weight` `[E, D, H]`, `fc1_bias` `[E, H]`,
    `fc2_weight` `[E, H, D]`, `fc2_bias` `[E, D]`:
    `result[e] = act(input[e] * fc1_weight[e] + fc1_bias[e]) * fc2_weight[e] + fc2_bias[e]`.
    The formula holds for every slot, unfilled ones included (there it gives
    `act(fc1_bias[e]) * fc2_weight[e] + fc2_bias[e]`); when the result is
    read only by the same router's `moe.combine`, which weights unfilled
    slots by 0, the CPU kernel computes the filled slots only and writes
    zeros to the others.

    ```mlir
    %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2
        : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>,
           tensor<4x128x64xf32>, tensor<4x64xf32>) -> tensor<4x8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_Activation:$activation, MoE_FloatTensor:$input,
                   MoE_FloatTensor:$fc1_weight, MoE_FloatTensor:$fc1_bias,
                   MoE_FloatTensor:$fc2_weight, MoE_FloatTensor:$fc2_bias);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $activation $input `,` $fc1_weight `,` $fc1_bias `,` $fc2_weight `,` $fc2_bias
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_ExpertsTrainOp : MoE_Op<"experts_train", [Pure]> {
  let summary = "moe.experts that also returns what its backward reads.";
  let description = [{
    The forward op of training: moe.experts' VJP replaces a `moe.experts` of
    `train_step` by this op, so that the backward reads the hidden layer
    instead of recomputing its `[E, G, C, D] x [E, D, H]` product and the
    activation's derivative there. Operands, `activation` and `result` are
    moe.experts'. With `a = input[e] * fc1_weight[e] + fc1_bias[e]`
    (`[E, G, C, H]`), `dact` is `act'(a)` and `hidden` is `act(a)`, over
    every slot (the combine's VJP reads every slot of `result`, so the
    filled-slot kernel of moe.experts does not apply).

    ```mlir
    %ys, %dact, %hid = moe.experts_train gelu %xs, %w1, %b1, %w2, %b2
        : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>,
           tensor<4x128x64xf32>, tensor<4x64xf32>)
        -> (tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>)
    ```
  }];
  let arguments = (ins MoE_Activation:$activation, MoE_FloatTensor:$input,
                   MoE_FloatTensor:$fc1_weight, MoE_FloatTensor:$fc1_bias,
                   MoE_FloatTensor:$fc2_weight, MoE_FloatTensor:$fc2_bias);
  let results = (outs MoE_FloatTensor:$result, MoE_FloatTensor:$dact,
                      MoE_FloatTensor:$hidden);
  let assemblyFormat = [{
    $activation $input `,` $fc1_weight `,` $fc1_bias `,` $fc2_weight `,` $fc2_bias
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_CombineOp : MoE_Op<"combine", [Pure, MoE_Differentiable]> {
  let summary = "Scatters expert outputs back to tokens with a combine tensor.";
  let description = [{
    `input` `[E, G, C, D]` (expert outputs), `combine` `[G, S, E, C]` (from
    `moe.router`); the result is `[G, S, D]`:
    `result[g, s, :] = sum_{e, c} combine[g, s, e, c] * input[e, g, c, :]`.
    Tokens that no expert took get zeros (the residual carries them). The
    weights are the router's gates as they are, not renormalised over the
    experts a token reached.

    ```mlir
    %y = moe.combine %ys, %c : (tensor<4x8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$combine);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $input `,` $combine attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_SharedExpertOp : MoE_Op<"shared_expert", [Pure, MoE_Differentiable]> {
  let summary = "The always-active expert of a ViMoE layer.";
  let description = [{
    ViMoE's shared expert: one FFN that every token passes through, its
    output added (unweighted, by a `moe.add`) to the routed experts'
    combined output. `input` `[G, S, D]`, `fc1_weight` `[D, H]`, `fc1_bias`
    `[H]`, `fc2_weight` `[H, D]`, `fc2_bias` `[D]`:
    `result = act(input * fc1_weight + fc1_bias) * fc2_weight + fc2_bias`.
    H is taken from the weights; the frontend gives the shared expert the
    routed experts' hidden size (the spec's `expert_hidden`, by default the
    model's MLP hidden size) and their activation. moe-prune-layers also
    uses it, with weights of its own, as the dense FFN that replaces a
    pruned MoE layer.

    ```mlir
    %s = moe.shared_expert gelu %x, %w1, %b1, %w2, %b2
        : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>, tensor<128x64xf32>,
           tensor<64xf32>) -> tensor<8x50x64xf32>
    ```
  }];
  let arguments = (ins MoE_Activation:$activation, MoE_FloatTensor:$input,
                   MoE_FloatTensor:$fc1_weight, MoE_FloatTensor:$fc1_bias,
                   MoE_FloatTensor:$fc2_weight, MoE_FloatTensor:$fc2_bias);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $activation $input `,` $fc1_weight `,` $fc1_bias `,` $fc2_weight `,` $fc2_bias
    attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

//===----------------------------------------------------------------------===//
// Training losses and metrics
//===----------------------------------------------------------------------===//

def MoE_AuxLossOp : MoE_Op<"aux_loss", [Pure, MoE_Differentiable, AttrSizedOperandSegments]> {
  let summary = "A router auxiliary loss, weighted (google-research/vmoe definitions).";
  let description = [{
    `logits` are a router's clean logits `[G, R, J]` (J = E, or E*P for
    soft MoE; R = 1 for a per-image router). Each group's loss is computed
    as below, averaged over the G groups and multiplied by `weight`:

    * `importance`: CV^2 over experts of `sum_tokens softmax(logits)`.
    * `load` (needs `noise` `[G, S, E]`, `noise_std` and `k`): with noisy
      logits `L~ = L + s * noise`, `s = noise_std / E`, and `t` the k-th
      largest noisy logit of a token, `p = 1 - Phi((t - L) / s)`; the loss is
      CV^2 over experts of `mean_tokens p`.
    * `balance` (GShard/Switch): `E^2 * mean_e(mean_tokens(g_e) * f_e)`, `g`
      the softmax of the logits (noisy when `noise` is given), `f_e` the
      fraction of tokens whose largest gate is expert e (the lower index on
      ties).
    * `z_loss`: `mean_tokens logsumexp(L)^2`.
    * `super_class` (needs `labels` and `super_class_map`): cross-entropy of
      the (per-image) logits against the super-class of the image's label.

    CV^2 is `(std / mean)^2` with the population std.

    ```mlir
    %l = moe.aux_loss importance %logits {weight = 5.000000e-03 : f64}
        : (tensor<8x50x4xf32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins MoE_AuxLossKind:$kind, MoE_FloatTensor:$logits,
                   Optional<MoE_FloatTensor>:$noise,
                   Optional<MoE_LabelTensor>:$labels,
                   F64Attr:$weight, OptionalAttr<F64Attr>:$noise_std,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$k,
                   OptionalAttr<DenseI64ArrayAttr>:$super_class_map);
  let results = (outs MoE_FloatTensor:$loss);
  let assemblyFormat = [{
    $kind $logits (`noise` $noise^)? (`labels` $labels^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_SumLossesOp : MoE_Op<"sum_losses", [Pure, MoE_Differentiable]> {
  let summary = "Sum of scalar losses.";
  let description = [{
    `result = sum of the operands`, every one a 0-d tensor.

    ```mlir
    %total = moe.sum_losses %ce, %aux0, %aux1 : (tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<f32>
    ```
  }];
  let arguments = (ins Variadic<0DTensorOf<[F32]>>:$terms);
  let results = (outs 0DTensorOf<[F32]>:$result);
  let assemblyFormat = "$terms attr-dict `:` functional-type(operands, results)";
}

def MoE_ClassificationMetricsOp : MoE_Op<"classification_metrics", [Pure]> {
  let summary = "Summed cross-entropy and number of correct top-1 predictions.";
  let description = [{
    `logits` `[N, K]`, `labels` `[N]`, optional `mask` `[N]` (1 counts the
    image, 0 ignores it; all count without a mask). Returns the sum over
    counted images of the plain cross-entropy (no label smoothing) and the
    number of counted images whose largest logit (first on ties) is the
    label. Not differentiable: evaluation and training metrics only.

    ```mlir
    %loss, %correct = moe.classification_metrics %logits, %labels mask %mask
        : (tensor<8x10xf32>, tensor<8xi32>, tensor<8xf32>) -> (tensor<f32>, tensor<f32>)
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$logits, MoE_LabelTensor:$labels,
                   Optional<MoE_FloatTensor>:$mask);
  let results = (outs 0DTensorOf<[F32]>:$loss_sum, 0DTensorOf<[F32]>:$correct);
  let assemblyFormat = [{
    $logits `,` $labels (`mask` $mask^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_RoutingCountsOp : MoE_Op<"routing_counts", [Pure]> {
  let summary = "Tokens dispatched to each expert.";
  let description = [{
    `dispatch` `[G, S, E, C]` from a router, optional `mask` `[G]`: result
    `[E]`, `sum over counted groups, tokens and slots of dispatch`. With
    routing groups of n images the mask is per image, `[G * n]`, and a
    group's counts are weighted by the mean of its images' masks (exact
    unless a group mixes counted and ignored images; linear in the mask,
    so counts over disjoint masks add up). For
    one-hot routers this is the number of tokens each expert processed
    (dropped tokens are not counted); for soft MoE the summed weights.
    `dispatch` may also be the per-group counts `[G, E]` of a
    `moe.routed_ffn` (the fused layer has no dispatch tensor): then the
    result is their sum over the counted groups.

    ```mlir
    %n = moe.routing_counts %dispatch mask %mask
        : (tensor<8x50x4x50xf32>, tensor<8xf32>) -> tensor<4xf32>
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$dispatch, Optional<MoE_FloatTensor>:$mask);
  let results = (outs MoE_FloatTensor:$result);
  let assemblyFormat = [{
    $dispatch (`mask` $mask^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_RoutingStatsOp : MoE_Op<"routing_stats", [Pure]> {
  let summary = "Per-image routing statistics of one MoE layer.";
  let description = [{
    What `moec-run analyze` records of a router, per image: `dispatch` and
    `combine` `[G, S, E, C]` and the clean `logits` `[G, R, J]` of one
    `moe.router` (J = E*P). The results have one row per image, B = G * n
    images for routing groups of n images (token s of group g belongs to
    image `g * n + s / (S / n)`):

    * `tokens` `[B, E]`: `sum over the image's tokens and the slots of
      dispatch`: the tokens of the image expert e processed (the summed
      dispatch weights for soft MoE);
    * `weights` `[B, E]`: the same sum of `combine`: the gate mass expert e
      contributes to the image's outputs;
    * `probs` `[B, E]`: the router's softmax over the J columns of each of
      the image's R / n decisions (its tokens; one for a per-image router),
      summed over each expert's P slots, averaged over the decisions;
    * `entropy` `[B]`: the entropy of that softmax, divided by `log(J)`
      (0 when J = 1), averaged over the decisions: 0 for one-hot routing,
      1 for uniform gates.

    Not differentiable; an analysis entry point only (a router read by it
    is not fused by moe-fuse-routing).

    ```mlir
    %t, %w, %p, %h = moe.routing_stats %d, %c, %l
        : (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x50x4xf32>)
        -> (tensor<8x4xf32>, tensor<8x4xf32>, tensor<8x4xf32>, tensor<8xf32>)
    ```
  }];
  let arguments = (ins MoE_FloatTensor:$dispatch, MoE_FloatTensor:$combine,
                   MoE_FloatTensor:$logits);
  let results = (outs MoE_FloatTensor:$tokens, MoE_FloatTensor:$weights,
                      MoE_FloatTensor:$probs, MoE_FloatTensor:$entropy);
  let assemblyFormat = [{
    $dispatch `,` $combine `,` $logits attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

include "moec/Dialect/MoE/MoERoutedOps.td"

#endif // MOEC_DIALECT_MOE_MOEOPS_TD
