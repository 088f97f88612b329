#include "forecast/features.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

namespace megaserve::forecast {
namespace {

constexpr int64_t kHourMs = 3'600'000;
// Monday 2024-01-01 00:00 UTC.
constexpr int64_t kMonday2024 = 1'704'067'200'000;

// Hourly bars: close = 100 e^{0.01 t}, high/low = close * 1.02 / 1.01, ln(1 + volume) = t % 2.
// Bar FirstValidRow() opens on Monday 2024-01-01 06:30 UTC.
std::vector<Candle> Series(int n) {
  std::vector<Candle> out;
  for (int t = 0; t < n; ++t) {
    Candle c;
    c.open_time_ms = kMonday2024 + 6 * kHourMs + kHourMs / 2 + (t - FirstValidRow()) * kHourMs;
    c.close = 100 * std::exp(0.01 * t);
    c.open = c.close;
    c.high = c.close * 1.02;
    c.low = c.close / 1.01;
    c.volume = std::expm1(t % 2);
    out.push_back(c);
  }
  return out;
}

TEST(FeaturesTest, HandComputedRow) {
  const auto candles = Series(40);
  const auto f = ComputeFeatures(candles);
  ASSERT_EQ(f.size(), 40u * kFeatureCount);
  const float* row = &f[FirstValidRow() * kFeatureCount];  // t = 29, ln(1+v) = 1
  EXPECT_NEAR(row[0], 0.01, 1e-6);
  EXPECT_NEAR(row[1], std::log(1.02 * 1.01), 1e-6);
  // The window t = 0..29 holds 15 zeros and 15 ones: mean 0.5, std 0.5.
  EXPECT_NEAR(row[2], 1.0, 1e-5);
  const double h = 6.5;
  EXPECT_NEAR(row[3], std::sin(2 * std::numbers::pi * h / 24), 1e-6);
  EXPECT_NEAR(row[4], std::cos(2 * std::numbers::pi * h / 24), 1e-6);
  const double d = 6.5 / 24;  // Monday 06:30
  EXPECT_NEAR(row[5], std::sin(2 * std::numbers::pi * d / 7), 1e-6);
  EXPECT_NEAR(row[6], std::cos(2 * std::numbers::pi * d / 7), 1e-6);
  // Next bar: ln(1+v) = 0 -> z = -1; hour 7.5.
  const float* next = row + kFeatureCount;
  EXPECT_NEAR(next[2], -1.0, 1e-5);
  EXPECT_NEAR(next[3], std::sin(2 * std::numbers::pi * 7.5 / 24), 1e-6);
  // Earlier rows are zeros.
  for (int i = 0; i < FirstValidRow() * kFeatureCount; ++i) ASSERT_EQ(f[i], 0.0f) << i;
}

TEST(FeaturesTest, DayOfWeekCountsFromMonday) {
  auto candles = Series(31);
  // Sunday 2024-01-07 18:00 UTC: 6.75 days after Monday 00:00.
  candles[30].open_time_ms = kMonday2024 + 6 * 24 * kHourMs + 18 * kHourMs;
  const auto f = ComputeFeatures(candles);
  const float* row = &f[30 * kFeatureCount];
  EXPECT_NEAR(row[5], std::sin(2 * std::numbers::pi * 6.75 / 7), 1e-6);
  EXPECT_NEAR(row[6], std::cos(2 * std::numbers::pi * 6.75 / 7), 1e-6);
  EXPECT_NEAR(row[3], std::sin(2 * std::numbers::pi * 18 / 24), 1e-6);
}

TEST(FeaturesTest, ConstantVolumeGivesZeroScore) {
  auto candles = Series(35);
  for (auto& c : candles) c.volume = 5;
  const auto f = ComputeFeatures(candles);
  for (int t = FirstValidRow(); t < 35; ++t) EXPECT_NEAR(f[t * kFeatureCount + 2], 0.0f, 1e-6);
}

TEST(FeaturesTest, NormalizationUsesTrainingRowsOnly) {
  auto candles = Series(60);
  // Returns alternate +0.02 / -0.01 from t = 1 on.
  for (int t = 1; t < 60; ++t) {
    candles[t].close = candles[t - 1].close * std::exp(t % 2 ? 0.02 : -0.01);
  }
  auto f = ComputeFeatures(candles);
  const int begin = FirstValidRow(), end = 39;  // 10 rows
  // Rows after the training range must not matter.
  for (int t = end; t < 60; ++t) f[t * kFeatureCount + 1] = 1e6f;
  const Normalization norm = FitNormalization(f, candles, begin, end);
  for (int k = 0; k < kFeatureCount; ++k) {
    double mean = 0;
    for (int t = begin; t < end; ++t) mean += f[t * kFeatureCount + k];
    mean /= end - begin;
    double var = 0;
    for (int t = begin; t < end; ++t) var += std::pow(f[t * kFeatureCount + k] - mean, 2);
    const double sd = std::max(std::sqrt(var / (end - begin)), 1e-6);
    EXPECT_NEAR(norm.mean[k], mean, 1e-6) << k;
    EXPECT_NEAR(norm.std[k], sd, 1e-6) << k;
  }
  // Feature 1 is constant on the training rows: std floored.
  EXPECT_NEAR(norm.std[1], 1e-6, 1e-9);
  // Returns t = 30..38: five of +0.02 (odd t) and four of -0.01.
  std::vector<double> r;
  for (int t = begin + 1; t < end; ++t) r.push_back(t % 2 ? 0.02 : -0.01);
  double m = 0;
  for (double x : r) m += x;
  m /= r.size();
  double v = 0;
  for (double x : r) v += (x - m) * (x - m);
  EXPECT_NEAR(norm.target_scale, std::sqrt(v / r.size()), 1e-7);

  Normalize(norm, f);
  const float* row = &f[begin * kFeatureCount];
  for (int k = 0; k < kFeatureCount; ++k) {
    const float raw = ComputeFeatures(candles)[begin * kFeatureCount + k];
    EXPECT_FLOAT_EQ(row[k], (raw - norm.mean[k]) / norm.std[k]) << k;
  }
}

TEST(FeaturesTest, WindowCopiesOldestFirst) {
  std::vector<float> normalized(50 * kFeatureCount);
  for (std::size_t i = 0; i < normalized.size(); ++i) normalized[i] = static_cast<float>(i);
  std::vector<float> out(8 * kFeatureCount, -1);
  Window(normalized, 45, 8, out);
  for (int i = 0; i < 8; ++i) {
    for (int k = 0; k < kFeatureCount; ++k) {
      EXPECT_EQ(out[i * kFeatureCount + k], static_cast<float>((38 + i) * kFeatureCount + k));
    }
  }
}

TEST(FeaturesTest, TargetIsScaledCumulativeLogReturn) {
  const auto candles = Series(40);
  EXPECT_NEAR(Target(candles, 30, 1, 0.01f), 1.0, 1e-5);
  EXPECT_NEAR(Target(candles, 30, 6, 0.02f), 3.0, 1e-5);
  EXPECT_NEAR(Target(candles, 0, 3, 1.0f), 0.03, 1e-7);
}

}  // namespace
}  // namespace megaserve::forecast
