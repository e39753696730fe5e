// RUN: moec-opt %s --split-input-file --moe-split-batch-reductions | FileCheck %s

// A weight gradient dW = x^T dy summed over the batch (32 images): a
// partial op with a leading parallel dimension over 16 tiles of 2 images,
// then the 16 partials added in order into the original init.
// CHECK-LABEL: func.func @dw
// CHECK-SAME: (%[[X:.*]]: tensor<32x40x8xf32>, %[[DY:.*]]: tensor<32x40x16xf32>)
// CHECK: %[[INIT:.*]] = linalg.fill {{.*}} -> tensor<8x16xf32>
// CHECK-DAG: %[[XE:.*]] = tensor.expand_shape %[[X]] {{\[}}[0, 1], [2], [3]] output_shape [16, 2, 40, 8]
// CHECK-DAG: %[[DYE:.*]] = tensor.expand_shape %[[DY]] {{\[}}[0, 1], [2], [3]] output_shape [16, 2, 40, 16]
// CHECK: %[[ZERO:.*]] = linalg.fill {{.*}} -> tensor<16x8x16xf32>
// CHECK: %[[P:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "reduction", "reduction"]{{.*}} ins(%[[XE]], %[[DYE]] : tensor<16x2x40x8xf32>, tensor<16x2x40x16xf32>) outs(%[[ZERO]] : tensor<16x8x16xf32>) attrs = {moe.name = "dw"}
// CHECK: %[[W:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction", "parallel"]{{.*}} ins(%[[P]] : tensor<16x8x16xf32>) outs(%[[INIT]] : tensor<8x16xf32>) attrs = {moe.name = "dw"}
// CHECK: return %[[W]]
#x = affine_map<(k, n, b, s) -> (b, s, k)>
#dy = affine_map<(k, n, b, s) -> (b, s, n)>
#w = affine_map<(k, n, b, s) -> (k, n)>
func.func @dw(%x: tensor<32x40x8xf32>, %dy: tensor<32x40x16xf32>) -> tensor<8x16xf32> {
  %e = tensor.empty() : tensor<8x16xf32>
  %cst = arith.constant 0.000000e+00 : f32
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<8x16xf32>) -> tensor<8x16xf32>
  %w = linalg.generic {indexing_maps = [#x, #dy, #w], iterator_types = ["parallel", "parallel", "reduction", "reduction"]} ins(%x, %dy : tensor<32x40x8xf32>, tensor<32x40x16xf32>) outs(%f : tensor<8x16xf32>) attrs = {moe.name = "dw"} {
  ^bb0(%a: f32, %g: f32, %acc: f32):
    %0 = arith.mulf %a, %g : f32
    %1 = arith.addf %acc, %0 : f32
    linalg.yield %1 : f32
  } -> tensor<8x16xf32>
  return %w : tensor<8x16xf32>
}

// -----

// An elementwise op (no reduction over the batch) and a product whose
// output keeps the batch dimension are left alone.
// CHECK-LABEL: func.func @no_batch_sum
// CHECK-NOT: tensor.expand_shape
// CHECK: linalg.generic
// CHECK-NOT: tensor.expand_shape
// CHECK: return
#id = affine_map<(b, n) -> (b, n)>
func.func @no_batch_sum(%x: tensor<32x16xf32>) -> tensor<32x16xf32> {
  %e = tensor.empty() : tensor<32x16xf32>
  %y = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<32x16xf32>) outs(%e : tensor<32x16xf32>) {
  ^bb0(%a: f32, %o: f32):
    %0 = arith.addf %o, %a : f32
    linalg.yield %0 : f32
  } -> tensor<32x16xf32>
  return %y : tensor<32x16xf32>
}
