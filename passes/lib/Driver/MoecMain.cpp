//===- MoecMain.cpp - moec's command line ---------------------------------===//
//
//   moec compile SPEC.json|MODEL.mlir [-o OUT]
//                [--emit=mlir|plan|llvm|artifact] [--target=cpu|cuda]
//                [--target-cpu=host|x86-64-v3|x86-64-v4|CPU]
//                [--gpu-arch=sm_80|sm_90a] [--batch N]
//                [--entries=infer,train_step,eval,analyze] [--quiet]
//                [--load-pass-plugin=LIB.so]...
//                [--run-passes=POINT:PIPELINE]...
//   moec prune SPEC.json|MODEL.mlir --weights W (--profile P |
//              --prune-layers NAMES) -o OUT.moec [--weights-out OUT_W]
//              [--threshold T] [--criterion image-nmi|token-nmi]
//              [--replacement top|mean] [the compile options]
//   moec --list-passes [--load-pass-plugin=LIB.so]...
//
// Parses and validates the spec, builds the moe module, and depending on
// --emit prints it (mlir), lowers it to a plan of per-image kernels with a
// memory plan (plan), compiles the kernels to the LLVM dialect (llvm), or
// builds the whole .moec artifact (artifact: manifest, plan and a native
// kernel library; the default). MODEL.mlir is moe IR as --emit=mlir
// prints it (possibly edited): it is compiled from that IR, with the spec
// it keeps (moe.spec). Progress lines go to stderr (--quiet: none).
// --load-pass-plugin loads passes from a
// plugin (as in mlir-opt) and --run-passes runs a pass pipeline at one of
// the extension points of moec/Driver/Pipelines.h. Exit codes (as
// moec-run's, docs/spec.md#exit-codes): 0 success, 1 compile, internal or
// output failure, 2 bad usage or input (flags, plugins, pipelines, a spec
// that is unreadable, invalid, over a limit or too big for this machine's
// memory, unparsable IR). The output file is created only once everything
// succeeded, so a failure never leaves a partial file and never touches an
// existing one.
//
// The usual MLIR debug flags work (--mlir-print-ir-after-all,
// --mlir-print-debuginfo, --mlir-timing, ...).
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/MoecMain.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Driver/Driver.h"
#include "moec/Driver/Pipelines.h"
#include "moec/Frontend/Spec.h"
#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/Debug/CLOptionsSetup.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Pass/PassRegistry.h"
#include "mlir/Support/Timing.h"
#include "mlir/Tools/Plugins/PassPlugin.h"

#include "moec/Passes/CpuTarget.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>

using namespace mlir;
using namespace moec::driver;
namespace cl = llvm::cl;

namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int usageError(const llvm::Twine &message) {
  llvm::errs()
      << "moec: error: " << message
      << "\nusage: moec compile SPEC.json|MODEL.mlir [-o OUT] "
         "[--emit=mlir|plan|llvm|artifact]\n"
         "       [--target=cpu] [--target-cpu=host|x86-64-v3|x86-64-v4|CPU] "
         "[--batch N] [--quiet]\n"
         "       [--target=cuda [--gpu-arch=sm_80|sm_90a]]\n"
         "       [--entries=infer,train_step,eval,analyze]\n"
         "       [--load-pass-plugin=LIB.so]... "
         "[--run-passes=POINT:PIPELINE]...\n"
         "       moec prune SPEC.json|MODEL.mlir --weights W (--profile P | "
         "--prune-layers NAMES)\n"
         "             -o OUT.moec [--weights-out W2] [--threshold T] "
         "[--criterion image-nmi|token-nmi]\n"
         "             [--replacement top|mean] [the compile options]\n"
         "       moec --list-passes [--load-pass-plugin=LIB.so]...\n";
  return kExitUsage;
}

/// A plugin loaded by --load-pass-plugin.
struct LoadedPlugin {
  std::string path, name, version;
};

/// moec's own options: the only ones `moec --help` shows (MLIR's and LLVM's
/// are under --help-hidden and work as usual).
cl::OptionCategory &moecCategory() {
  static cl::OptionCategory category("moec options");
  return category;
}

