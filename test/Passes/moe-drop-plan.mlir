// RUN: moec-opt %s --moe-drop-plan | FileCheck %s

// moe-drop-plan keeps only the kernels (functions with moe.kernel).
// CHECK-NOT: func.func @infer
// CHECK: func.func @moec_k0
// CHECK-NOT: func.func @infer
func.func @infer(%x: memref<4xf32>) {
  return
}
func.func @moec_k0(%x: memref<4xf32>, %out: memref<4xf32>, %b: index, %e: index) -> memref<4xf32> attributes {moe.kernel} {
  return %out : memref<4xf32>
}
