//===- moec.cpp - the moec compiler driver --------------------------------===//
//
//   moec compile SPEC [-o OUT] [--emit=mlir|plan|llvm|artifact]
//                [--target=cpu] [--batch N]
//
// Parses and validates the spec, builds the moe module, and depending on
// --emit prints it (mlir), lowers it to a plan of per-image kernels with a
// memory plan (plan), compiles the kernels to the LLVM dialect (llvm), or
// builds the whole .moec artifact (artifact: manifest, plan and a native
// kernel library; the default). Exit codes: 0 success, 1 compile or I/O
// failure, 2 bad spec or bad usage. The output file is created only once
// everything succeeded, so a failure never leaves a partial file and never
// touches an existing one.
//
// The usual MLIR debug flags work (--mlir-print-ir-after-all,
// --mlir-print-debuginfo, --mlir-timing, ...).
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Frontend/Spec.h"
#include "moec/Frontend/SpecToMoE.h"
#include "moec/Passes/ArtifactWriter.h"
#include "moec/Passes/CpuTarget.h"
#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/Timing.h"
#include "mlir/Debug/CLOptionsSetup.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
namespace cl = llvm::cl;

namespace {
enum class EmitKind { Mlir, Plan, Llvm, Artifact };
enum class TargetKind { Cpu };

cl::list<std::string> positional(cl::Positional, cl::desc("compile <spec.json>"));
cl::opt<std::string> outputFilename("o", cl::desc("Output file ('-' = stdout)"),
                                    cl::value_desc("file"), cl::init("-"));
cl::opt<EmitKind> emit(
    "emit", cl::desc("What to produce"), cl::init(EmitKind::Artifact),
    cl::values(
        clEnumValN(EmitKind::Mlir, "mlir", "the verified moe module"),
        clEnumValN(EmitKind::Plan, "plan",
                   "the plan: per-image kernels and arena offsets (MLIR)"),
        clEnumValN(EmitKind::Llvm, "llvm",
                   "the kernels in the LLVM dialect (MLIR)"),
        clEnumValN(EmitKind::Artifact, "artifact",
                   "the .moec artifact (needs -o)")));
cl::opt<TargetKind> target(
    "target", cl::desc("Where the artifact runs"), cl::init(TargetKind::Cpu),
    cl::values(clEnumValN(TargetKind::Cpu, "cpu",
                          "native x86-64 code for the compiling machine's CPU")));
cl::opt<std::string> dumpLLVMIR(
    "dump-llvm-ir", cl::desc("Also write the optimized LLVM IR of the kernels"),
    cl::value_desc("file"), cl::init(""));
cl::opt<std::string> entriesOpt(
    "entries",
    cl::desc("Comma-separated entry points to compile: infer, train_step, eval"),
    cl::init("infer,train_step,eval"));
cl::opt<bool> vectorizeOpt(
    "vectorize", cl::desc("Tile and vectorize the kernels (default on)"),
    cl::init(true));
cl::opt<int64_t> codegenThreads(
    "codegen-threads",
    cl::desc("Threads for LLVM's optimization and code generation of the "
             "kernels (default 0: one per core, at most 8; the MLIR passes "
             "use the context's threads, see --mlir-disable-threading)"),
    cl::init(0));
cl::opt<int64_t> batch("batch",
                       cl::desc("Images per call of the entry functions "
                                "(default: the spec's /train/batch)"),
                       cl::init(0));

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int usageError(const llvm::Twine &message) {
  llvm::errs() << "moec: error: " << message
               << "\nusage: moec compile SPEC [-o OUT] "
                  "[--emit=mlir|plan|llvm|artifact] [--target=cpu] [--batch N]\n"
                  "       [--entries=infer,train_step,eval]\n";
  return kExitUsage;
}
} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  registerAsmPrinterCLOptions();
  registerDefaultTimingManagerCLOptions();
  tracing::DebugConfig::registerCLOptions();
  cl::ParseCommandLineOptions(argc, argv, "moec: vision MoE compiler\n");

  // Copy the options: the in-process linker resets llvm::cl options when it
  // runs, so their values are read once, here.
  const std::string outputPath = outputFilename;
  const EmitKind emitKind = emit;
  const int64_t batchSize = batch;
  const bool vectorizeKernels = vectorizeOpt;
  SmallVector<std::string> entries;
  {
    SmallVector<StringRef> parts;
    StringRef(entriesOpt).split(parts, ',', -1, /*KeepEmpty=*/false);
    for (StringRef e : parts) {
      e = e.trim();
      if (e != "infer" && e != "train_step" && e != "eval")
        return usageError("unknown entry point '" + e +
                          "' in --entries (expected infer, train_step, eval)");
      if (llvm::is_contained(entries, e.str()))
        return usageError("entry point '" + e + "' is listed twice in --entries");
      entries.push_back(e.str());
    }
    if (entries.empty())
      return usageError("--entries names no entry point");
    if (entries.front() != "infer")
      return usageError("--entries must list infer first (every artifact "
                        "has it)");
  }
  moec::CpuTargetOptions targetOptions;
  targetOptions.dumpLLVMIRPath = dumpLLVMIR;
  if (codegenThreads < 0 || codegenThreads > 1024)
    return usageError("--codegen-threads must be in [0, 1024], got " +
                      llvm::Twine(codegenThreads.getValue()));
  targetOptions.threads = static_cast<unsigned>(codegenThreads);

  if (positional.empty())
    return usageError("missing command");
  if (positional[0] != "compile")
    return usageError("unknown command '" + positional[0] + "'");
  if (positional.size() != 2)
    return usageError("'compile' takes exactly one spec file");
  if (batchSize < 0)
    return usageError("--batch must be >= 1, got " + llvm::Twine(batchSize));
  if (emitKind == EmitKind::Artifact && outputPath == "-")
    return usageError("--emit=artifact writes a binary file: give -o FILE");

  moec::spec::ParseResult parsed = moec::spec::parseSpecFile(positional[1]);
  if (!parsed) {
    llvm::errs() << "moec: error: " << parsed.error->str() << "\n";
    return kExitUsage;
  }

  // The lowering uses upstream dialects whose bufferization and LLVM
  // conversion live in external interface models: register them all.
  DialectRegistry registry;
  registerAllDialects(registry);
  registerAllExtensions(registry);
  registry.insert<moec::moe::MoEDialect>();
  MLIRContext context(registry);
  moec::SpecToMoEOptions options;
  options.batch = batchSize;
  OwningOpRef<ModuleOp> module =
      moec::buildMoEModule(context, *parsed.spec, options);
  if (!module)
    return kExitFailure;

  auto runPipeline = [&](ModuleOp op,
                         llvm::function_ref<void(OpPassManager &)> build) {
    PassManager pm(&context);
    if (failed(applyPassManagerCLOptions(pm)))
      return failure();
    applyDefaultTimingPassManagerCLOptions(pm);
    build(pm);
    return pm.run(op);
  };
  if (failed(runPipeline(*module, [](OpPassManager &pm) {
        pm.addPass(moec::createAnnotateCostsPass());
      })))
    return kExitFailure;

  std::string artifactBytes;
  moec::CpuPipelineOptions cpuOptions;
  cpuOptions.vectorize = vectorizeKernels;
  if (emitKind == EmitKind::Llvm || emitKind == EmitKind::Artifact) {
    // Register tiles are sized for the CPU the kernels are compiled for.
    std::string error;
    FailureOr<moec::CpuRegisterFile> registers =
        moec::getCpuRegisterFile(targetOptions, error);
    if (failed(registers)) {
      llvm::errs() << "moec: error: no LLVM target for this machine: " << error
                   << "\n";
      return kExitFailure;
    }
    cpuOptions.registerBits = registers->registerBits;
    cpuOptions.vectorRegisters = registers->registers;
  }
  OwningOpRef<ModuleOp> kernels;
  // Each entry point is planned on its own copy of the module (train_step
  // first goes through moe-autodiff); the plans and their kernels, named
  // per entry, are then gathered into one module.
  OwningOpRef<ModuleOp> plan;
  if (emitKind != EmitKind::Mlir) {
    plan = ModuleOp::create(module->getLoc(), module->getName());
    for (const std::string &entry : entries) {
      OwningOpRef<ModuleOp> copy = module->clone();
      moec::CpuPipelineOptions options;
      options.entry = entry;
      options.kernelPrefix = entry == "infer" ? "moec_k" : entry + "_k";
      if (failed(runPipeline(*copy, [&](OpPassManager &pm) {
            if (entry == "train_step") {
              pm.addPass(moec::createAutodiffPass());
              // Recount: the backward pass and the update are linalg ops.
              pm.addPass(moec::createAnnotateCostsPass());
            }
            moec::buildCpuPlanPipeline(pm, options);
          })))
        return kExitFailure;
      for (Operation &op : llvm::make_early_inc_range(copy->getOps())) {
        op.remove();
        plan->push_back(&op);
      }
    }
  }
  if (emitKind == EmitKind::Llvm || emitKind == EmitKind::Artifact) {
    kernels = plan->clone();
    if (failed(runPipeline(*kernels, [&](OpPassManager &pm) {
          moec::buildCpuCodegenPipeline(pm, cpuOptions);
        })))
      return kExitFailure;
  }
  if (emitKind == EmitKind::Artifact) {
    FailureOr<moec::CpuKernelLibrary> library =
        moec::buildCpuKernelLibrary(*kernels, targetOptions);
    if (failed(library))
      return kExitFailure;
    const moec::spec::Spec &spec = *parsed.spec;
    moec::ArtifactModelInfo info;
    info.model = spec.name;
    info.channels = spec.model.input.channels;
    info.height = spec.model.input.height;
    info.width = spec.model.input.width;
    info.classes = spec.model.classes;
    info.datasetKind = moec::spec::toString(spec.data.dataset);
    info.datasetPath = spec.data.path;
    info.targetCpu = library->cpu;
    info.targetFeatures = library->features;
    if (llvm::is_contained(entries, "train_step")) {
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
      train.batch = batchSize > 0 ? batchSize : t.batch;
      train.epochs = t.epochs;
      train.labelSmoothing = t.labelSmoothing;
      train.seed = t.seed;
      train.cropPadding = spec.data.cropPadding;
      train.horizontalFlip = spec.data.horizontalFlip;
      info.train = train;
    }
    auto specText = llvm::MemoryBuffer::getFile(positional[1]);
    if (specText)
      info.specJson = (*specText)->getBuffer().str();
    FailureOr<std::string> bytes =
        moec::buildArtifact(*plan, entries, info, library->sharedObject);
    if (failed(bytes))
      return kExitFailure;
    artifactBytes = std::move(*bytes);
  }

  // Written to a temporary file and renamed into place ('-' is stdout).
  if (llvm::Error err = llvm::writeToOutput(
          outputPath, [&](llvm::raw_ostream &os) -> llvm::Error {
            switch (emitKind) {
            case EmitKind::Mlir:
              module->print(os);
              os << "\n";
              break;
            case EmitKind::Plan:
              plan->print(os);
              os << "\n";
              break;
            case EmitKind::Llvm:
              kernels->print(os);
              os << "\n";
              break;
            case EmitKind::Artifact:
              os << artifactBytes;
              break;
            }
            return llvm::Error::success();
          })) {
    llvm::errs() << "moec: error: cannot write '" << outputPath
                 << "': " << llvm::toString(std::move(err)) << "\n";
    return kExitFailure;
  }
  return 0;
}
