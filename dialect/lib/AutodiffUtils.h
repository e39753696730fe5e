//===- AutodiffUtils.h - helpers of the moe ops' VJPs -----------*- C++ -*-===//
//
// Scalar arithmetic for linalg bodies and the small pieces that the VJP
// files of the dialect share (MoEAutodiff.cpp, LossAutodiff.cpp,
// L2Normalize.cpp). Private to the dialect library.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DIALECT_LIB_AUTODIFFUTILS_H
#define MOEC_DIALECT_LIB_AUTODIFFUTILS_H

#include "moec/Dialect/MoE/TensorBuilder.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/IR/Operation.h"

namespace moec::moe::detail {

inline mlir::Value c32(mlir::OpBuilder &b, mlir::Location l, double v) {
  return mlir::arith::ConstantOp::create(b, l, b.getF32FloatAttr(v));
}
inline mlir::Value mulf(mlir::OpBuilder &b, mlir::Location l, mlir::Value x,
                        mlir::Value y) {
  return mlir::arith::MulFOp::create(b, l, x, y);
}
inline mlir::Value addf(mlir::OpBuilder &b, mlir::Location l, mlir::Value x,
                        mlir::Value y) {
  return mlir::arith::AddFOp::create(b, l, x, y);
}
inline mlir::Value subf(mlir::OpBuilder &b, mlir::Location l, mlir::Value x,
                        mlir::Value y) {
  return mlir::arith::SubFOp::create(b, l, x, y);
}

/// No incoming gradient: every operand's gradient is null. Sets `out` to
/// one null entry per operand and returns whether all of `dys` are null.
inline bool noGradient(mlir::Operation *op, llvm::ArrayRef<mlir::Value> dys,
                       llvm::SmallVectorImpl<mlir::Value> &out) {
  out.assign(op->getNumOperands(), mlir::Value());
  return llvm::all_of(dys, [](mlir::Value v) { return !v; });
}

/// logits + s * noise.
inline mlir::Value addNoise(TensorBuilder &tb, mlir::Value logits,
                            mlir::Value noise, double s) {
  return tb.elementwise({logits, noise}, [&](mlir::OpBuilder &nb, mlir::Location nl, mlir::ValueRange a) {
    return addf(nb, nl, a[0], mulf(nb, nl, a[1], c32(nb, nl, s)));
  });
}

} // namespace moec::moe::detail

#endif // MOEC_DIALECT_LIB_AUTODIFFUTILS_H
