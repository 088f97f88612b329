// `megaserve data`: market data in the job store.
//   data import FILE --symbol S [--interval I] [--source csv]   upsert a candle file
//   data gaps --symbol S --interval I                           list gaps and a partial last bar
//   data list                                                   list stored series
// Every subcommand takes the configuration flags the server reads (--config, --data-dir, --set),
// so it works on the same store (store.url, else <data_dir>/megaserve.db).
//
// Extending the group: AddDataCommand returns the `data` CLI::App*; add a subcommand to it, give
// it the configuration flags with AddDataConfigFlags and open the store with OpenDataStore.
// RunData handles only the subcommands declared here, so main checks an added subcommand's
// parsed() before calling RunData.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "store/database.h"

namespace megaserve::cli {

struct DataFlags {
  // The configuration, read as the server reads it.
  std::string config_file;  // empty: $MEGASERVE_CONFIG, else none
  std::string data_dir;
  std::vector<std::string> sets;  // KEY=VALUE

  std::string file;      // import
  std::string symbol;    // import, gaps
  std::string interval;  // import (empty: detected from the file), gaps
  std::string source = "csv";

  // Set by AddDataCommand.
  CLI::App* import_cmd = nullptr;
  CLI::App* gaps_cmd = nullptr;
  CLI::App* list_cmd = nullptr;
};

// Adds `data` with its subcommands import, gaps and list, options bound to `flags`. Returns the
// `data` group, which requires one subcommand.
CLI::App* AddDataCommand(CLI::App& app, DataFlags& flags);

// Adds --config, --data-dir and --set, bound to `flags`, to `cmd`.
void AddDataConfigFlags(CLI::App* cmd, DataFlags& flags);

// Loads the configuration named by `flags`, creates data_dir, quiets the log to warnings and
// opens the configured store (applying pending migrations when store.migrate_on_start is set).
core::Result<std::unique_ptr<store::Database>> OpenDataStore(const DataFlags& flags);

// The configuration a command-line tool runs with, layered as `serve` reads it: --config FILE
// (else $MEGASERVE_CONFIG), MEGASERVE_* variables, then --data-dir and each --set KEY=VALUE.
core::Result<core::LoadedConfig> LoadCommandConfig(const std::string& config_file,
                                                   const std::string& data_dir,
                                                   const std::vector<std::string>& sets);

// Runs whichever of import, gaps and list was parsed, printing to `out` and errors to `err`.
// Returns the exit code: 0 done, 1 failed (unreadable file, store error), 2 bad arguments.
int RunData(const DataFlags& flags, std::FILE* out = stdout, std::FILE* err = stderr);

}  // namespace megaserve::cli
