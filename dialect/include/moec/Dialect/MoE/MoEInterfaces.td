//===- MoEInterfaces.td - moe dialect interfaces -----------*- tablegen -*-===//
//
// The differentiation interface every differentiable moe op implements
// (moe-autodiff builds the backward pass from it), and the two interfaces
// the passes attach as external models (passes/lib/Ops/): the per-image
// kernel lowering and the cost model.
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

def MoE_ImageKernelOpInterface : OpInterface<"ImageKernelOpInterface"> {
  let cppNamespace = "::moec::moe";
  let description = [{
    An op that moe-lower-to-kernels outlines into a kernel over a range of
    images: the kernel loops over images and computes one image's slice of
    every result from one image's slice of every operand. The dialect only
    declares the interface; its implementations are external models that
    the passes library attaches (moec::registerMoEOpModels), grouped by op
    family in passes/lib/Ops/, like Linalg's TilingInterface models.

    `getImageDim` says along which dimension an operand or result holds
    the images (-1: not per image, e.g. parameters, which every image reads
    whole). `buildImageKernel` emits, at the builder's insertion point, the
    computation of one image on static f32 tensors in destination-passing
    style: `inputs` are the per-image operand slices (plus, with
    `options.filledSlotsOnly`, the routing tensor of the router that filled
    the slots), `dests` the per-image destination slices; it returns the
    per-image results, written into `dests` so that bufferization computes
    in place.
  }];
  let methods = [
    InterfaceMethod<
      "The dimension of the images in operand (or result) `value`, -1 if it "
      "is not per image.",
      "int64_t", "getImageDim",
      (ins "::mlir::Value":$value, "bool":$isResult)>,
    InterfaceMethod<
      "Emits the computation of one image.",
      "::mlir::FailureOr<::llvm::SmallVector<::mlir::Value>>",
      "buildImageKernel",
      (ins "::mlir::OpBuilder &":$builder, "::mlir::Location":$loc,
           "::llvm::ArrayRef<::mlir::Value>":$inputs,
           "::llvm::ArrayRef<::mlir::Value>":$dests,
           "const ::moec::moe::ImageKernelOptions &":$options)>,
  ];
}

def MoE_CostOpInterface : OpInterface<"CostOpInterface"> {
  let cppNamespace = "::moec::moe";
  let description = [{
    The cost model of an op (moe-annotate-costs, the artifact manifest):
    the FLOPs of one execution, a multiply-add counted as 2, and the
    parameters an image does not use on average (the expert weights of
    experts a token is not routed to). Implemented as external models next
    to each op family's kernel lowering (passes/lib/Ops/).
  }];
  let methods = [
    InterfaceMethod<"FLOPs of one execution of this op.",
      "int64_t", "estimateFlops", (ins)>,
    InterfaceMethod<
      "Parameters read by this op that one token does not use, on average.",
      "double", "estimateInactiveParameters", (ins), /*methodBody=*/"",
      /*defaultImplementation=*/"return 0.0;">,
  ];
}

#endif // MOEC_DIALECT_MOE_MOEINTERFACES_TD
