// Keeping stored candles up to date from the exchanges.
//
// SyncSeries fetches one series' range from an exchange (exchange_client.h) and upserts it into
// the CandleStore. Without an explicit range it fetches from the newest stored bar, which is
// fetched again because it may have been stored while still open, to now; an empty series is
// filled with its last `backfill_days`.
//
// PeriodicSync runs SyncSeries for every series of `[market_data] sync` on a thread of its own,
// one round every `sync_interval`, for `megaserve serve`. A series that fails (no network, the
// exchange refusing) logs one warning when it starts failing and one line when it recovers,
// never one per attempt, and the others carry on. Stop() ends waits and requests in flight
// within about 50 ms.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "forecast/candle_store.h"
#include "forecast/exchange_client.h"

namespace megaserve::forecast {

// One series to keep in sync, "SOURCE:SYMBOL:INTERVAL" in the configuration.
struct SyncTarget {
  std::string source;    // "binance" or "coinbase"
  std::string symbol;    // as the exchange is asked for it ("BTCUSDT", or "BTC-USD")
  std::string interval;  // one of IntervalNames()

  // "binance:BTCUSDT:4h".
  std::string ToString() const { return source + ":" + symbol + ":" + interval; }
};

// Parses and checks "SOURCE:SYMBOL:INTERVAL": a known source, a symbol the store accepts (for
// Coinbase also BASE-QUOTE), an interval the source serves. kInvalidArgument says what is wrong.
core::Result<SyncTarget> ParseSyncTarget(std::string_view text);

// The symbol a series is stored under: "BTC-USD" -> "BTCUSD", upper-cased; kInvalidArgument as
// NormalizeSymbol.
core::Result<std::string> StoredSymbol(std::string_view symbol);

struct SyncOptions {
  std::optional<int64_t> from_ms;  // first open time wanted; default as at the top of this file
  std::optional<int64_t> to_ms;    // last open time wanted; default now
  int backfill_days = 30;
  PageCallback on_page;  // after each page fetched; may be empty
};

struct SyncReport {
  int64_t from_ms = 0;  // the range fetched
  int64_t to_ms = 0;
  int64_t fetched = 0;  // bars the exchange returned in the range
  UpsertCounts counts;
};

// Fetches `symbol` at `interval` from `client` and upserts the bars under StoredSymbol(symbol)
// with client.source() as their source. `now_ms` is the current Unix time. Errors are the
// client's (see MarketDataClient::Fetch) or the store's; nothing is stored on error.
core::Result<SyncReport> SyncSeries(MarketDataClient& client, CandleStore& store,
                                    std::string_view symbol, std::string_view interval,
                                    int64_t now_ms, const SyncOptions& options = {});

class PeriodicSync {
 public:
  struct Options {
    std::vector<SyncTarget> targets;
    std::chrono::milliseconds interval{60'000};
    int backfill_days = 30;
    // Per source; base_url and weight_budget come from here. `stop` is set by PeriodicSync.
    ExchangeOptions binance;
    ExchangeOptions coinbase;
  };

  struct Stats {
    uint64_t rounds = 0;    // completed rounds over every target
    uint64_t failures = 0;  // failed SyncSeries calls
    uint64_t warnings = 0;  // failure streaks begun (each logged once)
  };

  // The sync described by `config`, or nullptr when config.sync is empty. kInvalidArgument names
  // the bad entry of market_data.sync. `store` must outlive the result.
  static core::Result<std::unique_ptr<PeriodicSync>> Create(const core::MarketDataConfig& config,
                                                            CandleStore& store);

  // `store` must outlive this object. Nothing runs until Start().
  PeriodicSync(Options options, CandleStore& store);
  ~PeriodicSync();  // Stops.

  // No copying allowed.
  PeriodicSync(const PeriodicSync&) = delete;
  PeriodicSync& operator=(const PeriodicSync&) = delete;

  // Starts the thread: a first round at once, then one every interval.
  void Start();
  // Ends the thread, interrupting waits and requests in flight. Idempotent.
  void Stop();

  // One round over every target on the caller's thread (for tests and tools; not while started).
  void RunOnce();

  // Blocks until at least `rounds` rounds have completed or `timeout` passes; true on the former.
  bool WaitForRounds(uint64_t rounds, std::chrono::milliseconds timeout);

  Stats stats() const;

 private:
  void Loop();
  void SyncOne(std::size_t i);

  Options options_;
  CandleStore& store_;
  std::atomic<bool> stop_{false};
  std::unique_ptr<MarketDataClient> binance_;
  std::unique_ptr<MarketDataClient> coinbase_;
  std::vector<bool> failing_;  // per target: in a failure streak (touched by one thread)

  mutable std::mutex mu_;
  std::condition_variable cv_;  // wakes the loop on Stop() and waiters on a finished round
  Stats stats_;
  std::thread thread_;
};

}  // namespace megaserve::forecast
