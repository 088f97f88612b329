// Syncing candles from the exchanges into the store; see market_sync.h.
//
// Range rule. The newest stored bar is where a sync resumes: it is fetched again because it may
// have been stored while still open (a partial bar), and the upsert then updates it in place and
// clears its flag. Re-fetching one bar per round costs nothing extra (it shares the page with the
// new ones). An empty series starts `backfill_days` back, on the interval's grid.
//
// Failure streaks. Each target remembers whether its last sync failed. The first failure logs a
// warning naming the series and the error; later failures of the same streak only count in
// stats(); the first success after a streak logs that the series syncs again. On a machine
// without network access that is one line per series for the whole life of the process.
#include "forecast/market_sync.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>

namespace megaserve::forecast {
namespace {

constexpr int64_t kDayMs = 86'400'000;

int64_t SystemNowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Floors `t` to the interval grid (a multiple of the interval since the Unix epoch).
int64_t FloorToGrid(int64_t t, int64_t interval_ms) {
  int64_t q = t / interval_ms;
  if (t % interval_ms < 0) --q;
  return q * interval_ms;
}

}  // namespace

core::Result<std::string> StoredSymbol(std::string_view symbol) {
  std::string joined;
  for (char c : symbol) {
    if (c != '-') joined.push_back(c);
  }
  return NormalizeSymbol(joined);
}

core::Result<SyncTarget> ParseSyncTarget(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return core::InvalidArgument(fmt::format("market_data.sync: \"{}\": {}", text, why));
  };
  auto first = text.find(':');
  auto second = first == std::string_view::npos ? first : text.find(':', first + 1);
  if (second == std::string_view::npos || text.find(':', second + 1) != std::string_view::npos) {
    return bad("expected SOURCE:SYMBOL:INTERVAL, e.g. \"binance:BTCUSDT:4h\"");
  }
  SyncTarget t{std::string(text.substr(0, first)),
               std::string(text.substr(first + 1, second - first - 1)),
               std::string(text.substr(second + 1))};
  if (t.source != "binance" && t.source != "coinbase") {
    return bad(fmt::format("unknown source \"{}\"; known: binance, coinbase", t.source));
  }
  if (auto interval = IntervalMillis(t.interval); !interval.ok()) {
    return bad(interval.status().message());
  }
  if (t.source == "coinbase") {
    if (auto g = CoinbaseGranularity(t.interval); !g.ok()) return bad(g.status().message());
    if (auto p = CoinbaseProductId(t.symbol); !p.ok()) return bad(p.status().message());
  } else if (t.symbol.find('-') != std::string::npos) {
    return bad("a Binance symbol has no '-', e.g. BTCUSDT");
  }
  if (auto s = StoredSymbol(t.symbol); !s.ok()) return bad(s.status().message());
  return t;
}

core::Result<SyncReport> SyncSeries(MarketDataClient& client, CandleStore& store,
                                    std::string_view symbol, std::string_view interval,
                                    int64_t now_ms, const SyncOptions& options) {
  auto stored = StoredSymbol(symbol);
  if (!stored.ok()) return stored.status();
  auto interval_ms = IntervalMillis(interval);
  if (!interval_ms.ok()) return interval_ms.status();

  SyncReport report;
  report.to_ms = options.to_ms.value_or(now_ms);
  if (options.from_ms) {
    report.from_ms = *options.from_ms;
  } else {
    auto latest = store.Latest(*stored, interval);
    if (!latest.ok()) return latest.status();
    report.from_ms = *latest ? (*latest)->open_time_ms
                             : FloorToGrid(now_ms - options.backfill_days * kDayMs, *interval_ms);
  }
  if (report.from_ms > report.to_ms) {
    return core::InvalidArgument(fmt::format(
        "nothing to sync: the range starts after it ends ({} > {})", report.from_ms, report.to_ms));
  }
  auto bars = client.Fetch(symbol, interval, report.from_ms, report.to_ms, options.on_page);
  if (!bars.ok()) return bars.status();
  report.fetched = static_cast<int64_t>(bars->size());
  if (bars->empty()) return report;
  auto counts = store.Upsert(*stored, interval, client.source(), *bars);
  if (!counts.ok()) return counts.status();
  report.counts = *counts;
  return report;
}

