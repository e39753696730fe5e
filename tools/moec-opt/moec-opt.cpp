//===- moec-opt.cpp - mlir-opt with the moe dialect -----------------------===//
//
// MlirOptMain with every upstream dialect, extension and pass, plus the moe
// dialect and moec's passes and pipelines, the stages of moec compile
// included (moe-frontend-costs, moe-train, moe-cpu-plan, moe-cpu-codegen).
// `--load-pass-plugin=lib.so` and `--load-dialect-plugin=lib.so` load user
// extensions.
//
//===----------------------------------------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Driver/Pipelines.h"
#include "moec/Passes/Passes.h"
#include "moec/Passes/Pipelines.h"

#include "mlir/IR/DialectRegistry.h"
#include "mlir/InitAllDialects.h"
#include "mlir/InitAllExtensions.h"
#include "mlir/InitAllPasses.h"
#include "mlir/Target/LLVMIR/Dialect/All.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"

int main(int argc, char **argv) {
  mlir::registerAllPasses();
  moec::registerMoEPasses();
  moec::registerMoEPipelines();
  moec::driver::registerDriverPipelines();

  mlir::DialectRegistry registry;
  mlir::registerAllDialects(registry);
  mlir::registerAllExtensions(registry);
  registry.insert<moec::moe::MoEDialect>();
  // gpu-module-to-binary (moe-cuda-codegen's output to PTX) translates the
  // gpu.module to LLVM IR.
  mlir::registerAllToLLVMIRTranslations(registry);

  return mlir::asMainReturnCode(mlir::MlirOptMain(
      argc, argv, "moec optimizer driver: the moe dialect and passes\n",
      registry));
}
