// The relational store: one interface, two engines (SQLite and PostgreSQL).
//
// SQL is written once with $1, $2, ... placeholders: PostgreSQL takes them natively and SQLite
// reads "$1" as a named parameter. Values are NULL, 64-bit integers, doubles or text.
//
// Engines. SQLite (the embedded default) runs in WAL mode with one writer connection, whose
// use is serialized by a mutex, and a few reader connections for read-only statements; every
// connection caches its prepared statements by SQL text. PostgreSQL goes through libpq and a
// connection pool with SQLAlchemy's knobs (pool_size, max_overflow, pool_timeout, pre_ping,
// recycle); see postgres_database.cc.
//
// Transactions. Transact(fn) runs fn inside a transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL:
// BEGIN), commits when fn returns OK and rolls back otherwise. When a statement fails with a
// transient conflict (SQLITE_BUSY, PostgreSQL serialization failure 40001 or deadlock 40P01) the
// whole fn is run again, a few times, so fn must be safe to repeat (no side effects outside the
// session).
//
// Errors. A failed statement's Status message ends with "[SQLSTATE xxxxx]" when the engine gives
// one (SQLite constraint failures are given the matching PostgreSQL codes), and the code is:
// unique violation (23505) -> kAlreadyExists, other integrity violations (class 23) ->
// kFailedPrecondition, lost connection, busy or serialization conflicts -> kUnavailable, pool
// timeout -> kResourceExhausted, SQL errors -> kInvalidArgument, anything else -> kInternal.
//
// All calls block; callers run them off the I/O threads. Database is thread-safe; a Session is
// used by one thread at a time, only inside the callback that received it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "core/config.h"
#include "core/status.h"

