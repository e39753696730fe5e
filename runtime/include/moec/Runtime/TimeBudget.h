//===- TimeBudget.h - how many epochs fit a time budget ---------*- C++ -*-===//
//
// The arithmetic of `moec-run train --time-budget T`: how many whole epochs
// fit 96 % of T given a measured time per epoch, and how a run re-plans
// after each epoch from the epochs it has seen (runtime.md). Kept apart from
// the command so the rules are tested without a machine that changes speed.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_TIMEBUDGET_H
#define MOEC_RUNTIME_TIMEBUDGET_H

#include <cstdint>

namespace moec::rt {

/// The share of the budget kept free for a shared machine's noise.
constexpr double kTimeBudgetMargin = 0.04;

/// Whole epochs of `perEpoch` seconds that fit (1 - kTimeBudgetMargin) of
/// `budget` after `spent` seconds, keeping `finalEval` seconds for an
/// evaluation at the end (0 when every epoch evaluates); 0 if none fits.
int64_t epochsThatFit(double budget, double spent, double perEpoch,
                      double finalEval);

/// Where a budgeted run stands after an epoch.
struct BudgetProgress {
  double budget = 0;    ///< T in seconds, counted from the command's start
  double elapsed = 0;   ///< seconds since the command started
  double perEpoch = 0;  ///< mean seconds per epoch so far (with its eval)
  double finalEval = 0; ///< seconds of evaluation still due at the end
  int64_t epochsDone = 0, epochsPlanned = 0;
  int64_t stepsDone = 0, warmupSteps = 0;
};

struct EpochReplan {
  enum class Kind {
    Keep,    ///< the plan stands
    Warmup,  ///< every step so far was a warm-up step: moved up or down,
             ///< the run is the one `--epochs epochs` gives
    Shorten, ///< past the warm-up, the rest would overrun: fewer epochs,
             ///< the cosine schedule shortened from this step
  };
  Kind kind = Kind::Keep;
  int64_t epochs = 0;
};

/// While every step so far was a warm-up step (their learning rate does not
/// depend on the total), the epochs that fit, up or down. After it, fewer
/// epochs only when the remaining ones would end past
/// (1 - kTimeBudgetMargin / 2) of the budget; never more.
EpochReplan replanEpochs(const BudgetProgress &p);

} // namespace moec::rt

#endif // MOEC_RUNTIME_TIMEBUDGET_H
