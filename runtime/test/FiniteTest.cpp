//===- FiniteTest.cpp - finding NaN and infinity in tensors ---------------===//

#include "moec/Runtime/Finite.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

using namespace moec::rt;

TEST(Finite, FindsTheFirstNonFiniteValue) {
  std::vector<float> bias(3, 0.5f), weight(3000, 1.0f);
  std::vector<TensorRef> tensors = {{"head.bias", {3}, bias.data()},
                                    {"head.weight", {3, 1000}, weight.data()}};
  EXPECT_FALSE(firstNonFinite(tensors));
  EXPECT_FALSE(checkFinite(7, tensors));

  weight[2500] = -std::numeric_limits<float>::infinity();
  weight[1500] = std::numeric_limits<float>::quiet_NaN();
  std::optional<NonFiniteValue> found = firstNonFinite(tensors);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->name, "head.weight");
  EXPECT_EQ(found->index, 1500);
  EXPECT_TRUE(std::isnan(found->value));
  EXPECT_EQ(describeNonFinite(*found),
            "non-finite value nan at head.weight[1500]");

  weight[17] = std::numeric_limits<float>::infinity();
  Error e = checkFinite(1234, tensors);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Data);
  EXPECT_EQ(e.message(), "step 1234: non-finite value inf at head.weight[17]");

  bias[2] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(describeNonFinite(*firstNonFinite(tensors)),
            "non-finite value -inf at head.bias[2]");

  // Owning tensors, and the raw scan (largest finite values are finite).
  std::vector<Tensor> owned = {{"a", {2}, {1.0f, 2.0f}},
                               {"b", {2}, {3.0f, std::nanf("")}}};
  found = firstNonFinite(owned);
  ASSERT_TRUE(found);
  EXPECT_EQ(found->name, "b");
  EXPECT_EQ(found->index, 1);
  float edge[] = {std::numeric_limits<float>::max(),
                  -std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::denorm_min(), 0.0f, -0.0f};
  EXPECT_EQ(firstNonFinite(edge, 5), -1);
  EXPECT_EQ(firstNonFinite(edge, 0), -1);
  EXPECT_EQ(formatFloatValue(1.5f), "1.5");
}
