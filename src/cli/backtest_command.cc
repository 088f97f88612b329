// `megaserve backtest`; see backtest_command.h. The scoring itself is forecast::RunBacktest;
// this file loads the model and the candles, checks that they belong together (symbol,
// interval), prints and writes the results, and saves the summary into the model's files.
#include "cli/backtest_command.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>

#include "cli/data_command.h"
#include "core/config.h"
#include "core/logging.h"
#include "core/progress_bar.h"
#include "forecast/backtest.h"
#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/candles.h"
#include "forecast/lstm_engine.h"
#include "forecast/lstm_model.h"
#include "models/model_config.h"
#include "store/migrations.h"

namespace megaserve::cli {
namespace {

namespace fs = std::filesystem;
using forecast::Candle;

constexpr const char* kFp32Name = "model.safetensors";
constexpr const char* kInt8Name = "model.int8.safetensors";
constexpr int64_t kDayMs = 86'400'000;

int Usage(const std::string& message) {
  std::fprintf(stderr, "megaserve backtest: %s\n", message.c_str());
  return 2;
}

int Failure(const core::Status& s) {
  std::fprintf(stderr, "megaserve backtest: %s\n", s.message().c_str());
  return 1;
}

// The model as read for inference, plus the FP32 weights the files are rewritten from.
struct LoadedModel {
  forecast::ForecastModel model;  // from the file of the chosen precision when it exists
  std::string fp32_path, int8_path;
  bool has_fp32 = false, has_int8 = false;
  std::optional<forecast::Int8Matrices> int8;  // the INT8 file's exact integers, when run from it
  std::string name;
  int version = 0;  // config.toml's, 0 when the folder has none
};

core::Result<LoadedModel> LoadModel(const std::string& dir, forecast::Precision precision) {
  LoadedModel m;
  m.fp32_path = (fs::path(dir) / kFp32Name).string();
  m.int8_path = (fs::path(dir) / kInt8Name).string();
  m.has_fp32 = fs::is_regular_file(m.fp32_path);
  m.has_int8 = fs::is_regular_file(m.int8_path);
  if (!m.has_fp32 && !m.has_int8) {
    return core::NotFound(
        fmt::format("--model {}: neither {} nor {} found", dir, kFp32Name, kInt8Name));
  }
  bool use_int8 = precision == forecast::Precision::kInt8 ? m.has_int8 : !m.has_fp32;
  auto model = forecast::ReadModel(use_int8 ? m.int8_path : m.fp32_path);
  if (!model.ok()) return model.status();
  m.model = std::move(*model);
  if (use_int8 && precision == forecast::Precision::kInt8) {
    auto q = forecast::ReadInt8Weights(m.int8_path);
    if (!q.ok()) return q.status();
    m.int8 = std::move(*q);
  }
  fs::path folder = fs::absolute(dir).lexically_normal();
  if (!folder.has_filename()) folder = folder.parent_path();  // "models/btc/"
  m.name = folder.filename().string();
  std::string config = (fs::path(dir) / "config.toml").string();
  if (fs::is_regular_file(config)) {
    auto parsed = models::LoadModelConfig(config);
    if (parsed.ok()) m.version = parsed->version;
  }
  return m;
}

// Stores `summary` in every model file the folder has, each rewritten from the FP32 weights (or
// from the INT8 file's when there is no FP32 file: requantizing those gives the same integers).
core::Status SaveSummary(const LoadedModel& loaded, const std::string& summary) {
  forecast::ForecastModel source;
  if (loaded.has_fp32) {
    auto fp32 = forecast::ReadModel(loaded.fp32_path);
    if (!fp32.ok()) return fp32.status();
    source = std::move(*fp32);
  } else {
    source = loaded.model;
  }
  source.info.backtest_json = summary;
  if (loaded.has_fp32) {
    if (auto s = forecast::WriteModelFp32(source, loaded.fp32_path); !s.ok()) return s;
  }
  if (loaded.has_int8) {
    if (auto s = forecast::WriteModelInt8(source, loaded.int8_path); !s.ok()) return s;
  }
  return core::Status::Ok();
}

struct Series {
  std::vector<Candle> candles;
  std::string symbol;
  std::string interval;
  std::string source;  // for the header line
};

core::Result<Series> LoadFile(const BacktestFlags& f) {
  auto file = forecast::ReadCandleFile(f.data_file);
  if (!file.ok()) return file.status();
  Series s;
  s.source = f.data_file;
  s.candles = std::move(file->candles);
  // The file's last bar may still have been open when it was written; only closed bars score.
  std::erase_if(s.candles, [](const Candle& c) { return c.partial; });
  s.interval = forecast::IntervalNameForMillis(file->interval_ms);
  if (s.interval.empty()) {
    return core::InvalidArgument(
        fmt::format("--data {}: bars are {} ms apart, which is no known interval", f.data_file,
                    file->interval_ms));
  }
  return s;
}

core::Result<Series> LoadStore(const BacktestFlags& f, const std::string& symbol,
                               const std::string& interval) {
  auto loaded = LoadCommandConfig(f.config_file, f.data_dir, f.sets);
  if (!loaded.ok()) return loaded.status();
  core::LogConfig quiet = loaded->config.log;
  quiet.level = "warn";  // migrations applied on the way are not worth a line here
  if (auto s = core::InitLogging(quiet); !s.ok()) return s;
  auto db = store::OpenConfiguredStore(loaded->config);
  if (!db.ok()) return db.status();
  forecast::CandleStore store(**db);
  auto candles = store.Range(symbol, interval, std::numeric_limits<int64_t>::min(),
                             std::numeric_limits<int64_t>::max(), 0, false, false);
  if (!candles.ok()) return candles.status();
  if (candles->empty()) {
    return core::NotFound(
        fmt::format("the store has no closed {} {} bars (import some with `megaserve data import`)",
                    symbol, interval));
  }
  Series s;
  s.candles = std::move(*candles);
  s.symbol = symbol;
  s.interval = interval;
  s.source = "store";
  return s;
}

void PrintTable(std::FILE* out, const forecast::BacktestResult& r) {
  if (r.baseline_only) {
    std::fprintf(out, "%3s %7s %11s %11s %8s %11s %11s %8s\n", "h", "n", "MAE pers.", "RMSE pers.",
                 "MAPE%", "MAE drift", "RMSE drift", "MAPE%");
    for (const auto& s : r.steps) {
      std::fprintf(out, "%3d %7lld %11.2f %11.2f %8.3f %11.2f %11.2f %8.3f\n", s.h,
                   static_cast<long long>(s.count), s.persistence.mae, s.persistence.rmse,
                   s.persistence.mape, s.drift.mae, s.drift.rmse, s.drift.mape);
    }
    return;
  }
  std::fprintf(out, "%3s %7s %10s %10s %7s %8s %8s %10s %11s %11s\n", "h", "n", "MAE", "RMSE",
               "MAPE%", "dir.acc%", "cover%", "MAE pers.", "skill/pers.", "skill/drift");
  for (const auto& s : r.steps) {
    std::fprintf(out, "%3d %7lld %10.2f %10.2f %7.3f %8.2f %8.2f %10.2f %+11.4f %+11.4f\n", s.h,
                 static_cast<long long>(s.count), s.model.mae, s.model.rmse, s.model.mape,
                 s.directional_accuracy, s.coverage_p10_p90, s.persistence.mae,
                 s.skill_vs_persistence, s.skill_vs_drift);
  }
  std::fprintf(out,
               "skill = 1 - MAE / MAE of the baseline (> 0: better than it); cover%% = actuals "
               "inside p10..p90 (80 when calibrated)\n");
}

core::Status WriteText(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) return core::InvalidArgument(fmt::format("--json {}: cannot write", path));
    f << text << '\n';
    if (!f) return core::Internal(fmt::format("--json {}: write failed", path));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return core::Internal(fmt::format("--json {}: {}", path, ec.message()));
  return core::Status::Ok();
}

}  // namespace

