// PostgreSQL engine: libpq connections in a pool modelled on SQLAlchemy's QueuePool
// (https://docs.sqlalchemy.org/en/20/core/pooling.html).
//
// Pool protocol. At most pool_size + max_overflow connections are open at once. A checkout takes
// the most recently returned idle connection (so the others can age out), else opens a new one
// while under the limit, else waits up to pool_timeout and then fails with kResourceExhausted
// ("pool timeout"). Before an idle connection is handed out it is replaced when older than
// recycle, and, with pre_ping, checked with an empty query; a dead one is replaced by a fresh
// connection (a "reconnect"). On return a connection goes back to the idle list only when it is
// healthy (PQstatus OK, no transaction open) and fewer than pool_size are idle; otherwise it is
// closed, which is how overflow connections shrink away after a burst. A connection that broke
// during use is never returned.
//
// Statements with parameters are prepared once per connection (PQprepare, then PQexecPrepared
// with text parameters), so repeated statements skip the server's parsing; each run is still
// planned for its parameters (plan_cache_mode = force_custom_plan, see Connect). Statements name
// their result columns, so a migration adding columns does not invalidate them. Text
// without parameters goes through PQexec so that scripts of several statements work. With
// pre_ping, a connection returned to the pool less than 500 ms ago is handed out without a
// ping; one that died meanwhile fails its statement with kUnavailable and is discarded. Result
// columns of integer, boolean and floating point types are converted to int64/double; everything
// else stays text.
//
// Metrics (process-wide, summed over pools):
//   megaserve_store_pool_connections{state="in_use"|"idle"}  gauge
//   megaserve_store_pool_waiting                              gauge: callers waiting for a
//   connection megaserve_store_pool_timeouts_total                       checkouts that hit
//   pool_timeout megaserve_store_pool_reconnects_total                     dead connections found
//   by pre_ping megaserve_store_pool_recycled_total                       connections replaced for
//   age megaserve_store_pool_discarded_total                      broken connections dropped on
//   return megaserve_store_transaction_retries_total                 Transact reruns after a
//   conflict
#include "store/postgres_database.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <libpq-fe.h>
#include <poll.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "metrics/registry.h"

namespace megaserve::store {
namespace {

using core::Result;
using core::Status;
using core::StatusCode;
using Clock = std::chrono::steady_clock;

// Type OIDs from pg_type.h.
constexpr Oid kBoolOid = 16;
constexpr Oid kInt8Oid = 20;
constexpr Oid kInt2Oid = 21;
constexpr Oid kInt4Oid = 23;
constexpr Oid kOidOid = 26;
constexpr Oid kFloat4Oid = 700;
constexpr Oid kFloat8Oid = 701;
constexpr Oid kNumericOid = 1700;

struct PoolMetrics {
  metrics::Gauge& in_use;
  metrics::Gauge& idle;
  metrics::Gauge& waiting;
  metrics::Counter& timeouts;
  metrics::Counter& reconnects;
  metrics::Counter& recycled;
  metrics::Counter& discarded;
  metrics::Counter& retries;