namespace megaserve::store {

// A parameter or column value: NULL (monostate), integer, floating point or text.
using Value = std::variant<std::monostate, int64_t, double, std::string>;
// Positional parameters: params[0] binds $1.
using Params = std::vector<Value>;

enum class Engine { kSqlite, kPostgres };

// "sqlite" or "postgresql".
std::string_view EngineName(Engine engine);

// How to open a database. Pool settings apply to PostgreSQL only.
struct StoreOptions {
  // sqlite:///ABS/PATH.db (absolute), sqlite://REL/PATH.db (relative to the working directory),
  // sqlite::memory: (a private in-memory database, one connection), or postgresql://... /
  // postgres://... (a libpq connection URI).
  std::string url = {};
  int pool_size = 20;     // connections kept open
  int max_overflow = 10;  // extra connections opened under load, closed when returned
  std::chrono::milliseconds pool_timeout{30'000};  // longest wait for a free connection
  bool pre_ping = true;                          // check a pooled connection before handing it out
  std::chrono::milliseconds recycle{3'600'000};  // older connections are replaced on checkout
  std::chrono::milliseconds connect_timeout{10'000};  // PostgreSQL connection establishment
  std::chrono::milliseconds busy_timeout{5'000};      // SQLite: wait for another process's lock
  int sqlite_readers = 4;  // SQLite reader connections (file databases only)
  int max_attempts = 5;    // Transact runs fn at most this many times on transient conflicts
};

// The options for `config`: store.url (empty = sqlite:///<absolute data_dir>/megaserve.db) and
// the pool keys.
StoreOptions StoreOptionsFromConfig(const core::Config& config);

// The SQLSTATE carried by a store error ("23505"), or "" when it has none.
std::string SqlState(const core::Status& status);

// The result of one statement: column names, rows of values, and the number of rows changed.
// The typed accessors convert where that is lossless enough to be useful (an integer read as
// text, numeric text read as a number); row and column must be in range.
class Rows {
 public:
  Rows() = default;
  Rows(std::vector<std::string> columns, std::vector<Value> cells, int64_t affected_rows);

  // The column names, in select order.
  const std::vector<std::string>& columns() const { return columns_; }
  // The number of rows returned.
  size_t size() const { return columns_.empty() ? 0 : cells_.size() / columns_.size(); }
  bool empty() const { return size() == 0; }
  // Rows inserted, updated or deleted by the statement (0 for queries).
  int64_t affected_rows() const { return affected_rows_; }
  // The index of the column named `name`, or -1.
  int ColumnIndex(std::string_view name) const;

  // The raw value at (row, col).
  const Value& Get(size_t row, size_t col) const { return cells_[row * columns_.size() + col]; }
  // True when the value is NULL.
  bool IsNull(size_t row, size_t col) const {
    return std::holds_alternative<std::monostate>(Get(row, col));
  }
  // The value as an integer: NULL -> 0, doubles truncated, text parsed (0 when not a number).
  int64_t GetInt(size_t row, size_t col) const;
  // The value as a double: NULL -> 0, text parsed (0 when not a number).
  double GetDouble(size_t row, size_t col) const;
  // The value as text: NULL -> "", numbers formatted.
  std::string GetText(size_t row, size_t col) const;

 private:
  std::vector<std::string> columns_;
  std::vector<Value> cells_;  // row-major
  int64_t affected_rows_ = 0;
};

// Connection-pool counters, for tests and diagnostics. For SQLite, connections are the writer
// plus the readers and the lifetime counters stay 0.
struct PoolStats {
  int open = 0;             // connections open (in use + idle)
  int in_use = 0;           // checked out
  int idle = 0;             // in the pool
  int waiting = 0;          // callers waiting for a connection
  int overflow = 0;         // open connections beyond pool_size
  uint64_t timeouts = 0;    // checkouts that gave up after pool_timeout
  uint64_t reconnects = 0;  // dead connections found by pre_ping and replaced
  uint64_t recycled = 0;    // connections replaced for being older than recycle
  uint64_t discarded = 0;   // broken connections dropped instead of returned to the pool
};

// A checked-out connection, valid only inside the callback that received it.
class Session {
 public:
  virtual ~Session() = default;
  // No copying allowed.
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs one statement with `params` bound to $1, $2, ...; without params the text may hold
  // several statements separated by ';' (the rows are the last one's).
  core::Result<Rows> Execute(std::string_view sql, const Params& params = {}) {
    return DoExecute(sql, params);
  }
  // The engine behind this session.
  virtual Engine engine() const = 0;

  // True when the last failed statement failed with a transient conflict that rerunning the
  // whole transaction may resolve.
  bool retryable_failure() const { return retryable_failure_; }

 protected:
  Session() = default;
  virtual core::Result<Rows> DoExecute(std::string_view sql, const Params& params) = 0;
  bool retryable_failure_ = false;
};

// A dedicated connection receiving PostgreSQL notifications (LISTEN) on one channel. Used by one
// thread at a time, except Interrupt(), which any thread may call.
class Listener {
 public:
  virtual ~Listener() = default;
  // No copying allowed.
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Waits up to `timeout` for notifications and returns their payloads (empty on timeout or
  // Interrupt()). After a lost connection it returns kUnavailable once and reconnects (and
  // listens again) on the next call; notifications sent meanwhile are lost, so callers also poll.
  virtual core::Result<std::vector<std::string>> Wait(std::chrono::milliseconds timeout) = 0;

  // Makes a Wait in progress (or the next one) return at once.
  virtual void Interrupt() = 0;

 protected:
  Listener() = default;
};

// A database: a SQLite file or a PostgreSQL pool. Thread-safe.
class Database {
 public:
  virtual ~Database() = default;
  // No copying allowed.
  Database(const Database&) = delete;
  Database& operator=(const Database&) = delete;

  // Opens the database named by options.url. For PostgreSQL one connection is made at once, so a
  // bad URL or an unreachable server fails here (kUnavailable / kInvalidArgument); for SQLite
  // the file is created if missing. The caller owns the result.
  static core::Result<std::unique_ptr<Database>> Open(const StoreOptions& options);

  // The engine behind this database.
  virtual Engine engine() const = 0;

  // Runs one statement in its own transaction (autocommit); see Session::Execute.
  core::Result<Rows> Execute(std::string_view sql, const Params& params = {}) {
    return DoExecute(sql, params);
  }

  // Runs `fn` in a transaction: commits when it returns OK, rolls back and returns its status
  // otherwise. Reruns fn (up to StoreOptions::max_attempts times in all) when it failed because
  // of a transient conflict. fn must not call back into this Database.
  virtual core::Status Transact(const std::function<core::Status(Session&)>& fn) = 0;

  // Runs `fn` with one connection checked out and no transaction opened: each statement commits
  // on its own unless fn issues BEGIN/COMMIT itself (it must end any transaction it starts).
  // For session-level state such as PostgreSQL advisory locks. On SQLite this holds the writer.
  virtual core::Status WithSession(const std::function<core::Status(Session&)>& fn) = 0;

  // A snapshot of the connection counters.
  virtual PoolStats pool_stats() const = 0;

  // A listener on `channel` over its own connection (outside the pool). kFailedPrecondition on
  // SQLite, which has no notifications.
  virtual core::Result<std::unique_ptr<Listener>> Listen(const std::string& channel) {
    (void)channel;
    return core::Status(core::StatusCode::kFailedPrecondition,
                        std::string(EngineName(engine())) + " has no notifications");
  }

 protected:
  Database() = default;
  virtual core::Result<Rows> DoExecute(std::string_view sql, const Params& params) = 0;
};

}  // namespace megaserve::store
