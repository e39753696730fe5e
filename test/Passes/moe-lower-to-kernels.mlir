// RUN: moec-opt %s --split-input-file --moe-lower-to-kernels --verify-diagnostics | FileCheck %s

// The entry becomes a plan of calls writing into fresh destinations; each
// kernel loops over its image range and computes one image's slice.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%[[X:.*]]: tensor<2x5x8xf32>)
// CHECK: %[[D0:.*]] = tensor.empty() : tensor<2x5x8xf32>
// CHECK: %[[C0:.*]] = arith.constant 0 : index
// CHECK: %[[C2:.*]] = arith.constant 2 : index
// CHECK: %[[A:.*]] = call @moec_k0(%[[X]], %[[D0]], %[[C0]], %[[C2]]) {moe.name = "", moe.op = "moe.activation", moe.parallel = "images", moe.tiles = 2 : i64}
// CHECK: %[[D1:.*]] = tensor.empty() : tensor<2x5x8xf32>
// CHECK: %[[B:.*]] = call @moec_k1(%[[A]], %[[X]], %[[D1]], %{{.*}}, %{{.*}}) {{.*}}moe.op = "moe.add"
// CHECK: return %[[B]]
// CHECK-NOT: func.func @other

// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: (%[[IN:.*]]: tensor<2x5x8xf32>, %[[OUT:.*]]: tensor<2x5x8xf32>, %[[BEGIN:.*]]: index, %[[END:.*]]: index) -> tensor<2x5x8xf32>
// CHECK-SAME: attributes {moe.kernel}
// CHECK: scf.for %[[G:.*]] = %[[BEGIN]] to %[[END]] step %{{.*}} iter_args(%[[ACC:.*]] = %[[OUT]])
// CHECK:   %[[IMG:.*]] = tensor.extract_slice %[[IN]][%[[G]], 0, 0] [1, 5, 8] [1, 1, 1] : tensor<2x5x8xf32> to tensor<5x8xf32>
// CHECK:   %[[DST:.*]] = tensor.extract_slice %[[ACC]][%[[G]], 0, 0] [1, 5, 8] [1, 1, 1]
// CHECK:   %[[Y:.*]] = linalg.generic {{.*}} ins(%[[IMG]] : tensor<5x8xf32>) outs(%[[DST]] : tensor<5x8xf32>)
// CHECK:     math.erf
// CHECK:   tensor.insert_slice %[[Y]] into %[[ACC]][%[[G]], 0, 0] [1, 5, 8] [1, 1, 1]
// CHECK-LABEL: func.func @moec_k1
// CHECK: arith.addf
func.func @infer(%x: tensor<2x5x8xf32>) -> tensor<2x5x8xf32> {
  %a = moe.activation gelu %x : tensor<2x5x8xf32>
  %b = moe.add %a, %x : tensor<2x5x8xf32>
  return %b : tensor<2x5x8xf32>
}
func.func @other() {
  return
}

// -----

// Parameters are read whole; experts slice images along dimension 1.
// CHECK-LABEL: func.func @infer
// CHECK: %[[W:.*]] = moe.param "experts.fc1.weight"
// CHECK: call @moec_k0(%{{.*}}, %[[W]],
// CHECK-LABEL: func.func @moec_k0
// CHECK: tensor.extract_slice %{{.*}}[0, %{{.*}}, 0, 0] [2, 1, 3, 4] [1, 1, 1, 1] : tensor<2x6x3x4xf32> to tensor<2x3x4xf32>
// CHECK: linalg.batch_matmul
// CHECK: linalg.batch_matmul
func.func @infer(%x: tensor<2x6x3x4xf32>) -> tensor<2x6x3x4xf32> {
  %w1 = moe.param "experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<2x4x8xf32>
  %b1 = moe.param "experts.fc1.bias" init(zeros) : tensor<2x8xf32>
  %w2 = moe.param "experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<2x8x4xf32>
  %b2 = moe.param "experts.fc2.bias" init(zeros) : tensor<2x4xf32>
  %y = moe.experts relu %x, %w1, %b1, %w2, %b2 : (tensor<2x6x3x4xf32>, tensor<2x4x8xf32>, tensor<2x8xf32>, tensor<2x8x4xf32>, tensor<2x4xf32>) -> tensor<2x6x3x4xf32>
  return %y : tensor<2x6x3x4xf32>
}

// -----

// A token-choice router: ranks and queue positions are counting reductions
// (linalg.index compares), no sequential loop.
// CHECK-LABEL: func.func @moec_k0
// CHECK: linalg.matmul
// CHECK: linalg.generic {{.*}}iterator_types = ["parallel", "parallel", "reduction"]
// CHECK: linalg.index 2
// CHECK: arith.cmpf ogt
// CHECK-NOT: scf.while
func.func @infer(%x: tensor<3x5x8xf32>) -> tensor<3x5x4x3xf32> {
  %w = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<3x5x8xf32>, tensor<8x4xf32>) -> (tensor<3x5x4x3xf32>, tensor<3x5x4x3xf32>, tensor<3x5x4xf32>)
  return %c : tensor<3x5x4x3xf32>
}

