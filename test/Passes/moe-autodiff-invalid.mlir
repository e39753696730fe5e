// RUN: moec-opt %s --split-input-file --moe-autodiff --verify-diagnostics
// RUN: not moec-opt %s --split-input-file --moe-autodiff=forward=fwd 2>&1 | FileCheck %s --check-prefix=FWD
// FWD-COUNT-5: error: no forward function 'fwd'

// Every op the loss depends on needs a vector-Jacobian product: metrics
// have none (here the summed cross-entropy of classification_metrics is
// added to the loss).
func.func @train_forward(%l: tensor<2x3xf32>, %y: tensor<2xi32>) -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) {
  %ce = moe.softmax_cross_entropy %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  // expected-error @+1 {{'moe.classification_metrics' op is on the path to the loss but has no vector-Jacobian product}}
  %ls, %correct = moe.classification_metrics %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  %loss = moe.sum_losses %ce, %ls : (tensor<f32>, tensor<f32>) -> tensor<f32>
  return %loss, %ce, %ls, %correct : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// Ops of other dialects have no VJP either.
func.func @train_forward(%l: tensor<2x3xf32>, %y: tensor<2xi32>) -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) {
  %ce = moe.softmax_cross_entropy %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  // expected-error @+1 {{'arith.addf' op is on the path to the loss but has no vector-Jacobian product}}
  %twice = arith.addf %ce, %ce : tensor<f32>
  %ls, %correct = moe.classification_metrics %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %twice, %ce, %ce, %correct : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// Metrics off the loss path are fine (correct is a result); ops that only
// feed other results are not differentiated.
func.func @train_forward(%x: tensor<2x4xf32>, %y: tensor<2xi32>) -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) {
  %w = moe.param "head.weight" init(zeros) : tensor<4x3xf32>
  %l = moe.dense %x, %w : (tensor<2x4xf32>, tensor<4x3xf32>) -> tensor<2x3xf32>
  %ce = moe.softmax_cross_entropy %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  %ls, %correct = moe.classification_metrics %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  %other = arith.addf %ls, %ls : tensor<f32>
  return %ce, %ce, %ce, %correct, %other : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// expected-error @+1 {{expects results (loss, ce_loss, aux_loss, correct, ...)}}
func.func @train_forward(%l: tensor<2x3xf32>, %y: tensor<2xi32>) -> (tensor<f32>, tensor<f32>) {
  %ce = moe.softmax_cross_entropy %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  return %ce, %ce : tensor<f32>, tensor<f32>
}

// -----

// expected-error @+1 {{no forward function 'train_forward'}}
module {
  func.func @infer(%x: tensor<2x3xf32>) -> tensor<2x3xf32> {
    return %x : tensor<2x3xf32>
  }
}
