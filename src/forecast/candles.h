// Market data: OHLCV candles, their intervals, and the checks a series needs before a model may
// learn from it (gaps, a partial last bar).
//
// A candle is identified by (symbol, interval, open time). Times are Unix milliseconds, UTC, as
// the exchanges' APIs give them. A bar is partial while its interval has not closed yet: an
// exchange answers with the bar in progress, and an exported file usually ends with one.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace megaserve::forecast {

struct Candle {
  int64_t open_time_ms = 0;  // the bar's start, Unix milliseconds UTC
  double open = 0;
  double high = 0;
  double low = 0;
  double close = 0;
  double volume = 0;  // base-asset volume (BTC for BTCUSDT)
  bool partial = false;

  bool operator==(const Candle&) const = default;
};

// The interval names every part of the system accepts, shortest first:
// 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 1w.
const std::vector<std::string>& IntervalNames();

// The length of an interval in milliseconds. kInvalidArgument names the allowed values.
core::Result<int64_t> IntervalMillis(std::string_view name);

// A run of missing bars: every open time from `first_missing_ms` to `last_missing_ms` (inclusive,
// in steps of the interval) is absent.
struct Gap {
  int64_t first_missing_ms = 0;
  int64_t last_missing_ms = 0;
  int64_t missing_bars = 0;
};

// The gaps in `candles` (sorted by open time, no duplicates) for bars `interval_ms` apart.
// Bars whose open time is not on the interval's grid relative to the first bar are ignored.
std::vector<Gap> FindGaps(std::span<const Candle> candles, int64_t interval_ms);

// True when the bar opening at `open_time_ms` has not closed by `now_ms`.
inline bool IsOpenAt(int64_t open_time_ms, int64_t interval_ms, int64_t now_ms) {
  return open_time_ms + interval_ms > now_ms;
}

// Checks a candle's numbers: finite, positive prices, low <= open, close <= high, volume >= 0.
// kInvalidArgument says which field is wrong.
core::Status ValidateCandle(const Candle& candle);

}  // namespace megaserve::forecast
