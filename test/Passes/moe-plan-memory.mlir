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

// -----

// Reshapes (tensor.collapse_shape / expand_shape, kept by
// moe-lower-to-kernels) are views: they share their source's bytes, and a
// use of the view keeps the source live. %a lives until the view of its view
// is returned, so %b cannot reuse its bytes; %c reuses the argument's.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%{{.*}}: tensor<4x16xf32> {moe.arena_offset = 0 : i64}) -> (tensor<8x8xf32> {moe.arena_offset = 256 : i64}, tensor<4x16xf32> {moe.arena_offset = 0 : i64})
// CHECK-SAME: moe.arena_bytes = 768 : i64
// CHECK: tensor.empty() {moe.arena_offset = 256 : i64}
// CHECK: tensor.collapse_shape
// CHECK-NOT: moe.arena_offset
// CHECK: tensor.empty() {moe.arena_offset = 512 : i64}
// CHECK: tensor.empty() {moe.arena_offset = 0 : i64}
// CHECK: tensor.expand_shape
// CHECK-NOT: moe.arena_offset
// CHECK: return
func.func private @k(tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func @infer(%x: tensor<4x16xf32>) -> (tensor<8x8xf32>, tensor<4x16xf32>) {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %d0 = tensor.empty() : tensor<4x16xf32>
  %a = call @k(%x, %d0, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %v = tensor.collapse_shape %a [[0, 1]] : tensor<4x16xf32> into tensor<64xf32>
  %d1 = tensor.empty() : tensor<4x16xf32>
  %b = call @k(%x, %d1, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d2 = tensor.empty() : tensor<4x16xf32>
  %c = call @k(%b, %d2, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %w = tensor.expand_shape %v [[0, 1]] output_shape [8, 8] : tensor<64xf32> into tensor<8x8xf32>
  return %w, %c : tensor<8x8xf32>, tensor<4x16xf32>
}

// -----

// A call reading a view keeps the view's source live up to that call: %b
// (written while %a is still to be read through %v) gets its own bytes,
// %c reuses the argument's.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: moe.arena_bytes = 768 : i64
// CHECK: tensor.empty() {moe.arena_offset = 256 : i64}
// CHECK: tensor.empty() {moe.arena_offset = 512 : i64}
// CHECK: tensor.empty() {moe.arena_offset = 0 : i64}
func.func private @k(tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func private @kv(tensor<64xf32>, tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
func.func @infer(%x: tensor<4x16xf32>) -> tensor<4x16xf32> {
  %c0 = arith.constant 0 : index
  %c4 = arith.constant 4 : index
  %d0 = tensor.empty() : tensor<4x16xf32>
  %a = call @k(%x, %d0, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %v = tensor.collapse_shape %a [[0, 1]] : tensor<4x16xf32> into tensor<64xf32>
  %d1 = tensor.empty() : tensor<4x16xf32>
  %b = call @k(%x, %d1, %c0, %c4) : (tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  %d2 = tensor.empty() : tensor<4x16xf32>
  %c = call @kv(%v, %b, %d2, %c0, %c4) : (tensor<64xf32>, tensor<4x16xf32>, tensor<4x16xf32>, index, index) -> tensor<4x16xf32>
  return %c : tensor<4x16xf32>
}

// -----

// Optimizer state (moe.state, declared first by moe-autodiff) goes after
// every parameter, in declaration order, so parameters have the same
// offsets in every entry point. An update writes its parameter and state in
// place: a moe.param destination takes no arena bytes.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: moe.arena_bytes = 320 : i64, moe.param_bytes = 256 : i64
// CHECK: moe.param "optimizer.m.w" {{.*}}moe.param_offset = 128 : i64
// CHECK: moe.param "optimizer.m.b" {{.*}}moe.param_offset = 192 : i64
// CHECK: moe.param "w" {{.*}}moe.param_offset = 0 : i64
// CHECK: moe.param "b" {{.*}}moe.param_offset = 64 : i64
// CHECK: tensor.empty() {moe.arena_offset = 256 : i64} : tensor<16xf32>
// CHECK-NOT: tensor.empty
// CHECK: call @update
func.func private @grad(tensor<4x16xf32>, tensor<16xf32>, index, index) -> tensor<16xf32>
func.func private @update(tensor<16xf32>, tensor<16xf32>, tensor<16xf32>, tensor<16xf32>, index, index) -> (tensor<16xf32>, tensor<16xf32>)
func.func @infer(%x: tensor<4x16xf32>) -> tensor<16xf32> {
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %m = moe.param "optimizer.m.w" init(zeros) {moe.state} : tensor<16xf32>
  %mb = moe.param "optimizer.m.b" init(zeros) {moe.state} : tensor<3xf32>
  %w = moe.param "w" init(zeros) : tensor<16xf32>
  %b = moe.param "b" init(zeros) : tensor<3xf32>
  %d0 = tensor.empty() : tensor<16xf32>
  %g = call @grad(%x, %d0, %c0, %c1) : (tensor<4x16xf32>, tensor<16xf32>, index, index) -> tensor<16xf32>
  %u:2 = call @update(%w, %g, %w, %m, %c0, %c1) : (tensor<16xf32>, tensor<16xf32>, tensor<16xf32>, tensor<16xf32>, index, index) -> (tensor<16xf32>, tensor<16xf32>)
  return %g : tensor<16xf32>
}
