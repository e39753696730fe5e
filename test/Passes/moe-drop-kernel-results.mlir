// RUN: moec-opt %s --moe-drop-kernel-results | FileCheck %s

// A kernel's results are its destination arguments: they are dropped from
// its signature and its return; other functions keep theirs.
// CHECK-LABEL: func.func @keeps
// CHECK-SAME: -> memref<4xf32>
// CHECK: return %{{.*}} : memref<4xf32>
func.func @keeps(%x: memref<4xf32>) -> memref<4xf32> {
  return %x : memref<4xf32>
}

// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: (%{{.*}}: memref<4xf32>, %{{.*}}: memref<4xf32>, %{{.*}}: index, %{{.*}}: index) attributes {moe.kernel} {
// CHECK: return{{$}}
func.func @moec_k0(%x: memref<4xf32>, %out: memref<4xf32>, %b: index, %e: index) -> memref<4xf32> attributes {moe.kernel} {
  return %out : memref<4xf32>
}
