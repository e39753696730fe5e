//===- RouterUtils.h - rewrite moe.router ops -------------------*- C++ -*-===//
//
// A router's capacity C (slots per expert) is no attribute: it is dimension 3
// of its `dispatch` and `combine` result types, and the slot dimension of the
// moe.dispatch and moe.experts that follow. The shape rules (ShapeRules.h)
// compute it from the router's kind, `k` and `capacity_factor` and the token
// count. A pass that only sets a router's attributes (`setK`,
// `setCapacityFactor`, ...) leaves the old C in those types, and the verifier
// rejects the router. rebuildRouter changes the attributes and the types
// together.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_ROUTERUTILS_H
#define MOEC_DIALECT_MOE_ROUTERUTILS_H

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/ShapeRules.h"

namespace mlir {
class RewriterBase;
} // namespace mlir

namespace moec::moe {

/// The attributes of `router` that decide its shapes.
RouterConfig getRouterConfig(RouterOp router);

/// Replaces `router` by a router over the same input and weight with the
/// attributes of `config` (the kind included) and the result types the shape
/// rules give for them. The noise operand is kept if the new router takes
/// one (a token_choice router with noise_std) and dropped otherwise. When the
/// capacity changes, the ops whose types depend on it are retyped in place:
/// the moe.dispatch reading the new dispatch tensor and the moe.experts
/// reading its result; moe.combine and moe.routing_counts keep their types.
///
/// Fails after a diagnostic, changing nothing, if `config` is invalid for the
/// router (verifyRouterConfig) or if a value whose type changes has a user
/// whose types it cannot recompute (a function return, or anything else but
/// the ops above, such as the backward pass that moe-autodiff builds: change
/// routers before moe-autodiff). Returns the new router.
mlir::FailureOr<RouterOp> rebuildRouter(mlir::RewriterBase &rewriter,
                                        RouterOp router,
                                        const RouterConfig &config);

/// The router attributes of a fused MoE layer (moe.routed_ffn).
RouterConfig getRouterConfig(RoutedFFNOp layer);

/// Sets the router attributes of a fused layer and its capacity, in place:
/// its result types do not depend on them. Fails after a diagnostic,
/// changing nothing, if `config` is invalid for the layer, changes its kind
/// or would drop or add the noise operand. (The training step's fused op,
/// moe.routed_ffn_train, sizes the backward pass's row list from k and the
/// capacity: change layers before moe-autodiff.)
mlir::LogicalResult setRouterConfig(mlir::RewriterBase &rewriter,
                                    RoutedFFNOp layer,
                                    const RouterConfig &config);

} // namespace moec::moe

#endif // MOEC_DIALECT_MOE_ROUTERUTILS_H
