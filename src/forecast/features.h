// The features a forecast model sees and the targets it learns, computed the same way for
// training (the libtorch plugin), backtests and serving (the native engine).
//
// For bar t (0-based, candles sorted by open time, no partial bars):
//   0  log return          ln(close[t] / close[t-1])
//   1  high-low range      ln(high[t] / low[t])
//   2  volume z-score      (ln(1 + volume[t]) - mean) / std over the last kVolumeWindow bars
//                          ending at t (std floored at 1e-6)
//   3  time of day         sin(2 pi h / 24), h = the bar's open time in UTC hours (fractional)
//   4                      cos of the same
//   5  day of week         sin(2 pi d / 7), d = days since Monday 00:00 UTC, fractional
//   6                      cos of the same
// Row t is defined from t = kVolumeWindow - 1 on (FirstValidRow()); earlier rows are zeros.
//
// Targets. For horizon step h = 1..H the target at t is the cumulative log return
// ln(close[t+h] / close[t]) divided by Normalization::target_scale (the standard deviation of
// one-step log returns over the training rows), so the model's outputs are in units of a typical
// one-bar move. A predicted quantile q maps back to a price as close[t] * exp(q * target_scale).
//
// Normalization. Each feature is standardized with the mean and standard deviation measured on
// the training rows only (std floored at 1e-6) and stored with the model, so validation, test and
// live inputs are scaled by what training saw.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "forecast/candles.h"

namespace megaserve::forecast {

inline constexpr int kFeatureCount = 7;
inline constexpr int kVolumeWindow = 30;

// The first row whose features are defined.
inline constexpr int FirstValidRow() { return kVolumeWindow - 1; }

struct Normalization {
  std::array<float, kFeatureCount> mean{};
  std::array<float, kFeatureCount> std{};  // every entry > 0
  float target_scale = 1;                  // > 0

  bool operator==(const Normalization&) const = default;
};

// Raw (unnormalized) features of every bar: candles.size() rows of kFeatureCount floats,
// row-major. Rows before FirstValidRow() are zeros.
std::vector<float> ComputeFeatures(std::span<const Candle> candles);

// Statistics of rows [begin, end) of `features` (raw, as ComputeFeatures returns them) and of
// the one-step log returns of candles [begin, end). begin >= FirstValidRow(), end > begin + 1.
Normalization FitNormalization(std::span<const float> features, std::span<const Candle> candles,
                               int64_t begin, int64_t end);

// Standardizes `features` in place.
void Normalize(const Normalization& norm, std::span<float> features);

// Copies the `window` normalized rows ending at row `last` (inclusive) into `out`
// (window * kFeatureCount floats, oldest first). last - window + 1 >= FirstValidRow().
void Window(std::span<const float> normalized, int64_t last, int window, std::span<float> out);

// The scaled target of horizon step h (1-based) at row t: ln(close[t+h] / close[t]) / scale.
// t + h < candles.size().
float Target(std::span<const Candle> candles, int64_t t, int h, float target_scale);

}  // namespace megaserve::forecast
