//===- Passes.h - moec passes -----------------------------------*- C++ -*-===//

#ifndef MOEC_PASSES_PASSES_H
#define MOEC_PASSES_PASSES_H

#include "mlir/Pass/Pass.h"

namespace moec {

#define GEN_PASS_DECL
#include "moec/Passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "moec/Passes/Passes.h.inc"

} // namespace moec

#endif // MOEC_PASSES_PASSES_H
