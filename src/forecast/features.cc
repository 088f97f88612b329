// Feature rows and scaled targets for the forecast models; the definitions are in features.h.
//
// Conventions the header leaves open, fixed here:
// - Standard deviations are population ones (divide by the count), both for the rolling volume
//   z-score and for the normalization statistics.
// - Calendar features use the bar's open time in whole minutes: h = minute_of_day / 60 and
//   d = minutes since the last Monday 00:00 UTC / 1440 (1970-01-05 was a Monday).
// - The target scale is the standard deviation of ln(close[t] / close[t-1]) for the pairs whose
//   both bars lie inside the training rows, t = begin + 1 .. end - 1.
// Sums run in double and are stored as float.
#include "forecast/features.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <numbers>

namespace megaserve::forecast {
namespace {

constexpr int64_t kMinuteMs = 60'000;
constexpr int64_t kMinutesPerDay = 24 * 60;
constexpr int64_t kMinutesPerWeek = 7 * kMinutesPerDay;
// Unix time 0 was a Thursday, 3 days after the Monday before it.
constexpr int64_t kMondayOffsetMinutes = 3 * kMinutesPerDay;
constexpr double kStdFloor = 1e-6;

int64_t FloorDiv(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

int64_t FloorMod(int64_t a, int64_t b) { return a - FloorDiv(a, b) * b; }

}  // namespace

std::vector<float> ComputeFeatures(std::span<const Candle> candles) {
  const int64_t n = static_cast<int64_t>(candles.size());
  std::vector<float> out(static_cast<std::size_t>(n) * kFeatureCount, 0.0f);
  std::vector<double> log_volume(static_cast<std::size_t>(n));
  for (int64_t t = 0; t < n; ++t) log_volume[t] = std::log1p(candles[t].volume);
  for (int64_t t = FirstValidRow(); t < n; ++t) {
    // Two passes over the window: exact enough in double and cheap (kVolumeWindow terms).
    double mean = 0;
    for (int64_t i = t - kVolumeWindow + 1; i <= t; ++i) mean += log_volume[i];
    mean /= kVolumeWindow;
    double var = 0;
    for (int64_t i = t - kVolumeWindow + 1; i <= t; ++i) {
      var += (log_volume[i] - mean) * (log_volume[i] - mean);
    }
    const double sd = std::max(std::sqrt(var / kVolumeWindow), kStdFloor);

    const Candle& c = candles[t];
    const int64_t minutes = FloorDiv(c.open_time_ms, kMinuteMs);
    const double hour = static_cast<double>(FloorMod(minutes, kMinutesPerDay)) / 60.0;
    const double day =
        static_cast<double>(FloorMod(minutes + kMondayOffsetMinutes, kMinutesPerWeek)) /
        kMinutesPerDay;
    const double day_angle = 2 * std::numbers::pi * hour / 24;
    const double week_angle = 2 * std::numbers::pi * day / 7;

    float* row = &out[static_cast<std::size_t>(t) * kFeatureCount];
    row[0] = static_cast<float>(std::log(c.close / candles[t - 1].close));
    row[1] = static_cast<float>(std::log(c.high / c.low));
    row[2] = static_cast<float>((log_volume[t] - mean) / sd);
    row[3] = static_cast<float>(std::sin(day_angle));
    row[4] = static_cast<float>(std::cos(day_angle));
    row[5] = static_cast<float>(std::sin(week_angle));
    row[6] = static_cast<float>(std::cos(week_angle));
  }
  return out;
}

Normalization FitNormalization(std::span<const float> features, std::span<const Candle> candles,
                               int64_t begin, int64_t end) {
  assert(begin >= FirstValidRow() && end > begin + 1);
  assert(static_cast<std::size_t>(end) * kFeatureCount <= features.size());
  assert(static_cast<std::size_t>(end) <= candles.size());
  Normalization norm;
  const double count = static_cast<double>(end - begin);
  for (int f = 0; f < kFeatureCount; ++f) {
    double sum = 0;
    for (int64_t t = begin; t < end; ++t) sum += features[t * kFeatureCount + f];
    const double mean = sum / count;
    double var = 0;
    for (int64_t t = begin; t < end; ++t) {
      const double d = features[t * kFeatureCount + f] - mean;
      var += d * d;
    }
    norm.mean[f] = static_cast<float>(mean);
    norm.std[f] = static_cast<float>(std::max(std::sqrt(var / count), kStdFloor));
  }
  double sum = 0;
  for (int64_t t = begin + 1; t < end; ++t)
    sum += std::log(candles[t].close / candles[t - 1].close);
  const double returns = static_cast<double>(end - begin - 1);
  const double mean = sum / returns;
  double var = 0;
  for (int64_t t = begin + 1; t < end; ++t) {
    const double d = std::log(candles[t].close / candles[t - 1].close) - mean;
    var += d * d;
  }
  norm.target_scale = static_cast<float>(std::max(std::sqrt(var / returns), kStdFloor));
  return norm;
}

void Normalize(const Normalization& norm, std::span<float> features) {
  const std::size_t rows = features.size() / kFeatureCount;
  for (std::size_t t = 0; t < rows; ++t) {
    for (int f = 0; f < kFeatureCount; ++f) {
      float& x = features[t * kFeatureCount + f];
      x = (x - norm.mean[f]) / norm.std[f];
    }
  }
}

void Window(std::span<const float> normalized, int64_t last, int window, std::span<float> out) {
  const int64_t first = last - window + 1;
  assert(first >= FirstValidRow());
  assert(out.size() >= static_cast<std::size_t>(window) * kFeatureCount);
  assert(static_cast<std::size_t>(last + 1) * kFeatureCount <= normalized.size());
  std::memcpy(out.data(), normalized.data() + first * kFeatureCount,
              sizeof(float) * static_cast<std::size_t>(window) * kFeatureCount);
}

float Target(std::span<const Candle> candles, int64_t t, int h, float target_scale) {
  assert(h >= 1 && static_cast<std::size_t>(t + h) < candles.size());
  return static_cast<float>(std::log(candles[t + h].close / candles[t].close) / target_scale);
}

}  // namespace megaserve::forecast
