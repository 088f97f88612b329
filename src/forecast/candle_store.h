// Candles in the job store (SQLite or PostgreSQL; table `candles`, migration 4), one row per
// (symbol, interval, open time). Writes are idempotent upserts: importing the same file twice or
// syncing an overlapping range changes nothing; a bar whose values changed (a partial bar that
// has since closed) is updated in place.
//
// Partial bars. A bar is stored as partial when its source says it may still be open (see
// candles.h). A partial flag never survives a newer bar of the same series: once a later bar is
// stored, every earlier bar has closed, and the upsert clears their flags.
//
// All calls block (they run statements); call them off the I/O threads. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"
#include "store/database.h"

namespace megaserve::forecast {

// One stored series and its extent.
struct SeriesInfo {
  std::string symbol;
  std::string interval;
  std::string source;  // of the newest bar: "csv", "binance", "coinbase", ...
  int64_t count = 0;
  int64_t first_open_ms = 0;
  int64_t last_open_ms = 0;
  bool last_partial = false;
};

struct UpsertCounts {
  int64_t inserted = 0;
  int64_t updated = 0;    // rows whose values or partial flag changed
  int64_t unchanged = 0;  // rows already stored exactly so
};

class CandleStore {
 public:
  // `db` must be migrated (store::Migrate) and outlive this object.
  explicit CandleStore(store::Database& db);

  // Upserts `candles` (any order; each validated with ValidateCandle) of one series in one
  // transaction. Symbols are upper-cased ASCII letters and digits (1..20 chars); the interval
  // must be one of IntervalNames(). kInvalidArgument names the bad bar and changes nothing.
  core::Result<UpsertCounts> Upsert(std::string_view symbol, std::string_view interval,
                                    std::string_view source, std::span<const Candle> candles);

  // Bars with from_ms <= open time <= to_ms, oldest first, at most `limit` (the newest `limit`
  // when more match and `newest` is true, else the oldest; limit <= 0: all of them). Partial bars
  // are included only when `include_partial`.
  core::Result<std::vector<Candle>> Range(std::string_view symbol, std::string_view interval,
                                          int64_t from_ms, int64_t to_ms, int64_t limit,
                                          bool include_partial, bool newest = true);

  // The newest stored bar of a series (partial or not), or nullopt when it has none.
  core::Result<std::optional<Candle>> Latest(std::string_view symbol, std::string_view interval);

  // Every stored series, by symbol then interval length.
  core::Result<std::vector<SeriesInfo>> Series();

  // A number that changes whenever an Upsert in this process inserts or updates a row, so that
  // caches of anything derived from candles can key on it. Starts at 1.
  uint64_t version() const { return version_.load(std::memory_order_acquire); }

 private:
  store::Database& db_;
  std::atomic<uint64_t> version_{1};
};

// Checks a symbol as Upsert does and returns it upper-cased.
core::Result<std::string> NormalizeSymbol(std::string_view symbol);

}  // namespace megaserve::forecast
