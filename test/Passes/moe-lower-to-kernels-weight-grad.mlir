// RUN: moec-opt %s --pass-pipeline='builtin.module(moe-lower-to-kernels{entry=weight_grad})' | FileCheck %s

// The experts' weight gradients: a "fixed" kernel over the 4 experts (not
// over images: the runtime runs image kernels over any range of a batch's
// images), each expert reading every image's rows and summing over its own
// segments, row tile by row tile.
// CHECK-LABEL: func.func @weight_grad
// CHECK: call @moec_k0({{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "", moe.op = "moe.routed_ffn_weight_grad", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 4 : i64}
// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: (%{{.*}}: tensor<2x6x8xf32>, %{{.*}}: tensor<2x12xf32>, %[[OFF:.*]]: tensor<4x2xf32>, %[[CNT:.*]]: tensor<4x2xf32>,
// CHECK: scf.for %[[E:.*]] = %{{.*}} to %{{.*}} step
// CHECK: tensor.extract_slice %[[OFF]][%[[E]], 0] [1, 2] [1, 1] : tensor<4x2xf32> to tensor<2xf32>
// CHECK: scf.for %[[G:.*]] = %{{.*}} to %{{.*}} step
// CHECK: scf.for %[[ROW:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]{{.*}} ins(%{{.*}}, %{{.*}} : tensor<3x8xf32>, tensor<3x16xf32>) outs(%{{.*}} : tensor<8x16xf32>)
func.func @weight_grad(%x: tensor<2x6x8xf32>, %tok: tensor<2x12xf32>, %off: tensor<4x2xf32>, %cnt: tensor<4x2xf32>, %h: tensor<2x12x16xf32>, %da: tensor<2x12x16xf32>, %dyt: tensor<2x12x8xf32>) -> (tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) {
  %r:4 = moe.routed_ffn_weight_grad %x, %tok, %off, %cnt, %h, %da, %dyt {row_tile = 3 : i64} : (tensor<2x6x8xf32>, tensor<2x12xf32>, tensor<4x2xf32>, tensor<4x2xf32>, tensor<2x12x16xf32>, tensor<2x12x16xf32>, tensor<2x12x8xf32>) -> (tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>)
  return %r#0, %r#1, %r#2, %r#3 : tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>
}