core::Result<std::pair<int64_t, int64_t>> ParseTestRange(const std::string& from,
                                                         const std::string& to) {
  if (from.empty() || to.empty()) {
    return core::InvalidArgument("--from and --to are required (YYYY-MM-DD[ HH:MM:SS], UTC)");
  }
  auto first = forecast::ParseUtcTimestamp(from);
  if (!first.ok()) {
    return core::InvalidArgument("--from '" + from + "': " + first.status().message());
  }
  auto last = forecast::ParseUtcTimestamp(to);
  if (!last.ok()) return core::InvalidArgument("--to '" + to + "': " + last.status().message());
  int64_t last_ms = *last;
  if (to.size() == 10) last_ms += kDayMs - 1;  // a date alone: through the end of that day
  if (last_ms < *first) {
    return core::InvalidArgument("--to '" + to + "' is before --from '" + from + "'");
  }
  return std::make_pair(*first, last_ms);
}

CLI::App* AddBacktestCommand(CLI::App& app, BacktestFlags& f) {
  auto* cmd = app.add_subcommand(
      "backtest",
      "Walk-forward backtest of a forecast model over a range of origins: MAE, RMSE, MAPE, "
      "direction, p10-p90 coverage and skill against naive persistence and drift. Stores the "
      "summary in the model so the API serves it with every forecast.");
  cmd->add_option("-m,--model", f.model_dir,
                  "model folder (model.safetensors and/or model.int8.safetensors)");
  cmd->add_option("--precision", f.precision, "engine precision: int8 (default) or fp32");
  cmd->add_option("--data", f.data_file, "candle CSV (timestamp or Binance kline layout)");
  cmd->add_flag("--from-store", f.from_store, "read the candles from the job store instead");
  cmd->add_option("-c,--config", f.config_file,
                  "TOML configuration file, for --from-store (default: $MEGASERVE_CONFIG)");
  cmd->add_option("-d,--data-dir", f.data_dir, "data_dir, for --from-store");
  cmd->add_option("--set", f.sets, "KEY=VALUE: set any configuration key (repeatable)");
  cmd->add_option("--symbol", f.symbol, "symbol, for --from-store (default: the model's)");
  cmd->add_option("--interval", f.interval,
                  "bar interval (default: the model's); the data must have it");
  cmd->add_option("--from", f.from, "first forecast origin, YYYY-MM-DD[ HH:MM:SS] UTC")->required();
  cmd->add_option("--to", f.to, "last forecast origin, inclusive (a date: the whole day)")
      ->required();
  cmd->add_option("--horizon", f.horizon,
                  "steps ahead to score (default: the model's; 6 with --baseline-only)")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--drift-window", f.drift_window,
                  "bars the drift baseline averages (default: the model's window; 64 without one)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--json", f.json_out, "write every number as JSON to this file");
  cmd->add_flag("--no-save", f.no_save, "do not store the summary in the model's files");
  cmd->add_flag("--baseline-only", f.baseline_only,
                "score naive persistence and drift alone; needs no model");
  return cmd;
}

