//===- MoERoutedOps.td - fused routing ops -----------------*- tablegen -*-===//
//
// The fused MoE layer that moe-fuse-routing builds from router -> dispatch
// -> experts -> combine, and the ops of its training step. Included by
// MoEOps.td.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEROUTEDOPS_TD
#define MOEC_DIALECT_MOE_MOEROUTEDOPS_TD

def MoE_RoutedFFNOp : MoE_Op<"routed_ffn", [Pure, MoE_Differentiable,
                                             AttrSizedOperandSegments]> {
  let summary = "A whole MoE layer: router, grouped expert FFNs and combine, fused.";
  let description = [{
    The fused form of `moe.router` -> `moe.dispatch` -> `moe.experts` ->
    `moe.combine` that moe-fuse-routing builds, for every router kind but
    `soft`. Same inputs and semantics: `input` `[G, S, D]`, the router's
    `router_weight` `[D', E]`, the experts' `fc1_weight` `[E, D, H]`,
    `fc1_bias` `[E, H]`, `fc2_weight` `[E, H, D]`, `fc2_bias` `[E, D]`,
    `noise` `[G, R, E]` (optional, with `noise_std`), and the
    router's attributes with its capacity C made explicit (`capacity`).
    `gate_input` `[G, S, D']` (optional; D' = D without it) is what the
    router reads when that is not `input` (cosine gates: the normalised,
    possibly projected tokens); the experts always read `input`.
    `output[g, s]` is `moe.combine`'s result: the sum over the experts that
    kept token s of its gate times the expert's FFN of the token. `logits`
    is the router's clean logits `[G, R, E]`; `counts[g, e]` is the number
    of tokens expert e processed in group g (dropped tokens not counted).

    The lowering never builds a `[S, E, C]` tensor. Per group, the routing
    decisions become O(S * k) metadata: every expert's rows are a segment of
    a row list, padded to a multiple of `row_tile` rows and placed one after
    the other (the offsets are a prefix sum of the padded counts); a row
    holds the token it came from and its gate. The first grouped GEMM
    gathers its row tile's tokens through the list as it loads them (bias
    and activation in its epilogue); the second scales its rows by their
    gates and adds them into the tokens' outputs. Each group is computed by
    one thread in a fixed order, so the result does not depend on the
    thread count.

    ```mlir
    %y, %l, %n = moe.routed_ffn token_choice gelu %x, %wr, %w1, %b1, %w2, %b2
        {k = 2 : i64, capacity = 32 : i64, capacity_factor = 1.25 : f64, row_tile = 8 : i64}
        : (tensor<8x50x64xf32>, tensor<64x4xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>,
           tensor<4x128x64xf32>, tensor<4x64xf32>)
        -> (tensor<8x50x64xf32>, tensor<8x50x4xf32>, tensor<8x4xf32>)
    ```
  }];
  let arguments = (ins MoE_RouterKind:$kind, MoE_Activation:$activation,
                   MoE_FloatTensor:$input, MoE_FloatTensor:$router_weight,
                   MoE_FloatTensor:$fc1_weight, MoE_FloatTensor:$fc1_bias,
                   MoE_FloatTensor:$fc2_weight, MoE_FloatTensor:$fc2_bias,
                   Optional<MoE_FloatTensor>:$noise,
                   Optional<MoE_FloatTensor>:$gate_input,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$k,
                   ConfinedAttr<I64Attr, [IntPositive]>:$capacity,
                   ConfinedAttr<I64Attr, [IntPositive]>:$row_tile,
                   OptionalAttr<F64Attr>:$capacity_factor,
                   OptionalAttr<F64Attr>:$noise_std,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$sinkhorn_iters,
                   UnitAttr:$batch_prioritized, UnitAttr:$class_token);
  let results = (outs MoE_FloatTensor:$output, MoE_FloatTensor:$logits,
                      MoE_FloatTensor:$counts);
  let assemblyFormat = [{
    $kind $activation $input `,` $router_weight `,` $fc1_weight `,` $fc1_bias `,`
    $fc2_weight `,` $fc2_bias (`noise` $noise^)? (`gate` $gate_input^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    int64_t getNumExperts();
    /// Rows of the padded row list of one group (see the description).
    int64_t getRowBound();
  }];
}

def MoE_RoutedFFNTrainOp : MoE_Op<"routed_ffn_train", [Pure, AttrSizedOperandSegments]> {
  let summary = "moe.routed_ffn that also returns what its backward reads.";
  let description = [{
    The forward op of training (moe.routed_ffn's VJP puts it in the place
    of a `moe.routed_ffn`). Operands, attributes, `output`, `logits` and
    `counts` are moe.routed_ffn's. With N the row bound of one group
    (`getRowBound`):

    * `gates` `[G, R, E]`: the softmax gates the router weighted with (of
      the noisy logits when there is noise);
    * `row_token`, `row_gate` `[G, N]`: each row's token and gate (0 and 0
      on padding rows);
    * `offsets` `[G, E]`: the first row of each expert's segment;
    * `hidden` and `dact` `[G, N, H]`: `act(a)` and `act'(a)` at
      `a = x[token] * fc1_weight[e] + fc1_bias[e]`;
    * `expert_out` `[G, N, D]`: the expert's output before the gate.

    Row entries past the end of a segment's padding are not written.
  }];
  let arguments = (ins MoE_RouterKind:$kind, MoE_Activation:$activation,
                   MoE_FloatTensor:$input, MoE_FloatTensor:$router_weight,
                   MoE_FloatTensor:$fc1_weight, MoE_FloatTensor:$fc1_bias,
                   MoE_FloatTensor:$fc2_weight, MoE_FloatTensor:$fc2_bias,
                   Optional<MoE_FloatTensor>:$noise,
                   Optional<MoE_FloatTensor>:$gate_input,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$k,
                   ConfinedAttr<I64Attr, [IntPositive]>:$capacity,
                   ConfinedAttr<I64Attr, [IntPositive]>:$row_tile,
                   OptionalAttr<F64Attr>:$capacity_factor,
                   OptionalAttr<F64Attr>:$noise_std,
                   OptionalAttr<ConfinedAttr<I64Attr, [IntPositive]>>:$sinkhorn_iters,
                   UnitAttr:$batch_prioritized, UnitAttr:$class_token);
  let results = (outs MoE_FloatTensor:$output, MoE_FloatTensor:$logits,
                      MoE_FloatTensor:$counts, MoE_FloatTensor:$gates,
                      MoE_FloatTensor:$row_token, MoE_FloatTensor:$row_gate,
                      MoE_FloatTensor:$offsets, MoE_FloatTensor:$hidden,
                      MoE_FloatTensor:$dact, MoE_FloatTensor:$expert_out);
  let assemblyFormat = [{
    $kind $activation $input `,` $router_weight `,` $fc1_weight `,` $fc1_bias `,`
    $fc2_weight `,` $fc2_bias (`noise` $noise^)? (`gate` $gate_input^)? attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
  let extraClassDeclaration = [{
    int64_t getNumExperts();
    int64_t getRowBound();
  }];
}

def MoE_RoutedFFNGradOp : MoE_Op<"routed_ffn_grad", [Pure]> {
  let summary = "Backward of the fused MoE layer through its row list, per group.";
  let description = [{
    From `output_grad` `[G, S, D]` (d loss / d output) and the residuals of
    moe.routed_ffn_train (`row_token`, `row_gate`, `offsets`, `counts`,
    `dact`, `expert_out`), with the experts' weights transposed
    (`fc1_weight_t` `[E, H, D]`, `fc2_weight_t` `[E, D, H]`), for every
    filled row r of expert e (token t, gate w):

    * `row_grad[r] = w * output_grad[t]` (`[G, N, D]`: d loss / d expert
      output, 0 on padding rows);
    * `hidden_grad[r] = dact[r] * (row_grad[r] * fc2_weight[e]^T)`
      (`[G, N, H]`: d loss / d a);
    * `input_grad[t] += hidden_grad[r] * fc1_weight[e]^T` (`[G, S, D]`,
      rows added in row order);
    * `gate_grad[t', e] = output_grad[t] . expert_out[r]` (`[G, R, E]`, one
      dot product per (token, choice); t' = t, or 0 for `per_image`
      routing, R = 1, where the products of all tokens add up).

    Padding rows of `row_grad` and `hidden_grad` are 0, so the weight
    gradients (moe.routed_ffn_weight_grad) may sum whole row tiles; rows
    past the last row tile of a segment are not written.
  }];
  let arguments = (ins MoE_FloatTensor:$output_grad,
                   MoE_FloatTensor:$fc1_weight_t, MoE_FloatTensor:$fc2_weight_t,
                   MoE_FloatTensor:$row_token, MoE_FloatTensor:$row_gate,
                   MoE_FloatTensor:$offsets, MoE_FloatTensor:$counts,
                   MoE_FloatTensor:$dact, MoE_FloatTensor:$expert_out,
                   ConfinedAttr<I64Attr, [IntPositive]>:$row_tile);
  let results = (outs MoE_FloatTensor:$input_grad, MoE_FloatTensor:$gate_grad,
                      MoE_FloatTensor:$hidden_grad, MoE_FloatTensor:$row_grad);
  let assemblyFormat = [{
    $output_grad `,` $fc1_weight_t `,` $fc2_weight_t `,` $row_token `,` $row_gate `,`
    $offsets `,` $counts `,` $dact `,` $expert_out attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

def MoE_RoutedFFNWeightGradOp : MoE_Op<"routed_ffn_weight_grad", [Pure]> {
  let summary = "The experts' weight gradients, over their filled rows only.";
  let description = [{
    From moe.routed_ffn_train's `input` `[G, S, D]`, `row_token` `[G, N]`
    and `hidden` `[G, N, H]`, moe.routed_ffn_grad's `hidden_grad`
    `[G, N, H]` and `row_grad` `[G, N, D]`, and the segments of the row
    lists expert-major (`offsets` and `counts` `[E, G]`: expert e's first
    row and filled rows in group g), the sums over every group's filled rows
    r of expert e (token t):

    * `fc1_weight_grad[e] = sum_r input[g, t]^T hidden_grad[g, r]`, `[E, D, H]`;
    * `fc1_bias_grad[e] = sum_r hidden_grad[g, r]`, `[E, H]`;
    * `fc2_weight_grad[e] = sum_r hidden[g, r]^T row_grad[g, r]`, `[E, H, D]`;
    * `fc2_bias_grad[e] = sum_r row_grad[g, r]`, `[E, D]`.

    The experts are independent: the kernel computes one expert per
    parallel step (reading every group's rows of it, in group order), so the
    sums do not depend on the thread count and need no per-thread partial
    copies of the weights. An expert's segments are read in whole row tiles
    of `row_tile` rows (their padding rows have zero gradients); unfilled
    slots cost nothing.
  }];
  let arguments = (ins MoE_FloatTensor:$input, MoE_FloatTensor:$row_token,
                   MoE_FloatTensor:$offsets, MoE_FloatTensor:$counts,
                   MoE_FloatTensor:$hidden, MoE_FloatTensor:$hidden_grad,
                   MoE_FloatTensor:$row_grad,
                   ConfinedAttr<I64Attr, [IntPositive]>:$row_tile);
  let results = (outs MoE_FloatTensor:$fc1_weight_grad, MoE_FloatTensor:$fc1_bias_grad,
                      MoE_FloatTensor:$fc2_weight_grad, MoE_FloatTensor:$fc2_bias_grad);
  let assemblyFormat = [{
    $input `,` $row_token `,` $offsets `,` $counts `,` $hidden `,` $hidden_grad `,`
    $row_grad attr-dict `:` functional-type(operands, results)
  }];
  let hasVerifier = 1;
}

#endif // MOEC_DIALECT_MOE_MOEROUTEDOPS_TD
