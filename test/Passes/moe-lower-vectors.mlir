// RUN: moec-opt %s --moe-lower-vectors | FileCheck %s

// A register-tile contraction (one K step) becomes one FMA per row;
// multi-dimensional transfers become 1-D ones.
// CHECK-LABEL: func.func @outer_product
// CHECK-NOT: vector.contract
// CHECK-COUNT-2: vector.fma {{.*}} : vector<16xf32>
// CHECK-NOT: vector.fma
#a = affine_map<(m, n, k) -> (m, k)>
#b = affine_map<(m, n, k) -> (k, n)>
#c = affine_map<(m, n, k) -> (m, n)>
func.func @outer_product(%A: memref<2x1xf32>, %B: memref<1x16xf32>, %acc: vector<2x16xf32>) -> vector<2x16xf32> {
  %c0 = arith.constant 0 : index
  %p = ub.poison : f32
  %a = vector.transfer_read %A[%c0, %c0], %p {in_bounds = [true, true]} : memref<2x1xf32>, vector<2x1xf32>
  %b = vector.transfer_read %B[%c0, %c0], %p {in_bounds = [true, true]} : memref<1x16xf32>, vector<1x16xf32>
  %r = vector.contract {indexing_maps = [#a, #b, #c], iterator_types = ["parallel", "parallel", "reduction"], kind = #vector.kind<add>} %a, %b, %acc : vector<2x1xf32>, vector<1x16xf32> into vector<2x16xf32>
  return %r : vector<2x16xf32>
}

// A row reduction becomes a 1-D vector.reduction.
// CHECK-LABEL: func.func @row_sum
// CHECK-NOT: vector.multi_reduction
// CHECK: vector.reduction <add>
func.func @row_sum(%x: vector<1x48xf32>, %acc: vector<1xf32>) -> vector<1xf32> {
  %r = vector.multi_reduction <add>, %x, %acc [1] : vector<1x48xf32> to vector<1xf32>
  return %r : vector<1xf32>
}
