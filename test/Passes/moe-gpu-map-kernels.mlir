// RUN: moec-opt %s --pass-pipeline="builtin.module(func.func(moe-gpu-tile,canonicalize),moe-gpu-map-kernels{block-threads=128})" | FileCheck %s
// RUN: not moec-opt %s --pass-pipeline='builtin.module(func.func(moe-gpu-tile),moe-gpu-map-kernels{block-threads=100})' 2>&1 | FileCheck %s --check-prefix=THREADS

// The kernel becomes a gpu.func: (buffers..., begin, scratch); block b
// computes unit begin + b; the temporary is a view of the block's scratch
// slice (80 bytes, aligned to 256); the sequential loop runs on thread 0
// and hands its result to the others through workgroup memory; the fill
// is spread over the threads; the GEMM's 16 x 8 tiles go round-robin over
// the 4 warps of 128 threads, each tile an mma.sync m16n8k16 per 16 of K.
// CHECK: module attributes {gpu.container_module, moe.kernel_scratch = {kernel = 256 : i64, one_tile = 0 : i64, tile_in_loop = 0 : i64}}
// CHECK: gpu.module @moec_kernels
// CHECK: gpu.func @kernel(%[[A:.*]]: memref<4x20x24xf32>, %{{.*}}: memref<24x10xf32>, %{{.*}}: memref<4x20x10xf32>, %[[BEGIN:.*]]: index, %[[SCRATCH:.*]]: memref<2147483648xi8>) workgroup(%[[SHARED:.*]] : memref<16xi64, #gpu.address_space<workgroup>>) kernel
// CHECK-SAME: known_block_size = array<i32: 128, 1, 1>
// CHECK-SAME: moe.scratch_bytes = 256 : i64
// CHECK-SAME: nvvm.minctasm = 1 : i32
// CHECK: %[[BLOCK:.*]] = gpu.block_id x
// CHECK: %[[TID:.*]] = gpu.thread_id x
// CHECK: %[[SLICE:.*]] = arith.muli %[[BLOCK]], %{{.*}}
// CHECK: %[[TMP:.*]] = memref.view %[[SCRATCH]][%{{.*}}][] : memref<2147483648xi8> to memref<20xf32>
// CHECK: %[[UNIT:.*]] = arith.addi %[[BEGIN]], %[[BLOCK]]
// CHECK: memref.subview %[[A]][%[[UNIT]], 0, 0]
// Thread 0 runs the sequential loop; its result goes through workgroup
// memory.
// CHECK: %[[FIRST:.*]] = arith.cmpi eq, %[[TID]], %{{.*}}
// CHECK: scf.if %[[FIRST]] {
// CHECK: scf.for {{.*}} iter_args
// CHECK: memref.store %{{.*}}, %[[TMP]]
// CHECK: memref.store %{{.*}}, %[[SHARED]]
// CHECK: }
// CHECK-NEXT: gpu.barrier
// CHECK: %[[RAW:.*]] = memref.load %[[SHARED]]
// CHECK-NEXT: %[[COUNT:.*]] = arith.index_castui %[[RAW]]
// CHECK-NEXT: gpu.barrier
// The fill: threads tid, tid + 128, ... over 20 x 10 elements.
// CHECK: scf.for %{{.*}} = %[[TID]] to %{{.*}} step %c128
// CHECK: memref.store
// CHECK: gpu.barrier
// The warp tiles: warp tid / 32 starts, stride 4 warps.
// CHECK: %[[WARP:.*]] = arith.divui %[[TID]], %c32
// CHECK: %[[FIRSTTILE:.*]] = arith.addi %{{.*}}, %{{.*}}
// CHECK: %[[STRIDE:.*]] = arith.muli %{{.*}}, %c4
// CHECK: scf.for %{{.*}} = %[[FIRSTTILE]] to %c4 step %[[STRIDE]]
// CHECK: %[[LANE:.*]] = arith.remui %[[TID]], %c32{{.*}}
// CHECK: scf.for %{{.*}} = %c0{{.*}} to %{{.*}} step %c16{{.*}} iter_args
// CHECK: arith.truncf %{{.*}} : f32 to bf16
// CHECK: nvvm.mma.sync A[{{.*}}] B[{{.*}}] C[{{.*}}] {layoutA = #nvvm.mma_layout<row>, layoutB = #nvvm.mma_layout<col>, multiplicandAPtxType = #nvvm.mma_type<bf16>, multiplicandBPtxType = #nvvm.mma_type<bf16>, shape = #nvvm.shape<m = 16, n = 8, k = 16>} : (i32, i32, f32) -> !llvm.struct<(f32, f32, f32, f32)>
// CHECK: gpu.barrier
// The loop bound thread 0 computed, read by every thread.
// CHECK: scf.for %{{.*}} = %{{.*}} to %[[COUNT]]
// CHECK: gpu.return
// CHECK-NOT: func.func @kernel

