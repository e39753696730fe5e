// RUN: moec-opt %s --split-input-file --moe-vectorize-kernels="register-bits=256 vector-registers=16" | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-vectorize-kernels | FileCheck %s --check-prefix=AVX512
// RUN: moec-opt %s --split-input-file --moe-vectorize-kernels="register-bits=256 vector-registers=16 l1-bytes=65536" | FileCheck %s --check-prefix=BIGL1
// RUN: not moec-opt %s --split-input-file --moe-vectorize-kernels="register-bits=100" 2>&1 | FileCheck %s --check-prefix=BAD
// RUN: not moec-opt %s --split-input-file --moe-vectorize-kernels="l1-bytes=0" 2>&1 | FileCheck %s --check-prefix=BADL1

// Register tiles follow the target's register file. A 48x64x128 matmul on
// AVX2 (16 ymm registers of 8 floats): 6 rows x 16 floats, 12 accumulator
// registers. On AVX-512 (32 zmm of 16 floats): 6 rows x 64 floats, 24.
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for %{{.*}} = %{{.*}} to %c48 step %c6
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c128 step %c16
// CHECK:     vector.contract {{.*}} : vector<6x1xf32>, vector<1x16xf32> into vector<6x16xf32>
// AVX512-LABEL: func.func @moec_k0
// AVX512: scf.for %{{.*}} = %{{.*}} to %c48 step %c6
// AVX512:   scf.for %{{.*}} = %{{.*}} to %c128 step %c64
// AVX512:     vector.contract {{.*}} : vector<6x1xf32>, vector<1x64xf32> into vector<6x64xf32>
// BADL1: error: moe-vectorize-kernels: l1-bytes must be at least 1024, got 0
// BAD: error: moe-vectorize-kernels: register-bits must be a multiple of 32 and vector-registers at least 4, got 100 and 32
func.func @moec_k0(%a: tensor<48x64xf32>, %b: tensor<64x128xf32>, %c: tensor<48x128xf32>) -> tensor<48x128xf32> attributes {moe.kernel} {
  %0 = linalg.matmul ins(%a, %b : tensor<48x64xf32>, tensor<64x128xf32>) outs(%c : tensor<48x128xf32>) -> tensor<48x128xf32>
  return %0 : tensor<48x128xf32>
}

// -----

// A head-sized output: 16 floats are two AVX2 registers per row (5 rows of
// the 50), one AVX-512 register (10 rows).
// CHECK-LABEL: func.func @moec_k1
// CHECK: vector.contract {{.*}} : vector<5x1xf32>, vector<1x16xf32> into vector<5x16xf32>
// AVX512-LABEL: func.func @moec_k1
// AVX512: vector.contract {{.*}} : vector<10x1xf32>, vector<1x16xf32> into vector<10x16xf32>
func.func @moec_k1(%a: tensor<50x16xf32>, %b: tensor<16x16xf32>, %c: tensor<50x16xf32>) -> tensor<50x16xf32> attributes {moe.kernel} {
  %0 = linalg.matmul ins(%a, %b : tensor<50x16xf32>, tensor<16x16xf32>) outs(%c : tensor<50x16xf32>) -> tensor<50x16xf32>
  return %0 : tensor<50x16xf32>
}

// -----

// An output width that is no multiple of a register (20 = 16 + a peeled 4):
// the widest whole-register tile the limit allows, two registers per row, so
// up to 6 rows; the peeled columns keep the rows.
// CHECK-LABEL: func.func @moec_k2
// CHECK: scf.for %{{.*}} = %{{.*}} to %c12 step %c6
// CHECK:   vector.contract {{.*}} : vector<6x1xf32>, vector<1x16xf32> into vector<6x16xf32>
// CHECK:   vector.contract {{.*}} : vector<6x1xf32>, vector<1x4xf32> into vector<6x4xf32>
func.func @moec_k2(%a: tensor<12x32xf32>, %b: tensor<32x20xf32>, %c: tensor<12x20xf32>) -> tensor<12x20xf32> attributes {moe.kernel} {
  %0 = linalg.matmul ins(%a, %b : tensor<12x32xf32>, tensor<32x20xf32>) outs(%c : tensor<12x20xf32>) -> tensor<12x20xf32>
  return %0 : tensor<12x20xf32>
}

// -----

