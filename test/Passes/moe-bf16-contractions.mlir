// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-bf16-contractions))' | FileCheck %s

// A matmul: A rounded to bf16 along its contiguous K and split into pairs,
// B packed into [K/2, N, 2] (two rows read, interleaved, rounded, one
// contiguous write per 16 columns; 72 = 4 x 16 + a tail of 8), then the
// contraction over (K/2, 2) with the bias init untouched.
// CHECK-LABEL: func.func @dense
// CHECK:       %[[BIAS:.*]] = linalg.broadcast
// CHECK:       linalg.generic {{.*}} ins(%arg0 : tensor<50x64xf32>) outs(%{{.*}} : tensor<50x64xbf16>)
// CHECK:         arith.truncf %{{.*}} : f32 to bf16
// CHECK:       %[[A:.*]] = tensor.expand_shape %{{.*}} {{\[}}[0], [1, 2]] output_shape [50, 32, 2]
// CHECK:       scf.for %{{.*}} = %c0{{.*}} to %c32
// CHECK:         scf.for %{{.*}} to %c64 step %c16
// CHECK-COUNT-2:   vector.transfer_read %arg1{{.*}} : tensor<64x72xf32>, vector<16xf32>
// CHECK:           vector.shuffle {{.*}} [0, 16, 1, 17, 2, 18
// CHECK:           arith.truncf {{.*}} : vector<32xf32> to vector<32xbf16>
// CHECK:           vector.transfer_write {{.*}} : vector<32xbf16>, tensor<32x144xbf16>
// CHECK:       vector<8xf32>
// CHECK:       arith.truncf {{.*}} : vector<16xf32> to vector<16xbf16>
// CHECK:       %[[B:.*]] = tensor.expand_shape %{{.*}} {{\[}}[0], [1, 2]] output_shape [32, 72, 2]
// CHECK:       linalg.generic {indexing_maps = [#[[MA:.*]], #[[MB:.*]], #[[MC:.*]]], iterator_types = ["parallel", "parallel", "reduction", "reduction"]}
// CHECK-SAME:    ins(%[[A]], %[[B]] : tensor<50x32x2xbf16>, tensor<32x72x2xbf16>) outs(%[[BIAS]] : tensor<50x72xf32>)
// CHECK:         arith.extf
// CHECK:         arith.extf
// CHECK:         arith.mulf
// CHECK:         arith.addf
// CHECK:       } -> tensor<50x72xf32>
func.func @dense(%a: tensor<50x64xf32>, %w: tensor<64x72xf32>, %bias: tensor<72xf32>, %out: tensor<50x72xf32>) -> tensor<50x72xf32> attributes {moe.kernel} {
  %b = linalg.broadcast ins(%bias : tensor<72xf32>) outs(%out : tensor<50x72xf32>) dimensions = [0]
  %r = linalg.matmul ins(%a, %w : tensor<50x64xf32>, tensor<64x72xf32>) outs(%b : tensor<50x72xf32>) -> tensor<50x72xf32>
  return %r : tensor<50x72xf32>
}

// -----

