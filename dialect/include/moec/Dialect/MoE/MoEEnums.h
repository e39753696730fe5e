//===- MoEEnums.h - moe dialect enums ---------------------------*- C++ -*-===//

#ifndef MOEC_DIALECT_MOE_MOEENUMS_H
#define MOEC_DIALECT_MOE_MOEENUMS_H

#include "mlir/IR/Attributes.h"
#include "mlir/IR/BuiltinAttributes.h"
#include "mlir/IR/DialectImplementation.h"

#include "moec/Dialect/MoE/MoEEnums.h.inc"

#endif // MOEC_DIALECT_MOE_MOEENUMS_H
