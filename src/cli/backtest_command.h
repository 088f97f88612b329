// `megaserve backtest`: a walk-forward backtest of a stored forecast model (forecast/backtest.h)
// over a range of forecast origins, from a candle file or the job store. Prints a table per
// horizon step next to naive persistence and drift, writes the full JSON, and stores the compact
// skill summary in the model's files so the API serves it with every forecast.
//
//   megaserve backtest --model models/btc-4h --data btcusdt_spot_4h.csv
//       --from 2025-01-01 --to 2025-12-31 [--precision int8|fp32] [--json out.json] [--no-save]
//   megaserve backtest --baseline-only --data FILE.csv --interval 4h --horizon 6 --from .. --to ..
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "core/status.h"

namespace megaserve::cli {

struct BacktestFlags {
  std::string model_dir;  // holds model.safetensors and/or model.int8.safetensors
  std::string precision = "int8";
  std::string data_file;  // a candle CSV (forecast/candle_files.h)
  bool from_store = false;
  // The configuration, for --from-store (as `serve` reads it).
  std::string config_file;
  std::string data_dir;
  std::vector<std::string> sets;
  std::string symbol;    // default: the model's
  std::string interval;  // default: the model's; checked against the data
  std::string from;      // first origin: "YYYY-MM-DD" or "YYYY-MM-DD HH:MM:SS", UTC
  std::string to;        // last origin, inclusive; a date alone means the whole day
  int horizon = 0;       // 0: the model's horizon, or 6 with --baseline-only
  int drift_window = 0;  // 0: the model's window, or 64 with --baseline-only
  std::string json_out;
  bool no_save = false;
  bool baseline_only = false;
};

// Adds the `backtest` subcommand with its options bound to `flags`.
CLI::App* AddBacktestCommand(CLI::App& app, BacktestFlags& flags);

// Runs it, printing the table to `out` and progress to stderr. Returns the process exit code:
// 0 done, 1 the backtest or a file failed, 2 bad arguments (the message on stderr says which).
int RunBacktestCommand(const BacktestFlags& flags, std::FILE* out = stdout);

// The inclusive range of origin open times that --from and --to name, Unix ms: a date alone as
// --to covers that whole day. kInvalidArgument names the flag at fault.
core::Result<std::pair<int64_t, int64_t>> ParseTestRange(const std::string& from,
                                                         const std::string& to);

}  // namespace megaserve::cli
