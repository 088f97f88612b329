#include "cli/train_command.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <span>

#include "cli/data_command.h"
#include "core/config.h"
#include "core/logging.h"
#include "core/progress_bar.h"
#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/candles.h"
#include "forecast/lstm_model.h"
#include "models/model_config.h"
#include "store/migrations.h"

namespace megaserve::cli {
namespace {

namespace fs = std::filesystem;
using forecast::Candle;

constexpr const char* kFp32File = "model.safetensors";
constexpr const char* kInt8File = "model.int8.safetensors";

core::Result<core::LoadedConfig> LoadConfiguration(const TrainFlags& f) {
  return LoadCommandConfig(f.config_file, f.data_dir, f.sets);
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string Bytes(uintmax_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  if (n < 1024 * 1024) return fmt::format("{:.1f} KiB", n / 1024.0);
  return fmt::format("{:.1f} MiB", n / (1024.0 * 1024.0));
}

// The previous version in `dir`'s config.toml, 0 when there is none.
core::Result<int> PreviousVersion(const fs::path& dir) {
  const fs::path config = dir / "config.toml";
  if (!fs::exists(config)) return 0;
  auto loaded = models::LoadModelConfig(config.string());
  if (!loaded.ok()) {
    return core::InvalidArgument(fmt::format(
        "{} exists but cannot be read, so the new version is unknown; fix or remove it:\n{}",
        config.string(), loaded.status().message()));
  }
  return loaded->version;
}

core::Status WriteTextFile(const fs::path& path, const std::string& text) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return core::Internal("cannot write " + tmp.string());
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) return core::Internal(fmt::format("cannot rename {}: {}", tmp.string(), ec.message()));
  return core::Status::Ok();
}

// Candles of the series, oldest first, without partial bars.
core::Result<std::vector<Candle>> LoadCandles(const TrainFlags& f, int64_t interval_ms,
                                              const core::Config* config) {
  if (!f.data.empty()) {
    auto file = forecast::ReadCandleFile(f.data);
    if (!file.ok()) return file.status();
    if (file->interval_ms != 0 && file->interval_ms != interval_ms) {
      const std::string name = forecast::IntervalNameForMillis(file->interval_ms);
      return core::InvalidArgument(fmt::format(
          "{} holds {} bars (most bars are {} ms apart), not --interval {}", f.data,
          name.empty() ? std::string("irregular") : name, file->interval_ms, f.interval));
    }
    std::vector<Candle> candles = std::move(file->candles);
    std::erase_if(candles, [](const Candle& c) { return c.partial; });
    return candles;
  }
  auto db = store::OpenConfiguredStore(*config);
  if (!db.ok()) return db.status();
  forecast::CandleStore store(**db);
  return store.Range(f.symbol, f.interval, std::numeric_limits<int64_t>::min(),
                     std::numeric_limits<int64_t>::max(), /*limit=*/0, /*include_partial=*/false,
                     /*newest=*/false);
}

int64_t CountIn(std::span<const Candle> candles, int64_t from_ms, int64_t to_ms) {
  return std::count_if(candles.begin(), candles.end(), [&](const Candle& c) {
    return c.open_time_ms >= from_ms && c.open_time_ms <= to_ms;
  });
}

void WarnAboutGaps(std::span<const Candle> candles, int64_t interval_ms) {
  const auto gaps = forecast::FindGaps(candles, interval_ms);
  if (gaps.empty()) return;
  int64_t missing = 0;
  const forecast::Gap* largest = &gaps.front();
  for (const auto& g : gaps) {
    missing += g.missing_bars;
    if (g.missing_bars > largest->missing_bars) largest = &g;
  }
  std::fprintf(stderr,
               "warning: %zu gap%s in the series (%lld missing bars; the largest %s .. %s); "
               "windows span them\n",
               gaps.size(), gaps.size() == 1 ? "" : "s", static_cast<long long>(missing),
               forecast::FormatUtcTimestamp(largest->first_missing_ms).c_str(),
               forecast::FormatUtcTimestamp(largest->last_missing_ms).c_str());
}

// Checks the flags and fills the training parameters.
core::Status BuildParams(TrainFlags& f, int64_t& interval_ms, forecast::TrainParams& p) {
  if (f.data.empty() == !f.from_store) {
    return core::InvalidArgument("give exactly one of --data FILE.csv and --from-store");
  }
  auto symbol = forecast::NormalizeSymbol(f.symbol);
  if (!symbol.ok()) return core::InvalidArgument("--symbol: " + symbol.status().message());
  f.symbol = *symbol;
  auto interval = forecast::IntervalMillis(f.interval);
  if (!interval.ok()) return core::InvalidArgument("--interval: " + interval.status().message());
  interval_ms = *interval;

  auto train_until = ParseInclusiveDate(f.train_until, "--train-until");
  if (!train_until.ok()) return train_until.status();
  auto validate_until = ParseInclusiveDate(f.validate_until, "--validate-until");
  if (!validate_until.ok()) return validate_until.status();
  int64_t train_from = std::numeric_limits<int64_t>::min();
  if (!f.train_from.empty()) {
    auto parsed = forecast::ParseUtcTimestamp(f.train_from);
    if (!parsed.ok()) {
      return core::InvalidArgument(
          fmt::format("--train-from '{}' is not a UTC date (YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\")",
                      f.train_from));
    }
    train_from = *parsed;
  }
  if (*validate_until <= *train_until) {
    return core::InvalidArgument(fmt::format("--validate-until {} must be after --train-until {}",
                                             f.validate_until, f.train_until));
  }
  if (train_from > *train_until) {
    return core::InvalidArgument(
        fmt::format("--train-from {} is after --train-until {}", f.train_from, f.train_until));
  }

  p.symbol = f.symbol;
  p.interval = f.interval;
  p.shape = forecast::LstmShape{.input_size = forecast::kFeatureCount,
                                .hidden_size = f.hidden,
                                .num_layers = f.layers,
                                .horizon = f.horizon,
                                .num_quantiles = static_cast<int>(p.quantiles.size()),
                                .window = f.window};
  p.train_first_ms = train_from;
  p.train_last_ms = *train_until;
  p.validation_first_ms = *train_until + 1;
  p.validation_last_ms = *validate_until;
  p.max_epochs = f.epochs;
  p.patience = f.patience;
  p.batch_size = f.batch;
  p.learning_rate = f.lr;
  p.seed = f.seed;
  p.threads = f.threads;
  if (f.name.empty()) f.name = Lower(f.symbol) + "-" + f.interval;
  if (f.name.find('/') != std::string::npos || f.name == "." || f.name == "..") {
    return core::InvalidArgument(fmt::format("--name '{}' must be a plain folder name", f.name));
  }
  return core::Status::Ok();
}

// Writes the model folder; returns the version written.
core::Result<int> WriteModelFolder(const fs::path& dir, const forecast::ForecastModel& model) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return core::Internal(fmt::format("cannot create {}: {}", dir.string(), ec.message()));
  auto previous = PreviousVersion(dir);
  if (!previous.ok()) return previous.status();
  // Weights first: a repository that sees the new config.toml finds the new weights with it.
  if (auto s = forecast::WriteModelFp32(model, (dir / kFp32File).string()); !s.ok()) return s;
  if (auto s = forecast::WriteModelInt8(model, (dir / kInt8File).string()); !s.ok()) return s;
  const int version = *previous + 1;
  if (auto s = WriteTextFile(dir / "config.toml", ForecastModelConfig(version)); !s.ok()) return s;
  return version;
}

}  // namespace

