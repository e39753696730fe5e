//===- GpuMapKernels.cpp - moe-gpu-map-kernels: kernels onto thread blocks ===//
//
// A kernel function `k(buffers..., begin, end)` whose body is
// `scf.for %u = begin to end { unit body }` becomes
// `gpu.func @k(buffers..., begin, scratch) kernel` whose block b computes
// unit begin + b with every thread of the block (see Passes.td for the
// rules). The unit body keeps its order; what changes is who runs each
// phase of it: thread-parallel loops, warp tiles on tensor cores, or
// thread 0, separated by barriers.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/GpuTiling.h"
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/GPU/IR/GPUDialect.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

namespace moec {
#define GEN_PASS_DEF_GPUMAPKERNELSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {

constexpr int64_t kWarpSize = 32;
/// Results of thread-0 ops pass through this many i64 of workgroup memory.
constexpr int64_t kBroadcastSlots = 16;
/// Scratch slices and the views in them start at multiples of this.
constexpr int64_t kScratchAlignment = 256;
/// The scratch argument's static size (2 GiB).
constexpr int64_t kScratchTypeBytes = int64_t(1) << 31;

/// Whether `op` (or anything nested in it) may write or free memory.
bool writesMemory(Operation *op) {
  bool writes = false;
  op->walk([&](Operation *nested) {
    if (writes || isMemoryEffectFree(nested))
      return;
    if (auto effects = dyn_cast<MemoryEffectOpInterface>(nested)) {
      if (!effects.onlyHasEffect<MemoryEffects::Read>())
        writes = true;
      return;
    }
    if (!nested->hasTrait<OpTrait::HasRecursiveMemoryEffects>())
      writes = true;
  });
  return writes;
}

/// Whether `op` holds work spread over the block: a parallel loop, or a tile
/// matmul whose one-tile warp loop canonicalization folded away.
bool containsParallelLoop(Operation *op) {
  return op
      ->walk([](Operation *nested) {
        if (isa<scf::ParallelOp>(nested) ||
            nested->hasAttr(
                moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr()))
          return WalkResult::interrupt();
        return WalkResult::advance();
      })
      .wasInterrupted();
}

Value cst(OpBuilder &b, Location loc, int64_t v) {
  return arith::ConstantIndexOp::create(b, loc, v);
}

/// Replaces a (nested, thread-private) scf.parallel by sequential loops.
void sequentialize(scf::ParallelOp par) {
  OpBuilder b(par);
  IRMapping map;
  Block *body = par.getBody();
  std::function<void(OpBuilder &, unsigned)> build = [&](OpBuilder &nb,
                                                         unsigned dim) {
    if (dim == par.getNumLoops()) {
      for (Operation &op : body->without_terminator())
        nb.clone(op, map);
      return;
    }
    scf::ForOp::create(nb, par.getLoc(), par.getLowerBound()[dim],
                       par.getUpperBound()[dim], par.getStep()[dim],
                       ValueRange{},
                       [&](OpBuilder &fb, Location, Value iv, ValueRange) {
                         map.map(par.getInductionVars()[dim], iv);
                         build(fb, dim + 1);
                         scf::YieldOp::create(fb, par.getLoc());
                       });
  };
  build(b, 0);
  par.erase();
}

/// Maps one kernel's body onto the threads of a block.
class ThreadMapper {
public:
  ThreadMapper(gpu::GPUFuncOp fn, int64_t threads, Value tid)
      : fn_(fn), threads_(threads), tid_(tid) {}

  LogicalResult mapBlock(Block &block);

private:
  LogicalResult mapThreadLoop(scf::ParallelOp par);
  LogicalResult mapWarpLoop(scf::ParallelOp par);
  LogicalResult mapLoneTile(linalg::GenericOp tile);
  LogicalResult expandMma(linalg::GenericOp tile, IRMapping &map,
                          OpBuilder &b);
  LogicalResult mapSingleThread(Operation *op);
  Value isThreadZero(OpBuilder &b, Location loc) {
    return arith::CmpIOp::create(b, loc, arith::CmpIPredicate::eq, tid_,
                                 cst(b, loc, 0));
  }
  Value broadcastBuffer(Location loc);

