//===- MoEInterfaces.td - moe dialect interfaces -----------*- tablegen -*-===//
//
// The differentiation interface every differentiable moe op implements;
// moe-autodiff builds the backward pass from it.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEINTERFACES_TD
#define MOEC_DIALECT_MOE_MOEINTERFACES_TD

include "mlir/IR/OpBase.td"

def MoE_DifferentiableOpInterface : OpInterface<"DifferentiableOpInterface"> {
  let cppNamespace = "::moec::moe";
  let description = [{
    An op whose vector-Jacobian product can be written as moe and linalg IR
    on tensors. Given the cotangents of the op's results (a null Value for a
    result nothing depends on), `buildVJP` emits, at the builder's insertion
    point, IR computing the cotangent of every operand, and stores them in
    `operandGrads` (one entry per operand; null where no gradient flows:
    integer labels, router noise, the discrete routing decisions). The
    emitted IR works on whole-batch tensors; moe-lower-to-kernels outlines
    it like the forward pass. Instead of recomputing intermediates, a VJP may
    replace its op in the forward by one that also returns them (moe.attention
    becomes moe.attention_train, moe.experts moe.experts_train,
    moe.activation moe.activation_train): it creates that op right after itself and
    moves every use over, and moe-autodiff erases the op left without uses.
  }];
  let methods = [
    InterfaceMethod<
      "Emits the vector-Jacobian product of this op.",
      "::llvm::LogicalResult", "buildVJP",
      (ins "::mlir::OpBuilder &":$builder,
           "::llvm::ArrayRef<::mlir::Value>":$resultGrads,
           "::llvm::SmallVectorImpl<::mlir::Value> &":$operandGrads)>,
  ];
}

#endif // MOEC_DIALECT_MOE_MOEINTERFACES_TD