core::Result<int64_t> ParseInclusiveDate(const std::string& text, const std::string& flag) {
  if (text.empty()) return core::InvalidArgument(flag + " is required (a UTC date, YYYY-MM-DD)");
  auto parsed = forecast::ParseUtcTimestamp(text);
  if (!parsed.ok()) {
    return core::InvalidArgument(fmt::format(
        "{} '{}' is not a UTC date (YYYY-MM-DD or \"YYYY-MM-DD HH:MM:SS\")", flag, text));
  }
  constexpr int64_t kDay = 86'400'000;
  return text.size() == 10 ? *parsed + kDay - 1 : *parsed;
}

std::string ForecastModelConfig(int version) {
  return fmt::format(
      "# A forecast model written by `megaserve train forecast`; model.safetensors (FP32) and\n"
      "# model.int8.safetensors (INT8, served by default) carry the weights and metadata.\n"
      "backend = \"forecast\"\n"
      "version = {}\n"
      "\n"
      "# Requests for the same window share one engine row, so a batch costs about one batch-1\n"
      "# run. A batch goes when it has 32 requests, or 16, or when its first request has\n"
      "# waited 250us: a few clients are not held back, and many fill large batches.\n"
      "[batching]\n"
      "max_batch_size = 32\n"
      "preferred_batch_sizes = [16]\n"
      "max_queue_delay = \"250us\"\n",
      version);
}

