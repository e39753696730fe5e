//===- CpuTarget.cpp - native code for the CPU kernels --------------------===//

#include "moec/Passes/CpuTarget.h"

#include "mlir/Target/LLVMIR/Dialect/Builtin/BuiltinToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Dialect/LLVMIR/LLVMToLLVMIRTranslation.h"
#include "mlir/Target/LLVMIR/Export.h"

#include "lld/Common/Driver.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Bitcode/BitcodeReader.h"
#include "llvm/Bitcode/BitcodeWriter.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/Verifier.h"
#include "llvm/MC/MCSubtargetInfo.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/TargetSelect.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/Host.h"
#include "llvm/Transforms/Utils/Cloning.h"
#include "llvm/Transforms/Utils/SplitModule.h"

#include <memory>
#include <mutex>
#include <thread>

LLD_HAS_DRIVER(elf)

using namespace mlir;
using namespace moec;

namespace {
/// Kernel names: a prefix ending in `_k` (`moec_k` for infer, `<entry>_k`
/// for the other entry points) and a number.
bool isKernelName(llvm::StringRef name) {
  size_t k = name.rfind("_k");
  if (k == llvm::StringRef::npos || k + 2 == name.size())
    return false;
  return llvm::all_of(name.drop_front(k + 2), llvm::isDigit);
}

/// Renames every defined kernel function to `*_impl` (internal) and adds
/// the exported entry `void name(void **args, int64_t begin, int64_t end)`
/// that unpacks the buffer pointers.
void addEntryWrappers(llvm::Module &m) {
  llvm::LLVMContext &ctx = m.getContext();
  SmallVector<llvm::Function *> kernels;
  for (llvm::Function &f : m)
    if (!f.isDeclaration() && isKernelName(f.getName()))
      kernels.push_back(&f);
  auto *ptrTy = llvm::PointerType::getUnqual(ctx);
  auto *i64Ty = llvm::Type::getInt64Ty(ctx);
  auto *entryTy = llvm::FunctionType::get(llvm::Type::getVoidTy(ctx),
                                          {ptrTy, i64Ty, i64Ty}, false);
  for (llvm::Function *impl : kernels) {
    std::string name = impl->getName().str();
    impl->setName(name + "_impl");
    impl->setLinkage(llvm::GlobalValue::InternalLinkage);
    auto *entry = llvm::Function::Create(
        entryTy, llvm::GlobalValue::ExternalLinkage, name, m);
    entry->setVisibility(llvm::GlobalValue::DefaultVisibility);
    llvm::IRBuilder<> b(llvm::BasicBlock::Create(ctx, "entry", entry));
    llvm::Value *args = entry->getArg(0);
    SmallVector<llvm::Value *> callArgs;
    unsigned numParams = impl->getFunctionType()->getNumParams();
    // Buffers first (pointers), then begin and end.
    for (unsigned i = 0; i + 2 < numParams; ++i) {
      llvm::Value *slot = b.CreateConstGEP1_64(ptrTy, args, i);
      callArgs.push_back(b.CreateLoad(ptrTy, slot));
    }
    callArgs.push_back(entry->getArg(1));
    callArgs.push_back(entry->getArg(2));
    b.CreateCall(impl, callArgs);
    b.CreateRetVoid();
  }
}

std::unique_ptr<llvm::TargetMachine>
createTargetMachine(const CpuTargetOptions &options, std::string &error,
                    std::string &cpuName, std::vector<std::string> &enabled) {
  static std::once_flag once;
  std::call_once(once, [] {
    llvm::InitializeNativeTarget();
    llvm::InitializeNativeTargetAsmPrinter();
  });
  llvm::Triple triple(llvm::sys::getDefaultTargetTriple());
  const llvm::Target *target =
      llvm::TargetRegistry::lookupTarget(triple, error);
  if (!target)
    return nullptr;
  std::string cpu = options.cpu;
  std::string features;
  if (cpu == "native") {
    cpu = llvm::sys::getHostCPUName().str();
    for (auto &feature : llvm::sys::getHostCPUFeatures()) {
      features += (feature.second ? "+" : "-") + feature.first().str() + ",";
      if (feature.second)
        enabled.push_back(feature.first().str());
    }
    llvm::sort(enabled);
  }
  if (options.cpu != "native") {
    // Checked first: LLVM only warns about an unknown CPU and goes on.
    std::unique_ptr<llvm::MCSubtargetInfo> probe(
        target->createMCSubtargetInfo(triple, "", ""));
    if (!probe || !probe->isCPUStringValid(cpu)) {
      error = "unknown CPU '" + cpu + "'";
      return nullptr;
    }
  }
  cpuName = cpu;
  llvm::TargetOptions targetOptions;
  std::unique_ptr<llvm::TargetMachine> tm(target->createTargetMachine(
      triple, cpu, features, targetOptions, llvm::Reloc::PIC_,
      llvm::CodeModel::Small, llvm::CodeGenOptLevel::Aggressive));
  if (tm && options.cpu != "native") {
    const llvm::MCSubtargetInfo *sti = tm->getMCSubtargetInfo();
    // The ISA extensions the named CPU has: the features the host's
    // detection knows (ISA, not tuning flags) that the CPU model enables.
    llvm::StringMap<bool> isa = llvm::sys::getHostCPUFeatures();
    for (const llvm::SubtargetFeatureKV &kv : sti->getAllProcessorFeatures())
      if (isa.count(kv.Key) && sti->getFeatureBits().test(kv.Value))
        enabled.push_back(kv.Key);
    llvm::sort(enabled);
  }
  return tm;
}

void optimize(llvm::Module &m, llvm::TargetMachine &tm) {
  llvm::LoopAnalysisManager lam;
  llvm::FunctionAnalysisManager fam;
  llvm::CGSCCAnalysisManager cgam;
  llvm::ModuleAnalysisManager mam;
  llvm::PipelineTuningOptions tuning;
  tuning.LoopVectorization = true;
  tuning.SLPVectorization = true;
  llvm::PassBuilder pb(&tm, tuning);
  pb.registerModuleAnalyses(mam);
  pb.registerCGSCCAnalyses(cgam);
  pb.registerFunctionAnalyses(fam);
  pb.registerLoopAnalyses(lam);
  pb.crossRegisterProxies(lam, fam, cgam, mam);
  llvm::ModulePassManager mpm =
      pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3);
  mpm.run(m, mam);
}

