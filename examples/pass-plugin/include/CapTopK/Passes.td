//===- Passes.td - moe-cap-top-k -------------------------*- tablegen -*-===//
//
// The plugin's passes, declared like moec's own (passes/include/moec/Passes/
// Passes.td): tablegen generates the options struct, the pass base class,
// createCapTopKPass() and registerCapTopKPasses().
//
//===----------------------------------------------------------------------===//

#ifndef CAPTOPK_PASSES_TD
#define CAPTOPK_PASSES_TD

include "mlir/Pass/PassBase.td"

def CapTopKPass : Pass<"moe-cap-top-k", "mlir::ModuleOp"> {
  let summary = "Routes every token to at most k experts.";
  let description = [{
    Lowers the `k` of every token-choice, Sinkhorn and per-image router
    above the cap to the cap, in every function or in those named by
    `functions` (e.g. `functions=infer,eval` to serve with top-1 a model
    trained with top-2). A router's capacity C depends on k, and it is part
    of the types of the router's results and of the moe.dispatch and
    moe.experts after it: the pass rebuilds the router with
    moec::moe::rebuildRouter, which recomputes them. The `k` of the
    load-balancing losses on the router's logits follows.

    Run it before moe-autodiff (`moec compile --run-passes=frontend:...`):
    once the backward pass exists, the capacity is baked into it.

    Before (`k = 2`, capacity ceil(2 * 50 * 2.0 / 4) = 50):
    ```mlir
    %d, %c, %l = moe.router token_choice %x, %w {capacity_factor = 2.000000e+00 : f64, k = 2 : i64}
        : (tensor<8x50x64xf32>, tensor<64x4xf32>)
        -> (tensor<8x50x4x50xf32>, tensor<8x50x4x50xf32>, tensor<8x50x4xf32>)
    %xs = moe.dispatch %x, %d : (tensor<8x50x64xf32>, tensor<8x50x4x50xf32>) -> tensor<4x8x50x64xf32>
    ```
    After `moe-cap-top-k{k=1}` (capacity ceil(1 * 50 * 2.0 / 4) = 25):
    ```mlir
    %d, %c, %l = moe.router token_choice %x, %w {capacity_factor = 2.000000e+00 : f64, k = 1 : i64}
        : (tensor<8x50x64xf32>, tensor<64x4xf32>)
        -> (tensor<8x50x4x25xf32>, tensor<8x50x4x25xf32>, tensor<8x50x4xf32>)
    %xs = moe.dispatch %x, %d : (tensor<8x50x64xf32>, tensor<8x50x4x25xf32>) -> tensor<4x8x25x64xf32>
    ```
  }];
  let options = [
    Option<"k", "k", "int64_t", /*default=*/"1",
           "The most experts a token is routed to (>= 1)">,
    ListOption<"functions", "functions", "std::string",
               "Only the routers of these functions (default: every function)">,
  ];
}

#endif // CAPTOPK_PASSES_TD
