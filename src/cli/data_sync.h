// `megaserve data sync`: fetch candles from an exchange into the job store.
//   data sync --source binance|coinbase --symbol S --interval I [--from T] [--to T] [--url BASE]
// Without --from the sync resumes from the newest stored bar (or fetches the last
// market_data.backfill_days of an empty series); without --to it runs up to now. One progress
// line per page fetched, then a summary of the bars inserted, updated and unchanged.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/data_command.h"

namespace megaserve::cli {

struct DataSyncFlags {
  std::string source = "binance";
  std::string symbol;    // BTCUSDT; for Coinbase also BASE-QUOTE (BTC-USD)
  std::string interval;  // 4h
  std::string from;      // "YYYY-MM-DD[ HH:MM:SS]", "YYYY-MM-DDTHH:MM:SSZ" or Unix ms; "" = resume
  std::string to;        // as `from`; "" = now
  std::string url;       // base URL; "" = market_data.<source>_url
  CLI::App* cmd = nullptr;  // set by AddDataSyncCommand
};

// Adds `sync` to the `data` group returned by AddDataCommand, with its options bound to `flags`
// and the configuration flags (--config, --data-dir, --set) bound to `data_flags`. Returns it;
// main runs RunDataSync when it was parsed.
CLI::App* AddDataSyncCommand(CLI::App* data, DataFlags& data_flags, DataSyncFlags& flags);

// Runs the sync, printing progress and the summary to `out` and errors, one line each, to `err`.
// Returns the exit code: 0 done, 1 failed (exchange unreachable or refusing, store error),
// 2 bad arguments (unknown source, interval the exchange lacks, malformed time).
int RunDataSync(const DataFlags& data_flags, const DataSyncFlags& flags, std::FILE* out = stdout,
                std::FILE* err = stderr);

// A --from/--to value as Unix milliseconds; kInvalidArgument names the accepted forms.
core::Result<int64_t> ParseSyncTime(std::string_view text);

}  // namespace megaserve::cli