// A batched generic (a backward dX: the weight read as [N_red, K]): the
// batch dims stay outer loops of the pack.
// CHECK-LABEL: func.func @batched
// CHECK:       tensor.expand_shape {{.*}} output_shape [8, 50, 96, 2]
// CHECK:       tensor.expand_shape {{.*}} output_shape [96, 64, 2]
// CHECK:       ins(%{{.*}}, %{{.*}} : tensor<8x50x96x2xbf16>, tensor<96x64x2xbf16>)
// CHECK-SAME:  {moe.bf16_pairs}
#x = affine_map<(b, t, k, n) -> (b, t, n)>
#w = affine_map<(b, t, k, n) -> (n, k)>
#y = affine_map<(b, t, k, n) -> (b, t, k)>
func.func @batched(%dy: tensor<8x50x192xf32>, %w: tensor<192x64xf32>, %out: tensor<8x50x64xf32>) -> tensor<8x50x64xf32> attributes {moe.kernel} {
  %r = linalg.generic {indexing_maps = [#x, #w, #y], iterator_types = ["parallel", "parallel", "parallel", "reduction"]} ins(%dy, %w : tensor<8x50x192xf32>, tensor<192x64xf32>) outs(%out : tensor<8x50x64xf32>) {
  ^bb0(%p: f32, %q: f32, %acc: f32):
    %m = arith.mulf %p, %q : f32
    %s = arith.addf %acc, %m : f32
    linalg.yield %s : f32
  } -> tensor<8x50x64xf32>
  return %r : tensor<8x50x64xf32>
}

// -----

// What stays f32: a router's 4 experts (narrower than 16 columns), an odd
// reduction, a weight gradient (its reduction over tokens is not A's
// contiguous dimension), and anything outside a kernel.
// CHECK-LABEL: func.func @stays_f32
// CHECK-NOT:   bf16
// CHECK:       return
// CHECK-LABEL: func.func @not_a_kernel
// CHECK-NOT:   bf16
#xt = affine_map<(k, n, t) -> (t, k)>
#dy = affine_map<(k, n, t) -> (t, n)>
#dw = affine_map<(k, n, t) -> (k, n)>
func.func @stays_f32(%a: tensor<50x64xf32>, %router: tensor<64x4xf32>, %r0: tensor<50x4xf32>,
                     %odd: tensor<50x63xf32>, %w: tensor<63x32xf32>, %r1: tensor<50x32xf32>,
                     %x: tensor<50x64xf32>, %g: tensor<50x32xf32>, %r2: tensor<64x32xf32>)
    -> (tensor<50x4xf32>, tensor<50x32xf32>, tensor<64x32xf32>) attributes {moe.kernel} {
  %0 = linalg.matmul ins(%a, %router : tensor<50x64xf32>, tensor<64x4xf32>) outs(%r0 : tensor<50x4xf32>) -> tensor<50x4xf32>
  %1 = linalg.matmul ins(%odd, %w : tensor<50x63xf32>, tensor<63x32xf32>) outs(%r1 : tensor<50x32xf32>) -> tensor<50x32xf32>
  %2 = linalg.generic {indexing_maps = [#xt, #dy, #dw], iterator_types = ["parallel", "parallel", "reduction"]} ins(%x, %g : tensor<50x64xf32>, tensor<50x32xf32>) outs(%r2 : tensor<64x32xf32>) {
  ^bb0(%p: f32, %q: f32, %acc: f32):
    %m = arith.mulf %p, %q : f32
    %s = arith.addf %acc, %m : f32
    linalg.yield %s : f32
  } -> tensor<64x32xf32>
  return %0, %1, %2 : tensor<50x4xf32>, tensor<50x32xf32>, tensor<64x32xf32>
}
func.func @not_a_kernel(%a: tensor<50x64xf32>, %w: tensor<64x64xf32>, %r: tensor<50x64xf32>) -> tensor<50x64xf32> {
  %0 = linalg.matmul ins(%a, %w : tensor<50x64xf32>, tensor<64x64xf32>) outs(%r : tensor<50x64xf32>) -> tensor<50x64xf32>
  return %0 : tensor<50x64xf32>
}

// -----

// B does not change in the loop around the contraction (an expert's weights
// over tiles of its tokens): it is packed once, before the loop.
// CHECK-LABEL: func.func @invariant_weights
// CHECK:       scf.for {{.*}} -> (tensor<16x64xbf16>)
// CHECK:       %[[B:.*]] = tensor.expand_shape {{.*}} output_shape [16, 32, 2]
// CHECK:       scf.for {{.*}} -> (tensor<64x32xf32>)
// CHECK-NOT:     vector.shuffle
// CHECK:         linalg.generic {{.*}} ins(%{{.*}}, %[[B]] : tensor<8x16x2xbf16>, tensor<16x32x2xbf16>)
func.func @invariant_weights(%x: tensor<64x32xf32>, %w: tensor<32x32xf32>, %out: tensor<64x32xf32>) -> tensor<64x32xf32> attributes {moe.kernel} {
  %c0 = arith.constant 0 : index
  %c8 = arith.constant 8 : index
  %c64 = arith.constant 64 : index
  %r = scf.for %i = %c0 to %c64 step %c8 iter_args(%acc = %out) -> (tensor<64x32xf32>) {
    %a = tensor.extract_slice %x[%i, 0] [8, 32] [1, 1] : tensor<64x32xf32> to tensor<8x32xf32>
    %o = tensor.extract_slice %acc[%i, 0] [8, 32] [1, 1] : tensor<64x32xf32> to tensor<8x32xf32>
    %m = linalg.matmul ins(%a, %w : tensor<8x32xf32>, tensor<32x32xf32>) outs(%o : tensor<8x32xf32>) -> tensor<8x32xf32>
    %n = tensor.insert_slice %m into %acc[%i, 0] [8, 32] [1, 1] : tensor<8x32xf32> into tensor<64x32xf32>
    scf.yield %n : tensor<64x32xf32>
  }
  return %r : tensor<64x32xf32>
}
