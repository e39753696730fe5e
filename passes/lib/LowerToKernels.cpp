//===- LowerToKernels.cpp - moe-lower-to-kernels --------------------------===//
//
// Outlines every moe op of the entry function into a kernel that computes a
// range of images, through the op's ImageKernelOpInterface model
// (passes/lib/Ops/), and every whole-batch linalg op into a kernel over
// tiles of its outermost dimension. Each kernel body is
// linalg/tensor/arith/math on tensors in destination-passing style:
// one-shot bufferization then writes straight into the destination buffers
// the memory plan assigns.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/OpModels.h"
#include "moec/Passes/CostModel.h"
#include "moec/Passes/Passes.h"

#include "Ops/KernelSupport.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace moec {
#define GEN_PASS_DEF_LOWERTOKERNELSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
using namespace moec::moe;
using namespace moec::kernels;

namespace {
/// Slices image `g` out of `full` along `dim`, dropping that dimension.
Value sliceImage(OpBuilder &b, Location loc, Value full, int64_t dim,
                 Value g) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  SmallVector<int64_t> reduced;
  for (int64_t i = 0; i < type.getRank(); ++i) {
    sizes.push_back(b.getIndexAttr(i == dim ? 1 : type.getDimSize(i)));
    if (i != dim)
      reduced.push_back(type.getDimSize(i));
  }
  offsets[dim] = g;
  auto resultType = RankedTensorType::get(reduced, type.getElementType());
  return tensor::ExtractSliceOp::create(b, loc, resultType, full, offsets,
                                        sizes, strides);
}

Value insertImage(OpBuilder &b, Location loc, Value slice, Value full,
                  int64_t dim, Value g) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  for (int64_t i = 0; i < type.getRank(); ++i)
    sizes.push_back(b.getIndexAttr(i == dim ? 1 : type.getDimSize(i)));
  offsets[dim] = g;
  return tensor::InsertSliceOp::create(b, loc, slice, full, offsets, sizes,
                                       strides);
}

/// The outermost loop dimension splits a whole-batch linalg op into tiles
/// when it is parallel and every operand either indexes it as a plain
/// dimension or not at all: tiles then write disjoint output slices. Returns
/// for every operand the position of d0 in its map (-1: not indexed).
std::optional<SmallVector<int64_t>> splitPositions(linalg::LinalgOp op) {
  if (op.getNumLoops() == 0 ||
      op.getIteratorTypesArray()[0] != utils::IteratorType::parallel)
    return std::nullopt;
  SmallVector<int64_t> pos;
  for (OpOperand &operand : op->getOpOperands()) {
    AffineMap m = op.getMatchingIndexingMap(&operand);
    int64_t at = -1;
    for (auto [i, e] : llvm::enumerate(m.getResults())) {
      if (auto d = dyn_cast<AffineDimExpr>(e); d && d.getPosition() == 0) {
        if (at >= 0)
          return std::nullopt;
        at = i;
      } else if (e.isFunctionOfDim(0)) {
        return std::nullopt;
      }
    }
    if (at < 0 && op.isDpsInit(&operand))
      return std::nullopt;
    pos.push_back(at);
  }
  return pos;
}

