// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-fuse-routing))' | FileCheck %s
// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-fuse-routing{row-tile=4}))' | FileCheck %s --check-prefix=TILE4

// A token-choice layer with router noise: one moe.routed_ffn in the
// combine's place, with the router's capacity made explicit; the aux loss
// reads the fused op's logits, and the layer's output feeds the residual.
// CHECK-LABEL: func.func @token_choice
// CHECK-SAME: (%[[X:.*]]: tensor<2x6x8xf32>, %[[N:.*]]: tensor<2x6x4xf32>)
// CHECK-NOT: moe.router token_choice
// CHECK-NOT: moe.dispatch
// CHECK-NOT: moe.experts gelu
// CHECK-NOT: moe.combine
// CHECK: %[[Y:.*]], %[[L:.*]], %{{.*}} = moe.routed_ffn token_choice gelu %[[X]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} noise %[[N]]
// CHECK-SAME: {capacity = 3 : i64, capacity_factor = 1.000000e+00 : f64, k = 2 : i64, noise_std = 1.000000e+00 : f64, row_tile = 3 : i64}
// CHECK-SAME: -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
// CHECK: %[[R:.*]] = moe.add %[[Y]], %[[X]]
// CHECK: moe.aux_loss importance %[[L]]
// Row tiles are at most the capacity (8 by default).
// TILE4-LABEL: func.func @token_choice
// TILE4: row_tile = 3 : i64
func.func @token_choice(%x: tensor<2x6x8xf32>, %noise: tensor<2x6x4xf32>) -> (tensor<2x6x8xf32>, tensor<f32>) {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr noise %noise {k = 2 : i64, capacity_factor = 1.0 : f64, noise_std = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<2x6x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  %r = moe.add %y, %x : tensor<2x6x8xf32>
  %aux = moe.aux_loss importance %l {weight = 1.0e-02 : f64} : (tensor<2x6x4xf32>) -> tensor<f32>
  return %r, %aux : tensor<2x6x8xf32>, tensor<f32>
}

// -----

// A shared expert beside the routed ones stays its own op (a dense FFN
// over every token); the routed part is fused and the two outputs are
// added as before. Eval's routing counts read the fused op's per-group
// counts instead of the dispatch tensor.
// CHECK-LABEL: func.func @shared_and_counts
// CHECK: %[[S:.*]] = moe.shared_expert gelu
// CHECK: %[[Y:.*]], %{{.*}}, %[[C:.*]] = moe.routed_ffn expert_choice relu
// CHECK-SAME: {capacity = 3 : i64, capacity_factor = 1.000000e+00 : f64, row_tile = 3 : i64}
// CHECK: moe.add %[[S]], %[[Y]]
// CHECK: moe.routing_counts %[[C]] mask %{{.*}} : (tensor<2x4xf32>, tensor<2xf32>) -> tensor<4xf32>
func.func @shared_and_counts(%x: tensor<2x12x8xf32>, %mask: tensor<2xf32>) -> (tensor<2x12x8xf32>, tensor<4xf32>) {
  %sw1 = moe.param "moe.shared.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<8x16xf32>
  %sb1 = moe.param "moe.shared.fc1.bias" init(zeros) : tensor<16xf32>
  %sw2 = moe.param "moe.shared.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<16x8xf32>
  %sb2 = moe.param "moe.shared.fc2.bias" init(zeros) : tensor<8xf32>
  %s = moe.shared_expert gelu %x, %sw1, %sb1, %sw2, %sb2 : (tensor<2x12x8xf32>, tensor<8x16xf32>, tensor<16xf32>, tensor<16x8xf32>, tensor<8xf32>) -> tensor<2x12x8xf32>
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router expert_choice %x, %wr {capacity_factor = 1.0 : f64} : (tensor<2x12x8xf32>, tensor<8x4xf32>) -> (tensor<2x12x4x3xf32>, tensor<2x12x4x3xf32>, tensor<2x12x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x12x8xf32>, tensor<2x12x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts relu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x12x4x3xf32>) -> tensor<2x12x8xf32>
  %sum = moe.add %s, %y : tensor<2x12x8xf32>
  %n = moe.routing_counts %d mask %mask : (tensor<2x12x4x3xf32>, tensor<2xf32>) -> tensor<4xf32>
  return %sum, %n : tensor<2x12x8xf32>, tensor<4xf32>
}

// -----

// Sinkhorn and per-image routers fuse too; per-image logits are [G, 1, E].
// CHECK-LABEL: func.func @sinkhorn_and_per_image
// CHECK: moe.routed_ffn sinkhorn gelu
// CHECK-SAME: {capacity = 6 : i64, capacity_factor = 2.000000e+00 : f64, k = 1 : i64, row_tile = 6 : i64, sinkhorn_iters = 3 : i64}
// TILE4-LABEL: func.func @sinkhorn_and_per_image
// TILE4: row_tile = 4 : i64
// TILE4: row_tile = 4 : i64
// CHECK: moe.routed_ffn per_image gelu
// CHECK-SAME: {capacity = 12 : i64, k = 2 : i64, row_tile = 8 : i64}
// CHECK-SAME: -> (tensor<2x12x8xf32>, tensor<2x1x4xf32>, tensor<2x4xf32>)
func.func @sinkhorn_and_per_image(%x: tensor<2x12x8xf32>) -> tensor<2x12x8xf32> {
  %wr = moe.param "a.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %w1 = moe.param "a.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "a.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "a.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "a.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %d, %c, %l = moe.router sinkhorn %x, %wr {k = 1 : i64, capacity_factor = 2.0 : f64, sinkhorn_iters = 3 : i64} : (tensor<2x12x8xf32>, tensor<8x4xf32>) -> (tensor<2x12x4x6xf32>, tensor<2x12x4x6xf32>, tensor<2x12x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x12x8xf32>, tensor<2x12x4x6xf32>) -> tensor<4x2x6x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x6x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x6x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x6x8xf32>, tensor<2x12x4x6xf32>) -> tensor<2x12x8xf32>
  %d2, %c2, %l2 = moe.router per_image %y, %wr {k = 2 : i64} : (tensor<2x12x8xf32>, tensor<8x4xf32>) -> (tensor<2x12x4x12xf32>, tensor<2x12x4x12xf32>, tensor<2x1x4xf32>)
  %xs2 = moe.dispatch %y, %d2 : (tensor<2x12x8xf32>, tensor<2x12x4x12xf32>) -> tensor<4x2x12x8xf32>
  %ys2 = moe.experts gelu %xs2, %w1, %b1, %w2, %b2 : (tensor<4x2x12x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x12x8xf32>
  %y2 = moe.combine %ys2, %c2 : (tensor<4x2x12x8xf32>, tensor<2x12x4x12xf32>) -> tensor<2x12x8xf32>
  return %y2 : tensor<2x12x8xf32>
}

// -----

// Soft MoE is left alone: its dispatch weights are dense, every slot a mix
// of all tokens, so there is no row list to gather through.
// CHECK-LABEL: func.func @soft
// CHECK-NOT: moe.routed_ffn
// CHECK: moe.router soft
// CHECK: moe.dispatch
// CHECK: moe.experts
// CHECK: moe.combine
func.func @soft(%x: tensor<2x6x8xf32>) -> tensor<2x6x8xf32> {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x8xf32>
  %d, %c, %l = moe.router soft %x, %wr {slots_per_expert = 2 : i64} : (tensor<2x6x8xf32>, tensor<8x8xf32>) -> (tensor<2x6x4x2xf32>, tensor<2x6x4x2xf32>, tensor<2x6x8xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x2xf32>) -> tensor<4x2x2x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x2x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x2x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x2x8xf32>, tensor<2x6x4x2xf32>) -> tensor<2x6x8xf32>
  return %y : tensor<2x6x8xf32>
}

// -----

// Routing tensors with other users keep the layer unfused: here the
// experts' slots are also returned, and in the next function the combine
// tensor is.
// CHECK-LABEL: func.func @slots_escape
// CHECK-NOT: moe.routed_ffn
// CHECK: moe.router token_choice
// CHECK-LABEL: func.func @combine_escapes
// CHECK-NOT: moe.routed_ffn
// CHECK: moe.router token_choice
func.func @slots_escape(%x: tensor<2x6x8xf32>) -> (tensor<2x6x8xf32>, tensor<4x2x3x8xf32>) {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  return %y, %xs : tensor<2x6x8xf32>, tensor<4x2x3x8xf32>
}
func.func @combine_escapes(%x: tensor<2x6x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  return %y, %c : tensor<2x6x8xf32>, tensor<2x6x4x3xf32>
}

// -----

// The dispatch reads other tokens than the router ranked (as with cosine
// gates, whose router reads the normalised tokens): the fused layer's
// experts read the dispatched tokens, its router the gate input. A logits
// user before the combine would have to move: left unfused.
// CHECK-LABEL: func.func @other_tokens
// CHECK-SAME: (%[[X:[^:]+]]: tensor<2x6x8xf32>, %[[Z:[^:]+]]: tensor<2x6x8xf32>)
// CHECK: moe.routed_ffn token_choice gelu %[[Z]], %{{.*}} gate %[[X]] {{{.*}}} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>, tensor<2x6x8xf32>)
// CHECK-LABEL: func.func @logits_early
// CHECK-NOT: moe.routed_ffn
// CHECK: moe.aux_loss
// CHECK: moe.combine
func.func @other_tokens(%x: tensor<2x6x8xf32>, %z: tensor<2x6x8xf32>) -> tensor<2x6x8xf32> {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %xs = moe.dispatch %z, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  return %y : tensor<2x6x8xf32>
}
func.func @logits_early(%x: tensor<2x6x8xf32>) -> (tensor<2x6x8xf32>, tensor<f32>) {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %aux = moe.aux_loss importance %l {weight = 1.0e-02 : f64} : (tensor<2x6x4xf32>) -> tensor<f32>
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  return %y, %aux : tensor<2x6x8xf32>, tensor<f32>
}
