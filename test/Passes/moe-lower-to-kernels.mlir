// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-decompose-losses,moe-split-batch-reductions),moe-lower-to-kernels)' --verify-diagnostics | FileCheck %s
// RUN: moec-opt %s --split-input-file --pass-pipeline='builtin.module(func.func(moe-decompose-losses,moe-split-batch-reductions),moe-lower-to-kernels{fuse=false})' --verify-diagnostics | FileCheck %s --check-prefix=NOFUSE

// The entry becomes a plan of calls writing into fresh destinations; each
// kernel loops over its image range and computes one image's slice.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%[[X:.*]]: tensor<2x5x8xf32>)
// CHECK: %[[D0:.*]] = tensor.empty() : tensor<2x5x8xf32>
// CHECK: %[[C0:.*]] = arith.constant 0 : index
// CHECK: %[[C2:.*]] = arith.constant 2 : index
// CHECK: %[[A:.*]] = call @moec_k0(%[[X]], %[[D0]], %[[C0]], %[[C2]]) {moe.flops = 80 : i64, moe.name = "", moe.op = "moe.activation", moe.parallel = #moe.parallelism<images>, moe.tiles = 2 : i64}
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

// The plan's arguments are static f32 tensors or i32 labels.
// expected-error @+1 {{expects statically shaped f32 or i32 tensor arguments, got 'tensor<4xi64>'}}
func.func @infer(%l: tensor<4x10xf32>, %y: tensor<4xi64>) -> tensor<f32> {
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<4x10xf32>, tensor<4xi64>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// expected-error @+1 {{expects statically shaped f32 or i32 tensor arguments, got 'tensor<?x10xf32>'}}
func.func @infer(%x: tensor<?x10xf32>) -> tensor<?x10xf32> {
  return %x : tensor<?x10xf32>
}

// -----

// The batch is the leading dimension of the first argument of rank > 0.
// expected-error @+1 {{expects an images argument}}
func.func @infer(%lr: tensor<f32>) -> tensor<f32> {
  return %lr : tensor<f32>
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
// become gathers of whole rows (a slice at the slot's token / the token's
// slot, so the copy vectorizes). The slot's token is found by a reduction
// over tokens outermost (vectors along the slots). Soft routing keeps the
// dense einsums.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k1({{.*}}moe.op = "moe.dispatch"
// CHECK: call @moec_k2({{.*}}moe.op = "moe.combine"
// CHECK: call @moec_k4({{.*}}moe.op = "moe.dispatch"
// CHECK-LABEL: func.func @moec_k1
// CHECK: linalg.generic {{.*}}iterator_types = ["reduction", "parallel", "parallel"]{{.*}} ins(%{{.*}} : tensor<5x4x3xf32>) outs(%{{.*}} : tensor<4x3xf32>)
// CHECK: scf.for {{.*}} -> (tensor<4x3x8xf32>)
// CHECK:   scf.for {{.*}} -> (tensor<4x3x8xf32>)
// CHECK:     tensor.extract_slice %{{.*}}[%{{.*}}, 0] [1, 8] [1, 1] : tensor<5x8xf32> to tensor<8xf32>
// CHECK:     arith.mulf
// CHECK:     tensor.insert_slice {{.*}} : tensor<8xf32> into tensor<4x3x8xf32>
// CHECK-LABEL: func.func @moec_k2
// CHECK: scf.for {{.*}} -> (tensor<5x8xf32>)
// CHECK:   linalg.fill {{.*}} -> tensor<8xf32>
// CHECK:   scf.for {{.*}} -> (tensor<8xf32>)
// CHECK:     tensor.extract_slice %{{.*}}[%{{.*}}, %{{.*}}, 0] [1, 1, 8] [1, 1, 1] : tensor<4x3x8xf32> to tensor<8xf32>
// CHECK:   tensor.insert_slice {{.*}} : tensor<8xf32> into tensor<5x8xf32>
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
// The row tiles past the filled ones are zero-filled, each row written once.
// CHECK-LABEL: func.func @moec_k2
// CHECK-SAME: tensor<3x5x4x3xf32>
// CHECK: scf.for
// CHECK-NOT: linalg.fill {{.*}} -> tensor<4x3x8xf32>
// CHECK: scf.for %[[E:.*]] = %{{.*}} to %{{.*}} step
// CHECK:   tensor.extract %{{.*}}[%[[E]]] : tensor<4xf32>
// CHECK:   arith.ceildivui
// CHECK:   %[[END:.*]] = arith.muli
// CHECK:   scf.for %{{.*}} = %{{.*}} to %[[END]] step %[[ROWS:[^ ]*]] iter_args
// CHECK:     linalg.matmul
// CHECK:     linalg.matmul
// CHECK:   scf.for %{{.*}} = %[[END]] to %{{.*}} step %[[ROWS]] iter_args
// CHECK:     linalg.fill {{.*}} -> tensor<3x8xf32>
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

// -----

// moe.experts_train (train_step's experts) runs over all slots, even
// between a one-hot dispatch and its router's combine: in train_step the
// combine's VJP reads every slot of the output. One batch matmul, one
// generic writing act(a) and act'(a) into the hidden and dact destinations,
// the second batch matmul; no routing operand.
// CHECK-LABEL: func.func @infer
// CHECK: %[[XS:.*]] = call @moec_k1({{.*}}moe.op = "moe.dispatch"
// CHECK: %{{.*}}:3 = call @moec_k2(%[[XS]], %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}, %{{[^,]*}}) {{.*}}moe.op = "moe.experts_train"
// CHECK-LABEL: func.func @moec_k2
// CHECK-SAME: %{{[^:]*}}: tensor<4x8xf32>, %{{[^:]*}}: tensor<4x3x3x8xf32>, %{{[^:]*}}: tensor<4x3x3x16xf32>, %{{[^:]*}}: tensor<4x3x3x16xf32>, %{{[^:]*}}: index, %{{[^:]*}}: index)
// CHECK: scf.for {{.*}} iter_args(%[[YA:[^ ]*]] = %{{[^,]*}}, %[[DA:[^ ]*]] = %{{[^,]*}}, %[[HA:[^ ]*]] = %{{[^)]*}})
// CHECK-NOT: arith.ceildivui
// CHECK: %[[A:.*]] = linalg.batch_matmul {{.*}} -> tensor<4x3x16xf32>
// CHECK: %[[HD:.*]]:2 = linalg.generic {{.*}} ins(%[[A]] : tensor<4x3x16xf32>) outs(%{{.*}}, %{{.*}} : tensor<4x3x16xf32>, tensor<4x3x16xf32>)
// CHECK:   math.erf
// CHECK:   math.exp
// CHECK: linalg.batch_matmul ins(%[[HD]]#0
func.func @infer(%x: tensor<3x5x8xf32>) -> (tensor<3x5x8xf32>, tensor<4x3x3x16xf32>, tensor<4x3x3x16xf32>) {
  %w = moe.param "router.weight" init(trunc_normal, 2.000000e-02) : tensor<8x4xf32>
  %w1 = moe.param "experts.fc1.weight" init(trunc_normal, 2.000000e-02) : tensor<4x8x16xf32>
  %b1 = moe.param "experts.fc1.bias" init(zeros) : tensor<4x16xf32>
  %w2 = moe.param "experts.fc2.weight" init(trunc_normal, 2.000000e-02) : tensor<4x16x8xf32>
  %b2 = moe.param "experts.fc2.bias" init(zeros) : tensor<4x8xf32>
  %d, %c, %l = moe.router token_choice %x, %w {k = 2 : i64, capacity_factor = 1.0 : f64} : (tensor<3x5x8xf32>, tensor<8x4xf32>) -> (tensor<3x5x4x3xf32>, tensor<3x5x4x3xf32>, tensor<3x5x4xf32>)
  %xs = moe.dispatch %x, %d : (tensor<3x5x8xf32>, tensor<3x5x4x3xf32>) -> tensor<4x3x3x8xf32>
  %ys, %dact, %hid = moe.experts_train gelu %xs, %w1, %b1, %w2, %b2 : (tensor<4x3x3x8xf32>, tensor<4x8x16xf32>, tensor<4x16xf32>, tensor<4x16x8xf32>, tensor<4x8xf32>) -> (tensor<4x3x3x8xf32>, tensor<4x3x3x16xf32>, tensor<4x3x3x16xf32>)
  %y = moe.combine %ys, %c : (tensor<4x3x3x8xf32>, tensor<3x5x4x3xf32>) -> tensor<3x5x8xf32>
  return %y, %dact, %hid : tensor<3x5x8xf32>, tensor<4x3x3x16xf32>, tensor<4x3x3x16xf32>
}

// -----

// A whole-batch linalg op (training's losses, backward pass and updates)
// becomes a "fixed" kernel over tiles of its outermost parallel dimension:
// 64 rows in 16 tiles of 4. The fill that only initializes its output is
// done per tile inside the kernel.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%[[X:.*]]: tensor<64x16xf32>)
// CHECK-NOT: linalg.fill
// CHECK: %[[D:.*]] = tensor.empty() : tensor<64xf32>
// CHECK: %[[C0:.*]] = arith.constant 0 : index
// CHECK: %[[C16:.*]] = arith.constant 16 : index
// CHECK-NOT: linalg
// CHECK: %[[S:.*]] = call @moec_k0(%[[X]], %[[D]], %[[C0]], %[[C16]]) {moe.flops = {{[0-9]+}} : i64, moe.name = "", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 16 : i64} : (tensor<64x16xf32>, tensor<64xf32>, index, index) -> tensor<64xf32>
// CHECK: return %[[S]]
// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: (%[[IN:.*]]: tensor<64x16xf32>, %[[OUT:.*]]: tensor<64xf32>, %[[BEGIN:.*]]: index, %[[END:.*]]: index) -> tensor<64xf32> attributes {moe.kernel}
// CHECK: scf.for %[[T:.*]] = %[[BEGIN]] to %[[END]] step %{{.*}} iter_args(%[[ACC:.*]] = %[[OUT]])
// CHECK:   %[[C4:.*]] = arith.constant 4 : index
// CHECK:   %[[OFF:.*]] = arith.muli %[[T]], %[[C4]] : index
// CHECK:   %[[ROWS:.*]] = tensor.extract_slice %[[IN]][%[[OFF]], 0] [4, 16] [1, 1] : tensor<64x16xf32> to tensor<4x16xf32>
// CHECK:   %[[DST:.*]] = tensor.extract_slice %[[ACC]][%[[OFF]]] [4] [1] : tensor<64xf32> to tensor<4xf32>
// CHECK:   %[[ZERO:.*]] = arith.constant 0.000000e+00 : f32
// CHECK:   %[[INIT:.*]] = linalg.fill ins(%[[ZERO]] : f32) outs(%[[DST]] : tensor<4xf32>)
// CHECK:   %[[SUM:.*]] = linalg.generic {{.*}} ins(%[[ROWS]] : tensor<4x16xf32>) outs(%[[INIT]] : tensor<4xf32>)
// CHECK:   tensor.insert_slice %[[SUM]] into %[[ACC]][%[[OFF]]] [4] [1] : tensor<4xf32> into tensor<64xf32>
#id = affine_map<(d0, d1) -> (d0, d1)>
#row = affine_map<(d0, d1) -> (d0)>
func.func @infer(%x: tensor<64x16xf32>) -> tensor<64xf32> {
  %e = tensor.empty() : tensor<64xf32>
  %cst = arith.constant 0.000000e+00 : f32
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<64xf32>) -> tensor<64xf32>
  %s = linalg.generic {indexing_maps = [#id, #row], iterator_types = ["parallel", "reduction"]} ins(%x : tensor<64x16xf32>) outs(%f : tensor<64xf32>) {
  ^bb0(%a: f32, %acc: f32):
    %0 = arith.addf %acc, %a : f32
    linalg.yield %0 : f32
  } -> tensor<64xf32>
  return %s : tensor<64xf32>
}

// -----

// A linalg op whose outermost loop is a reduction cannot be split: one
// tile, the whole op.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k0({{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "colsum", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 1 : i64}
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for
// CHECK-NOT: tensor.extract_slice
// CHECK: linalg.fill
// CHECK-NEXT: linalg.generic {{.*}}iterator_types = ["reduction", "parallel"]{{.*}} ins(%{{.*}} : tensor<4x8xf32>) outs(%{{.*}} : tensor<8xf32>)
#id = affine_map<(d0, d1) -> (d0, d1)>
#col = affine_map<(d0, d1) -> (d1)>
func.func @infer(%g: tensor<4x8xf32>) -> tensor<8xf32> {
  %e = tensor.empty() : tensor<8xf32>
  %cst = arith.constant 0.000000e+00 : f32
  %f = linalg.fill ins(%cst : f32) outs(%e : tensor<8xf32>) -> tensor<8xf32>
  %s = linalg.generic {indexing_maps = [#id, #col], iterator_types = ["reduction", "parallel"]} ins(%g : tensor<4x8xf32>) outs(%f : tensor<8xf32>) attrs = {moe.name = "colsum"} {
  ^bb0(%a: f32, %acc: f32):
    %0 = arith.addf %acc, %a : f32
    linalg.yield %0 : f32
  } -> tensor<8xf32>
  return %s : tensor<8xf32>
}

// -----

// An optimizer update (moe-autodiff) writes its parameter and optimizer
// state in place: the call's destinations are the moe.param values
// themselves, not fresh tensors, and nothing uses its results.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%[[G:.*]]: tensor<4x8xf32>, %[[LR:.*]]: tensor<f32>)
// CHECK: %[[P:.*]] = moe.param "w" init(zeros) : tensor<4x8xf32>
// CHECK: %[[M:.*]] = moe.param "optimizer.momentum.w" init(zeros) {moe.state} : tensor<4x8xf32>
// CHECK-NOT: tensor.empty
// CHECK: call @moec_k0(%[[P]], %[[G]], %[[M]], %[[LR]], %[[P]], %[[M]], %{{.*}}, %{{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "w", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 4 : i64} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<f32>, tensor<4x8xf32>, tensor<4x8xf32>, index, index) -> (tensor<4x8xf32>, tensor<4x8xf32>)
// CHECK: return %[[G]]
// The tile of the parameter is read from and written to the destination.
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for %{{.*}} = %{{.*}} to %{{.*}} step %{{.*}} iter_args(%[[PACC:.*]] = %{{.*}}, %[[MACC:.*]] = %{{.*}})
// CHECK-DAG: %[[PT:.*]] = tensor.extract_slice %[[PACC]][%{{.*}}, 0] [1, 8] [1, 1] : tensor<4x8xf32> to tensor<1x8xf32>
// CHECK-DAG: %[[MT:.*]] = tensor.extract_slice %[[MACC]][%{{.*}}, 0] [1, 8] [1, 1] : tensor<4x8xf32> to tensor<1x8xf32>
// CHECK: %[[U:.*]]:2 = linalg.generic {{.*}} ins(%[[PT]], %{{.*}}, %[[MT]], %{{.*}} : tensor<1x8xf32>, tensor<1x8xf32>, tensor<1x8xf32>, tensor<f32>) outs(%[[PT]], %[[MT]] : tensor<1x8xf32>, tensor<1x8xf32>) attrs = {moe.name = "w", moe.update}
// CHECK: tensor.insert_slice %[[U]]#0 into %[[PACC]]
// CHECK: tensor.insert_slice %[[U]]#1 into %[[MACC]]
#id = affine_map<(d0, d1) -> (d0, d1)>
#scalar = affine_map<(d0, d1) -> ()>
func.func @infer(%g: tensor<4x8xf32>, %lr: tensor<f32>) -> tensor<4x8xf32> {
  %p = moe.param "w" init(zeros) : tensor<4x8xf32>
  %m = moe.param "optimizer.momentum.w" init(zeros) {moe.state} : tensor<4x8xf32>
  %u:2 = linalg.generic {indexing_maps = [#id, #id, #id, #scalar, #id, #id], iterator_types = ["parallel", "parallel"]} ins(%p, %g, %m, %lr : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>, tensor<f32>) outs(%p, %m : tensor<4x8xf32>, tensor<4x8xf32>) attrs = {moe.name = "w", moe.update} {
  ^bb0(%pv: f32, %gv: f32, %mv: f32, %l: f32, %po: f32, %mo: f32):
    %c9 = arith.constant 9.000000e-01 : f32
    %0 = arith.mulf %c9, %mv : f32
    %1 = arith.addf %0, %gv : f32
    %2 = arith.mulf %l, %1 : f32
    %3 = arith.subf %pv, %2 : f32
    linalg.yield %3, %1 : f32, f32
  } -> (tensor<4x8xf32>, tensor<4x8xf32>)
  return %g : tensor<4x8xf32>
}

// -----

// Losses are decomposed into whole-batch linalg (the labels are i32): the
// per-row statistics of softmax cross-entropy split the same way and share
// one kernel (moe.fused), the batch mean is a one-tile kernel.
// CHECK-LABEL: func.func @infer
// CHECK-SAME: (%[[L:.*]]: tensor<4x10xf32>, %[[Y:.*]]: tensor<4xi32>) -> tensor<f32>
// CHECK-NOT: moe.softmax_cross_entropy
// CHECK: %[[ROWS:.*]]:3 = call @moec_k0(%[[L]], %[[Y]], {{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.fused = 3 : i64, moe.name = "", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 4 : i64}
// CHECK: %[[LOSS:.*]] = call @moec_k1(%[[ROWS]]#0, %[[ROWS]]#1, %[[ROWS]]#2, {{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.name = "", moe.op = "linalg.generic", moe.parallel = #moe.parallelism<fixed>, moe.tiles = 1 : i64} : {{.*}} -> tensor<f32>
// CHECK: return %[[LOSS]] : tensor<f32>
// CHECK-LABEL: func.func @moec_k0
// CHECK-COUNT-3: linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
// CHECK-LABEL: func.func @moec_k1
// Without fusion, one kernel per linalg op.
// NOFUSE-LABEL: func.func @infer(%{{.*}}: tensor<4x10xf32>, %{{.*}}: tensor<4xi32>) -> tensor<f32>
// NOFUSE: call @moec_k0({{.*}}moe.tiles = 4 : i64}
// NOFUSE: call @moec_k1({{.*}}moe.tiles = 4 : i64}
// NOFUSE: call @moec_k2({{.*}}moe.tiles = 4 : i64}
// NOFUSE: call @moec_k3({{.*}}moe.tiles = 1 : i64}
// NOFUSE-NOT: moe.fused
// NOFUSE-LABEL: func.func @moec_k0
func.func @infer(%l: tensor<4x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<4x10xf32>, tensor<4xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// Reshapes between kernels stay in the plan as views of their source.
// CHECK-LABEL: func.func @infer
// CHECK: %[[A:.*]] = call @moec_k0(
// CHECK: %[[V:.*]] = tensor.collapse_shape %[[A]] {{\[\[}}0, 1]] : tensor<4x8xf32> into tensor<32xf32>
// CHECK: call @moec_k1(%[[V]], {{.*}}moe.tiles = 16 : i64
#id = affine_map<(d0, d1) -> (d0, d1)>
#v = affine_map<(d0) -> (d0)>
func.func @infer(%x: tensor<4x8xf32>) -> tensor<32xf32> {
  %e = tensor.empty() : tensor<4x8xf32>
  %a = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<4x8xf32>) outs(%e : tensor<4x8xf32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.mulf %i, %i : f32
    linalg.yield %0 : f32
  } -> tensor<4x8xf32>
  %flat = tensor.collapse_shape %a [[0, 1]] : tensor<4x8xf32> into tensor<32xf32>
  %e2 = tensor.empty() : tensor<32xf32>
  %b = linalg.generic {indexing_maps = [#v, #v], iterator_types = ["parallel"]} ins(%flat : tensor<32xf32>) outs(%e2 : tensor<32xf32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.addf %i, %i : f32
    linalg.yield %0 : f32
  } -> tensor<32xf32>
  return %b : tensor<32xf32>
}

// -----

// Consecutive ops split the same way (4 tiles of one row) fuse; a view of
// a group result between two ops ends the group (the call replaces the
// group at its last op), and a different split starts a new one.
// CHECK-LABEL: func.func @infer
// CHECK: %[[AB:.*]]:2 = call @moec_k0(%{{.*}}) {moe.flops = {{[0-9]+}} : i64, moe.fused = 2 : i64, {{.*}}moe.tiles = 4 : i64}
// CHECK: %[[V:.*]] = tensor.expand_shape %[[AB]]#1
// CHECK: %[[C:.*]] = call @moec_k1(%[[V]], {{.*}}moe.tiles = 4 : i64}
// CHECK: call @moec_k2(%[[C]], {{.*}}moe.tiles = 1 : i64}
// CHECK-LABEL: func.func @moec_k0
// CHECK: scf.for
// CHECK: %[[T:.*]] = linalg.generic {{.*}} outs(%{{.*}} : tensor<1x8xf32>)
// CHECK: linalg.generic {{.*}} ins(%[[T]] : tensor<1x8xf32>)
#id = affine_map<(d0, d1) -> (d0, d1)>
#id3 = affine_map<(d0, d1, d2) -> (d0, d1, d2)>
#all = affine_map<(d0, d1, d2) -> ()>
func.func @infer(%x: tensor<4x8xf32>) -> tensor<f32> {
  %e = tensor.empty() : tensor<4x8xf32>
  %a = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%x : tensor<4x8xf32>) outs(%e : tensor<4x8xf32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.mulf %i, %i : f32
    linalg.yield %0 : f32
  } -> tensor<4x8xf32>
  %e1 = tensor.empty() : tensor<4x8xf32>
  %b = linalg.generic {indexing_maps = [#id, #id], iterator_types = ["parallel", "parallel"]} ins(%a : tensor<4x8xf32>) outs(%e1 : tensor<4x8xf32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.addf %i, %i : f32
    linalg.yield %0 : f32
  } -> tensor<4x8xf32>
  %v = tensor.expand_shape %b [[0], [1, 2]] output_shape [4, 2, 4] : tensor<4x8xf32> into tensor<4x2x4xf32>
  %e2 = tensor.empty() : tensor<4x2x4xf32>
  %c = linalg.generic {indexing_maps = [#id3, #id3], iterator_types = ["parallel", "parallel", "parallel"]} ins(%v : tensor<4x2x4xf32>) outs(%e2 : tensor<4x2x4xf32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.negf %i : f32
    linalg.yield %0 : f32
  } -> tensor<4x2x4xf32>
  %e3 = tensor.empty() : tensor<f32>
  %cst = arith.constant 0.000000e+00 : f32
  %f = linalg.fill ins(%cst : f32) outs(%e3 : tensor<f32>) -> tensor<f32>
  %d = linalg.generic {indexing_maps = [#id3, #all], iterator_types = ["reduction", "reduction", "reduction"]} ins(%c : tensor<4x2x4xf32>) outs(%f : tensor<f32>) {
  ^bb0(%i: f32, %o: f32):
    %0 = arith.addf %o, %i : f32
    linalg.yield %0 : f32
  } -> tensor<f32>
  return %d : tensor<f32>
}

// -----

// The attention core's backward is one per-image kernel: a loop over heads
// that gets the probabilities from the recomputed scores and the saved row
// log-sum-exp (one exp per score, no row max, sum or division) and writes
// dQ, dK and dV into their columns.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k0({{.*}}) {{.*}}moe.op = "moe.attention_grad", moe.parallel = #moe.parallelism<images>
// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: -> tensor<2x6x24xf32>
// CHECK: scf.for
// CHECK: scf.for %[[H:.*]] = %{{.*}} to %{{.*}} step %{{.*}} iter_args(
// CHECK: linalg.transpose
// CHECK: %[[S:.*]] = linalg.matmul
// CHECK: %[[LSE:.*]] = tensor.extract_slice %{{.*}}[%[[H]], 0] [1, 6] [1, 1] : tensor<2x6xf32> to tensor<6xf32>
// CHECK: linalg.generic {{.*}} ins(%[[S]], %[[LSE]] : tensor<6x6xf32>, tensor<6xf32>)
// CHECK: arith.subf
// CHECK-NEXT: math.exp
// CHECK-NOT: arith.divf
// CHECK-NOT: arith.maxnumf
// CHECK: linalg.transpose
// CHECK: linalg.matmul
// CHECK: arith.subf
// dQ = dS K is a matmul; dK = dS^T Q and dV = P^T dO read their [S, S]
// operand transposed in place (no transposed copy).
// CHECK: linalg.matmul
// CHECK-NOT: linalg.transpose
// CHECK: linalg.generic {indexing_maps = [#[[TA:.*]], #[[B:.*]], #[[C:.*]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK: linalg.generic {indexing_maps = [#[[TA]], #[[B]], #[[C]]], iterator_types = ["parallel", "parallel", "reduction"]}
// CHECK-NOT: linalg.matmul
// CHECK-COUNT-3: tensor.insert_slice
// CHECK-NEXT: scf.yield
func.func @infer(%qkv: tensor<2x6x24xf32>, %o: tensor<2x6x8xf32>, %lse: tensor<2x2x6xf32>, %d: tensor<2x6x8xf32>) -> tensor<2x6x24xf32> {
  %dqkv = moe.attention_grad %qkv, %o, %lse, %d {heads = 2 : i64} : (tensor<2x6x24xf32>, tensor<2x6x8xf32>, tensor<2x2x6xf32>, tensor<2x6x8xf32>) -> tensor<2x6x24xf32>
  return %dqkv : tensor<2x6x24xf32>
}

// -----

// moe.activation_train: one per-image kernel, one generic with two outputs
// (the activation and its derivative).
// CHECK-LABEL: func.func @infer
// CHECK: %{{.*}}:2 = call @moec_k0({{.*}}) {{.*}}moe.op = "moe.activation_train", moe.parallel = #moe.parallelism<images>
// CHECK-LABEL: func.func @moec_k0
// CHECK: linalg.generic {{.*}} ins(%{{.*}} : tensor<5x8xf32>) outs(%{{.*}}, %{{.*}} : tensor<5x8xf32>, tensor<5x8xf32>)
// CHECK: math.erf
// CHECK: math.exp
// CHECK: linalg.yield %{{.*}}, %{{.*}} : f32, f32
func.func @infer(%x: tensor<2x5x8xf32>) -> (tensor<2x5x8xf32>, tensor<2x5x8xf32>) {
  %y, %d = moe.activation_train gelu %x : tensor<2x5x8xf32>
  return %y, %d : tensor<2x5x8xf32>, tensor<2x5x8xf32>
}

// -----

// moe.attention_train is moe.attention's per-image kernel that writes qkv
// into its destination instead of a temporary, the heads into theirs, and
// each head's row log-sum-exp, scale * max + log(sum), into row h of lse.
// CHECK-LABEL: func.func @infer
// CHECK: call @moec_k0({{.*}}) {{.*}}moe.op = "moe.attention_train", moe.parallel = #moe.parallelism<images>
// CHECK-LABEL: func.func @moec_k0
// CHECK-SAME: %{{[^:]*}}: tensor<8xf32>, %{{[^:]*}}: tensor<2x6x8xf32>, %[[QKVD:[^:]*]]: tensor<2x6x24xf32>, %[[OD:[^:]*]]: tensor<2x6x8xf32>, %[[LSED:[^:]*]]: tensor<2x2x6xf32>, %{{.*}}: index, %{{.*}}: index)
// CHECK-SAME: -> (tensor<2x6x8xf32>, tensor<2x6x24xf32>, tensor<2x6x8xf32>, tensor<2x2x6xf32>)
// CHECK: scf.for {{.*}} iter_args(%{{[^ ]*}} = %{{[^,]*}}, %[[QKVA:[^ ]*]] = %[[QKVD]], %[[OA:[^ ]*]] = %[[OD]], %[[LSEA:[^ ]*]] = %[[LSED]])
// CHECK: %[[QKVI:.*]] = tensor.extract_slice %[[QKVA]]
// CHECK: %[[OI:.*]] = tensor.extract_slice %[[OA]]
// CHECK: %[[LSEI:.*]] = tensor.extract_slice %[[LSEA]]
// CHECK: %[[B:.*]] = linalg.broadcast {{.*}} outs(%[[QKVI]] : tensor<6x24xf32>)
// CHECK: %[[QKV:.*]] = linalg.matmul {{.*}} outs(%[[B]] : tensor<6x24xf32>)
// CHECK: scf.for %[[H:[^ ]*]] = {{.*}} iter_args(%{{[^ ]*}} = %[[OI]], %[[L:[^ ]*]] = %[[LSEI]])
// CHECK: math.exp
// CHECK: arith.divf
// CHECK: %[[ROW:.*]] = tensor.extract_slice %[[L]][%[[H]], 0] [1, 6] [1, 1]
// CHECK: linalg.generic {{.*}} outs(%[[ROW]] : tensor<6xf32>)
// CHECK: arith.constant 5.000000e-01 : f32
// CHECK: arith.mulf
// CHECK: math.log
// CHECK: arith.addf
// CHECK: tensor.insert_slice %{{.*}} into %[[L]][%[[H]], 0] [1, 6] [1, 1]
// CHECK: scf.yield
// CHECK: linalg.matmul
// CHECK: tensor.insert_slice %[[QKV]] into %[[QKVA]]
func.func @infer(%x: tensor<2x6x8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x24xf32>, tensor<2x6x8xf32>, tensor<2x2x6xf32>) {
  %wqkv = moe.param "attn.qkv.weight" init(zeros) : tensor<8x24xf32>
  %bqkv = moe.param "attn.qkv.bias" init(zeros) : tensor<24xf32>
  %wo = moe.param "attn.proj.weight" init(zeros) : tensor<8x8xf32>
  %bo = moe.param "attn.proj.bias" init(zeros) : tensor<8xf32>
  %y, %qkv, %o, %lse = moe.attention_train %x, %wqkv, %bqkv, %wo, %bo {heads = 2 : i64} : (tensor<2x6x8xf32>, tensor<8x24xf32>, tensor<24xf32>, tensor<8x8xf32>, tensor<8xf32>) -> (tensor<2x6x8xf32>, tensor<2x6x24xf32>, tensor<2x6x8xf32>, tensor<2x2x6xf32>)
  return %y, %qkv, %o, %lse : tensor<2x6x8xf32>, tensor<2x6x24xf32>, tensor<2x6x8xf32>, tensor<2x2x6xf32>
}
