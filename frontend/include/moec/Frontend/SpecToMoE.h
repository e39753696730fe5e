//===- SpecToMoE.h - build a moe module from a spec -------------*- C++ -*-===//
//
// Turns a validated model spec into a moe module with these functions
// (docs/training-abi.md has their inputs and outputs):
//   @infer(images) -> logits                  eval capacity, no router noise
//   @train_forward(images, labels, noise...) -> (loss, ce_loss, aux_loss,
//                  correct, logits)           train capacity and noise
//   @eval(images, labels, mask) -> (loss_sum, correct, routing counts...)
//   @analyze(images, labels, mask) -> (loss_sum, correct, per-image routing
//                  statistics of every MoE layer...)
// Every op carries a location naming its role and pointing into the spec.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_FRONTEND_SPECTOMOE_H
#define MOEC_FRONTEND_SPECTOMOE_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"

#include "moec/Frontend/Spec.h"

namespace mlir {
class MLIRContext;
} // namespace mlir

namespace moec {

struct SpecToMoEOptions {
  /// Images per call of the entry functions; 0 means the spec's
  /// /train/batch.
  int64_t batch = 0;
};

/// Builds and verifies the module. The context must have the moe, func and
/// tensor dialects loaded (registerMoECompilerDialects does). Returns null
/// after emitting a diagnostic if verification fails.
mlir::OwningOpRef<mlir::ModuleOp>
buildMoEModule(mlir::MLIRContext &context, const spec::Spec &spec,
               const SpecToMoEOptions &options = {});

} // namespace moec

#endif // MOEC_FRONTEND_SPECTOMOE_H
