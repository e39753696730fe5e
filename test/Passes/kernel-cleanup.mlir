// The small passes of the CPU codegen pipeline.
// RUN: moec-opt %s --split-input-file --moe-drop-plan | FileCheck %s --check-prefix=PLAN
// RUN: moec-opt %s --split-input-file --moe-drop-kernel-results | FileCheck %s --check-prefix=RESULTS
// RUN: moec-opt %s --split-input-file --moe-expand-copies | FileCheck %s --check-prefix=COPIES
// RUN: moec-opt %s --split-input-file --moe-approximate-math | FileCheck %s --check-prefix=MATH

// moe-drop-plan keeps only kernels.
// PLAN-NOT: func.func @infer
// PLAN: func.func @moec_k0
// RESULTS-LABEL: func.func @moec_k0
// RESULTS-SAME: (%{{.*}}: memref<4xf32>, %{{.*}}: memref<4xf32>, %{{.*}}: index, %{{.*}}: index) attributes {moe.kernel}
// RESULTS: return{{$}}
func.func @infer(%x: memref<4xf32>) {
  return
}
func.func @moec_k0(%x: memref<4xf32>, %out: memref<4xf32>, %b: index, %e: index) -> memref<4xf32> attributes {moe.kernel} {
  return %out : memref<4xf32>
}

// -----

// moe-expand-copies: strided copies become linalg.copy (loops, no runtime call).
// COPIES-LABEL: func.func @copy
// COPIES-NOT: memref.copy
// COPIES: linalg.copy ins(%{{.*}} : memref<2x4xf32, strided<[8, 1]>>) outs(%{{.*}} : memref<2x4xf32>)
func.func @copy(%src: memref<2x4xf32, strided<[8, 1]>>, %dst: memref<2x4xf32>) {
  memref.copy %src, %dst : memref<2x4xf32, strided<[8, 1]>> to memref<2x4xf32>
  return
}

// -----

// moe-approximate-math: erf, tanh and exp become polynomials (no libm).
// MATH-LABEL: func.func @math
// MATH-NOT: math.erf
// MATH-NOT: math.tanh
// MATH-NOT: math.exp
// MATH: math.fma
func.func @math(%x: vector<16xf32>) -> vector<16xf32> {
  %0 = math.erf %x : vector<16xf32>
  %1 = math.tanh %0 : vector<16xf32>
  %2 = math.exp %1 : vector<16xf32>
  return %2 : vector<16xf32>
}
