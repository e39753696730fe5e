// RUN: moec-opt %s --pass-pipeline='builtin.module(func.func(moe-decompose-losses),moe-lower-to-kernels)' | FileCheck %s

// Routing groups: moe.reshape becomes a collapse to one dimension and an
// expand to the result's shape in the entry (views, no kernel); the router
// kernel runs over the 2 groups of 2 images, the layer norm over the 4
// images. The cosine gate's l2 normalisation is whole-batch linalg.
// CHECK-LABEL: func.func @infer
// CHECK: %[[H:.*]] = call @moec_k0({{.*}}moe.op = "moe.layer_norm", moe.parallel = #moe.parallelism<images>, moe.tiles = 4 : i64}
// CHECK: %[[F:.*]] = tensor.collapse_shape %[[H]] {{\[\[}}0, 1, 2]] : tensor<4x5x8xf32> into tensor<160xf32>
// CHECK: %[[G:.*]] = tensor.expand_shape %[[F]] {{\[\[}}0, 1, 2]] output_shape [2, 10, 8] : tensor<160xf32> into tensor<2x10x8xf32>
// CHECK: %[[N:.*]]:3 = call @moec_k1(%[[G]], {{.*}}moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 2 : i64}
// CHECK: call @moec_k{{[0-9]+}}(%[[N]]#2, {{.*}}moe.op = "moe.router", moe.parallel = #moe.parallelism<images>, moe.tiles = 2 : i64}
// CHECK-NOT: moe.reshape
func.func @infer(%x: tensor<4x5x8xf32> {moe.name = "images"}) -> (tensor<2x10x4x5xf32> {moe.name = "dispatch"}) {
  %g = moe.param "norm.weight" init(ones) : tensor<8xf32>
  %b = moe.param "norm.bias" init(zeros) : tensor<8xf32>
  %h = moe.layer_norm %x, %g, %b {epsilon = 1.0e-06 : f64} : (tensor<4x5x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<4x5x8xf32>
  %hg = moe.reshape %h : (tensor<4x5x8xf32>) -> tensor<2x10x8xf32>
  %xn = moe.l2_normalize %hg {dim = 2 : i64, epsilon = 1.0e-06 : f64} : (tensor<2x10x8xf32>) -> tensor<2x10x8xf32>
  %w = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %t = moe.param "router.scale" init(constant = 3.0) : tensor<1xf32>
  %wn = moe.l2_normalize %w scale %t {dim = 0 : i64, epsilon = 1.0e-06 : f64} : (tensor<8x4xf32>, tensor<1xf32>) -> tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %xn, %wn {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x10x8xf32>, tensor<8x4xf32>) -> (tensor<2x10x4x5xf32>, tensor<2x10x4x5xf32>, tensor<2x10x4xf32>)
  return %d : tensor<2x10x4x5xf32>
}
