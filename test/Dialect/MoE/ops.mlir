// RUN: moec-opt %s | FileCheck %s
// Round trip through the generic form too (the custom printers and parsers
// must agree with the generic one).
// RUN: moec-opt %s --mlir-print-op-generic | moec-opt | FileCheck %s

// CHECK-LABEL: func.func @params
func.func @params() -> (tensor<64x192xf32>, tensor<192xf32>, tensor<64xf32>, tensor<64xf32>) {
  // CHECK: moe.param "blocks.0.attn.qkv.weight" init(trunc_normal, 2.000000e-02) : tensor<64x192xf32>
  %w = moe.param "blocks.0.attn.qkv.weight" init(trunc_normal, 2.000000e-02) : tensor<64x192xf32>
  // CHECK: moe.param "blocks.0.attn.qkv.bias" init(zeros) no_decay : tensor<192xf32>
  %b = moe.param "blocks.0.attn.qkv.bias" init(zeros) no_decay : tensor<192xf32>
  // CHECK: moe.param "norm.weight" init(ones) : tensor<64xf32>
  %g = moe.param "norm.weight" init(ones) : tensor<64xf32>
  // CHECK: moe.param "cls_token" init(normal, 9.9999999999999995E-7) : tensor<64xf32>
  %c = moe.param "cls_token" init(normal, 1.0e-6) : tensor<64xf32>
  return %w, %b, %g, %c : tensor<64x192xf32>, tensor<192xf32>, tensor<64xf32>, tensor<64xf32>
}

