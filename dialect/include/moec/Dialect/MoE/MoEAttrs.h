//===- MoEAttrs.h - moe dialect attributes ----------------------*- C++ -*-===//
//
// #moe.optimizer and #moe.parallelism (generated from MoEDialect.td).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEATTRS_H
#define MOEC_DIALECT_MOE_MOEATTRS_H

#include "moec/Dialect/MoE/MoEEnums.h"

#include "mlir/IR/Attributes.h"
#include "mlir/IR/BuiltinAttributes.h"

#define GET_ATTRDEF_CLASSES
#include "moec/Dialect/MoE/MoEAttrs.h.inc"

#endif // MOEC_DIALECT_MOE_MOEATTRS_H
