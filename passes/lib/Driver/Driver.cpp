//===- Driver.cpp - the moec compiler driver ------------------------------===//
//
// spec -> moe module -> moe-frontend-costs -> per entry point, on its own
// copy: [moe-train] + moe-cpu-plan -> one plan module -> moe-cpu-codegen ->
// kernel library -> artifact, with the user's passes at the extension
// points. Every pass manager is set up by the caller's setupPassManager
// first, so MLIR's debugging flags see each stage.
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/Driver.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Driver/Pipelines.h"
#include "moec/Frontend/Spec.h"
#include "moec/Frontend/SpecToMoE.h"
#include "moec/Passes/ArtifactWriter.h"
#include "moec/Passes/CudaTarget.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
using namespace moec;
using namespace moec::driver;

void moec::driver::registerCompilerDialects(DialectRegistry &registry) {
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registry.insert<moec::moe::MoEDialect>();
  moec::registerCudaTranslations(registry);
}

namespace {
/// The manifest's description of the model, from the spec.
moec::ArtifactModelInfo modelInfo(const moec::spec::Spec &spec,
                                  const CompileOptions &options,
                                  const moec::CpuKernelLibrary &library,
                                  StringRef specJson) {
  moec::ArtifactModelInfo info;
  info.model = spec.name;
  info.channels = spec.model.input.channels;
  info.height = spec.model.input.height;
  info.width = spec.model.input.width;
  info.classes = spec.model.classes;
  info.datasetKind = moec::spec::toString(spec.data.dataset);
  info.datasetPath = spec.data.path;
  info.targetCpu = library.cpu;
  info.targetFeatures = library.features;
  info.precision = options.bf16 ? "bf16" : "fp32";
  if (!options.gpuArch.empty()) {
    info.target = "cuda";
    info.precision = "bf16";
  }
  if (llvm::is_contained(options.entries, "train_step")) {
    const auto &t = spec.train;
    moec::ArtifactTrainInfo train;
    train.optimizer = moec::spec::toString(t.optimizer.kind);
    train.lr = t.optimizer.lr;
    train.weightDecay = t.optimizer.weightDecay;
    train.beta1 = t.optimizer.beta1;
    train.beta2 = t.optimizer.beta2;
    train.eps = t.optimizer.eps;
    train.momentum = t.optimizer.momentum;
    train.gradClip = t.optimizer.gradClip;
    train.schedule = moec::spec::toString(t.schedule.kind);
    train.warmupEpochs = t.schedule.warmupEpochs;
    train.minLrRatio = t.schedule.minLrRatio;
    train.batch = options.batch > 0 ? options.batch : t.batch;
    train.epochs = t.epochs;
    train.labelSmoothing = t.labelSmoothing;
    train.seed = t.seed;
    train.cropPadding = spec.data.cropPadding;
    train.horizontalFlip = spec.data.horizontalFlip;
    info.train = train;
  }
  info.specJson = specJson.str();
  return info;
}
} // namespace

namespace {
/// The stages after the frontend: the module's frontend stage, the plans,
/// codegen, the artifact.
LogicalResult compileFrom(MLIRContext &context, const moec::spec::Spec &spec,
                          StringRef specJson, const CompileOptions &options,
                          CompileResult &result, std::string &error);
} // namespace

LogicalResult moec::driver::compile(MLIRContext &context,
                                    const spec::Spec &spec, StringRef specJson,
                                    const CompileOptions &options,
                                    CompileResult &result, std::string &error) {
  if (options.progress)
    options.progress("frontend: building the moe module");
  SpecToMoEOptions frontend;
  frontend.batch = options.batch;
  result.module = buildMoEModule(context, spec, frontend);
  if (!result.module)
    return failure();
  // The module keeps its spec, so that it can be compiled again as IR.
  moe::MoEDialect::SpecAttrHelper(&context).setAttr(
      *result.module, StringAttr::get(&context, specJson));
  return compileFrom(context, spec, specJson, options, result, error);
}