CLI::App* AddTrainCommand(CLI::App& app, TrainFlags& f) {
  auto* train = app.add_subcommand("train", "Train models.");
  train->require_subcommand(1);
  auto* cmd = train->add_subcommand(
      "forecast",
      "Train a quantile LSTM price forecaster (p10/p50/p90 of the next bars) on candles from a "
      "CSV file or the job store, and write it into the model repository.");
  cmd->add_option("--data", f.data,
                  "CSV of candles: timestamp,open,high,low,close,volume or Binance klines");
  cmd->add_flag("--from-store", f.from_store, "read the candles from the job store instead");
  cmd->add_option("--symbol", f.symbol, "the market, e.g. BTCUSDT")->required();
  cmd->add_option("--interval", f.interval, "bar length, e.g. 4h (1m .. 1w)")->required();
  cmd->add_option("--train-from", f.train_from,
                  "first training day, UTC (default: the data's first bar)");
  cmd->add_option("--train-until", f.train_until, "last training day, UTC, inclusive")->required();
  cmd->add_option("--validate-until", f.validate_until,
                  "last validation day, UTC, inclusive; validation starts after --train-until")
      ->required();
  cmd->add_option("--window", f.window, "bars per input sequence (default 64)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--horizon", f.horizon, "bars predicted (default 6)")->check(CLI::Range(1, 1000));
  cmd->add_option("--hidden", f.hidden, "LSTM hidden size (default 64)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--layers", f.layers, "LSTM layers (default 2)")->check(CLI::Range(1, 16));
  cmd->add_option("--epochs", f.epochs, "at most this many epochs (default 20)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--patience", f.patience,
                  "stop after this many epochs without a better validation loss (default 6)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--batch", f.batch, "minibatch size (default 256)")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--lr", f.lr, "Adam learning rate (default 1e-3)")->check(CLI::Range(1e-9, 10.0));
  cmd->add_option("--seed", f.seed, "random seed: the same seed gives the same model (default 42)");
  cmd->add_option("--threads", f.threads, "libtorch threads, 0 = libtorch's default")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--name", f.name, "model folder name (default: <symbol>-<interval>, lower case)");
  cmd->add_option("--models-dir", f.models_dir,
                  "model repository (default: models.dir, i.e. <data_dir>/models)");
  cmd->add_flag("-q,--quiet", f.quiet, "no progress output");
  cmd->add_option("-c,--config", f.config_file,
                  "TOML configuration file (default: $MEGASERVE_CONFIG, else none)");
  cmd->add_option("-d,--data-dir", f.data_dir, "folder for jobs and models (data_dir)");
  cmd->add_option("--set", f.sets, "KEY=VALUE: set any configuration key (repeatable)");
  return train;
}