// Cosine gates and routing groups: a constant-initialised scale, the l2
// normalisations, the grouped view and a fused layer with a gate input.
// CHECK-LABEL: func.func @cosine_groups
func.func @cosine_groups(%h: tensor<4x3x8xf32>) -> tensor<4x3x8xf32> {
  // CHECK: moe.param "router.scale" init(constant = 1.000000e+01) no_decay : tensor<1xf32>
  %t = moe.param "router.scale" init(constant = 10.0) no_decay : tensor<1xf32>
  %w = moe.param "router.weight" init(trunc_normal, 2.500000e-01) : tensor<8x4xf32>
  // CHECK: %[[G:.*]] = moe.reshape %{{.*}} : (tensor<4x3x8xf32>) -> tensor<2x6x8xf32>
  %g = moe.reshape %h : (tensor<4x3x8xf32>) -> tensor<2x6x8xf32>
  // CHECK: %[[XN:.*]] = moe.l2_normalize %[[G]] {dim = 2 : i64, epsilon = 9.9999999999999995E-7 : f64} : (tensor<2x6x8xf32>) -> tensor<2x6x8xf32>
  %xn = moe.l2_normalize %g {dim = 2 : i64, epsilon = 1.0e-06 : f64} : (tensor<2x6x8xf32>) -> tensor<2x6x8xf32>
  // CHECK: %[[WN:.*]] = moe.l2_normalize %{{.*}} scale %{{.*}} {dim = 0 : i64, epsilon = 9.9999999999999995E-7 : f64} : (tensor<8x4xf32>, tensor<1xf32>) -> tensor<8x4xf32>
  %wn = moe.l2_normalize %w scale %t {dim = 0 : i64, epsilon = 1.0e-06 : f64} : (tensor<8x4xf32>, tensor<1xf32>) -> tensor<8x4xf32>
  %w1 = moe.param "w1" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "b1" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "w2" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "b2" init(zeros) : tensor<4x8xf32>
  // CHECK: moe.routed_ffn token_choice gelu %[[G]], %[[WN]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} gate %[[XN]] {capacity = 3 : i64, capacity_factor = 1.000000e+00 : f64, k = 2 : i64, row_tile = 3 : i64}
  %y, %l, %n = moe.routed_ffn token_choice gelu %g, %wn, %w1, %b1, %w2, %b2 gate %xn {k = 2 : i64, capacity = 3 : i64, capacity_factor = 1.0 : f64, row_tile = 3 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>, tensor<2x6x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  %yb = moe.reshape %y : (tensor<2x6x8xf32>) -> tensor<4x3x8xf32>
  return %yb : tensor<4x3x8xf32>
}

// CHECK-LABEL: func.func @vit_ops
func.func @vit_ops(%img: tensor<8x1x28x28xf32>, %wp: tensor<16x64xf32>, %bp: tensor<64xf32>,
                   %cls: tensor<64xf32>, %pos: tensor<50x64xf32>,
                   %wqkv: tensor<64x192xf32>, %bqkv: tensor<192xf32>,
                   %wo: tensor<64x64xf32>, %bo: tensor<64xf32>,
                   %w1: tensor<64x128xf32>, %b1: tensor<128xf32>,
                   %wh: tensor<64x10xf32>, %bh: tensor<10xf32>,
                   %labels: tensor<8xi32>) -> tensor<f32> {
  // CHECK: %[[T:.*]] = moe.patch_embed %{{.*}}, %{{.*}}, %{{.*}} {patch_size = 4 : i64} : (tensor<8x1x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<8x49x64xf32>
  %t = moe.patch_embed %img, %wp, %bp {patch_size = 4 : i64} : (tensor<8x1x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<8x49x64xf32>
  // CHECK: %[[X:.*]] = moe.class_token %[[T]], %{{.*}} : (tensor<8x49x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  %x = moe.class_token %t, %cls : (tensor<8x49x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  // CHECK: moe.pos_embed %[[X]], %{{.*}} : (tensor<8x50x64xf32>, tensor<50x64xf32>) -> tensor<8x50x64xf32>
  %x1 = moe.pos_embed %x, %pos : (tensor<8x50x64xf32>, tensor<50x64xf32>) -> tensor<8x50x64xf32>
  // CHECK: moe.layer_norm %{{.*}} {epsilon = 9.9999999999999995E-7 : f64} : (tensor<8x50x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  %h = moe.layer_norm %x1, %cls, %bo {epsilon = 1.0e-6 : f64} : (tensor<8x50x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  // CHECK: moe.attention %{{.*}} {heads = 4 : i64} : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  %a = moe.attention %h, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  // CHECK: %[[R:.*]] = moe.add %{{.*}}, %{{.*}} : tensor<8x50x64xf32>
  %r = moe.add %x1, %a : tensor<8x50x64xf32>
  // CHECK: moe.dense %[[R]], %{{.*}}, %{{.*}} : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>) -> tensor<8x50x128xf32>
  %u = moe.dense %r, %w1, %b1 : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>) -> tensor<8x50x128xf32>
  // CHECK: moe.dense %[[R]], %{{.*}} : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
  %u2 = moe.dense %r, %w1 : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
  // CHECK: moe.activation gelu %{{.*}} : tensor<8x50x128xf32>
  %v = moe.activation gelu %u : tensor<8x50x128xf32>
  // CHECK: moe.activation gelu_tanh
  %v1 = moe.activation gelu_tanh %v : tensor<8x50x128xf32>
  // CHECK: moe.activation relu
  %v2 = moe.activation relu %v1 : tensor<8x50x128xf32>
  // CHECK: moe.activation silu
  %v3 = moe.activation silu %v2 : tensor<8x50x128xf32>
  // CHECK: %{{.*}}, %{{.*}} = moe.activation_train gelu %{{.*}} : tensor<8x50x128xf32>
  %v4, %dv4 = moe.activation_train gelu %u : tensor<8x50x128xf32>
  // CHECK: moe.pool cls %[[R]] : tensor<8x50x64xf32> -> tensor<8x64xf32>
  %f = moe.pool cls %r : tensor<8x50x64xf32> -> tensor<8x64xf32>
  // CHECK: moe.pool mean %[[R]] : tensor<8x50x64xf32> -> tensor<8x64xf32>
  %fm = moe.pool mean %r : tensor<8x50x64xf32> -> tensor<8x64xf32>
  // CHECK: %[[L:.*]] = moe.classifier_head %{{.*}} : (tensor<8x64xf32>, tensor<64x10xf32>, tensor<10xf32>) -> tensor<8x10xf32>
  %logits = moe.classifier_head %f, %wh, %bh : (tensor<8x64xf32>, tensor<64x10xf32>, tensor<10xf32>) -> tensor<8x10xf32>
  // CHECK: moe.softmax_cross_entropy %[[L]], %{{.*}} {label_smoothing = 1.000000e-01 : f64} : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
  %loss = moe.softmax_cross_entropy %logits, %labels {label_smoothing = 0.1 : f64} : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
  // The default label smoothing (0) is not printed.
  // CHECK: moe.softmax_cross_entropy %[[L]], %{{.*}} : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
  %loss0 = moe.softmax_cross_entropy %logits, %labels : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
  return %loss : tensor<f32>
}

// Dynamic batch sizes verify too.
// CHECK-LABEL: func.func @dynamic_batch
func.func @dynamic_batch(%x: tensor<?x50x64xf32>, %w: tensor<64x128xf32>) -> tensor<?x50x128xf32> {
  // CHECK: moe.dense %{{.*}} : (tensor<?x50x64xf32>, tensor<64x128xf32>) -> tensor<?x50x128xf32>
  %y = moe.dense %x, %w : (tensor<?x50x64xf32>, tensor<64x128xf32>) -> tensor<?x50x128xf32>
  return %y : tensor<?x50x128xf32>
}

// One MoE layer with every router kind. 8 images x 50 tokens, E = 4.
// CHECK-LABEL: func.func @moe_layer
func.func @moe_layer(%x: tensor<8x50x64xf32>, %wr: tensor<64x4xf32>,
                     %w1: tensor<4x64x128xf32>, %b1: tensor<4x128xf32>,
                     %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>,
                     %sw1: tensor<64x128xf32>, %sb1: tensor<128xf32>,
                     %sw2: tensor<128x64xf32>, %sb2: tensor<64xf32>) -> tensor<8x50x64xf32> {
  // Token choice, k = 2, capacity ceil(2 * 50 * 2.0 / 4) = 50.
  // CHECK: %[[D:.*]], %[[C:.*]], %{{.*}} = moe.router token_choice %{{.*}}, %{{.*}} {capacity_factor = 2.000000e+00 : f64, k = 2 : i64, noise_std = 1.000000e+00 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x50x4xf32>)
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 2.0 : f64, noise_std = 1.0 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x50x4xf32>)
  // CHECK: %[[XS:.*]] = moe.dispatch %{{.*}}, %[[D]] : (tensor<8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<4x8x50x64xf32>
  %xs = moe.dispatch %x, %d : (tensor<8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<4x8x50x64xf32>
  // CHECK: %[[YS:.*]] = moe.experts gelu %[[XS]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> tensor<4x8x50x64xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> tensor<4x8x50x64xf32>
  // CHECK: moe.combine %[[YS]], %[[C]] : (tensor<4x8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<8x50x64xf32>
  %y = moe.combine %ys, %c : (tensor<4x8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<8x50x64xf32>
  // CHECK: moe.shared_expert gelu %{{.*}} : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>, tensor<128x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>
  %s = moe.shared_expert gelu %x, %sw1, %sb1, %sw2, %sb2 : (tensor<8x50x64xf32>, tensor<64x128xf32>, tensor<128xf32>, tensor<128x64xf32>, tensor<64xf32>) -> tensor<8x50x64xf32>

  // Expert choice: capacity ceil(50 * 1.0 / 4) = 13.
  // CHECK: moe.router expert_choice %{{.*}} {capacity_factor = 1.000000e+00 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x13xf32>, tensor<8x50x4x13xf32>, tensor<8x50x4xf32>)
  %d1, %c1, %l1 = moe.router expert_choice %x, %wr {capacity_factor = 1.0 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x13xf32>, tensor<8x50x4x13xf32>, tensor<8x50x4xf32>)
  // Sinkhorn, k = 1: capacity ceil(1 * 50 * 1.25 / 4) = 16.
  // CHECK: moe.router sinkhorn %{{.*}} {capacity_factor = 1.250000e+00 : f64, k = 1 : i64, sinkhorn_iters = 3 : i64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x16xf32>, tensor<8x50x4x16xf32>, tensor<8x50x4xf32>)
  %d2, %c2, %l2 = moe.router sinkhorn %x, %wr {k = 1 : i64, capacity_factor = 1.25 : f64, sinkhorn_iters = 3 : i64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x16xf32>, tensor<8x50x4x16xf32>, tensor<8x50x4xf32>)
  // Per image: one decision per image, every chosen expert takes all 50 tokens.
  // CHECK: moe.router per_image %{{.*}} {k = 1 : i64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x1x4xf32>)
  %d3, %c3, %l3 = moe.router per_image %x, %wr {k = 1 : i64} : (tensor<8x50x64xf32>, tensor<64x4xf32>) -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x1x4xf32>)
  return %y : tensor<8x50x64xf32>
}

// Soft MoE: 2 slots per expert, router weight [D, E*P].
// CHECK-LABEL: func.func @soft_router
func.func @soft_router(%x: tensor<8x50x64xf32>, %wr: tensor<64x8xf32>) -> tensor<8x50x4x2xf32> {
  // CHECK: moe.router soft %{{.*}} {slots_per_expert = 2 : i64} : (tensor<8x50x64xf32>, tensor<64x8xf32>) -> (tensor<8x50x4x2xf32>, tensor<8x50x4x2xf32>, tensor<8x50x8xf32>)
  %d, %c, %l = moe.router soft %x, %wr {slots_per_expert = 2 : i64} : (tensor<8x50x64xf32>, tensor<64x8xf32>) -> (tensor<8x50x4x2xf32>, tensor<8x50x4x2xf32>, tensor<8x50x8xf32>)
  return %d : tensor<8x50x4x2xf32>
}

// Training: noisy top-k takes standard normal noise [G, S, E].
// CHECK-LABEL: func.func @noisy_router
// CHECK-SAME: (%{{.*}}: tensor<8x50x64xf32>, %{{.*}}: tensor<64x4xf32>, %[[N:.*]]: tensor<8x50x4xf32>)
func.func @noisy_router(%x: tensor<8x50x64xf32>, %wr: tensor<64x4xf32>, %noise: tensor<8x50x4xf32>) -> tensor<8x50x4x32xf32> {
  // CHECK: moe.router token_choice %{{.*}}, %{{.*}} noise %[[N]] {capacity_factor = 1.250000e+00 : f64, k = 2 : i64, noise_std = 1.000000e+00 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>, tensor<8x50x4xf32>) -> (tensor<8x50x4x32xf32>, tensor<8x50x4x32xf32>, tensor<8x50x4xf32>)
  %d, %c, %l = moe.router token_choice %x, %wr noise %noise {k = 2 : i64, capacity_factor = 1.25 : f64, noise_std = 1.0 : f64} : (tensor<8x50x64xf32>, tensor<64x4xf32>, tensor<8x50x4xf32>) -> (tensor<8x50x4x32xf32>, tensor<8x50x4x32xf32>, tensor<8x50x4xf32>)
  return %d : tensor<8x50x4x32xf32>
}

// Losses and metrics of the training entry points.
// CHECK-LABEL: func.func @losses_and_metrics
// CHECK-SAME: (%[[L:[^:]*]]: tensor<8x50x4xf32>, %[[N:[^:]*]]: tensor<8x50x4xf32>, %[[IL:[^:]*]]: tensor<8x1x4xf32>, %[[Y:[^:]*]]: tensor<8xi32>, %[[LOGITS:[^:]*]]: tensor<8x10xf32>, %[[M:[^:]*]]: tensor<8xf32>, %[[D:[^:]*]]: tensor<8x50x4x32xf32>)
func.func @losses_and_metrics(%l: tensor<8x50x4xf32>, %noise: tensor<8x50x4xf32>,
                              %il: tensor<8x1x4xf32>, %labels: tensor<8xi32>,
                              %logits: tensor<8x10xf32>, %mask: tensor<8xf32>,
                              %d: tensor<8x50x4x32xf32>)
    -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<4xf32>, tensor<4xf32>) {
  // CHECK: %[[IMP:.*]] = moe.aux_loss importance %[[L]] {weight = 5.000000e-03 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  %imp = moe.aux_loss importance %l {weight = 5.0e-03 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  // CHECK: %[[LOAD:.*]] = moe.aux_loss load %[[L]] noise %[[N]] {k = 2 : i64, noise_std = 1.000000e+00 : f64, weight = 5.000000e-03 : f64} : (tensor<8x50x4xf32>, tensor<8x50x4xf32>) -> tensor<f32>
  %load = moe.aux_loss load %l noise %noise {k = 2 : i64, noise_std = 1.0 : f64, weight = 5.0e-03 : f64} : (tensor<8x50x4xf32>, tensor<8x50x4xf32>) -> tensor<f32>
  // CHECK: %[[BAL:.*]] = moe.aux_loss balance %[[L]] {weight = 1.000000e-02 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  %bal = moe.aux_loss balance %l {weight = 1.0e-02 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  // Balance of noisy gates.
  // CHECK: moe.aux_loss balance %[[L]] noise %[[N]] {noise_std = 1.000000e+00 : f64, weight = 1.000000e-02 : f64} : (tensor<8x50x4xf32>, tensor<8x50x4xf32>) -> tensor<f32>
  %baln = moe.aux_loss balance %l noise %noise {noise_std = 1.0 : f64, weight = 1.0e-02 : f64} : (tensor<8x50x4xf32>, tensor<8x50x4xf32>) -> tensor<f32>
  // CHECK: %[[Z:.*]] = moe.aux_loss z_loss %[[L]] {weight = 1.000000e-03 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  %z = moe.aux_loss z_loss %l {weight = 1.0e-03 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  // CHECK: %[[SC:.*]] = moe.aux_loss super_class %[[IL]] labels %[[Y]] {super_class_map = array<i64: 0, 0, 1, 1, 2, 2, 3, 3, 0, 1>, weight = 3.000000e-01 : f64} : (tensor<8x1x4xf32>, tensor<8xi32>) -> tensor<f32>
  %sc = moe.aux_loss super_class %il labels %labels {super_class_map = array<i64: 0, 0, 1, 1, 2, 2, 3, 3, 0, 1>, weight = 0.3 : f64} : (tensor<8x1x4xf32>, tensor<8xi32>) -> tensor<f32>
  // A weight of 0 is allowed.
  // CHECK: moe.aux_loss importance %[[L]] {weight = 0.000000e+00 : f64}
  %zero = moe.aux_loss importance %l {weight = 0.0 : f64} : (tensor<8x50x4xf32>) -> tensor<f32>
  // Sums of any number of 0-d losses, none included.
  // CHECK: %[[AUX:.*]] = moe.sum_losses %[[IMP]], %[[LOAD]], %[[BAL]], %[[Z]], %[[SC]] : (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<f32>
  %aux = moe.sum_losses %imp, %load, %bal, %z, %sc : (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) -> tensor<f32>
  // CHECK: moe.sum_losses %[[AUX]] : (tensor<f32>) -> tensor<f32>
  %one = moe.sum_losses %aux : (tensor<f32>) -> tensor<f32>
  // CHECK: moe.sum_losses : () -> tensor<f32>
  %none = moe.sum_losses : () -> tensor<f32>
  // CHECK: %[[LS:.*]], %[[C:.*]] = moe.classification_metrics %[[LOGITS]], %[[Y]] : (tensor<8x10xf32>, tensor<8xi32>) -> (tensor<f32>, tensor<f32>)
  %ls, %c = moe.classification_metrics %logits, %labels : (tensor<8x10xf32>, tensor<8xi32>) -> (tensor<f32>, tensor<f32>)
  // CHECK: moe.classification_metrics %[[LOGITS]], %[[Y]] mask %[[M]] : (tensor<8x10xf32>, tensor<8xi32>, tensor<8xf32>) -> (tensor<f32>, tensor<f32>)
  %lsm, %cm = moe.classification_metrics %logits, %labels mask %mask : (tensor<8x10xf32>, tensor<8xi32>, tensor<8xf32>) -> (tensor<f32>, tensor<f32>)
  // CHECK: moe.routing_counts %[[D]] : (tensor<8x50x4x32xf32>) -> tensor<4xf32>
  %n = moe.routing_counts %d : (tensor<8x50x4x32xf32>) -> tensor<4xf32>
  // CHECK: moe.routing_counts %[[D]] mask %[[M]] : (tensor<8x50x4x32xf32>, tensor<8xf32>) -> tensor<4xf32>
  %nm = moe.routing_counts %d mask %mask : (tensor<8x50x4x32xf32>, tensor<8xf32>) -> tensor<4xf32>
  return %aux, %one, %none, %ls, %cm, %zero, %n, %nm : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<4xf32>, tensor<4xf32>
}