/// moec's command-line options, registered while an instance lives.
struct Options {
  cl::list<std::string> positional{cl::Positional,
                                   cl::desc("compile <spec.json | model.mlir>"),
                                   cl::cat(moecCategory())};
  cl::opt<std::string> outputFilename{
      "o", cl::desc("Output file ('-' = stdout)"), cl::value_desc("file"),
      cl::init("-"), cl::cat(moecCategory())};
  cl::opt<EmitKind> emit{
      "emit", cl::desc("What to produce"), cl::init(EmitKind::Artifact),
      cl::cat(moecCategory()),
      cl::values(
          clEnumValN(EmitKind::Mlir, "mlir", "the verified moe module"),
          clEnumValN(EmitKind::Plan, "plan",
                     "the plan: per-image kernels and arena offsets (MLIR)"),
          clEnumValN(EmitKind::Llvm, "llvm",
                     "the kernels in the LLVM dialect (MLIR)"),
          clEnumValN(EmitKind::Artifact, "artifact",
                     "the .moec artifact (needs -o)"))};
  cl::opt<std::string> target{
      "target",
      cl::desc("Where the artifact runs: cpu (x86-64 native code) or cuda "
               "(NVIDIA GPUs: PTX through the gpu and NVVM dialects)"),
      cl::value_desc("cpu|cuda"), cl::init("cpu"), cl::cat(moecCategory())};
  cl::opt<std::string> gpuArch{
      "gpu-arch",
      cl::desc("--target=cuda: the GPU the kernels are compiled for: sm_80 "
               "(A100, the default) or sm_90a (H100, H200)"),
      cl::value_desc("sm_80|sm_90a"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> dumpPtx{
      "dump-ptx", cl::desc("--target=cuda: also write the kernels' PTX"),
      cl::value_desc("file"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<bool> emulateGpuTiling{
      "emulate-gpu-tiling",
      cl::desc("--target=cpu: compile the kernels with the cuda target's "
               "tiling (warp tiles of bf16 tensor-core GEMMs, thread-parallel "
               "loops) instead of the CPU's vectorization, to check the GPU "
               "kernels' tiling and numerics on a machine without a GPU "
               "(slow)"),
      cl::init(false), cl::cat(moecCategory())};
  cl::opt<std::string> targetCpu{
      "target-cpu",
      cl::desc("The CPU the kernels are compiled for: host (the compiling "
               "machine, the default), an x86-64 level (x86-64-v3: AVX2, "
               "x86-64-v4: AVX-512) or an LLVM CPU name (znver4, "
               "sapphirerapids, ...); the artifact records it and runs on "
               "CPUs that have its ISA"),
      cl::value_desc("cpu"), cl::init("host"), cl::cat(moecCategory())};
  cl::opt<std::string> dumpLLVMIR{
      "dump-llvm-ir",
      cl::desc("Also write the optimized LLVM IR of the kernels"),
      cl::value_desc("file"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> dumpAsm{
      "dump-asm",
      cl::desc("Also write the kernels' assembly for the target CPU"),
      cl::value_desc("file"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> entries{
      "entries",
      cl::desc(
          "Comma-separated entry points to compile: infer, train_step, "
          "eval, analyze"),
      cl::init("infer,train_step,eval,analyze"), cl::cat(moecCategory())};
  cl::opt<bool> vectorize{
      "vectorize", cl::desc("Tile and vectorize the kernels (default on)"),
      cl::init(true), cl::cat(moecCategory())};
  cl::opt<bool> noFuse{
      "no-fuse",
      cl::desc("Keep every MoE layer's router, dispatch, experts and combine "
               "as separate kernels (no moe-fuse-routing): the unfused "
               "path, for comparison"),
      cl::init(false), cl::cat(moecCategory())};
  cl::opt<std::string> precision{
      "precision",
      cl::desc("fp32 (default) or bf16: the matmuls, attention and expert "
               "GEMMs multiply bf16 values and accumulate in fp32 "
               "(AVX512-BF16 where the target CPU has it); weights, "
               "optimizer state and every other op stay fp32"),
      cl::value_desc("fp32|bf16"), cl::init("fp32"), cl::cat(moecCategory())};
  cl::opt<int64_t> codegenThreads{
      "codegen-threads",
      cl::desc("Threads for LLVM's optimization and code generation of the "
               "kernels (default 0: one per core, at most 8)"),
      cl::init(0), cl::cat(moecCategory())};
  cl::opt<std::string> batch{
      "batch",
      cl::desc("Images per call of the entry functions (default: the "
               "spec's /train/batch)"),
      cl::value_desc("N"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<bool> quiet{"quiet",
                      cl::desc("No progress lines on stderr, errors only"),
                      cl::init(false), cl::cat(moecCategory())};

  // moec prune.
  cl::opt<std::string> profile{
      "profile",
      cl::desc("prune: the routing profile (moec-run analyze's "
               "profile.json)"),
      cl::value_desc("profile.json"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> weights{
      "weights",
      cl::desc("prune: the unpruned model's weights (a weights file or a "
               "checkpoint file)"),
      cl::value_desc("W.safetensors"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> weightsOut{
      "weights-out",
      cl::desc("prune: where the pruned model's weights go (default: -o's "
               "path with .safetensors for .moec)"),
      cl::value_desc("file"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> threshold{
      "threshold",
      cl::desc("prune: prune the layers whose criterion is below this "
               "(default 0.05)"),
      cl::value_desc("T"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> criterion{
      "criterion", cl::desc("prune: image-nmi (default) or token-nmi"),
      cl::value_desc("name"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> replacement{
      "replacement",
      cl::desc("prune: for a layer without a shared expert, top (the "
               "most-used expert, default) or mean (the load-weighted "
               "average of the experts)"),
      cl::value_desc("top|mean"), cl::init(""), cl::cat(moecCategory())};
  cl::opt<std::string> pruneLayers{
      "prune-layers",
      cl::desc("prune: prune exactly these layers (comma-separated, e.g. "
               "blocks.1.moe) instead of the profile's criterion"),
      cl::value_desc("names"), cl::init(""), cl::cat(moecCategory())};

  // User passes. Plugins load while the command line is parsed (as in
  // mlir-opt), so their passes are registered before anything names them.
  std::vector<LoadedPlugin> plugins;
  std::string pluginError;
  cl::list<std::string> passPlugins{
      "load-pass-plugin",
      cl::desc("Load passes from a pass plugin library (repeatable); run "
               "them with --run-passes"),
      cl::value_desc("lib.so"), cl::cat(moecCategory()),
      cl::callback([this](const std::string &path) {
        llvm::Expected<PassPlugin> plugin = PassPlugin::load(path);
        if (!plugin) {
          if (pluginError.empty())
            pluginError = "--load-pass-plugin=" + path + ": " +
                          llvm::toString(plugin.takeError());
          else
            llvm::consumeError(plugin.takeError());
          return;
        }
        plugin->registerPassRegistryCallbacks();
        plugins.push_back({path, plugin->getPluginName().str(),
                           plugin->getPluginVersion().str()});
      })};
  cl::list<std::string> runPasses{
      "run-passes",
      cl::desc("Run a pass pipeline at an extension point of the standard "
               "pipeline: <point>:<pipeline>, the pipeline as in mlir-opt's "
               "--pass-pipeline, on builtin.module (repeatable; points: "
               "frontend, autodiff, plan; see --list-passes)"),
      cl::value_desc("point:pipeline"), cl::cat(moecCategory())};
  cl::opt<bool> listPasses{
      "list-passes",
      cl::desc("List the stages of moec compile, the extension points, the "
               "loaded plugins and every registered pass and pipeline, then "
               "exit"),
      cl::cat(moecCategory())};
};

void listPasses(const Options &options) {
  llvm::raw_ostream &os = llvm::outs();
  printStages(os);
  os << "\nPass plugins (--load-pass-plugin):\n";
  if (options.plugins.empty())
    os << "  none loaded\n";
  for (const LoadedPlugin &plugin : options.plugins)
    os << "  " << plugin.name << " " << plugin.version << " (" << plugin.path
       << ")\n";
  os << "\n";
  os.flush();
  // mlir::printRegisteredPasses() leaves out the pipelines; the parser of a
  // pass-pipeline option prints both, as mlir-opt --help does. With no
  // argument name its help line is the heading.
  PassPipelineCLParser registered(
      "", "Registered passes and pass pipelines (moec's, upstream MLIR's and "
          "the plugins'), as --run-passes and moec-opt name them:");
  // Its option is registered under every pass's name: find it by its help.
  for (const auto &entry : cl::getRegisteredOptions()) {
    cl::Option *opt = entry.second;
    if (!opt->hasArgStr() && opt->HelpStr.starts_with("Registered passes")) {
      opt->printOptionInfo(opt->getOptionWidth());
      return;
    }
  }
  printRegisteredPasses();
}
} // namespace

int moec::driver::moecMain(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  // Every pass a --run-passes pipeline may name; plugins add theirs.
  registerAllPasses();
  moec::registerMoEPasses();
  moec::registerMoEPipelines();
  registerDriverPipelines();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  registerAsmPrinterCLOptions();
  registerDefaultTimingManagerCLOptions();
  tracing::DebugConfig::registerCLOptions();
  Options cli;
  // --help shows moec's options; MLIR's (--mlir-print-ir-after-all,
  // --mlir-timing, ...) and LLVM's work as usual and show in --help-hidden.
  cl::HideUnrelatedOptions(moecCategory());
  const char *overview =
      "moec: compiles a vision MoE model spec (or its moe IR) into a .moec "
      "artifact\n\n"
      "  moec compile SPEC.json -o model.moec\n"
      "  moec compile SPEC.json --emit=mlir -o model.mlir   (then edit it, or "
      "run passes on it)\n"
      "  moec compile model.mlir -o model.moec\n"
      "  moec prune SPEC.json --profile profile.json --weights W.safetensors "
      "-o pruned.moec\n\n"
      "MLIR's debugging options (--mlir-print-ir-after-all, --mlir-timing, "
      "...) are listed by --help-hidden.\n";
  // A malformed option (--emit=exe, --codegen-threads=x) is a usage error:
  // exit 2, where cl would exit 1 by itself.
  if (!cl::ParseCommandLineOptions(argc, argv, overview, &llvm::errs()))
    return usageError("bad command line (see moec --help)");

  if (!cli.pluginError.empty())
    return usageError(cli.pluginError);
  if (cli.listPasses) {
    listPasses(cli);
    return 0;
  }

  // Copy the options: the in-process linker resets llvm::cl options when it
  // runs, so their values are read once, here.
  CompileOptions options;
  const std::string outputPath = cli.outputFilename;
  options.emit = cli.emit;
  options.vectorize = cli.vectorize;
  options.fuseRouting = !cli.noFuse;
  if (cli.precision != "fp32" && cli.precision != "bf16")
    return usageError("--precision=" + cli.precision +
                      ": unknown precision; precisions: fp32, bf16");
  options.bf16 = cli.precision == "bf16";
  const bool quiet = cli.quiet;
  if (cli.target != "cpu" && cli.target != "cuda")
    return usageError("--target=" + cli.target +
                      ": unknown target; targets: cpu, cuda");
  if (cli.target == "cuda") {
    options.gpuArch = cli.gpuArch.empty() ? std::string("sm_80")
                                          : cli.gpuArch.getValue();
    if (!moec::isSupportedGpuArch(options.gpuArch))
      return usageError("--gpu-arch=" + cli.gpuArch +
                        ": unknown GPU architecture; expected sm_80 or sm_90a");
    if (options.bf16)
      return usageError("--precision=bf16: the cuda target always runs its "
                        "GEMMs in bf16 (with fp32 accumulation); leave "
                        "--precision out");
    if (cli.emulateGpuTiling)
      return usageError("--emulate-gpu-tiling compiles the cuda target's "
                        "tiling for the CPU: use it with --target=cpu");
    if (!cli.dumpAsm.empty() || !cli.dumpLLVMIR.empty())
      return usageError("--dump-asm and --dump-llvm-ir are for the cpu "
                        "target; --target=cuda writes its PTX with "
                        "--dump-ptx");
  } else {
    if (!cli.gpuArch.empty())
      return usageError("--gpu-arch=" + cli.gpuArch +
                        " needs --target=cuda");
    if (!cli.dumpPtx.empty())
      return usageError("--dump-ptx needs --target=cuda");
    if (cli.emulateGpuTiling && options.bf16)
      return usageError("--emulate-gpu-tiling has the cuda target's bf16 "
                        "GEMMs already; leave --precision out");
  }
  options.emulateGpuTiling = cli.emulateGpuTiling;
  options.dumpPtxPath = cli.dumpPtx;
  options.target.cpu = cli.targetCpu == "host" ? std::string("native")
                                               : cli.targetCpu.getValue();
  {
    std::string cpuError;
    if (failed(moec::checkCpuName(options.target.cpu, cpuError)))
      return usageError("--target-cpu=" + cli.targetCpu + ": " + cpuError);
  }
  if (!cli.batch.empty()) {
    StringRef text(cli.batch);
    if (text.getAsInteger(10, options.batch) || options.batch < 1)
      return usageError("--batch must be an integer >= 1, got '" + text + "'");
    if (options.batch > moec::spec::limits::kMaxBatch)
      return usageError(
          "--batch must be <= " + llvm::Twine(moec::spec::limits::kMaxBatch) +
          ", got " + text);
  }
  options.entries.clear();
  {
    SmallVector<StringRef> parts;
    StringRef(cli.entries).split(parts, ',', -1, /*KeepEmpty=*/false);
    for (StringRef e : parts) {
      e = e.trim();
      if (e != "infer" && e != "train_step" && e != "eval" && e != "analyze")
        return usageError("unknown entry point '" + e +
                          "' in --entries (expected infer, train_step, eval, "
                          "analyze)");
      if (llvm::is_contained(options.entries, e.str()))
        return usageError("entry point '" + e +
                          "' is listed twice in --entries");
      options.entries.push_back(e.str());
    }
    if (options.entries.empty())
      return usageError("--entries names no entry point");
    if (options.entries.front() != "infer")
      return usageError("--entries must list infer first (every artifact "
                        "has it)");
  }
  options.target.dumpLLVMIRPath = cli.dumpLLVMIR;
  options.target.dumpAsmPath = cli.dumpAsm;
  if (cli.codegenThreads < 0 || cli.codegenThreads > 1024)
    return usageError("--codegen-threads must be in [0, 1024], got " +
                      llvm::Twine(cli.codegenThreads.getValue()));
  options.target.threads = static_cast<unsigned>(cli.codegenThreads);

  if (cli.positional.empty())
    return usageError("missing command");
  const bool prune = cli.positional[0] == "prune";
  if (cli.positional[0] != "compile" && !prune)
    return usageError("unknown command '" + cli.positional[0] + "'");
  if (cli.positional.size() != 2)
    return usageError("'" + cli.positional[0] +
                      "' takes exactly one spec file");
  std::string weightsOutPath;
  const std::string weightsInPath = cli.weights;
  if (prune) {
    if (cli.weights.empty())
      return usageError("prune needs --weights W (the unpruned model's)");
    if (cli.profile.empty() && cli.pruneLayers.empty())
      return usageError("prune needs --profile P (moec-run analyze's "
                        "profile.json) or --prune-layers NAMES");
    if (options.emit != EmitKind::Artifact && options.emit != EmitKind::Mlir)
      return usageError("prune writes an artifact or, with --emit=mlir, "
                        "the pruned moe IR");
    if (outputPath == "-")
      return usageError("prune needs -o FILE");
    PruneLayersPassOptions pruneOptions;
    pruneOptions.profile = cli.profile;
    if (!cli.threshold.empty()) {
      double t = 0;
      if (StringRef(cli.threshold).getAsDouble(t) || !(t >= 0 && t <= 1))
        return usageError("--threshold must be a number in [0, 1], got '" +
                          cli.threshold + "'");
      pruneOptions.threshold = t;
    }
    if (!cli.criterion.empty()) {
      if (cli.criterion != "image-nmi" && cli.criterion != "token-nmi")
        return usageError("--criterion must be image-nmi or token-nmi, got '" +
                          cli.criterion + "'");
      pruneOptions.criterion = cli.criterion;
    }
    if (!cli.replacement.empty()) {
      if (cli.replacement != "top" && cli.replacement != "mean")
        return usageError("--replacement must be top or mean, got '" +
                          cli.replacement + "'");
      pruneOptions.replacement = cli.replacement;
    }
    SmallVector<StringRef> names;
    StringRef(cli.pruneLayers).split(names, ',', -1, /*KeepEmpty=*/false);
    for (StringRef name : names)
      pruneOptions.layers.push_back(name.trim().str());
    options.prune = pruneOptions;
    weightsOutPath = cli.weightsOut;
    if (weightsOutPath.empty()) {
      StringRef out(outputPath);
      weightsOutPath =
          (out.ends_with(".moec") ? out.drop_back(5) : out).str() +
          ".safetensors";
    }
    if (weightsOutPath == outputPath)
      return usageError("--weights-out must differ from -o");
  } else if (!cli.profile.empty() || !cli.weights.empty() ||
             !cli.weightsOut.empty() || !cli.threshold.empty() ||
             !cli.criterion.empty() || !cli.replacement.empty() ||
             !cli.pruneLayers.empty()) {
    return usageError("--profile, --weights, --weights-out, --threshold, "
                      "--criterion, --replacement and --prune-layers belong "
                      "to 'moec prune'");
  }
  if (options.emit == EmitKind::Artifact && outputPath == "-")
    return usageError("--emit=artifact writes a binary file: give -o FILE");
  for (const std::string &value : cli.runPasses) {
    std::string error;
    std::optional<PassHook> hook = parsePassHook(value, error);
    if (!hook)
      return usageError(error);
    // A point the compile does not reach runs nothing: say so.
    bool reached = true;
    if (hook->point != ExtensionPoint::Frontend &&
        options.emit == EmitKind::Mlir)
      reached = false;
    if (hook->point == ExtensionPoint::Autodiff &&
        !llvm::is_contained(options.entries, "train_step"))
      reached = false;
    if (!reached)
      llvm::errs()
          << "moec: warning: --run-passes=" << value
          << ": this compile does not reach the '"
          << stringifyExtensionPoint(hook->point)
          << "' point (--emit, --entries); the pipeline does not run\n";
    options.passHooks.push_back(std::move(*hook));
  }
  const std::string specPath = cli.positional[1];

  const bool fromIR = StringRef(specPath).ends_with(".mlir");
  if (fromIR && options.batch > 0)
    return usageError("--batch does not apply to moe IR: its images per call "
                      "are the IR's (give --batch when printing it with "
                      "--emit=mlir)");
  moec::spec::ParseResult parsed;
  std::string specJson;
  if (!fromIR) {
    parsed = moec::spec::parseSpecFile(specPath);
    if (!parsed) {
      llvm::errs() << "moec: error: " << parsed.error->str() << "\n";
      return kExitUsage;
    }
    // Before any IR exists: the batch and the entries chosen must fit in
    // this machine's memory.
    int64_t batch =
        options.batch > 0 ? options.batch : parsed.spec->train.batch;
    bool training = llvm::is_contained(options.entries, "train_step");
    std::optional<moec::spec::SpecError> tooBig =
        moec::spec::checkRoutingGroups(*parsed.spec, batch);
    if (!tooBig)
      tooBig = moec::spec::checkMemory(*parsed.spec, batch, training);
    if (tooBig) {
      // The batch of --batch is not in the file: name the flag instead.
      if (options.batch > 0)
        llvm::errs() << "moec: error: " << specPath << ": --batch "
                     << options.batch << ": " << tooBig->message << "\n";
      else
        llvm::errs() << "moec: error: " << tooBig->str() << "\n";
      return kExitUsage;
    }
    // The manifest and the moe module keep the spec's text.
    if (auto text = llvm::MemoryBuffer::getFile(specPath))
      specJson = (*text)->getBuffer().str();
  }

  DialectRegistry registry;
  registerCompilerDialects(registry);
  MLIRContext context(registry);
  options.setupPassManager = [](PassManager &pm) -> LogicalResult {
    if (failed(applyPassManagerCLOptions(pm)))
      return failure();
    applyDefaultTimingPassManagerCLOptions(pm);
    return success();
  };
  auto start = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                         start)
        .count();
  };
  if (!quiet)
    options.progress = [&](StringRef stage) {
      llvm::errs() << llvm::format("moec: [%5.1f s] ", elapsed()) << stage
                   << "\n";
    };

  // moe-prune-layers' errors are about its inputs (the profile, the layers
  // named, the model they are applied to): bad input, exit 2.
  bool pruneInputError = false;
  std::optional<ScopedDiagnosticHandler> pruneDiagnostics;
  if (prune)
    pruneDiagnostics.emplace(&context, [&](Diagnostic &diag) {
      if (StringRef(diag.str()).starts_with("moe-prune-layers:"))
        pruneInputError = true;
      return failure(); // printed by the next handler
    });

  CompileResult result;
  std::string error;
  LogicalResult compiled = failure();
  // Diagnostics on IR input (moec compile model.mlir) name file:line:col
  // and show the line.
  llvm::SourceMgr sourceMgr;
  std::optional<SourceMgrDiagnosticHandler> diagnostics;
  if (fromIR) {
    diagnostics.emplace(sourceMgr, &context);
    std::string readError;
    std::unique_ptr<llvm::MemoryBuffer> file =
        openInputFile(specPath, &readError);
    if (!file) {
      llvm::errs() << "moec: error: " << readError << "\n";
      return kExitUsage;
    }
    sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
    OwningOpRef<ModuleOp> module =
        parseSourceFile<ModuleOp>(sourceMgr, &context);
    if (!module)
      return kExitUsage;
    if (options.progress)
      options.progress("read moe IR from " + specPath);
    compiled =
        compileModule(context, std::move(module), options, result, error);
    if (failed(compiled) && !error.empty()) {
      llvm::errs() << "moec: error: " << specPath << ": " << error << "\n";
      return kExitUsage;
    }
  } else {
    compiled = compile(context, *parsed.spec, specJson, options, result, error);
  }
  if (failed(compiled)) {
    if (!error.empty())
      llvm::errs() << "moec: error: " << error << "\n";
    return pruneInputError ? kExitUsage : kExitFailure;
  }
  // The pruned model's weights first: a weights error (exit 2) leaves no
  // artifact behind.
  if (prune) {
    ArrayAttr pruned =
        moe::MoEDialect::PrunedLayersAttrHelper(&context).getAttr(
            *result.module);
    if (!pruned || pruned.empty()) {
      llvm::errs() << "moec: warning: no MoE layer is below the threshold: "
                      "the model is unchanged\n";
    } else if (!quiet) {
      std::string list;
      for (Attribute entry : pruned) {
        auto dict = cast<DictionaryAttr>(entry);
        auto text = [&](StringRef key) {
          auto s = dyn_cast_or_null<StringAttr>(dict.get(key));
          return s ? s.str() : std::string("?");
        };
        list += (list.empty() ? "" : ", ") + text("layer") + " (" +
                text("replacement") + ")";
      }
      llvm::errs() << llvm::format("moec: [%5.1f s] pruned ", elapsed())
                   << list << "\n";
    }
    if (failed(writePrunedWeights(*result.module, weightsInPath,
                                  weightsOutPath, error))) {
      llvm::errs() << "moec: error: " << error << "\n";
      return kExitUsage;
    }
    if (!quiet)
      llvm::errs() << llvm::format("moec: [%5.1f s] wrote ", elapsed())
                   << weightsOutPath << "\n";
  }
  if (failed(writeOutput(outputPath, options.emit, result, error))) {
    llvm::errs() << "moec: error: " << error << "\n";
    return kExitFailure;
  }
  if (!quiet && outputPath != "-") {
    uint64_t size = 0;
    (void)llvm::sys::fs::file_size(outputPath, size);
    llvm::errs() << llvm::format("moec: [%5.1f s] wrote ", elapsed())
                 << outputPath << " (" << size << " bytes)\n";
  }
  return 0;
}
