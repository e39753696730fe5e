//===- Passes.td - moec passes -----------------------------*- tablegen -*-===//
//
// Every moec pass, grouped by stage. Each has a hyphenated `moe-...`
// argument; tablegen generates createXPass() and the options structs.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_PASSES_TD
#define MOEC_PASSES_PASSES_TD

include "mlir/Pass/PassBase.td"

//===----------------------------------------------------------------------===//
// Analysis
//===----------------------------------------------------------------------===//

def AnnotateCostsPass : Pass<"moe-annotate-costs", "mlir::ModuleOp"> {
  let summary = "Annotates entry functions with parameter and FLOP counts.";
  let description = [{
    Counts, for every function that uses moe ops:

    * `moe.params`: elements of the distinct `moe.param`s it reads;
    * `moe.active_params`: the parameters one token actually uses: every
      MoE layer counts only the experts a token is routed to (k of E for
      token-choice, Sinkhorn and per-image routers, `E * C / S` expected
      experts per token for expert-choice and soft routers);
    * `moe.flops`: floating-point operations of one call (a multiply-add
      counts 2), summed from the per-op cost model in CostModel.h: moe ops
      by formula, linalg ops (the backward pass and the optimizer update
      that moe-autodiff builds) as iterations times their body's float
      arithmetic. moec runs the pass again on `train_step` after
      moe-autodiff, so its count covers forward, backward and update.

    With `per-op`, every counted op also gets its own `moe.flops`.

    Before:
    ```mlir
    func.func @infer(%x: tensor<8x50x64xf32>) -> tensor<8x50x128xf32> {
      %w = moe.param "fc.weight" init(trunc_normal, 2.000000e-02) : tensor<64x128xf32>
      %y = moe.dense %x, %w : (tensor<8x50x64xf32>, tensor<64x128xf32>) -> tensor<8x50x128xf32>
      return %y : tensor<8x50x128xf32>
    }
    ```
    After:
    ```mlir
    func.func @infer(...) attributes {moe.active_params = 8192 : i64,
        moe.flops = 6553600 : i64, moe.params = 8192 : i64} { ... }
    ```
  }];
  let options = [
    Option<"perOp", "per-op", "bool", /*default=*/"false",
           "Also annotate every moe op with its own FLOP count">,
  ];
}

//===----------------------------------------------------------------------===//
// Pruning
//===----------------------------------------------------------------------===//

def PruneLayersPass : Pass<"moe-prune-layers", "mlir::ModuleOp"> {
  let summary = "Replaces the MoE layers whose routing does not specialise by a dense FFN.";
  let description = [{
    ViMoE's layer pruning. Reads a routing profile (`moec-run analyze`'s
    profile.json, docs/analysis.md) and, in every function of the module,
    replaces each MoE layer whose routing does not depend on the class by
    a dense FFN on the same tokens (a `moe.shared_expert` op, whose
    weights are parameters of their own):

    * criterion `image-nmi` (default): the layer's `image_nmi`, the
      normalised mutual information between an image's class and the
      expert most of its tokens go to, is below `threshold`;
      `token-nmi`: the same of each token's experts (`token_nmi`);
    * `layers=blocks.1.moe,...` prunes exactly the layers named instead
      (the profile then need not exist; an empty `profile` is allowed).

    The replacement: a layer with a shared expert keeps only it (its
    parameters keep their names and values). A layer without one gets a
    dense FFN `<layer>.dense.fc1/fc2.weight/bias` that carries over the
    experts' weights (`moe.carry_over` on each new `moe.param`, which
    `moec prune` applies to the weights): `replacement=top` (default) takes
    the most-used expert (the profile's `most_used_expert`), `mean` the
    average of the experts weighted by their load; fc2's weight and bias
    are scaled by the profile's `gate_mass_per_token`, the gate weight a
    routed output is scaled by on average.

    Everything that read the layer's routing goes with it: its auxiliary
    losses (removed from their `moe.sum_losses`), its routing counts and
    statistics (removed from `eval`'s and `analyze`'s results) and its
    router-noise input (removed from `train_forward`'s arguments). The
    module records what was pruned in `moe.pruned_layers`. A layer whose
    router also decides for a kept layer (router scope `model`) cannot be
    pruned alone: the pass fails naming both.

    ```mlir
    %y = moe.shared_expert gelu %h, %w1, %b1, %w2, %b2 : ...
    ```
  }];
  let options = [
    Option<"profile", "profile", "std::string", /*default=*/"\"\"",
           "The routing profile (moec-run analyze's profile.json)">,
    Option<"threshold", "threshold", "double", /*default=*/"0.05",
           "Prune the layers whose criterion is below this">,
    Option<"criterion", "criterion", "std::string", /*default=*/"\"image-nmi\"",
           "image-nmi or token-nmi">,
    Option<"replacement", "replacement", "std::string", /*default=*/"\"top\"",
           "For a layer without a shared expert: top (the most-used expert) "
           "or mean (the load-weighted average of the experts)">,
    ListOption<"layers", "layers", "std::string",
               "Prune exactly these layers (e.g. blocks.1.moe)">,
  ];
}

