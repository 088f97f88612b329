// SQLite engine: one writer, several readers, WAL.
//
// In WAL mode readers never block the writer and the writer never blocks readers, but there is
// only ever one writer (https://www.sqlite.org/wal.html). So every write in this process goes
// through a single writer connection guarded by a mutex, and transactions start with BEGIN
// IMMEDIATE so the write lock is taken up front: a transaction that first reads and later writes
// cannot fail half-way with SQLITE_BUSY because another writer got in between. busy_timeout
// covers other processes on the same file; a BUSY that outlasts it makes Transact rerun fn.
//
// Autocommit statements that sqlite3_stmt_readonly() says do not write run on one of the reader
// connections (opened with query_only), so reads proceed in parallel with a running transaction.
// synchronous=NORMAL is durable against application crashes under WAL and loses at most the last
// transactions on power loss, the trade-off SQLite recommends for WAL.
//
// Each connection caches its prepared statements by SQL text (statements with a trailing second
// statement, such as migration scripts, are run uncached).
#include "store/sqlite_database.h"

#include <fmt/format.h>
#include <sqlite3.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace megaserve::store {
namespace {

using core::Result;
using core::Status;
using core::StatusCode;

// Maps a SQLite result code to a Status, with the matching SQLSTATE for constraint failures.
Status SqliteError(sqlite3* db, int rc, std::string_view what) {
  int extended = db ? sqlite3_extended_errcode(db) : rc;
  if ((extended & 0xff) != (rc & 0xff)) extended = rc;
  std::string message =
      fmt::format("sqlite: {}: {}", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  auto with_state = [&](StatusCode code, std::string_view state) {
    return Status(code, fmt::format("{} [SQLSTATE {}]", message, state));
  };
  switch (extended) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY:
      return with_state(StatusCode::kAlreadyExists, "23505");
    case SQLITE_CONSTRAINT_FOREIGNKEY:
      return with_state(StatusCode::kFailedPrecondition, "23503");
    case SQLITE_CONSTRAINT_NOTNULL:
      return with_state(StatusCode::kFailedPrecondition, "23502");
    case SQLITE_CONSTRAINT_CHECK:
      return with_state(StatusCode::kFailedPrecondition, "23514");
    default:
      break;
  }
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      return with_state(StatusCode::kFailedPrecondition, "23000");
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status(StatusCode::kUnavailable, message);
    case SQLITE_ERROR:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
      return Status(StatusCode::kInvalidArgument, message);
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
      return Status(StatusCode::kUnavailable, message);
    default:
      return Status(StatusCode::kInternal, message);
  }
}

bool IsBusy(int rc) { return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED; }

bool OnlySpace(const char* p, const char* end) {
  for (; p < end; ++p) {
    if (!std::isspace(static_cast<unsigned char>(*p)) && *p != ';') return false;
  }
  return true;
}

// True for statements that control transactions, which must never run on a reader.
bool IsTransactionControl(std::string_view sql) {
  size_t i = 0;
  while (i < sql.size() && std::isspace(static_cast<unsigned char>(sql[i]))) ++i;
  std::string word;
  for (; i < sql.size() && std::isalpha(static_cast<unsigned char>(sql[i])); ++i) {
    word += static_cast<char>(std::toupper(static_cast<unsigned char>(sql[i])));
  }
  return word == "BEGIN" || word == "COMMIT" || word == "END" || word == "ROLLBACK" ||
         word == "SAVEPOINT" || word == "RELEASE";
}

// One connection and its statement cache. Not thread-safe: its owner serializes use.
class Connection {
 public:
  ~Connection() {
    for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
    sqlite3_close_v2(db_);
  }

  static Result<std::unique_ptr<Connection>> Open(const std::string& path, bool reader,
                                                  const StoreOptions& options) {
    auto conn = std::unique_ptr<Connection>(new Connection);
    int rc =
        sqlite3_open_v2(path.c_str(), &conn->db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) return SqliteError(conn->db_, rc, "opening " + path);
    sqlite3_extended_result_codes(conn->db_, 1);
    sqlite3_busy_timeout(conn->db_, static_cast<int>(options.busy_timeout.count()));
    std::string pragmas =
        reader ? "PRAGMA foreign_keys=ON; PRAGMA query_only=ON;" : "PRAGMA foreign_keys=ON;";
    rc = sqlite3_exec(conn->db_, pragmas.c_str(), nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) return SqliteError(conn->db_, rc, "configuring " + path);
    return conn;
  }

