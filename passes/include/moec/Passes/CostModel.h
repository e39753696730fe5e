//===- CostModel.h - FLOP and parameter counts of moe ops -------*- C++ -*-===//
//
// The cost model the compiler reports (moe-annotate-costs, later the
// artifact manifest): FLOPs of one moe or linalg op with a multiply-add
// counted as 2, and the expected experts per token of a MoE layer.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_COSTMODEL_H
#define MOEC_PASSES_COSTMODEL_H

#include <cstdint>
#include <optional>

namespace mlir {
class Operation;
} // namespace mlir

namespace moec::moe {
class RouterOp;

/// FLOPs of one execution of `op`: a moe op by its CostOpInterface model
/// (none is attached unless moec::registerMoEOpModels ran), a linalg op
/// (what moe-autodiff builds the backward pass and optimizer from) as its
/// iterations times its body's float arithmetic; 0 for anything else.
int64_t estimateFlops(mlir::Operation *op);

/// Expected experts one token is processed by under `router`: k for
/// token-choice, Sinkhorn and per-image routers; E * C / S (capped at E) for
/// expert-choice and soft routers.
double expectedExpertsPerToken(RouterOp router);
/// The same from a router's k (absent for expert choice), E, C and S.
double expectedExpertsPerToken(std::optional<uint64_t> k, int64_t numExperts,
                               int64_t capacity, int64_t tokens);

} // namespace moec::moe

#endif // MOEC_PASSES_COSTMODEL_H
