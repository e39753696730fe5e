//===- MoEInterfaces.h - moe dialect interfaces -----------------*- C++ -*-===//
//
// DifferentiableOpInterface (generated from MoEInterfaces.td).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEINTERFACES_H
#define MOEC_DIALECT_MOE_MOEINTERFACES_H

#include "mlir/IR/Builders.h"
#include "mlir/IR/OpDefinition.h"

#include "moec/Dialect/MoE/MoEInterfaces.h.inc"

#endif // MOEC_DIALECT_MOE_MOEINTERFACES_H
