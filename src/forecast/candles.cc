// Intervals, gap detection and candle validation; see candles.h.
//
// Gaps. Bars of one series sit on a grid: open times first + k * interval. Walking the sorted
// bars, a step from one on-grid bar to the next on-grid bar of more than one interval leaves
// (step / interval - 1) grid points empty; each such run is one Gap. Bars off the grid (a
// foreign or misaligned row) are skipped, so they neither open nor close a gap.
#include "forecast/candles.h"

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <utility>

namespace megaserve::forecast {
namespace {

constexpr int64_t kMinute = 60'000;
constexpr int64_t kHour = 60 * kMinute;
constexpr int64_t kDay = 24 * kHour;

// Shortest first, as IntervalNames() promises.
constexpr std::array<std::pair<std::string_view, int64_t>, 13> kIntervals = {{
    {"1m", kMinute},
    {"3m", 3 * kMinute},
    {"5m", 5 * kMinute},
    {"15m", 15 * kMinute},
    {"30m", 30 * kMinute},
    {"1h", kHour},
    {"2h", 2 * kHour},
    {"4h", 4 * kHour},
    {"6h", 6 * kHour},
    {"8h", 8 * kHour},
    {"12h", 12 * kHour},
    {"1d", kDay},
    {"1w", 7 * kDay},
}};

}  // namespace

const std::vector<std::string>& IntervalNames() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& [name, ms] : kIntervals) out.emplace_back(name);
    return out;
  }();
  return names;
}

core::Result<int64_t> IntervalMillis(std::string_view name) {
  for (const auto& [known, ms] : kIntervals) {
    if (known == name) return ms;
  }
  return core::InvalidArgument(
      fmt::format("unknown interval \"{}\"; allowed: {}", name, fmt::join(IntervalNames(), ", ")));
}

std::vector<Gap> FindGaps(std::span<const Candle> candles, int64_t interval_ms) {
  std::vector<Gap> gaps;
  if (candles.empty() || interval_ms <= 0) return gaps;
  const int64_t origin = candles.front().open_time_ms;
  int64_t previous = origin;  // the last on-grid bar seen
  for (const Candle& c : candles.subspan(1)) {
    int64_t offset = c.open_time_ms - origin;
    if (offset % interval_ms != 0 || c.open_time_ms <= previous) continue;
    int64_t missing = (c.open_time_ms - previous) / interval_ms - 1;
    if (missing > 0) {
      gaps.push_back({.first_missing_ms = previous + interval_ms,
                      .last_missing_ms = c.open_time_ms - interval_ms,
                      .missing_bars = missing});
    }
    previous = c.open_time_ms;
  }
  return gaps;
}

core::Status ValidateCandle(const Candle& c) {
  const std::pair<const char*, double> fields[] = {
      {"open", c.open}, {"high", c.high}, {"low", c.low}, {"close", c.close}, {"volume", c.volume}};
  for (const auto& [name, value] : fields) {
    if (!std::isfinite(value)) {
      return core::InvalidArgument(fmt::format("{} is not a finite number", name));
    }
  }
  for (const auto& [name, value] : std::span(fields).first(4)) {
    if (!(value > 0)) {
      return core::InvalidArgument(fmt::format("{} must be positive, got {}", name, value));
    }
  }
  if (c.volume < 0) {
    return core::InvalidArgument(fmt::format("volume must not be negative, got {}", c.volume));
  }
  if (c.low > c.high) {
    return core::InvalidArgument(fmt::format("low {} is above high {}", c.low, c.high));
  }
  for (const auto& [name, value] : {fields[0], fields[3]}) {
    if (value < c.low) {
      return core::InvalidArgument(fmt::format("{} {} is below low {}", name, value, c.low));
    }
    if (value > c.high) {
      return core::InvalidArgument(fmt::format("{} {} is above high {}", name, value, c.high));
    }
  }
  return core::Status::Ok();
}

}  // namespace megaserve::forecast