/// Removes the files it names when it goes out of scope.
struct TempFiles {
  SmallVector<std::string> paths;
  ~TempFiles() {
    for (const std::string &p : paths)
      llvm::sys::fs::remove(p);
  }
};
} // namespace

LogicalResult moec::checkCpuName(StringRef cpu, std::string &error) {
  if (cpu == "native")
    return success();
  std::string ignored;
  std::vector<std::string> features;
  CpuTargetOptions options;
  options.cpu = cpu.str();
  if (createTargetMachine(options, error, ignored, features))
    return success();
  error += " (an x86-64 level such as x86-64-v3 (AVX2) or x86-64-v4 "
           "(AVX-512), or a CPU such as znver3, znver4, skylake-avx512, "
           "sapphirerapids; host: " +
           llvm::sys::getHostCPUName().str() + ")";
  return failure();
}

FailureOr<CpuRegisterFile>
moec::getCpuRegisterFile(const CpuTargetOptions &options, std::string &error) {
  std::string cpuName;
  std::vector<std::string> enabled;
  std::unique_ptr<llvm::TargetMachine> tm =
      createTargetMachine(options, error, cpuName, enabled);
  if (!tm)
    return failure();
  const llvm::MCSubtargetInfo *sti = tm->getMCSubtargetInfo();
  CpuRegisterFile file;
  if (sti->checkFeatures("+avx512f"))
    file = {512, 32};
  else if (sti->checkFeatures("+avx"))
    file = {256, 16};
  file.bf16Dot = sti->checkFeatures("+avx512bf16");
  return file;
}

