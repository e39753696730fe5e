// RUN: moec-opt %s --split-input-file --moe-annotate-costs | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-annotate-costs=per-op | FileCheck %s --check-prefix=PEROP

// 2 * 400 rows * 64 * 128 = 6553600 FLOPs; 64 * 128 parameters, all active.
// CHECK-LABEL: func.func @dense
// CHECK-SAME: moe.active_params = 8192 : i64, moe.flops = 6553600 : i64, moe.params = 8192 : i64
func.func @dense(%x: tensor<8x50x64xf32>) -> tensor<8x50x128xf32> {
  %w = moe.param "fc.weight" init(trunc_normal, 2.000000e-02) : tensor<64x128xf32>
  %y = moe.dense %x, %w : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
  return %y : tensor<8x50x128xf32>
}

// -----

// A parameter read twice counts once.
// CHECK-LABEL: func.func @shared_param
// CHECK-SAME: moe.params = 8192 : i64
func.func @shared_param(%x: tensor<8x50x64xf32>) -> tensor<8x50x128xf32> {
  %w = moe.param "fc.weight" init(trunc_normal, 2.000000e-02) : tensor<64x128xf32>
  %w2 = moe.param "fc.weight" init(trunc_normal, 2.000000e-02) : tensor<64x128xf32>
  %y = moe.dense %x, %w : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
  %z = moe.dense %x, %w2 : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
  return %z : tensor<8x50x128xf32>
}

// -----

// Top-2 of 4 experts: a token uses half of the 4288 expert parameters.
// params = 64 (router) + 4288 = 4352, active = 64 + 2144 = 2208.
// FLOPs: router 2*10*16*4 + 5*10*4 = 1480, dispatch (a gather) 0,
// experts: the filled slots only, 10 tokens * k = 20 rows of the 40 slots,
// * (4*16*32 + 2*32 + 16) = 42560, combine 2*640 = 1280.
// CHECK-LABEL: func.func @moe_layer
// CHECK-SAME: moe.active_params = 2208 : i64, moe.flops = 45320 : i64, moe.params = 4352 : i64
// PEROP-LABEL: func.func @moe_layer
// PEROP: moe.router token_choice {{.*}}moe.flops = 1480 : i64
// PEROP: moe.dispatch {{.*}}moe.flops = 0 : i64
// PEROP: moe.experts gelu {{.*}}moe.flops = 42560 : i64
// PEROP: moe.combine {{.*}}moe.flops = 1280 : i64
func.func @moe_layer(%x: tensor<2x5x16xf32>) -> tensor<2x5x16xf32> {
  %wr = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<16x4xf32>
  %w1 = moe.param "experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x32xf32>
  %b1 = moe.param "experts.fc1.bias" init(zeros) : tensor<4x32xf32>
  %w2 = moe.param "experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x32x16xf32>
  %b2 = moe.param "experts.fc2.bias" init(zeros) : tensor<4x16xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 2.0 : f64} : (tensor<2x5x16xf32>, tensor<16x4xf32>) -> (tensor<2x5x4x5xf32>, tensor<2x5x4x5xf32>, tensor<2x5x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x5x16xf32>, tensor<2x5x4x5xf32>) -> tensor<4x2x5x16xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x5x16xf32>, tensor<4x16x32xf32>, tensor<4x32xf32>, tensor<4x32x16xf32>, tensor<4x16xf32>) -> tensor<4x2x5x16xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x5x16xf32>, tensor<2x5x4x5xf32>) -> tensor<2x5x16xf32>
  return %y : tensor<2x5x16xf32>
}

// -----

// Functions without moe ops are left alone.
// CHECK-LABEL: func.func @plain
// CHECK-NOT: moe.flops
func.func @plain(%x: f32) -> f32 {
  return %x : f32
}

// -----