  sqlite3* db() const { return db_; }

  // The cached statement for `sql`, prepared on first use; nullptr for text with no statement.
  // *multi is set when the text holds more than one statement; such text is not cached and the
  // caller runs it with RunScript.
  Result<sqlite3_stmt*> Prepare(std::string_view sql, bool* multi) {
    *multi = false;
    std::string key(sql);
    if (auto it = cache_.find(key); it != cache_.end()) return it->second;
    sqlite3_stmt* stmt = nullptr;
    const char* tail = nullptr;
    int rc = sqlite3_prepare_v3(db_, key.data(), static_cast<int>(key.size()),
                                SQLITE_PREPARE_PERSISTENT, &stmt, &tail);
    if (rc != SQLITE_OK) return SqliteError(db_, rc, "preparing statement");
    if (tail && !OnlySpace(tail, key.data() + key.size())) {
      sqlite3_finalize(stmt);
      *multi = true;
      return static_cast<sqlite3_stmt*>(nullptr);
    }
    if (stmt) cache_.emplace(std::move(key), stmt);
    return stmt;
  }

  // Runs `sql` (one statement, or several when params is empty), setting *busy when it failed
  // because the database was locked.
  Result<Rows> Execute(std::string_view sql, const Params& params, bool* busy) {
    *busy = false;
    bool multi = false;
    Result<sqlite3_stmt*> stmt = Prepare(sql, &multi);
    if (!stmt.ok()) return stmt.status();
    if (multi) {
      if (!params.empty()) {
        return core::InvalidArgument("sqlite: parameters given for text with several statements");
      }
      return RunScript(sql, busy);
    }
    if (!*stmt) return Rows();
    return Run(*stmt, params, busy);
  }

  // Binds and steps a prepared statement, then resets it for reuse.
  Result<Rows> Run(sqlite3_stmt* stmt, const Params& params, bool* busy) {
    Status bound = Bind(stmt, params);
    if (!bound.ok()) {
      sqlite3_clear_bindings(stmt);
      return bound;
    }
    std::vector<std::string> columns;
    int ncol = sqlite3_column_count(stmt);
    for (int c = 0; c < ncol; ++c) columns.emplace_back(sqlite3_column_name(stmt, c));
    std::vector<Value> cells;
    int64_t before = sqlite3_total_changes64(db_);
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
      for (int c = 0; c < ncol; ++c) cells.push_back(ColumnValue(stmt, c));
    }
    Result<Rows> out = Rows();
    if (rc == SQLITE_DONE) {
      int64_t affected = 0;
      if (!sqlite3_stmt_readonly(stmt) && sqlite3_total_changes64(db_) != before) {
        affected = sqlite3_changes64(db_);
      }
      out = Rows(std::move(columns), std::move(cells), affected);
    } else {
      *busy = IsBusy(rc);
      out = SqliteError(db_, rc, "executing statement");
    }
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return out;
  }

 private:
  Connection() = default;

  static Value ColumnValue(sqlite3_stmt* stmt, int c) {
    switch (sqlite3_column_type(stmt, c)) {
      case SQLITE_INTEGER:
        return static_cast<int64_t>(sqlite3_column_int64(stmt, c));
      case SQLITE_FLOAT:
        return sqlite3_column_double(stmt, c);
      case SQLITE_NULL:
        return std::monostate{};
      default: {
        const void* p = c >= 0 ? sqlite3_column_blob(stmt, c) : nullptr;
        int n = sqlite3_column_bytes(stmt, c);
        return std::string(static_cast<const char*>(p), p ? static_cast<size_t>(n) : 0);
      }
    }
  }

  // Binds params[i] to "$<i+1>" and checks that every parameter the statement names is given.
  static Status Bind(sqlite3_stmt* stmt, const Params& params) {
    for (size_t i = 0; i < params.size(); ++i) {
      std::string name = "$" + std::to_string(i + 1);
      int idx = sqlite3_bind_parameter_index(stmt, name.c_str());
      if (idx == 0) {
        return core::InvalidArgument(
            fmt::format("sqlite: parameter {} is not used by the statement", name));
      }
      const Value& v = params[i];
      int rc = SQLITE_OK;
      if (const auto* n = std::get_if<int64_t>(&v)) {
        rc = sqlite3_bind_int64(stmt, idx, *n);
      } else if (const auto* d = std::get_if<double>(&v)) {
        rc = sqlite3_bind_double(stmt, idx, *d);
      } else if (const auto* s = std::get_if<std::string>(&v)) {
        rc = sqlite3_bind_text64(stmt, idx, s->data(), s->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      } else {
        rc = sqlite3_bind_null(stmt, idx);
      }
      if (rc != SQLITE_OK) return SqliteError(sqlite3_db_handle(stmt), rc, "binding " + name);
    }
    int count = sqlite3_bind_parameter_count(stmt);
    for (int j = 1; j <= count; ++j) {
      const char* name = sqlite3_bind_parameter_name(stmt, j);
      size_t k = 0;
      bool ok = name && name[0] == '$';
      if (ok) {
        std::string_view digits(name + 1);
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), k);
        ok = ec == std::errc() && end == digits.data() + digits.size() && k >= 1 &&
             k <= params.size();
      }
      if (!ok) {
        return core::InvalidArgument(
            fmt::format("sqlite: statement parameter {} has no value ({} given; use $1, $2, ...)",
                        name ? name : "?", params.size()));
      }
    }
    return Status::Ok();
  }

  // Runs every statement in `sql` uncached; returns the last statement's rows.
  Result<Rows> RunScript(std::string_view sql, bool* busy) {
    std::string text(sql);
    const char* p = text.data();
    const char* end = text.data() + text.size();
    Result<Rows> last = Rows();
    while (p < end && !OnlySpace(p, end)) {
      sqlite3_stmt* stmt = nullptr;
      const char* tail = nullptr;
      int rc = sqlite3_prepare_v2(db_, p, static_cast<int>(end - p), &stmt, &tail);
      if (rc != SQLITE_OK) {
        *busy = IsBusy(rc);
        return SqliteError(db_, rc, "preparing statement");
      }
      p = tail;
      if (!stmt) continue;
      last = Run(stmt, {}, busy);
      sqlite3_finalize(stmt);
      if (!last.ok()) return last;
    }
    return last;
  }

  sqlite3* db_ = nullptr;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

