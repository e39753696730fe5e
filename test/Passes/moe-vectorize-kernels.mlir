// RUN: moec-opt %s --split-input-file --moe-vectorize-kernels | FileCheck %s

// A 10x64x32 matmul: register tiles of 5 rows x 32 floats, K steps of 1
// carrying the accumulator in a vector (hoisted out of the K loop).
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for %[[M:.*]] = %{{.*}} to %{{.*}} step %c5
// CHECK:   %[[ACC:.*]] = vector.transfer_read {{.*}} : tensor<10x32xf32>, vector<5x32xf32>
// CHECK:   %[[R:.*]] = scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[ACC]]) -> (vector<5x32xf32>)
// CHECK:     vector.contract {{.*}} : vector<5x1xf32>, vector<1x32xf32> into vector<5x32xf32>
// CHECK:   vector.transfer_write %[[R]]
// CHECK-NOT: linalg.matmul
func.func @moec_k0(%a: tensor<10x64xf32>, %b: tensor<64x32xf32>, %c: tensor<10x32xf32>) -> tensor<10x32xf32> attributes {moe.kernel} {
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x32xf32>) outs(%c : tensor<10x32xf32>) -> tensor<10x32xf32>
  return %0 : tensor<10x32xf32>
}

// -----

// A row reduction (softmax/layer-norm statistics): one row at a time, the
// whole row as a vector reduction.
// CHECK-LABEL: func.func @moec_k1
// CHECK: scf.for %{{.*}} = %{{.*}} to %c6 step %c1
// CHECK:   vector.multi_reduction <add>, %{{.*}} [1] : vector<1x48xf32> to vector<1xf32>
#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
func.func @moec_k1(%x: tensor<6x48xf32>, %s: tensor<6xf32>) -> tensor<6xf32> attributes {moe.kernel} {
  %0 = linalg.generic {indexing_maps = [#map, #map1], iterator_types = ["parallel", "reduction"]} ins(%x : tensor<6x48xf32>) outs(%s : tensor<6xf32>) {
  ^bb0(%in: f32, %acc: f32):
    %1 = arith.addf %acc, %in : f32
    linalg.yield %1 : f32
  } -> tensor<6xf32>
  return %0 : tensor<6xf32>
}

// -----

// Functions that are not kernels are left alone.
// CHECK-LABEL: func.func @not_a_kernel
// CHECK: linalg.matmul
func.func @not_a_kernel(%a: tensor<10x64xf32>, %b: tensor<64x32xf32>, %c: tensor<10x32xf32>) -> tensor<10x32xf32> {
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x32xf32>) outs(%c : tensor<10x32xf32>) -> tensor<10x32xf32>
  return %0 : tensor<10x32xf32>
}

// -----

// A weight-gradient tile dW[k, n] += x[b, s, k] dy[b, s, n] reduces over
// images x tokens: the two reduction dimensions become one over their
// product (the inputs collapsed to [b*s, ...]), so the tile lowers to
// [4x1] x [1x64] outer-product contractions like a matmul.
// CHECK-LABEL: func.func @moec_k2
// CHECK-DAG: tensor.collapse_shape %{{.*}} {{\[}}[0, 1], [2]] : tensor<2x50x8xf32> into tensor<100x8xf32>
// CHECK-DAG: tensor.collapse_shape %{{.*}} {{\[}}[0, 1], [2]] : tensor<2x50x64xf32> into tensor<100x64xf32>
// CHECK: scf.for %{{.*}} = %{{.*}} to %c100 step %c1
// CHECK:   vector.contract {{.*}} : vector<1x4xf32>, vector<1x64xf32> into vector<4x64xf32>
#x = affine_map<(k, n, b, s) -> (b, s, k)>
#dy = affine_map<(k, n, b, s) -> (b, s, n)>
#w = affine_map<(k, n, b, s) -> (k, n)>
func.func @moec_k2(%x: tensor<2x50x8xf32>, %dy: tensor<2x50x64xf32>, %w: tensor<8x64xf32>) -> tensor<8x64xf32> attributes {moe.kernel} {
  %0 = linalg.generic {indexing_maps = [#x, #dy, #w], iterator_types = ["parallel", "parallel", "reduction", "reduction"]} ins(%x, %dy : tensor<2x50x8xf32>, tensor<2x50x64xf32>) outs(%w : tensor<8x64xf32>) {
  ^bb0(%a: f32, %g: f32, %acc: f32):
    %1 = arith.mulf %a, %g : f32
    %2 = arith.addf %acc, %1 : f32
    linalg.yield %2 : f32
  } -> tensor<8x64xf32>
  return %0 : tensor<8x64xf32>
}

// -----

// A matmul whose accumulators start as zeros (a linalg.fill of the output):
// each register tile starts its K loop from a zero vector in registers; no
// pass over the whole output sets it to zero in memory first.
// CHECK-LABEL: func.func @moec_k3
// CHECK-DAG: %[[ZERO:.*]] = arith.constant dense<0.000000e+00> : vector<5x32xf32>
// CHECK: scf.for %[[M:.*]] = %{{.*}} to %c10 step %c5 iter_args(%[[OUT:.*]] = %{{.*}}) -> (tensor<10x32xf32>)
// CHECK-NEXT: %[[ACC:.*]] = scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[ZERO]]) -> (vector<5x32xf32>)
// CHECK: vector.contract {{.*}} : vector<5x1xf32>, vector<1x32xf32> into vector<5x32xf32>
// CHECK: vector.transfer_write %[[ACC]], %[[OUT]][%[[M]], %{{.*}}]
// CHECK-NOT: linalg.fill
// CHECK-NOT: vector.transfer_write %[[ZERO]]
func.func @moec_k3(%a: tensor<10x64xf32>, %b: tensor<64x32xf32>, %c: tensor<10x32xf32>) -> tensor<10x32xf32> attributes {moe.kernel} {
  %zero = arith.constant 0.0 : f32
  %init = linalg.fill ins(%zero : f32) outs(%c : tensor<10x32xf32>) -> tensor<10x32xf32>
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x32xf32>) outs(%init : tensor<10x32xf32>) -> tensor<10x32xf32>
  return %0 : tensor<10x32xf32>
}

