// Binance and Coinbase candle clients; see exchange_client.h.
//
// Sources for the limits (the exchanges' documentation):
// - Binance Spot API, "Kline/Candlestick data": GET /api/v3/klines, weight 2, limit default 500
//   and at most 1000, klines identified by their open time, startTime/endTime in ms.
//   "LIMITS": every response carries X-MBX-USED-WEIGHT-1M, the IP's weight used in the current
//   minute (the REQUEST_WEIGHT limit is 6000 per minute, counted per calendar minute); 429 when a
//   limit is passed, 418 when an IP that kept calling after 429s is banned (2 minutes to 3 days);
//   both carry Retry-After in seconds.
// - Coinbase Exchange API, "Get product candles": granularity one of {60, 300, 900, 3600, 21600,
//   86400}, at most 300 candles per request (a larger start/end span is rejected), rows
//   [time, low, high, open, close, volume] newest first; "Rate limits": public endpoints 10
//   requests per second per IP, 429 beyond.
//
// Weight budget (Binance). The client remembers the last X-MBX-USED-WEIGHT-1M it saw and the
// minute it saw it in. Before a call, if that minute is still current and the used weight plus
// the call's weight would pass options.weight_budget, it sleeps until just after the minute
// rolls over. Keeping well under the exchange's limit leaves room for other clients on the IP.
//
// Retries. A 429 or 418 is retried after its Retry-After (after the backoff when it has none),
// up to rate_limit_tries answers; a Retry-After longer than max_retry_after (a long ban) fails at
// once, because waiting it out would hang a sync for hours. A 5xx or a transport error (refused,
// reset, timed out) is retried after backoff, 2 x backoff, ..., up to server_error_tries calls.
// Other 4xx answers are the caller's mistake and fail at once with the exchange's message.
#include "forecast/exchange_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cctype>
#include <charconv>
#include <thread>

#include "core/time_format.h"
#include "forecast/candle_store.h"
#include "forecast/exchange_formats.h"
#include "megaserve/build_info.h"
#include "net/http_client.h"
#include "net/url.h"

namespace megaserve::forecast {
namespace {

using std::chrono::milliseconds;

constexpr milliseconds kPollSlice{50};
constexpr int64_t kMinuteMs = 60'000;
constexpr milliseconds kRolloverMargin{500};  // past the minute, for clock skew

int64_t SystemNowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A blocking facade over HttpClient: its own io_context runs on a thread of its own.
class BlockingHttp {
 public:
  BlockingHttp(std::string user_agent, const std::atomic<bool>* stop)
      : guard_(boost::asio::make_work_guard(ioc_)), stop_(stop) {
    net::HttpClientOptions options;
    options.user_agent = std::move(user_agent);
    client_ = std::make_unique<net::HttpClient>(ioc_, options);
    thread_ = std::thread([this] { ioc_.run(); });
  }
  ~BlockingHttp() {
    guard_.reset();
    ioc_.stop();
    thread_.join();
    client_.reset();  // the loop is no longer running, as HttpClient requires
  }
  BlockingHttp(const BlockingHttp&) = delete;
  BlockingHttp& operator=(const BlockingHttp&) = delete;

  core::Result<net::ClientResponse> Get(std::string url, milliseconds timeout) {
    net::ClientRequest req;
    req.url = std::move(url);
    req.timeout = timeout;
    req.headers.emplace_back("Accept", "application/json");
    auto future = client_->Fetch(std::move(req));
    while (future.wait_for(kPollSlice) != std::future_status::ready) {
      if (stop_ && stop_->load(std::memory_order_acquire)) {
        return core::Canceled("market data fetch stopped");
      }
    }
    return future.get();
  }

