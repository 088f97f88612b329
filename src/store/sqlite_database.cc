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
// Transact uses group commit: concurrent transactions run one after another inside one BEGIN
// IMMEDIATE ... COMMIT, each in its own savepoint (see TransactOnce). Each connection caches its
// prepared statements by SQL text (statements with a trailing second statement, such as
// migration scripts, are run uncached) and reads through a memory map.
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
#include <vector>

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
    // Memory-mapped reads: a reader's page cache is dropped whenever the writer commits, and
    // reading pages through the map instead of read() makes that refill cheap.
    // journal_size_limit truncates the WAL file back to 64 MiB after it restarts.
    std::string pragmas =
        "PRAGMA foreign_keys=ON; PRAGMA mmap_size=268435456; PRAGMA journal_size_limit=67108864;";
    if (reader) pragmas += " PRAGMA query_only=ON;";
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
  // With a `checkpointer` connection (file databases in WAL mode), checkpoints move off the
  // writer: see CheckpointLoop.
  SqliteDatabase(StoreOptions options, std::unique_ptr<Connection> writer,
                 std::vector<std::unique_ptr<Connection>> readers,
                 std::unique_ptr<Connection> checkpointer)
      : options_(std::move(options)),
        writer_(std::move(writer)),
        readers_(std::move(readers)),
        checkpointer_(std::move(checkpointer)) {
    for (auto& r : readers_) free_readers_.push_back(r.get());
    if (checkpointer_) {
      sqlite3_wal_autocheckpoint(writer_->db(), 0);
      sqlite3_wal_hook(writer_->db(), &SqliteDatabase::OnWalCommit, this);
      checkpoint_thread_ = std::thread([this] { CheckpointLoop(); });
    }
  }

  ~SqliteDatabase() override {
    if (!checkpoint_thread_.joinable()) return;
    {
      std::lock_guard lock(checkpoint_mu_);
      checkpoint_exit_ = true;
    }
    checkpoint_cv_.notify_one();
    checkpoint_thread_.join();
    sqlite3_wal_hook(writer_->db(), nullptr, nullptr);
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

  // One caller's transaction waiting to run in a group.
  struct Pending {
    const std::function<Status(Session&)>* fn = nullptr;
    Status status;
    bool retry = false;
    bool done = false;
  };

  // Group commit: the caller that finds no group running becomes the leader and runs every
  // transaction queued so far in one BEGIN IMMEDIATE ... COMMIT, each inside its own savepoint
  // so that one failing rolls back only itself. Callers that arrive meanwhile queue for the
  // next group. Each fn still runs alone and in order, sees what earlier ones wrote, and its
  // caller returns after the shared COMMIT, so it is as atomic, isolated and durable as a
  // transaction of its own; the group writes shared pages (indexes, the tail of the events
  // table) to the WAL once instead of once per transaction.
  Status TransactOnce(const std::function<Status(Session&)>& fn, bool* retry) {
    Pending me;
    me.fn = &fn;
    std::unique_lock lock(group_mu_);
    group_queue_.push_back(&me);
    while (!me.done) {
      if (group_running_) {
        group_cv_.wait(lock);
        continue;
      }
      group_running_ = true;
      std::vector<Pending*> group;
      const size_t n = std::min(group_queue_.size(), kMaxGroup);
      group.assign(group_queue_.begin(), group_queue_.begin() + static_cast<std::ptrdiff_t>(n));
      group_queue_.erase(group_queue_.begin(),
                         group_queue_.begin() + static_cast<std::ptrdiff_t>(n));
      lock.unlock();
      RunGroup(group);
      lock.lock();
      group_running_ = false;
      for (Pending* p : group) p->done = true;
      group_cv_.notify_all();
    }
    *retry = me.retry;
    return me.status;
  }

  void RunGroup(const std::vector<Pending*>& group) {
    std::lock_guard lock(writer_mu_);
    WriterInUse in_use(this);
    sqlite3* db = writer_->db();
    int rc = sqlite3_exec(db, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      Status error = SqliteError(db, rc, "BEGIN IMMEDIATE");
      for (Pending* p : group) {
        p->status = error;
        p->retry = IsBusy(rc);
      }
      return;
    }
    const bool alone = group.size() == 1;
    for (Pending* p : group) {
      if (!alone) sqlite3_exec(db, "SAVEPOINT tx", nullptr, nullptr, nullptr);
      SqliteSession session(writer_.get());
      p->status = (*p->fn)(session);
      p->retry = !p->status.ok() && session.retryable_failure();
      if (!alone) {
        if (!p->status.ok()) sqlite3_exec(db, "ROLLBACK TO tx", nullptr, nullptr, nullptr);
        sqlite3_exec(db, "RELEASE tx", nullptr, nullptr, nullptr);
      }
    }
    if (alone && !group[0]->status.ok()) {
      if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
      return;
    }
    rc = sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) return;
    Status error = SqliteError(db, rc, "COMMIT");
    for (Pending* p : group) {
      if (!p->status.ok()) continue;
      p->status = error;
      p->retry = IsBusy(rc);
    }
    if (!sqlite3_get_autocommit(db)) sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
  }

  // Called by SQLite on the writer after each commit with the WAL's size in frames.
  static int OnWalCommit(void* self, sqlite3*, const char*, int frames) {
    auto* db = static_cast<SqliteDatabase*>(self);
    if (frames >= kCheckpointFrames) {
      {
        std::lock_guard lock(db->checkpoint_mu_);
        db->checkpoint_due_ = true;
        db->wal_frames_ = frames;
      }
      db->checkpoint_cv_.notify_one();
    }
    return SQLITE_OK;
  }

  // Copies the WAL back into the database file once it holds kCheckpointFrames pages (SQLite's
  // own threshold), on a connection of its own. SQLite would otherwise do this inside the commit
  // that crossed the threshold, with the write lock held through the copy and its fsync; a
  // PASSIVE checkpoint here runs beside the writer. Under a steady stream of writes and reads a
  // passive checkpoint may never catch up, and the WAL only restarts from its beginning once it
  // has; past kRestartFrames a RESTART checkpoint waits for the readers and holds writers off
  // (they wait in busy_timeout) until the WAL can start over, which bounds its size.
  void CheckpointLoop() {
    std::unique_lock lock(checkpoint_mu_);
    for (;;) {
      checkpoint_cv_.wait(lock, [this] { return checkpoint_exit_ || checkpoint_due_; });
      if (checkpoint_exit_) return;
      checkpoint_due_ = false;
      const int mode =
          wal_frames_ >= kRestartFrames ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE;
      lock.unlock();
      sqlite3_wal_checkpoint_v2(checkpointer_->db(), nullptr, mode, nullptr, nullptr);
      lock.lock();
    }
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

  // Most transactions one group commit runs.
  static constexpr size_t kMaxGroup = 64;
  // WAL size in pages that triggers a checkpoint (SQLite's default auto-checkpoint), and the
  // size (about 40 MiB of 4 KiB pages) past which the checkpoint restarts the WAL.
  static constexpr int kCheckpointFrames = 1000;
  static constexpr int kRestartFrames = 10'000;

  const StoreOptions options_;
  std::mutex group_mu_;
  std::condition_variable group_cv_;
  std::vector<Pending*> group_queue_;  // guarded by group_mu_
  bool group_running_ = false;         // guarded by group_mu_
  std::mutex writer_mu_;
  std::unique_ptr<Connection> writer_;  // guarded by writer_mu_
  std::atomic<bool> writer_busy_{false};
  std::vector<std::unique_ptr<Connection>> readers_;
  mutable std::mutex readers_mu_;
  std::condition_variable readers_cv_;
  std::vector<Connection*> free_readers_;     // guarded by readers_mu_
  std::unique_ptr<Connection> checkpointer_;  // used by checkpoint_thread_ only
  std::mutex checkpoint_mu_;
  std::condition_variable checkpoint_cv_;
  bool checkpoint_due_ = false;   // guarded by checkpoint_mu_
  int wal_frames_ = 0;            // guarded by checkpoint_mu_
  bool checkpoint_exit_ = false;  // guarded by checkpoint_mu_
  std::thread checkpoint_thread_;
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
  std::unique_ptr<Connection> checkpointer;
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
      auto opened = Connection::Open(path, false, options);
      if (!opened.ok()) return opened.status();
      // A connection learns that the file is in WAL mode when it first reads it; until then a
      // checkpoint on it does nothing.
      rc = sqlite3_exec((*opened)->db(), "PRAGMA journal_mode", nullptr, nullptr, nullptr);
      if (rc != SQLITE_OK) return SqliteError((*opened)->db(), rc, "PRAGMA journal_mode");
      checkpointer = std::move(*opened);
    }
  }
  return std::unique_ptr<Database>(
      new SqliteDatabase(options, std::move(*writer), std::move(readers), std::move(checkpointer)));
}

}  // namespace megaserve::store