  gpu::GPUFuncOp fn_;
  int64_t threads_;
  Value tid_;
  Value broadcast_;
};

LogicalResult ThreadMapper::mapBlock(Block &block) {
  for (Operation &op : llvm::make_early_inc_range(block)) {
    if (op.hasTrait<OpTrait::IsTerminator>())
      continue;
    if (auto par = dyn_cast<scf::ParallelOp>(op)) {
      auto map = par->getAttrOfType<StringAttr>(moec::moe::MoEDialect::GpuMapAttrHelper::getNameStr());
      if (failed(map && map.getValue() == moec::kGpuMapWarps
                     ? mapWarpLoop(par)
                     : mapThreadLoop(par)))
        return failure();
      continue;
    }
    if (auto tile = dyn_cast<linalg::GenericOp>(op);
        tile && tile->hasAttr(
                    moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr())) {
      if (failed(mapLoneTile(tile)))
        return failure();
      continue;
    }
    if (containsParallelLoop(&op)) {
      // Every thread runs the loop or branch (its bounds are block-uniform)
      // and takes its part of the parallel loops inside.
      for (Region &region : op.getRegions())
        for (Block &nested : region)
          if (failed(mapBlock(nested)))
            return failure();
      continue;
    }
    if (writesMemory(&op) && failed(mapSingleThread(&op)))
      return failure();
  }
  return success();
}

LogicalResult ThreadMapper::mapThreadLoop(scf::ParallelOp par) {
  if (!par.getInitVals().empty())
    return par.emitOpError("moe-gpu-map-kernels: a parallel loop with "
                           "reductions is not supported");
  OpBuilder b(par);
  Location loc = par.getLoc();
  gpu::BarrierOp::create(b, loc);
  unsigned n = par.getNumLoops();
  SmallVector<Value> counts;
  Value total = cst(b, loc, 1);
  for (unsigned d = 0; d < n; ++d) {
    Value extent = arith::SubIOp::create(b, loc, par.getUpperBound()[d],
                                         par.getLowerBound()[d]);
    Value count =
        arith::CeilDivUIOp::create(b, loc, extent, par.getStep()[d]);
    counts.push_back(count);
    total = arith::MulIOp::create(b, loc, total, count);
  }
  IRMapping map;
  auto loop = scf::ForOp::create(b, loc, tid_, total, cst(b, loc, threads_));
  {
    OpBuilder lb = OpBuilder::atBlockBegin(loop.getBody());
    Value rest = loop.getInductionVar();
    for (int d = static_cast<int>(n) - 1; d >= 0; --d) {
      Value idx = d == 0 ? rest
                         : arith::RemUIOp::create(lb, loc, rest, counts[d]);
      if (d > 0)
        rest = arith::DivUIOp::create(lb, loc, rest, counts[d]);
      Value iv = arith::AddIOp::create(
          lb, loc, par.getLowerBound()[d],
          arith::MulIOp::create(lb, loc, idx, par.getStep()[d]));
      map.map(par.getInductionVars()[d], iv);
    }
    for (Operation &op : par.getBody()->without_terminator())
      lb.clone(op, map);
  }
  SmallVector<scf::ParallelOp> nested;
  loop.getBody()->walk([&](scf::ParallelOp p) { nested.push_back(p); });
  for (scf::ParallelOp p : nested)
    sequentialize(p);
  b.setInsertionPointAfter(loop);
  gpu::BarrierOp::create(b, loc);
  par.erase();
  return success();
}

LogicalResult ThreadMapper::mapWarpLoop(scf::ParallelOp par) {
  if (par.getNumLoops() != 1 || !par.getInitVals().empty())
    return par.emitOpError("moe-gpu-map-kernels: a warp loop must be "
                           "one-dimensional without reductions");
  OpBuilder b(par);
  Location loc = par.getLoc();
  gpu::BarrierOp::create(b, loc);
  Value warp = arith::DivUIOp::create(b, loc, tid_, cst(b, loc, kWarpSize));
  Value step = par.getStep()[0];
  Value first = arith::AddIOp::create(
      b, loc, par.getLowerBound()[0], arith::MulIOp::create(b, loc, warp, step));
  Value stride = arith::MulIOp::create(b, loc, step,
                                       cst(b, loc, threads_ / kWarpSize));
  auto loop = scf::ForOp::create(b, loc, first, par.getUpperBound()[0], stride);
  IRMapping map;
  map.map(par.getInductionVars()[0], loop.getInductionVar());
  OpBuilder lb = OpBuilder::atBlockBegin(loop.getBody());
  for (Operation &op : par.getBody()->without_terminator()) {
    auto tile = dyn_cast<linalg::GenericOp>(op);
    if (tile && tile->hasAttr(moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr())) {
      if (failed(expandMma(tile, map, lb)))
        return failure();
      continue;
    }
    if (isa<linalg::LinalgOp>(op))
      return op.emitOpError("moe-gpu-map-kernels: only tile matmuls may be "
                            "in a warp loop");
    lb.clone(op, map);
  }
  b.setInsertionPointAfter(loop);
  gpu::BarrierOp::create(b, loc);
  par.erase();
  return success();
}

/// A tile matmul outside a warp loop (canonicalization folds a warp loop of
/// one tile away): warp 0 computes it.
LogicalResult ThreadMapper::mapLoneTile(linalg::GenericOp tile) {
  OpBuilder b(tile);
  Location loc = tile.getLoc();
  gpu::BarrierOp::create(b, loc);
  Value firstWarp = arith::CmpIOp::create(b, loc, arith::CmpIPredicate::ult,
                                          tid_, cst(b, loc, kWarpSize));
  auto branch = scf::IfOp::create(b, loc, firstWarp, /*withElseRegion=*/false);
  OpBuilder tb(branch.thenBlock()->getTerminator());
  IRMapping identity;
  if (failed(expandMma(tile, identity, tb)))
    return failure();
  b.setInsertionPointAfter(branch);
  gpu::BarrierOp::create(b, loc);
  tile.erase();
  return success();
}

/// C[M, N] += A[M, K] * B[K, N] for one warp, M <= 16 and N <= 8 (A or B
/// may be stored transposed): per lane
/// the fragments of mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
/// (PTX ISA, "Matrix Fragments for mma.m16n8k16"), loaded straight from
/// the views with zeros outside them, then stored back where in bounds.
LogicalResult ThreadMapper::expandMma(linalg::GenericOp tile, IRMapping &map,
                                     OpBuilder &b) {
  Location loc = tile.getLoc();
  auto tag = tile->getAttrOfType<StringAttr>(moec::moe::MoEDialect::GpuMmaAttrHelper::getNameStr());
  if (!tag || tag.getValue() != moec::kGpuMmaM16N8K16Bf16)
    return tile.emitOpError("moe-gpu-map-kernels: unknown tensor-core tile '")
           << tag << "'";
  Value a = map.lookupOrDefault(tile.getDpsInputs()[0]);
  Value bm = map.lookupOrDefault(tile.getDpsInputs()[1]);
  Value c = map.lookupOrDefault(tile.getDpsInits()[0]);
  // moe-gpu-tile's loop order is (m, n, k); A is [m, k] or [k, m], B is
  // [k, n] or [n, k].
  SmallVector<AffineMap> maps = tile.getIndexingMapsArray();
  auto startsWith = [](AffineMap map, unsigned dim) {
    auto d = dyn_cast<AffineDimExpr>(map.getResult(0));
    return d && d.getPosition() == dim;
  };
  const bool aTransposed = startsWith(maps[0], 2);
  const bool bTransposed = startsWith(maps[1], 1);
  MLIRContext *ctx = b.getContext();
  Type f32 = b.getF32Type(), i32 = b.getI32Type(), i16 = b.getI16Type();
  Value m = memref::DimOp::create(b, loc, c, 0);
  Value n = memref::DimOp::create(b, loc, c, 1);
  Value k = memref::DimOp::create(b, loc, a, aTransposed ? 0 : 1);
  Value lane = arith::RemUIOp::create(b, loc, tid_, cst(b, loc, kWarpSize));
  Value group = arith::DivUIOp::create(b, loc, lane, cst(b, loc, 4));
  Value quad = arith::RemUIOp::create(b, loc, lane, cst(b, loc, 4));
  Value quad2 = arith::MulIOp::create(b, loc, quad, cst(b, loc, 2));
  Value zero = arith::ConstantOp::create(b, loc, b.getF32FloatAttr(0.0f));

  auto inBounds = [&](OpBuilder &ib, Value row, Value rows, Value col,
                      Value cols) {
    Value r = arith::CmpIOp::create(ib, loc, arith::CmpIPredicate::ult, row,
                                    rows);
    Value cc = arith::CmpIOp::create(ib, loc, arith::CmpIPredicate::ult, col,
                                     cols);
    return arith::AndIOp::create(ib, loc, r, cc).getResult();
  };
  auto load = [&](OpBuilder &ib, Value mem, Value row, Value rows, Value col,
                  Value cols) {
    Value ok = inBounds(ib, row, rows, col, cols);
    auto branch = scf::IfOp::create(
        ib, loc, ok,
        [&](OpBuilder &tb, Location) {
          Value v = memref::LoadOp::create(tb, loc, mem, ValueRange{row, col});
          scf::YieldOp::create(tb, loc, v);
        },
        [&](OpBuilder &eb, Location) { scf::YieldOp::create(eb, loc, zero); });
    return branch.getResult(0);
  };
  // Two f32 values rounded to bf16 and packed into one register, the lower
  // index in the low half.
  auto pack = [&](OpBuilder &ib, Value lo, Value hi) {
    auto bits = [&](Value x) {
      Value h = arith::TruncFOp::create(ib, loc, b.getBF16Type(), x);
      Value raw = arith::BitcastOp::create(ib, loc, i16, h);
      return arith::ExtUIOp::create(ib, loc, i32, raw).getResult();
    };
    Value high = arith::ShLIOp::create(
        ib, loc, bits(hi),
        arith::ConstantOp::create(ib, loc, ib.getI32IntegerAttr(16)));
    return arith::OrIOp::create(ib, loc, bits(lo), high).getResult();
  };
  // Element (i, kk) of an operand stored [i, k] or, kFirst, [k, i], with
  // i < extent and kk < k.
  auto element = [&](OpBuilder &ib, Value mem, bool kFirst, Value i,
                     Value extent, Value kk) {
    return kFirst ? load(ib, mem, kk, k, i, extent)
                  : load(ib, mem, i, extent, kk, k);
  };
  auto offset = [&](OpBuilder &ib, Value base, int64_t delta) {
    return delta == 0 ? base
                      : arith::AddIOp::create(ib, loc, base, cst(ib, loc, delta))
                            .getResult();
  };

  // Accumulators: c0, c1 at row g, columns 2q, 2q+1; c2, c3 at row g + 8.
  SmallVector<Value> acc;
  for (int64_t i = 0; i < 4; ++i)
    acc.push_back(load(b, c, offset(b, group, 8 * (i / 2)), m,
                       offset(b, quad2, i % 2), n));

  auto kLoop = scf::ForOp::create(
      b, loc, cst(b, loc, 0), k, cst(b, loc, moec::kMmaTileK), acc,
      [&](OpBuilder &lb, Location, Value k0, ValueRange cs) {
        Value kq = arith::AddIOp::create(lb, loc, k0, quad2);
        // A: registers (row, col) = (g, 2q), (g+8, 2q), (g, 2q+8),
        // (g+8, 2q+8), two consecutive columns each.
        SmallVector<Value> aRegs;
        for (int64_t r = 0; r < 4; ++r) {
          Value row = offset(lb, group, 8 * (r % 2));
          Value col = offset(lb, kq, 8 * (r / 2));
          aRegs.push_back(pack(lb, element(lb, a, aTransposed, row, m, col),
                               element(lb, a, aTransposed, row, m,
                                       offset(lb, col, 1))));
        }
        // B: registers at rows (k) 2q and 2q+8, two consecutive rows each,
        // column g.
        SmallVector<Value> bRegs;
        for (int64_t r = 0; r < 2; ++r) {
          Value row = offset(lb, kq, 8 * r);
          bRegs.push_back(
              pack(lb, element(lb, bm, !bTransposed, group, n, row),
                   element(lb, bm, !bTransposed, group, n,
                           offset(lb, row, 1))));
        }
        auto structType =
            LLVM::LLVMStructType::getLiteral(ctx, {f32, f32, f32, f32});
        auto mma = NVVM::MmaOp::create(
            lb, loc, structType, aRegs, bRegs, cs,
            ArrayRef<int64_t>{moec::kMmaTileM, moec::kMmaTileN,
                              moec::kMmaTileK},
            std::nullopt, std::nullopt,
            std::array<NVVM::MMATypes, 2>{NVVM::MMATypes::bf16,
                                          NVVM::MMATypes::bf16},
            std::array<NVVM::MMALayout, 2>{NVVM::MMALayout::row,
                                           NVVM::MMALayout::col});
        SmallVector<Value> next;
        for (int64_t i = 0; i < 4; ++i)
          next.push_back(LLVM::ExtractValueOp::create(lb, loc, mma.getRes(),
                                                      ArrayRef<int64_t>{i}));
        scf::YieldOp::create(lb, loc, next);
      });

  for (int64_t i = 0; i < 4; ++i) {
    Value row = offset(b, group, 8 * (i / 2));
    Value col = offset(b, quad2, i % 2);
    Value ok = inBounds(b, row, m, col, n);
    Value v = kLoop.getResult(i);
    scf::IfOp::create(b, loc, ok, [&](OpBuilder &tb, Location) {
      memref::StoreOp::create(tb, loc, v, c, ValueRange{row, col});
      scf::YieldOp::create(tb, loc);
    });
  }
  return success();
}

Value ThreadMapper::broadcastBuffer(Location loc) {
  if (!broadcast_) {
    MLIRContext *ctx = fn_.getContext();
    auto space =
        gpu::AddressSpaceAttr::get(ctx, gpu::AddressSpace::Workgroup);
    auto type = MemRefType::get({kBroadcastSlots}, IntegerType::get(ctx, 64),
                                MemRefLayoutAttrInterface{}, space);
    broadcast_ = fn_.addWorkgroupAttribution(type, loc);
  }
  return broadcast_;
}

/// `v` as the i64 it is broadcast in, and back.
FailureOr<Value> encode(OpBuilder &b, Location loc, Value v) {
  Type i64 = b.getI64Type();
  Type type = v.getType();
  if (type.isIndex())
    return arith::IndexCastUIOp::create(b, loc, i64, v).getResult();
  if (auto integer = dyn_cast<IntegerType>(type)) {
    if (integer.getWidth() == 64)
      return v;
    if (integer.getWidth() < 64)
      return arith::ExtUIOp::create(b, loc, i64, v).getResult();
    return failure();
  }
  if (auto fp = dyn_cast<FloatType>(type)) {
    unsigned width = fp.getWidth();
    Value raw = arith::BitcastOp::create(b, loc, b.getIntegerType(width), v);
    return width == 64 ? raw
                       : arith::ExtUIOp::create(b, loc, i64, raw).getResult();
  }
  return failure();
}

Value decode(OpBuilder &b, Location loc, Value raw, Type type) {
  if (type.isIndex())
    return arith::IndexCastUIOp::create(b, loc, type, raw);
  if (auto integer = dyn_cast<IntegerType>(type))
    return integer.getWidth() == 64
               ? raw
               : arith::TruncIOp::create(b, loc, type, raw).getResult();
  unsigned width = cast<FloatType>(type).getWidth();
  Value bits = width == 64 ? raw
                           : arith::TruncIOp::create(
                                 b, loc, b.getIntegerType(width), raw)
                                 .getResult();
  return arith::BitcastOp::create(b, loc, type, bits);
}

LogicalResult ThreadMapper::mapSingleThread(Operation *op) {
  Location loc = op->getLoc();
  if (op->getNumResults() > static_cast<unsigned>(kBroadcastSlots))
    return op->emitOpError("moe-gpu-map-kernels: a sequential op with more "
                           "than ")
           << kBroadcastSlots << " results";
  OpBuilder b(op);
  gpu::BarrierOp::create(b, loc);
  auto branch = scf::IfOp::create(b, loc, isThreadZero(b, loc),
                                  /*withElseRegion=*/false);
  op->moveBefore(branch.thenBlock()->getTerminator());
  if (op->getNumResults() == 0) {
    b.setInsertionPointAfter(branch);
    gpu::BarrierOp::create(b, loc);
    return success();
  }
  Value buffer = broadcastBuffer(loc);
  OpBuilder tb(branch.thenBlock()->getTerminator());
  for (auto [i, result] : llvm::enumerate(op->getResults())) {
    FailureOr<Value> raw = encode(tb, loc, result);
    if (failed(raw))
      return op->emitOpError("moe-gpu-map-kernels: cannot share a result of "
                             "type ")
             << result.getType() << " between threads";
    memref::StoreOp::create(tb, loc, *raw, buffer,
                            ValueRange{cst(tb, loc, static_cast<int64_t>(i))});
  }
  b.setInsertionPointAfter(branch);
  gpu::BarrierOp::create(b, loc);
  SmallVector<Value> shared;
  for (auto [i, result] : llvm::enumerate(op->getResults())) {
    Value raw = memref::LoadOp::create(
        b, loc, buffer, ValueRange{cst(b, loc, static_cast<int64_t>(i))});
    shared.push_back(decode(b, loc, raw, result.getType()));
  }
  // The slots are read before anyone writes them again.
  gpu::BarrierOp::create(b, loc);
  for (auto [result, value] : llvm::zip(op->getResults(), shared))
    result.replaceUsesWithIf(value, [&](OpOperand &use) {
      return !branch->isAncestor(use.getOwner());
    });
  return success();
}

/// Erases a barrier that directly follows another one.
void dropRepeatedBarriers(gpu::GPUFuncOp fn) {
  SmallVector<gpu::BarrierOp> repeated;
  fn.walk([&](gpu::BarrierOp barrier) {
    Operation *prev = barrier->getPrevNode();
    if (prev && isa<gpu::BarrierOp>(prev))
      repeated.push_back(barrier);
  });
  for (gpu::BarrierOp barrier : repeated)
    barrier.erase();
}

struct GpuMapKernelsPass
    : public moec::impl::GpuMapKernelsPassBase<GpuMapKernelsPass> {
  using GpuMapKernelsPassBase::GpuMapKernelsPassBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (blockThreads <= 0 || blockThreads % kWarpSize != 0 ||
        blockThreads > 1024) {
      module.emitError("moe-gpu-map-kernels: block-threads must be a "
                       "multiple of 32 in [32, 1024], got ")
          << static_cast<int64_t>(blockThreads);
      return signalPassFailure();
    }
    SmallVector<func::FuncOp> kernels;
    for (auto fn : module.getOps<func::FuncOp>())
      if (fn->hasAttr(moec::moe::MoEDialect::KernelAttrHelper::getNameStr()) &&
          !fn.isExternal())
        kernels.push_back(fn);
    if (kernels.empty())
      return;
    OpBuilder mb = OpBuilder::atBlockEnd(module.getBody());
    auto gpuModule =
        gpu::GPUModuleOp::create(mb, module.getLoc(), moec::kCudaKernelModule);
    module->setAttr(gpu::GPUDialect::getContainerModuleAttrName(),
                    mb.getUnitAttr());
    SmallVector<NamedAttribute> scratch;
    for (func::FuncOp fn : kernels) {
      if (failed(mapKernel(fn, gpuModule)))
        return signalPassFailure();
      auto gpuFn = gpuModule.lookupSymbol<gpu::GPUFuncOp>(fn.getSymName());
      scratch.push_back(mb.getNamedAttr(
          fn.getSymName(),
          gpuFn->getAttr(
              moec::moe::MoEDialect::ScratchBytesAttrHelper::getNameStr())));
      fn.erase();
    }
    moec::moe::MoEDialect::KernelScratchAttrHelper(&getContext())
        .setAttr(module, mb.getDictionaryAttr(scratch));
  }