 private:
  boost::asio::io_context ioc_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::unique_ptr<net::HttpClient> client_;
  std::thread thread_;
  const std::atomic<bool>* stop_;
};

// Retry-After as a whole number of seconds; -1 when absent or not a number.
int64_t RetryAfterSeconds(const net::ClientResponse& res) {
  std::string_view v = res.Header("Retry-After");
  int64_t seconds = -1;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
  if (ec != std::errc() || end != v.data() + v.size() || seconds < 0) return -1;
  return seconds;
}

std::string HostOf(const std::string& url) {
  auto parsed = net::ParseUrl(url);
  return parsed.ok() ? parsed->HostPort() : url;
}

// What both exchanges share: the HTTP facade, the clock, and the retry loop.
class ExchangeClient : public MarketDataClient {
 public:
  ExchangeClient(std::string name, ExchangeOptions options)
      : name_(std::move(name)),
        options_(std::move(options)),
        http_(options_.user_agent.empty() ? std::string("megaserve/") + build::kVersion
                                          : options_.user_agent,
              options_.stop) {
    while (!options_.base_url.empty() && options_.base_url.back() == '/') {
      options_.base_url.pop_back();
    }
  }

  std::string_view source() const override { return name_; }

 protected:
  int64_t Now() const { return options_.now_ms ? options_.now_ms() : SystemNowMs(); }

  bool Stopped() const { return options_.stop && options_.stop->load(std::memory_order_acquire); }

  // Waits `d`; false when the fetch must stop.
  bool Sleep(milliseconds d) {
    if (options_.sleep) return options_.sleep(d);
    auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
      if (Stopped()) return false;
      std::this_thread::sleep_for(std::min<milliseconds>(
          kPollSlice,
          std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now())));
    }
    return !Stopped();
  }

  core::Status Stop() const { return core::Canceled(name_ + ": fetch stopped"); }

  // Waits before a call as the exchange's limits require; false when the fetch must stop.
  virtual bool Pace() = 0;
  // Records what a response says about the limits.
  virtual void Account(const net::ClientResponse& res) = 0;

  // GETs `path_and_query` with the retry rules at the top of this file; returns a 200 response.
  core::Result<net::ClientResponse> Call(const std::string& path_and_query) {
    const std::string url = options_.base_url + path_and_query;
    int rate_limited = 0;
    int failures = 0;
    milliseconds backoff = options_.backoff;
    while (true) {
      if (Stopped() || !Pace()) return Stop();
      auto res = http_.Get(url, options_.timeout);
      std::string problem;
      if (!res.ok()) {
        if (res.status().code() == core::StatusCode::kCanceled) return Stop();
        if (res.status().code() == core::StatusCode::kInvalidArgument) {
          return core::InvalidArgument(fmt::format("{}: {}", name_, res.status().message()));
        }
        problem = res.status().message();
      } else {
        Account(*res);
        const int status = res->status;
        if (status == 200) return res;
        if (status == 429 || status == 418) {
          int64_t retry_after = RetryAfterSeconds(*res);
          milliseconds wait = retry_after >= 0 ? milliseconds(retry_after * 1000) : backoff;
          const char* what =
              status == 418 ? "banned this IP (HTTP 418)" : "rate limited (HTTP 429)";
          if (wait > options_.max_retry_after) {
            return core::Unavailable(fmt::format(
                "{}: the exchange {} and asks to wait {} s (Retry-After); try again later", name_,
                what, retry_after));
          }
          if (++rate_limited >= options_.rate_limit_tries) {
            return core::Unavailable(fmt::format("{}: the exchange {} {} times in a row; giving up",
                                                 name_, what, rate_limited));
          }
          if (retry_after < 0) backoff *= 2;
          if (!Sleep(wait)) return Stop();
          continue;
        }
        if (status < 500) {
          return core::InvalidArgument(fmt::format("{}: HTTP {} for {}: {}", name_, status,
                                                   path_and_query,
                                                   ExchangeErrorMessage(res->body)));
        }
        problem = fmt::format("HTTP {}: {}", status, ExchangeErrorMessage(res->body));
      }
      if (++failures >= options_.server_error_tries) {
        return core::Unavailable(fmt::format("{}: {} unreachable after {} tries: {}", name_,
                                             HostOf(url), failures, problem));
      }
      if (!Sleep(backoff)) return Stop();
      backoff *= 2;
    }
  }

  std::string name_;
  ExchangeOptions options_;

 private:
  BlockingHttp http_;
};

