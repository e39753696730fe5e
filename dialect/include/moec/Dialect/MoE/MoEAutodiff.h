//===- MoEAutodiff.h - shared pieces of the moe VJPs ------------*- C++ -*-===//
//
// Builders shared by the VJPs (dialect) and the kernel lowering (passes).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEAUTODIFF_H
#define MOEC_DIALECT_MOE_MOEAUTODIFF_H

#include "moec/Dialect/MoE/MoEOps.h"

#include <utility>

namespace moec::moe {

/// act(x) for one scalar element, in the f32 arith/math dialects.
mlir::Value buildActivation(mlir::OpBuilder &b, mlir::Location loc,
                            Activation kind, mlir::Value x);

/// act'(x), the activation's derivative, for one scalar element.
mlir::Value buildActivationDerivative(mlir::OpBuilder &b, mlir::Location loc,
                                      Activation kind, mlir::Value x);

/// Whole-batch linalg for an aux loss: the per-group loss [G] (unweighted)
/// and, with `wantGrad`, d(sum_g loss_g) / d logits. `operands` are the
/// op's operands or their replacements.
std::pair<mlir::Value, mlir::Value> buildAuxLoss(mlir::OpBuilder &b, AuxLossOp op,
                                                 mlir::ValueRange operands,
                                                 bool wantGrad);

} // namespace moec::moe

#endif // MOEC_DIALECT_MOE_MOEAUTODIFF_H