//===----------------------------------------------------------------------===//
// Fusion
//===----------------------------------------------------------------------===//

def FuseRoutingPass : Pass<"moe-fuse-routing", "mlir::func::FuncOp"> {
  let summary = "Fuses router, dispatch, experts and combine into moe.routed_ffn.";
  let description = [{
    Rewrites every MoE layer whose routing tensors are used only to move
    tokens, `moe.router` -> `moe.dispatch` -> `moe.experts` ->
    `moe.combine`, into one `moe.routed_ffn`, whose lowering never builds
    the `[G, S, E, C]` dispatch and combine tensors nor the `[E, G, C, D]`
    slots: routing becomes a row list (a token and a gate per filled slot),
    the first grouped GEMM gathers its rows through it and the second adds
    its gated rows into the tokens' outputs. Runs before moe-autodiff, so
    training differentiates the fused op (its VJP keeps the row list).

    The router's logits keep their users (the auxiliary losses); a
    `moe.routing_counts` of the dispatch tensor (eval's routing statistics)
    reads the fused op's per-group counts instead. A layer is left as it is
    when:

    * the router is `soft` (its dispatch weights are dense: slots mix all
      tokens, so there is no row list to gather through);
    * the dispatch or combine tensor, the slots or the experts' output has
      another user (other than routing counts of the dispatch), or the
      dispatch reads other tokens than the router;
    * a user of the logits or of the routing counts comes before the combine
      (the fused op takes the combine's place).

    Before:
    ```mlir
    %d, %c, %l = moe.router token_choice %x, %wr {k = 2 : i64, capacity_factor = 1.25 : f64} : ...
    %xs = moe.dispatch %x, %d : ...
    %ys = moe.experts gelu %xs, %w1, %b1, %w2, %b2 : ...
    %y = moe.combine %ys, %c : ...
    ```
    After:
    ```mlir
    %y, %l, %n = moe.routed_ffn token_choice gelu %x, %wr, %w1, %b1, %w2, %b2
        {capacity = 32 : i64, capacity_factor = 1.25 : f64, k = 2 : i64, row_tile = 8 : i64} : ...
    ```
  }];
  let options = [
    Option<"rowTile", "row-tile", "int64_t", /*default=*/"8",
           "Rows of a grouped GEMM tile (at most the layer's capacity): "
           "every expert's segment of the row list is padded to a multiple "
           "of it">,
  ];
}

//===----------------------------------------------------------------------===//
// Training
//===----------------------------------------------------------------------===//

def AutodiffPass : Pass<"moe-autodiff", "mlir::ModuleOp"> {
  let summary = "Builds a train_step entry (forward, backward, optimizer) from train_forward.";
  let description = [{
    Clones `forward` (results `(loss, ce_loss, aux_loss, correct, ...)`) into
    `entry` and appends:

    * a reverse sweep from the loss: every op on the path asks its
      `DifferentiableOpInterface` for the VJP, cotangents of values used
      twice are summed, parameter gradients are gathered per parameter name;
    * the global gradient norm, the learning rate of this step (linear
      warm-up, then cosine decay to `min_lr_ratio`, or constant) and the
      clipping factor `min(1, grad_clip / (norm + 1e-6))`;
    * one update per parameter (AdamW with decoupled weight decay, or SGD
      with momentum, as the forward function's `moe.optimizer` dictionary
      says), whose outputs are the parameter and its optimizer state
      (`moe.param "optimizer.<slot>.<name>"` marked `moe.state`): the
      kernels write them in place.

    New inputs: `step`, `total_steps`, `warmup_steps`, `lr` (0-d f32). Results:
    `loss, ce_loss, aux_loss, correct, grad_norm, lr_used` and one
    `grad.<param>` per parameter (role `gradient`). Weight decay skips
    biases of any rank, rank-1 parameters, `cls_token` and `pos_embed`.
  }];
  let options = [
    Option<"forward", "forward", "std::string", /*default=*/"\"train_forward\"",
           "The forward function (loss first)">,
    Option<"entry", "entry", "std::string", /*default=*/"\"train_step\"",
           "Name of the function to build">,
  ];
  let dependentDialects = ["mlir::linalg::LinalgDialect", "mlir::arith::ArithDialect",
                           "mlir::math::MathDialect", "mlir::tensor::TensorDialect"];
}

//===----------------------------------------------------------------------===//
// CPU lowering
//===----------------------------------------------------------------------===//

def DecomposeLossesPass : Pass<"moe-decompose-losses", "mlir::func::FuncOp"> {
  let summary = "Rewrites the loss and metric ops into whole-batch linalg.";
  let description = [{
    The batch-level moe ops reduce over images, so they get no per-image
    kernel: `moe.softmax_cross_entropy`, `moe.aux_loss`, `moe.sum_losses`,
    `moe.classification_metrics` and `moe.routing_counts` each become
    whole-batch linalg, and so does `moe.l2_normalize` (its vectors may run
    along any dimension, such as the columns of a cosine gate's codes)
    (one rewrite pattern per op,
    `moec::populateDecomposeLossPatterns`), which moe-lower-to-kernels then
    outlines like the backward pass.

    Before:
    ```mlir
    %loss = moe.softmax_cross_entropy %logits, %labels {label_smoothing = 0.0 : f32}
        : (tensor<8x10xf32>, tensor<8xi32>) -> tensor<f32>
    ```
    After:
    ```mlir
    %max = linalg.generic ... // row max of %logits       -> tensor<8xf32>
    %sum = linalg.generic ... // row sum of exp(x - max)  -> tensor<8xf32>
    %dot = linalg.generic ... // sum_k target_k logit_k   -> tensor<8xf32>
    %loss = linalg.generic ... // mean of max + log(sum) - dot -> tensor<f32>
    ```
  }];
  let dependentDialects = ["mlir::arith::ArithDialect",
                           "mlir::linalg::LinalgDialect", "mlir::math::MathDialect",
                           "mlir::tensor::TensorDialect"];
}

def SplitBatchReductionsPass : Pass<"moe-split-batch-reductions", "mlir::func::FuncOp"> {
  let summary = "Splits sums over the batch into per-tile partials and their sum.";
  let description = [{
    Weight gradients sum over the batch: x^T dy reduces [B*S, K] x [B*S, N]
    into a small [K, N]. Split over its output, every tile of such a kernel
    would stream all of dy from memory. Instead, a generic that sums over
    the batch (the extent of the function's first ranked argument's
    dimension 0) into a much smaller output without a batch dimension (a
    weight gradient, a bias or norm gradient) becomes a partial op with a
    leading parallel dimension over 16 tiles of images, each summing its
    own images into its own slice of a [16, ...] tensor (the slices it reads
    stay in cache), and a second op that adds the partials in a fixed order,
    so results do not depend on the thread count. moe-lower-to-kernels then
    splits both over their tiles.

    Before:
    ```mlir
    %dw = linalg.generic {iterator_types = ["reduction", "parallel", "parallel"]}
        ins(%x, %dy : tensor<32x8xf32>, tensor<32x16xf32>) outs(%zero : tensor<8x16xf32>)
    ```
    After:
    ```mlir
    %x2 = tensor.expand_shape %x [[0, 1], [2]] : tensor<32x8xf32> into tensor<16x2x8xf32>
    %partial = linalg.generic {iterator_types = ["parallel", "reduction", ...]}
        ins(%x2, %dy2 : ...) outs(%zeros : tensor<16x8x16xf32>)
    %dw = linalg.generic ... // sum_t %partial[t] into %zero
    ```
  }];
  let dependentDialects = ["mlir::arith::ArithDialect",
                           "mlir::linalg::LinalgDialect",
                           "mlir::tensor::TensorDialect"];
}

def LowerToKernelsPass : Pass<"moe-lower-to-kernels", "mlir::ModuleOp"> {
  let summary = "Outlines every moe op of an entry function into a per-image kernel.";
  let description = [{
    Turns the entry function (`entry`, default `infer`) into a flat plan: each
    moe compute op becomes a `func.call` to a new kernel function, and the op's
    results are written into destination tensors (`tensor.empty`) passed to
    the call. Every other function is erased.

    A kernel takes the op's operands, one destination per result, and an image
    range `[begin, end)`; its body loops over the images in the range and
    computes each image's slice with linalg/tensor/arith/math ops, written in
    destination-passing style so one-shot bufferization updates the
    destinations in place. The runtime splits the image range over threads.

    Routing is expressed with parallel ops only: a token's rank among the
    experts (or an expert's rank among the tokens) and a token's position in
    its expert's queue are counting reductions, so dispatch and combine
    tensors need no sequential loop. Dispatch and combine of one-hot routing
    (every router but soft MoE) are gathers, and experts between such a
    dispatch and the same router's combine compute filled slots only (their
    kernel also takes the routing tensor).

    Every moe op is lowered through its `ImageKernelOpInterface` model
    (passes/lib/Ops/, attached by moec::registerMoEOpModels); an op without
    one is an error (run moe-decompose-losses first for losses and
    metrics). Whole-batch ops (the backward pass, the decomposed losses and
    metrics and the optimizer updates of `train_step`): every linalg op
    becomes a "fixed" kernel over at most 16 tiles of its loop
    dimension 0 (when that dimension is parallel and every operand indexes
    it as a plain dimension; otherwise one tile). A `linalg.fill` that only
    initializes the op is done per tile in the kernel, and so is a broadcast
    (a generic copying one smaller input into a `tensor.empty`, such as a
    bias broadcast over [experts, images, slots, features] that a matmul
    accumulates into): the kernel broadcasts into its own tile instead of
    copying in a whole-batch tensor another kernel wrote. An op whose output is
    a `moe.param` (an optimizer update) writes the parameter in place. With
    `fuse`, consecutive linalg ops split the same way, each reading its
    producers at the tile they wrote, share one kernel. `tensor.collapse_shape`
    and `expand_shape` stay in the plan as views.

    Before:
    ```mlir
    func.func @infer(%x: tensor<8x50x64xf32>) -> tensor<8x50x64xf32> {
      %y = moe.activation gelu %x : tensor<8x50x64xf32>
      return %y : tensor<8x50x64xf32>
    }
    ```
    After:
    ```mlir
    func.func @infer(%x: tensor<8x50x64xf32>) -> tensor<8x50x64xf32> {
      %d = tensor.empty() : tensor<8x50x64xf32>
      %y = call @moec_k0(%x, %d, %c0, %c8) {moe.op = "moe.activation", ...}
      return %y : tensor<8x50x64xf32>
    }
    func.func @moec_k0(%x: tensor<8x50x64xf32>, %d: tensor<8x50x64xf32>,
                       %begin: index, %end: index) -> tensor<8x50x64xf32> {
      %r = scf.for %g = %begin to %end step %c1 iter_args(%acc = %d) ... {
        // extract_slice image %g, linalg.generic (gelu), insert_slice
      }
      return %r : tensor<8x50x64xf32>
    }
    ```
  }];
  let dependentDialects = ["mlir::arith::ArithDialect", "mlir::func::FuncDialect",
                           "mlir::linalg::LinalgDialect", "mlir::math::MathDialect",
                           "mlir::scf::SCFDialect", "mlir::tensor::TensorDialect"];
  let options = [
    Option<"entry", "entry", "std::string", /*default=*/"\"infer\"",
           "The entry function to turn into a plan">,
    Option<"kernelPrefix", "kernel-prefix", "std::string", /*default=*/"\"moec_k\"",
           "Kernel names are this prefix plus a number">,
    Option<"fuseKernels", "fuse", "bool", /*default=*/"true",
           "Put consecutive whole-batch linalg ops that split the same way "
           "into one kernel">,
  ];
}

def VectorizeKernelsPass : Pass<"moe-vectorize-kernels", "mlir::func::FuncOp"> {
  let summary = "Tiles every linalg op of the kernels to register tiles and vectorizes it.";
  let description = [{
    Runs on kernels on tensors (before bufferization), one function at a
    time (functions without `moe.kernel` are left alone), so the pass
    manager runs it on the kernels in parallel. A contraction over
    several consecutive reduction dimensions that every operand reads in the
    same order (a weight gradient's images x tokens) first becomes one over
    their product (`tensor.collapse_shape` of the operands): with several
    unit reduction dimensions a tile would not lower to outer products.
    Every linalg op with static shapes is then tiled with scf.for loops:

    * contractions (matmuls, the dispatch/combine einsums): the innermost
      parallel dimension by the largest divisor of its size that is at most
      `vector-width` floats and at most a sixth of the accumulator budget in
      registers (preferring multiples of one register), the next parallel
      dimension by the largest divisor <= `row-tile` that keeps the
      accumulators within three quarters of the target's registers, other
      parallel dimensions and every reduction dimension by 1, so each K
      step is an outer product into a register tile. The register file is
      the target's (`register-bits`, `vector-registers`): AVX-512 gets
      6 x 64-float tiles, AVX2 6 x 16 (12 of its 16 ymm registers), the
      classic shapes of hand-written GEMM kernels for those ISAs;
    * other ops whose innermost loop is parallel: that dimension like a
      contraction's, every other parallel dimension by 1;
    * ops whose innermost loop is a reduction (layer norm and softmax
      statistics, routing ranks): every parallel dimension and every outer
      reduction dimension by 1, the innermost reduction whole (a vector
      reduction).

    A contraction with one long reduction (a weight gradient over images x
    tokens: at least 256 steps, longer than both output extents) whose
    operands' rows would not stay in cache first gets a loop
    over blocks of that reduction: a block's rows of both operands fit in
    three quarters of `l1-bytes`, so the register tiles of one block reuse
    each other's loads from L1 instead of each streaming the whole
    reduction from L2.

    A contraction with a short reduction whose output starts as a
    `linalg.fill` or a broadcast (a bias; `linalg.broadcast` or a generic
    that yields its one input), used by nothing else, is first tiled over
    its parallel dimensions with that init fused into each tile, then each
    tile's reduction is stepped by 1. After vectorization the tile's read of
    its own init folds into the written vector, so the accumulators start
    as zeros (or the bias row) in registers: no pass sets the whole output
    in memory before the matmul and no tile loads it back.

    Each tile is vectorized with linalg's vectorizer (tiles divide the
    shapes, so no masking is needed). The loop-invariant accumulator
    reads/writes of every K loop are then hoisted out of it, so the
    accumulators stay in registers for the whole reduction. Ops the
    vectorizer rejects stay scalar and are lowered to loops later.
  }];
  let dependentDialects = ["mlir::scf::SCFDialect", "mlir::vector::VectorDialect",
                           "mlir::tensor::TensorDialect", "mlir::arith::ArithDialect"];
  let options = [
    Option<"vectorWidth", "vector-width", "int64_t", /*default=*/"64",
           "Largest tile of the innermost parallel dimension (floats)">,
    Option<"rowTile", "row-tile", "int64_t", /*default=*/"8",
           "Largest tile of the second innermost parallel dimension">,
    Option<"registerBits", "register-bits", "int64_t", /*default=*/"512",
           "Width of one vector register of the target in bits (512: "
           "AVX-512, 256: AVX2)">,
    Option<"vectorRegisters", "vector-registers", "int64_t",
           /*default=*/"32",
           "Number of vector registers of the target (32: AVX-512, 16: AVX2)">,
    Option<"l1Bytes", "l1-bytes", "int64_t", /*default=*/"32768",
           "L1 data cache per core (bytes): long reductions are blocked to "
           "fit it">,
  ];
}

def Bf16ContractionsPass : Pass<"moe-bf16-contractions", "mlir::func::FuncOp"> {
  let summary = "Rewrites the kernels' matmul-like contractions to bf16 pairs.";
  let description = [{
    For `--precision=bf16`. Runs on kernel functions before
    `moe-vectorize-kernels`. A contraction (a matmul, or a generic whose
    body is acc + a * b) in f32 with one reduction dimension of even static
    extent >= `min-reduction`, an innermost output dimension (the vector
    dimension) of at least `min-width` elements, and one input (A) that
    lacks the vector dimension and reads the reduction as its innermost
    dimension becomes:

      * A16: A rounded to bf16 (round to nearest even), its reduction split
        into pairs: [..., K/2, 2];
      * B16: the other input (its innermost dimension the output's
        columns N) rounded to bf16 and repacked so that each pair of
        consecutive reduction elements sits side by side for every column:
        [other dims..., K/2, N, 2] (the VNNI layout that AVX512-BF16's
        vdpbf16ps and AMX read), written by loops of vector code (two rows
        read, interleaved, rounded, one contiguous write per 16 columns);
      * the contraction over (..., K/2, 2): acc + extf(a) * extf(b), the
        accumulators and the result in f32. It carries `moe.bf16_pairs`;
        `moe-vectorize-kernels` keeps the pair dimension whole and
        `moe-lower-vectors` lowers each register's worth of it to one
        `x86vector.avx512.dot` when `bf16-dot` is set (else f32 FMAs on the
        bf16-rounded values: the same numbers, for CPUs without the
        instruction).

    The weights, the optimizer state, the accumulators and every other op
    stay in f32 (fp32 master weights). Contractions whose reduction is not
    contiguous in A (the weight gradients, summed over tokens) stay f32.
  }];
  let dependentDialects = ["mlir::tensor::TensorDialect", "mlir::arith::ArithDialect",
                           "mlir::linalg::LinalgDialect", "mlir::scf::SCFDialect",
                           "mlir::vector::VectorDialect"];
  let options = [
    Option<"minReduction", "min-reduction", "int64_t", /*default=*/"16",
           "Smallest reduction extent rewritten (shorter ones stay f32)">,
    Option<"minWidth", "min-width", "int64_t", /*default=*/"16",
           "Smallest output width rewritten (a router's few experts stay f32)">,
  ];
}

def LowerVectorsPass : Pass<"moe-lower-vectors"> {
  let summary = "Lowers vector contractions, reductions and transfers for LLVM.";
  let description = [{
    After bufferization: `vector.contract` to outer products and FMAs
    (bf16-pair contractions to one dot product per register, see
    `bf16-dot`),
    multi-reductions to inner reductions, transfers to 1-D loads and stores,
    broadcasts, transposes and shape casts to 1-D vector ops, so that
    convert-vector-to-llvm produces plain vector FMAs.
  }];
  let dependentDialects = ["mlir::vector::VectorDialect", "mlir::arith::ArithDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::x86vector::X86VectorDialect"];
  let options = [
    Option<"bf16Dot", "bf16-dot", "bool", /*default=*/"false",
           "Lower bf16-pair contractions (moe-bf16-contractions) to "
           "AVX512-BF16 dot products (x86vector.avx512.dot); otherwise to "
           "f32 FMAs on the bf16 values">,
  ];
}

def PlanMemoryPass : Pass<"moe-plan-memory", "mlir::ModuleOp"> {
  let summary = "Assigns every tensor of a plan an offset in one arena.";
  let description = [{
    Runs on the plan produced by `moe-lower-to-kernels`. Parameters
    (`moe.param`) get offsets in the parameter block (`moe.param_offset`, in
    declaration order, 64-byte aligned); the entry's arguments, every
    destination (`tensor.empty`) and so every intermediate get offsets in the
    arena (`moe.arena_offset`). Arena offsets are assigned with liveness-based
    reuse: a buffer is live from the call that writes it to the last call that
    reads it, and buffers whose lifetimes overlap never overlap in memory
    (greedy, largest first, lowest fitting offset). The entry function gets
    `moe.arena_bytes` (the peak) and `moe.param_bytes`. Optimizer state
    (`moe.param` marked `moe.state`) comes after every parameter, so
    parameters have the same offsets in every entry point; destinations that
    are `moe.param`s (in-place updates) take no arena space; views
    (`tensor.collapse_shape`/`expand_shape`) share their source's bytes and
    keep it live.

    ```mlir
    %d = tensor.empty() {moe.arena_offset = 204800 : i64} : tensor<8x50x64xf32>
    ```
  }];
  let options = [
    Option<"entry", "entry", "std::string", /*default=*/"\"infer\"",
           "The plan function">,
  ];
}

def DropPlanPass : Pass<"moe-drop-plan", "mlir::ModuleOp"> {
  let summary = "Erases the plan function, keeping only kernels for codegen.";
  let description = [{
    After `moe-lower-to-kernels` and `moe-plan-memory` the plan function has
    been read into the artifact; code generation only needs the kernels
    (functions with the `moe.kernel` attribute). Every other function is
    erased.
  }];
}

def DropKernelResultsPass : Pass<"moe-drop-kernel-results", "mlir::ModuleOp"> {
  let summary = "Removes bufferized kernel results that are destination arguments.";
  let description = [{
    After one-shot bufferization a kernel writes its results in place into
    its destination arguments and returns those same memrefs. The runtime
    ignores return values, so the results are removed (a result that is not
    one of the function's arguments is an error): the kernel ABI is
    `void kernel(buffers..., begin, end)`.

    Before:
    ```mlir
    func.func @moec_k0(%x: memref<8x64xf32>, %d: memref<8x64xf32>, %b: index, %e: index) -> memref<8x64xf32> {
      ...
      return %d : memref<8x64xf32>
    }
    ```
    After:
    ```mlir
    func.func @moec_k0(%x: memref<8x64xf32>, %d: memref<8x64xf32>, %b: index, %e: index) {
      ...
      return
    }
    ```
  }];
}

def ExpandCopiesPass : Pass<"moe-expand-copies"> {
  let summary = "Rewrites memref.copy into linalg.copy.";
  let description = [{
    Bufferization copies strided views with `memref.copy`, which the LLVM
    lowering turns into a call to MLIR's C runner library for non-contiguous
    layouts. Kernels must be self-contained, so copies become `linalg.copy`
    and are lowered to loops with every other linalg op.
  }];
  let dependentDialects = ["mlir::linalg::LinalgDialect"];
}

def ApproximateMathPass : Pass<"moe-approximate-math"> {
  let summary = "Replaces math functions by vectorizable polynomial approximations.";
  let description = [{
    Rewrites `math.erf`, `math.tanh`, `math.exp` and the other functions
    MLIR's polynomial approximations cover (f32, scalar or vector) into
    arithmetic, so they need no libm call and vectorize. Relative error of
    the approximations is a few ulp.
  }];
  let dependentDialects = ["mlir::arith::ArithDialect", "mlir::math::MathDialect",
                           "mlir::vector::VectorDialect"];
}

def GpuTilePass : Pass<"moe-gpu-tile", "mlir::func::FuncOp"> {
  let summary = "Tiles a bufferized kernel for the GPU: warp tiles of bf16 "
                "tensor-core GEMMs, thread-parallel loops for the rest.";
  let description = [{
    The CUDA target's tiling, on a kernel after bufferization (one thread
    block computes one unit of the kernel's range: an image, a routing group
    or a tile). Every `linalg.matmul` on f32 memrefs becomes an
    `scf.parallel` over its 16 x 8 output tiles, marked
    `moe.gpu_map = "warps"` (one warp per tile), whose body is a
    `linalg.generic` on the tile's views marked
    `moe.gpu_mma = "m16n8k16.bf16"`: C += bf16(A) * bf16(B) accumulated in
    f32, the numerics of one `mma.sync.m16n8k16.bf16` per 16 steps of K.
    Every other linalg op becomes `scf.parallel` loops over its parallel
    dimensions (its reductions stay sequential inside), which
    `moe-gpu-map-kernels` spreads over the block's threads.

    The result is ordinary IR: the CPU pipeline compiles it too
    (`moec compile --emulate-gpu-tiling`), which is how the GPU tiling is
    checked against the fp64 reference on a machine without a GPU.
  }];
  let dependentDialects = ["mlir::scf::SCFDialect", "mlir::arith::ArithDialect",
                           "mlir::memref::MemRefDialect",
                           "mlir::linalg::LinalgDialect"];
}

def GpuMapKernelsPass : Pass<"moe-gpu-map-kernels", "mlir::ModuleOp"> {
  let summary = "Maps tiled kernels onto GPU thread blocks: one gpu.func each.";
  let description = [{
    Each kernel function (`moe.kernel`, after bufferization and
    `moe-gpu-tile`) becomes a `gpu.func` kernel in `gpu.module @moec_kernels`
    and the function is erased. The kernel ABI (docs/artifact.md): the
    buffers as bare pointers, then `begin` (i64) and a scratch pointer; block
    b of the grid computes unit `begin + b` of the range on `block-threads`
    threads:

    - The kernel's temporaries (`memref.alloc`, static shapes) become views
      of the unit's slice of the scratch buffer; the kernel's
      `moe.scratch_bytes` attribute is the size of one slice.
    - An `scf.parallel` marked `moe.gpu_map = "warps"` runs its iterations
      round-robin over the block's warps; its `moe.gpu_mma` tile matmuls
      become per-lane fragment loads and `nvvm.mma.sync` m16n8k16 bf16
      (f32 accumulators), with bounds checks for partial tiles.
    - Any other `scf.parallel` runs its linearized iterations round-robin
      over the block's threads (nested ones run sequentially).
    - Loops and conditionals that contain such parallel loops are run by
      every thread (their bounds are block-uniform).
    - Any other op that writes memory runs on thread 0; its results reach
      the other threads through workgroup memory.
    - `gpu.barrier` separates every phase that writes memory from what
      follows and precedes it.
  }];
  let options = [
    Option<"blockThreads", "block-threads", "int64_t", /*default=*/"256",
           "Threads per block (a multiple of 32)">,
  ];
  let dependentDialects = ["mlir::gpu::GPUDialect", "mlir::NVVM::NVVMDialect",
                           "mlir::LLVM::LLVMDialect", "mlir::scf::SCFDialect",
                           "mlir::arith::ArithDialect",
                           "mlir::memref::MemRefDialect"];
}

#endif // MOEC_PASSES_PASSES_TD
