// RUN: moec-opt %s --split-input-file --moe-vectorize-kernels | FileCheck %s

// A 10x64x32 matmul: register tiles of 5 rows x 32 floats, K steps of 1
// carrying the accumulator in a vector (hoisted out of the K loop).
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for %[[M:.*]] = %{{.*}} to %{{.*}} step %c5
// CHECK:   %[[ACC:.*]] = vector.transfer_read {{.*}} : tensor<10x32xf32>, vector<5x32xf32>
// CHECK:   %[[R:.*]]:2 = scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %{{.*}}, %[[A:.*]] = %[[ACC]]) -> (tensor<10x32xf32>, vector<5x32xf32>)
// CHECK:     vector.contract {{.*}} : vector<5x1xf32>, vector<1x32xf32> into vector<5x32xf32>
// CHECK:   vector.transfer_write %[[R]]#1
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
