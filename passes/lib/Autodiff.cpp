//===- Autodiff.cpp - moe-autodiff ----------------------------------------===//
//
// Builds the `train_step` entry from `train_forward`: the forward ops, a
// reverse sweep that asks every op for its vector-Jacobian product
// (DifferentiableOpInterface), the global gradient norm, the learning-rate
// schedule and the optimizer update, which writes the parameters and the
// optimizer state in place. Everything stays on tensors, so the backward pass
// and the update go through the same kernel lowering as the forward pass.
//
//===----------------------------------------------------------------------===//

#include "moec/Passes/Passes.h"

#include "moec/Dialect/MoE/MoEOps.h"
#include "moec/Dialect/MoE/TensorBuilder.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/MapVector.h"

#include <cmath>

namespace moec {
#define GEN_PASS_DEF_AUTODIFFPASS
#include "moec/Passes/Passes.h.inc"
} // namespace moec

using namespace mlir;
using namespace moec;
using namespace moec::moe;

namespace {
struct OptimizerConfig {
  std::string kind = "adamw";
  double weightDecay = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double momentum = 0.9, gradClip = 0, minLrRatio = 0;
  bool cosine = true;
};

OptimizerConfig readConfig(func::FuncOp fn) {
  OptimizerConfig c;
  OptimizerAttr o =
      MoEDialect::OptimizerAttrHelper(fn.getContext()).getAttr(fn);
  if (!o)
    return c;
  c.kind = stringifyOptimizerKind(o.getKind()).str();
  c.cosine = o.getSchedule() == ScheduleKind::Cosine;
  c.weightDecay = o.getWeightDecay().getValueAsDouble();
  c.beta1 = o.getBeta1().getValueAsDouble();
  c.beta2 = o.getBeta2().getValueAsDouble();
  c.eps = o.getEps().getValueAsDouble();
  c.momentum = o.getMomentum().getValueAsDouble();
  c.gradClip = o.getGradClip().getValueAsDouble();
  c.minLrRatio = o.getMinLrRatio().getValueAsDouble();
  return c;
}

Value cf(OpBuilder &b, Location l, double v) {
  return arith::ConstantOp::create(b, l, b.getF32FloatAttr(v));
}

struct AutodiffPass : public moec::impl::AutodiffPassBase<AutodiffPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto fwd = module.lookupSymbol<func::FuncOp>(forward);
    if (!fwd) {
      module.emitError() << "no forward function '" << forward << "'";
      return signalPassFailure();
    }
    if (auto old = module.lookupSymbol<func::FuncOp>(entry))
      old.erase();
    OpBuilder b(module.getContext());
    b.setInsertionPointAfter(fwd);
    auto fn = cast<func::FuncOp>(b.clone(*fwd));
    fn.setSymName(entry);
    fn->removeAttr(MoEDialect::OptimizerAttrHelper::getNameStr());
    OptimizerConfig config = readConfig(fwd);
    Location loc = fn.getLoc();
    auto scalar = RankedTensorType::get({}, b.getF32Type());

    auto ret = cast<func::ReturnOp>(fn.getBody().front().getTerminator());
    if (ret.getNumOperands() < 4) {
      fwd.emitError() << "expects results (loss, ce_loss, aux_loss, correct, ...)";
      return signalPassFailure();
    }
    // Hyper-parameters of the step are inputs.
    SmallVector<Value> hyper;
    for (StringRef name : {"step", "total_steps", "warmup_steps", "lr"}) {
      unsigned idx = fn.getNumArguments();
      if (failed(fn.insertArgument(idx, scalar, {}, loc)))
        return signalPassFailure();
      fn.setArgAttr(idx, MoEDialect::NameAttrHelper::getNameStr(),
                    b.getStringAttr(name));
      hyper.push_back(fn.getArgument(idx));
    }

    b.setInsertionPoint(ret);
    TensorBuilder tb(b, loc);
    Value loss = ret.getOperand(0);

