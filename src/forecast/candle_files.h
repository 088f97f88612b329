// Candle files: the two CSV layouts the importer reads.
//
// (a) Timestamped OHLCV, as in the project's sample data:
//       timestamp,open,high,low,close,volume
//       2017-08-17 04:00:00,4261.48,4349.99,4261.32,4349.99,82.088865
//     Timestamps are UTC, "YYYY-MM-DD HH:MM:SS" or "YYYY-MM-DD" (daily bars). The header line is
//     optional.
// (b) Binance's kline dumps (data.binance.vision), 12 columns, no header (newer dumps may have
//     one whose first field is "open_time"):
//       open time, open, high, low, close, volume, close time, quote asset volume,
//       number of trades, taker buy base volume, taker buy quote volume, ignore
//     Times are Unix milliseconds; spot dumps from 2025 on use microseconds, recognised by their
//     16 digits and converted to milliseconds.
// The layout is chosen from the first line. Rows must be in strictly increasing open time.
//
// Partial bars. A file cannot say whether it was written after its last bar closed, so its last
// row is always flagged partial; the candle store clears the flag once a newer bar of the same
// series is stored (candle_store.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"

namespace megaserve::forecast {

enum class CandleFileLayout { kTimestampCsv, kBinanceKlines };

// "timestamp csv" or "binance klines".
std::string_view CandleFileLayoutName(CandleFileLayout layout);

struct CandleFile {
  CandleFileLayout layout = CandleFileLayout::kTimestampCsv;
  std::vector<Candle> candles;  // oldest first; the last one partial
  // The most common spacing between consecutive bars (the smaller one on a tie), 0 with fewer
  // than two bars. Compare with IntervalMillis; IntervalNameForMillis names it.
  int64_t interval_ms = 0;
};

// Parses a whole file's text. `name` is used in error messages, which read
// "NAME:LINE: field \"open\": ..." (kInvalidArgument). Every row is checked with ValidateCandle.
// An empty file (no data rows) is an error.
core::Result<CandleFile> ParseCandleCsv(std::string_view text, std::string_view name);

// Reads and parses the file at `path`; kNotFound when it cannot be opened.
core::Result<CandleFile> ReadCandleFile(const std::string& path);

// The most common difference between consecutive open times (ties: the smaller), or 0 when
// `candles` has fewer than two bars. `candles` must be sorted by open time.
int64_t DetectIntervalMillis(std::span<const Candle> candles);

// The name in IntervalNames() whose length is `interval_ms`, or "" when none is.
std::string IntervalNameForMillis(int64_t interval_ms);

// "YYYY-MM-DD HH:MM:SS" or "YYYY-MM-DD" (UTC) -> Unix milliseconds. kInvalidArgument when the
// text is anything else or not a real date and time.
core::Result<int64_t> ParseUtcTimestamp(std::string_view text);

// Unix milliseconds -> "YYYY-MM-DD HH:MM:SS" (UTC), the inverse of ParseUtcTimestamp.
std::string FormatUtcTimestamp(int64_t unix_ms);

}  // namespace megaserve::forecast
