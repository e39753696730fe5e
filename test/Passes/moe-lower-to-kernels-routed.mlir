// RUN: moec-opt %s --pass-pipeline='builtin.module(func.func(moe-fuse-routing),moe-lower-to-kernels)' | FileCheck %s
// RUN: moec-opt %s --pass-pipeline='builtin.module(moe-lower-to-kernels)' | FileCheck %s --check-prefix=UNFUSED

// The fused layer's kernel: per image, the router's logits, then per expert
// and row tile (3 rows: at most the capacity) the gathered GEMM pair and
// the gated scatter-add.
// Neither the [S, E, C] = 6x4x3 routing tensors nor the [E, C, D] = 4x3x8
// slots exist in the plan or the kernel.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k0({{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "", moe.op = "moe.routed_ffn", moe.parallel = #moe.parallelism<images>, moe.tiles = 2 : i64}
// CHECK-LABEL: func.func @moec_k0
// CHECK-NOT: 6x4x3xf32
// CHECK-NOT: 4x3x8xf32
// CHECK: linalg.matmul {moe.fp32} ins(%{{.*}}, %{{.*}} : tensor<6x8xf32>, tensor<8x4xf32>)
// The row list: the per-expert counts' prefix sum, then the scatter of
// (token, gate) rows.
// CHECK: scf.for
// CHECK: tensor.insert
// CHECK: scf.if
// The experts: row tiles from the segment's offset to its padded end.
// CHECK: scf.for %[[E:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK: scf.for %[[ROW:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK: tensor.extract_slice %{{.*}}[%{{.*}}, 0] [1, 8] [1, 1] : tensor<6x8xf32> to tensor<8xf32>
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<3x8xf32>, tensor<8x16xf32>)
// CHECK: math.erf
// CHECK: linalg.matmul ins(%{{.*}}, %{{.*}} : tensor<3x16xf32>, tensor<16x8xf32>)
// CHECK-NOT: 6x4x3xf32
// CHECK-NOT: 4x3x8xf32
// CHECK: return

// Unfused, the plan holds both routing tensors and the slots.
// UNFUSED: moe.op = "moe.router"
// UNFUSED-SAME: -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
// UNFUSED: moe.op = "moe.dispatch"
// UNFUSED-SAME: -> tensor<4x2x3x8xf32>
func.func @infer(%x: tensor<2x6x8xf32>) -> tensor<2x6x8xf32> {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<2x6x8xf32>, tensor<8x4xf32>) -> (tensor<2x6x4x3xf32>, tensor<2x6x4x3xf32>, tensor<2x6x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x6x8xf32>, tensor<2x6x4x3xf32>) -> tensor<4x2x3x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x2x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x2x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x2x3x8xf32>, tensor<2x6x4x3xf32>) -> tensor<2x6x8xf32>
  return %y : tensor<2x6x8xf32>
}

