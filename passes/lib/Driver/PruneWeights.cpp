//===- PruneWeights.cpp - the weights of a pruned model -------------------===//
//
// moec prune compiles a spec through moe-prune-layers; this writes the
// weights the pruned model reads: every parameter of the pruned module,
// copied by name from the unpruned model's weights, or, for the dense
// FFNs the pass made, computed as its `moe.carry_over` says.
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/Driver.h"
#include "moec/Dialect/MoE/MoEDialect.h"
#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Runtime/SafeTensors.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/StringSet.h"

using namespace mlir;
using namespace moec;

namespace {
std::string shapeText(ArrayRef<int64_t> shape) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(shape))
    s += (i ? ", " : "") + std::to_string(d);
  return s + "]";
}
} // namespace

LogicalResult moec::driver::writePrunedWeights(ModuleOp module,
                                               const std::string &weightsIn,
                                               const std::string &weightsOut,
                                               std::string &error) {
  rt::Expected<rt::SafeTensors> in = rt::readSafeTensors(weightsIn);
  if (!in) {
    error = in.error().message();
    return failure();
  }
  // Every parameter once, in the order the infer function reads them.
  std::vector<rt::Tensor> out;
  llvm::StringSet<> seen;
  auto infer = module.lookupSymbol<func::FuncOp>("infer");
  if (!infer) {
    error = "the pruned module has no infer function";
    return failure();
  }
  WalkResult walked = infer.walk([&](moe::ParamOp param) {
    if (!seen.insert(param.getName()).second)
      return WalkResult::advance();
    auto type = cast<RankedTensorType>(param.getType());
    std::vector<int64_t> shape(type.getShape().begin(), type.getShape().end());
    const std::string name = param.getName().str();
    DictionaryAttr carry =
        moe::MoEDialect::CarryOverAttrHelper(module.getContext())
            .getAttr(param);
    if (!carry) {
      const rt::Tensor *t = in->find(name);
      if (!t) {
        error = weightsIn + ": no tensor '" + name + "', a parameter of the "
                "model (are these the weights of the spec's model?)";
        return WalkResult::interrupt();
      }
      if (t->shape != shape) {
        error = weightsIn + ": tensor '" + name + "' is " +
                shapeText(t->shape) + ", but the model's parameter is " +
                shapeText(shape);
        return WalkResult::interrupt();
      }
      out.push_back(*t);
      return WalkResult::advance();
    }
    // sum over e of coefficients[e] * source[e, ...].
    std::string source = cast<StringAttr>(carry.get("source")).str();
    ArrayRef<double> coefficients =
        cast<DenseF64ArrayAttr>(carry.get("coefficients")).asArrayRef();
    std::vector<int64_t> sourceShape{int64_t(coefficients.size())};
    sourceShape.insert(sourceShape.end(), shape.begin(), shape.end());
    const rt::Tensor *t = in->find(source);
    if (!t || t->shape != sourceShape) {
      error = weightsIn + ": " +
              (t ? "tensor '" + source + "' is " + shapeText(t->shape) +
                       ", expected " + shapeText(sourceShape)
                 : "no tensor '" + source + "'") +
              " (the experts '" + name + "' is made from)";
      return WalkResult::interrupt();
    }
    const size_t n = size_t(type.getNumElements());
    std::vector<float> values(n, 0.0f);
    for (size_t e = 0; e < coefficients.size(); ++e) {
      if (coefficients[e] == 0)
        continue;
      const float *from = t->data.data() + e * n;
      for (size_t i = 0; i < n; ++i)
        values[i] += float(coefficients[e] * double(from[i]));
    }
    out.emplace_back(name, shape, std::move(values));
    return WalkResult::advance();
  });
  if (walked.wasInterrupted())
    return failure();
  std::vector<rt::TensorRef> refs;
  for (const rt::Tensor &t : out)
    refs.emplace_back(t.name, t.shape, t.data.data());
  if (rt::Error e = rt::writeSafeTensors(weightsOut, refs,
                                         {{"pruned_from", weightsIn}})) {
    error = e.message();
    return failure();
  }
  return success();
}