class BinanceClient final : public ExchangeClient {
 public:
  explicit BinanceClient(ExchangeOptions options) : ExchangeClient("binance", std::move(options)) {}

  core::Result<std::vector<Candle>> Fetch(std::string_view symbol_in, std::string_view interval,
                                          int64_t from_ms, int64_t to_ms,
                                          const PageCallback& on_page) override {
    auto interval_ms = IntervalMillis(interval);
    if (!interval_ms.ok()) return interval_ms.status();
    auto symbol = NormalizeSymbol(symbol_in);
    if (!symbol.ok()) return symbol.status();
    if (from_ms > to_ms) {
      return core::InvalidArgument(fmt::format("binance: empty range {} > {}", from_ms, to_ms));
    }
    std::vector<Candle> out;
    int64_t start = from_ms;
    for (int page = 1; start <= to_ms; ++page) {
      auto res =
          Call(fmt::format("/api/v3/klines?symbol={}&interval={}&startTime={}&endTime={}"
                           "&limit={}",
                           *symbol, interval, start, to_ms, kBinanceMaxLimit));
      if (!res.ok()) return res.status();
      auto bars = ParseBinanceKlines(res->body, *interval_ms, Now());
      if (!bars.ok()) return bars.status();
      const std::size_t returned = bars->size();
      for (const Candle& c : *bars) {
        if (c.open_time_ms < start || c.open_time_ms > to_ms) continue;
        if (!out.empty() && c.open_time_ms <= out.back().open_time_ms) continue;
        out.push_back(c);
      }
      if (on_page) {
        on_page({.page = page,
                 .bars = static_cast<int64_t>(returned),
                 .last_open_ms = returned ? bars->back().open_time_ms : start});
      }
      if (returned < static_cast<std::size_t>(kBinanceMaxLimit)) break;
      const int64_t next = bars->back().open_time_ms + *interval_ms;
      if (next <= start) break;  // no progress: the exchange ignored startTime
      start = next;
    }
    return out;
  }

 protected:
  bool Pace() override {
    if (used_weight_ + kBinanceKlinesWeight <= options_.weight_budget) return true;
    const int64_t now = Now();
    if (now / kMinuteMs != weight_minute_) {  // a new minute: the exchange reset its count
      used_weight_ = 0;
      return true;
    }
    milliseconds wait(kMinuteMs - now % kMinuteMs);
    if (!Sleep(wait + kRolloverMargin)) return false;
    used_weight_ = 0;
    return true;
  }

  void Account(const net::ClientResponse& res) override {
    weight_minute_ = Now() / kMinuteMs;
    std::string_view v = res.Header("X-MBX-USED-WEIGHT-1M");
    int used = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), used);
    if (ec == std::errc() && end == v.data() + v.size()) {
      used_weight_ = used;
    } else {
      used_weight_ += kBinanceKlinesWeight;  // no header: count our own calls
    }
  }

 private:
  int used_weight_ = 0;
  int64_t weight_minute_ = -1;
};

class CoinbaseClient final : public ExchangeClient {
 public:
  explicit CoinbaseClient(ExchangeOptions options)
      : ExchangeClient("coinbase", std::move(options)) {}

  core::Result<std::vector<Candle>> Fetch(std::string_view symbol, std::string_view interval,
                                          int64_t from_ms, int64_t to_ms,
                                          const PageCallback& on_page) override {
    auto granularity = CoinbaseGranularity(interval);
    if (!granularity.ok()) return granularity.status();
    auto product = CoinbaseProductId(symbol);
    if (!product.ok()) return product.status();
    if (from_ms > to_ms) {
      return core::InvalidArgument(fmt::format("coinbase: empty range {} > {}", from_ms, to_ms));
    }
    const int64_t interval_ms = *granularity * 1000;
    std::vector<Candle> out;
    int64_t start = from_ms;
    for (int page = 1; start <= to_ms; ++page) {
      // start and end are both inclusive: 300 bars span 299 intervals.
      const int64_t end = std::min(to_ms, start + (kCoinbaseMaxCandles - 1) * interval_ms);
      auto res =
          Call(fmt::format("/products/{}/candles?granularity={}&start={}&end={}", *product,
                           *granularity, core::Rfc3339(start * 1000), core::Rfc3339(end * 1000)));
      if (!res.ok()) return res.status();
      auto bars = ParseCoinbaseCandles(res->body, interval_ms, Now());
      if (!bars.ok()) return bars.status();
      int64_t kept = 0;
      for (const Candle& c : *bars) {
        // The exchange may add bars before `start`; those belong to the previous page.
        if (c.open_time_ms < start || c.open_time_ms > end) continue;
        if (!out.empty() && c.open_time_ms <= out.back().open_time_ms) continue;
        out.push_back(c);
        ++kept;
      }
      if (on_page) {
        on_page({.page = page, .bars = kept, .last_open_ms = kept ? out.back().open_time_ms : end});
      }
      start = end + interval_ms;
    }
    return out;
  }

