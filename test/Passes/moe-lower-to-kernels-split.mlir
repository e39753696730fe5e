// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-split-batch-reductions),moe-lower-to-kernels{entry=train_step})' | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-lower-to-kernels=entry=train_step | FileCheck %s --check-prefix=NOSPLIT

// A weight gradient dW = x^T dy summed over the batch (32 images, 16
// tiles of 2): a partial op over [16, 8, 16] whose tiles each read their
// own two images, then the sum of the 16 partials into the original init.
// CHECK-LABEL: func.func @train_step
// CHECK-SAME: (%[[X:.*]]: tensor<32x40x8xf32>, %[[DY:.*]]: tensor<32x40x16xf32>)
// CHECK-DAG: %[[XE:.*]] = tensor.expand_shape %[[X]] {{\[}}[0, 1], [2], [3]] output_shape [16, 2, 40, 8]
// CHECK-DAG: %[[DYE:.*]] = tensor.expand_shape %[[DY]] {{\[}}[0, 1], [2], [3]] output_shape [16, 2, 40, 16]
// CHECK: %[[P:.*]] = call @moec_k0(%[[XE]], %[[DYE]], %{{.*}}, %{{.*}}, %{{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "dw", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 16 : i64} : (tensor<16x2x40x8xf32>, tensor<16x2x40x16xf32>, tensor<16x8x16xf32>, index, index) -> tensor<16x8x16xf32>
// CHECK: %[[W:.*]] = call @moec_k1(%[[P]], %{{.*}}, %{{.*}}, %{{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "dw", {{.*}}moe.tiles = 8 : i64} : (tensor<16x8x16xf32>, tensor<8x16xf32>, index, index) -> tensor<8x16xf32>
// CHECK: return %[[W]]
// CHECK-LABEL: func.func @moec_k0
// CHECK: linalg.fill
// CHECK-NEXT: linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "parallel", "reduction", "reduction"]{{.*}} ins(%{{.*}}, %{{.*}} : tensor<1x2x40x8xf32>, tensor<1x2x40x16xf32>) outs(%{{.*}} : tensor<1x8x16xf32>)
// CHECK-LABEL: func.func @moec_k1
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "reduction", "parallel"]{{.*}} ins(%{{.*}} : tensor<16x1x16xf32>) outs(%{{.*}} : tensor<1x16xf32>)
// CHECK: arith.addf
// NOSPLIT-LABEL: func.func @train_step
// NOSPLIT-NOT: tensor.expand_shape
// NOSPLIT: call @moec_k0({{.*}}) {{.*}}moe.tiles = 8 : i64} : (tensor<32x40x8xf32>, tensor<32x40x16xf32>, tensor<8x16xf32>, index, index) -> tensor<8x16xf32>
#x = affine_map<(k, n, b, s) -> (b, s, k)>
#dy = affine_map<(k, n, b, s) -> (b, s, n)>
#w = affine_map<(k, n, b, s) -> (k, n)>
func.func @train_step(%x: tensor<32x40x8xf32>, %dy: tensor<32x40x16xf32>) -> tensor<8x16xf32> {
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

// A bias gradient (one input) puts the output's loop innermost in the
// partial op: (t, image, token, n), vectorizable along n. The batch is the
// experts' dimension 1 here ([E, B, C, N] slots): the expansion splits it
// there (the batch is the images argument's). Its sum adds into the
// original init (an accumulation, not a fill).
// CHECK-LABEL: func.func @train_step
// CHECK: tensor.expand_shape %{{.*}} {{\[}}[0], [1, 2], [3], [4]] output_shape [4, 16, 2, 40, 16] : tensor<4x32x40x16xf32> into tensor<4x16x2x40x16xf32>
// CHECK: call @moec_k0({{.*}}) {{.*}}moe.tiles = 16 : i64} : (tensor<4x16x2x40x16xf32>, tensor<16x4x16xf32>, index, index) -> tensor<16x4x16xf32>
// CHECK: call @moec_k1(%{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}) {{.*}} : (tensor<16x4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
// CHECK-LABEL: func.func @moec_k0
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "reduction", "reduction", "parallel", "parallel"]
// CHECK-LABEL: func.func @moec_k1
// CHECK: linalg.copy
#g = affine_map<(e, n, b, c) -> (e, b, c, n)>
#o = affine_map<(e, n, b, c) -> (e, n)>
func.func @train_step(%images: tensor<32x1x4x4xf32>, %dy: tensor<4x32x40x16xf32>, %acc: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %s = linalg.generic {indexing_maps = [#g, #o], iterator_types = ["parallel", "parallel", "reduction", "reduction"]} ins(%dy : tensor<4x32x40x16xf32>) outs(%acc : tensor<4x16xf32>) {
  ^bb0(%a: f32, %o: f32):
    %0 = arith.addf %o, %a : f32
    linalg.yield %0 : f32
  } -> tensor<4x16xf32>
  return %s : tensor<4x16xf32>
}

// -----

// Not split: a reduction that is not a sum (max), and a reduction over a
// dimension that is not the batch (the 40 tokens).
// CHECK-LABEL: func.func @train_step
// CHECK-NOT: tensor.expand_shape
// CHECK: return
#in = affine_map<(b, n, s) -> (b, s, n)>
#out = affine_map<(b, n, s) -> (n)>
#perimg = affine_map<(b, n, s) -> (b, n)>
func.func @train_step(%x: tensor<32x40x16xf32>) -> (tensor<16xf32>, tensor<32x16xf32>) {
  %e = tensor.empty() : tensor<16xf32>
  %cst = arith.constant 0.000000e+00 : f32
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<16xf32>) -> tensor<16xf32>
  %m = linalg.generic {indexing_maps = [#in, #out], iterator_types = ["reduction", "parallel", "reduction"]} ins(%x : tensor<32x40x16xf32>) outs(%f : tensor<16xf32>) {
  ^bb0(%a: f32, %o: f32):
    %0 = arith.maximumf %o, %a : f32
    linalg.yield %0 : f32
  } -> tensor<16xf32>
  %e2 = tensor.empty() : tensor<32x16xf32>
  %f2 = linalg.fill ins(%cst : f32) outs(%e2 : tensor<32x16xf32>) -> tensor<32x16xf32>
  %p = linalg.generic {indexing_maps = [#in, #perimg], iterator_types = ["parallel", "parallel", "reduction"]} ins(%x : tensor<32x40x16xf32>) outs(%f2 : tensor<32x16xf32>) {
  ^bb0(%a: f32, %o: f32):
    %0 = arith.addf %o, %a : f32
    linalg.yield %0 : f32
  } -> tensor<32x16xf32>
  return %m, %p : tensor<16xf32>, tensor<32x16xf32>
}
