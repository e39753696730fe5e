// RUN: moec-opt %s --split-input-file --moe-plan-memory --verify-diagnostics | FileCheck %s

// A chain x -> a -> b -> c of 256-byte buffers: a buffer is live from the
// call that writes it to the last call that reads it, so b reuses x's
// bytes and c reuses a's. Parameters get their own, 64-byte aligned block.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%{{.*}}: tensor<4x16xf32> {moe.arena_offset = 0 : i64}) -> (tensor<4x16xf32> {moe.arena_offset = 256 : i64})
// CHECK-SAME: moe.arena_bytes = 512 : i64, moe.param_bytes = 128 : i64
// CHECK: moe.param "w" {{.*}}moe.param_offset = 0 : i64
// CHECK: moe.param "v" {{.*}}moe.param_offset = 64 : i64
// CHECK: moe.param "w" {{.*}}moe.param_offset = 0 : i64
// CHECK: tensor.empty() {moe.arena_offset = 256 : i64}
// CHECK: tensor.empty() {moe.arena_offset = 0 : i64}
// CHECK: tensor.empty() {moe.arena_offset = 256 : i64}
func.func private @k(tensor<4x16xf32>, tensor<16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func @infer(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %w = moe.param "w" init(zeros) : tensor<16xf32>
  %v = moe.param "v" init(ones) : tensor<3xf32>
  %w2 = moe.param "w" init(zeros) : tensor<16xf32>
  %d0 = tensor.empty() : tensor<4x16xf32>
  %a = call @k(%x, %w, %d0, %c0, %c4) : (tensor<4x16xf32>, tensor<16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d1 = tensor.empty() : tensor<4x16xf32>
  %b = call @k(%a, %w2, %d1, %c0, %c4) : (tensor<4x16xf32>, tensor<16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d2 = tensor.empty() : tensor<4x16xf32>
  %c = call @k(%b, %w, %d2, %c0, %c4) : (tensor<4x16xf32>, tensor<16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  return %c : tensor<4x16xf32>
}

// -----

// A value read by a later call stays live across the calls in between.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: moe.arena_bytes = 768 : i64
func.func private @k(tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func private @k2(tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func @infer(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %d0 = tensor.empty() : tensor<4x16xf32>
  %a = call @k(%x, %d0, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d1 = tensor.empty() : tensor<4x16xf32>
  %b = call @k(%a, %d1, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d2 = tensor.empty() : tensor<4x16xf32>
  %c = call @k2(%b, %a, %d2, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  return %c : tensor<4x16xf32>
}

// -----

func.func private @k(tensor<4xf32>, tensor<4xf32>, index, index) -> tensor<4xf32>
func.func @infer(%x: tensor<4xf32>, %y: tensor<4xf32>) -> tensor<4xf32> {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  // expected-error @+1 {{'func.call' op expects a tensor.empty destination for result #0}}
  %a = call @k(%x, %y, %c0, %c4) : (tensor<4xf32>, tensor<4xf32>, index, index) -> tensor<4xf32>
  return %a : tensor<4xf32>
}
