//===- moec.cpp - the moec compiler driver --------------------------------===//
//
//   moec compile SPEC [-o OUT] [--emit=mlir] [--batch N]
//
// Parses and validates the spec, builds the moe module, runs the compile
// pipeline and writes the result. Exit codes: 0 success, 1 compile or I/O
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
#include "moec/Passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/Timing.h"
#include "mlir/Debug/CLOptionsSetup.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

using namespace mlir;
namespace cl = llvm::cl;

namespace {
enum class EmitKind { Mlir };

cl::list<std::string> positional(cl::Positional, cl::desc("compile <spec.json>"));
cl::opt<std::string> outputFilename("o", cl::desc("Output file ('-' = stdout)"),
                                    cl::value_desc("file"), cl::init("-"));
cl::opt<EmitKind> emit(
    "emit", cl::desc("What to produce"), cl::init(EmitKind::Mlir),
    cl::values(clEnumValN(EmitKind::Mlir, "mlir",
                          "the verified moe module (textual MLIR)")));
cl::opt<int64_t> batch("batch",
                       cl::desc("Images per call of the entry functions "
                                "(default: the spec's /train/batch)"),
                       cl::init(0));

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

int usageError(const llvm::Twine &message) {
  llvm::errs() << "moec: error: " << message
               << "\nusage: moec compile SPEC [-o OUT] [--emit=mlir] "
                  "[--batch N]\n";
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

  if (positional.empty())
    return usageError("missing command");
  if (positional[0] != "compile")
    return usageError("unknown command '" + positional[0] + "'");
  if (positional.size() != 2)
    return usageError("'compile' takes exactly one spec file");
  if (batch < 0)
    return usageError("--batch must be >= 1, got " + llvm::Twine(batch));

  moec::spec::ParseResult parsed = moec::spec::parseSpecFile(positional[1]);
  if (!parsed) {
    llvm::errs() << "moec: error: " << parsed.error->str() << "\n";
    return kExitUsage;
  }

  DialectRegistry registry;
  registry.insert<moec::moe::MoEDialect, func::FuncDialect>();
  MLIRContext context(registry);
  moec::SpecToMoEOptions options;
  options.batch = batch;
  OwningOpRef<ModuleOp> module =
      moec::buildMoEModule(context, *parsed.spec, options);
  if (!module)
    return kExitFailure;

  PassManager pm(&context);
  if (failed(applyPassManagerCLOptions(pm)))
    return kExitUsage;
  applyDefaultTimingPassManagerCLOptions(pm);
  pm.addPass(moec::createAnnotateCostsPass());
  if (failed(pm.run(*module)))
    return kExitFailure;

  // Written to a temporary file and renamed into place ('-' is stdout).
  if (llvm::Error err = llvm::writeToOutput(
          outputFilename, [&](llvm::raw_ostream &os) -> llvm::Error {
            module->print(os);
            os << "\n";
            return llvm::Error::success();
          })) {
    llvm::errs() << "moec: error: cannot write '" << outputFilename
                 << "': " << llvm::toString(std::move(err)) << "\n";
    return kExitFailure;
  }
  return 0;
}
