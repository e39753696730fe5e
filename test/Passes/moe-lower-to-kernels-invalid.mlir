// RUN: moec-opt %s --split-input-file --moe-lower-to-kernels --verify-diagnostics

// Losses and metrics have no per-image kernel: moe-decompose-losses must
// run first (the moe-cpu-plan pipeline does).
func.func @infer(%l: tensor<4x10xf32>, %y: tensor<4xi32>) -> tensor<f32> {
  // expected-error @+1 {{'moe.softmax_cross_entropy' op has no per-image kernel lowering (ImageKernelOpInterface); losses and metrics need moe-decompose-losses first}}
  %0 = moe.softmax_cross_entropy %l, %y : (tensor<4x10xf32>, tensor<4xi32>) -> tensor<f32>
  return %0 : tensor<f32>
}
