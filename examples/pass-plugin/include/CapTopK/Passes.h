//===- Passes.h - moe-cap-top-k ---------------------------------*- C++ -*-===//

#ifndef CAPTOPK_PASSES_H
#define CAPTOPK_PASSES_H

#include "mlir/Pass/Pass.h"

namespace captopk {

#define GEN_PASS_DECL
#include "CapTopK/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "CapTopK/Passes.h.inc"

} // namespace captopk

#endif // CAPTOPK_PASSES_H
