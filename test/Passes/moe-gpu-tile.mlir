// RUN: moec-opt %s --pass-pipeline='builtin.module(func.func(moe-gpu-tile,canonicalize))' | FileCheck %s

// A kernel's GEMM becomes warp tiles: an scf.parallel over ceil(20/16) x
// ceil(10/8) = 4 tiles of 16 x 8 outputs, each a tile matmul on views of
// at most 16 x 24, 24 x 8 and 16 x 8 whose operands are rounded to bf16
// (the numerics of mma.sync m16n8k16 bf16 with f32 accumulators).
// CHECK-LABEL: func.func @kernel
// CHECK: %[[TILES:.*]] = arith.constant 4 : index
// CHECK: scf.parallel (%[[T:.*]]) = (%{{.*}}) to (%[[TILES]])
// CHECK: arith.divui %[[T]]
// CHECK: arith.remui %[[T]]
// CHECK: memref.subview %{{.*}}[%{{.*}}, 0] [%{{.*}}, 24] [1, 1] : memref<20x24xf32, strided<[24, 1], offset: ?>> to memref<?x24xf32, strided<[24, 1], offset: ?>>
// CHECK: linalg.generic
// CHECK-SAME: attrs = {moe.gpu_mma = "m16n8k16.bf16"}
// CHECK: arith.truncf %{{.*}} : f32 to bf16
// CHECK: arith.extf
// CHECK: arith.truncf %{{.*}} : f32 to bf16
// CHECK: arith.mulf
// CHECK: arith.addf
// CHECK: } {moe.gpu_map = "warps"}
// The router's logits (moe.fp32) stay f32: a thread-parallel loop over
// the outputs, the reduction sequential inside, no bf16.
// CHECK: scf.parallel (%{{.*}}, %{{.*}}) = (%{{.*}}, %{{.*}}) to (%{{.*}}, %{{.*}})
// CHECK-NOT: bf16
// CHECK: scf.for
// CHECK: arith.mulf
// CHECK-NOT: moe.gpu_map
// CHECK: scf.reduce
// The bias fill: one thread per element.
// CHECK: scf.parallel
// CHECK: memref.store
// CHECK-NOT: linalg.
// CHECK: return
func.func @kernel(%a: memref<4x20x24xf32>, %w: memref<24x10xf32>,
                  %r: memref<24x4xf32>, %y: memref<4x20x10xf32>,
                  %l: memref<4x20x4xf32>, %begin: index, %end: index)
    attributes {moe.kernel} {
  %c1 = arith.constant 1 : index
  %zero = arith.constant 0.0 : f32
  scf.for %i = %begin to %end step %c1 {
    %x = memref.subview %a[%i, 0, 0] [1, 20, 24] [1, 1, 1] : memref<4x20x24xf32> to memref<20x24xf32, strided<[24, 1], offset: ?>>
    %o = memref.subview %y[%i, 0, 0] [1, 20, 10] [1, 1, 1] : memref<4x20x10xf32> to memref<20x10xf32, strided<[10, 1], offset: ?>>
    %lo = memref.subview %l[%i, 0, 0] [1, 20, 4] [1, 1, 1] : memref<4x20x4xf32> to memref<20x4xf32, strided<[4, 1], offset: ?>>
    linalg.matmul ins(%x, %w : memref<20x24xf32, strided<[24, 1], offset: ?>>, memref<24x10xf32>) outs(%o : memref<20x10xf32, strided<[10, 1], offset: ?>>)
    linalg.matmul {moe.fp32} ins(%x, %r : memref<20x24xf32, strided<[24, 1], offset: ?>>, memref<24x4xf32>) outs(%lo : memref<20x4xf32, strided<[4, 1], offset: ?>>)
    linalg.fill ins(%zero : f32) outs(%o : memref<20x10xf32, strided<[10, 1], offset: ?>>)
  }
  return
}

