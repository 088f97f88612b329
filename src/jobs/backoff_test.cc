#include "jobs/backoff.h"

#include <gtest/gtest.h>

#include <chrono>
#include <limits>
#include <vector>

namespace megaserve::jobs {
namespace {

using std::chrono::milliseconds;

constexpr int kSamples = 20000;

// Mean of kSamples draws of JobRetryDelay, checking each lies in [0, window].
double MeanJobDelay(int attempt, milliseconds base, milliseconds cap, milliseconds window,
                    std::mt19937_64& rng) {
  double sum = 0;
  for (int i = 0; i < kSamples; ++i) {
    milliseconds d = JobRetryDelay(attempt, base, cap, rng);
    EXPECT_GE(d.count(), 0);
    EXPECT_LE(d, window) << "attempt " << attempt;
    if (d < milliseconds(0) || d > window) return -1;
    sum += static_cast<double>(d.count());
  }
  return sum / kSamples;
}

TEST(JobRetryDelayTest, WindowDoublesUntilTheCap) {
  std::mt19937_64 rng(1);
  const milliseconds base(100), cap(10000);
  // Windows: 100, 200, 400, ..., 6400, then capped at 10000.
  for (int attempt = 0; attempt <= 10; ++attempt) {
    const milliseconds window = std::min(cap, base * (int64_t{1} << attempt));
    double mean = MeanJobDelay(attempt, base, cap, window, rng);
    // Uniform over [0, w]: mean w/2, standard error w / sqrt(12 n) < 0.3% of w here.
    EXPECT_NEAR(mean, window.count() / 2.0, window.count() * 0.02) << "attempt " << attempt;
  }
}

TEST(JobRetryDelayTest, SamplesSpanTheWholeWindow) {
  std::mt19937_64 rng(2);
  const milliseconds window(1000);
  milliseconds lo = window, hi(0);
  for (int i = 0; i < kSamples; ++i) {
    milliseconds d = JobRetryDelay(3, milliseconds(125), milliseconds(60000), rng);
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_LT(lo, milliseconds(10));
  EXPECT_GT(hi, milliseconds(990));
  EXPECT_LE(hi, window);
}

TEST(JobRetryDelayTest, LargeAttemptsStayAtTheCapWithoutOverflow) {
  std::mt19937_64 rng(3);
  const milliseconds cap = std::chrono::hours(1);
  for (int attempt : {40, 62, 63, 64, 100, 1000, std::numeric_limits<int>::max()}) {
    double mean = MeanJobDelay(attempt, milliseconds(500), cap, cap, rng);
    EXPECT_NEAR(mean, cap.count() / 2.0, cap.count() * 0.02) << "attempt " << attempt;
  }
  // Base and cap near the top of the range.
  const milliseconds huge(std::numeric_limits<int64_t>::max());
  for (int attempt : {0, 1, 1000}) {
    milliseconds d = JobRetryDelay(attempt, huge, huge, rng);
    EXPECT_GE(d.count(), 0);
  }
}

TEST(JobRetryDelayTest, DegenerateInputs) {
  std::mt19937_64 rng(4);
  EXPECT_EQ(JobRetryDelay(5, milliseconds(0), milliseconds(1000), rng), milliseconds(0));
  EXPECT_EQ(JobRetryDelay(5, milliseconds(100), milliseconds(0), rng), milliseconds(0));
  EXPECT_EQ(JobRetryDelay(5, milliseconds(-100), milliseconds(1000), rng), milliseconds(0));
  EXPECT_EQ(JobRetryDelay(5, milliseconds(100), milliseconds(-1), rng), milliseconds(0));
  // A negative attempt behaves like attempt 0; a base above the cap is capped.
  for (int i = 0; i < 1000; ++i) {
    EXPECT_LE(JobRetryDelay(-7, milliseconds(100), milliseconds(1000), rng), milliseconds(100));
    EXPECT_LE(JobRetryDelay(0, milliseconds(5000), milliseconds(1000), rng), milliseconds(1000));
  }
}

TEST(JobRetryDelayTest, DeterministicForAFixedSeed) {
  std::mt19937_64 a(42), b(42), c(43);
  std::vector<milliseconds> from_a, from_b, from_c;
  for (int attempt = 0; attempt < 20; ++attempt) {
    from_a.push_back(JobRetryDelay(attempt, milliseconds(50), milliseconds(30000), a));
    from_b.push_back(JobRetryDelay(attempt, milliseconds(50), milliseconds(30000), b));
    from_c.push_back(JobRetryDelay(attempt, milliseconds(50), milliseconds(30000), c));
  }
  EXPECT_EQ(from_a, from_b);
  EXPECT_NE(from_a, from_c);
}

TEST(WebhookRetryDelayTest, ScheduleIsMonotoneAndEndsNearADay) {
  std::chrono::seconds total(0);
  for (size_t i = 0; i < kWebhookRetrySchedule.size(); ++i) {
    if (i > 0) {
      EXPECT_GE(kWebhookRetrySchedule[i], kWebhookRetrySchedule[i - 1]) << i;
    }
    total += kWebhookRetrySchedule[i];
  }
  EXPECT_EQ(kWebhookRetrySchedule.front(), std::chrono::seconds(5));
  EXPECT_LE(kWebhookRetrySchedule.back(), std::chrono::hours(24));
  EXPECT_GE(total, std::chrono::hours(22));
  EXPECT_LE(total, std::chrono::hours(24));
}

TEST(WebhookRetryDelayTest, FirstDeliveryIsImmediate) {
  std::mt19937_64 rng(5);
  EXPECT_EQ(WebhookRetryDelay(0, rng), milliseconds(0));
  EXPECT_EQ(WebhookRetryDelay(-3, rng), milliseconds(0));
}

TEST(WebhookRetryDelayTest, JitterStaysWithinTwentyPercent) {
  std::mt19937_64 rng(6);
  for (size_t i = 0; i < kWebhookRetrySchedule.size(); ++i) {
    const int64_t base = milliseconds(kWebhookRetrySchedule[i]).count();
    double sum = 0;
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
    for (int n = 0; n < kSamples; ++n) {
      auto d = WebhookRetryDelay(static_cast<int>(i) + 1, rng);
      ASSERT_TRUE(d.has_value());
      lo = std::min(lo, d->count());
      hi = std::max(hi, d->count());
      sum += static_cast<double>(d->count());
    }
    EXPECT_GE(lo, base * 8 / 10) << "retry " << i + 1;
    EXPECT_LE(hi, base * 12 / 10) << "retry " << i + 1;
    // The jitter is actually applied, in both directions.
    EXPECT_LT(lo, base * 82 / 100) << "retry " << i + 1;
    EXPECT_GT(hi, base * 118 / 100) << "retry " << i + 1;
    EXPECT_NEAR(sum / kSamples, static_cast<double>(base), base * 0.01) << "retry " << i + 1;
  }
}

TEST(WebhookRetryDelayTest, ExhaustedAfterTheLastRetry) {
  std::mt19937_64 rng(7);
  const int last = static_cast<int>(kWebhookRetrySchedule.size());
  EXPECT_TRUE(WebhookRetryDelay(last, rng).has_value());
  EXPECT_FALSE(WebhookRetryDelay(last + 1, rng).has_value());
  EXPECT_FALSE(WebhookRetryDelay(1000, rng).has_value());
  EXPECT_FALSE(WebhookRetryDelay(std::numeric_limits<int>::max(), rng).has_value());
}

TEST(WebhookRetryDelayTest, DeterministicForAFixedSeed) {
  std::mt19937_64 a(99), b(99);
  for (int attempt = 0; attempt <= 8; ++attempt) {
    EXPECT_EQ(WebhookRetryDelay(attempt, a), WebhookRetryDelay(attempt, b)) << attempt;
  }
}

TEST(WebhookRetryDelayTest, ConfiguredScheduleWithJitter) {
  std::mt19937_64 rng(8);
  const std::vector<milliseconds> schedule = {milliseconds(100), milliseconds(1000)};
  EXPECT_EQ(WebhookRetryDelay(0, schedule, rng), milliseconds(0));
  for (int n = 0; n < 1000; ++n) {
    auto first = WebhookRetryDelay(1, schedule, rng);
    ASSERT_TRUE(first.has_value());
    EXPECT_GE(first->count(), 80);
    EXPECT_LE(first->count(), 120);
    auto second = WebhookRetryDelay(2, schedule, rng);
    ASSERT_TRUE(second.has_value());
    EXPECT_GE(second->count(), 800);
    EXPECT_LE(second->count(), 1200);
  }
  EXPECT_FALSE(WebhookRetryDelay(3, schedule, rng).has_value());
  EXPECT_FALSE(WebhookRetryDelay(1, std::span<const milliseconds>(), rng).has_value());
}

}  // namespace
}  // namespace megaserve::jobs
