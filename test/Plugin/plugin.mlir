// RUN: moec-opt %s --load-pass-plugin=%moec_lib/MoETestPlugin.so \
// RUN:   --pass-pipeline='builtin.module(moe-test-count-ops)' | FileCheck %s
// A plugin that cannot be loaded is reported (MlirOptMain then goes on
// without it, as upstream mlir-opt does).
// RUN: moec-opt %s --load-pass-plugin=%moec_lib/does-not-exist.so 2>&1 \
// RUN:   | FileCheck %s --check-prefix=MISSING

// CHECK-LABEL: func.func @two_ops
// CHECK-SAME: test.num_ops = 2 : i64
func.func @two_ops(%x: tensor<2x8xf32>) -> tensor<2x8xf32> {
  %0 = moe.activation gelu %x : tensor<2x8xf32>
  %1 = moe.add %0, %x : tensor<2x8xf32>
  return %1 : tensor<2x8xf32>
}

// MISSING: Failed to load passes from '{{.*}}does-not-exist.so'. Request ignored.