class SqliteSession final : public Session {
 public:
  explicit SqliteSession(Connection* conn) : conn_(conn) {}
  Engine engine() const override { return Engine::kSqlite; }

 protected:
  Result<Rows> DoExecute(std::string_view sql, const Params& params) override {
    bool busy = false;
    Result<Rows> rows = conn_->Execute(sql, params, &busy);
    if (busy) retryable_failure_ = true;
    return rows;
  }

 private:
  Connection* conn_;
};

class SqliteDatabase final : public Database {
 public:
  SqliteDatabase(StoreOptions options, std::unique_ptr<Connection> writer,
                 std::vector<std::unique_ptr<Connection>> readers)
      : options_(std::move(options)), writer_(std::move(writer)), readers_(std::move(readers)) {
    for (auto& r : readers_) free_readers_.push_back(r.get());
  }

  Engine engine() const override { return Engine::kSqlite; }

  Status Transact(const std::function<Status(Session&)>& fn) override {
    int attempts = std::max(1, options_.max_attempts);
    for (int attempt = 1;; ++attempt) {
      bool retry = false;
      Status status = TransactOnce(fn, &retry);
      if (status.ok() || !retry || attempt >= attempts) return status;
      std::this_thread::sleep_for(std::chrono::milliseconds(2 << attempt));
    }
  }

  Status WithSession(const std::function<Status(Session&)>& fn) override {
    std::lock_guard lock(writer_mu_);
    WriterInUse in_use(this);
    SqliteSession session(writer_.get());
    Status status = fn(session);
    if (!sqlite3_get_autocommit(writer_->db())) {
      sqlite3_exec(writer_->db(), "ROLLBACK", nullptr, nullptr, nullptr);
      if (status.ok()) return core::Internal("sqlite: session ended inside a transaction");
    }
    return status;
  }

  PoolStats pool_stats() const override {
    PoolStats stats;
    std::lock_guard lock(readers_mu_);
    stats.open = 1 + static_cast<int>(readers_.size());
    stats.idle = static_cast<int>(free_readers_.size()) + (writer_busy_ ? 0 : 1);
    stats.in_use = stats.open - stats.idle;
    return stats;
  }