// A GEMM of one 16 x 8 tile: canonicalization folds its warp loop away,
// and warp 0 computes the lone tile.
// CHECK-LABEL: gpu.func @one_tile
// CHECK: %[[TID1:.*]] = gpu.thread_id x
// CHECK: gpu.barrier
// CHECK: %[[WARP0:.*]] = arith.cmpi ult, %[[TID1]], %c32
// CHECK: scf.if %[[WARP0]] {
// CHECK: nvvm.mma.sync
// CHECK: memref.store
// CHECK: gpu.barrier
// CHECK-NEXT: gpu.return

// The same lone tile inside a sequential loop (per head): every thread
// runs the loop, warp 0 the tile.
// CHECK-LABEL: gpu.func @tile_in_loop
// CHECK: scf.for
// CHECK: gpu.barrier
// CHECK: scf.if
// CHECK: nvvm.mma.sync
// CHECK: gpu.barrier
// CHECK: gpu.return

// THREADS: block-threads must be a multiple of 32 in [32, 1024], got 100
module {
  func.func @kernel(%a: memref<4x20x24xf32>, %w: memref<24x10xf32>,
                    %y: memref<4x20x10xf32>, %begin: index, %end: index)
      attributes {moe.kernel} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c20 = arith.constant 20 : index
    %zero = arith.constant 0.0 : f32
    %tmp = memref.alloc() : memref<20xf32>
    scf.for %i = %begin to %end step %c1 {
      %x = memref.subview %a[%i, 0, 0] [1, 20, 24] [1, 1, 1] : memref<4x20x24xf32> to memref<20x24xf32, strided<[24, 1], offset: ?>>
      %o = memref.subview %y[%i, 0, 0] [1, 20, 10] [1, 1, 1] : memref<4x20x10xf32> to memref<20x10xf32, strided<[10, 1], offset: ?>>
      %n = scf.for %j = %c0 to %c20 step %c1 iter_args(%acc = %c0) -> (index) {
        %v = memref.load %x[%j, %c0] : memref<20x24xf32, strided<[24, 1], offset: ?>>
        memref.store %v, %tmp[%j] : memref<20xf32>
        %pos = arith.cmpf ogt, %v, %zero : f32
        %inc = arith.select %pos, %c1, %c0 : index
        %next = arith.addi %acc, %inc : index
        scf.yield %next : index
      }
      linalg.fill ins(%zero : f32) outs(%o : memref<20x10xf32, strided<[10, 1], offset: ?>>)
      linalg.matmul ins(%x, %w : memref<20x24xf32, strided<[24, 1], offset: ?>>, memref<24x10xf32>) outs(%o : memref<20x10xf32, strided<[10, 1], offset: ?>>)
      scf.for %j = %c0 to %n step %c1 {
        %t = memref.load %tmp[%j] : memref<20xf32>
        memref.store %t, %o[%j, %c0] : memref<20x10xf32, strided<[10, 1], offset: ?>>
      }
    }
    memref.dealloc %tmp : memref<20xf32>
    return
  }
  func.func @one_tile(%a: memref<4x8x24xf32>, %w: memref<24x8xf32>,
                      %y: memref<4x8x8xf32>, %begin: index, %end: index)
      attributes {moe.kernel} {
    %c1 = arith.constant 1 : index
    scf.for %i = %begin to %end step %c1 {
      %x = memref.subview %a[%i, 0, 0] [1, 8, 24] [1, 1, 1] : memref<4x8x24xf32> to memref<8x24xf32, strided<[24, 1], offset: ?>>
      %o = memref.subview %y[%i, 0, 0] [1, 8, 8] [1, 1, 1] : memref<4x8x8xf32> to memref<8x8xf32, strided<[8, 1], offset: ?>>
      linalg.matmul ins(%x, %w : memref<8x24xf32, strided<[24, 1], offset: ?>>, memref<24x8xf32>) outs(%o : memref<8x8xf32, strided<[8, 1], offset: ?>>)
    }
    return
  }
  func.func @tile_in_loop(%a: memref<4x2x8x24xf32>, %w: memref<24x8xf32>,
                          %y: memref<4x2x8x8xf32>, %begin: index, %end: index)
      attributes {moe.kernel} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    scf.for %i = %begin to %end step %c1 {
      scf.for %h = %c0 to %c2 step %c1 {
        %x = memref.subview %a[%i, %h, 0, 0] [1, 1, 8, 24] [1, 1, 1, 1] : memref<4x2x8x24xf32> to memref<8x24xf32, strided<[24, 1], offset: ?>>
        %o = memref.subview %y[%i, %h, 0, 0] [1, 1, 8, 8] [1, 1, 1, 1] : memref<4x2x8x8xf32> to memref<8x8xf32, strided<[8, 1], offset: ?>>
        linalg.matmul ins(%x, %w : memref<8x24xf32, strided<[24, 1], offset: ?>>, memref<24x8xf32>) outs(%o : memref<8x8xf32, strided<[8, 1], offset: ?>>)
      }
    }
    return
  }
}
