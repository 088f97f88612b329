// Clients for the exchanges' public candle endpoints, on net::HttpClient.
//
//   Binance   GET /api/v3/klines                 <= 1000 bars a call, paged forward by startTime;
//                                                 request weight budgeted per minute.
//   Coinbase  GET /products/{product_id}/candles <= 300 bars a call, paged by start/end; only
//                                                 the granularities 1m 5m 15m 1h 6h 1d exist.
//
// A client owns an io_context on a thread of its own and blocks the caller until a whole range
// is fetched, so it suits command-line tools and background threads, never an I/O thread. Rate
// limits (429, and Binance's 418 ban) are honoured by waiting Retry-After, a bounded number of
// times; 5xx answers and dropped connections are retried with exponential backoff a bounded
// number of times; after that the call fails with kUnavailable saying what the exchange
// answered. The limits and the retry rules are explained in exchange_client.cc.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"

namespace megaserve::forecast {

// After each page of a fetch: the page's number (1-based), its bars, and the open time of its
// last bar.
struct PageProgress {
  int page = 0;
  int64_t bars = 0;
  int64_t last_open_ms = 0;
};
using PageCallback = std::function<void(const PageProgress&)>;

struct ExchangeOptions {
  // Scheme, host and optional port (and path prefix) of the API; "" = the exchange's public one.
  std::string base_url;
  std::chrono::milliseconds timeout{15'000};  // one HTTP exchange, connect included
  std::string user_agent;                     // "" = "megaserve/<version>"
  // Binance: request weight this client lets the IP use per minute (the exchange allows 6000;
  // a klines call weighs 2). Once X-MBX-USED-WEIGHT-1M says the next call would pass it, the
  // client waits for the next minute.
  int weight_budget = 1000;
  // Coinbase: least time between two calls (the exchange allows 10 per second per IP).
  std::chrono::milliseconds min_spacing{100};
  int rate_limit_tries = 4;    // calls answered 429/418 before giving up
  int server_error_tries = 3;  // calls answered 5xx or failed in transit before giving up
  std::chrono::milliseconds backoff{500};  // first wait after a 5xx (doubles each time)
  // Longest Retry-After honoured; a longer one (a Binance ban) fails the fetch at once.
  std::chrono::milliseconds max_retry_after{120'000};
  // Clock and sleep, replaceable for tests. now_ms: Unix milliseconds ("" = the system clock).
  // sleep: waits and returns true, or returns false early when the fetch must stop ("" = a
  // sleep that ends early once `stop` is set).
  std::function<int64_t()> now_ms;
  std::function<bool(std::chrono::milliseconds)> sleep;
  // When set and true, waits and requests in progress end with kCanceled (checked every 50 ms).
  const std::atomic<bool>* stop = nullptr;
};

// A source of candles: one exchange's public market data.
class MarketDataClient {
 public:
  virtual ~MarketDataClient() = default;

  // "binance" or "coinbase", as stored in the candles' source column.
  virtual std::string_view source() const = 0;

  // Every bar of `symbol` at `interval` whose open time is in [from_ms, to_ms], oldest first,
  // with bars still open at the time of the call flagged partial. `on_page` (may be empty) is
  // called after each page. Errors: kInvalidArgument for an interval the exchange lacks, a
  // malformed symbol, or a request the exchange refuses (4xx, its message included);
  // kUnavailable when the exchange cannot be reached or keeps refusing (rate limits, 5xx);
  // kCanceled when `stop` was set. Pages already fetched are dropped on error.
  virtual core::Result<std::vector<Candle>> Fetch(std::string_view symbol,
                                                  std::string_view interval, int64_t from_ms,
                                                  int64_t to_ms,
                                                  const PageCallback& on_page = {}) = 0;
};

inline constexpr std::string_view kBinanceDefaultUrl = "https://api.binance.com";
inline constexpr std::string_view kCoinbaseDefaultUrl = "https://api.exchange.coinbase.com";
inline constexpr int kBinanceMaxLimit = 1000;  // bars per klines call
inline constexpr int kBinanceKlinesWeight = 2;
inline constexpr int kCoinbaseMaxCandles = 300;  // bars per candles call

// A client for `source` ("binance" or "coinbase"); kInvalidArgument names the known sources, or
// the problem with options.base_url.
core::Result<std::unique_ptr<MarketDataClient>> MakeMarketDataClient(std::string_view source,
                                                                     ExchangeOptions options);

// Coinbase's product id for a symbol: "BTC-USD" as given (upper-cased); "BTCUSDT" -> "BTC-USDT",
// "ETHUSD" -> "ETH-USD", split before a known quote currency (USDT USDC USD EUR GBP BTC ETH DAI).
// kInvalidArgument when no quote currency is recognised.
core::Result<std::string> CoinbaseProductId(std::string_view symbol);

// Coinbase's granularity in seconds for an interval; kInvalidArgument names the intervals
// Coinbase serves (1m 5m 15m 1h 6h 1d) for any other.
core::Result<int64_t> CoinbaseGranularity(std::string_view interval);

}  // namespace megaserve::forecast
