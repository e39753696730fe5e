//===- MoEDialect.cpp - moe dialect ---------------------------------------===//

#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"

using namespace mlir;
using namespace moec::moe;

#include "moec/Dialect/MoE/MoEDialect.cpp.inc"

void MoEDialect::initialize() {
  addOperations<
#define GET_OP_LIST
#include "moec/Dialect/MoE/MoEOps.cpp.inc"
      >();
}
