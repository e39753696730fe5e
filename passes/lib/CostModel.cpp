//===- CostModel.cpp - FLOP and parameter counts of moe ops ---------------===//
//
// moe ops are counted by their CostOpInterface models (passes/lib/Ops/);
// linalg ops, which moe-autodiff builds the backward pass and the update
// from, by their loop nest and body.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/CostModel.h"

#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Interfaces/CastInterfaces.h"

#include <algorithm>

using namespace mlir;
using namespace moec::moe;

namespace {
int64_t dim(Value v, int64_t i) {
  int64_t d = cast<RankedTensorType>(v.getType()).getDimSize(i);
  return ShapedType::isDynamic(d) ? 0 : d;
}
/// A structured op's FLOPs: its loop nest's iterations times the float
/// arithmetic of its body (constants, selects and casts are free; a
/// multiply-add counts 2). Zero with a dynamic loop range.
int64_t linalgFlops(linalg::LinalgOp op) {
  int64_t perIteration = 0;
  for (Operation &inner : op.getBlock()->without_terminator()) {
    if (!isa<arith::ArithDialect, math::MathDialect>(inner.getDialect()) ||
        isa<arith::ConstantOp, arith::SelectOp, CastOpInterface>(inner))
      continue;
    if (llvm::any_of(inner.getResultTypes(),
                     [](Type t) { return isa<FloatType>(t); }))
      ++perIteration;
  }
  if (perIteration == 0)
    return 0;
  int64_t iterations = 1;
  for (int64_t range : op.getStaticLoopRanges()) {
    if (ShapedType::isDynamic(range))
      return 0;
    iterations *= range;
  }
  return iterations * perIteration;
}
} // namespace

int64_t moec::moe::estimateFlops(Operation *op) {
  if (auto costed = dyn_cast<CostOpInterface>(op))
    return costed.estimateFlops();
  if (auto linalgOp = dyn_cast<linalg::LinalgOp>(op))
    return linalgFlops(linalgOp);
  return 0;
}

double moec::moe::expectedExpertsPerToken(RouterOp router) {
  std::optional<uint64_t> k;
  if (auto rk = router.getK())
    k = *rk;
  return expectedExpertsPerToken(k, router.getNumExperts(),
                                 router.getCapacity(), dim(router.getInput(), 1));
}

double moec::moe::expectedExpertsPerToken(std::optional<uint64_t> k,
                                          int64_t numExperts, int64_t capacity,
                                          int64_t tokens) {
  if (k)
    return static_cast<double>(*k);
  if (tokens == 0)
    return static_cast<double>(numExperts);
  return std::min<double>(numExperts,
                          static_cast<double>(numExperts * capacity) / tokens);
}
