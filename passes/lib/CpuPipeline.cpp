//===- CpuPipeline.cpp - the CPU lowering pipeline ------------------------===//
//
// moe-drop-plan, moe-approximate-math, and the named pipelines:
//   moe-cpu-plan     moe -> plan of per-image kernels with a memory plan
//   moe-cpu-codegen  kernels -> bufferized -> LLVM dialect (bare-pointer ABI)
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Conversion/Passes.h"
#include "mlir/Conversion/VectorToSCF/VectorToSCF.h"
#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Arith/Transforms/Passes.h"
#include "mlir/Dialect/Bufferization/Pipelines/Passes.h"
#include "mlir/Dialect/Bufferization/Transforms/Passes.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/Linalg/IR/Linalg.h"
#include "mlir/Dialect/Linalg/Passes.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/Math/Transforms/Passes.h"
#include "mlir/Dialect/MemRef/Transforms/Passes.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"
#include "mlir/Transforms/Passes.h"

namespace moec {
#define GEN_PASS_DEF_DROPPLANPASS
#define GEN_PASS_DEF_APPROXIMATEMATHPASS
#define GEN_PASS_DEF_EXPANDCOPIESPASS
#define GEN_PASS_DEF_DROPKERNELRESULTSPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;

namespace {
struct DropPlanPass : public moec::impl::DropPlanPassBase<DropPlanPass> {
  void runOnOperation() override {
    for (auto fn : llvm::make_early_inc_range(
             getOperation().getOps<func::FuncOp>()))
      if (!fn->hasAttr(moec::moe::MoEDialect::KernelAttrHelper::getNameStr()))
        fn.erase();
  }
};

struct DropKernelResultsPass
    : public moec::impl::DropKernelResultsPassBase<DropKernelResultsPass> {
  void runOnOperation() override {
    for (auto fn : getOperation().getOps<func::FuncOp>()) {
      if (!fn->hasAttr(moec::moe::MoEDialect::KernelAttrHelper::getNameStr()) ||
          fn.isExternal())
        continue;
      auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
      for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
        if (!isa<BlockArgument>(v)) {
          ret.emitOpError() << "kernel result #" << i
                            << " is not written in place into an argument";
          return signalPassFailure();
        }
      }
      ret->setOperands({});
      fn.setType(FunctionType::get(&getContext(), fn.getArgumentTypes(), {}));
    }
  }
};

struct ExpandCopiesPass
    : public moec::impl::ExpandCopiesPassBase<ExpandCopiesPass> {
  void runOnOperation() override {
    getOperation()->walk([](memref::CopyOp copy) {
      OpBuilder b(copy);
      linalg::CopyOp::create(b, copy.getLoc(), copy.getSource(),
                             copy.getTarget());
      copy.erase();
    });
  }
};

struct ApproximateMathPass
    : public moec::impl::ApproximateMathPassBase<ApproximateMathPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    populateMathPolynomialApproximationPatterns(patterns);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      return signalPassFailure();
  }
};
} // namespace

void moec::buildCpuPlanPipeline(OpPassManager &pm,
                                const CpuPipelineOptions &options) {
  if (options.fuseRouting)
    pm.addNestedPass<func::FuncOp>(createFuseRoutingPass());
  pm.addNestedPass<func::FuncOp>(createDecomposeLossesPass());
  pm.addNestedPass<func::FuncOp>(createSplitBatchReductionsPass());
  LowerToKernelsPassOptions lower;
  lower.entry = options.entry;
  lower.kernelPrefix = options.kernelPrefix;
  pm.addPass(createLowerToKernelsPass(lower));
  PlanMemoryPassOptions plan;
  plan.entry = options.entry;
  pm.addPass(createPlanMemoryPass(plan));
}

void moec::addKernelBufferization(OpPassManager &pm) {
  bufferization::OneShotBufferizePassOptions bufferize;
  bufferize.bufferizeFunctionBoundaries = true;
  bufferize.functionBoundaryTypeConversion =
      bufferization::LayoutMapOption::IdentityLayoutMap;
  pm.addPass(bufferization::createOneShotBufferizePass(bufferize));
  // cse before canonicalize: bufferization leaves memref.copy %x, %x
  // self-copies that only fold away once cse has merged the subviews.
  pm.addPass(createCSEPass());
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createDropKernelResultsPass());
  pm.addNestedPass<func::FuncOp>(bufferization::createBufferLoopHoistingPass());
}