 protected:
  Result<Rows> DoExecute(std::string_view sql, const Params& params) override {
    if (!readers_.empty() && !IsTransactionControl(sql)) {
      Connection* reader = AcquireReader();
      bool multi = false;
      Result<sqlite3_stmt*> stmt = reader->Prepare(sql, &multi);
      if (stmt.ok() && !multi && *stmt && sqlite3_stmt_readonly(*stmt)) {
        bool busy = false;
        Result<Rows> rows = reader->Run(*stmt, params, &busy);
        ReleaseReader(reader);
        return rows;
      }
      ReleaseReader(reader);
      if (!stmt.ok()) return stmt.status();
    }
    std::lock_guard lock(writer_mu_);
    WriterInUse in_use(this);
    bool busy = false;
    return writer_->Execute(sql, params, &busy);
  }

 private:
  // Marks the writer busy for pool_stats while alive.
  struct WriterInUse {
    explicit WriterInUse(SqliteDatabase* db) : db(db) { db->writer_busy_ = true; }
    ~WriterInUse() { db->writer_busy_ = false; }
    SqliteDatabase* db;
  };

  Status TransactOnce(const std::function<Status(Session&)>& fn, bool* retry) {
    std::lock_guard lock(writer_mu_);
    WriterInUse in_use(this);
    sqlite3* db = writer_->db();
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      *retry = IsBusy(rc);
      return SqliteError(db, rc, "BEGIN IMMEDIATE");
    }
    SqliteSession session(writer_.get());
    Status status = fn(session);
    if (status.ok()) {
      rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) return Status::Ok();
      status = SqliteError(db, rc, "COMMIT");
      *retry = IsBusy(rc);
    } else {
      *retry = session.retryable_failure();
    }
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return status;
  }

  Connection* AcquireReader() {
    std::unique_lock lock(readers_mu_);
    readers_cv_.wait(lock, [this] { return !free_readers_.empty(); });
    Connection* reader = free_readers_.back();
    free_readers_.pop_back();
    return reader;
  }

  void ReleaseReader(Connection* reader) {
    {
      std::lock_guard lock(readers_mu_);
      free_readers_.push_back(reader);
    }
    readers_cv_.notify_one();
  }

  const StoreOptions options_;
  std::mutex writer_mu_;
  std::unique_ptr<Connection> writer_;  // guarded by writer_mu_
  std::atomic<bool> writer_busy_{false};
  std::vector<std::unique_ptr<Connection>> readers_;
  mutable std::mutex readers_mu_;
  std::condition_variable readers_cv_;
  std::vector<Connection*> free_readers_;  // guarded by readers_mu_
};

}  // namespace

Result<std::unique_ptr<Database>> OpenSqlite(const std::string& path, const StoreOptions& options) {
  bool memory = path == ":memory:";
  if (!memory) {
    std::filesystem::path parent = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
    if (ec) {
      return core::Unavailable(
          fmt::format("sqlite: cannot create directory {}: {}", parent.string(), ec.message()));
    }
  }
  auto writer = Connection::Open(path, false, options);
  if (!writer.ok()) return writer.status();
  sqlite3* db = (*writer)->db();
  std::vector<std::unique_ptr<Connection>> readers;
  if (!memory) {
    // journal_mode answers with the mode in force; WAL may be refused (e.g. on some network
    // file systems), in which case everything runs on the writer.
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db, "PRAGMA journal_mode=WAL", -1, &stmt, nullptr);
    bool wal = false;
    if (rc == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW) {
      const unsigned char* mode = sqlite3_column_text(stmt, 0);
      wal = mode && std::string_view(reinterpret_cast<const char*>(mode)) == "wal";
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_OK) return SqliteError(db, rc, "PRAGMA journal_mode=WAL");
    if (wal) {
      rc = sqlite3_exec(db, "PRAGMA synchronous=NORMAL", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK) return SqliteError(db, rc, "PRAGMA synchronous");
      for (int i = 0; i < options.sqlite_readers; ++i) {
        auto reader = Connection::Open(path, true, options);
        if (!reader.ok()) return reader.status();
        readers.push_back(std::move(*reader));
      }
    }
  }
  return std::unique_ptr<Database>(
      new SqliteDatabase(options, std::move(*writer), std::move(readers)));
}

}  // namespace megaserve::store