// The training forward of attention (its residuals) and the attention
// core's backward (both built by moe.attention's VJP).
// CHECK-LABEL: func.func @attention_train
func.func @attention_train(%x: tensor<8x50x64xf32>, %wqkv: tensor<64x192xf32>, %bqkv: tensor<192xf32>, %wo: tensor<64x64xf32>, %bo: tensor<64xf32>) -> (tensor<8x50x64xf32>, tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>) {
  // CHECK: %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} = moe.attention_train %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {heads = 4 : i64} : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> (tensor<8x50x64xf32>, tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>)
  %y, %qkv, %o, %lse = moe.attention_train %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<8x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> (tensor<8x50x64xf32>, tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>)
  return %y, %qkv, %o, %lse : tensor<8x50x64xf32>, tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>
}

// CHECK-LABEL: func.func @experts_train
func.func @experts_train(%xs: tensor<4x8x50x64xf32>, %w1: tensor<4x64x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>) -> (tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>) {
  // CHECK: %{{.*}}, %{{.*}}, %{{.*}} = moe.experts_train gelu %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> (tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>)
  %ys, %dact, %hid = moe.experts_train gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> (tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>)
  return %ys, %dact, %hid : tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>
}

// CHECK-LABEL: func.func @attention_grad
func.func @attention_grad(%qkv: tensor<8x50x192xf32>, %o: tensor<8x50x64xf32>, %lse: tensor<8x4x50xf32>, %dheads: tensor<8x50x64xf32>) -> tensor<8x50x192xf32> {
  // CHECK: %{{.*}} = moe.attention_grad %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}} {heads = 4 : i64} : (tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>, tensor<8x50x64xf32>) -> tensor<8x50x192xf32>
  %dqkv = moe.attention_grad %qkv, %o, %lse, %dheads {heads = 4 : i64} : (tensor<8x50x192xf32>, tensor<8x50x64xf32>, tensor<8x4x50xf32>, tensor<8x50x64xf32>) -> tensor<8x50x192xf32>
  return %dqkv : tensor<8x50x192xf32>
}