 protected:
  bool Pace() override {
    const int64_t now = Now();
    if (last_call_ms_ >= 0 && now - last_call_ms_ < options_.min_spacing.count()) {
      if (!Sleep(milliseconds(options_.min_spacing.count() - (now - last_call_ms_)))) return false;
    }
    last_call_ms_ = Now();
    return true;
  }

  void Account(const net::ClientResponse&) override {}

 private:
  int64_t last_call_ms_ = -1;
};

}  // namespace

core::Result<std::string> CoinbaseProductId(std::string_view symbol) {
  std::string upper(symbol);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto alnum = [](std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) != 0;
    });
  };
  if (auto dash = upper.find('-'); dash != std::string::npos) {
    if (alnum(std::string_view(upper).substr(0, dash)) &&
        alnum(std::string_view(upper).substr(dash + 1))) {
      return upper;
    }
  } else {
    // Longest quote first, so that "USDT" wins over "USD".
    static constexpr std::string_view kQuotes[] = {"USDT", "USDC", "USD", "EUR",
                                                   "GBP",  "BTC",  "ETH", "DAI"};
    for (std::string_view quote : kQuotes) {
      if (upper.size() > quote.size() && upper.ends_with(quote) &&
          alnum(std::string_view(upper).substr(0, upper.size() - quote.size()))) {
        return upper.substr(0, upper.size() - quote.size()) + "-" + std::string(quote);
      }
    }
  }
  return core::InvalidArgument(fmt::format(
      "coinbase: cannot tell the product of symbol \"{}\"; give it as BASE-QUOTE, e.g. BTC-USD",
      symbol));
}

core::Result<int64_t> CoinbaseGranularity(std::string_view interval) {
  static constexpr std::pair<std::string_view, int64_t> kGranularities[] = {
      {"1m", 60}, {"5m", 300}, {"15m", 900}, {"1h", 3600}, {"6h", 21600}, {"1d", 86400}};
  for (const auto& [name, seconds] : kGranularities) {
    if (name == interval) return seconds;
  }
  return core::InvalidArgument(fmt::format(
      "coinbase: interval \"{}\" is not served; Coinbase's candles come in 1m, 5m, 15m, 1h, 6h "
      "and 1d only",
      interval));
}

core::Result<std::unique_ptr<MarketDataClient>> MakeMarketDataClient(std::string_view source,
                                                                     ExchangeOptions options) {
  const bool binance = source == "binance";
  if (!binance && source != "coinbase") {
    return core::InvalidArgument(
        fmt::format("unknown market data source \"{}\"; known: binance, coinbase", source));
  }
  if (options.base_url.empty()) {
    options.base_url = binance ? kBinanceDefaultUrl : kCoinbaseDefaultUrl;
  }
  if (auto url = net::ParseUrl(options.base_url); !url.ok()) {
    return core::InvalidArgument(
        fmt::format("{} URL \"{}\": {}", source, options.base_url, url.status().message()));
  }
  if (binance) return std::unique_ptr<MarketDataClient>(new BinanceClient(std::move(options)));
  return std::unique_ptr<MarketDataClient>(new CoinbaseClient(std::move(options)));
}

}  // namespace megaserve::forecast