FailureOr<CpuKernelLibrary>
moec::buildCpuKernelLibrary(ModuleOp module, const CpuTargetOptions &options) {
  CpuKernelLibrary library;
  DialectRegistry registry;
  registerBuiltinDialectTranslation(registry);
  registerLLVMDialectTranslation(registry);
  module.getContext()->appendDialectRegistry(registry);

  llvm::LLVMContext llvmContext;
  std::unique_ptr<llvm::Module> llvmModule =
      translateModuleToLLVMIR(module, llvmContext, "moec_kernels");
  if (!llvmModule)
    return module.emitError() << "cannot translate the kernels to LLVM IR";
  addEntryWrappers(*llvmModule);

  std::string error;
  std::unique_ptr<llvm::TargetMachine> tm =
      createTargetMachine(options, error, library.cpu, library.features);
  if (!tm)
    return module.emitError() << "no LLVM target for this machine: " << error;
  llvmModule->setDataLayout(tm->createDataLayout());
  llvmModule->setTargetTriple(tm->getTargetTriple());
  if (llvm::verifyModule(*llvmModule, &llvm::errs()))
    return module.emitError() << "generated LLVM IR does not verify";

  // The kernels do not call each other (a wrapper calls its own kernel), so
  // the module splits into independent parts: each is optimized and
  // compiled on its own thread, in its own LLVMContext, into its own object
  // file. One part when the optimized IR is to be dumped.
  unsigned parts = options.threads > 0
                       ? options.threads
                       : std::max(1u, std::thread::hardware_concurrency());
  if (!options.dumpLLVMIRPath.empty() || !options.dumpAsmPath.empty())
    parts = 1;
  parts = std::min<unsigned>(
      {parts, 8u, static_cast<unsigned>(llvmModule->size())});
  parts = std::max(parts, 1u);

  TempFiles temps;
  SmallVector<std::string> objPaths;
  for (unsigned i = 0; i < parts; ++i) {
    SmallString<128> path;
    if (auto ec = llvm::sys::fs::createTemporaryFile("moec-kernels", "o", path))
      return module.emitError() << "cannot create a temporary file: "
                                << ec.message();
    temps.paths.push_back(path.str().str());
    objPaths.push_back(path.str().str());
  }
  // Optimizes and compiles one module into objPaths[i]; an error message on
  // failure.
  auto compile = [&](llvm::Module &m, llvm::TargetMachine &machine,
                     unsigned i) -> std::string {
    optimize(m, machine);
    if (!options.dumpLLVMIRPath.empty()) {
      std::error_code ec;
      llvm::raw_fd_ostream os(options.dumpLLVMIRPath, ec);
      if (!ec)
        m.print(os, nullptr);
    }
    std::error_code ec;
    if (!options.dumpAsmPath.empty()) {
      // From a copy: code generation rewrites the module it runs on.
      std::unique_ptr<llvm::Module> copy = llvm::CloneModule(m);
      llvm::raw_fd_ostream os(options.dumpAsmPath, ec);
      if (ec)
        return "cannot write " + options.dumpAsmPath + ": " + ec.message();
      // Loop nests and spills annotated as comments, as llc writes them.
      machine.Options.MCOptions.AsmVerbose = true;
      llvm::legacy::PassManager asmgen;
      if (machine.addPassesToEmitFile(asmgen, os, nullptr,
                                      llvm::CodeGenFileType::AssemblyFile))
        return "the target cannot emit assembly";
      asmgen.run(*copy);
    }
    llvm::raw_fd_ostream os(objPaths[i], ec);
    if (ec)
      return "cannot write " + objPaths[i] + ": " + ec.message();
    llvm::legacy::PassManager codegen;
    if (machine.addPassesToEmitFile(codegen, os, nullptr,
                                    llvm::CodeGenFileType::ObjectFile))
      return "the target cannot emit object files";
    codegen.run(m);
    return "";
  };
  if (parts == 1) {
    if (std::string e = compile(*llvmModule, *tm, 0); !e.empty())
      return module.emitError() << e;
  } else {
    // Parts travel as bitcode: an LLVMContext is not shared across threads.
    // Internal symbols stay in the part of their users (a kernel stays with
    // the wrapper that calls it and is inlined there, as in one module);
    // round-robin keeps the parts about equal in size.
    SmallVector<SmallString<0>> bitcode;
    llvm::SplitModule(
        *llvmModule, parts,
        [&](std::unique_ptr<llvm::Module> part) {
          SmallString<0> &buf = bitcode.emplace_back();
          llvm::raw_svector_ostream os(buf);
          llvm::WriteBitcodeToFile(*part, os);
        },
        /*PreserveLocals=*/true, /*RoundRobin=*/true);
    if (bitcode.size() > objPaths.size())
      return module.emitError()
             << "splitting the kernels gave " << bitcode.size()
             << " modules, expected at most " << objPaths.size();
    SmallVector<std::string> errors(bitcode.size());
    std::vector<std::thread> threads;
    for (unsigned i = 0; i < bitcode.size(); ++i)
      threads.emplace_back([&, i] {
        llvm::LLVMContext context;
        llvm::Expected<std::unique_ptr<llvm::Module>> part =
            llvm::parseBitcodeFile(
                llvm::MemoryBufferRef(bitcode[i].str(), "moec_kernels"),
                context);
        if (!part) {
          errors[i] = llvm::toString(part.takeError());
          return;
        }
        std::string error, cpuName;
        std::vector<std::string> enabled;
        std::unique_ptr<llvm::TargetMachine> machine =
            createTargetMachine(options, error, cpuName, enabled);
        errors[i] = machine ? compile(**part, *machine, i) : error;
      });
    for (std::thread &t : threads)
      t.join();
    objPaths.resize(bitcode.size());
    for (const std::string &e : errors)
      if (!e.empty())
        return module.emitError() << "compiling the kernels failed: " << e;
  }

  SmallString<128> soPath;
  if (auto ec = llvm::sys::fs::createTemporaryFile("moec-kernels", "so", soPath))
    return module.emitError() << "cannot create a temporary file: "
                              << ec.message();
  temps.paths.push_back(soPath.str().str());

  std::string linkLog;
  llvm::raw_string_ostream linkOut(linkLog);
  SmallVector<const char *> args = {"ld.lld",      "-shared", "--gc-sections",
                                    "-z",          "now",     "-z",
                                    "noexecstack", "-o",      soPath.c_str()};
  for (const std::string &obj : objPaths)
    args.push_back(obj.c_str());
  lld::Result result = lld::lldMain(args, linkOut, linkOut,
                                    {{lld::Gnu, &lld::elf::link}});
  if (result.retCode != 0)
    return module.emitError() << "linking the kernel library failed: "
                              << linkLog;

  auto buffer = llvm::MemoryBuffer::getFile(soPath, /*IsText=*/false);
  if (!buffer)
    return module.emitError() << "cannot read the linked kernel library: "
                              << buffer.getError().message();
  library.sharedObject = (*buffer)->getBuffer().str();
  return library;
}
