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

/// The routers' ranking rule, written once for the forward kernels
/// (passes/lib/Ops/RoutingOps.cpp), the aux losses and the VJPs: entry j
/// beats entry i when x_j > x_i, or x_j == x_i and j < i (ties go to the
/// lower index). An i1 for scalar scores and their indices.
mlir::Value buildBeats(mlir::OpBuilder &b, mlir::Location loc,
                       mlir::Value otherVal, mlir::Value mineVal,
                       mlir::Value otherIdx, mlir::Value mineIdx);

/// rank[.., i, ..] = #{j : j beats i} along dimension `dim` of the f32
/// tensor `scores`: 0 for the best entry. A linalg.generic over the
/// dimensions of `scores` plus j, reduced innermost.
mlir::Value buildRank(mlir::OpBuilder &b, mlir::Location loc,
                      mlir::Value scores, unsigned dim);

/// Whole-batch linalg for an aux loss: the per-group loss [G] (unweighted)
/// and, with `wantGrad`, d(sum_g loss_g) / d logits. `operands` are the
/// op's operands or their replacements.
std::pair<mlir::Value, mlir::Value> buildAuxLoss(mlir::OpBuilder &b, AuxLossOp op,
                                                 mlir::ValueRange operands,
                                                 bool wantGrad);

/// The router's input and weight gradients from d loss / d logits `dl`
/// ([G, R, E*P]): the product x * w for every kind but per-image routing,
/// where the logits come from the mean token (or, with `classToken`, from
/// token 0). Shared by moe.router's and moe.routed_ffn's VJPs.
std::pair<mlir::Value, mlir::Value>
buildRouterInputGrads(mlir::OpBuilder &b, mlir::Location loc, RouterKind kind,
                      mlir::Value x, mlir::Value w, mlir::Value dl,
                      bool classToken = false);

/// moe.l2_normalize's forward as whole-batch linalg: scale * x /
/// sqrt(sum_dim x^2 + eps) (`scale` [1] may be null: 1).
mlir::Value buildL2Normalize(mlir::OpBuilder &b, mlir::Location loc,
                             mlir::Value x, mlir::Value scale, int64_t dim,
                             double eps);

} // namespace moec::moe

#endif // MOEC_DIALECT_MOE_MOEAUTODIFF_H
