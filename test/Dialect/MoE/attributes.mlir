// RUN: moec-opt %s | FileCheck %s
// RUN: moec-opt %s --mlir-print-op-generic | moec-opt | FileCheck %s

// The discardable moe.* attributes the passes set, with their types, and
// the dialect's attributes round-trip.

// CHECK-LABEL: func.func @train_forward
// CHECK-SAME: moe.optimizer = #moe.optimizer<kind = sgd, lr = 1.000000e-01 : f64, weight_decay = 1.000000e-02 : f64, beta1 = 9.000000e-01 : f64, beta2 = 0.99899999999999999 : f64, eps = 1.000000e-08 : f64, momentum = 9.000000e-01 : f64, grad_clip = 0.000000e+00 : f64, schedule = constant, min_lr_ratio = 0.000000e+00 : f64>
func.func @train_forward() attributes {moe.optimizer = #moe.optimizer<kind = sgd, lr = 1.000000e-01 : f64, weight_decay = 1.000000e-02 : f64, beta1 = 9.000000e-01 : f64, beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64, momentum = 9.000000e-01 : f64, grad_clip = 0.000000e+00 : f64, schedule = constant, min_lr_ratio = 0.000000e+00 : f64>} {
  return
}

// CHECK-LABEL: func.func @plan
// CHECK-SAME: moe.arena_bytes = 64 : i64, moe.flops = 10 : i64, moe.param_bytes = 0 : i64
// CHECK: call @moec_k0({{.*}}) {moe.fused = 2 : i64, moe.name = "x", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 4 : i64}
// CHECK: call @moec_k0({{.*}}) {moe.name = "y", moe.op = "moe.add", moe.parallel = #moe.parallelism<images>, moe.tiles = 4 : i64}
func.func @plan(%x: tensor<4xf32> {moe.name = "images"}) -> (tensor<4xf32> {moe.arena_offset = 0 : i64, moe.name = "logits"}) attributes {moe.arena_bytes = 64 : i64, moe.flops = 10 : i64, moe.param_bytes = 0 : i64} {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %d = tensor.empty() {moe.arena_offset = 16 : i64} : tensor<4xf32>
  %0 = call @moec_k0(%x, %d, %c0, %c4) {moe.fused = 2 : i64, moe.name = "x", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 4 : i64} : (tensor<4xf32>, tensor<4xf32>, index, index) -> tensor<4xf32>
  %1 = call @moec_k0(%0, %d, %c0, %c4) {moe.name = "y", moe.op = "moe.add", moe.parallel = #moe.parallelism<images>, moe.tiles = 4 : i64} : (tensor<4xf32>, tensor<4xf32>, index, index) -> tensor<4xf32>
  return %1 : tensor<4xf32>
}
// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: attributes {moe.kernel}
func.func @moec_k0(%x: tensor<4xf32>, %d: tensor<4xf32>, %b: index, %e: index) -> tensor<4xf32> attributes {moe.kernel} {
  return %x : tensor<4xf32>
}

// CHECK-LABEL: func.func @update
// CHECK: moe.param "optimizer.m.w" init(zeros) {moe.param_offset = 0 : i64, moe.state} : tensor<4xf32>
func.func @update() -> tensor<4xf32> {
  %m = moe.param "optimizer.m.w" init(zeros) {moe.param_offset = 0 : i64, moe.state} : tensor<4xf32>
  return %m : tensor<4xf32>
}