LogicalResult moec::driver::compileModule(MLIRContext &context,
                                          OwningOpRef<ModuleOp> module,
                                          const CompileOptions &options,
                                          CompileResult &result,
                                          std::string &error) {
  StringAttr specText =
      moe::MoEDialect::SpecAttrHelper(&context).getAttr(*module);
  if (!specText) {
    error = "the module has no '" +
            moe::MoEDialect::SpecAttrHelper::getNameStr().str() +
            "' attribute (the spec it was built from): compile moe IR that "
            "`moec compile SPEC --emit=mlir` printed";
    return failure();
  }
  spec::ParseResult parsed =
      spec::parseSpec(specText.str(), "the module's moe.spec");
  if (!parsed) {
    error = parsed.error->str();
    return failure();
  }
  // The images per call are the infer function's, whatever the spec says.
  auto infer = module->lookupSymbol<func::FuncOp>("infer");
  if (!infer || infer.getNumArguments() == 0) {
    error = "the module has no 'infer' function with an images argument";
    return failure();
  }
  auto images = dyn_cast<RankedTensorType>(infer.getArgumentTypes()[0]);
  if (!images || images.getRank() != 4 || !images.hasStaticShape()) {
    error = "the 'infer' function's first argument is not a static "
            "[N, C, H, W] tensor";
    return failure();
  }
  CompileOptions fromIR = options;
  fromIR.batch = images.getDimSize(0);
  result.module = std::move(module);
  return compileFrom(context, *parsed.spec, specText.getValue(), fromIR, result,
                     error);
}