int RunTrainForecast(TrainFlags& f) {
  auto fail = [](int code, const std::string& message) {
    std::fprintf(stderr, "megaserve train forecast: %s\n", message.c_str());
    return code;
  };
  int64_t interval_ms = 0;
  forecast::TrainParams params;
  if (auto s = BuildParams(f, interval_ms, params); !s.ok()) return fail(2, s.message());

  auto loaded = LoadConfiguration(f);
  if (!loaded.ok()) return fail(2, loaded.status().message());
  const core::Config& config = loaded->config;
  core::LogConfig quiet_log = config.log;
  quiet_log.level = "warn";  // the store's migrations are not worth a line here
  if (auto s = core::InitLogging(quiet_log); !s.ok()) return fail(2, s.message());

  auto candles = LoadCandles(f, interval_ms, &config);
  if (!candles.ok()) return fail(1, candles.status().message());
  if (candles->empty()) {
    return fail(1, fmt::format("no complete {} {} bars {}", f.symbol, f.interval,
                               f.from_store ? "in the job store" : "in " + f.data));
  }
  if (params.train_first_ms < candles->front().open_time_ms) {
    params.train_first_ms = candles->front().open_time_ms;
  }
  WarnAboutGaps(*candles, interval_ms);
  const int64_t train_bars = CountIn(*candles, params.train_first_ms, params.train_last_ms);
  const int64_t valid_bars =
      CountIn(*candles, params.validation_first_ms, params.validation_last_ms);
  if (!f.quiet) {
    std::fprintf(stderr,
                 "%s %s: %zu bars %s .. %s; training on %lld bars until %s, validating on %lld "
                 "until %s\n",
                 f.symbol.c_str(), f.interval.c_str(), candles->size(),
                 forecast::FormatUtcTimestamp(candles->front().open_time_ms).c_str(),
                 forecast::FormatUtcTimestamp(candles->back().open_time_ms).c_str(),
                 static_cast<long long>(train_bars),
                 forecast::FormatUtcTimestamp(params.train_last_ms).c_str(),
                 static_cast<long long>(valid_bars),
                 forecast::FormatUtcTimestamp(params.validation_last_ms).c_str());
  }

  auto trainer = forecast::LoadTorchTrainer();
  if (!trainer.ok()) return fail(1, trainer.status().message());

  const bool tty = isatty(fileno(stderr)) != 0;
  core::ProgressBar bar;
  if (!f.quiet) bar.Update("train", 0, params.max_epochs);  // starts the bar's clock
  const auto started = std::chrono::steady_clock::now();
  int epochs = 0;
  forecast::EpochReport best;
  auto model = (*trainer)->Train(*candles, params, [&](const forecast::EpochReport& r) {
    epochs = r.epoch;
    if (r.best) best = r;
    if (f.quiet) return;
    // The epoch's line scrolls above the bar, which is redrawn below it.
    std::fprintf(stderr, "%sepoch %3d/%d  train loss %.5f  validation loss %.5f%s\n",
                 tty ? "\r\x1b[K" : "", r.epoch, r.max_epochs, r.train_loss, r.validation_loss,
                 r.best ? "  *" : "");
    bar.Update("train", r.epoch, r.max_epochs);
  });
  bar.Finish();
  if (!model.ok()) {
    return fail(model.status().code() == core::StatusCode::kInvalidArgument ? 2 : 1,
                model.status().message());
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  const fs::path models_dir = !f.models_dir.empty()        ? fs::path(f.models_dir)
                              : !config.models.dir.empty() ? fs::path(config.models.dir)
                                                           : fs::path(config.data_dir) / "models";
  const fs::path dir = models_dir / f.name;
  auto version = WriteModelFolder(dir, *model);
  if (!version.ok()) return fail(1, version.status().message());

  std::printf(
      "trained %s %s in %.1f s: %d epoch%s, the best %d (validation loss %.5f, train loss "
      "%.5f)\n",
      f.symbol.c_str(), f.interval.c_str(), seconds, epochs, epochs == 1 ? "" : "s", best.epoch,
      best.validation_loss, best.train_loss);
  std::printf("wrote %s (version %d):\n", dir.string().c_str(), *version);
  for (const char* file : {"config.toml", kFp32File, kInt8File}) {
    std::error_code ec;
    const auto size = fs::file_size(dir / file, ec);
    std::printf("  %-24s %s\n", file, ec ? "?" : Bytes(size).c_str());
  }
  return 0;
}

}  // namespace megaserve::cli
