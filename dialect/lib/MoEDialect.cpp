//===- MoEDialect.cpp - moe dialect ---------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"

#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace moec::moe;

#include "moec/Dialect/MoE/MoEDialect.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "moec/Dialect/MoE/MoEAttrs.cpp.inc"

void MoEDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "moec/Dialect/MoE/MoEOps.cpp.inc"
      >();
  addAttributes<
#define GET_ATTRDEF_LIST
#include "moec/Dialect/MoE/MoEAttrs.cpp.inc"
      >();
}

/// The discardable `moe.*` attributes: each declared name with its type.
LogicalResult MoEDialect::verifyOperationAttribute(Operation *op,
                                                   NamedAttribute attr) {
  StringRef name = attr.getName().getValue();
  Attribute value = attr.getValue();
  auto expect = [&](bool ok, StringRef what) -> LogicalResult {
    if (ok)
      return success();
    return op->emitOpError()
           << "expects '" << name << "' to be " << what << ", got " << value;
  };
  auto isInt = [&] { return isa<IntegerAttr>(value); };
  if (name == NameAttrHelper::getNameStr() ||
      name == RoleAttrHelper::getNameStr() ||
      name == SpecAttrHelper::getNameStr() ||
      name == OpAttrHelper::getNameStr() ||
      name == GpuMapAttrHelper::getNameStr() ||
      name == GpuMmaAttrHelper::getNameStr())
    return expect(isa<StringAttr>(value), "a string");
  if (name == FlopsAttrHelper::getNameStr() ||
      name == ParamsAttrHelper::getNameStr() ||
      name == ActiveParamsAttrHelper::getNameStr() ||
      name == TilesAttrHelper::getNameStr() ||
      name == FusedAttrHelper::getNameStr() ||
      name == ArenaOffsetAttrHelper::getNameStr() ||
      name == ArenaBytesAttrHelper::getNameStr() ||
      name == ParamOffsetAttrHelper::getNameStr() ||
      name == ParamBytesAttrHelper::getNameStr() ||
      name == ScratchBytesAttrHelper::getNameStr())
    return expect(isInt(), "an integer");
  if (name == KernelScratchAttrHelper::getNameStr()) {
    auto dict = dyn_cast<DictionaryAttr>(value);
    return expect(dict && llvm::all_of(dict, [](NamedAttribute entry) {
                    return isa<IntegerAttr>(entry.getValue());
                  }),
                  "a dictionary of integers");
  }
  if (name == StateAttrHelper::getNameStr() ||
      name == UpdateAttrHelper::getNameStr() ||
      name == KernelAttrHelper::getNameStr() ||
      name == Bf16PairsAttrHelper::getNameStr() ||
      name == Fp32AttrHelper::getNameStr())
    return expect(isa<UnitAttr>(value), "a unit attribute");
  if (name == OptimizerAttrHelper::getNameStr())
    return expect(isa<OptimizerAttr>(value), "a #moe.optimizer");
  if (name == ParallelAttrHelper::getNameStr())
    return expect(isa<KernelParallelismAttr>(value), "a #moe.parallelism");
  if (name == CarryOverAttrHelper::getNameStr()) {
    auto dict = dyn_cast<DictionaryAttr>(value);
    return expect(dict && isa_and_nonnull<StringAttr>(dict.get("source")) &&
                      isa_and_nonnull<DenseF64ArrayAttr>(
                          dict.get("coefficients")),
                  "{source = \"name\", coefficients = array<f64: ...>}");
  }
  if (name == PrunedLayersAttrHelper::getNameStr()) {
    auto array = dyn_cast<ArrayAttr>(value);
    return expect(array && llvm::all_of(array, [](Attribute a) {
                    return isa<DictionaryAttr>(a);
                  }),
                  "an array of dictionaries");
  }
  return op->emitOpError() << "has unknown moe dialect attribute '" << name
                           << "'";
}
