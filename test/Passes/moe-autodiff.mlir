// RUN: moec-opt %s --split-input-file --moe-autodiff | FileCheck %s
// RUN: moec-opt %s --split-input-file --moe-autodiff="forward=train_forward entry=my_step" | FileCheck %s --check-prefix=ENTRY

// A dense model (layer norm, dense head, softmax cross-entropy) with AdamW.
// train_forward stays; train_step is its clone plus the backward pass and
// the update.
// CHECK-LABEL: func.func @train_forward(
// CHECK-SAME: moe.optimizer = #moe.optimizer<kind = adamw
// CHECK-NOT: moe.update
// CHECK: return

// New inputs step, total_steps, warmup_steps, lr after the forward's; results
// loss, ce_loss, aux_loss, correct, grad_norm, lr_used, then one gradient
// per parameter in declaration order. No moe.optimizer on train_step.
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[X:[^:]*]]: tensor<2x8xf32> {moe.name = "images"}, %[[Y:[^:]*]]: tensor<2xi32> {moe.name = "labels"}, %[[STEP:[^:]*]]: tensor<f32> {moe.name = "step"}, %[[TOTAL:[^:]*]]: tensor<f32> {moe.name = "total_steps"}, %[[WARM:[^:]*]]: tensor<f32> {moe.name = "warmup_steps"}, %[[LR:[^:]*]]: tensor<f32> {moe.name = "lr"})
// CHECK-SAME: -> (tensor<f32> {moe.name = "loss"}, tensor<f32> {moe.name = "ce_loss"}, tensor<f32> {moe.name = "aux_loss"}, tensor<f32> {moe.name = "correct"}, tensor<f32> {moe.name = "grad_norm"}, tensor<f32> {moe.name = "lr_used"}, tensor<8xf32> {moe.name = "grad.norm.weight", moe.role = "gradient"}, tensor<8xf32> {moe.name = "grad.norm.bias", moe.role = "gradient"}, tensor<8x3xf32> {moe.name = "grad.head.weight", moe.role = "gradient"}) {
// AdamW state: m and v per parameter, zero-initialized, marked moe.state.
// CHECK-DAG: %[[VW:.*]] = moe.param "optimizer.v.head.weight" init(zeros) {moe.state} : tensor<8x3xf32>
// CHECK-DAG: %[[MW:.*]] = moe.param "optimizer.m.head.weight" init(zeros) {moe.state} : tensor<8x3xf32>
// CHECK-DAG: %[[VB:.*]] = moe.param "optimizer.v.norm.bias" init(zeros) {moe.state} : tensor<8xf32>
// CHECK-DAG: %[[MB:.*]] = moe.param "optimizer.m.norm.bias" init(zeros) {moe.state} : tensor<8xf32>
// CHECK-DAG: %[[VG:.*]] = moe.param "optimizer.v.norm.weight" init(zeros) {moe.state} : tensor<8xf32>
// CHECK-DAG: %[[MG:.*]] = moe.param "optimizer.m.norm.weight" init(zeros) {moe.state} : tensor<8xf32>
// CHECK: %[[G:.*]] = moe.param "norm.weight" init(ones) no_decay : tensor<8xf32>
// CHECK: %[[B:.*]] = moe.param "norm.bias" init(zeros) no_decay : tensor<8xf32>
// CHECK: %[[H:.*]] = moe.layer_norm %[[X]], %[[G]], %[[B]]
// CHECK: %[[W:.*]] = moe.param "head.weight"
// CHECK: %[[LOGITS:.*]] = moe.dense %[[H]], %[[W]]
// CHECK: %[[CE:.*]] = moe.softmax_cross_entropy %[[LOGITS]], %[[Y]]
// CHECK: %[[AUX:.*]] = moe.sum_losses : () -> tensor<f32>
// CHECK: %[[LOSS:.*]] = moe.sum_losses %[[CE]], %[[AUX]]
// CHECK: %{{.*}}, %[[CORRECT:.*]] = moe.classification_metrics %[[LOGITS]], %[[Y]]
// The reverse sweep, on tensors: d loss = 1, the softmax cross-entropy and
// dense VJPs (the head's gradient contracts the layer norm output with the
// logits' cotangent), the layer norm VJP.
// CHECK: %[[ONE:.*]] = arith.constant 1.000000e+00 : f32
// CHECK: linalg.fill ins(%[[ONE]] : f32)
// CHECK: linalg.generic {{.*}} ins(%[[H]], %{{.*}} : tensor<2x8xf32>, tensor<2x3xf32>) outs(%{{.*}} : tensor<8x3xf32>)
// CHECK: math.rsqrt
// Global norm: one sum of squares per gradient, then sqrt of their sum.
// CHECK: %[[NORM:.*]] = linalg.generic {{.*}}iterator_types = []} ins(%{{[^,]*}}, %{{[^,]*}}, %{{[^ ]*}} : tensor<f32>, tensor<f32>, tensor<f32>)
// CHECK: math.sqrt
// The learning rate: warm-up, then cosine decay.
// CHECK: %[[LRNOW:.*]] = linalg.generic {{.*}} ins(%[[STEP]], %[[TOTAL]], %[[WARM]], %[[LR]] : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>)
// CHECK: arith.cmpf olt
// CHECK: math.cos
// CHECK: arith.select
// Clipping factor min(1, grad_clip / (norm + 1e-6)).
// CHECK: %[[CLIP:.*]] = linalg.generic {{.*}} ins(%[[NORM]] : tensor<f32>)
// CHECK: arith.constant 9.99999997E-7 : f32
// CHECK: arith.minimumf
// Bias corrections 1 - beta^(step + 1), in f64 (beta exact, no cancellation
// in f32), rounded to f32 once.
// CHECK: %[[BC1:.*]] = linalg.generic {{.*}} ins(%[[STEP]] : tensor<f32>)
// CHECK: arith.extf {{.*}} : f32 to f64
// CHECK: arith.constant 9.000000e-01 : f64
// CHECK: math.powf {{.*}} : f64
// CHECK: arith.truncf {{.*}} : f64 to f32
// CHECK: %[[BC2:.*]] = linalg.generic {{.*}} ins(%[[STEP]] : tensor<f32>)
// CHECK: arith.extf {{.*}} : f32 to f64
// CHECK: arith.constant 0.99899999999999999 : f64
// CHECK: math.powf {{.*}} : f64
// CHECK: arith.truncf {{.*}} : f64 to f32
// One update per parameter, writing the parameter and its state in place
// (outs are the moe.param values). No weight decay on no_decay parameters.
// CHECK: linalg.generic {{.*}} ins(%[[G]], %[[GG:[^,]*]], %[[MG]], %[[VG]], %[[LRNOW]], %[[CLIP]], %[[BC1]], %[[BC2]] : tensor<8xf32>, tensor<8xf32>, tensor<8xf32>, tensor<8xf32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) outs(%[[G]], %[[MG]], %[[VG]] : tensor<8xf32>, tensor<8xf32>, tensor<8xf32>) attrs = {moe.name = "norm.weight", moe.update}
// CHECK-NOT: arith.constant 5.000000e-02
// CHECK: linalg.generic {{.*}} ins(%[[B]], %[[GB:[^,]*]], %[[MB]], %[[VB]], %[[LRNOW]], %[[CLIP]], %[[BC1]], %[[BC2]] : {{.*}}) outs(%[[B]], %[[MB]], %[[VB]] : {{.*}}) attrs = {moe.name = "norm.bias", moe.update}
// CHECK-NOT: arith.constant 5.000000e-02
// CHECK: linalg.generic {{.*}} ins(%[[W]], %[[GW:[^,]*]], %[[MW]], %[[VW]], %[[LRNOW]], %[[CLIP]], %[[BC1]], %[[BC2]] : {{.*}}) outs(%[[W]], %[[MW]], %[[VW]] : tensor<8x3xf32>, tensor<8x3xf32>, tensor<8x3xf32>) attrs = {moe.name = "head.weight", moe.update}
// CHECK: arith.constant 5.000000e-02 : f32
// CHECK: linalg.yield
// The gradients returned are the ones the updates read (before clipping).
// CHECK: return %[[LOSS]], %[[CE]], %[[AUX]], %[[CORRECT]], %[[NORM]], %[[LRNOW]], %[[GG]], %[[GB]], %[[GW]] :
// CHECK-NOT: func.func
// CHECK: {{^}}// {{-----}}

