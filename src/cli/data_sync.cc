// `megaserve data sync`; see data_sync.h.
#include "cli/data_sync.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "core/config.h"
#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/exchange_client.h"
#include "forecast/market_sync.h"

namespace megaserve::cli {
namespace {

constexpr int kFailed = 1;
constexpr int kBadArguments = 2;

int Report(std::FILE* err, const core::Status& s) {
  fmt::print(err, "megaserve data sync: {}\n", s.message());
  return s.code() == core::StatusCode::kInvalidArgument ? kBadArguments : kFailed;
}

std::string Utc(int64_t ms) { return forecast::FormatUtcTimestamp(ms) + " UTC"; }

// The configuration as OpenDataStore reads it (for market_data.*).
core::Result<core::Config> LoadSyncConfig(const DataFlags& f) {
  auto loaded = LoadCommandConfig(f.config_file, f.data_dir, f.sets);
  if (!loaded.ok()) return loaded.status();
  return std::move(loaded->config);
}

}  // namespace

core::Result<int64_t> ParseSyncTime(std::string_view text) {
  if (!text.empty() &&
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      text.size() > 10) {
    return std::stoll(std::string(text));  // Unix milliseconds
  }
  std::string t(text);
  if (t.size() == 20 && t[10] == 'T' && t.back() == 'Z') {
    t[10] = ' ';
    t.pop_back();
  }
  auto ms = forecast::ParseUtcTimestamp(t);
  if (!ms.ok()) {
    return core::InvalidArgument(fmt::format(
        "time \"{}\": expected YYYY-MM-DD, \"YYYY-MM-DD HH:MM:SS\", YYYY-MM-DDTHH:MM:SSZ (UTC) or "
        "Unix milliseconds",
        text));
  }
  return *ms;
}

CLI::App* AddDataSyncCommand(CLI::App* data, DataFlags& data_flags, DataSyncFlags& f) {
  f.cmd = data->add_subcommand(
      "sync",
      "Fetch candles from an exchange (Binance or Coinbase) into the store: from the newest "
      "stored bar (or --from) up to now (or --to).");
  f.cmd->add_option("--source", f.source, "binance (default) or coinbase")
      ->check(CLI::IsMember({"binance", "coinbase"}));
  f.cmd->add_option("-s,--symbol", f.symbol, "e.g. BTCUSDT; Coinbase also takes BTC-USD")
      ->required();
  f.cmd->add_option("-i,--interval", f.interval, "e.g. 4h (Coinbase: 1m 5m 15m 1h 6h 1d)")
      ->required();
  f.cmd->add_option("--from", f.from,
                    "first bar, YYYY-MM-DD[ HH:MM:SS] UTC (default: the newest stored bar, or "
                    "market_data.backfill_days back)");
  f.cmd->add_option("--to", f.to, "last bar, same forms (default: now)");
  f.cmd->add_option("--url", f.url,
                    "API base URL (default: market_data.binance_url / coinbase_url)");
  AddDataConfigFlags(f.cmd, data_flags);
  return f.cmd;
}

int RunDataSync(const DataFlags& data_flags, const DataSyncFlags& f, std::FILE* out,
                std::FILE* err) {
  auto config = LoadSyncConfig(data_flags);
  if (!config.ok()) return Report(err, config.status());
  forecast::SyncOptions options;
  options.backfill_days = config->market_data.backfill_days;
  if (!f.from.empty()) {
    auto from = ParseSyncTime(f.from);
    if (!from.ok()) return Report(err, from.status());
    options.from_ms = *from;
  }
  if (!f.to.empty()) {
    auto to = ParseSyncTime(f.to);
    if (!to.ok()) return Report(err, to.status());
    options.to_ms = *to;
  }
  forecast::ExchangeOptions exchange;
  exchange.base_url = !f.url.empty()           ? f.url
                      : f.source == "coinbase" ? config->market_data.coinbase_url
                                               : config->market_data.binance_url;
  exchange.weight_budget = config->market_data.binance_weight_budget;
  auto client = forecast::MakeMarketDataClient(f.source, exchange);
  if (!client.ok()) return Report(err, client.status());
  // Refuse what the exchange cannot serve before touching the store.
  if (auto target = forecast::ParseSyncTarget(f.source + ":" + f.symbol + ":" + f.interval);
      !target.ok()) {
    std::string message = target.status().message();
    if (auto colon = message.find("\": "); colon != std::string::npos) {
      message = message.substr(colon + 3);  // drop the market_data.sync prefix
    }
    return Report(err, core::InvalidArgument(message));
  }

  auto db = OpenDataStore(data_flags);
  if (!db.ok()) return Report(err, db.status());
  forecast::CandleStore store(**db);
  options.on_page = [&](const forecast::PageProgress& p) {
    fmt::print(out, "page {}: {} bars, up to {}\n", p.page, p.bars, Utc(p.last_open_ms));
    std::fflush(out);
  };
  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  auto report = forecast::SyncSeries(**client, store, f.symbol, f.interval, now, options);
  if (!report.ok()) return Report(err, report.status());
  auto stored = forecast::StoredSymbol(f.symbol);
  fmt::print(out,
             "synced {} {} {} from {} to {}: {} bars fetched, {} new, {} updated, {} unchanged\n",
             f.source, stored.ok() ? *stored : f.symbol, f.interval, Utc(report->from_ms),
             Utc(report->to_ms), report->fetched, report->counts.inserted, report->counts.updated,
             report->counts.unchanged);
  return 0;
}

}  // namespace megaserve::cli
