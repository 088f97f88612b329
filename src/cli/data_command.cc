// `megaserve data import|gaps|list`; see data_command.h.
#include "cli/data_command.h"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <limits>

#include "core/config.h"
#include "core/logging.h"
#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/candles.h"
#include "store/migrations.h"

namespace megaserve::cli {
namespace {

using forecast::Candle;
using forecast::CandleStore;
using forecast::FormatUtcTimestamp;
using forecast::Gap;

constexpr int kFailed = 1;
constexpr int kBadArguments = 2;

int Report(std::FILE* err, int code, const std::string& message) {
  fmt::print(err, "megaserve data: {}\n", message);
  return code;
}

// A configuration mistake is a bad argument; anything else (an unreachable store) a failure.
int ReportStatus(std::FILE* err, const core::Status& s) {
  return Report(err, s.code() == core::StatusCode::kInvalidArgument ? kBadArguments : kFailed,
                s.message());
}

std::string Utc(int64_t ms) { return FormatUtcTimestamp(ms) + " UTC"; }

std::string Plural(int64_t n, std::string_view one, std::string_view many) {
  return fmt::format("{} {}", n, n == 1 ? one : many);
}

// Prints the gap summary (and, when `list`, every gap) of a stored series.
void PrintGaps(std::FILE* out, const std::vector<Candle>& bars, int64_t interval_ms, bool list) {
  std::vector<Gap> gaps = forecast::FindGaps(bars, interval_ms);
  int64_t missing = 0;
  const Gap* largest = nullptr;
  for (const Gap& g : gaps) {
    missing += g.missing_bars;
    if (!largest || g.missing_bars > largest->missing_bars) largest = &g;
  }
  if (gaps.empty()) {
    fmt::print(out, "no gaps\n");
  } else if (list) {
    fmt::print(out, "{}, {} missing:\n", Plural(static_cast<int64_t>(gaps.size()), "gap", "gaps"),
               Plural(missing, "bar", "bars"));
    for (const Gap& g : gaps) {
      fmt::print(out, "  {} .. {}  {}\n", FormatUtcTimestamp(g.first_missing_ms),
                 Utc(g.last_missing_ms), Plural(g.missing_bars, "bar", "bars"));
    }
  } else {
    fmt::print(out, "{}, {} missing; the largest {} .. {} ({})\n",
               Plural(static_cast<int64_t>(gaps.size()), "gap", "gaps"),
               Plural(missing, "bar", "bars"), FormatUtcTimestamp(largest->first_missing_ms),
               Utc(largest->last_missing_ms), Plural(largest->missing_bars, "bar", "bars"));
  }
}

core::Result<std::vector<Candle>> WholeSeries(CandleStore& store, const std::string& symbol,
                                              const std::string& interval) {
  return store.Range(symbol, interval, std::numeric_limits<int64_t>::min(),
                     std::numeric_limits<int64_t>::max(), 0, /*include_partial=*/true,
                     /*newest=*/false);
}

int Import(const DataFlags& f, std::FILE* out, std::FILE* err) {
  auto symbol = forecast::NormalizeSymbol(f.symbol);
  if (!symbol.ok()) return Report(err, kBadArguments, "--symbol: " + symbol.status().message());
  if (!f.interval.empty()) {
    if (auto ms = forecast::IntervalMillis(f.interval); !ms.ok()) {
      return Report(err, kBadArguments, "--interval: " + ms.status().message());
    }
  }
  if (f.source.empty()) return Report(err, kBadArguments, "--source must not be empty");

  auto file = forecast::ReadCandleFile(f.file);
  if (!file.ok()) return Report(err, kFailed, file.status().message());
  std::string detected = forecast::IntervalNameForMillis(file->interval_ms);
  std::string interval = f.interval;
  if (interval.empty()) {
    if (detected.empty()) {
      return Report(err, kBadArguments,
                    fmt::format("{}: cannot tell the interval from the file (its bars are "
                                "mostly {} ms apart); give --interval",
                                f.file, file->interval_ms));
    }
    interval = detected;
  } else if (file->candles.size() > 1 && detected != interval) {
    return Report(err, kFailed,
                  fmt::format("{}: its bars are mostly {} apart, not {} as --interval says", f.file,
                              detected.empty() ? fmt::format("{} ms", file->interval_ms) : detected,
                              interval));
  }

  auto db = OpenDataStore(f);
  if (!db.ok()) return ReportStatus(err, db.status());
  CandleStore store(**db);
  auto counts = store.Upsert(*symbol, interval, f.source, file->candles);
  if (!counts.ok()) return Report(err, kFailed, counts.status().message());
  auto latest = store.Latest(*symbol, interval);
  if (!latest.ok()) return Report(err, kFailed, latest.status().message());
  fmt::print(out, "imported {} of {} {} from {} ({}): {} new, {} updated, {} unchanged",
             Plural(static_cast<int64_t>(file->candles.size()), "bar", "bars"), *symbol, interval,
             f.file, forecast::CandleFileLayoutName(file->layout), counts->inserted,
             counts->updated, counts->unchanged);
  if (latest->has_value() && (*latest)->partial) {
    fmt::print(out, "; last bar partial ({})", Utc((*latest)->open_time_ms));
  }
  fmt::print(out, "\n");

  auto bars = WholeSeries(store, *symbol, interval);
  if (!bars.ok()) return Report(err, kFailed, bars.status().message());
  fmt::print(out, "stored: {} from {} to {}; ",
             Plural(static_cast<int64_t>(bars->size()), "bar", "bars"),
             FormatUtcTimestamp(bars->front().open_time_ms), Utc(bars->back().open_time_ms));
  PrintGaps(out, *bars, *forecast::IntervalMillis(interval), /*list=*/false);
  return 0;
}

int Gaps(const DataFlags& f, std::FILE* out, std::FILE* err) {
  auto symbol = forecast::NormalizeSymbol(f.symbol);
  if (!symbol.ok()) return Report(err, kBadArguments, "--symbol: " + symbol.status().message());
  auto interval_ms = forecast::IntervalMillis(f.interval);
  if (!interval_ms.ok()) {
    return Report(err, kBadArguments, "--interval: " + interval_ms.status().message());
  }
  auto db = OpenDataStore(f);
  if (!db.ok()) return ReportStatus(err, db.status());
  CandleStore store(**db);
  auto bars = WholeSeries(store, *symbol, f.interval);
  if (!bars.ok()) return Report(err, kFailed, bars.status().message());
  if (bars->empty()) {
    return Report(err, kFailed,
                  fmt::format("no {} {} candles stored; add some with `megaserve data import`",
                              *symbol, f.interval));
  }
  fmt::print(out, "{} {}: {} from {} to {}\n", *symbol, f.interval,
             Plural(static_cast<int64_t>(bars->size()), "bar", "bars"),
             FormatUtcTimestamp(bars->front().open_time_ms), Utc(bars->back().open_time_ms));
  PrintGaps(out, *bars, *interval_ms, /*list=*/true);
  if (bars->back().partial) {
    fmt::print(out, "last bar {} is partial (it may still have been open when stored)\n",
               Utc(bars->back().open_time_ms));
  } else {
    fmt::print(out, "last bar {} is complete\n", Utc(bars->back().open_time_ms));
  }
  return 0;
}

int List(const DataFlags& f, std::FILE* out, std::FILE* err) {
  auto db = OpenDataStore(f);
  if (!db.ok()) return ReportStatus(err, db.status());
  CandleStore store(**db);
  auto series = store.Series();
  if (!series.ok()) return Report(err, kFailed, series.status().message());
  if (series->empty()) {
    fmt::print(out, "no candles stored; add some with `megaserve data import`\n");
    return 0;
  }
  fmt::print(out, "{:<12} {:<8} {:>8}  {:<19}  {:<19}  {:<10} {}\n", "SYMBOL", "INTERVAL", "BARS",
             "FIRST (UTC)", "LAST (UTC)", "SOURCE", "LAST BAR");
  for (const forecast::SeriesInfo& s : *series) {
    fmt::print(out, "{:<12} {:<8} {:>8}  {:<19}  {:<19}  {:<10} {}\n", s.symbol, s.interval,
               s.count, FormatUtcTimestamp(s.first_open_ms), FormatUtcTimestamp(s.last_open_ms),
               s.source, s.last_partial ? "partial" : "complete");
  }
  return 0;
}

}  // namespace

void AddDataConfigFlags(CLI::App* cmd, DataFlags& f) {
  cmd->add_option("-c,--config", f.config_file,
                  "TOML configuration file (default: $MEGASERVE_CONFIG, else none)");
  cmd->add_option("-d,--data-dir", f.data_dir, "folder of the default SQLite store (data_dir)");
  cmd->add_option("--set", f.sets, "KEY=VALUE: set any configuration key (repeatable)");
}

CLI::App* AddDataCommand(CLI::App& app, DataFlags& f) {
  auto* data = app.add_subcommand("data", "Market data (candles) in the job store.");
  data->require_subcommand(1);

  f.import_cmd = data->add_subcommand(
      "import",
      "Upsert a candle file (timestamp,open,high,low,close,volume CSV or a Binance 12-column "
      "kline dump) into the store; importing the same file again changes nothing.");
  f.import_cmd->add_option("file", f.file, "the CSV file")->required();
  f.import_cmd->add_option("-s,--symbol", f.symbol, "market symbol, e.g. BTCUSDT")->required();
  f.import_cmd->add_option("-i,--interval", f.interval,
                           "bar interval (1m .. 1w); default: detected from the file, which "
                           "must agree when given");
  f.import_cmd->add_option("--source", f.source, "source recorded with the bars (default csv)");
  AddDataConfigFlags(f.import_cmd, f);

  f.gaps_cmd = data->add_subcommand(
      "gaps",
      "List the gaps (missing bars) of a stored series and whether its last bar is "
      "partial.");
  f.gaps_cmd->add_option("-s,--symbol", f.symbol, "market symbol, e.g. BTCUSDT")->required();
  f.gaps_cmd->add_option("-i,--interval", f.interval, "bar interval, e.g. 4h")->required();
  AddDataConfigFlags(f.gaps_cmd, f);

  f.list_cmd = data->add_subcommand("list", "List the stored series and their extent.");
  AddDataConfigFlags(f.list_cmd, f);
  return data;
}

core::Result<core::LoadedConfig> LoadCommandConfig(const std::string& config_file,
                                                   const std::string& data_dir,
                                                   const std::vector<std::string>& sets) {
  core::ConfigSources src;
  src.file = config_file;
  if (src.file.empty()) {
    if (const char* env = std::getenv("MEGASERVE_CONFIG")) src.file = env;
  }
  src.env = core::ProcessEnvironment();
  if (!data_dir.empty()) src.overrides.push_back({"data_dir", data_dir, "flag --data-dir"});
  for (const auto& s : sets) {
    auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      return core::InvalidArgument("flag --set: expected KEY=VALUE, got \"" + s + "\"");
    }
    src.overrides.push_back({s.substr(0, eq), s.substr(eq + 1), "flag --set"});
  }
  return core::LoadConfig(src);
}

core::Result<std::unique_ptr<store::Database>> OpenDataStore(const DataFlags& f) {
  auto loaded = LoadCommandConfig(f.config_file, f.data_dir, f.sets);
  if (!loaded.ok()) return loaded.status();
  const core::Config& config = loaded->config;
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) {
    return core::Unavailable("data_dir: cannot create \"" + config.data_dir +
                             "\": " + ec.message());
  }
  core::LogConfig quiet_log = config.log;
  quiet_log.level = "warn";  // migrations applied on the way are not worth a line here
  if (auto s = core::InitLogging(quiet_log); !s.ok()) return s;
  return store::OpenConfiguredStore(config);
}

int RunData(const DataFlags& f, std::FILE* out, std::FILE* err) {
  if (f.import_cmd && f.import_cmd->parsed()) return Import(f, out, err);
  if (f.gaps_cmd && f.gaps_cmd->parsed()) return Gaps(f, out, err);
  if (f.list_cmd && f.list_cmd->parsed()) return List(f, out, err);
  return Report(err, kBadArguments, "expected a subcommand: import, gaps or list");
}

}  // namespace megaserve::cli