    // Reverse sweep.
    DenseMap<Value, Value> grads;
    grads[loss] = tb.fill({}, 1.0);
    SmallVector<Operation *> forwardOps;
    for (Operation &op : fn.getBody().front().without_terminator())
      forwardOps.push_back(&op);
    for (Operation *op : llvm::reverse(forwardOps)) {
      SmallVector<Value> dys;
      bool any = false;
      for (Value r : op->getResults()) {
        dys.push_back(grads.lookup(r));
        any |= !!dys.back();
      }
      if (!any || isa<ParamOp>(op))
        continue;
      auto diff = dyn_cast<DifferentiableOpInterface>(op);
      if (!diff) {
        op->emitOpError() << "is on the path to the loss but has no "
                             "vector-Jacobian product";
        return signalPassFailure();
      }
      SmallVector<Value> operandGrads;
      if (failed(diff.buildVJP(b, dys, operandGrads)))
        return signalPassFailure();
      for (auto [operand, g] : llvm::zip(op->getOperands(), operandGrads)) {
        if (!g || isa<BlockArgument>(operand))
          continue;
        Value &acc = grads[operand];
        acc = acc ? tb.add(acc, g) : g;
      }
    }

    // Parameter gradients, in declaration order; a parameter read twice
    // sums its reads.
    llvm::MapVector<StringRef, std::pair<ParamOp, Value>> params;
    for (Operation *op : forwardOps)
      if (auto p = dyn_cast<ParamOp>(op)) {
        auto &entry = params[p.getName()];
        if (!entry.first)
          entry.first = p;
        if (Value g = grads.lookup(p.getResult()))
          entry.second = entry.second ? tb.add(entry.second, g) : g;
      }
    SmallVector<Value> paramGrads;
    for (auto &[name, pg] : params) {
      if (!pg.second)
        pg.second = tb.zeros(pg.first.getType().getShape());
      paramGrads.push_back(pg.second);
    }

    // Global norm, schedule and clipping factor (0-d tensors).
    SmallVector<Value> sumsq;
    for (Value g : paramGrads) {
      unsigned r = TensorBuilder::rank(g);
      sumsq.push_back(tb.reduce({g}, {tb.identity(r)}, {}, r,
                                [](OpBuilder &nb, Location nl, ValueRange a) {
                                  return arith::MulFOp::create(nb, nl, a[0], a[0])
                                      .getResult();
                                }));
    }
    if (sumsq.empty())
      sumsq.push_back(tb.zeros({}));
    SmallVector<AffineMap> scalarMaps(sumsq.size(), tb.scalarMap(0));
    Value norm = tb.pointwise(sumsq, {}, scalarMaps,
                              [](OpBuilder &nb, Location nl, ValueRange a) {
                                Value s = a[0];
                                for (Value v : a.drop_front().drop_back())
                                  s = arith::AddFOp::create(nb, nl, s, v);
                                return math::SqrtOp::create(nb, nl, s).getResult();
                              });
    SmallVector<AffineMap> fourMaps(4, tb.scalarMap(0));
    Value lrNow = tb.pointwise(
        hyper, {}, fourMaps, [&](OpBuilder &nb, Location nl, ValueRange a) {
          // warm-up: lr (t+1)/W; then cosine (or constant) decay.
          Value t = a[0], total = a[1], warm = a[2], lr = a[3];
          Value one = cf(nb, nl, 1.0);
          Value inWarmup = arith::CmpFOp::create(nb, nl, arith::CmpFPredicate::OLT, t, warm);
          Value warmLr = arith::DivFOp::create(
              nb, nl, arith::MulFOp::create(nb, nl, lr, arith::AddFOp::create(nb, nl, t, one)),
              arith::MaximumFOp::create(nb, nl, warm, one));
          Value after = lr;
          if (config.cosine) {
            Value span = arith::MaximumFOp::create(
                nb, nl, arith::SubFOp::create(nb, nl, total, warm), one);
            Value frac = arith::MinimumFOp::create(
                nb, nl, arith::DivFOp::create(nb, nl, arith::SubFOp::create(nb, nl, t, warm), span),
                one);
            Value cosv = math::CosOp::create(nb, nl, arith::MulFOp::create(nb, nl, frac, cf(nb, nl, M_PI)));
            Value half = arith::MulFOp::create(nb, nl, cf(nb, nl, 0.5),
                                               arith::AddFOp::create(nb, nl, one, cosv));
            double m = config.minLrRatio;
            Value factor = arith::AddFOp::create(
                nb, nl, cf(nb, nl, m), arith::MulFOp::create(nb, nl, cf(nb, nl, 1.0 - m), half));
            after = arith::MulFOp::create(nb, nl, lr, factor);
          }
          return arith::SelectOp::create(nb, nl, inWarmup, warmLr, after).getResult();
        });
    double clip = config.gradClip;
    Value clipScale = tb.elementwise({norm}, [&](OpBuilder &nb, Location nl, ValueRange a) {
      if (clip <= 0)
        return cf(nb, nl, 1.0);
      Value s = arith::DivFOp::create(nb, nl, cf(nb, nl, clip),
                                      arith::AddFOp::create(nb, nl, a[0], cf(nb, nl, 1e-6)));
      return arith::MinimumFOp::create(nb, nl, s, cf(nb, nl, 1.0)).getResult();
    });