int RunBacktestCommand(const BacktestFlags& f, std::FILE* out) {
  // Arguments first, before anything is read.
  if (f.data_file.empty() == !f.from_store) {
    return Usage("give exactly one of --data FILE or --from-store");
  }
  if (f.baseline_only && !f.model_dir.empty()) {
    return Usage("--baseline-only scores no model; leave out --model");
  }
  if (!f.baseline_only && f.model_dir.empty()) {
    return Usage("--model DIR is required (or --baseline-only)");
  }
  auto range = ParseTestRange(f.from, f.to);
  if (!range.ok()) return Usage(range.status().message());
  auto precision = forecast::ParsePrecision(f.precision);
  if (!precision.ok()) return Usage("--precision: " + precision.status().message());
  if (!f.interval.empty()) {
    if (auto ms = forecast::IntervalMillis(f.interval); !ms.ok()) {
      return Usage("--interval: " + ms.status().message());
    }
  }

  std::optional<LoadedModel> loaded;
  std::string symbol = f.symbol, interval = f.interval;
  int horizon = f.horizon > 0 ? f.horizon : 6;
  int drift_window = f.drift_window > 0 ? f.drift_window : 64;
  if (!f.baseline_only) {
    auto m = LoadModel(f.model_dir, *precision);
    if (!m.ok()) return Failure(m.status());
    loaded = std::move(*m);
    const forecast::ModelInfo& info = loaded->model.info;
    const forecast::LstmShape& shape = loaded->model.weights.shape;
    if (!interval.empty() && !info.interval.empty() && interval != info.interval) {
      return Usage(fmt::format("--interval {} but the model was trained on {} bars", interval,
                               info.interval));
    }
    if (interval.empty()) interval = info.interval;
    if (symbol.empty()) symbol = info.symbol;
    if (f.horizon > shape.horizon) {
      return Usage(
          fmt::format("--horizon {}: the model predicts 1..{} steps", f.horizon, shape.horizon));
    }
    horizon = f.horizon > 0 ? f.horizon : shape.horizon;
    drift_window = f.drift_window > 0 ? f.drift_window : shape.window;
  }
  if (f.from_store && (symbol.empty() || interval.empty())) {
    return Usage("--from-store needs --symbol and --interval (or a model that names them)");
  }

  auto series = f.from_store ? LoadStore(f, symbol, interval) : LoadFile(f);
  if (!series.ok()) return Failure(series.status());
  if (!interval.empty() && series->interval != interval) {
    return Usage(fmt::format("the data has {} bars but {} wants {}", series->interval,
                             f.interval.empty() ? "the model" : "--interval", interval));
  }
  if (series->symbol.empty()) series->symbol = symbol;

  forecast::Predictor predictor;
  forecast::BacktestModelMeta meta;
  meta.symbol = series->symbol;
  meta.interval = series->interval;
  if (loaded) {
    forecast::EngineOptions options;
    if (loaded->int8) options.int8 = &*loaded->int8;
    auto p = forecast::MakeModelPredictor(loaded->model, *precision, options);
    if (!p.ok()) return Failure(p.status());
    predictor = std::move(*p);
    meta.name = loaded->name;
    if (loaded->version > 0) meta.version = std::to_string(loaded->version);
    meta.precision = std::string(forecast::PrecisionName(*precision));
  }

  forecast::BacktestParams params;
  params.from_ms = range->first;
  params.to_ms = range->second;
  params.horizon = horizon;
  params.drift_window = drift_window;
  params.interval_ms = *forecast::IntervalMillis(series->interval);

  // The symbol is unknown for a file without one and no model or --symbol: then left out.
  std::fprintf(out, "backtest: %s, %s%s bars from %s (%zu closed), origins %s .. %s, h 1..%d\n",
               loaded ? fmt::format("model {} ({}, kernel {})", meta.name, meta.precision,
                                    forecast::KernelName())
                            .c_str()
                      : "baselines only",
               series->symbol.empty() ? "" : (series->symbol + " ").c_str(),
               series->interval.c_str(), series->source.c_str(), series->candles.size(),
               forecast::FormatUtcTimestamp(params.from_ms).c_str(),
               forecast::FormatUtcTimestamp(params.to_ms).c_str(), horizon);
  std::fflush(out);
  auto started = std::chrono::steady_clock::now();
  core::ProgressBar bar;
  auto result =
      forecast::RunBacktest(series->candles, params, predictor, [&](int64_t done, int64_t total) {
        bar.Update("backtest", static_cast<int>(done), static_cast<int>(total));
      });
  bar.Finish();
  if (!result.ok()) return Failure(result.status());
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::fprintf(out, "%lld origins (%s .. %s) in %.2f s\n", static_cast<long long>(result->origins),
               forecast::FormatUtcTimestamp(result->first_origin_ms).c_str(),
               forecast::FormatUtcTimestamp(result->last_origin_ms).c_str(), seconds);
  PrintTable(out, *result);

  if (!f.json_out.empty()) {
    if (auto s = WriteText(f.json_out, forecast::BacktestJson(*result, meta)); !s.ok()) {
      return Failure(s);
    }
    std::fprintf(out, "wrote %s\n", f.json_out.c_str());
  }
  if (loaded && !f.no_save) {
    if (auto s = SaveSummary(*loaded, forecast::BacktestSkillJson(*result, meta)); !s.ok()) {
      return Failure(s);
    }
    std::fprintf(out, "stored the summary in %s\n", f.model_dir.c_str());
  }
  return 0;
}

}  // namespace megaserve::cli
