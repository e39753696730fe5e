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

// A bf16-pair contraction tile (moe-bf16-contractions): with bf16-dot, one
// dot product of bf16 pairs per row and register of columns (24 = 16 + 8),
// the row's pair of A broadcast as one 32-bit value; without, two f32 FMAs
// per row on the extended bf16 values.
// RUN: moec-opt %s --moe-lower-vectors='bf16-dot=true' | FileCheck %s --check-prefix=DOT
// RUN: moec-opt %s --moe-lower-vectors | FileCheck %s --check-prefix=NODOT
// DOT-LABEL: func.func @bf16_pairs
// DOT-NOT:   vector.contract
// DOT:       vector.broadcast %{{.*}} : i32 to vector<16xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<32xbf16> -> vector<16xf32>
// DOT:       vector.broadcast %{{.*}} : i32 to vector<8xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<16xbf16> -> vector<8xf32>
// DOT:       vector.broadcast %{{.*}} : i32 to vector<16xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<32xbf16> -> vector<16xf32>
// DOT:       vector.broadcast %{{.*}} : i32 to vector<8xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<16xbf16> -> vector<8xf32>
// DOT:       vector.broadcast %{{.*}} : i32 to vector<16xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<32xbf16> -> vector<16xf32>
// DOT:       vector.broadcast %{{.*}} : i32 to vector<8xi32>
// DOT:       x86vector.avx512.dot {{.*}} : vector<16xbf16> -> vector<8xf32>
// DOT-NOT:   x86vector.avx512.dot
// DOT-NOT:   vector.fma
// DOT:       return
// NODOT-LABEL: func.func @bf16_pairs
// NODOT-NOT: x86vector
// NODOT-COUNT-6: vector.fma {{.*}} : vector<24xf32>
// NODOT-NOT: vector.fma
// NODOT:     return
#pa = affine_map<(m, n, k, p) -> (m, k, p)>
#pb = affine_map<(m, n, k, p) -> (k, n, p)>
#pc = affine_map<(m, n, k, p) -> (m, n)>
func.func @bf16_pairs(%A: vector<3x1x2xbf16>, %B: vector<1x24x2xbf16>, %acc: vector<3x24xf32>) -> vector<3x24xf32> {
  %a = arith.extf %A : vector<3x1x2xbf16> to vector<3x1x2xf32>
  %b = arith.extf %B : vector<1x24x2xbf16> to vector<1x24x2xf32>
  %r = vector.contract {indexing_maps = [#pa, #pb, #pc], iterator_types = ["parallel", "parallel", "reduction", "reduction"], kind = #vector.kind<add>} %a, %b, %acc : vector<3x1x2xf32>, vector<1x24x2xf32> into vector<3x24xf32>
  return %r : vector<3x24xf32>
}
