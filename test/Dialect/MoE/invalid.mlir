// RUN: moec-opt %s --split-input-file --verify-diagnostics
// Every verifier message of the moe dialect, one case each.

func.func @param_empty_name() -> tensor<4xf32> {
  // expected-error @+1 {{expects a non-empty parameter name}}
  %0 = moe.param "" init(zeros) : tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @param_dynamic() -> tensor<?xf32> {
  // expected-error @+1 {{expects a statically shaped parameter, got 'tensor<?xf32>'}}
  %0 = moe.param "w" init(zeros) : tensor<?xf32>
  return %0 : tensor<?xf32>
}

// -----

func.func @param_missing_std() -> tensor<4xf32> {
  // expected-error @+1 {{expects a std for trunc_normal initialisation}}
  %0 = moe.param "w" init(trunc_normal) : tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @param_unexpected_std() -> tensor<4xf32> {
  // expected-error @+1 {{expects no std for ones initialisation}}
  %0 = moe.param "w" init(ones, 1.0) : tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @param_constant_without_value() -> tensor<1xf32> {
  // expected-error @+1 {{expects a value for constant initialisation}}
  %0 = moe.param "t" init(constant) : tensor<1xf32>
  return %0 : tensor<1xf32>
}

// -----

func.func @param_value_not_constant() -> tensor<1xf32> {
  // expected-error @+1 {{takes a value only for constant initialisation}}
  %0 = moe.param "t" init(ones = 2.0) : tensor<1xf32>
  return %0 : tensor<1xf32>
}

// -----

func.func @reshape_count(%x: tensor<4x5x8xf32>) -> tensor<2x9x8xf32> {
  // expected-error @+1 {{expects a result with the input's element type and number of elements (160), got 'tensor<2x9x8xf32>'}}
  %0 = moe.reshape %x : (tensor<4x5x8xf32>) -> tensor<2x9x8xf32>
  return %0 : tensor<2x9x8xf32>
}

// -----

func.func @l2_normalize_dim(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects dim < rank (2), got 2}}
  %0 = moe.l2_normalize %x {dim = 2 : i64, epsilon = 1.0e-06 : f64} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @l2_normalize_scale(%x: tensor<4x8xf32>, %s: tensor<2xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects a scale of type tensor<1xf32>, got 'tensor<2xf32>'}}
  %0 = moe.l2_normalize %x scale %s {dim = 0 : i64, epsilon = 1.0e-06 : f64} : (tensor<4x8xf32>, tensor<2xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @l2_normalize_epsilon(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  // expected-error @+1 {{expects a positive epsilon, got 0}}
  %0 = moe.l2_normalize %x {dim = 1 : i64, epsilon = 0.0 : f64} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %0 : tensor<4x8xf32>
}

// -----

func.func @routing_counts_group_mask(%d: tensor<2x6x4x3xf32>, %m: tensor<5xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{expects mask [2] or, for routing groups of n images, [2 * n]}}
  %0 = moe.routing_counts %d mask %m : (tensor<2x6x4x3xf32>, tensor<5xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @param_negative_std() -> tensor<4xf32> {
  // expected-error @+1 {{expects a positive std, got -1}}
  %0 = moe.param "w" init(normal, -1.0) : tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @element_types(%x: tensor<2x50x64xf32>, %w: tensor<64x8xf16>) -> tensor<2x50x8xf32> {
  // expected-error @+1 {{expects every float operand and result to have element type 'f32', but operand #1 has 'f16'}}
  %0 = moe.dense %x, %w : (tensor<2x50x64xf32>, tensor<64x8xf16>) -> tensor<2x50x8xf32>
  return %0 : tensor<2x50x8xf32>
}

// -----

func.func @result_shape(%x: tensor<2x50x64xf32>, %w: tensor<64x8xf32>) -> tensor<2x50x9xf32> {
  // expected-error @+1 {{expects result #0 of shape 2x50x8, got 2x50x9}}
  %0 = moe.dense %x, %w : (tensor<2x50x64xf32>, tensor<64x8xf32>) -> tensor<2x50x9xf32>
  return %0 : tensor<2x50x9xf32>
}

// -----

func.func @patch_rank(%img: tensor<1x28x28xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>) -> tensor<1x49x64xf32> {
  // expected-error @+1 {{expects input of rank 4 ([N, C, H, W]), got rank 3}}
  %0 = moe.patch_embed %img, %w, %b {patch_size = 4 : i64} : (tensor<1x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<1x49x64xf32>
  return %0 : tensor<1x49x64xf32>
}

// -----

func.func @patch_divides(%img: tensor<1x1x28x28xf32>, %w: tensor<25x64xf32>, %b: tensor<64xf32>) -> tensor<1x25x64xf32> {
  // expected-error @+1 {{expects patch_size 5 to divide the image height and width, got 28x28}}
  %0 = moe.patch_embed %img, %w, %b {patch_size = 5 : i64} : (tensor<1x1x28x28xf32>, tensor<25x64xf32>, tensor<64xf32>) -> tensor<1x25x64xf32>
  return %0 : tensor<1x25x64xf32>
}

// -----

func.func @patch_weight(%img: tensor<1x3x28x28xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>) -> tensor<1x49x64xf32> {
  // expected-error @+1 {{expects weight of shape 48x64 (rows = channels * patch_size^2), got 16x64}}
  %0 = moe.patch_embed %img, %w, %b {patch_size = 4 : i64} : (tensor<1x3x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<1x49x64xf32>
  return %0 : tensor<1x49x64xf32>
}

// -----

func.func @patch_size_positive(%img: tensor<1x1x28x28xf32>, %w: tensor<16x64xf32>, %b: tensor<64xf32>) -> tensor<1x49x64xf32> {
  // expected-error @+1 {{attribute 'patch_size' failed to satisfy constraint}}
  %0 = moe.patch_embed %img, %w, %b {patch_size = 0 : i64} : (tensor<1x1x28x28xf32>, tensor<16x64xf32>, tensor<64xf32>) -> tensor<1x49x64xf32>
  return %0 : tensor<1x49x64xf32>
}

// -----

func.func @class_token(%x: tensor<2x49x64xf32>, %t: tensor<32xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects token of shape 64, got 32}}
  %0 = moe.class_token %x, %t : (tensor<2x49x64xf32>, tensor<32xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @class_token_result(%x: tensor<2x49x64xf32>, %t: tensor<64xf32>) -> tensor<2x49x64xf32> {
  // expected-error @+1 {{expects result #0 of shape 2x50x64, got 2x49x64}}
  %0 = moe.class_token %x, %t : (tensor<2x49x64xf32>, tensor<64xf32>) -> tensor<2x49x64xf32>
  return %0 : tensor<2x49x64xf32>
}

// -----

func.func @pos_embed(%x: tensor<2x50x64xf32>, %p: tensor<49x64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects embedding of shape 50x64, got 49x64}}
  %0 = moe.pos_embed %x, %p : (tensor<2x50x64xf32>, tensor<49x64xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @layer_norm_scalar(%x: tensor<f32>, %g: tensor<64xf32>) -> tensor<f32> {
  // expected-error @+1 {{expects input of rank >= 1, got a scalar}}
  %0 = moe.layer_norm %x, %g, %g {epsilon = 1.0e-6 : f64} : (tensor<f32>, tensor<64xf32>, tensor<64xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @layer_norm_eps(%x: tensor<2x64xf32>, %g: tensor<64xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{expects a positive epsilon, got 0}}
  %0 = moe.layer_norm %x, %g, %g {epsilon = 0.0 : f64} : (tensor<2x64xf32>, tensor<64xf32>, tensor<64xf32>) -> tensor<2x64xf32>
  return %0 : tensor<2x64xf32>
}

// -----

func.func @layer_norm_gamma(%x: tensor<2x64xf32>, %g: tensor<32xf32>, %b: tensor<64xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{expects gamma of shape 64, got 32}}
  %0 = moe.layer_norm %x, %g, %b {epsilon = 1.0e-6 : f64} : (tensor<2x64xf32>, tensor<32xf32>, tensor<64xf32>) -> tensor<2x64xf32>
  return %0 : tensor<2x64xf32>
}

// -----

func.func @attention_heads(%x: tensor<2x50x64xf32>, %wqkv: tensor<64x192xf32>, %bqkv: tensor<192xf32>, %wo: tensor<64x64xf32>, %bo: tensor<64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects heads (5) to divide the width 64}}
  %0 = moe.attention %x, %wqkv, %bqkv, %wo, %bo {heads = 5 : i64} : (tensor<2x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @attention_qkv(%x: tensor<2x50x64xf32>, %wqkv: tensor<64x128xf32>, %bqkv: tensor<192xf32>, %wo: tensor<64x64xf32>, %bo: tensor<64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects qkv_weight of shape 64x192, got 64x128}}
  %0 = moe.attention %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<2x50x64xf32>, tensor<64x128xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @attention_grad_heads(%qkv: tensor<2x50x192xf32>, %o: tensor<2x50x64xf32>, %lse: tensor<2x5x50xf32>, %d: tensor<2x50x64xf32>) -> tensor<2x50x192xf32> {
  // expected-error @+1 {{expects heads (5) to divide the model width 64}}
  %0 = moe.attention_grad %qkv, %o, %lse, %d {heads = 5 : i64} : (tensor<2x50x192xf32>, tensor<2x50x64xf32>, tensor<2x5x50xf32>, tensor<2x50x64xf32>) -> tensor<2x50x192xf32>
  return %0 : tensor<2x50x192xf32>
}

// -----

func.func @attention_grad_qkv(%qkv: tensor<2x50x128xf32>, %o: tensor<2x50x64xf32>, %lse: tensor<2x4x50xf32>, %d: tensor<2x50x64xf32>) -> tensor<2x50x128xf32> {
  // expected-error @+1 {{expects qkv [2, 50, 192] for images [2, 50, 64] and 4 heads, got [2, 50, 128]}}
  %0 = moe.attention_grad %qkv, %o, %lse, %d {heads = 4 : i64} : (tensor<2x50x128xf32>, tensor<2x50x64xf32>, tensor<2x4x50xf32>, tensor<2x50x64xf32>) -> tensor<2x50x128xf32>
  return %0 : tensor<2x50x128xf32>
}

// -----

func.func @attention_grad_lse(%qkv: tensor<2x50x192xf32>, %o: tensor<2x50x64xf32>, %lse: tensor<2x50x4xf32>, %d: tensor<2x50x64xf32>) -> tensor<2x50x192xf32> {
  // expected-error @+1 {{expects lse [2, 4, 50] for images [2, 50, 64] and 4 heads, got [2, 50, 4]}}
  %0 = moe.attention_grad %qkv, %o, %lse, %d {heads = 4 : i64} : (tensor<2x50x192xf32>, tensor<2x50x64xf32>, tensor<2x50x4xf32>, tensor<2x50x64xf32>) -> tensor<2x50x192xf32>
  return %0 : tensor<2x50x192xf32>
}

// -----

func.func @attention_grad_result(%qkv: tensor<2x50x192xf32>, %o: tensor<2x50x64xf32>, %lse: tensor<2x4x50xf32>, %d: tensor<2x50x64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects dqkv shaped like qkv [2, 50, 192], got [2, 50, 64]}}
  %0 = moe.attention_grad %qkv, %o, %lse, %d {heads = 4 : i64} : (tensor<2x50x192xf32>, tensor<2x50x64xf32>, tensor<2x4x50xf32>, tensor<2x50x64xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @attention_train_output(%x: tensor<2x50x64xf32>, %wqkv: tensor<64x192xf32>, %bqkv: tensor<192xf32>, %wo: tensor<64x64xf32>, %bo: tensor<64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects output [2, 50, 64] for images [2, 50, 64] and 4 heads, got [2, 50, 192]}}
  %y, %qkv, %o, %lse = moe.attention_train %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<2x50x64xf32>, tensor<64x192xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> (tensor<2x50x64xf32>, tensor<2x50x192xf32>, tensor<2x50x192xf32>, tensor<2x4x50xf32>)
  return %y : tensor<2x50x64xf32>
}

// -----

func.func @attention_train_weight(%x: tensor<2x50x64xf32>, %wqkv: tensor<64x128xf32>, %bqkv: tensor<192xf32>, %wo: tensor<64x64xf32>, %bo: tensor<64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{qkv_weight}}
  %y, %qkv, %o, %lse = moe.attention_train %x, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<2x50x64xf32>, tensor<64x128xf32>, tensor<192xf32>, tensor<64x64xf32>, tensor<64xf32>) -> (tensor<2x50x64xf32>, tensor<2x50x192xf32>, tensor<2x50x64xf32>, tensor<2x4x50xf32>)
  return %y : tensor<2x50x64xf32>
}

// -----

func.func @experts_train_hidden(%xs: tensor<4x8x50x64xf32>, %w1: tensor<4x64x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>) -> tensor<4x8x50x64xf32> {
  // expected-error @+1 {{expects hidden [4, 8, 50, 128] (slots [E, G, C] of the input, fc1's width), got [4, 8, 50, 64]}}
  %ys, %dact, %hid = moe.experts_train gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> (tensor<4x8x50x64xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x64xf32>)
  return %ys : tensor<4x8x50x64xf32>
}

// -----

func.func @experts_train_result(%xs: tensor<4x8x50x64xf32>, %w1: tensor<4x64x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>) -> tensor<4x8x50x32xf32> {
  // expected-error @+1 {{expects result #0 of shape}}
  %ys, %dact, %hid = moe.experts_train gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x8x50x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> (tensor<4x8x50x32xf32>, tensor<4x8x50x128xf32>, tensor<4x8x50x128xf32>)
  return %ys : tensor<4x8x50x32xf32>
}

// -----

func.func @dense_scalar(%x: tensor<f32>, %w: tensor<64x8xf32>) -> tensor<8xf32> {
  // expected-error @+1 {{expects input of rank >= 1, got a scalar}}
  %0 = moe.dense %x, %w : (tensor<f32>, tensor<64x8xf32>) -> tensor<8xf32>
  return %0 : tensor<8xf32>
}

// -----

func.func @dense_weight_rank(%x: tensor<2x64xf32>, %w: tensor<64xf32>) -> tensor<2x8xf32> {
  // expected-error @+1 {{expects weight of rank 2 ([K, M]), got rank 1}}
  %0 = moe.dense %x, %w : (tensor<2x64xf32>, tensor<64xf32>) -> tensor<2x8xf32>
  return %0 : tensor<2x8xf32>
}

// -----

func.func @dense_rows(%x: tensor<2x64xf32>, %w: tensor<32x8xf32>) -> tensor<2x8xf32> {
  // expected-error @+1 {{expects weight rows (32) to match the input's last dimension (64)}}
  %0 = moe.dense %x, %w : (tensor<2x64xf32>, tensor<32x8xf32>) -> tensor<2x8xf32>
  return %0 : tensor<2x8xf32>
}

// -----

func.func @dense_bias(%x: tensor<2x64xf32>, %w: tensor<64x8xf32>, %b: tensor<4xf32>) -> tensor<2x8xf32> {
  // expected-error @+1 {{expects bias of shape 8, got 4}}
  %0 = moe.dense %x, %w, %b : (tensor<2x64xf32>, tensor<64x8xf32>, tensor<4xf32>) -> tensor<2x8xf32>
  return %0 : tensor<2x8xf32>
}

// -----

func.func @pool_rank(%x: tensor<2x64xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{expects input of rank 3 ([N, S, D]), got rank 2}}
  %0 = moe.pool mean %x : tensor<2x64xf32> -> tensor<2x64xf32>
  return %0 : tensor<2x64xf32>
}