  static PoolMetrics& Get() {
    static PoolMetrics* m = [] {
      auto& r = metrics::Registry::Global();
      auto& connections = r.AddGauge("megaserve_store_pool_connections",
                                     "PostgreSQL pool connections by state.", {"state"});
      return new PoolMetrics{
          connections.WithLabels({"in_use"}),
          connections.WithLabels({"idle"}),
          r.AddGauge("megaserve_store_pool_waiting",
                     "Callers waiting for a PostgreSQL pool connection.")
              .WithLabels({}),
          r.AddCounter("megaserve_store_pool_timeouts_total",
                       "PostgreSQL pool checkouts that gave up after pool_timeout.")
              .WithLabels({}),
          r.AddCounter("megaserve_store_pool_reconnects_total",
                       "Dead PostgreSQL connections found before use and replaced.")
              .WithLabels({}),
          r.AddCounter("megaserve_store_pool_recycled_total",
                       "PostgreSQL connections replaced for being older than store.recycle.")
              .WithLabels({}),
          r.AddCounter("megaserve_store_pool_discarded_total",
                       "Broken PostgreSQL connections closed instead of returned to the pool.")
              .WithLabels({}),
          r.AddCounter("megaserve_store_transaction_retries_total",
                       "Transactions rerun after a serialization failure, deadlock or busy "
                       "database.")
              .WithLabels({}),
      };
    }();
    return *m;
  }
};

struct Connection {
  ~Connection() {
    if (conn) PQfinish(conn);
  }
  PGconn* conn = nullptr;
  Clock::time_point created;
  Clock::time_point last_used;  // when it was last returned to the pool
  // Server-side prepared statements of this connection, by SQL text: "s1", "s2", ...
  std::unordered_map<std::string, std::string> prepared;
};

// pre_ping skips connections returned to the pool less than this long ago.
constexpr auto kAliveBypass = std::chrono::milliseconds(500);

// Statements prepared per connection at most; later ones run unprepared.
constexpr size_t kMaxPrepared = 256;

using ConnectionPtr = std::unique_ptr<Connection>;

std::string TrimMessage(const char* text) {
  std::string s = text ? text : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The Status for a failed statement: the SQLSTATE decides the code.
Status PgError(PGconn* conn, const PGresult* res) {
  const char* state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  std::string message = TrimMessage(res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
  if (message.empty()) message = TrimMessage(PQerrorMessage(conn));
  std::string_view sqlstate = state ? state : "";
  StatusCode code = StatusCode::kInternal;
  if (sqlstate == "08P01") {  // protocol violation, e.g. the wrong number of parameters
    code = StatusCode::kInvalidArgument;
  } else if (PQstatus(conn) == CONNECTION_BAD || sqlstate.starts_with("08") ||
             sqlstate.starts_with("57P")) {
    code = StatusCode::kUnavailable;
  } else if (sqlstate == "23505") {
    code = StatusCode::kAlreadyExists;
  } else if (sqlstate.starts_with("23")) {
    code = StatusCode::kFailedPrecondition;
  } else if (sqlstate == "40001" || sqlstate == "40P01" || sqlstate == "55P03") {
    code = StatusCode::kUnavailable;
  } else if (sqlstate == "57014") {
    code = StatusCode::kCanceled;
  } else if (sqlstate.starts_with("53")) {
    code = StatusCode::kResourceExhausted;
  } else if (sqlstate.starts_with("42") || sqlstate.starts_with("22")) {
    code = StatusCode::kInvalidArgument;
  }
  if (sqlstate.empty()) return Status(code, "postgresql: " + message);
  return Status(code, fmt::format("postgresql: {} [SQLSTATE {}]", message, sqlstate));
}

Value CellValue(const PGresult* res, int row, int col, Oid type) {
  if (PQgetisnull(res, row, col)) return std::monostate{};
  const char* text = PQgetvalue(res, row, col);
  int len = PQgetlength(res, row, col);
  switch (type) {
    case kBoolOid:
      return int64_t{text[0] == 't'};
    case kInt2Oid:
    case kInt4Oid:
    case kInt8Oid:
    case kOidOid: {
      int64_t v = 0;
      std::from_chars(text, text + len, v);
      return v;
    }
    case kFloat4Oid:
    case kFloat8Oid:
    case kNumericOid: {
      std::string_view s(text, len);
      if (s == "Infinity") return std::numeric_limits<double>::infinity();
      if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
      if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
      double v = 0;
      std::from_chars(text, text + len, v);
      return v;
    }
    default:
      return std::string(text, len);
  }
}

std::string ParamText(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return fmt::format("{}", d);  // shortest text that round-trips
}

// Runs one statement (or a parameterless script) on `conn`.
Result<Rows> Exec(Connection& connection, std::string_view sql, const Params& params) {
  PGconn* conn = connection.conn;
  std::string text(sql);
  PGresult* res;
  if (params.empty()) {
    res = PQexec(conn, text.c_str());
  } else {
    std::vector<std::string> storage(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (size_t i = 0; i < params.size(); ++i) {
      const Value& v = params[i];
      if (const auto* n = std::get_if<int64_t>(&v)) {
        storage[i] = std::to_string(*n);
      } else if (const auto* d = std::get_if<double>(&v)) {
        storage[i] = ParamText(*d);
      } else if (const auto* s = std::get_if<std::string>(&v)) {
        storage[i] = *s;
      } else {
        continue;  // NULL
      }
      values[i] = storage[i].c_str();
    }
    // Prepared once per connection: later runs skip parsing and planning on the server.
    auto known = connection.prepared.find(text);
    if (known == connection.prepared.end() && connection.prepared.size() < kMaxPrepared) {
      std::string name = "s" + std::to_string(connection.prepared.size() + 1);
      PGresult* prepared =
          PQprepare(conn, name.c_str(), text.c_str(), static_cast<int>(params.size()), nullptr);
      if (!prepared || PQresultStatus(prepared) != PGRES_COMMAND_OK) {
        Status error = PgError(conn, prepared);
        PQclear(prepared);
        return error;
      }
      PQclear(prepared);
      known = connection.prepared.emplace(text, std::move(name)).first;
    }
    if (known != connection.prepared.end()) {
      res = PQexecPrepared(conn, known->second.c_str(), static_cast<int>(params.size()),
                           values.data(), nullptr, nullptr, 0);
    } else {
      res = PQexecParams(conn, text.c_str(), static_cast<int>(params.size()), nullptr,
                         values.data(), nullptr, nullptr, 0);
    }
  }
  ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
    Status error = PgError(conn, res);
    PQclear(res);
    return error;
  }
  int nfields = PQnfields(res);
  int ntuples = PQntuples(res);
  std::vector<std::string> columns;
  std::vector<Oid> types;
  for (int c = 0; c < nfields; ++c) {
    columns.emplace_back(PQfname(res, c));
    types.push_back(PQftype(res, c));
  }
  std::vector<Value> cells;
  cells.reserve(static_cast<size_t>(nfields) * ntuples);
  for (int r = 0; r < ntuples; ++r) {
    for (int c = 0; c < nfields; ++c) cells.push_back(CellValue(res, r, c, types[c]));
  }
  int64_t affected = 0;
  std::string_view tag = PQcmdStatus(res);
  if (!tag.starts_with("SELECT")) {
    std::string_view count = PQcmdTuples(res);
    std::from_chars(count.data(), count.data() + count.size(), affected);
  }
  PQclear(res);
  return Rows(std::move(columns), std::move(cells), affected);
}

class PostgresSession final : public Session {
 public:
  explicit PostgresSession(Connection* conn) : conn_(conn) {}
  Engine engine() const override { return Engine::kPostgres; }

  // True when the connection is unusable and must not go back to the pool.
  bool broken() const { return PQstatus(conn_->conn) != CONNECTION_OK; }
  PGTransactionStatusType transaction_status() const { return PQtransactionStatus(conn_->conn); }

 protected:
  Result<Rows> DoExecute(std::string_view sql, const Params& params) override {
    Result<Rows> rows = Exec(*conn_, sql, params);
    if (!rows.ok()) {
      std::string state = SqlState(rows.status());
      if (state == "40001" || state == "40P01") retryable_failure_ = true;
    }
    return rows;
  }

 private:
  Connection* conn_;
};

// LISTEN on a connection of its own. Wait() polls the connection's socket together with a pipe
// that Interrupt() writes to.
class PostgresListener final : public Listener {
 public:
  PostgresListener(std::function<Result<ConnectionPtr>()> connect, std::string channel)
      : connect_(std::move(connect)), channel_(std::move(channel)) {
    if (pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
  }
  ~PostgresListener() override {
    for (int fd : wake_) {
      if (fd >= 0) close(fd);
    }
  }

  Result<std::vector<std::string>> Wait(std::chrono::milliseconds timeout) override {
    if (!conn_) {
      if (Status s = Connect(); !s.ok()) {
        // Not reachable: wait out the timeout so callers do not spin, then report.
        Sleep(timeout);
        return s;
      }
    }
    std::vector<std::string> out;
    Drain(&out);
    if (!out.empty()) return out;
    pollfd fds[2] = {{PQsocket(conn_->conn), POLLIN, 0}, {wake_[0], POLLIN, 0}};
    int ready = poll(fds, wake_[0] >= 0 ? 2 : 1, static_cast<int>(timeout.count()));
    if (ready > 0 && (fds[1].revents & POLLIN) != 0) ClearWake();
    if (ready > 0 && fds[0].revents != 0) {
      if (PQconsumeInput(conn_->conn) == 0 || PQstatus(conn_->conn) != CONNECTION_OK) {
        std::string message = TrimMessage(PQerrorMessage(conn_->conn));
        conn_.reset();
        return core::Unavailable("postgresql: listener connection lost: " + message);
      }
      Drain(&out);
    }
    return out;
  }

  void Interrupt() override {
    if (wake_[1] >= 0) (void)!write(wake_[1], "x", 1);
  }

  Status Connect() {
    auto conn = connect_();
    if (!conn.ok()) return conn.status();
    PGresult* res = PQexec((*conn)->conn, ("LISTEN " + channel_).c_str());
    const bool ok = res && PQresultStatus(res) == PGRES_COMMAND_OK;
    Status error = ok ? Status::Ok() : PgError((*conn)->conn, res);
    PQclear(res);
    if (!ok) return error;
    conn_ = std::move(*conn);
    return Status::Ok();
  }

 private:
  void Drain(std::vector<std::string>* out) {
    PQconsumeInput(conn_->conn);
    while (PGnotify* n = PQnotifies(conn_->conn)) {
      out->emplace_back(n->extra ? n->extra : "");
      PQfreemem(n);
    }
  }
  void ClearWake() {
    char buf[64];
    while (read(wake_[0], buf, sizeof buf) > 0) {
    }
  }
  void Sleep(std::chrono::milliseconds timeout) {
    pollfd fd = {wake_[0], POLLIN, 0};
    if (poll(&fd, wake_[0] >= 0 ? 1 : 0, static_cast<int>(timeout.count())) > 0) ClearWake();
  }

  std::function<Result<ConnectionPtr>()> connect_;
  std::string channel_;
  ConnectionPtr conn_;
  int wake_[2] = {-1, -1};
};

class PostgresDatabase final : public Database {
 public:
  explicit PostgresDatabase(StoreOptions options)
      : options_(std::move(options)), metrics_(PoolMetrics::Get()) {}

  ~PostgresDatabase() override {
    std::lock_guard lock(mu_);
    metrics_.idle.Dec(static_cast<int64_t>(idle_.size()));
    idle_.clear();
  }

  Engine engine() const override { return Engine::kPostgres; }

  Status Transact(const std::function<Status(Session&)>& fn) override {
    int attempts = std::max(1, options_.max_attempts);
    for (int attempt = 1;; ++attempt) {
      bool retry = false;
      Status status = TransactOnce(fn, &retry);
      if (status.ok() || !retry || attempt >= attempts) return status;
      metrics_.retries.Inc();
      std::this_thread::sleep_for(std::chrono::milliseconds(2 << attempt));
    }
  }

  Status WithSession(const std::function<Status(Session&)>& fn) override {
    auto conn = Checkout();
    if (!conn.ok()) return conn.status();
    PostgresSession session(conn->get());
    Status status = fn(session);
    if (!session.broken() && session.transaction_status() != PQTRANS_IDLE) {
      Exec(**conn, "ROLLBACK", {});
      if (status.ok()) status = core::Internal("postgresql: session ended inside a transaction");
    }
    Checkin(std::move(*conn));
    return status;
  }

  PoolStats pool_stats() const override {
    std::lock_guard lock(mu_);
    PoolStats s;
    s.open = open_;
    s.in_use = in_use_;
    s.idle = static_cast<int>(idle_.size());
    s.waiting = waiting_;
    s.overflow = std::max(0, open_ - options_.pool_size);
    s.timeouts = timeouts_;
    s.reconnects = reconnects_;
    s.recycled = recycled_;
    s.discarded = discarded_;
    return s;
  }

  Result<std::unique_ptr<Listener>> Listen(const std::string& channel) override {
    for (char ch : channel) {
      if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') {
        return core::InvalidArgument("postgresql: invalid channel name " + channel);
      }
    }
    auto listener = std::make_unique<PostgresListener>([this] { return Connect(); }, channel);
    if (Status s = listener->Connect(); !s.ok()) return s;
    return std::unique_ptr<Listener>(std::move(listener));
  }

  // Makes one connection and returns it to the pool, so a bad URL fails at open time.
  Status Probe() {
    auto conn = Checkout();
    if (!conn.ok()) return conn.status();
    Checkin(std::move(*conn));
    return Status::Ok();
  }

 protected:
  Result<Rows> DoExecute(std::string_view sql, const Params& params) override {
    auto conn = Checkout();
    if (!conn.ok()) return conn.status();
    Result<Rows> rows = Exec(**conn, sql, params);
    Checkin(std::move(*conn));
    return rows;
  }

 private:
  Status TransactOnce(const std::function<Status(Session&)>& fn, bool* retry) {
    auto conn = Checkout();
    if (!conn.ok()) return conn.status();
    PostgresSession session(conn->get());
    Status status = session.Execute("BEGIN").status();
    if (!status.ok()) {
      *retry = session.broken();  // nothing ran yet, so a fresh connection may simply work
      Checkin(std::move(*conn));
      return status;
    }
    status = fn(session);
    if (status.ok() && session.transaction_status() == PQTRANS_INERROR) {
      // fn ignored a failed statement; COMMIT would silently roll back.
      status = core::Internal("postgresql: transaction aborted by an earlier failed statement");
    }
    if (status.ok()) {
      status = session.Execute("COMMIT").status();
      *retry = session.retryable_failure();
    } else {
      *retry = session.retryable_failure();
      if (!session.broken()) session.Execute("ROLLBACK");
    }
    Checkin(std::move(*conn));
    return status;
  }

  Result<ConnectionPtr> Connect() {
    std::string timeout =
        std::to_string(std::max<int64_t>(1, (options_.connect_timeout.count() + 999) / 1000));
    // Keywords before dbname are defaults that the URL may override.
    const char* keys[] = {"connect_timeout", "application_name", "dbname", nullptr};
    const char* values[] = {timeout.c_str(), "megaserve", options_.url.c_str(), nullptr};
    auto conn = std::make_unique<Connection>();
    conn->conn = PQconnectdbParams(keys, values, 1);
    conn->created = Clock::now();
    if (!conn->conn) return core::Internal("postgresql: out of memory");
    // NOTICEs ("relation already exists, skipping") are not errors; libpq would print them.
    PQsetNoticeProcessor(
        conn->conn, [](void*, const char*) {}, nullptr);
    if (PQstatus(conn->conn) != CONNECTION_OK) {
      return core::Unavailable(fmt::format("postgresql: connecting to {}: {}",
                                           core::RedactUrlPassword(options_.url),
                                           TrimMessage(PQerrorMessage(conn->conn))));
    }
    // Prepared statements are planned with their actual parameters and the table's current size
    // on every run. A generic plan made while the jobs table was small (a sequential scan and a
    // sort) would stay cached for the connection's lifetime and turn every claim into a full scan
    // as the queue grows (see docs/architecture.md, store).
    PGresult* set = PQexec(conn->conn, "SET plan_cache_mode = force_custom_plan");
    const bool set_ok = set && PQresultStatus(set) == PGRES_COMMAND_OK;
    Status set_error = set_ok ? Status::Ok() : PgError(conn->conn, set);
    PQclear(set);
    if (!set_ok) return set_error;
    return conn;
  }

  static bool Ping(Connection& c) {
    PGresult* res = PQexec(c.conn, "");
    bool ok = res && PQresultStatus(res) == PGRES_EMPTY_QUERY && PQstatus(c.conn) == CONNECTION_OK;
    PQclear(res);
    return ok;
  }

  // Hands out a connection, waiting up to pool_timeout for one to become free.
  Result<ConnectionPtr> Checkout() {
    const int limit = options_.pool_size + std::max(0, options_.max_overflow);
    const auto deadline = Clock::now() + options_.pool_timeout;
    std::unique_lock lock(mu_);
    for (;;) {
      if (!idle_.empty()) {
        ConnectionPtr c = std::move(idle_.back());
        idle_.pop_back();
        ++in_use_;
        metrics_.idle.Dec();
        metrics_.in_use.Inc();
        lock.unlock();
        return Validate(std::move(c));
      }
      if (open_ < limit) {
        ++open_;
        ++in_use_;
        metrics_.in_use.Inc();
        lock.unlock();
        Result<ConnectionPtr> c = Connect();
        if (!c.ok()) ReleaseSlot();
        return c;
      }
      ++waiting_;
      metrics_.waiting.Inc();
      bool free = cv_.wait_until(lock, deadline, [&] { return !idle_.empty() || open_ < limit; });
      --waiting_;
      metrics_.waiting.Dec();
      if (!free) {
        ++timeouts_;
        metrics_.timeouts.Inc();
        return Status(StatusCode::kResourceExhausted,
                      fmt::format("postgresql: pool timeout: no connection free after {} ms "
                                  "({} in use; pool_size {}, max_overflow {})",
                                  options_.pool_timeout.count(), in_use_, options_.pool_size,
                                  options_.max_overflow));
      }
    }
  }

  // Replaces an idle connection that is too old or, with pre_ping, dead. Called without mu_.
  Result<ConnectionPtr> Validate(ConnectionPtr c) {
    const auto now = Clock::now();
    bool old = now - c->created >= options_.recycle;
    // A connection that worked moments ago is not pinged again (HikariCP's "alive bypass"):
    // under load every checkout would otherwise pay a round trip.
    bool recent = now - c->last_used < kAliveBypass;
    bool dead = !old && !recent && options_.pre_ping && !Ping(*c);
    if (!old && !dead) return c;
    c.reset();
    {
      std::lock_guard lock(mu_);
      if (old) {
        ++recycled_;
      } else {
        ++reconnects_;
      }
    }
    (old ? metrics_.recycled : metrics_.reconnects).Inc();
    Result<ConnectionPtr> fresh = Connect();
    if (!fresh.ok()) ReleaseSlot();
    return fresh;
  }

  // Gives up a checked-out slot whose connection is gone.
  void ReleaseSlot() {
    {
      std::lock_guard lock(mu_);
      --open_;
      --in_use_;
      metrics_.in_use.Dec();
    }
    cv_.notify_one();
  }

  // Returns a connection: kept when healthy and the idle list has room, else closed.
  void Checkin(ConnectionPtr c) {
    bool healthy =
        PQstatus(c->conn) == CONNECTION_OK && PQtransactionStatus(c->conn) == PQTRANS_IDLE;
    ConnectionPtr to_close;
    {
      std::lock_guard lock(mu_);
      --in_use_;
      metrics_.in_use.Dec();
      if (healthy && static_cast<int>(idle_.size()) < options_.pool_size) {
        c->last_used = Clock::now();
        idle_.push_back(std::move(c));
        metrics_.idle.Inc();
      } else {
        --open_;
        if (!healthy) {
          ++discarded_;
          metrics_.discarded.Inc();
        }
        to_close = std::move(c);
      }
    }
    cv_.notify_one();
  }

  const StoreOptions options_;
  PoolMetrics& metrics_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<ConnectionPtr> idle_;  // most recently returned last
  int open_ = 0;
  int in_use_ = 0;
  int waiting_ = 0;
  uint64_t timeouts_ = 0;
  uint64_t reconnects_ = 0;
  uint64_t recycled_ = 0;
  uint64_t discarded_ = 0;
};

}  // namespace

Result<std::unique_ptr<Database>> OpenPostgres(const StoreOptions& options) {
  if (options.pool_size < 1) return core::InvalidArgument("store.pool_size: must be at least 1");
  auto db = std::make_unique<PostgresDatabase>(options);
  if (Status s = db->Probe(); !s.ok()) return s;
  return std::unique_ptr<Database>(std::move(db));
}

}  // namespace megaserve::store