core::Result<std::unique_ptr<PeriodicSync>> PeriodicSync::Create(
    const core::MarketDataConfig& config, CandleStore& store) {
  if (config.sync.empty()) return std::unique_ptr<PeriodicSync>();
  Options options;
  for (const std::string& entry : config.sync) {
    auto target = ParseSyncTarget(entry);
    if (!target.ok()) return target.status();
    options.targets.push_back(std::move(*target));
  }
  options.interval = config.sync_interval;
  options.backfill_days = config.backfill_days;
  options.binance.base_url = config.binance_url;
  options.binance.weight_budget = config.binance_weight_budget;
  options.coinbase.base_url = config.coinbase_url;
  // Validate the URLs now rather than on the first round.
  for (const auto& [source, o] :
       {std::pair{"binance", &options.binance}, std::pair{"coinbase", &options.coinbase}}) {
    if (auto c = MakeMarketDataClient(source, *o); !c.ok()) {
      return core::InvalidArgument("market_data." + std::string(source) +
                                   "_url: " + c.status().message());
    }
  }
  return std::make_unique<PeriodicSync>(std::move(options), store);
}

PeriodicSync::PeriodicSync(Options options, CandleStore& store)
    : options_(std::move(options)), store_(store), failing_(options_.targets.size(), false) {
  bool binance = false, coinbase = false;
  for (const SyncTarget& t : options_.targets) {
    binance |= t.source == "binance";
    coinbase |= t.source == "coinbase";
  }
  options_.binance.stop = &stop_;
  options_.coinbase.stop = &stop_;
  // Targets were checked by ParseSyncTarget; a client that cannot be made fails its targets.
  if (binance) {
    if (auto c = MakeMarketDataClient("binance", options_.binance); c.ok())
      binance_ = std::move(*c);
  }
  if (coinbase) {
    if (auto c = MakeMarketDataClient("coinbase", options_.coinbase); c.ok()) {
      coinbase_ = std::move(*c);
    }
  }
}

PeriodicSync::~PeriodicSync() { Stop(); }

void PeriodicSync::Start() {
  if (thread_.joinable()) return;
  stop_.store(false, std::memory_order_release);
  std::string names;
  for (const SyncTarget& t : options_.targets) names += (names.empty() ? "" : ", ") + t.ToString();
  spdlog::info("market data: syncing {} every {} s", names, options_.interval.count() / 1000.0);
  thread_ = std::thread([this] { Loop(); });
}

void PeriodicSync::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_.store(true, std::memory_order_release);
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void PeriodicSync::Loop() {
  while (!stop_.load(std::memory_order_acquire)) {
    RunOnce();
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, options_.interval, [this] { return stop_.load(); });
  }
}

void PeriodicSync::RunOnce() {
  for (std::size_t i = 0; i < options_.targets.size(); ++i) {
    if (stop_.load(std::memory_order_acquire)) return;
    SyncOne(i);
  }
  {
    std::lock_guard lock(mu_);
    ++stats_.rounds;
  }
  cv_.notify_all();
}

void PeriodicSync::SyncOne(std::size_t i) {
  const SyncTarget& t = options_.targets[i];
  MarketDataClient* client = t.source == "binance" ? binance_.get() : coinbase_.get();
  core::Result<SyncReport> report =
      client ? SyncSeries(*client, store_, t.symbol, t.interval, SystemNowMs(),
                          {.backfill_days = options_.backfill_days})
             : core::Result<SyncReport>(core::InvalidArgument("no client for " + t.source));
  if (report.ok()) {
    if (failing_[i]) {
      spdlog::info("market data: {} syncs again ({} new, {} updated bars)", t.ToString(),
                   report->counts.inserted, report->counts.updated);
      failing_[i] = false;
    } else {
      spdlog::debug("market data: {}: {} new, {} updated bars", t.ToString(),
                    report->counts.inserted, report->counts.updated);
    }
    return;
  }
  if (report.status().code() == core::StatusCode::kCanceled) return;  // stopping
  std::lock_guard lock(mu_);
  ++stats_.failures;
  if (!failing_[i]) {
    failing_[i] = true;
    ++stats_.warnings;
    spdlog::warn(
        "market data: syncing {} failed: {}; retrying every {} s, quietly until it succeeds",
        t.ToString(), report.status().message(), options_.interval.count() / 1000.0);
  }
}

bool PeriodicSync::WaitForRounds(uint64_t rounds, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return stats_.rounds >= rounds; });
}

PeriodicSync::Stats PeriodicSync::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace megaserve::forecast