// -----

func.func @head_rank(%x: tensor<2x50x64xf32>, %w: tensor<64x10xf32>, %b: tensor<10xf32>) -> tensor<2x50x10xf32> {
  // expected-error @+1 {{expects input of rank 2 ([N, D]), got rank 3}}
  %0 = moe.classifier_head %x, %w, %b : (tensor<2x50x64xf32>, tensor<64x10xf32>, tensor<10xf32>) -> tensor<2x50x10xf32>
  return %0 : tensor<2x50x10xf32>
}

// -----

func.func @ce_labels(%l: tensor<8x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  // expected-error @+1 {{expects labels of shape 8, got 4}}
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<8x10xf32>, tensor<4xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @ce_smoothing(%l: tensor<8x10xf32>, %y: tensor<8xi32>) -> tensor<f32> {
  // expected-error @+1 {{expects label_smoothing in [0, 1), got 1}}
  %0 = moe.softmax_cross_entropy %l, %y {label_smoothing = 1.0 : f64} : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @ce_loss_type(%l: tensor<8x10xf32>, %y: tensor<8xi32>) -> tensor<1xf32> {
  // expected-error @+1 {{expects result #0 of shape scalar, got 1}}
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<1xf32>
  return %0 : tensor<1xf32>
}

// -----

func.func @router_rank(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects a dispatch result of rank 4 ([G, S, E, C]), got rank 3}}
  %d, %c, %l = moe.router expert_choice %x, %w {capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4xf32>, tensor<2x50x4xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_dynamic_experts(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects a static number of experts (dispatch dimension 2)}}
  %d, %c, %l = moe.router expert_choice %x, %w {capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x?x13xf32>, tensor<2x50x?x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_no_expert(%x: tensor<2x50x64xf32>, %w: tensor<64x0xf32>) -> tensor<2x50x0xf32> {
  // expected-error @+1 {{expects at least 1 expert, got 0}}
  %d, %c, %l = moe.router expert_choice %x, %w {capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x0xf32>) -> (tensor<2x50x0x50xf32>, tensor<2x50x0x50xf32>, tensor<2x50x0xf32>)
  return %l : tensor<2x50x0xf32>
}

// -----

func.func @router_input_rank(%x: tensor<50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects input of rank 3 ([G, S, D]), got rank 2}}
  %d, %c, %l = moe.router expert_choice %x, %w {capacity_factor = 1.0 : f64} : (tensor<50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_needs_k(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{router kind token_choice needs 'k'}}
  %d, %c, %l = moe.router token_choice %x, %w {capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_k_unused(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{'k' is not used by router kind expert_choice}}
  %d, %c, %l = moe.router expert_choice %x, %w {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_k_too_large(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects k <= the number of experts (4), got 5}}
  %d, %c, %l = moe.router token_choice %x, %w {k = 5 : i64, capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_needs_capacity(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{router kind expert_choice needs 'capacity_factor'}}
  %d, %c, %l = moe.router expert_choice %x, %w : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_capacity_unused(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{'capacity_factor' is not used by router kind soft}}
  %d, %c, %l = moe.router soft %x, %w {capacity_factor = 1.0 : f64, slots_per_expert = 1 : i64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x1xf32>, tensor<2x50x4x1xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_capacity_positive(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects a positive capacity_factor, got 0}}
  %d, %c, %l = moe.router expert_choice %x, %w {capacity_factor = 0.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x1xf32>, tensor<2x50x4x1xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_noise_unused(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{'noise_std' is not used by router kind soft}}
  %d, %c, %l = moe.router soft %x, %w {slots_per_expert = 1 : i64, noise_std = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x1xf32>, tensor<2x50x4x1xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_noise_negative(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects a non-negative noise_std, got -1}}
  %d, %c, %l = moe.router token_choice %x, %w {k = 1 : i64, capacity_factor = 1.0 : f64, noise_std = -1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_needs_iters(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{router kind sinkhorn needs 'sinkhorn_iters'}}
  %d, %c, %l = moe.router sinkhorn %x, %w {k = 1 : i64, capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_iters_unused(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{'sinkhorn_iters' is not used by router kind token_choice}}
  %d, %c, %l = moe.router token_choice %x, %w {k = 1 : i64, capacity_factor = 1.0 : f64, sinkhorn_iters = 3 : i64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x13xf32>, tensor<2x50x4x13xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_needs_slots(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{router kind soft needs 'slots_per_expert'}}
  %d, %c, %l = moe.router soft %x, %w : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x1xf32>, tensor<2x50x4x1xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_slots_unused(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x1x4xf32> {
  // expected-error @+1 {{'slots_per_expert' is not used by router kind per_image}}
  %d, %c, %l = moe.router per_image %x, %w {k = 1 : i64, slots_per_expert = 2 : i64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x1x4xf32>)
  return %l : tensor<2x1x4xf32>
}

// -----

func.func @router_weight(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x8xf32> {
  // expected-error @+1 {{expects weight of shape 64x8 ([D, experts * slots_per_expert]), got 64x4}}
  %d, %c, %l = moe.router soft %x, %w {slots_per_expert = 2 : i64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x2xf32>, tensor<2x50x4x2xf32>, tensor<2x50x8xf32>)
  return %l : tensor<2x50x8xf32>
}

// -----

func.func @router_capacity(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // ceil(2 * 50 * 1.25 / 4) = 32 slots, not 25.
  // expected-error @+1 {{expects result #0 of shape 2x50x4x32, got 2x50x4x25}}
  %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 1.25 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x25xf32>, tensor<2x50x4x25xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_per_image_logits(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects result #2 of shape 2x1x4, got 2x50x4}}
  %d, %c, %l = moe.router per_image %x, %w {k = 1 : i64} : (tensor<2x50x64xf32>, tensor<64x4xf32>) -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @dispatch_rank(%x: tensor<2x50x64xf32>, %d: tensor<2x50x4xf32>) -> tensor<4x2x13x64xf32> {
  // expected-error @+1 {{expects dispatch of rank 4 ([G, S, E, C]), got rank 3}}
  %0 = moe.dispatch %x, %d : (tensor<2x50x64xf32>, tensor<2x50x4xf32>) -> tensor<4x2x13x64xf32>
  return %0 : tensor<4x2x13x64xf32>
}

// -----

func.func @dispatch_tokens(%x: tensor<2x50x64xf32>, %d: tensor<2x49x4x13xf32>) -> tensor<4x2x13x64xf32> {
  // expected-error @+1 {{expects dispatch groups and tokens (2x49) to match the input's (2x50)}}
  %0 = moe.dispatch %x, %d : (tensor<2x50x64xf32>, tensor<2x49x4x13xf32>) -> tensor<4x2x13x64xf32>
  return %0 : tensor<4x2x13x64xf32>
}

// -----

func.func @dispatch_result(%x: tensor<2x50x64xf32>, %d: tensor<2x50x4x13xf32>) -> tensor<2x4x13x64xf32> {
  // expected-error @+1 {{expects result #0 of shape 4x2x13x64, got 2x4x13x64}}
  %0 = moe.dispatch %x, %d : (tensor<2x50x64xf32>, tensor<2x50x4x13xf32>) -> tensor<2x4x13x64xf32>
  return %0 : tensor<2x4x13x64xf32>
}

// -----

func.func @experts_fc1(%x: tensor<4x2x13x64xf32>, %w1: tensor<4x32x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>) -> tensor<4x2x13x64xf32> {
  // expected-error @+1 {{expects fc1_weight of shape 4x64x128 (rows = the input width), got 4x32x128}}
  %0 = moe.experts gelu %x, %w1, %b1, %w2, %b2 : (tensor<4x2x13x64xf32>, tensor<4x32x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> tensor<4x2x13x64xf32>
  return %0 : tensor<4x2x13x64xf32>
}

// -----

func.func @experts_fc1_rank(%x: tensor<4x2x13x64xf32>, %w1: tensor<64x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<4x128x64xf32>, %b2: tensor<4x64xf32>) -> tensor<4x2x13x64xf32> {
  // expected-error @+1 {{expects fc1_weight of rank 3 ([E, D, H]), got rank 2}}
  %0 = moe.experts gelu %x, %w1, %b1, %w2, %b2 : (tensor<4x2x13x64xf32>, tensor<64x128xf32>, tensor<4x128xf32>, tensor<4x128x64xf32>, tensor<4x64xf32>) -> tensor<4x2x13x64xf32>
  return %0 : tensor<4x2x13x64xf32>
}

// -----

func.func @experts_fc2(%x: tensor<4x2x13x64xf32>, %w1: tensor<4x64x128xf32>, %b1: tensor<4x128xf32>, %w2: tensor<3x128x64xf32>, %b2: tensor<4x64xf32>) -> tensor<4x2x13x64xf32> {
  // expected-error @+1 {{expects fc2_weight of shape 4x128x64, got 3x128x64}}
  %0 = moe.experts gelu %x, %w1, %b1, %w2, %b2 : (tensor<4x2x13x64xf32>, tensor<4x64x128xf32>, tensor<4x128xf32>, tensor<3x128x64xf32>, tensor<4x64xf32>) -> tensor<4x2x13x64xf32>
  return %0 : tensor<4x2x13x64xf32>
}

// -----

func.func @combine_mismatch(%y: tensor<4x2x13x64xf32>, %c: tensor<2x50x4x12xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects combine groups, experts and slots to match the input's ([G, E, C] = 2x4x13), got 2x50x4x12}}
  %0 = moe.combine %y, %c : (tensor<4x2x13x64xf32>, tensor<2x50x4x12xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @shared_expert_bias(%x: tensor<2x50x64xf32>, %w1: tensor<64x128xf32>, %b1: tensor<64xf32>, %w2: tensor<128x64xf32>, %b2: tensor<64xf32>) -> tensor<2x50x64xf32> {
  // expected-error @+1 {{expects fc1_bias of shape 128, got 64}}
  %0 = moe.shared_expert gelu %x, %w1, %b1, %w2, %b2 : (tensor<2x50x64xf32>, tensor<64x128xf32>, tensor<64xf32>, tensor<128x64xf32>, tensor<64xf32>) -> tensor<2x50x64xf32>
  return %0 : tensor<2x50x64xf32>
}

// -----

func.func @add_types(%a: tensor<2x64xf32>, %b: tensor<2x32xf32>) -> tensor<2x64xf32> {
  // expected-error @+1 {{requires the same type for all operands and results}}
  %0 = "moe.add"(%a, %b) : (tensor<2x64xf32>, tensor<2x32xf32>) -> tensor<2x64xf32>
  return %0 : tensor<2x64xf32>
}

// -----

// Router noise (training).

// A per-image router takes one sample per logit: [G, 1, E].
func.func @router_noise_per_image_shape(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<2x1x4xf32> {
  // expected-error @+1 {{expects noise of shape 2x1x4, got 2x50x4}}
  %d, %c, %l = moe.router per_image %x, %w noise %n {k = 1 : i64, noise_std = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>, tensor<2x50x4xf32>) -> (tensor<2x50x4x50xf32>, tensor<2x50x4x50xf32>, tensor<2x1x4xf32>)
  return %l : tensor<2x1x4xf32>
}

// -----

func.func @router_noise_soft(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{noise_std}}
  %d, %c, %l = moe.router soft %x, %w noise %n {slots_per_expert = 1 : i64, noise_std = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>, tensor<2x50x4xf32>) -> (tensor<2x50x4x1xf32>, tensor<2x50x4x1xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_noise_without_std(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{takes noise only with noise_std}}
  %d, %c, %l = moe.router token_choice %x, %w noise %n {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>, tensor<2x50x4xf32>) -> (tensor<2x50x4x25xf32>, tensor<2x50x4x25xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

func.func @router_noise_shape(%x: tensor<2x50x64xf32>, %w: tensor<64x4xf32>, %n: tensor<2x50x8xf32>) -> tensor<2x50x4xf32> {
  // expected-error @+1 {{expects noise of shape 2x50x4, got 2x50x8}}
  %d, %c, %l = moe.router token_choice %x, %w noise %n {k = 2 : i64, capacity_factor = 1.0 : f64, noise_std = 1.0 : f64} : (tensor<2x50x64xf32>, tensor<64x4xf32>, tensor<2x50x8xf32>) -> (tensor<2x50x4x25xf32>, tensor<2x50x4x25xf32>, tensor<2x50x4xf32>)
  return %l : tensor<2x50x4xf32>
}

// -----

// Auxiliary losses.

func.func @aux_loss_types(%l: tensor<2x50x4xf32>, %n: tensor<2x50x4xf16>) -> tensor<f32> {
  // expected-error @+1 {{expects every float operand and result to have element type 'f32', but operand #1 has 'f16'}}
  %0 = moe.aux_loss load %l noise %n {k = 2 : i64, noise_std = 1.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x50x4xf16>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_logits_rank(%l: tensor<100x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{expects logits [G, R, E], got 100x4}}
  %0 = moe.aux_loss importance %l {weight = 1.0 : f64} : (tensor<100x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_result(%l: tensor<2x50x4xf32>) -> tensor<1xf32> {
  // expected-error @+1 {{expects a 0-d result}}
  %0 = moe.aux_loss importance %l {weight = 1.0 : f64} : (tensor<2x50x4xf32>) -> tensor<1xf32>
  return %0 : tensor<1xf32>
}

// -----

func.func @aux_loss_weight(%l: tensor<2x50x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{expects a weight >= 0}}
  %0 = moe.aux_loss z_loss %l {weight = -1.0e-03 : f64} : (tensor<2x50x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_load_noise(%l: tensor<2x50x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{load needs noise, noise_std and k}}
  %0 = moe.aux_loss load %l {k = 2 : i64, noise_std = 1.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_load_k(%l: tensor<2x50x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{load needs noise, noise_std and k}}
  %0 = moe.aux_loss load %l noise %n {noise_std = 1.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x50x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_load_std(%l: tensor<2x50x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{load needs noise_std > 0}}
  %0 = moe.aux_loss load %l noise %n {k = 2 : i64, noise_std = 0.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x50x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_load_shape(%l: tensor<2x50x4xf32>, %n: tensor<2x49x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{expects noise of shape 2x50x4, got 2x49x4}}
  %0 = moe.aux_loss load %l noise %n {k = 2 : i64, noise_std = 1.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x49x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_super_class_map(%l: tensor<2x1x4xf32>, %y: tensor<2xi32>) -> tensor<f32> {
  // expected-error @+1 {{super_class needs labels and super_class_map}}
  %0 = moe.aux_loss super_class %l labels %y {weight = 1.0 : f64} : (tensor<2x1x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_super_class_labels(%l: tensor<2x1x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{super_class needs labels and super_class_map}}
  %0 = moe.aux_loss super_class %l {super_class_map = array<i64: 0, 1, 1>, weight = 1.0 : f64} : (tensor<2x1x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_super_class_label_shape(%l: tensor<2x1x4xf32>, %y: tensor<3xi32>) -> tensor<f32> {
  // expected-error @+1 {{expects labels [2]}}
  %0 = moe.aux_loss super_class %l labels %y {super_class_map = array<i64: 0, 1, 1>, weight = 1.0 : f64} : (tensor<2x1x4xf32>, tensor<3xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_super_class_expert(%l: tensor<2x1x4xf32>, %y: tensor<2xi32>) -> tensor<f32> {
  // expected-error @+1 {{super_class_map entry 4 is not an expert in [0, 4)}}
  %0 = moe.aux_loss super_class %l labels %y {super_class_map = array<i64: 0, 4, 1>, weight = 1.0 : f64} : (tensor<2x1x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_super_class_negative(%l: tensor<2x1x4xf32>, %y: tensor<2xi32>) -> tensor<f32> {
  // expected-error @+1 {{super_class_map entry -1 is not an expert in [0, 4)}}
  %0 = moe.aux_loss super_class %l labels %y {super_class_map = array<i64: 0, -1, 1>, weight = 1.0 : f64} : (tensor<2x1x4xf32>, tensor<2xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_balance_noise_std(%l: tensor<2x50x4xf32>, %n: tensor<2x50x4xf32>) -> tensor<f32> {
  // expected-error @+1 {{balance noise needs noise_std and the logits' shape}}
  %0 = moe.aux_loss balance %l noise %n {weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x50x4xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

func.func @aux_loss_balance_noise_shape(%l: tensor<2x50x4xf32>, %n: tensor<2x50x5xf32>) -> tensor<f32> {
  // expected-error @+1 {{balance noise needs noise_std and the logits' shape}}
  %0 = moe.aux_loss balance %l noise %n {noise_std = 1.0 : f64, weight = 1.0 : f64} : (tensor<2x50x4xf32>, tensor<2x50x5xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// Loss sums take 0-d f32 tensors (ODS constraint).

func.func @sum_losses_rank(%a: tensor<f32>, %b: tensor<1xf32>) -> tensor<f32> {
  // expected-error @+1 {{operand #1 must be variadic of 0D tensor of 32-bit float values}}
  %0 = moe.sum_losses %a, %b : (tensor<f32>, tensor<1xf32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// Metrics.

func.func @metrics_logits(%l: tensor<8x5x10xf32>, %y: tensor<8xi32>) -> tensor<f32> {
  // expected-error @+1 {{expects logits [N, K]}}
  %ls, %c = moe.classification_metrics %l, %y : (tensor<8x5x10xf32>, tensor<8xi32>) -> (tensor<f32>, tensor<f32>)
  return %c : tensor<f32>
}

// -----

func.func @metrics_labels(%l: tensor<8x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  // expected-error @+1 {{expects labels [8]}}
  %ls, %c = moe.classification_metrics %l, %y : (tensor<8x10xf32>, tensor<4xi32>) -> (tensor<f32>, tensor<f32>)
  return %c : tensor<f32>
}

// -----

func.func @metrics_mask(%l: tensor<8x10xf32>, %y: tensor<8xi32>, %m: tensor<8x1xf32>) -> tensor<f32> {
  // expected-error @+1 {{expects mask [8]}}
  %ls, %c = moe.classification_metrics %l, %y mask %m : (tensor<8x10xf32>, tensor<8xi32>, tensor<8x1xf32>) -> (tensor<f32>, tensor<f32>)
  return %c : tensor<f32>
}

// -----

func.func @routing_counts_dispatch(%d: tensor<8x50x4xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{expects dispatch [G, S, E, C]}}
  %0 = moe.routing_counts %d : (tensor<8x50x4xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @routing_counts_mask(%d: tensor<8x50x4x32xf32>, %m: tensor<50xf32>) -> tensor<4xf32> {
  // expected-error @+1 {{expects mask [8]}}
  %0 = moe.routing_counts %d mask %m : (tensor<8x50x4x32xf32>, tensor<50xf32>) -> tensor<4xf32>
  return %0 : tensor<4xf32>
}

// -----

func.func @routing_counts_result(%d: tensor<8x50x4x32xf32>) -> tensor<32xf32> {
  // expected-error @+1 {{expects result [4]}}
  %0 = moe.routing_counts %d : (tensor<8x50x4x32xf32>) -> tensor<32xf32>
  return %0 : tensor<32xf32>
}

// -----

// The discardable moe.* attributes: declared names only, with their types.
// expected-error @+1 {{'func.func' op has unknown moe dialect attribute 'moe.flop'}}
func.func @unknown_attribute() attributes {moe.flop = 3 : i64} {
  return
}

// -----

// expected-error @+1 {{'func.func' op expects 'moe.flops' to be an integer, got "3"}}
func.func @flops_not_integer() attributes {moe.flops = "3"} {
  return
}

// -----

// expected-error @+1 {{'func.func' op expects 'moe.optimizer' to be a #moe.optimizer, got {kind = "sgd"}}}
func.func @optimizer_dictionary() attributes {moe.optimizer = {kind = "sgd"}} {
  return
}

// -----

func.func @parallel_string(%x: tensor<4xf32>) {
  // expected-error @+1 {{'func.call' op expects 'moe.parallel' to be a #moe.parallelism, got "fixed"}}
  call @parallel_string(%x) {moe.parallel = "fixed"} : (tensor<4xf32>) -> ()
  return
}

// -----

func.func @routed_gate_input(%x: tensor<2x6x8xf32>, %gx: tensor<2x5x4xf32>) -> tensor<2x6x8xf32> {
  %wr = moe.param "wr" init(trunc_normal, 2.000000e-02) : tensor<4x4xf32>
  %w1 = moe.param "w1" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "b1" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "w2" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "b2" init(zeros) : tensor<4x8xf32>
  // expected-error @+1 {{'moe.routed_ffn' op expects gate_input of shape 2x6xD', got 2x5x4}}
  %y, %l, %n = moe.routed_ffn token_choice gelu %x, %wr, %w1, %b1, %w2, %b2 gate %gx {k = 2 : i64, capacity = 3 : i64, capacity_factor = 1.0 : f64, row_tile = 3 : i64} : (tensor<2x6x8xf32>, tensor<4x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>, tensor<2x5x4xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  return %y : tensor<2x6x8xf32>
}

// -----

func.func @routed_soft(%x: tensor<2x6x8xf32>, %wr: tensor<8x4xf32>, %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>, %w2: tensor<4x16x8xf32>, %b2: tensor<4x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn' op does not take soft routing}}
  %y, %l, %n = moe.routed_ffn soft gelu %x, %wr, %w1, %b1, %w2, %b2 {capacity = 2 : i64, row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  return
}

// -----

func.func @routed_capacity(%x: tensor<2x6x8xf32>, %wr: tensor<8x4xf32>, %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>, %w2: tensor<4x16x8xf32>, %b2: tensor<4x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn' op expects capacity 3 (the router's rule for 6 tokens), got 4}}
  %y, %l, %n = moe.routed_ffn token_choice gelu %x, %wr, %w1, %b1, %w2, %b2 {k = 2 : i64, capacity_factor = 1.0 : f64, capacity = 4 : i64, row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  return
}

// -----

func.func @routed_weights(%x: tensor<2x6x8xf32>, %wr: tensor<8x4xf32>, %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>, %w2: tensor<4x8x16xf32>, %b2: tensor<4x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn' op expects fc2_weight of shape 4x16x8, got 4x8x16}}
  %y, %l, %n = moe.routed_ffn token_choice gelu %x, %wr, %w1, %b1, %w2, %b2 {k = 2 : i64, capacity_factor = 1.0 : f64, capacity = 3 : i64, row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x8x16xf32>, tensor<4x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  return
}

// -----

func.func @routed_per_image_logits(%x: tensor<2x6x8xf32>, %wr: tensor<8x4xf32>, %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>, %w2: tensor<4x16x8xf32>, %b2: tensor<4x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn' op expects logits of shape 2x1x4, got 2x6x4}}
  %y, %l, %n = moe.routed_ffn per_image gelu %x, %wr, %w1, %b1, %w2, %b2 {k = 2 : i64, capacity = 6 : i64, row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>)
  return
}

// -----

// The row bound of token choice with k = 2, 6 tokens, E = 4, C = 3 and
// row tiles of 8: min(4 * 8, min(12, 12) + 4 * 7) = 32 rows.
func.func @routed_train_rows(%x: tensor<2x6x8xf32>, %wr: tensor<8x4xf32>, %w1: tensor<4x8x16xf32>, %b1: tensor<4x16xf32>, %w2: tensor<4x16x8xf32>, %b2: tensor<4x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn_train' op expects row_token of shape 2x32, got 2x12}}
  %r:10 = moe.routed_ffn_train token_choice gelu %x, %wr, %w1, %b1, %w2, %b2 {k = 2 : i64, capacity_factor = 1.0 : f64, capacity = 3 : i64, row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<8x4xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x4xf32>, tensor<2x4xf32>, tensor<2x6x4xf32>, tensor<2x12xf32>, tensor<2x12xf32>, tensor<2x4xf32>, tensor<2x12x16xf32>, tensor<2x12x16xf32>, tensor<2x12x8xf32>)
  return
}

// -----

func.func @routed_grad_gates(%dy: tensor<2x6x8xf32>, %w1t: tensor<4x16x8xf32>, %w2t: tensor<4x8x16xf32>, %tok: tensor<2x32xf32>, %gate: tensor<2x32xf32>, %off: tensor<2x4xf32>, %cnt: tensor<2x4xf32>, %dact: tensor<2x32x16xf32>, %yo: tensor<2x32x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn_grad' op expects gate_grad [G, S, E] or, for per-image routing, [G, 1, E]}}
  %r:4 = moe.routed_ffn_grad %dy, %w1t, %w2t, %tok, %gate, %off, %cnt, %dact, %yo {row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<4x16x8xf32>, tensor<4x8x16xf32>, tensor<2x32xf32>, tensor<2x32xf32>, tensor<2x4xf32>, tensor<2x4xf32>, tensor<2x32x16xf32>, tensor<2x32x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x5x4xf32>, tensor<2x32x16xf32>, tensor<2x32x8xf32>)
  return
}

// -----

func.func @routed_weight_grad_experts(%x: tensor<2x6x8xf32>, %tok: tensor<2x32xf32>, %off: tensor<4x2xf32>, %cnt: tensor<4x2xf32>, %h: tensor<2x32x16xf32>, %da: tensor<2x32x16xf32>, %dyt: tensor<2x32x8xf32>) {
  // expected-error @+1 {{'moe.routed_ffn_weight_grad' op expects fc1_weight_grad of shape 4x8x16, got 2x8x16}}
  %r:4 = moe.routed_ffn_weight_grad %x, %tok, %off, %cnt, %h, %da, %dyt {row_tile = 8 : i64} : (tensor<2x6x8xf32>, tensor<2x32xf32>, tensor<4x2xf32>, tensor<4x2xf32>, tensor<2x32x16xf32>, tensor<2x32x16xf32>, tensor<2x32x8xf32>) -> (tensor<2x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>)
  return
}
