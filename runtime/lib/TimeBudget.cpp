//===- TimeBudget.cpp - how many epochs fit a time budget -----------------===//

#include "moec/Runtime/TimeBudget.h"

#include <algorithm>

namespace moec::rt {

int64_t epochsThatFit(double budget, double spent, double perEpoch,
                      double finalEval) {
  const double usable = budget * (1 - kTimeBudgetMargin) - spent - finalEval;
  if (!(usable > 0) || !(perEpoch > 0))
    return 0;
  return int64_t(std::min(usable / perEpoch, double(1 << 30)));
}

EpochReplan replanEpochs(const BudgetProgress &p) {
  const int64_t left = p.epochsPlanned - p.epochsDone;
  const int64_t fits =
      epochsThatFit(p.budget, p.elapsed, p.perEpoch, p.finalEval);
  if (p.stepsDone <= p.warmupSteps && fits != left)
    return {EpochReplan::Kind::Warmup, p.epochsDone + fits};
  if (left > 0 && p.elapsed + double(left) * p.perEpoch + p.finalEval >
                      p.budget * (1 - kTimeBudgetMargin / 2))
    return {EpochReplan::Kind::Shorten,
            p.epochsDone + std::min<int64_t>(left - 1, fits)};
  return {EpochReplan::Kind::Keep, p.epochsPlanned};
}

} // namespace moec::rt
