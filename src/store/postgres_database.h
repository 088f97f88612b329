// The PostgreSQL engine of Database; see database.h and postgres_database.cc.
#pragma once

#include <memory>

#include "store/database.h"

namespace megaserve::store {

// Opens a connection pool for the libpq URI options.url and makes one connection to check it.
// Used by Database::Open.
core::Result<std::unique_ptr<Database>> OpenPostgres(const StoreOptions& options);

}  // namespace megaserve::store