    // AdamW's bias corrections 1 - beta^(t+1), once per step. They are
    // computed in f64 and rounded once: in f32, beta itself rounds (0.999 ->
    // 0.99900001) and 1 - powf cancels most digits, which scaled early
    // updates by ~4e-6 (relative). The per-element update stays f32.
    auto correction = [&](double beta) {
      auto body = [&](OpBuilder &nb, Location nl, ValueRange a) {
        auto cd = [&](double v) -> Value {
          return arith::ConstantOp::create(nb, nl, nb.getF64FloatAttr(v));
        };
        Value step = arith::ExtFOp::create(nb, nl, nb.getF64Type(), a[0]);
        Value t = arith::AddFOp::create(nb, nl, step, cd(1.0));
        Value pow = math::PowFOp::create(nb, nl, cd(beta), t);
        Value bc = arith::SubFOp::create(nb, nl, cd(1.0), pow);
        return arith::TruncFOp::create(nb, nl, nb.getF32Type(), bc).getResult();
      };
      return tb.elementwise({hyper[0]}, body);
    };
    Value bc1, bc2;
    if (config.kind == "adamw") {
      bc1 = correction(config.beta1);
      bc2 = correction(config.beta2);
    }

    // The update: one generic per parameter, writing the parameter and its
    // state in place (its outputs are the moe.param values).
    bool adam = config.kind == "adamw";
    Block &body = fn.getBody().front();
    for (auto [i, entry] : llvm::enumerate(params)) {
      ParamOp p = entry.second.first;
      Value g = paramGrads[i];
      auto stateParam = [&](StringRef slot) {
        OpBuilder::InsertionGuard guard(b);
        b.setInsertionPointToStart(&body);
        auto s = ParamOp::create(b, p.getLoc(), p.getType(),
                                 ("optimizer." + slot + "." + p.getName()).str(),
                                 InitKind::Zeros, FloatAttr(), FloatAttr());
        s->setAttr(MoEDialect::StateAttrHelper::getNameStr(), b.getUnitAttr());
        return s.getResult();
      };
      unsigned r = p.getType().getRank();
      double wd = p.getNoDecay() ? 0.0 : config.weightDecay;
      SmallVector<Value> ins{p.getResult(), g};
      SmallVector<Value> outs{p.getResult()};
      if (adam) {
        ins.append({stateParam("m"), stateParam("v")});
      } else {
        ins.push_back(stateParam("momentum"));
      }
      outs.append(ins.begin() + 2, ins.end());
      ins.append({lrNow, clipScale});
      if (adam)
        ins.append({bc1, bc2});
      unsigned numScalars = adam ? 4 : 2;
      SmallVector<AffineMap> maps(ins.size() - numScalars, tb.identity(r));
      maps.append(numScalars, tb.scalarMap(r));
      maps.append(outs.size(), tb.identity(r));
      SmallVector<utils::IteratorType> iters(r, utils::IteratorType::parallel);
      auto update = linalg::GenericOp::create(
          b, loc, ValueRange(outs).getTypes(), ins, outs, maps, iters,
          [&](OpBuilder &nb, Location nl, ValueRange a) {
            Value pv = a[0], gv = arith::MulFOp::create(nb, nl, a[1], adam ? a[5] : a[4]);
            Value lr = adam ? a[4] : a[3];
            if (adam) {
              Value m = a[2], v = a[3], bc1 = a[6], bc2 = a[7];
              Value b1 = cf(nb, nl, config.beta1), b2 = cf(nb, nl, config.beta2);
              Value m2 = arith::AddFOp::create(
                  nb, nl, arith::MulFOp::create(nb, nl, b1, m),
                  arith::MulFOp::create(nb, nl, cf(nb, nl, 1 - config.beta1), gv));
              Value v2 = arith::AddFOp::create(
                  nb, nl, arith::MulFOp::create(nb, nl, b2, v),
                  arith::MulFOp::create(nb, nl, cf(nb, nl, 1 - config.beta2),
                                        arith::MulFOp::create(nb, nl, gv, gv)));
              Value mhat = arith::DivFOp::create(nb, nl, m2, bc1);
              Value vhat = arith::DivFOp::create(nb, nl, v2, bc2);
              Value upd = arith::DivFOp::create(
                  nb, nl, mhat,
                  arith::AddFOp::create(nb, nl, math::SqrtOp::create(nb, nl, vhat),
                                        cf(nb, nl, config.eps)));
              if (wd != 0)
                upd = arith::AddFOp::create(nb, nl, upd,
                                            arith::MulFOp::create(nb, nl, cf(nb, nl, wd), pv));
              Value p2 = arith::SubFOp::create(nb, nl, pv, arith::MulFOp::create(nb, nl, lr, upd));
              linalg::YieldOp::create(nb, nl, ValueRange{p2, m2, v2});
              return;
            }
            Value buf = a[2];
            if (wd != 0)
              gv = arith::AddFOp::create(nb, nl, gv,
                                         arith::MulFOp::create(nb, nl, cf(nb, nl, wd), pv));
            Value buf2 = arith::AddFOp::create(
                nb, nl, arith::MulFOp::create(nb, nl, cf(nb, nl, config.momentum), buf), gv);
            Value p2 = arith::SubFOp::create(nb, nl, pv, arith::MulFOp::create(nb, nl, lr, buf2));
            linalg::YieldOp::create(nb, nl, ValueRange{p2, buf2});
          });
      update->setAttr(MoEDialect::UpdateAttrHelper::getNameStr(),
                      b.getUnitAttr());
      update->setAttr(MoEDialect::NameAttrHelper::getNameStr(),
                      b.getStringAttr(p.getName()));
    }

