//===- Plugin.cpp - the plugin's entry point ------------------------------===//
//
// moec and moec-opt dlopen the plugin (--load-pass-plugin) and call
// mlirGetPassPluginInfo, whose callback registers the plugin's passes.
//
//===----------------------------------------------------------------------===//

#include "CapTopK/Passes.h"

#include "mlir/Tools/Plugins/PassPlugin.h"
#include "llvm/Config/llvm-config.h"

extern "C" LLVM_ATTRIBUTE_WEAK mlir::PassPluginLibraryInfo
mlirGetPassPluginInfo() {
  return {MLIR_PLUGIN_API_VERSION, "MoECapTopK", LLVM_VERSION_STRING,
          []() { captopk::registerCapTopKPasses(); }};
}
