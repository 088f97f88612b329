// `megaserve train forecast`: trains a quantile LSTM forecaster (forecast/trainer.h) on candles
// from a CSV file or the job store, through the libtorch plugin, and writes it into the model
// repository as <models-dir>/<name>/{config.toml, model.safetensors, model.int8.safetensors}.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "forecast/trainer.h"

namespace megaserve::cli {

struct TrainFlags {
  // Where the candles come from: exactly one of these.
  std::string data;  // a CSV file in a layout forecast/candle_files.h reads
  bool from_store = false;

  std::string symbol;
  std::string interval;  // required with --from-store; with --data, checked against the file's
  // Dates (UTC) "YYYY-MM-DD" (the whole day) or "YYYY-MM-DD HH:MM:SS" (that bar), inclusive.
  std::string train_from;  // empty: the data's first bar
  std::string train_until;
  std::string validate_until;

  int window = 64;
  int horizon = 6;
  int hidden = 64;
  int layers = 2;
  // Fewer than TrainParams' 40: an epoch over years of 4h bars is slow on a small CPU, and the
  // validation loss of a price series flattens early.
  int epochs = 20;
  int patience = 6;
  int batch = 256;
  double lr = 1e-3;
  uint64_t seed = 42;
  int threads = 0;

  std::string name;        // model folder name; empty: "<symbol>-<interval>" in lower case
  std::string models_dir;  // empty: the configuration's models.dir (<data_dir>/models)
  bool quiet = false;

  // The configuration (for the job store and models.dir), read as the server reads it.
  std::string config_file;
  std::string data_dir;
  std::vector<std::string> sets;
};

// Adds `train` with its subcommand `forecast`, options bound to `flags`. Returns `train`.
CLI::App* AddTrainCommand(CLI::App& app, TrainFlags& flags);

// Runs `train forecast`; returns the process exit code (0 ok, 1 failure, 2 bad arguments).
int RunTrainForecast(TrainFlags& flags);

// A --train-until style date as the last Unix millisecond it covers: "2023-12-31" is the whole
// day (until 2023-12-31 23:59:59.999), "2023-12-31 20:00:00" that instant. kInvalidArgument
// names `flag` and the accepted forms.
core::Result<int64_t> ParseInclusiveDate(const std::string& text, const std::string& flag);

// The config.toml of a freshly trained forecast model at `version`.
std::string ForecastModelConfig(int version);

}  // namespace megaserve::cli