// -----

// A matmul whose accumulators start as the bias broadcast over rows: every
// tile, the peeled 2-column one too, starts from its columns of the bias in
// registers.
// The 50 columns are tiles of one AVX-512 register (10 rows) and the
// peeled 2: a tile of 32 would leave a ragged 18, one of 48 is three
// registers, which LLVM splits into 128-bit pieces when the loop carries it.
// CHECK-LABEL: func.func @moec_k4
// CHECK: scf.for %[[N:.*]] = %{{.*}} to %c48 step %c16
// CHECK:   %[[B:.*]] = vector.transfer_read %{{.*}}[%[[N]]], %{{.*}} : tensor<50xf32>, vector<16xf32>
// CHECK:   %[[BB:.*]] = vector.broadcast %[[B]] : vector<16xf32> to vector<10x16xf32>
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[BB]]) -> (vector<10x16xf32>)
// CHECK:   %[[T:.*]] = vector.transfer_read %{{.*}}[%c48], %{{.*}} : tensor<50xf32>, vector<2xf32>
// CHECK:   %[[TB:.*]] = vector.broadcast %[[T]] : vector<2xf32> to vector<10x2xf32>
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[TB]]) -> (vector<10x2xf32>)
// CHECK-NOT: linalg.broadcast
func.func @moec_k4(%a: tensor<10x64xf32>, %b: tensor<64x50xf32>, %bias: tensor<50xf32>, %c: tensor<10x50xf32>) -> tensor<10x50xf32> attributes {moe.kernel} {
  %init = linalg.broadcast ins(%bias : tensor<50xf32>) outs(%c : tensor<10x50xf32>) dimensions = [0]
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x50xf32>) outs(%init : tensor<10x50xf32>) -> tensor<10x50xf32>
  return %0 : tensor<10x50xf32>
}

// -----

// A bias broadcast written as a generic (what the VJPs emit) is an init the
// tiles compute themselves too.
// CHECK-LABEL: func.func @moec_k5
// CHECK: scf.for %{{.*}} = %{{.*}} to %c10 step %c5
// CHECK:   %[[B:.*]] = vector.transfer_read %{{.*}}[%c0], %{{.*}} : tensor<32xf32>, vector<32xf32>
// CHECK:   %[[BB:.*]] = vector.broadcast %[[B]] : vector<32xf32> to vector<5x32xf32>
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[BB]]) -> (vector<5x32xf32>)
// CHECK-NOT: linalg.generic
#bias = affine_map<(m, n) -> (n)>
#all = affine_map<(m, n) -> (m, n)>
func.func @moec_k5(%a: tensor<10x64xf32>, %b: tensor<64x32xf32>, %bias: tensor<32xf32>, %c: tensor<10x32xf32>) -> tensor<10x32xf32> attributes {moe.kernel} {
  %init = linalg.generic {indexing_maps = [#bias, #all], iterator_types = ["parallel", "parallel"]} ins(%bias : tensor<32xf32>) outs(%c : tensor<10x32xf32>) {
  ^bb0(%in: f32, %out: f32):
    linalg.yield %in : f32
  } -> tensor<10x32xf32>
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x32xf32>) outs(%init : tensor<10x32xf32>) -> tensor<10x32xf32>
  return %0 : tensor<10x32xf32>
}

// -----

// A fill that something else reads too stays a pass of its own over the
// whole tensor (written row by row), and the matmul's tiles load it: the
// zeros the other user sees must be there.
// CHECK-LABEL: func.func @moec_k6
// CHECK: %[[Z:.*]] = scf.for %{{.*}} = %{{.*}} to %c10 step %c1
// CHECK:   vector.transfer_write %{{.*}} : vector<1x32xf32>, tensor<10x32xf32>
// CHECK: %[[R:.*]] = scf.for %[[M:.*]] = %{{.*}} to %c10 step %c5 iter_args(%[[OUT:.*]] = %[[Z]])
// CHECK:   %[[ACC:.*]] = vector.transfer_read %[[OUT]][%[[M]], %c0]
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %[[ACC]])
// CHECK: return %[[R]], %[[Z]]
func.func @moec_k6(%a: tensor<10x64xf32>, %b: tensor<64x32xf32>, %c: tensor<10x32xf32>) -> (tensor<10x32xf32>, tensor<10x32xf32>) attributes {moe.kernel} {
  %zero = arith.constant 0.0 : f32
  %init = linalg.fill ins(%zero : f32) outs(%c : tensor<10x32xf32>) -> tensor<10x32xf32>
  %0 = linalg.matmul ins(%a, %b : tensor<10x64xf32>, tensor<64x32xf32>) outs(%init : tensor<10x32xf32>) -> tensor<10x32xf32>
  return %0, %init : tensor<10x32xf32>, tensor<10x32xf32>
}