// -----

// The plan's arguments are f32 images (training entries are lowered elsewhere).
// expected-error @+1 {{expects statically shaped f32 tensor arguments, got 'tensor<4xi32>'}}
func.func @infer(%l: tensor<4x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<4x10xf32>, tensor<4xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// expected-error @+1 {{no entry function 'infer'}}
module {
  func.func @main() {
    return
  }
}

// -----

// Hard routers give one-hot dispatch/combine tensors: dispatch and combine
// become gathers (tensor.extract at the slot's token / the token's slot).
// Soft routing keeps the dense einsums.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k1({{.*}}moe.op = "moe.dispatch"
// CHECK: call @moec_k2({{.*}}moe.op = "moe.combine"
// CHECK: call @moec_k4({{.*}}moe.op = "moe.dispatch"
// CHECK-LABEL: func.func @moec_k1
// CHECK: linalg.generic
// CHECK: tensor.extract %{{.*}}[%{{.*}}, %{{.*}}] : tensor<5x8xf32>
// CHECK-LABEL: func.func @moec_k2
// CHECK: tensor.extract %{{.*}}[%{{.*}}, %{{.*}}, %{{.*}}] : tensor<4x3x8xf32>
// CHECK-LABEL: func.func @moec_k4
// CHECK-NOT: tensor.extract %
// CHECK: arith.mulf
func.func @infer(%x: tensor<3x5x8xf32>) -> (tensor<3x5x8xf32>, tensor<2x3x2x8xf32>) {
  %w = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<3x5x8xf32>, tensor<8x4xf32>) -> (tensor<3x5x4x3xf32>, tensor<3x5x4x3xf32>, tensor<3x5x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<3x5x8xf32>, tensor<3x5x4x3xf32>) -> tensor<4x3x3x8xf32>
  %y = moe.combine %xs, %c : (tensor<4x3x3x8xf32>, tensor<3x5x4x3xf32>) -> tensor<3x5x8xf32>
  %ws = moe.param "soft.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %sd, %sc, %sl = moe.router soft %x, %ws {slots_per_expert = 2 : i64} : (tensor<3x5x8xf32>, tensor<8x4xf32>) -> (tensor<3x5x2x2xf32>, tensor<3x5x2x2xf32>, tensor<3x5x4xf32>)
  %sx = moe.dispatch %x, %sd : (tensor<3x5x8xf32>, tensor<3x5x2x2xf32>) -> tensor<2x3x2x8xf32>
  return %y, %sx : tensor<3x5x8xf32>, tensor<2x3x2x8xf32>
}

// -----

// Experts between a one-hot dispatch and the same router's combine compute
// only filled slots: the kernel also takes the routing tensor, counts each
// expert's filled slots and runs the FFN over row tiles up to that count.
// CHECK-LABEL: func.func @infer
// CHECK: %[[R:.*]]:3 = call @moec_k0(
// CHECK: %[[XS:.*]] = call @moec_k1({{.*}}moe.op = "moe.dispatch"
// CHECK: call @moec_k2(%[[XS]], %{{.*}}, %{{.*}}, %{{.*}}, %{{.*}}, %[[R]]#0, %{{.*}}, %{{.*}}, %{{.*}}) {{.*}}moe.op = "moe.experts"
// CHECK-LABEL: func.func @moec_k2
// CHECK-SAME: tensor<3x5x4x3xf32>
// CHECK: linalg.fill
// CHECK: scf.for %[[E:.*]] = %{{.*}} to %{{.*}} step
// CHECK:   tensor.extract %{{.*}}[%[[E]]] : tensor<4xf32>
// CHECK:   arith.ceildivui
// CHECK:   scf.for %{{.*}} = %{{.*}} to %{{.*}} step %{{.*}} iter_args
// CHECK:     linalg.matmul
// CHECK:     linalg.matmul
func.func @infer(%x: tensor<3x5x8xf32>) -> tensor<3x5x8xf32> {
  %w = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %w1 = moe.param "experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<3x5x8xf32>, tensor<8x4xf32>) -> (tensor<3x5x4x3xf32>, tensor<3x5x4x3xf32>, tensor<3x5x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<3x5x8xf32>, tensor<3x5x4x3xf32>) -> tensor<4x3x3x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x3x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> tensor<4x3x3x8xf32>
  %y = moe.combine %ys, %c : (tensor<4x3x3x8xf32>, tensor<3x5x4x3xf32>) -> tensor<3x5x8xf32>
  return %y : tensor<3x5x8xf32>
}