  LogicalResult mapKernel(func::FuncOp fn, gpu::GPUModuleOp gpuModule);
};

LogicalResult GpuMapKernelsPass::mapKernel(func::FuncOp fn,
                                           gpu::GPUModuleOp gpuModule) {
  MLIRContext *ctx = &getContext();
  Location loc = fn.getLoc();
  unsigned numArgs = fn.getNumArguments();
  if (numArgs < 2 || fn.getNumResults() != 0 ||
      !fn.getArgumentTypes()[numArgs - 2].isIndex() ||
      !fn.getArgumentTypes()[numArgs - 1].isIndex())
    return fn.emitOpError("moe-gpu-map-kernels: a kernel is "
                          "(buffers..., begin: index, end: index) -> () after "
                          "moe-drop-kernel-results");
  SmallVector<Type> argTypes;
  for (unsigned i = 0; i + 2 < numArgs; ++i) {
    auto type = dyn_cast<MemRefType>(fn.getArgumentTypes()[i]);
    if (!type || !type.hasStaticShape() || !type.getLayout().isIdentity())
      return fn.emitOpError("moe-gpu-map-kernels: buffer argument #")
             << i << " is not a static memref with the identity layout";
    argTypes.push_back(type);
  }
  Value begin = fn.getArgument(numArgs - 2), end = fn.getArgument(numArgs - 1);
  scf::ForOp unitLoop;
  for (Operation &op : fn.getBody().front()) {
    auto loop = dyn_cast<scf::ForOp>(op);
    if (loop && loop.getLowerBound() == begin && loop.getUpperBound() == end)
      unitLoop = loop;
  }
  if (!unitLoop || unitLoop.getNumResults() != 0)
    return fn.emitOpError("moe-gpu-map-kernels: the kernel has no loop over "
                          "its range [begin, end)");
  for (Operation &op : fn.getBody().front()) {
    if (&op == unitLoop.getOperation() || isa<func::ReturnOp>(op) ||
        isa<memref::AllocOp, memref::DeallocOp>(op) || isMemoryEffectFree(&op))
      continue;
    return op.emitOpError("moe-gpu-map-kernels: outside the kernel's loop "
                          "over its range");
  }

  argTypes.push_back(IndexType::get(ctx));
  // The bare-pointer convention needs a static shape: the scratch buffer is
  // typed as the most one launch may address.
  argTypes.push_back(
      MemRefType::get({kScratchTypeBytes}, IntegerType::get(ctx, 8)));
  OpBuilder gb = OpBuilder::atBlockEnd(gpuModule.getBody());
  auto gpuFn = gpu::GPUFuncOp::create(gb, loc, fn.getSymName(),
                                      FunctionType::get(ctx, argTypes, {}));
  gpuFn->setAttr(gpu::GPUDialect::getKernelFuncAttrName(), gb.getUnitAttr());
  gpuFn.setKnownBlockSizeAttr(gb.getDenseI32ArrayAttr(
      {static_cast<int32_t>(blockThreads), 1, 1}));
  // One resident block per SM is enough: without this ptxas caps the
  // registers for occupancy (64 at 256 threads) and spills the larger
  // kernels.
  gpuFn->setAttr(NVVM::NVVMDialect::getMinctasmAttrName(),
                 gb.getI32IntegerAttr(1));
  Block &entry = gpuFn.getBody().front();
  OpBuilder b = OpBuilder::atBlockBegin(&entry);
  IRMapping map;
  for (unsigned i = 0; i + 2 < numArgs; ++i)
    map.map(fn.getArgument(i), entry.getArgument(i));
  Value gpuBegin = entry.getArgument(numArgs - 2);
  Value scratch = entry.getArgument(numArgs - 1);
  Value blockId = gpu::BlockIdOp::create(b, loc, gpu::Dimension::x);
  Value tid = gpu::ThreadIdOp::create(b, loc, gpu::Dimension::x);

  // The unit's scratch slice: one slot per temporary. buffer-loop-hoisting
  // has moved every static temporary out of the loop.
  SmallVector<memref::AllocOp> allocs;
  for (Operation &op : fn.getBody().front())
    if (auto alloc = dyn_cast<memref::AllocOp>(op))
      allocs.push_back(alloc);
  WalkResult nestedAlloc = unitLoop.walk([](memref::AllocOp alloc) {
    alloc.emitOpError("moe-gpu-map-kernels: a temporary allocated inside the "
                      "kernel's loop (a dynamic shape buffer-loop-hoisting "
                      "could not hoist)");
    return WalkResult::interrupt();
  });
  if (nestedAlloc.wasInterrupted())
    return failure();
  int64_t bytes = 0;
  Value sliceBase;
  {
    SmallVector<std::pair<memref::AllocOp, int64_t>> slots;
    for (memref::AllocOp alloc : allocs) {
      MemRefType type = alloc.getType();
      if (!type.hasStaticShape() || !type.getLayout().isIdentity() ||
          !type.getElementType().isIntOrFloat())
        return alloc.emitOpError("moe-gpu-map-kernels: a kernel temporary "
                                 "must have a static shape");
      slots.push_back({alloc, bytes});
      int64_t size =
          type.getNumElements() *
          llvm::divideCeil(type.getElementType().getIntOrFloatBitWidth(), 8);
      bytes += llvm::alignTo(size, kScratchAlignment);
    }
    sliceBase = arith::MulIOp::create(b, loc, blockId, cst(b, loc, bytes));
    for (auto [alloc, off] : slots) {
      Value at = arith::AddIOp::create(b, loc, sliceBase, cst(b, loc, off));
      map.map(alloc.getResult(),
              memref::ViewOp::create(b, loc, alloc.getType(), scratch, at,
                                     ValueRange{}));
    }
  }

  // What precedes the loop, then the loop's body for unit begin + blockIdx.x.
  for (Operation &op : fn.getBody().front()) {
    if (&op == unitLoop.getOperation())
      break;
    if (!isa<memref::AllocOp, memref::DeallocOp>(op))
      b.clone(op, map);
  }
  map.map(unitLoop.getInductionVar(),
          arith::AddIOp::create(b, loc, gpuBegin, blockId));
  for (Operation &op : unitLoop.getBody()->without_terminator())
    b.clone(op, map);
  gpu::ReturnOp::create(b, loc);
  SmallVector<memref::DeallocOp> deallocs;
  gpuFn.walk([&](memref::DeallocOp op) { deallocs.push_back(op); });
  for (memref::DeallocOp op : deallocs)
    op.erase();

  ThreadMapper mapper(gpuFn, blockThreads, tid);
  if (failed(mapper.mapBlock(entry)))
    return failure();
  dropRepeatedBarriers(gpuFn);
  gpuFn->setAttr(moec::moe::MoEDialect::ScratchBytesAttrHelper::getNameStr(), gb.getI64IntegerAttr(bytes));
  return success();
}

} // namespace
