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
      counts 2), summed from the per-op cost model in CostModel.h.

    With `per-op`, every moe op also gets its own `moe.flops`.

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

#endif // MOEC_PASSES_PASSES_TD
