// Numbered schema migrations, compiled into the binary.
//
// Each migration has a version (1, 2, ... in order, never renumbered or edited once released), a
// name, and its SQL for each engine. The table schema_migrations(version, name, applied_at)
// records what has been applied. Migrate() applies the pending ones in order, each in its own
// transaction together with its schema_migrations row, so a failed migration leaves nothing
// behind and a rerun picks up where it stopped. On PostgreSQL a session advisory lock (keyed by
// the current schema) is held for the whole run, so several processes starting at once apply
// each migration exactly once; on SQLite BEGIN IMMEDIATE serializes them and each transaction
// rechecks schema_migrations before applying.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "store/database.h"

namespace megaserve::store {

struct Migration {
  int version = 0;
  std::string_view name;
  std::string_view sqlite_sql;
  std::string_view postgres_sql;
};

struct MigrationInfo {
  int version = 0;
  std::string name;
  bool applied = false;
  int64_t applied_at = 0;  // unix microseconds; 0 while pending
};

// The compiled-in migrations, in version order.
const std::vector<Migration>& Migrations();

// Applies the pending compiled-in migrations in order. When `applied` is given, the ones this
// call applied are appended to it. Safe to run concurrently from several processes.
core::Status Migrate(Database& db, std::vector<MigrationInfo>* applied = nullptr);

// As above with an explicit list, which must be in strictly increasing version order (tests).
core::Status Migrate(Database& db, const std::vector<Migration>& migrations,
                     std::vector<MigrationInfo>* applied);

// Every compiled-in migration with whether and when it was applied, in version order, followed
// by any applied version this binary does not know (name as recorded, e.g. from a newer release).
core::Result<std::vector<MigrationInfo>> MigrationStatus(Database& db);

// As above with an explicit list (tests).
core::Result<std::vector<MigrationInfo>> MigrationStatus(Database& db,
                                                         const std::vector<Migration>& migrations);

// Opens the store named by the configuration (store.url, or the SQLite file in data_dir) and,
// when store.migrate_on_start is set, applies pending migrations, logging each. What `serve` and
// `worker` do first.
core::Result<std::unique_ptr<Database>> OpenConfiguredStore(const core::Config& config);

}  // namespace megaserve::store
