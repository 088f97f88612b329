// The SQLite engine of Database; see database.h and sqlite_database.cc.
#pragma once

#include <memory>
#include <string>

#include "store/database.h"

namespace megaserve::store {

// Opens (creating if missing) the SQLite database at `path`, or a private in-memory database for
// ":memory:". Used by Database::Open.
core::Result<std::unique_ptr<Database>> OpenSqlite(const std::string& path,
                                                   const StoreOptions& options);

}  // namespace megaserve::store