// A contraction of the backward pass that reads A transposed (dW = X^T dY,
// [k, m] x [k, n]) is tiled too: its A view is K x 16, its map (k, m).
// CHECK-LABEL: func.func @weight_grad
// CHECK: scf.parallel
// CHECK: memref.subview %{{.*}}[0, %{{.*}}] [20, %{{.*}}] [1, 1] : memref<20x24xf32> to memref<20x?xf32, strided<[24, 1], offset: ?>>
// CHECK: linalg.generic {indexing_maps = [#[[AT:map[0-9]*]], #[[B:map[0-9]*]], #[[C:map[0-9]*]]]
// CHECK-SAME: moe.gpu_mma = "m16n8k16.bf16"
// CHECK: } {moe.gpu_map = "warps"}
// A contraction whose body is not a multiply-accumulate is not.
// CHECK-NOT: moe.gpu_mma
// CHECK: return
#xt = affine_map<(d0, d1, d2) -> (d2, d0)>
#y = affine_map<(d0, d1, d2) -> (d2, d1)>
#w = affine_map<(d0, d1, d2) -> (d0, d1)>
func.func @weight_grad(%x: memref<20x24xf32>, %dy: memref<20x10xf32>,
                       %dw: memref<24x10xf32>, %m: memref<24x10xf32>,
                       %begin: index, %end: index) attributes {moe.kernel} {
  %c1 = arith.constant 1 : index
  scf.for %i = %begin to %end step %c1 {
    linalg.generic {indexing_maps = [#xt, #y, #w], iterator_types = ["parallel", "parallel", "reduction"]}
        ins(%x, %dy : memref<20x24xf32>, memref<20x10xf32>) outs(%dw : memref<24x10xf32>) {
    ^bb0(%a: f32, %b: f32, %acc: f32):
      %p = arith.mulf %a, %b : f32
      %s = arith.addf %acc, %p : f32
      linalg.yield %s : f32
    }
    linalg.generic {indexing_maps = [#xt, #y, #w], iterator_types = ["parallel", "parallel", "reduction"]}
        ins(%x, %dy : memref<20x24xf32>, memref<20x10xf32>) outs(%m : memref<24x10xf32>) {
    ^bb0(%a: f32, %b: f32, %acc: f32):
      %p = arith.mulf %a, %b : f32
      %s = arith.maximumf %acc, %p : f32
      linalg.yield %s : f32
    }
  }
  return
}

// A per-image contraction that keeps the image as a unit loop ([1, S, D],
// as the backward pass writes them) loses that loop first, then is tiled.
// CHECK-LABEL: func.func @unit_image
// CHECK: memref.subview %{{.*}}[0, 0, 0] [1, 20, 24] [1, 1, 1] : memref<1x20x24xf32> to memref<20x24xf32, strided<[24, 1]>>
// CHECK: scf.parallel
// CHECK: moe.gpu_mma = "m16n8k16.bf16"
// CHECK: } {moe.gpu_map = "warps"}
#xu = affine_map<(d0, d1, d2, d3) -> (d0, d1, d3)>
#wu = affine_map<(d0, d1, d2, d3) -> (d3, d2)>
#yu = affine_map<(d0, d1, d2, d3) -> (d0, d1, d2)>
func.func @unit_image(%x: memref<1x20x24xf32>, %w: memref<24x10xf32>,
                      %y: memref<1x20x10xf32>, %begin: index, %end: index)
    attributes {moe.kernel} {
  %c1 = arith.constant 1 : index
  scf.for %i = %begin to %end step %c1 {
    linalg.generic {indexing_maps = [#xu, #wu, #yu], iterator_types = ["parallel", "parallel", "parallel", "reduction"]}
        ins(%x, %w : memref<1x20x24xf32>, memref<24x10xf32>) outs(%y : memref<1x20x10xf32>) {
    ^bb0(%a: f32, %b: f32, %acc: f32):
      %p = arith.mulf %a, %b : f32
      %s = arith.addf %acc, %p : f32
      linalg.yield %s : f32
    }
  }
  return
}