// ENTRY-LABEL: func.func @train_forward(
// ENTRY-NOT: @train_step
// ENTRY: func.func @my_step(%{{.*}}: tensor<2x8xf32> {moe.name = "images"}
// ENTRY-NOT: @train_step
// ENTRY: {{^}}// {{-----}}
func.func @train_forward(%x: tensor<2x8xf32> {moe.name = "images"}, %y: tensor<2xi32> {moe.name = "labels"})
    -> (tensor<f32> {moe.name = "loss"}, tensor<f32> {moe.name = "ce_loss"}, tensor<f32> {moe.name = "aux_loss"},
        tensor<f32> {moe.name = "correct"}, tensor<2x3xf32> {moe.name = "logits"})
    attributes {moe.optimizer = #moe.optimizer<kind = adamw, lr = 1.000000e-03 : f64, weight_decay = 5.000000e-02 : f64, beta1 = 9.000000e-01 : f64, beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64, momentum = 9.000000e-01 : f64, grad_clip = 1.000000e+00 : f64, schedule = cosine, min_lr_ratio = 0.000000e+00 : f64>} {
  %g = moe.param "norm.weight" init(ones) no_decay : tensor<8xf32>
  %b = moe.param "norm.bias" init(zeros) no_decay : tensor<8xf32>
  %h = moe.layer_norm %x, %g, %b {epsilon = 1.0e-06 : f64} : (tensor<2x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<2x8xf32>
  %w = moe.param "head.weight" init(trunc_normal, 2.0e-02) : tensor<8x3xf32>
  %l = moe.dense %h, %w : (tensor<2x8xf32>, tensor<8x3xf32>) -> tensor<2x3xf32>
  %ce = moe.softmax_cross_entropy %l, %y {label_smoothing = 0.1 : f64} : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  %aux = moe.sum_losses : () -> tensor<f32>
  %loss = moe.sum_losses %ce, %aux : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %ls, %correct = moe.classification_metrics %l, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %loss, %ce, %aux, %correct, %l : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>, tensor<2x3xf32>
}

// -----

// An MoE layer (noisy token-choice router, dispatch, experts, combine) with
// importance and load losses, SGD with momentum, constant schedule, no
// clipping. The noise input stays where it was, before the new inputs.
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: %[[X:[^:]*]]: tensor<2x4x8xf32> {moe.name = "images"}, %[[Y:[^:]*]]: tensor<2xi32> {moe.name = "labels"}, %[[N:[^:]*]]: tensor<2x4x2xf32> {moe.name = "noise.moe", moe.role = "normal_noise"}, %[[STEP:[^:]*]]: tensor<f32> {moe.name = "step"}, %{{[^:]*}}: tensor<f32> {moe.name = "total_steps"}, %{{[^:]*}}: tensor<f32> {moe.name = "warmup_steps"}, %[[LR:[^:]*]]: tensor<f32> {moe.name = "lr"})
// CHECK-SAME: tensor<f32> {moe.name = "lr_used"}, tensor<8x2xf32> {moe.name = "grad.moe.router.weight", moe.role = "gradient"}, tensor<2x8x16xf32> {moe.name = "grad.moe.experts.fc1.weight", moe.role = "gradient"}, tensor<2x16xf32> {moe.name = "grad.moe.experts.fc1.bias", moe.role = "gradient"}, tensor<2x16x8xf32> {moe.name = "grad.moe.experts.fc2.weight", moe.role = "gradient"}, tensor<2x8xf32> {moe.name = "grad.moe.experts.fc2.bias", moe.role = "gradient"}, tensor<8x3xf32> {moe.name = "grad.head.weight", moe.role = "gradient"}, tensor<3xf32> {moe.name = "grad.head.bias", moe.role = "gradient"})
// SGD: one momentum buffer per parameter.
// CHECK-DAG: %[[SHB:.*]] = moe.param "optimizer.momentum.head.bias" init(zeros) {moe.state} : tensor<3xf32>
// CHECK-DAG: %[[SHW:.*]] = moe.param "optimizer.momentum.head.weight" init(zeros) {moe.state} : tensor<8x3xf32>
// CHECK-DAG: moe.param "optimizer.momentum.moe.experts.fc2.bias" init(zeros) {moe.state} : tensor<2x8xf32>
// CHECK-DAG: moe.param "optimizer.momentum.moe.experts.fc2.weight" init(zeros) {moe.state} : tensor<2x16x8xf32>
// CHECK-DAG: moe.param "optimizer.momentum.moe.experts.fc1.bias" init(zeros) {moe.state} : tensor<2x16xf32>
// CHECK-DAG: %[[SE1:.*]] = moe.param "optimizer.momentum.moe.experts.fc1.weight" init(zeros) {moe.state} : tensor<2x8x16xf32>
// CHECK-DAG: %[[SR:.*]] = moe.param "optimizer.momentum.moe.router.weight" init(zeros) {moe.state} : tensor<8x2xf32>
// CHECK-NOT: optimizer.m.
// CHECK: %[[WR:.*]] = moe.param "moe.router.weight"
// CHECK: %{{[^,]*}}, %[[C:[^,]*]], %[[L:[^ ]*]] = moe.router token_choice %[[X]], %[[WR]] noise %[[N]]
// CHECK: %[[W1:.*]] = moe.param "moe.experts.fc1.weight"
// The experts become moe.experts_train: the backward reads their hidden
// layer (dW2 from the activations act(a)) and act'(a) (the activation's VJP
// is a product with it) instead of recomputing a = x w1 + b1 and act'(a).
// CHECK-NOT: moe.experts gelu
// CHECK: %[[YS:[^,]*]], %[[DACT:[^,]*]], %[[HID:[^ ]*]] = moe.experts_train gelu %[[XS:[^,]*]], %[[W1]], {{.*}} -> (tensor<2x2x2x8xf32>, tensor<2x2x2x16xf32>, tensor<2x2x2x16xf32>)
// CHECK: moe.combine %[[YS]]
// CHECK: %[[HW:.*]] = moe.param "head.weight"
// CHECK: %[[HB:.*]] = moe.param "head.bias"
// CHECK: moe.aux_loss importance %[[L]]
// CHECK: moe.aux_loss load %[[L]] noise %[[N]]
// The combine's VJP w.r.t. the expert outputs dispatches the output's
// cotangent with the combine tensor.
// CHECK: moe.dispatch %{{.*}}, %[[C]] : (tensor<2x4x8xf32>, tensor<2x4x2x2xf32>) -> tensor<2x2x2x8xf32>
// CHECK-NOT: ins(%[[XS]], %[[W1]] :
// CHECK: linalg.generic {{.*}} ins(%[[HID]], %{{.*}} : tensor<2x2x2x16xf32>, tensor<2x2x2x8xf32>) outs(%{{.*}} : tensor<2x16x8xf32>)
// CHECK-NOT: ins(%[[XS]], %[[W1]] :
// CHECK: linalg.generic {{.*}} ins(%[[DACT]], %{{.*}} : tensor<2x2x2x16xf32>, tensor<2x2x2x16xf32>)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.mulf
// CHECK-NEXT: linalg.yield
// CHECK-NOT: moe.experts gelu
// Constant schedule: no cosine.
// CHECK-NOT: math.cos
// CHECK: %[[LRNOW:.*]] = linalg.generic {{.*}} ins(%[[STEP]], %{{.*}}, %{{.*}}, %[[LR]] :
// CHECK-NOT: math.cos
// CHECK-NOT: math.powf
// Updates: ins (param, gradient, momentum, lr, clip factor), outs (param, momentum).
// CHECK: linalg.generic {{.*}} ins(%[[WR]], %[[GR:[^,]*]], %[[SR]], %[[LRNOW]], %[[CLIP:[^ ]*]] : tensor<8x2xf32>, tensor<8x2xf32>, tensor<8x2xf32>, tensor<f32>, tensor<f32>) outs(%[[WR]], %[[SR]] : tensor<8x2xf32>, tensor<8x2xf32>) attrs = {moe.name = "moe.router.weight", moe.update}
// CHECK: arith.constant 0.899999976 : f32
// CHECK: linalg.generic {{.*}} ins(%[[W1]], %[[GE1:[^,]*]], %[[SE1]], %[[LRNOW]], %[[CLIP]] : {{.*}}) outs(%[[W1]], %[[SE1]] : tensor<2x8x16xf32>, tensor<2x8x16xf32>) attrs = {moe.name = "moe.experts.fc1.weight", moe.update}
// CHECK: attrs = {moe.name = "moe.experts.fc1.bias", moe.update}
// CHECK: attrs = {moe.name = "moe.experts.fc2.weight", moe.update}
// CHECK: attrs = {moe.name = "moe.experts.fc2.bias", moe.update}
// CHECK: linalg.generic {{.*}} ins(%[[HW]], %[[GHW:[^,]*]], %[[SHW]], %[[LRNOW]], %[[CLIP]] : {{.*}}) outs(%[[HW]], %[[SHW]] : {{.*}}) attrs = {moe.name = "head.weight", moe.update}
// CHECK: linalg.generic {{.*}} ins(%[[HB]], %[[GHB:[^,]*]], %[[SHB]], %[[LRNOW]], %[[CLIP]] : {{.*}}) outs(%[[HB]], %[[SHB]] : {{.*}}) attrs = {moe.name = "head.bias", moe.update}
// CHECK: return {{.*}}, %[[LRNOW]], %[[GR]], %[[GE1]], {{.*}}, %[[GHW]], %[[GHB]] :
func.func @train_forward(%x: tensor<2x4x8xf32> {moe.name = "images"}, %y: tensor<2xi32> {moe.name = "labels"},
                         %noise: tensor<2x4x2xf32> {moe.name = "noise.moe", moe.role = "normal_noise"})
    -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>)
    attributes {moe.optimizer = #moe.optimizer<kind = sgd, lr = 1.000000e-01 : f64, weight_decay = 1.000000e-02 : f64, beta1 = 9.000000e-01 : f64, beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64, momentum = 9.000000e-01 : f64, grad_clip = 0.000000e+00 : f64, schedule = constant, min_lr_ratio = 0.000000e+00 : f64>} {
  %wr = moe.param "moe.router.weight" init(trunc_normal, 2.0e-02) : tensor<8x2xf32>
  %d, %c, %l = moe.router token_choice %x, %wr noise %noise {k = 1 : i64, capacity_factor = 1.0 : f64, noise_std = 1.0 : f64} : (tensor<2x4x8xf32>, tensor<8x2xf32>, tensor<2x4x2xf32>) -> (tensor<2x4x2x2xf32>, tensor<2x4x2x2xf32>, tensor<2x4x2xf32>)
  %xs = moe.dispatch %x, %d : (tensor<2x4x8xf32>, tensor<2x4x2x2xf32>) -> tensor<2x2x2x8xf32>
  %w1 = moe.param "moe.experts.fc1.weight" init(trunc_normal, 2.0e-02) : tensor<2x8x16xf32>
  %b1 = moe.param "moe.experts.fc1.bias" init(zeros) no_decay : tensor<2x16xf32>
  %w2 = moe.param "moe.experts.fc2.weight" init(trunc_normal, 2.0e-02) : tensor<2x16x8xf32>
  %b2 = moe.param "moe.experts.fc2.bias" init(zeros) no_decay : tensor<2x8xf32>
  %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : (tensor<2x2x2x8xf32>, tensor<2x8x16xf32>, tensor<2x16xf32>, tensor<2x16x8xf32>, tensor<2x8xf32>) -> tensor<2x2x2x8xf32>
  %h = moe.combine %ys, %c : (tensor<2x2x2x8xf32>, tensor<2x4x2x2xf32>) -> tensor<2x4x8xf32>
  %p = moe.pool mean %h : tensor<2x4x8xf32> -> tensor<2x8xf32>
  %wh = moe.param "head.weight" init(trunc_normal, 2.0e-02) : tensor<8x3xf32>
  %bh = moe.param "head.bias" init(zeros) no_decay : tensor<3xf32>
  %logits = moe.classifier_head %p, %wh, %bh : (tensor<2x8xf32>, tensor<8x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %ce = moe.softmax_cross_entropy %logits, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  %imp = moe.aux_loss importance %l {weight = 1.0e-02 : f64} : (tensor<2x4x2xf32>) -> tensor<f32>
  %load = moe.aux_loss load %l noise %noise {k = 1 : i64, noise_std = 1.0 : f64, weight = 1.0e-02 : f64} : (tensor<2x4x2xf32>, tensor<2x4x2xf32>) -> tensor<f32>
  %aux = moe.sum_losses %imp, %load : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %loss = moe.sum_losses %ce, %aux : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %ls, %correct = moe.classification_metrics %logits, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %loss, %ce, %aux, %correct : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// Attention, then a GELU: in train_step the attention becomes
// moe.attention_train, whose residuals (qkv, the heads O, the score rows'
// log-sum-exp) feed moe.attention_grad and the output projection's weight
// gradient; no moe.attention is left (the replaced op is erased) and qkv is
// not recomputed (no contraction of the input with the qkv weight besides
// the weight gradient). train_forward keeps moe.attention.
// CHECK-LABEL: func.func @train_forward(
// CHECK: moe.attention %
// CHECK: moe.activation gelu
// CHECK-LABEL: func.func @train_step(
// CHECK-NOT: moe.attention %
// CHECK: %[[X:.*]] = moe.layer_norm
// CHECK: %[[WQKV:.*]] = moe.param "attn.qkv.weight"
// CHECK: %[[Y:[^,]*]], %[[QKV:[^,]*]], %[[O:[^,]*]], %[[LSE:[^ ]*]] = moe.attention_train %[[X]], %[[WQKV]], %{{.*}}, %{{.*}}, %{{.*}} {heads = 2 : i64} : {{.*}} -> (tensor<2x4x8xf32>, tensor<2x4x24xf32>, tensor<2x4x8xf32>, tensor<2x2x4xf32>)
// CHECK-NOT: ins(%[[X]], %[[WQKV]] :
// moe.activation becomes moe.activation_train; its VJP is a product with
// the derivative (no erf or exp in the backward).
// CHECK-NOT: moe.activation gelu
// CHECK: %[[GA:[^,]*]], %[[DGA:[^ ]*]] = moe.activation_train gelu %[[Y]]
// CHECK: moe.pool mean %[[GA]]
// CHECK-NOT: moe.activation gelu
// CHECK: linalg.generic {{.*}} ins(%[[DGA]], %{{.*}} : tensor<2x4x8xf32>, tensor<2x4x8xf32>)
// CHECK-NEXT: ^bb0
// CHECK-NEXT: arith.mulf
// CHECK-NEXT: linalg.yield
// CHECK-NOT: moe.attention %
// CHECK-NOT: ins(%[[X]], %[[WQKV]] :
// CHECK: %[[DQKV:.*]] = moe.attention_grad %[[QKV]], %[[O]], %[[LSE]], %{{.*}} {heads = 2 : i64}
// The output projection's weight gradient contracts the saved heads.
// CHECK: linalg.generic {{.*}} ins(%[[O]], %{{.*}} : tensor<2x4x8xf32>, tensor<2x4x8xf32>) outs(%{{.*}} : tensor<8x8xf32>)
// CHECK-NOT: moe.attention %
// CHECK: linalg.generic {{.*}} ins(%[[X]], %[[DQKV]] : tensor<2x4x8xf32>, tensor<2x4x24xf32>) outs(%{{.*}} : tensor<8x24xf32>)
// CHECK-NOT: moe.attention %
// CHECK: return
func.func @train_forward(%x: tensor<2x4x8xf32> {moe.name = "images"}, %y: tensor<2xi32> {moe.name = "labels"})
    -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>)
    attributes {moe.optimizer = #moe.optimizer<kind = sgd, lr = 1.000000e-01 : f64, weight_decay = 0.000000e+00 : f64, beta1 = 9.000000e-01 : f64, beta2 = 9.990000e-01 : f64, eps = 1.000000e-08 : f64, momentum = 9.000000e-01 : f64, grad_clip = 0.000000e+00 : f64, schedule = constant, min_lr_ratio = 0.000000e+00 : f64>} {
  %g = moe.param "norm.weight" init(ones) no_decay : tensor<8xf32>
  %b = moe.param "norm.bias" init(zeros) no_decay : tensor<8xf32>
  %h = moe.layer_norm %x, %g, %b {epsilon = 1.0e-06 : f64} : (tensor<2x4x8xf32>, tensor<8xf32>, tensor<8xf32>) -> tensor<2x4x8xf32>
  %wqkv = moe.param "attn.qkv.weight" init(trunc_normal, 2.0e-02) : tensor<8x24xf32>
  %bqkv = moe.param "attn.qkv.bias" init(zeros) no_decay : tensor<24xf32>
  %wo = moe.param "attn.proj.weight" init(trunc_normal, 2.0e-02) : tensor<8x8xf32>
  %bo = moe.param "attn.proj.bias" init(zeros) no_decay : tensor<8xf32>
  %a = moe.attention %h, %wqkv, %bqkv, %wo, %bo {heads = 2 : i64} : (tensor<2x4x8xf32>, tensor<8x24xf32>, tensor<24xf32>, tensor<8x8xf32>, tensor<8xf32>) -> tensor<2x4x8xf32>
  %ga = moe.activation gelu %a : tensor<2x4x8xf32>
  %p = moe.pool mean %ga : tensor<2x4x8xf32> -> tensor<2x8xf32>
  %wh = moe.param "head.weight" init(trunc_normal, 2.0e-02) : tensor<8x3xf32>
  %bh = moe.param "head.bias" init(zeros) no_decay : tensor<3xf32>
  %logits = moe.classifier_head %p, %wh, %bh : (tensor<2x8xf32>, tensor<8x3xf32>, tensor<3xf32>) -> tensor<2x3xf32>
  %ce = moe.softmax_cross_entropy %logits, %y : (tensor<2x3xf32>, tensor<2xi32>) -> tensor<f32>
  %aux = moe.sum_losses : () -> tensor<f32>
  %loss = moe.sum_losses %ce, %aux : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %ls, %correct = moe.classification_metrics %logits, %y : (tensor<2x3xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %loss, %ce, %aux, %correct : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}

// -----

// A parameter read twice (tied weights) gets one gradient, the sum of its
// reads, and one update; a parameter off the loss path gets a zero
// gradient and is still updated. An old train_step is replaced.
// CHECK-LABEL: func.func @train_forward(
// CHECK-LABEL: func.func @train_step(
// CHECK-SAME: -> (tensor<f32> {moe.name = "loss"}, tensor<f32> {moe.name = "ce_loss"}, tensor<f32> {moe.name = "aux_loss"}, tensor<f32> {moe.name = "correct"}, tensor<f32> {moe.name = "grad_norm"}, tensor<f32> {moe.name = "lr_used"}, tensor<4x4xf32> {moe.name = "grad.w", moe.role = "gradient"}, tensor<3xf32> {moe.name = "grad.unused", moe.role = "gradient"}) {
// CHECK-DAG: moe.param "optimizer.m.w"
// CHECK-DAG: moe.param "optimizer.m.unused"
// CHECK-NOT: optimizer.m.w
// CHECK: %[[W:.*]] = moe.param "w"
// CHECK: %[[W2:.*]] = moe.param "w"
// CHECK: %[[U:.*]] = moe.param "unused"
// CHECK: %[[GU:.*]] = linalg.fill ins(%{{.*}} : f32) outs(%{{.*}} : tensor<3xf32>)
// CHECK: linalg.generic {{.*}} ins(%[[W]], %[[GW:[^,]*]], {{.*}} attrs = {moe.name = "w", moe.update}
// CHECK-NOT: moe.name = "w", moe.update
// CHECK: linalg.generic {{.*}} ins(%[[U]], %[[GU]], {{.*}} attrs = {moe.name = "unused", moe.update}
// CHECK: return {{.*}}, %[[GW]], %[[GU]] :
// CHECK-NOT: func.func
// CHECK-NOT: stale
// With another entry name, the old train_step stays.
// ENTRY: func.func @my_step(%{{.*}}: tensor<2x4xf32>
// ENTRY: func.func @train_step() attributes {stale}
func.func @train_forward(%x: tensor<2x4xf32> {moe.name = "images"}, %y: tensor<2xi32> {moe.name = "labels"})
    -> (tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>) {
  %w = moe.param "w" init(trunc_normal, 2.0e-02) : tensor<4x4xf32>
  %h = moe.dense %x, %w : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  %w2 = moe.param "w" init(trunc_normal, 2.0e-02) : tensor<4x4xf32>
  %l = moe.dense %h, %w2 : (tensor<2x4xf32>, tensor<4x4xf32>) -> tensor<2x4xf32>
  %unused = moe.param "unused" init(zeros) no_decay : tensor<3xf32>
  %ce = moe.softmax_cross_entropy %l, %y : (tensor<2x4xf32>, tensor<2xi32>) -> tensor<f32>
  %aux = moe.sum_losses : () -> tensor<f32>
  %ls, %correct = moe.classification_metrics %l, %y : (tensor<2x4xf32>, tensor<2xi32>) -> (tensor<f32>, tensor<f32>)
  return %ce, %ce, %aux, %correct : tensor<f32>, tensor<f32>, tensor<f32>, tensor<f32>
}
func.func @train_step() attributes {stale} {
  return
}
