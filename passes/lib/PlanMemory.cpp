//===- PlanMemory.cpp - moe-plan-memory -----------------------------------===//
//
// Offsets for the plan's buffers: parameters in the parameter block, every
// other tensor in one arena with liveness-based reuse.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/MemoryPlan.h"
#include "moec/Passes/Passes.h"

#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringMap.h"

#include <algorithm>

namespace moec {
#define GEN_PASS_DEF_PLANMEMORYPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;

int64_t moec::alignBytes(int64_t bytes) {
  return (bytes + kBufferAlignment - 1) / kBufferAlignment * kBufferAlignment;
}

int64_t moec::assignArenaOffsets(MutableArrayRef<ArenaBuffer> buffers) {
  SmallVector<ArenaBuffer *> order;
  for (ArenaBuffer &buf : buffers)
    order.push_back(&buf);
  // Largest first; ties by first use, then by position, for a stable plan.
  llvm::sort(order, [](const ArenaBuffer *a, const ArenaBuffer *b) {
    if (a->bytes != b->bytes)
      return a->bytes > b->bytes;
    if (a->firstUse != b->firstUse)
      return a->firstUse < b->firstUse;
    return a < b; // buffers live in one array: its order
  });
  SmallVector<ArenaBuffer *> placed;
  int64_t peak = 0;
  for (ArenaBuffer *buf : order) {
    SmallVector<std::pair<int64_t, int64_t>> taken;
    for (ArenaBuffer *other : placed)
      if (other->firstUse <= buf->lastUse && buf->firstUse <= other->lastUse)
        taken.push_back({other->offset, other->offset + alignBytes(other->bytes)});
    llvm::sort(taken);
    int64_t offset = 0;
    for (auto [lo, hi] : taken) {
      if (offset + alignBytes(buf->bytes) <= lo)
        break;
      offset = std::max(offset, hi);
    }
    buf->offset = offset;
    peak = std::max(peak, offset + alignBytes(buf->bytes));
    placed.push_back(buf);
  }
  return peak;
}

namespace {
int64_t tensorBytes(Type t) {
  auto rt = cast<RankedTensorType>(t);
  return rt.getNumElements() * rt.getElementTypeBitWidth() / 8;
}

struct PlanMemoryPass
    : public moec::impl::PlanMemoryPassBase<PlanMemoryPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto fn = module.lookupSymbol<func::FuncOp>(entry);
    if (!fn) {
      module.emitError() << "no plan function '" << entry << "'";
      return signalPassFailure();
    }
    Builder b(module.getContext());

    // Parameters, in declaration order; a name read twice shares a slot.
    llvm::StringMap<int64_t> paramOffsets;
    int64_t paramBytes = 0;
    // Optimizer state (`moe.state`) goes after every parameter, so the
    // parameters have the same offsets in every entry point.
    for (bool state : {false, true})
      fn.walk([&](moe::ParamOp p) {
        if (p->hasAttr(moec::moe::MoEDialect::StateAttrHelper::getNameStr()) !=
            state)
          return;
        auto [it, inserted] = paramOffsets.try_emplace(p.getName(), paramBytes);
        if (inserted)
          paramBytes += alignBytes(tensorBytes(p.getType()));
        p->setAttr(moec::moe::MoEDialect::ParamOffsetAttrHelper::getNameStr(),
                   b.getI64IntegerAttr(it->second));
      });

    // Arena buffers: the entry's arguments and every call destination. A
    // call's results live in its destinations.
    SmallVector<ArenaBuffer> buffers;
    DenseMap<Value, unsigned> bufferOf;
    for (BlockArgument arg : fn.getArguments()) {
      bufferOf[arg] = buffers.size();
      buffers.push_back({tensorBytes(arg.getType()), 0, 0, 0});
    }
    SmallVector<func::CallOp> calls;
    for (Operation &op : fn.getBody().front()) {
      // Reshapes of contiguous tensors are views of their source's buffer.
      if (isa<tensor::CollapseShapeOp, tensor::ExpandShapeOp>(op)) {
        if (auto it = bufferOf.find(op.getOperand(0)); it != bufferOf.end())
          bufferOf[op.getResult(0)] = it->second;
        continue;
      }
      auto call = dyn_cast<func::CallOp>(op);
      if (!call)
        continue;
      int64_t step = calls.size();
      calls.push_back(call);
      unsigned numDests = call.getNumResults();
      unsigned firstDest = call.getNumOperands() - 2 - numDests;
      for (auto [i, operand] : llvm::enumerate(call.getOperands())) {
        if (i >= firstDest && i < firstDest + numDests)
          continue;
        auto it = bufferOf.find(operand);
        if (it != bufferOf.end())
          buffers[it->second].lastUse = step;
      }
      for (unsigned r = 0; r < numDests; ++r) {
        Value dest = call.getOperand(firstDest + r);
        // Updates write parameters and optimizer state in place.
        if (dest.getDefiningOp<moe::ParamOp>())
          continue;
        if (!dest.getDefiningOp<tensor::EmptyOp>()) {
          call.emitOpError() << "expects a tensor.empty destination for "
                                "result #"
                             << r;
          return signalPassFailure();
        }
        unsigned id = buffers.size();
        buffers.push_back({tensorBytes(dest.getType()), step, step, 0});
        bufferOf[dest] = id;
        bufferOf[call.getResult(r)] = id;
      }
    }
    // Returned values stay live to the end.
    int64_t end = calls.size();
    for (Value v : fn.getBody().front().getTerminator()->getOperands())
      if (auto it = bufferOf.find(v); it != bufferOf.end())
        buffers[it->second].lastUse = end;

    int64_t arenaBytes = assignArenaOffsets(buffers);

    for (BlockArgument arg : fn.getArguments())
      fn.setArgAttr(arg.getArgNumber(),
                    moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr(),
                    b.getI64IntegerAttr(buffers[bufferOf[arg]].offset));
    for (auto call : calls) {
      unsigned numDests = call.getNumResults();
      unsigned firstDest = call.getNumOperands() - 2 - numDests;
      for (unsigned r = 0; r < numDests; ++r)
        if (call.getOperand(firstDest + r).getDefiningOp<tensor::EmptyOp>())
          call.getOperand(firstDest + r)
              .getDefiningOp()
              ->setAttr(
                  moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(
                      buffers[bufferOf[call.getResult(r)]].offset));
    }
    for (auto [i, v] : llvm::enumerate(
             fn.getBody().front().getTerminator()->getOperands())) {
      auto it = bufferOf.find(v);
      if (it == bufferOf.end()) {
        fn.emitError() << "result #" << i << " is not computed by the plan";
        return signalPassFailure();
      }
      fn.setResultAttr(
          i, moec::moe::MoEDialect::ArenaOffsetAttrHelper::getNameStr(),
          b.getI64IntegerAttr(buffers[it->second].offset));
    }
    fn->setAttr(moec::moe::MoEDialect::ArenaBytesAttrHelper::getNameStr(),
                b.getI64IntegerAttr(arenaBytes));
    fn->setAttr(moec::moe::MoEDialect::ParamBytesAttrHelper::getNameStr(),
                b.getI64IntegerAttr(paramBytes));
  }
};
} // namespace
