//===- MoEDialect.h - moe dialect -------------------------------*- C++ -*-===//
//
// The moe dialect: tensor-level ops for vision Mixture-of-Experts models.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_MOE_MOEDIALECT_H
#define MOEC_DIALECT_MOE_MOEDIALECT_H

#include "mlir/IR/Dialect.h"

#include "moec/Dialect/MoE/MoEAttrs.h"

#include "moec/Dialect/MoE/MoEDialect.h.inc"

#endif // MOEC_DIALECT_MOE_MOEDIALECT_H