Value sliceDim(OpBuilder &b, Location loc, Value full, int64_t dim,
               Value offset, int64_t size) {
  auto type = cast<RankedTensorType>(full.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  SmallVector<int64_t> shape(type.getShape());
  shape[dim] = size;
  for (int64_t s : shape)
    sizes.push_back(b.getIndexAttr(s));
  offsets[dim] = offset;
  return tensor::ExtractSliceOp::create(
      b, loc, RankedTensorType::get(shape, type.getElementType()), full, offsets,
      sizes, strides);
}

Value insertDim(OpBuilder &b, Location loc, Value slice, Value full,
                int64_t dim, Value offset) {
  auto type = cast<RankedTensorType>(slice.getType());
  SmallVector<OpFoldResult> offsets(type.getRank(), b.getIndexAttr(0));
  SmallVector<OpFoldResult> sizes, strides(type.getRank(), b.getIndexAttr(1));
  for (int64_t s : type.getShape())
    sizes.push_back(b.getIndexAttr(s));
  offsets[dim] = offset;
  return tensor::InsertSliceOp::create(b, loc, slice, full, offsets, sizes,
                                       strides);
}

linalg::FillOp fusableFill(Value init) {
  auto fill = init.getDefiningOp<linalg::FillOp>();
  if (!fill || !fill->hasOneUse() ||
      !fill.getOutputs()[0].getDefiningOp<tensor::EmptyOp>() ||
      !fill.getInputs()[0].getDefiningOp<arith::ConstantOp>())
    return {};
  return fill;
}

/// A broadcast (a generic that only copies its one input, read through a
/// projected permutation, into every element of a tensor.empty) whose only
/// use is `user`'s init, such as a bias broadcast over [experts, images,
/// slots, features] before the matmul that accumulates into it: the kernel
/// broadcasts into its own tile instead of copying in a whole-batch tensor
/// that another kernel wrote.
linalg::GenericOp fusableBroadcast(Value init) {
  auto op = init.getDefiningOp<linalg::GenericOp>();
  if (!op || !op->hasOneUse() || op.getNumDpsInputs() != 1 ||
      op.getNumDpsInits() != 1 || op.getNumReductionLoops() != 0 ||
      !isa<RankedTensorType>(op.getDpsInputs()[0].getType()) ||
      !op.getDpsInits()[0].getDefiningOp<tensor::EmptyOp>())
    return {};
  AffineMap in = op.getMatchingIndexingMap(op.getDpsInputOperand(0));
  AffineMap out = op.getMatchingIndexingMap(op.getDpsInitOperand(0));
  Block &body = op->getRegion(0).front();
  auto yield = dyn_cast<linalg::YieldOp>(body.getTerminator());
  if (!out.isIdentity() || !in.isProjectedPermutation() ||
      body.getOperations().size() != 1 || !yield ||
      yield->getOperand(0) != body.getArgument(0))
    return {};
  return op;
}

struct LowerToKernelsPass
    : public moec::impl::LowerToKernelsPassBase<LowerToKernelsPass> {
  using Base::Base;

  void getDependentDialects(DialectRegistry &registry) const override {
    Base::getDependentDialects(registry);
    registerMoEOpModels(registry);
  }

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto entryFn = module.lookupSymbol<func::FuncOp>(entry);
    if (!entryFn) {
      module.emitError() << "no entry function '" << entry << "'";
      return signalPassFailure();
    }
    // The plan keeps only the entry; other entry points are lowered in
    // their own compilation.
    for (auto fn : llvm::make_early_inc_range(module.getOps<func::FuncOp>()))
      if (fn != entryFn)
        fn.erase();

    int64_t batch = -1;
    for (Type t : entryFn.getArgumentTypes()) {
      auto rt = dyn_cast<RankedTensorType>(t);
      if (!rt || !rt.hasStaticShape() ||
          !(rt.getElementType().isF32() || rt.getElementType().isInteger(32))) {
        entryFn.emitError() << "expects statically shaped f32 or i32 tensor "
                               "arguments, got "
                            << t;
        return signalPassFailure();
      }
      if (batch < 0 && rt.getRank() > 0)
        batch = rt.getDimSize(0);
    }
    if (batch <= 0) {
      entryFn.emitError() << "expects an images argument";
      return signalPassFailure();
    }

    // moe.reshape (routing groups) is a view: a collapse to one dimension
    // and an expand to the result's shape, which the memory plan gives the
    // source's buffer.
    for (auto reshape :
         llvm::make_early_inc_range(entryFn.getOps<ReshapeOp>()))
      lowerReshape(reshape);

    // Work: moe compute ops (per-image kernels) and linalg ops (whole-batch
    // kernels), in program order. A fill or a broadcast that only
    // initializes one linalg op is done inside that op's kernel.
    SmallVector<Operation *> work;
    for (Operation &op : entryFn.getBody().front()) {
      if (isa<MoEDialect>(op.getDialect()) && !isa<ParamOp>(op))
        work.push_back(&op);
      if (isa<linalg::FillOp, linalg::GenericOp>(op) &&
          op.getNumResults() == 1 &&
          (fusableFill(op.getResult(0)) || fusableBroadcast(op.getResult(0)))) {
        OpOperand &use = *op.getUses().begin();
        auto lop = dyn_cast<linalg::LinalgOp>(use.getOwner());
        if (lop && lop.isDpsInit(&use))
          continue;
      }
      if (isa<linalg::LinalgOp>(op))
        work.push_back(&op);
    }

    // How each moe op is lowered depends on the routers it reads from:
    // decided before any of them is outlined.
    DenseMap<Operation *, ImageKernelOptions> kernelOptions;
    for (Operation *op : work)
      if (!isa<linalg::LinalgOp>(op))
        kernelOptions[op] = planImageKernel(op);

    // Consecutive whole-batch linalg ops split the same way share one
    // kernel (their tiles run back to back, in cache); moe ops get their
    // per-image kernels.
    OpBuilder b(module.getContext());
    unsigned index = 0;
    SmallVector<linalg::LinalgOp> group;
    SmallVector<Split> splits;
    auto flush = [&]() -> LogicalResult {
      if (group.empty())
        return success();
      LogicalResult done = outlineGroup(group, splits, index++, b);
      group.clear();
      splits.clear();
      return done;
    };
    for (Operation *op : work) {
      auto lop = dyn_cast<linalg::LinalgOp>(op);
      if (!lop) {
        if (failed(flush()) ||
            failed(outline(op, index++, kernelOptions.lookup(op), b)))
          return signalPassFailure();
        continue;
      }
      Split sp = splitOf(lop);
      // The kernel call replaces the group where its last op was: nothing
      // between its ops (a view, say) may use a result of the group.
      bool between = false;
      if (!group.empty())
        for (Operation *it = group.back()->getNextNode(); it && it != op;
             it = it->getNextNode())
          for (Value v : it->getOperands())
            if (auto r = dyn_cast<OpResult>(v))
              between |= llvm::is_contained(group, r.getOwner());
      if (!fuseKernels || between || !canJoin(group, splits, lop, sp))
        if (failed(flush()))
          return signalPassFailure();
      group.push_back(lop);
      splits.push_back(sp);
    }
    if (failed(flush()))
      return signalPassFailure();
    // What the kernels absorbed (fused fills, their constants and empties).
    SmallVector<Operation *> all;
    for (Operation &op : entryFn.getBody().front().without_terminator())
      all.push_back(&op);
    for (Operation *op : llvm::reverse(all))
      if (op->use_empty() && isMemoryEffectFree(op) && !isa<func::CallOp>(op))
        op->erase();
  }

  static void lowerReshape(ReshapeOp op) {
    OpBuilder b(op);
    Location loc = op.getLoc();
    Value v = op.getInput();
    auto in = cast<RankedTensorType>(v.getType());
    auto out = cast<RankedTensorType>(op.getType());
    auto all = [](int64_t rank) {
      ReassociationIndices dims;
      for (int64_t i = 0; i < rank; ++i)
        dims.push_back(i);
      return SmallVector<ReassociationIndices>{dims};
    };
    auto flat =
        RankedTensorType::get({in.getNumElements()}, in.getElementType());
    if (in.getRank() != 1)
      v = tensor::CollapseShapeOp::create(b, loc, flat, v, all(in.getRank()));
    if (out.getRank() != 1)
      v = tensor::ExpandShapeOp::create(b, loc, out, v, all(out.getRank()));
    op.replaceAllUsesWith(v);
    op.erase();
  }

  /// How a whole-batch linalg op is split: the position of loop dimension
  /// 0 in every operand's map (-1: not indexed), its extent and tile size.
  struct Split {
    std::optional<SmallVector<int64_t>> pos;
    int64_t extent = 1, tile = 1;
    int64_t tiles() const { return extent / tile; }
  };
  static Split splitOf(linalg::LinalgOp op) {
    Split sp;
    sp.pos = splitPositions(op);
    if (!sp.pos)
      return sp;
    sp.extent = op.getStaticLoopRanges()[0];
    sp.tile = batchTileSize(sp.extent);
    return sp;
  }

  /// Whether `op` can join the kernel of `group`: both split the same way,
  /// and every value it reads from the group is read at the tile the group
  /// wrote (loop dimension 0 at the same position), so a tile of the fused
  /// kernel computes `op`'s tile right after its producers', in cache.
  static bool canJoin(ArrayRef<linalg::LinalgOp> group,
                      ArrayRef<Split> splits, linalg::LinalgOp op,
                      const Split &sp) {
    if (group.empty() || !sp.pos || !splits.front().pos ||
        sp.extent != splits.front().extent || sp.tile != splits.front().tile ||
        sp.tiles() == 1)
      return false;
    for (OpOperand &operand : op->getOpOperands()) {
      // A broadcast done in the kernel reads its input whole-batch.
      if (linalg::GenericOp bcast = fusableBroadcast(operand.get()))
        if (auto in = dyn_cast<OpResult>(bcast.getDpsInputs()[0]);
            in && llvm::is_contained(group, in.getOwner()))
          return false;
      auto res = dyn_cast<OpResult>(operand.get());
      if (!res)
        continue;
      auto it = llvm::find(group, res.getOwner());
      if (it == group.end())
        continue;
      if (op.isDpsInit(&operand))
        return false;
      const Split &producer = splits[it - group.begin()];
      unsigned producerOperand =
          cast<linalg::LinalgOp>(res.getOwner()).getNumDpsInputs() +
          res.getResultNumber();
      if ((*producer.pos)[producerOperand] !=
              (*sp.pos)[operand.getOperandNumber()] ||
          (*sp.pos)[operand.getOperandNumber()] < 0)
        return false;
    }
    return true;
  }

  /// Outlines a group of whole-batch linalg ops into one kernel over tiles
  /// of their outermost loop dimension ("fixed" parallelism); one op that
  /// cannot be split runs as a single tile. Every result is a destination.
  LogicalResult outlineGroup(ArrayRef<linalg::LinalgOp> group,
                             ArrayRef<Split> splits, unsigned index,
                             OpBuilder &b) {
    ModuleOp module = getOperation();
    linalg::LinalgOp first = group.front();
    Location loc = first->getLoc();
    enum class InitKind { Fresh, Fill, Broadcast, InPlace, CopyIn };
    DenseSet<Operation *> members;
    for (linalg::LinalgOp op : group)
      members.insert(op);

    // External tensor operands (deduplicated), scalar constants, and per
    // result its init kind.
    SmallVector<Value> operands;
    DenseMap<Value, unsigned> operandIndex;
    SmallVector<Operation *> scalarConstants;
    auto addOperand = [&](Value v) {
      auto [it, inserted] = operandIndex.try_emplace(v, operands.size());
      if (inserted)
        operands.push_back(v);
      return it->second;
    };
    SmallVector<InitKind> initKinds;
    SmallVector<Value> results, inits;
    for (linalg::LinalgOp op : group) {
      for (Value in : op.getDpsInputs()) {
        if (auto r = dyn_cast<OpResult>(in); r && members.contains(r.getOwner()))
          continue;
        if (isa<RankedTensorType>(in.getType())) {
          addOperand(in);
          continue;
        }
        Operation *def = in.getDefiningOp();
        if (!def || !def->hasTrait<OpTrait::ConstantLike>())
          return op->emitOpError() << "kernel lowering expects scalar inputs "
                                      "to be constants";
        scalarConstants.push_back(def);
      }
      for (Value init : op.getDpsInits()) {
        inits.push_back(init);
        if (fusableFill(init)) {
          initKinds.push_back(InitKind::Fill);
        } else if (linalg::GenericOp bcast = fusableBroadcast(init)) {
          initKinds.push_back(InitKind::Broadcast);
          addOperand(bcast.getDpsInputs()[0]);
        } else if (init.getDefiningOp<ParamOp>()) {
          initKinds.push_back(InitKind::InPlace);
        } else if (init.getDefiningOp<tensor::EmptyOp>()) {
          initKinds.push_back(InitKind::Fresh);
        } else {
          initKinds.push_back(InitKind::CopyIn);
          addOperand(init);
        }
      }
      llvm::append_range(results, op->getResults());
    }
    unsigned numOperands = operands.size(), numResults = results.size();
    int64_t tile = splits.front().tile, tiles = splits.front().tiles();

    SmallVector<Type> argTypes(ValueRange(operands).getTypes());
    llvm::append_range(argTypes, ValueRange(results).getTypes());
    argTypes.append({b.getIndexType(), b.getIndexType()});
    std::string name = kernelPrefix + std::to_string(index);
    b.setInsertionPointToEnd(module.getBody());
    auto kernel = func::FuncOp::create(
        b, loc, name,
        b.getFunctionType(argTypes, ValueRange(results).getTypes()));
    kernel->setAttr(MoEDialect::KernelAttrHelper::getNameStr(),
                    b.getUnitAttr());
    Block *body = kernel.addEntryBlock();
    b.setInsertionPointToStart(body);
    ValueRange args = body->getArguments();
    Value begin = args[numOperands + numResults];
    Value end = args[numOperands + numResults + 1];
    Value one = arith::ConstantIndexOp::create(b, loc, 1);
    SmallVector<Value> dests(args.slice(numOperands, numResults));

    auto loop = scf::ForOp::create(
        b, loc, begin, end, one, dests,
        [&](OpBuilder &lb, Location ll, Value t, ValueRange acc) {
          Value offset = arith::MulIOp::create(
              lb, ll, t, arith::ConstantIndexOp::create(lb, ll, tile));
          IRMapping mapping;
          for (Operation *c : scalarConstants)
            if (!mapping.contains(c->getResult(0)))
              mapping.map(c->getResult(0), lb.clone(*c)->getResult(0));
          SmallVector<Value> tileResults;
          unsigned resultBase = 0;
          for (auto [groupOp, groupSplit] : llvm::zip(group, splits)) {
            linalg::LinalgOp op = groupOp;
            const Split &sp = groupSplit;
            auto piece = [&](Value full, unsigned operandNumber) -> Value {
              if (!sp.pos || (*sp.pos)[operandNumber] < 0)
                return full;
              return sliceDim(lb, ll, full, (*sp.pos)[operandNumber], offset,
                              tile);
            };
            unsigned numInputs = op.getNumDpsInputs();
            for (unsigned i = 0; i < numInputs; ++i) {
              Value in = op->getOperand(i);
              if (!isa<RankedTensorType>(in.getType()))
                continue;
              auto r = dyn_cast<OpResult>(in);
              if (r && members.contains(r.getOwner()))
                continue; // mapped to the producer's tile result already
              mapping.map(in, piece(args[operandIndex.lookup(in)], i));
            }
            SmallVector<Value> tileDests;
            for (unsigned r = 0; r < op->getNumResults(); ++r) {
              unsigned g = resultBase + r, operandNumber = numInputs + r;
              Value d = piece(acc[g], operandNumber);
              tileDests.push_back(d);
              Value init = inits[g];
              switch (initKinds[g]) {
              case InitKind::Fill: {
                auto fill = init.getDefiningOp<linalg::FillOp>();
                Operation *c = lb.clone(*fill.getInputs()[0].getDefiningOp());
                d = linalg::FillOp::create(lb, ll, c->getResult(0), d)
                        .getResult(0);
                break;
              }
              case InitKind::Broadcast: {
                // The input is sliced where it reads the split dimension
                // (the output map is the identity, so the tile's loop
                // dimension is its position in the init).
                auto bcast = fusableBroadcast(init);
                Value in = bcast.getDpsInputs()[0];
                Value piece = args[operandIndex.lookup(in)];
                int64_t at = sp.pos ? (*sp.pos)[operandNumber] : -1;
                AffineMap inMap =
                    bcast.getMatchingIndexingMap(bcast.getDpsInputOperand(0));
                if (at >= 0)
                  if (std::optional<unsigned> q = inMap.getResultPosition(
                          lb.getAffineDimExpr(at)))
                    piece = sliceDim(lb, ll, piece, *q, offset, tile);
                IRMapping bm;
                bm.map(in, piece);
                bm.map(bcast.getDpsInits()[0], d);
                Operation *c = lb.clone(*bcast, bm);
                c->getResult(0).setType(d.getType());
                d = c->getResult(0);
                break;
              }
              case InitKind::CopyIn:
                d = linalg::CopyOp::create(
                        lb, ll, piece(args[operandIndex.lookup(init)], operandNumber), d)
                        .getResult(0);
                break;
              default:
                break;
              }
              mapping.map(init, d);
            }
            Operation *tiled = lb.clone(*op, mapping);
            for (unsigned r = 0; r < op->getNumResults(); ++r) {
              tiled->getResult(r).setType(tileDests[r].getType());
              mapping.map(op->getResult(r), tiled->getResult(r));
              unsigned operandNumber = numInputs + r;
              tileResults.push_back(
                  !sp.pos ? tiled->getResult(r)
                          : insertDim(lb, ll, tiled->getResult(r),
                                      acc[resultBase + r],
                                      (*sp.pos)[operandNumber], offset));
            }
            resultBase += op->getNumResults();
          }
          scf::YieldOp::create(lb, ll, tileResults);
        });
    func::ReturnOp::create(b, loc, loop.getResults());

    b.setInsertionPoint(group.back());
    SmallVector<Value> callArgs(operands);
    for (auto [g, result] : llvm::enumerate(results)) {
      if (initKinds[g] == InitKind::InPlace) {
        callArgs.push_back(inits[g]);
        continue;
      }
      auto rt = cast<RankedTensorType>(result.getType());
      callArgs.push_back(
          tensor::EmptyOp::create(b, loc, rt.getShape(), rt.getElementType()));
    }
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, 0));
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, tiles));
    auto call = func::CallOp::create(b, loc, kernel, callArgs);
    call->setAttr(MoEDialect::OpAttrHelper::getNameStr(),
                  b.getStringAttr(first->getName().getStringRef()));
    std::string role;
    if (auto nameLoc = dyn_cast<NameLoc>(loc))
      role = nameLoc.getName().str();
    if (auto n = first->getAttrOfType<StringAttr>(
            MoEDialect::NameAttrHelper::getNameStr()))
      role = n.str();
    call->setAttr(MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr(role));
    MoEDialect::ParallelAttrHelper(b.getContext())
        .setAttr(call, KernelParallelismAttr::get(b.getContext(),
                                                  KernelParallelism::Fixed));
    call->setAttr(MoEDialect::TilesAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(tiles));
    if (group.size() > 1)
      call->setAttr(MoEDialect::FusedAttrHelper::getNameStr(),
                    b.getI64IntegerAttr(group.size()));
    int64_t groupFlops = 0;
    for (linalg::LinalgOp op : group)
      groupFlops += estimateFlops(op);
    call->setAttr(MoEDialect::FlopsAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(groupFlops));
    for (auto [g, result] : llvm::enumerate(results))
      result.replaceAllUsesWith(call.getResult(g));
    for (linalg::LinalgOp op : llvm::reverse(group))
      op->erase();
    return success();
  }

  LogicalResult outline(Operation *op, unsigned index,
                        const ImageKernelOptions &options, OpBuilder &b) {
    ModuleOp module = getOperation();
    Location loc = op->getLoc();
    auto kernelOp = dyn_cast<ImageKernelOpInterface>(op);
    if (!kernelOp)
      return op->emitOpError()
             << "has no per-image kernel lowering (ImageKernelOpInterface); "
                "losses and metrics need moe-decompose-losses first";
    for (Type t : llvm::concat<Type>(op->getOperandTypes(),
                                     op->getResultTypes())) {
      auto rt = dyn_cast<RankedTensorType>(t);
      if (!rt || !rt.hasStaticShape() || !rt.getElementType().isF32())
        return op->emitOpError() << "kernel lowering expects statically "
                                    "shaped f32 tensors, got "
                                 << t;
    }

    // Operands: the op's, plus for filled-slot experts the routing tensor
    // (operand 1 of the dispatch kernel call that produced the slots).
    SmallVector<Value> operands(op->getOperands());
    if (options.filledSlotsOnly) {
      auto dispatchCall = op->getOperand(0).getDefiningOp<func::CallOp>();
      operands.push_back(dispatchCall.getOperand(1));
    }
    // Kernel signature: operands, destinations, begin, end.
    SmallVector<Type> argTypes(ValueRange(operands).getTypes());
    llvm::append_range(argTypes, op->getResultTypes());
    argTypes.append({b.getIndexType(), b.getIndexType()});
    std::string name = kernelPrefix + std::to_string(index);
    b.setInsertionPointToEnd(module.getBody());
    auto kernel = func::FuncOp::create(
        b, loc, name, b.getFunctionType(argTypes, op->getResultTypes()));
    kernel->setAttr(MoEDialect::KernelAttrHelper::getNameStr(),
                    b.getUnitAttr());
    Block *body = kernel.addEntryBlock();
    b.setInsertionPointToStart(body);

    unsigned numOperands = operands.size();
    unsigned numResults = op->getNumResults();
    ValueRange args = body->getArguments();
    Value begin = args[numOperands + numResults];
    Value end = args[numOperands + numResults + 1];
    Value step = arith::ConstantIndexOp::create(b, loc, 1);
    SmallVector<Value> dests(args.slice(numOperands, numResults));

    LogicalResult status = success();
    auto loop = scf::ForOp::create(
        b, loc, begin, end, step, dests,
        [&](OpBuilder &lb, Location ll, Value g, ValueRange acc) {
          SmallVector<Value> ins, imageDests;
          for (auto [i, operand] : llvm::enumerate(operands)) {
            // The routing tensor [G, S, E, C] is per image along dim 0.
            int64_t dim =
                i >= op->getNumOperands()
                    ? 0
                    : kernelOp.getImageDim(operand, /*isResult=*/false);
            ins.push_back(dim < 0 ? args[i]
                                  : sliceImage(lb, ll, args[i], dim, g));
          }
          for (auto [i, result] : llvm::enumerate(op->getResults()))
            imageDests.push_back(sliceImage(
                lb, ll, acc[i], kernelOp.getImageDim(result, true), g));
          FailureOr<SmallVector<Value>> images =
              kernelOp.buildImageKernel(lb, ll, ins, imageDests, options);
          SmallVector<Value> yielded;
          if (failed(images)) {
            status = failure();
            yielded.assign(acc.begin(), acc.end());
          } else {
            for (auto [i, result] : llvm::enumerate(op->getResults()))
              yielded.push_back(insertImage(lb, ll, (*images)[i], acc[i],
                                            kernelOp.getImageDim(result, true),
                                            g));
          }
          scf::YieldOp::create(lb, ll, yielded);
        });
    func::ReturnOp::create(b, loc, loop.getResults());
    if (failed(status))
      return failure();

    // The plan: a call writing into fresh destinations.
    b.setInsertionPoint(op);
    SmallVector<Value> callArgs(operands);
    for (Type t : op->getResultTypes()) {
      auto rt = cast<RankedTensorType>(t);
      callArgs.push_back(
          tensor::EmptyOp::create(b, loc, rt.getShape(), rt.getElementType()));
    }
    // The kernel's range is its first result's extent along the image
    // dimension: the images, run over any range of them ("images"
    // parallelism: the runtime may run a batch in chunks), or for an op
    // whose parallel steps are not images (the experts of
    // moe.routed_ffn_weight_grad) exactly that many steps ("fixed").
    Value first = op->getResult(0);
    int64_t images = cast<RankedTensorType>(first.getType())
                         .getDimSize(kernelOp.getImageDim(first, true));
    KernelParallelism parallelism = options.overImages
                                        ? KernelParallelism::Images
                                        : KernelParallelism::Fixed;
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, 0));
    callArgs.push_back(arith::ConstantIndexOp::create(b, loc, images));
    auto call = func::CallOp::create(b, loc, kernel, callArgs);
    call->setAttr(MoEDialect::OpAttrHelper::getNameStr(),
                  b.getStringAttr(op->getName().getStringRef()));
    std::string role;
    if (auto nameLoc = dyn_cast<NameLoc>(loc))
      role = nameLoc.getName().str();
    call->setAttr(MoEDialect::NameAttrHelper::getNameStr(),
                  b.getStringAttr(role));
    MoEDialect::ParallelAttrHelper(b.getContext())
        .setAttr(call,
                 KernelParallelismAttr::get(b.getContext(), parallelism));
    call->setAttr(MoEDialect::TilesAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(images));
    // The op's FLOPs over the whole call: the runtime's profile reports
    // each kernel's rate.
    call->setAttr(MoEDialect::FlopsAttrHelper::getNameStr(),
                  b.getI64IntegerAttr(estimateFlops(op)));
    op->replaceAllUsesWith(call.getResults());
    op->erase();
    return success();
  }
};
} // namespace