// A weight gradient dW[k, n] = sum_r x[r, k] dy[r, n] over 400 rows (images
// x tokens): blocks of 20 rows (20 x 4 x (64 + 192) bytes fit 3/4 of a
// 32 KiB L1) around the register tiles; each tile's accumulators are read
// and written once per block. The 64 rows of dW: 6-row tiles (12
// accumulators; 64's largest divisor up to 6 is 4, only 8) and a peeled 4.
// CHECK-LABEL: func.func @moec_k3
// CHECK: scf.for %{{.*}} = %{{.*}} to %c400 step %c20
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c60 step %c6
// CHECK:     scf.for %{{.*}} = %{{.*}} to %c192 step %c16
// CHECK:       scf.for %{{.*}} = %{{.*}} to %c20 step %c1
// CHECK:         vector.contract {{.*}} : vector<1x6xf32>, vector<1x16xf32> into vector<6x16xf32>
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c192 step %c16
// CHECK:     scf.for %{{.*}} = %{{.*}} to %c20 step %c1
// CHECK:       vector.contract {{.*}} : vector<1x4xf32>, vector<1x16xf32> into vector<4x16xf32>
// BIGL1-LABEL: func.func @moec_k3
// BIGL1-NOT: step %c20
// 64 KiB of L1 (3/4: 48 KiB): blocks of 40.
// BIGL1: scf.for %{{.*}} = %{{.*}} to %c400 step %c40
#xr = affine_map<(k, n, r) -> (r, k)>
#dyr = affine_map<(k, n, r) -> (r, n)>
#wr = affine_map<(k, n, r) -> (k, n)>
func.func @moec_k3(%x: tensor<400x64xf32>, %dy: tensor<400x192xf32>, %w: tensor<64x192xf32>) -> tensor<64x192xf32> attributes {moe.kernel} {
  %0 = linalg.generic {indexing_maps = [#xr, #dyr, #wr], iterator_types = ["parallel", "parallel", "reduction"]} ins(%x, %dy : tensor<400x64xf32>, tensor<400x192xf32>) outs(%w : tensor<64x192xf32>) {
  ^bb0(%a: f32, %b: f32, %acc: f32):
    %1 = arith.mulf %a, %b : f32
    %2 = arith.addf %acc, %1 : f32
    linalg.yield %2 : f32
  } -> tensor<64x192xf32>
  return %0 : tensor<64x192xf32>
}

// -----

// Elementwise ops: a plain body (bias add) takes 64 lanes (8 AVX2
// registers per value); a body with a transcendental function (exp: a
// polynomial with many live temporaries and constants) takes one of AVX2's
// 16 registers per value, so that it does not spill. AVX-512 (32
// registers): 64 and 32 lanes (two registers per value).
// CHECK-LABEL: func.func @moec_k6
// CHECK: arith.addf {{.*}} : vector<1x64xf32>
// CHECK: math.exp {{.*}} : vector<1x8xf32>
// AVX512-LABEL: func.func @moec_k6
// AVX512: arith.addf {{.*}} : vector<1x64xf32>
// AVX512: math.exp {{.*}} : vector<1x32xf32>
#row = affine_map<(d0, d1) -> (d0, d1)>
func.func @moec_k6(%x: tensor<4x128xf32>, %y: tensor<4x128xf32>, %sum: tensor<4x128xf32>, %e: tensor<4x128xf32>) -> (tensor<4x128xf32>, tensor<4x128xf32>) attributes {moe.kernel} {
  %0 = linalg.generic {indexing_maps = [#row, #row, #row], iterator_types = ["parallel", "parallel"]} ins(%x, %y : tensor<4x128xf32>, tensor<4x128xf32>) outs(%sum : tensor<4x128xf32>) {
  ^bb0(%a: f32, %b: f32, %o: f32):
    %s = arith.addf %a, %b : f32
    linalg.yield %s : f32
  } -> tensor<4x128xf32>
  %1 = linalg.generic {indexing_maps = [#row, #row], iterator_types = ["parallel", "parallel"]} ins(%0 : tensor<4x128xf32>) outs(%e : tensor<4x128xf32>) {
  ^bb0(%a: f32, %o: f32):
    %s = math.exp %a : f32
    linalg.yield %s : f32
  } -> tensor<4x128xf32>
  return %0, %1 : tensor<4x128xf32>, tensor<4x128xf32>
}

// -----

// An expert's 32 slots: 6-row tiles (32's largest divisor up to 6 is 4)
// and a peeled 2-row tile; both start their accumulators at zero in
// registers.
// CHECK-LABEL: func.func @moec_k7
// CHECK: scf.for %{{.*}} = %{{.*}} to %c30 step %c6
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c128 step %c16
// CHECK:     scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %{{.*}}) -> (vector<6x16xf32>)
// CHECK: scf.for %{{.*}} = %{{.*}} to %c128 step %c16
// CHECK:   scf.for %{{.*}} = %{{.*}} to %c64 step %c1 iter_args(%{{.*}} = %{{.*}}) -> (vector<2x16xf32>)
// CHECK-NOT: linalg.fill
func.func @moec_k7(%a: tensor<32x64xf32>, %b: tensor<64x128xf32>, %c: tensor<32x128xf32>) -> tensor<32x128xf32> attributes {moe.kernel} {
  %zero = arith.constant 0.0 : f32
  %init = linalg.fill ins(%zero : f32) outs(%c : tensor<32x128xf32>) -> tensor<32x128xf32>
  %0 = linalg.matmul ins(%a, %b : tensor<32x64xf32>, tensor<64x128xf32>) outs(%init : tensor<32x128xf32>) -> tensor<32x128xf32>
  return %0 : tensor<32x128xf32>
}