// After moe-autodiff a function also holds linalg ops: iterations times the
// body's float arithmetic. The matmul 2*8*16*32 = 8192; the generic
// (subtract, multiply, exp; the constant and the select are free) 3*8*16 =
// 384; the fill 0. attention_train (2 images, S = 10, D = 8, 4 heads of 2):
// moe.attention's projections 2*2*10*8*4*8 = 10240, Q K^T and P V
// 2*2*2*10*10*8 = 6400, softmax 5*2*4*10*10 = 4000, plus 2 per lse entry
// 2*(2*4*10) = 160: 20800. attention_grad: five [S, S] x [S, 2] products
// per image and head, 5*2*2*10*10*8 = 16000, three operations per score for
// P and three for dS, 6*2*4*10*10 = 4800, rowsum(dO * O) 2*2*10*8 = 320:
// 21120. The dense: 2*20*8*8 = 2560. Sum 8192 + 384 + 20800 + 21120 + 2560
// = 53056.
// CHECK-LABEL: func.func @backward
// CHECK-SAME: moe.flops = 53056 : i64
// PEROP-LABEL: func.func @backward
// PEROP: linalg.fill {{.*}}moe.flops = 0 : i64
// PEROP: linalg.matmul {{.*}}moe.flops = 8192 : i64
// PEROP: linalg.generic {{.*}}moe.flops = 384 : i64
// PEROP: moe.attention_train {{.*}}moe.flops = 20800 : i64
// PEROP: moe.attention_grad {{.*}}moe.flops = 21120 : i64
#map = affine_map<(d0, d1) -> (d0, d1)>
func.func @backward(%a: tensor<8x32xf32>, %b: tensor<32x16xf32>, %img: tensor<2x10x8xf32>, %dh: tensor<2x10x8xf32>) -> (tensor<8x16xf32>, tensor<2x10x24xf32>, tensor<2x10x8xf32>) {
  %zero = arith.constant 0.0 : f32
  %e = tensor.empty() : tensor<8x16xf32>
  %f = linalg.fill ins(%zero : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %m = linalg.matmul ins(%a, %b : tensor<8x32xf32>, tensor<32x16xf32>) outs(%f : tensor<8x16xf32>) -> tensor<8x16xf32>
  %g = linalg.generic {indexing_maps = [#map, #map], iterator_types = ["parallel", "parallel"]} ins(%m : tensor<8x16xf32>) outs(%e : tensor<8x16xf32>) {
  ^bb0(%in: f32, %out: f32):
    %c = arith.constant 2.0 : f32
    %s = arith.subf %in, %c : f32
    %p = arith.mulf %s, %s : f32
    %x = math.exp %p : f32
    %pos = arith.cmpf ogt, %x, %c : f32
    %r = arith.select %pos, %x, %c : f32
    linalg.yield %r : f32
  } -> tensor<8x16xf32>
  %wqkv = moe.param "wqkv" init(zeros) : tensor<8x24xf32>
  %bqkv = moe.param "bqkv" init(zeros) : tensor<24xf32>
  %wo = moe.param "wo" init(zeros) : tensor<8x8xf32>
  %bo = moe.param "bo" init(zeros) : tensor<8xf32>
  %y0, %qkv, %o, %lse = moe.attention_train %img, %wqkv, %bqkv, %wo, %bo {heads = 4 : i64} : (tensor<2x10x8xf32>, tensor<8x24xf32>, tensor<24xf32>, tensor<8x8xf32>, tensor<8xf32>) -> (tensor<2x10x8xf32>, tensor<2x10x24xf32>, tensor<2x10x8xf32>, tensor<2x4x10xf32>)
  %dqkv = moe.attention_grad %qkv, %o, %lse, %dh {heads = 4 : i64} : (tensor<2x10x24xf32>, tensor<2x10x8xf32>, tensor<2x4x10xf32>, tensor<2x10x8xf32>) -> tensor<2x10x24xf32>
  %w = moe.param "w" init(zeros) : tensor<8x8xf32>
  %y = moe.dense %o, %w : (tensor<2x10x8xf32>, tensor<8x8xf32>) -> tensor<2x10x8xf32>
  return %g, %dqkv, %y : tensor<8x16xf32>, tensor<2x10x24xf32>, tensor<2x10x8xf32>
}
