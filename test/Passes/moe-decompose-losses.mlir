// RUN: moec-opt %s --split-input-file --moe-decompose-losses | FileCheck %s

// Softmax cross-entropy: row max, row sum of exp(x - max), the
// label-weighted dot product, then the batch mean; no moe op is left.
// CHECK-LABEL: func.func @cross_entropy
// CHECK-NOT: moe.softmax_cross_entropy
// CHECK: %[[MAX:.*]] = linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]{{.*}} ins(%{{.*}} : tensor<4x10xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK: arith.maxnumf
// CHECK: %[[SUM:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %[[MAX]] : tensor<4x10xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK: math.exp
// CHECK: %[[DOT:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<4x10xf32>, tensor<4xi32>) outs(%{{.*}} : tensor<4xf32>)
// CHECK: linalg.index 1
// CHECK: %[[LOSS:.*]] = linalg.generic {{.*}} ins(%[[MAX]], %[[SUM]], %[[DOT]] : tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) outs(%{{.*}} : tensor<f32>)
// CHECK: math.log
// CHECK: return %[[LOSS]] : tensor<f32>
func.func @cross_entropy(%l: tensor<4x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<4x10xf32>, tensor<4xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}

// -----

// Classification metrics: the masked loss sum and the count of correct
// predictions (ties to the first maximum), two scalars.
// CHECK-LABEL: func.func @metrics
// CHECK-NOT: moe.classification_metrics
// CHECK-COUNT-4: linalg.generic {{.*}}iterator_types = ["parallel", "reduction"]
// CHECK: %[[LOSS:.*]] = linalg.generic {{.*}}iterator_types = ["reduction"]{{.*}} outs(%{{.*}} : tensor<f32>)
// CHECK: %[[OK:.*]] = linalg.generic {{.*}}iterator_types = ["reduction"]{{.*}} outs(%{{.*}} : tensor<f32>)
// CHECK: return %[[LOSS]], %[[OK]]
func.func @metrics(%l: tensor<4x10xf32>, %y: tensor<4xi32>, %m: tensor<4xf32>) -> (tensor<f32>, tensor<f32>) {
  %0, %1 = moe.classification_metrics %l, %y mask %m : (tensor<4x10xf32>, tensor<4xi32>, tensor<4xf32>) -> (tensor<f32>, tensor<f32>)
  return %0, %1 : tensor<f32>, tensor<f32>
}

// -----

// The sum of several losses is one pointwise op over scalars; one term is
// passed through.
// CHECK-LABEL: func.func @sum
// CHECK-NOT: moe.sum_losses
// CHECK: %[[S:.*]] = linalg.generic {{.*}} ins(%{{.*}}, %{{.*}} : tensor<f32>, tensor<f32>)
// CHECK: arith.addf
// CHECK: return %[[S]], %arg0
func.func @sum(%a: tensor<f32>, %b: tensor<f32>) -> (tensor<f32>, tensor<f32>) {
  %0 = moe.sum_losses %a, %b : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %1 = moe.sum_losses %a : (tensor<f32>) -> tensor<f32>
  return %0, %1 : tensor<f32>, tensor<f32>
}
