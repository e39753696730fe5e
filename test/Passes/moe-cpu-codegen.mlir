// The whole kernel pipeline on a small plan: per-image kernels become LLVM
// functions over bare pointers with no runtime-library calls.
// RUN: moec-opt %s --moe-cpu-plan --moe-cpu-codegen | FileCheck %s
// RUN: moec-opt %s --moe-cpu-plan | FileCheck %s --check-prefix=PLAN

// PLAN-LABEL: func.func @infer
// PLAN-SAME: moe.arena_bytes = {{[0-9]+}} : i64
// PLAN: call @moec_k0
// PLAN: call @moec_k1

// CHECK-NOT: func.func @infer
// CHECK-LABEL: llvm.func @moec_k0
// CHECK-SAME: (%{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: !llvm.ptr, %{{.*}}: i64, %{{.*}}: i64)
// CHECK: llvm.intr.fmuladd({{.*}}) : (vector<32xf32>, vector<32xf32>, vector<32xf32>) -> vector<32xf32>
// CHECK-LABEL: llvm.func @moec_k1
// CHECK-NOT: llvm.call
// CHECK-NOT: memref.
// CHECK-NOT: unrealized_conversion_cast
// CHECK-NOT: math.erf
func.func @infer(%x: tensor<4x10x64xf32>) -> tensor<4x10x32xf32> {
  %w = moe.param "fc.weight" init(trunc_normal, 2.000000e-02) : tensor<64x32xf32>
  %b = moe.param "fc.bias" init(zeros) : tensor<32xf32>
  %h = moe.dense %x, %w, %b : (tensor<4x10x64xf32>, tensor<64x32xf32>, tensor<32xf32>) -> tensor<4x10x32xf32>
  %y = moe.activation gelu %h : tensor<4x10x32xf32>
  return %y : tensor<4x10x32xf32>
}
