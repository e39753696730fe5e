// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-split-batch-reductions),moe-lower-to-kernels{entry=train_step})' | FileCheck %s

// The experts' recomputed hidden layer: a bias [E, N] broadcast over
// [E, B, C, N] slots initializes a matmul that accumulates into it. The
// broadcast is done per tile inside the matmul's kernel (split over the 4
// experts: the bias is sliced at its expert row), not by a kernel of its
// own whose whole-batch result the matmul would copy in.
// CHECK-LABEL: func.func @train_step
// CHECK-SAME: (%[[X:.*]]: tensor<4x8x16x32xf32>, %[[W:.*]]: tensor<4x32x64xf32>, %[[B:.*]]: tensor<4x64xf32>)
// CHECK: %[[H:.*]] = call @moec_k0(%[[X]], %[[W]], %[[B]], %{{.*}}, %{{.*}}, %{{.*}}) {{.*}}moe.tiles = 4 : i64} : (tensor<4x8x16x32xf32>, tensor<4x32x64xf32>, tensor<4x64xf32>, tensor<4x8x16x64xf32>, index, index) -> tensor<4x8x16x64xf32>
// CHECK-NOT: call
// CHECK: return %[[H]]
// CHECK-LABEL: func.func @moec_k0
// CHECK: %[[BT:.*]] = tensor.extract_slice %{{.*}}[%{{.*}}, 0] [1, 64] [1, 1] : tensor<4x64xf32> to tensor<1x64xf32>
// CHECK: %[[INIT:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "parallel"]{{.*}} ins(%[[BT]] : tensor<1x64xf32>) outs(%{{.*}} : tensor<1x8x16x64xf32>)
// CHECK-NOT: linalg.copy
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]{{.*}} outs(%[[INIT]] : tensor<1x8x16x64xf32>)
#bias = affine_map<(e, b, c, n) -> (e, n)>
#id4 = affine_map<(e, b, c, n) -> (e, b, c, n)>
#x = affine_map<(e, b, c, n, k) -> (e, b, c, k)>
#w = affine_map<(e, b, c, n, k) -> (e, k, n)>
#h = affine_map<(e, b, c, n, k) -> (e, b, c, n)>
func.func @train_step(%x: tensor<4x8x16x32xf32>, %w: tensor<4x32x64xf32>, %b: tensor<4x64xf32>) -> tensor<4x8x16x64xf32> {
  %e = tensor.empty() : tensor<4x8x16x64xf32>
  %init = linalg.generic {indexing_maps = [#bias, #id4], iterator_types = ["parallel", "parallel", "parallel", "parallel"]} ins(%b : tensor<4x64xf32>) outs(%e : tensor<4x8x16x64xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<4x8x16x64xf32>
  %h = linalg.generic {indexing_maps = [#x, #w, #h], iterator_types = ["parallel", "parallel", "parallel", "parallel", "reduction"]} ins(%x, %w : tensor<4x8x16x32xf32>, tensor<4x32x64xf32>) outs(%init : tensor<4x8x16x64xf32>) {
  ^bb0(%a: f32, %bw: f32, %acc: f32):
    %0 = arith.mulf %a, %bw : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<4x8x16x64xf32>
  return %h : tensor<4x8x16x64xf32>
}

// -----

// A bias [N] broadcast over [B, S, N] (the attention's recomputed qkv),
// split over images: the bias does not read the split dimension and goes
// in whole.
// CHECK-LABEL: func.func @train_step
// CHECK: call @moec_k0({{.*}}) {{.*}}moe.tiles = 16 : i64} : (tensor<32x10x8xf32>, tensor<8x24xf32>, tensor<24xf32>, tensor<32x10x24xf32>, index, index) -> tensor<32x10x24xf32>
// CHECK-LABEL: func.func @moec_k0
// CHECK-NOT: tensor.extract_slice %{{.*}} : tensor<24xf32>
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<24xf32>) outs(%{{.*}} : tensor<2x10x24xf32>)
// CHECK-NOT: linalg.copy
// CHECK: linalg.generic {{.*}}"reduction"
#bn = affine_map<(b, s, n) -> (n)>
#id3 = affine_map<(b, s, n) -> (b, s, n)>
#xa = affine_map<(b, s, n, k) -> (b, s, k)>
#wa = affine_map<(b, s, n, k) -> (k, n)>
#ya = affine_map<(b, s, n, k) -> (b, s, n)>
func.func @train_step(%x: tensor<32x10x8xf32>, %w: tensor<8x24xf32>, %b: tensor<24xf32>) -> tensor<32x10x24xf32> {
  %e = tensor.empty() : tensor<32x10x24xf32>
  %init = linalg.generic {indexing_maps = [#bn, #id3], iterator_types = ["parallel", "parallel", "parallel"]} ins(%b : tensor<24xf32>) outs(%e : tensor<32x10x24xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<32x10x24xf32>
  %y = linalg.generic {indexing_maps = [#xa, #wa, #ya], iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%x, %w : tensor<32x10x8xf32>, tensor<8x24xf32>) outs(%init : tensor<32x10x24xf32>) {
  ^bb0(%a: f32, %bw: f32, %acc: f32):
    %0 = arith.mulf %a, %bw : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<32x10x24xf32>
  return %y : tensor<32x10x24xf32>
}

// -----

// A broadcast with a second user stays a kernel of its own; its consumer
// copies it in.
// CHECK-LABEL: func.func @train_step
// CHECK: %[[I:.*]] = call @moec_k0
// CHECK: call @moec_k1(%{{.*}}, %{{.*}}, %[[I]], {{.*}})
// CHECK-LABEL: func.func @moec_k1
// CHECK: linalg.copy
#bn = affine_map<(b, s, n) -> (n)>
#id3 = affine_map<(b, s, n) -> (b, s, n)>
#xa = affine_map<(b, s, n, k) -> (b, s, k)>
#wa = affine_map<(b, s, n, k) -> (k, n)>
#ya = affine_map<(b, s, n, k) -> (b, s, n)>
func.func @train_step(%x: tensor<32x10x8xf32>, %w: tensor<8x24xf32>, %b: tensor<24xf32>) -> (tensor<32x10x24xf32>, tensor<32x10x24xf32>) {
  %e = tensor.empty() : tensor<32x10x24xf32>
  %init = linalg.generic {indexing_maps = [#bn, #id3], iterator_types = ["parallel", "parallel", "parallel"]} ins(%b : tensor<24xf32>) outs(%e : tensor<32x10x24xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<32x10x24xf32>
  %y = linalg.generic {indexing_maps = [#xa, #wa, #ya], iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%x, %w : tensor<32x10x8xf32>, tensor<8x24xf32>) outs(%init : tensor<32x10x24xf32>) {
  ^bb0(%a: f32, %bw: f32, %acc: f32):
    %0 = arith.mulf %a, %bw : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<32x10x24xf32>
  return %y, %init : tensor<32x10x24xf32>, tensor<32x10x24xf32>
}