    // Results: loss, ce_loss, aux_loss, correct, grad_norm, lr_used, grads.
    SmallVector<Value> results(ret.getOperands().take_front(4));
    results.append({norm, lrNow});
    results.append(paramGrads);
    SmallVector<std::string> names{"loss", "ce_loss", "aux_loss", "correct",
                                   "grad_norm", "lr_used"};
    for (auto &[name, pg] : params)
      names.push_back(("grad." + name).str());
    ret->setOperands(results);
    fn.setType(b.getFunctionType(fn.getArgumentTypes(),
                                 ValueRange(results).getTypes()));
    SmallVector<DictionaryAttr> resultAttrs;
    for (auto [i, name] : llvm::enumerate(names)) {
      NamedAttrList attrs;
      attrs.append(MoEDialect::NameAttrHelper::getNameStr(),
                   b.getStringAttr(name));
      if (i >= 6)
        attrs.append(MoEDialect::RoleAttrHelper::getNameStr(),
                     b.getStringAttr("gradient"));
      resultAttrs.push_back(attrs.getDictionary(b.getContext()));
    }
    fn.setAllResultAttrs(resultAttrs);

    // Forward values nothing needs any more (e.g. the logits) go away;
    // the updates stay.
    SmallVector<Operation *> all;
    for (Operation &op : fn.getBody().front().without_terminator())
      all.push_back(&op);
    for (Operation *op : llvm::reverse(all))
      if (op->use_empty() &&
          !op->hasAttr(MoEDialect::UpdateAttrHelper::getNameStr()) &&
          isMemoryEffectFree(op))
        op->erase();
  }
};
} // namespace
