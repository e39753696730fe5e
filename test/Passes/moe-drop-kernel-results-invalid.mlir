// RUN: moec-opt %s --moe-drop-kernel-results --verify-diagnostics

func.func @moec_k1(%x: memref<4xf32>, %b: index, %e: index) -> memref<4xf32> attributes {moe.kernel} {
  %0 = memref.alloc() : memref<4xf32>
  // expected-error @+1 {{kernel result #0 is not written in place into an argument}}
  return %0 : memref<4xf32>
}