namespace {
/// The cuda target after the plans: kernels -> NVVM (--emit=llvm) -> PTX ->
/// artifact.
template <typename RunPipeline, typename Progress>
LogicalResult compileCuda(const moec::spec::Spec &spec, StringRef specJson,
                          const CompileOptions &options, CompileResult &result,
                          RunPipeline &runPipeline, Progress &progress) {
  progress("codegen: kernels to NVVM for " + Twine(options.gpuArch) +
           " (one block per image or tile; expert and dense GEMMs on bf16 "
           "tensor cores, mma.sync m16n8k16)");
  result.kernels = result.plan->clone();
  if (failed(runPipeline(*result.kernels, [&](OpPassManager &pm) {
        CudaPipelineOptions cudaOptions;
        cudaOptions.gpuArch = options.gpuArch;
        buildCudaCodegenPipeline(pm, cudaOptions);
        return success();
      })))
    return failure();
  if (options.emit == EmitKind::Llvm)
    return success();
  progress("codegen: PTX for " + Twine(options.gpuArch));
  OwningOpRef<ModuleOp> kernels = result.kernels->clone();
  FailureOr<moec::CudaKernels> ptx =
      buildCudaKernels(*kernels, options.dumpPtxPath);
  if (failed(ptx))
    return failure();
  moec::ArtifactModelInfo info =
      modelInfo(spec, options, moec::CpuKernelLibrary(), specJson);
  moec::ArtifactCudaInfo cudaInfo;
  cudaInfo.arch = options.gpuArch;
  cudaInfo.blockThreads = CudaPipelineOptions().blockThreads;
  cudaInfo.scratchBytes = ptx->scratchBytes;
  info.cuda = std::move(cudaInfo);
  // cuModuleLoadData reads PTX as a NUL-terminated string.
  std::string section = ptx->ptx;
  section.push_back('\0');
  FailureOr<std::string> bytes =
      buildArtifact(*result.plan, options.entries, info, section);
  if (failed(bytes))
    return failure();
  result.artifact = std::move(*bytes);
  return success();
}

LogicalResult compileFrom(MLIRContext &context, const moec::spec::Spec &spec,
                          StringRef specJson, const CompileOptions &options,
                          CompileResult &result, std::string &error) {
  const EmitKind emit = options.emit;
  ArrayRef<PassHook> hooks = options.passHooks;
  auto progress = [&](const Twine &stage) {
    if (options.progress)
      options.progress(stage.str());
  };

  // One pass manager per stage: the caller's settings, then `build`'s
  // passes; `build` fails only if a user pipeline does not parse.
  auto runPipeline =
      [&](ModuleOp op,
          llvm::function_ref<LogicalResult(OpPassManager &)> build) {
        PassManager pm(&context);
        if (options.setupPassManager && failed(options.setupPassManager(pm)))
          return failure();
        if (failed(build(pm)))
          return failure();
        return pm.run(op);
      };

  // The frontend stage; the frontend point affects every entry point.
  progress("frontend: costs" +
           Twine(hasPassHooks(hooks, ExtensionPoint::Frontend)
                     ? " and the passes at the frontend point"
                     : ""));
  if (failed(runPipeline(*result.module, [&](OpPassManager &pm) {
        if (options.prune)
          pm.addPass(createPruneLayersPass(*options.prune));
        if (failed(addPassHooks(pm, hooks, ExtensionPoint::Frontend, error)))
          return failure();
        buildFrontendCostsPipeline(pm);
        return success();
      })))
    return failure();
  if (emit == EmitKind::Mlir)
    return success();

  const bool cuda = !options.gpuArch.empty();
  CpuPipelineOptions cpuOptions;
  cpuOptions.vectorize = options.vectorize;
  cpuOptions.gpuTiling = options.emulateGpuTiling;
  if (!cuda && (emit == EmitKind::Llvm || emit == EmitKind::Artifact)) {
    // Register tiles are sized for the CPU the kernels are compiled for.
    std::string targetError;
    FailureOr<CpuRegisterFile> registers =
        getCpuRegisterFile(options.target, targetError);
    if (failed(registers)) {
      error = "no LLVM target for this machine: " + targetError;
      return failure();
    }
    cpuOptions.registerBits = registers->registerBits;
    cpuOptions.vectorRegisters = registers->registers;
    cpuOptions.bf16 = options.bf16;
    cpuOptions.bf16Dot = registers->bf16Dot;
  }

  // Each entry point is planned on its own copy of the module (train_step
  // first goes through moe-train); the plans and their kernels, named per
  // entry, are then gathered into one module.
  result.plan =
      ModuleOp::create(result.module->getLoc(), result.module->getName());
  // The plan keeps the module's attributes (moe.spec), as a pipeline run on
  // the module would.
  for (NamedAttribute attr : (*result.module)->getDiscardableAttrs())
    (*result.plan)->setAttr(attr.getName(), attr.getValue());
  for (const std::string &entry : options.entries) {
    OwningOpRef<ModuleOp> copy = result.module->clone();
    progress("plan: " + entry);
    CpuPipelineOptions planOptions;
    planOptions.entry = entry;
    planOptions.kernelPrefix = kernelPrefixFor(entry);
    planOptions.fuseRouting = options.fuseRouting;
    if (failed(runPipeline(*copy, [&](OpPassManager &pm) {
          LogicalResult hooked = success();
          if (entry == "train_step") {
            TrainPipelineOptions trainOptions;
            trainOptions.fuseRouting = options.fuseRouting;
            buildTrainPipeline(
                pm, trainOptions, [&](OpPassManager &trainPm) {
                  hooked = addPassHooks(trainPm, hooks,
                                        ExtensionPoint::Autodiff, error);
                });
          }
          buildCpuPlanPipeline(pm, planOptions);
          return hooked;
        })))
      return failure();
    for (Operation &op : llvm::make_early_inc_range(copy->getOps())) {
      op.remove();
      result.plan->push_back(&op);
    }
  }
  if (hasPassHooks(hooks, ExtensionPoint::Plan) &&
      failed(runPipeline(*result.plan, [&](OpPassManager &pm) {
        return addPassHooks(pm, hooks, ExtensionPoint::Plan, error);
      })))
    return failure();
  if (emit == EmitKind::Plan)
    return success();
  if (cuda)
    return compileCuda(spec, specJson, options, result, runPipeline, progress);

  progress("codegen: kernels to the LLVM dialect (register tiles for " +
           Twine(cpuOptions.vectorRegisters) + " x " +
           Twine(cpuOptions.registerBits) + "-bit vector registers" +
           (!options.bf16          ? ")"
            : cpuOptions.bf16Dot ? "; bf16 GEMMs on AVX512-BF16 dot products)"
                                 : "; bf16 GEMMs as f32 FMAs: this CPU has no "
                                   "AVX512-BF16)"));
  result.kernels = result.plan->clone();
  if (failed(runPipeline(*result.kernels, [&](OpPassManager &pm) {
        buildCpuCodegenPipeline(pm, cpuOptions);
        return success();
      })))
    return failure();
  if (emit == EmitKind::Llvm)
    return success();

  progress("codegen: native code for " + Twine(options.target.cpu == "native"
                                                   ? "this machine's CPU"
                                                   : options.target.cpu));
  FailureOr<moec::CpuKernelLibrary> library =
      buildCpuKernelLibrary(*result.kernels, options.target);
  if (failed(library))
    return failure();
  FailureOr<std::string> bytes = buildArtifact(
      *result.plan, options.entries,
      modelInfo(spec, options, *library, specJson), library->sharedObject);
  if (failed(bytes))
    return failure();
  result.artifact = std::move(*bytes);
  return success();
}
} // namespace

LogicalResult moec::driver::writeOutput(StringRef path, EmitKind emit,
                                        const CompileResult &result,
                                        std::string &error) {
  if (llvm::Error err =
          llvm::writeToOutput(path, [&](llvm::raw_ostream &os) -> llvm::Error {
            switch (emit) {
            case EmitKind::Mlir:
              result.module.get().print(os);
              os << "\n";
              break;
            case EmitKind::Plan:
              result.plan.get().print(os);
              os << "\n";
              break;
            case EmitKind::Llvm:
              result.kernels.get().print(os);
              os << "\n";
              break;
            case EmitKind::Artifact:
              os << result.artifact;
              break;
            }
            return llvm::Error::success();
          })) {
    error =
        "cannot write '" + path.str() + "': " + llvm::toString(std::move(err));
    return failure();
  }
  return success();
}
