//===- MoEInterfaces.h - moe dialect interfaces -----------------*- C++ -*-===//
//
// DifferentiableOpInterface, ImageKernelOpInterface and CostOpInterface
// (generated from MoEInterfaces.td).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEINTERFACES_H
#define MOEC_DIALECT_MOE_MOEINTERFACES_H

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpDefinition.h"

namespace moec::moe {
/// How moe-lower-to-kernels lowers one op, decided from its neighbours
/// before the op is outlined (see passes/lib/Ops/KernelSupport.h).
struct ImageKernelOptions {
  /// Dispatch/combine: the routing tensor comes from a router whose
  /// dispatch and combine are one-hot per slot (every kind but soft MoE),
  /// so the kernel gathers rows instead of contracting over tokens.
  bool oneHotRouting = false;
  /// Experts: only the filled slots [0, n_e) of every expert are computed;
  /// the kernel gets the router's dispatch tensor as an extra input.
  bool filledSlotsOnly = false;
  /// The kernel's parallel steps are images (the default: the runtime may
  /// run any range of a batch's images, e.g. in chunks), or, when false,
  /// exactly the extent of the first result's image dimension (the experts
  /// of moe.routed_ffn_weight_grad): a "fixed" kernel.
  bool overImages = true;
};
} // namespace moec::moe

#include "moec/Dialect/MoE/MoEInterfaces.h.inc"

#endif // MOEC_DIALECT_MOE_MOEINTERFACES_H
