//===- OpModels.cpp - attach and check the moe ops' models ----------------===//

#include "moec/Passes/OpModels.h"

#include "KernelSupport.h"

#include "moec/Dialect/MoE/MoEDialect.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/PatternMatch.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/ErrorHandling.h"

using namespace mlir;
using namespace moec::moe;

namespace {
/// Every moe op but moe.param has a cost model, and a kernel lowering
/// unless a moe-decompose-losses pattern rewrites it or it is moe.reshape,
/// a view that moe-lower-to-kernels lowers itself.
void checkOpModels(MLIRContext *ctx) {
  RewritePatternSet decompositions(ctx);
  moec::populateDecomposeLossPatterns(decompositions);
  llvm::StringSet<> decomposed;
  for (const auto &pattern : decompositions.getNativePatterns())
    if (std::optional<OperationName> root = pattern->getRootKind())
      decomposed.insert(root->getStringRef());
  for (RegisteredOperationName name : ctx->getRegisteredOperations()) {
    if (name.getDialectNamespace() != MoEDialect::getDialectNamespace() ||
        name.getStringRef() == ParamOp::getOperationName())
      continue;
    const char *missing = nullptr;
    if (!name.hasInterface<CostOpInterface>())
      missing = "cost model (CostOpInterface)";
    else if (!name.hasInterface<ImageKernelOpInterface>() &&
             !decomposed.contains(name.getStringRef()) &&
             name.getStringRef() != ReshapeOp::getOperationName())
      missing = "kernel lowering (ImageKernelOpInterface) and no "
                "moe-decompose-losses pattern";
    if (missing)
      llvm::report_fatal_error(llvm::Twine("moe op '") + name.getStringRef() +
                               "' has no " + missing +
                               "; add it to its family in passes/lib/Ops/ "
                               "(docs/adding-an-op.md)");
  }
}
} // namespace

void moec::registerMoEOpModels(DialectRegistry &registry) {
  registry.insert<MoEDialect>();
  registry.addExtension(+[](MLIRContext *ctx, MoEDialect *) {
    kernels::attachViTOpModels(ctx);
    kernels::attachAttentionOpModels(ctx);
    kernels::attachRoutingOpModels(ctx);
    kernels::attachExpertOpModels(ctx);
    kernels::attachRoutedOpModels(ctx);
    kernels::attachLossOpModels(ctx);
    checkOpModels(ctx);
  });
}
