//===- OpModels.h - the moe ops' kernel and cost models ---------*- C++ -*-===//
//
// The moe dialect declares ImageKernelOpInterface and CostOpInterface; the
// passes library implements them for every op as external models grouped
// by op family (passes/lib/Ops/), the way Linalg attaches TilingInterface.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_PASSES_OPMODELS_H
#define MOEC_PASSES_OPMODELS_H

namespace mlir {
class DialectRegistry;
class RewritePatternSet;
} // namespace mlir

namespace moec {

/// Inserts the moe dialect into `registry` with an extension that attaches
/// the kernel and cost models to its ops when it is loaded. The extension
/// checks that every moe op got what it needs (a cost model, and a kernel
/// lowering unless moe-decompose-losses rewrites it) and stops with a fatal
/// error naming the op otherwise. The passes that need the models
/// (moe-annotate-costs, moe-lower-to-kernels) register them as dependent
/// dialects, so tools need not call this themselves.
void registerMoEOpModels(mlir::DialectRegistry &registry);

/// The rewrites of moe-decompose-losses: one pattern per loss or metric op
/// (softmax_cross_entropy, aux_loss, sum_losses, classification_metrics,
/// routing_counts) into whole-batch linalg.
void populateDecomposeLossPatterns(mlir::RewritePatternSet &patterns);

} // namespace moec

#endif // MOEC_PASSES_OPMODELS_H