void moec::buildCpuCodegenPipeline(OpPassManager &pm,
                                   const CpuPipelineOptions &options) {
  pm.addPass(createDropPlanPass());
  // The kernels are independent functions: passes nested on them run on
  // the kernels in parallel (the context's thread pool); only passes that
  // need the whole module (bufferization across function boundaries, the
  // LLVM conversions of functions and memrefs) run on the module.
  auto perKernel = [&pm](std::unique_ptr<Pass> pass) {
    pm.addNestedPass<func::FuncOp>(std::move(pass));
  };
  perKernel(createCanonicalizerPass());
  perKernel(createCSEPass());
  if (options.bf16 && !options.gpuTiling)
    perKernel(createBf16ContractionsPass());
  if (options.vectorize && !options.gpuTiling) {
    VectorizeKernelsPassOptions vectorizeOptions;
    vectorizeOptions.registerBits = options.registerBits;
    vectorizeOptions.vectorRegisters = options.vectorRegisters;
    perKernel(createVectorizeKernelsPass(vectorizeOptions));
    perKernel(createCanonicalizerPass());
    perKernel(createCSEPass());
  }
  addKernelBufferization(pm);
  if (options.gpuTiling) {
    perKernel(createExpandCopiesPass());
    perKernel(createGpuTilePass());
    perKernel(createCanonicalizerPass());
  }
  bufferization::PromoteBuffersToStackPassOptions stack;
  stack.maxAllocSizeInBytes = options.maxStackBufferBytes;
  stack.maxRankOfAllocatedMemRef = 4;
  pm.addNestedPass<func::FuncOp>(
      bufferization::createPromoteBuffersToStackPass(stack));
  bufferization::BufferDeallocationPipelineOptions dealloc;
  bufferization::buildBufferDeallocationPipeline(pm, dealloc);

  perKernel(createExpandCopiesPass());
  LowerVectorsPassOptions lowerVectors;
  lowerVectors.bf16Dot = options.bf16 && options.bf16Dot;
  perKernel(createLowerVectorsPass(lowerVectors));
  perKernel(createConvertLinalgToLoopsPass());
  // Without AVX512-BF16, LLVM rounds f32 to bf16 through a libcall per
  // element (__truncsfbf2, which the kernels cannot link): roundings and
  // extensions become integer ops (round to nearest even on the bits, as
  // vcvtneps2bf16 does).
  if ((options.bf16 || options.gpuTiling) && !options.bf16Dot) {
    arith::ArithExpandOpsPassOptions expand;
    expand.includeBf16 = true;
    perKernel(arith::createArithExpandOpsPass(expand));
  }
  perKernel(createApproximateMathPass());
  perKernel(createConvertVectorToSCFPass(
      VectorTransferToSCFOptions().enableFullUnroll()));
  perKernel(createCanonicalizerPass());
  perKernel(createSCFToControlFlowPass());
  perKernel(memref::createExpandStridedMetadataPass());
  perKernel(createLowerAffinePass());
  ConvertVectorToLLVMPassOptions vectorToLLVM;
  vectorToLLVM.reassociateFPReductions = true;
  vectorToLLVM.x86Vector = options.bf16 && options.bf16Dot;
  vectorToLLVM.vectorContractLowering =
      vector::VectorContractLowering::OuterProduct;
  pm.addPass(createConvertVectorToLLVMPass(vectorToLLVM));
  pm.addPass(createFinalizeMemRefToLLVMConversionPass());
  pm.addPass(createConvertMathToLLVMPass());
  pm.addPass(createArithToLLVMConversionPass());
  ConvertFuncToLLVMPassOptions func;
  func.useBarePtrCallConv = true;
  pm.addPass(createConvertFuncToLLVMPass(func));
  pm.addPass(createConvertControlFlowToLLVMPass());
  pm.addPass(createUBToLLVMConversionPass());
  pm.addPass(createReconcileUnrealizedCastsPass());
  pm.addPass(createCanonicalizerPass());
}

void moec::registerMoEPipelines() {
  PassPipelineRegistration<CpuPipelineOptions>(
      "moe-cpu-plan",
      "Lower an entry function into a plan of per-image kernels with a memory "
      "plan",
      [](OpPassManager &pm, const CpuPipelineOptions &options) {
        buildCpuPlanPipeline(pm, options);
      });
  PassPipelineRegistration<CpuPipelineOptions>(
      "moe-cpu-codegen",
      "Compile the kernels of a plan to the LLVM dialect (bare-pointer ABI)",
      [](OpPassManager &pm, const CpuPipelineOptions &options) {
        buildCpuCodegenPipeline(pm, options);
      });
  PassPipelineRegistration<CudaPipelineOptions>(
      "moe-cuda-codegen",
      "Compile the kernels of a plan to a gpu.module in the NVVM dialect "
      "(one block per unit of each kernel's range; gpu-module-to-binary "
      "makes the PTX)",
      [](OpPassManager &pm, const CudaPipelineOptions &options) {
        buildCudaCodegenPipeline(pm, options);
      });
}
