// RUN: moec-opt %s --moe-expand-copies | FileCheck %s

// Strided copies become linalg.copy (loops, no runtime call).
// CHECK-LABEL: func.func @copy
// CHECK-NOT: memref.copy
// CHECK: linalg.copy ins(%{{.*}} : memref<2x4xf32, strided<[8, 1]>>) outs(%{{.*}} : memref<2x4xf32>)
// CHECK-NOT: memref.copy
// CHECK: return
func.func @copy(%src: memref<2x4xf32, strided<[8, 1]>>, %dst: memref<2x4xf32>) {
  memref.copy %src, %dst : memref<2x4xf32, strided<[8, 1]>> to memref<2x4xf32>
  return
}
