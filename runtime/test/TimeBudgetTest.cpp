//===- TimeBudgetTest.cpp - epochs that fit a time budget -----------------===//

#include "moec/Runtime/TimeBudget.h"

#include <gtest/gtest.h>

using namespace moec::rt;

namespace {

TEST(TimeBudget, EpochsThatFitKeepTheMarginAndTheFinalEval) {
  // 96 % of 1200 s = 1152 s; 40 s spent: 1112 s, 11 epochs of 100 s.
  EXPECT_EQ(epochsThatFit(1200, 40, 100, 0), 11);
  // An evaluation at the end takes 20 s of it: 10 epochs.
  EXPECT_EQ(epochsThatFit(1200, 40, 100, 20), 10);
  EXPECT_EQ(epochsThatFit(100, 99, 1, 0), 0);  // spent more than 96 %
  EXPECT_EQ(epochsThatFit(100, 0, 200, 0), 0); // one epoch is too long
  EXPECT_EQ(epochsThatFit(100, 0, 0, 0), 0);   // no time measured
}

BudgetProgress progress(double elapsed, double perEpoch, int64_t done,
                        int64_t planned, int64_t steps, int64_t warmup) {
  BudgetProgress p;
  p.budget = 1200;
  p.elapsed = elapsed;
  p.perEpoch = perEpoch;
  p.epochsDone = done;
  p.epochsPlanned = planned;
  p.stepsDone = steps;
  p.warmupSteps = warmup;
  return p;
}

// The first epoch (468 steps of a 936-step warm-up) ran faster than the
// timing said: 4 epochs planned, 1 done in 100 s after 40 s of start-up.
// 1152 - 140 = 1012 s left: 10 more epochs, 11 in all.
TEST(TimeBudget, TheWarmUpReplansUp) {
  EpochReplan r = replanEpochs(progress(140, 100, 1, 4, 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Warmup);
  EXPECT_EQ(r.epochs, 11);
}

// ... or slower: 13 planned, 12 would not fit.
TEST(TimeBudget, TheWarmUpReplansDown) {
  EpochReplan r = replanEpochs(progress(140, 100, 1, 13, 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Warmup);
  EXPECT_EQ(r.epochs, 11);
  // The last warm-up step counts as in the warm-up (steps 0..935 < 936).
  r = replanEpochs(progress(240, 100, 2, 13, 936, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Warmup);
  EXPECT_EQ(r.epochs, 11);
  // A plan that still fits stands.
  r = replanEpochs(progress(140, 100, 1, 11, 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Keep);
  EXPECT_EQ(r.epochs, 11);
}

// After the warm-up the count never goes up, and goes down only when the
// rest would end past 98 % of the budget.
TEST(TimeBudget, AfterTheWarmUpOnlyShorter) {
  // Faster than planned: 5 of 8 done at 540 s, 3 x 100 s left: kept.
  EpochReplan r = replanEpochs(progress(540, 100, 5, 8, 5 * 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Keep);
  EXPECT_EQ(r.epochs, 8);
  // 5 of 11 done at 640 s: 6 more end at 1240 s > 1176 s (98 %). 512 s
  // to 96 % hold 5 epochs: 10 in all.
  r = replanEpochs(progress(640, 100, 5, 11, 5 * 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Shorten);
  EXPECT_EQ(r.epochs, 10);
  // Within 98 % (ends at 1170 s): kept, the margin absorbs it.
  r = replanEpochs(progress(570, 100, 5, 11, 5 * 468, 936));
  EXPECT_EQ(r.kind, EpochReplan::Kind::Keep);
  EXPECT_EQ(r.epochs, 11);
}

} // namespace
