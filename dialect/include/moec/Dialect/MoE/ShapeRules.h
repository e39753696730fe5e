//===- ShapeRules.h - moe shape rules ---------------------------*- C++ -*-===//
//
// The shape rules of the moe ops, written once: the op verifiers check result
// types against them, and builders (the frontend, passes) use them to compute
// result types. Each function reports the first violation through `emitError`
// (StableHLO's TypeInference pattern) and returns the result shape otherwise.
// Dynamic dimensions (ShapedType::kDynamic) match anything.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_SHAPERULES_H
#define MOEC_DIALECT_MOE_SHAPERULES_H

#include "mlir/IR/Diagnostics.h"
#include "mlir/Support/LLVM.h"
#include "llvm/ADT/STLFunctionalExtras.h"
#include "llvm/ADT/SmallVector.h"

#include <optional>
#include <string>

#include "moec/Dialect/MoE/MoEEnums.h"

namespace moec::moe {

using EmitErrorFn = llvm::function_ref<mlir::InFlightDiagnostic()>;
using Shape = llvm::SmallVector<int64_t, 4>;
using mlir::ArrayRef;
using mlir::FailureOr;
using mlir::LogicalResult;

/// "8x?x64"; "scalar" for rank 0.
std::string formatShape(ArrayRef<int64_t> shape);
/// True if the shapes have one rank and every pair of static dims is equal.
bool shapesCompatible(ArrayRef<int64_t> a, ArrayRef<int64_t> b);

FailureOr<Shape> inferPatchEmbedShape(EmitErrorFn emitError,
                                      ArrayRef<int64_t> input,
                                      ArrayRef<int64_t> weight,
                                      ArrayRef<int64_t> bias,
                                      int64_t patchSize);
FailureOr<Shape> inferClassTokenShape(EmitErrorFn emitError,
                                      ArrayRef<int64_t> input,
                                      ArrayRef<int64_t> token);
FailureOr<Shape> inferPosEmbedShape(EmitErrorFn emitError,
                                    ArrayRef<int64_t> input,
                                    ArrayRef<int64_t> embedding);
FailureOr<Shape> inferLayerNormShape(EmitErrorFn emitError,
                                     ArrayRef<int64_t> input,
                                     ArrayRef<int64_t> gamma,
                                     ArrayRef<int64_t> beta, double epsilon);
FailureOr<Shape> inferAttentionShape(EmitErrorFn emitError,
                                     ArrayRef<int64_t> input,
                                     ArrayRef<int64_t> qkvWeight,
                                     ArrayRef<int64_t> qkvBias,
                                     ArrayRef<int64_t> outWeight,
                                     ArrayRef<int64_t> outBias, int64_t heads);
FailureOr<Shape> inferDenseShape(EmitErrorFn emitError,
                                 ArrayRef<int64_t> input,
                                 ArrayRef<int64_t> weight,
                                 std::optional<ArrayRef<int64_t>> bias);
FailureOr<Shape> inferPoolShape(EmitErrorFn emitError, ArrayRef<int64_t> input);
FailureOr<Shape> inferClassifierHeadShape(EmitErrorFn emitError,
                                          ArrayRef<int64_t> input,
                                          ArrayRef<int64_t> weight,
                                          ArrayRef<int64_t> bias);
FailureOr<Shape> inferSoftmaxCrossEntropyShape(EmitErrorFn emitError,
                                               ArrayRef<int64_t> logits,
                                               ArrayRef<int64_t> labels,
                                               double labelSmoothing);

/// The attributes of a moe.router that decide its shapes.
struct RouterConfig {
  RouterKind kind = RouterKind::TokenChoice;
  std::optional<int64_t> k;
  std::optional<double> capacityFactor;
  std::optional<double> noiseStd;
  std::optional<int64_t> sinkhornIters;
  std::optional<int64_t> slotsPerExpert;
  /// Batch Prioritized Routing (token_choice and sinkhorn).
  bool batchPrioritized = false;
  /// per_image: route from the class token (token 0), not the mean token.
  bool classToken = false;
};

/// Checks which attributes `config.kind` takes and their ranges, given
/// `numExperts` experts (k <= E and so on).
LogicalResult verifyRouterConfig(EmitErrorFn emitError,
                                 const RouterConfig &config,
                                 int64_t numExperts);

/// Slots per expert for `tokens` tokens per group; see moe.router's
/// description. Dynamic if `tokens` is. Expects a verified config.
int64_t routerCapacity(const RouterConfig &config, int64_t tokens,
                       int64_t numExperts);

/// Rows of one group's row list in a fused MoE layer (moe.routed_ffn): the
/// most filled slots the router can produce, each expert's segment padded
/// to a multiple of `rowTile` rows. `k` is ignored by expert_choice.
int64_t routedRowBound(RouterKind kind, int64_t tokens, int64_t numExperts,
                       int64_t k, int64_t capacity, int64_t rowTile);

struct RouterShapes {
  Shape dispatch; // [G, S, E, C]
  Shape combine;  // [G, S, E, C]
  Shape logits;   // [G, R, E*P]
};
/// Result shapes of a router over `input` [G, S, D] with `weight`
/// [D, E*P]. `numExperts` is E (the weight alone only gives E*P).
FailureOr<RouterShapes> inferRouterShapes(EmitErrorFn emitError,
                                          ArrayRef<int64_t> input,
                                          ArrayRef<int64_t> weight,
                                          const RouterConfig &config,
                                          int64_t numExperts);

FailureOr<Shape> inferDispatchShape(EmitErrorFn emitError,
                                    ArrayRef<int64_t> input,
                                    ArrayRef<int64_t> dispatch);
FailureOr<Shape> inferExpertsShape(EmitErrorFn emitError,
                                   ArrayRef<int64_t> input,
                                   ArrayRef<int64_t> fc1Weight,
                                   ArrayRef<int64_t> fc1Bias,
                                   ArrayRef<int64_t> fc2Weight,
                                   ArrayRef<int64_t> fc2Bias);
FailureOr<Shape> inferCombineShape(EmitErrorFn emitError,
                                   ArrayRef<int64_t> input,
                                   ArrayRef<int64_t> combine);
FailureOr<Shape> inferSharedExpertShape(EmitErrorFn emitError,
                                        ArrayRef<int64_t> input,
                                        ArrayRef<int64_t> fc1Weight,
                                        ArrayRef<int64_t> fc1Bias,
                                        ArrayRef<int64_t> fc2Weight,
                                        ArrayRef<int64_t> fc2Bias);

} // namespace moec::moe

#endif // MOEC_DIALECT_MOE_SHAPERULES_H
