#include "cache/gcra.h"

#include <gtest/gtest.h>

#include <deque>

namespace megaserve::cache {
namespace {

constexpr std::int64_t kSecond = 1'000'000;  // microseconds

TEST(GcraTest, AllowsExactlyLimitAtOnceThenDeniesWithRetryAfter) {
  std::int64_t tat = 0;
  const std::int64_t now = 1'700'000'000 * kSecond;
  for (int i = 0; i < 5; ++i) {
    GcraResult r = GcraStep(tat, now, 5, kSecond);
    EXPECT_TRUE(r.allowed) << i;
    EXPECT_EQ(r.limit, 5);
    EXPECT_EQ(r.remaining, 4 - i);
    EXPECT_EQ(r.retry_after_ms, 0);
    EXPECT_EQ(r.reset_ms, 200 * (i + 1));
  }
  const std::int64_t full_tat = tat;
  GcraResult denied = GcraStep(tat, now, 5, kSecond);
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.remaining, 0);
  EXPECT_EQ(denied.retry_after_ms, 200);  // one emission interval
  EXPECT_EQ(denied.reset_ms, 1000);
  EXPECT_EQ(tat, full_tat);  // denials do not move the state
}

TEST(GcraTest, AfterRetryAfterExactlyOneMoreIsAllowed) {
  std::int64_t tat = 0;
  std::int64_t now = 50 * kSecond;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(GcraStep(tat, now, 3, kSecond).allowed);
  now += 10'000;  // 10 ms later
  GcraResult denied = GcraStep(tat, now, 3, kSecond);
  ASSERT_FALSE(denied.allowed);
  EXPECT_EQ(denied.retry_after_ms, 324);  // 333.333 ms interval, 10 ms already waited
  // One microsecond short of the exact instant is still too early.
  const std::int64_t exact = tat - 2 * 333'333;  // TAT - tau
  EXPECT_FALSE(GcraStep(tat, exact - 1, 3, kSecond).allowed);
  now += denied.retry_after_ms * 1000;
  GcraResult again = GcraStep(tat, now, 3, kSecond);
  EXPECT_TRUE(again.allowed);
  EXPECT_EQ(again.remaining, 0);
  EXPECT_FALSE(GcraStep(tat, now, 3, kSecond).allowed);
}

TEST(GcraTest, SteadyTrafficGetsTheRateWithinOneRequest) {
  // A request every millisecond for 20 s against 10 per second.
  const std::int64_t limit = 10, period = kSecond;
  std::int64_t tat = 0;
  std::deque<std::int64_t> allowed_at;
  std::int64_t total = 0;
  const std::int64_t start = 1000 * kSecond;
  for (std::int64_t t = start; t < start + 20 * kSecond; t += 1000) {
    if (!GcraStep(tat, t, limit, period).allowed) continue;
    ++total;
    allowed_at.push_back(t);
    while (allowed_at.front() <= t - period) allowed_at.pop_front();
    if (t >= start + 2 * period) {
      // Once the initial burst is a period behind, no window of one period holds more than the
      // limit.
      EXPECT_LE(static_cast<std::int64_t>(allowed_at.size()), limit) << "at " << t - start;
    }
  }
  // The burst of `limit`, then one per interval: limit + floor(d / T) at most, within one.
  const std::int64_t expected = limit + (20 * kSecond - 1000) / (period / limit);
  EXPECT_LE(total, expected);
  EXPECT_GE(total, expected - 1);
}

TEST(GcraTest, RemainingCountsDownAndRefills) {
  std::int64_t tat = 0;
  std::int64_t now = kSecond;
  EXPECT_EQ(GcraStep(tat, now, 4, 400'000).remaining, 3);
  EXPECT_EQ(GcraStep(tat, now, 4, 400'000).remaining, 2);
  // After one interval (100 ms) one request's worth has drained.
  now += 100'000;
  EXPECT_EQ(GcraStep(tat, now, 4, 400'000).remaining, 2);
  // After a whole period idle the bucket is full again.
  now += 400'000;
  GcraResult r = GcraStep(tat, now, 4, 400'000);
  EXPECT_EQ(r.remaining, 3);
  EXPECT_EQ(r.reset_ms, 100);
}

TEST(GcraTest, LimitOfOneAndTinyIntervals) {
  std::int64_t tat = 0;
  EXPECT_TRUE(GcraStep(tat, kSecond, 1, kSecond).allowed);
  GcraResult d = GcraStep(tat, kSecond, 1, kSecond);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_ms, 1000);
  // More requests than microseconds per period: the interval is clamped to 1 us.
  std::int64_t tat2 = 0;
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(GcraStep(tat2, kSecond, 100, 10).allowed);
  EXPECT_FALSE(GcraStep(tat2, kSecond, 100, 10).allowed);
}

}  // namespace
}  // namespace megaserve::cache
