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
};
} // namespace moec::moe

#include "moec/Dialect/MoE/MoEInterfaces.h.inc"

#endif // MOEC_DIALECT_MOE_MOEINTERFACES_H
