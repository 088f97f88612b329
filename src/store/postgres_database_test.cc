// PostgreSQL engine specifics: the connection pool (limits, timeout, pre_ping, recycle), result
// types, transient-conflict retries and connection errors.
#include "store/postgres_database.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "metrics/registry.h"
#include "store/test_util.h"

namespace megaserve::store {
namespace {

using core::StatusCode;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

class StorePostgresTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MEGASERVE_REQUIRE_POSTGRES(base);
    schema_ = std::make_unique<testing::PostgresSchema>(base);
  }

  std::unique_ptr<Database> Open(StoreOptions options) {
    options.url = schema_->url();
    auto db = Database::Open(options);
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    return db.ok() ? std::move(*db) : nullptr;
  }

  static int64_t BackendPid(Database& db) {
    auto rows = db.Execute("SELECT pg_backend_pid()");
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? rows->GetInt(0, 0) : -1;
  }

  void Terminate(int64_t pid) {
    // The timeout form waits until the backend is gone.
    auto r = schema_->admin().Execute("SELECT pg_terminate_backend($1::int, 5000)", {pid});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  std::unique_ptr<testing::PostgresSchema> schema_;
};

TEST_F(StorePostgresTest, ConvertsResultTypes) {
  auto db = Open({});
  ASSERT_TRUE(db);
  auto rows = db->Execute(
      "SELECT 1::int2 AS a, 2::int4 AS b, 3::int8 AS c, true AS d, 1.5::float8 AS e, "
      "2.25::numeric AS f, 'x'::text AS g, NULL::text AS h, '{\"k\":1}'::jsonb AS i");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  EXPECT_EQ(rows->Get(0, 0), Value(int64_t{1}));
  EXPECT_EQ(rows->Get(0, 1), Value(int64_t{2}));
  EXPECT_EQ(rows->Get(0, 2), Value(int64_t{3}));
  EXPECT_EQ(rows->Get(0, 3), Value(int64_t{1}));
  EXPECT_EQ(rows->Get(0, 4), Value(1.5));
  EXPECT_EQ(rows->Get(0, 5), Value(2.25));
  EXPECT_EQ(rows->Get(0, 6), Value(std::string("x")));
  EXPECT_TRUE(rows->IsNull(0, 7));
  EXPECT_EQ(rows->GetText(0, 8), "{\"k\": 1}");
}

TEST_F(StorePostgresTest, PoolRespectsSizeOverflowAndTimeout) {
  auto db = Open({.pool_size = 2, .max_overflow = 1, .pool_timeout = milliseconds(300)});
  ASSERT_TRUE(db);
  uint64_t global_before = metrics::Registry::Global()
                               .AddCounter("megaserve_store_pool_timeouts_total",
                                           "PostgreSQL pool checkouts that gave up after "
                                           "pool_timeout.")
                               .WithLabels({})
                               .Value();
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> holding{0};
  std::vector<std::thread> holders;
  for (int i = 0; i < 3; ++i) {
    holders.emplace_back([&] {
      core::Status s = db->WithSession([&](Session& session) {
        ++holding;
        released.wait();
        return session.Execute("SELECT 1").status();
      });
      EXPECT_TRUE(s.ok()) << s.ToString();
    });
  }
  while (holding < 3) std::this_thread::sleep_for(milliseconds(5));
  PoolStats full = db->pool_stats();
  EXPECT_EQ(full.open, 3);
  EXPECT_EQ(full.in_use, 3);
  EXPECT_EQ(full.overflow, 1);

  auto start = Clock::now();
  auto timed_out = db->Execute("SELECT 1");
  auto waited = Clock::now() - start;
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(timed_out.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(timed_out.status().message(), ::testing::HasSubstr("pool timeout"));
  EXPECT_GE(waited, milliseconds(280));
  EXPECT_LT(waited, milliseconds(1500));
  EXPECT_EQ(db->pool_stats().timeouts, 1u);
  EXPECT_EQ(db->pool_stats().open, 3);  // the limit held

  release.set_value();
  for (auto& h : holders) h.join();
  PoolStats after = db->pool_stats();
  EXPECT_EQ(after.in_use, 0);
  EXPECT_EQ(after.idle, 2);  // the overflow connection was closed on return
  EXPECT_EQ(after.open, 2);
  EXPECT_GE(metrics::Registry::Global()
                .AddCounter("megaserve_store_pool_timeouts_total",
                            "PostgreSQL pool checkouts that gave up after pool_timeout.")
                .WithLabels({})
                .Value(),
            global_before + 1);
  std::string exposed = metrics::Registry::Global().Expose();
  EXPECT_THAT(exposed, ::testing::HasSubstr("megaserve_store_pool_connections{state=\"idle\"}"));
}

TEST_F(StorePostgresTest, WaiterGetsTheReturnedConnection) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .pool_timeout = milliseconds(5000)});
  ASSERT_TRUE(db);
  std::promise<void> holding;
  std::thread holder([&] {
    db->WithSession([&](Session& session) {
      holding.set_value();
      std::this_thread::sleep_for(milliseconds(200));
      return core::Status::Ok();
    });
  });
  holding.get_future().wait();
  auto start = Clock::now();
  auto rows = db->Execute("SELECT 1");
  auto waited = Clock::now() - start;
  holder.join();
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  EXPECT_GE(waited, milliseconds(100));
  EXPECT_EQ(db->pool_stats().open, 1);
}

TEST_F(StorePostgresTest, PrePingReplacesAConnectionKilledServerSide) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .pre_ping = true});
  ASSERT_TRUE(db);
  int64_t pid = BackendPid(*db);
  Terminate(pid);
  // Past the alive-bypass window (500 ms) the idle connection is pinged before use.
  std::this_thread::sleep_for(milliseconds(600));
  int64_t replacement = BackendPid(*db);  // succeeds: the dead connection was never used
  EXPECT_NE(replacement, pid);
  EXPECT_GT(replacement, 0);
  EXPECT_EQ(db->pool_stats().reconnects, 1u);
  EXPECT_EQ(db->pool_stats().open, 1);
}

TEST_F(StorePostgresTest, ARecentlyUsedConnectionIsNotPingedAndIsDiscardedWhenDead) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .pre_ping = true});
  ASSERT_TRUE(db);
  int64_t pid = BackendPid(*db);
  Terminate(pid);
  // Within the window no ping is made: the statement meets the dead connection.
  auto rows = db->Execute("SELECT 1");
  ASSERT_FALSE(rows.ok());
  EXPECT_EQ(rows.status().code(), core::StatusCode::kUnavailable) << rows.status().ToString();
  EXPECT_EQ(db->pool_stats().discarded, 1u);
  EXPECT_EQ(db->pool_stats().open, 0);
  int64_t replacement = BackendPid(*db);
  EXPECT_NE(replacement, pid);
  EXPECT_GT(replacement, 0);
}

TEST_F(StorePostgresTest, WithoutPrePingABrokenConnectionIsDiscarded) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .pre_ping = false});
  ASSERT_TRUE(db);
  int64_t pid = BackendPid(*db);
  Terminate(pid);
  auto failed = db->Execute("SELECT 1");
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status().ToString();
  EXPECT_EQ(db->pool_stats().discarded, 1u);
  EXPECT_EQ(db->pool_stats().open, 0);
  int64_t next = BackendPid(*db);
  EXPECT_NE(next, pid);
  EXPECT_GT(next, 0);
}

TEST_F(StorePostgresTest, TransactRetriesAfterAConnectionLostBeforeBegin) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .pre_ping = false});
  ASSERT_TRUE(db);
  Terminate(BackendPid(*db));
  int calls = 0;
  core::Status s = db->Transact([&](Session& session) {
    ++calls;
    return session.Execute("SELECT 1").status();
  });
  EXPECT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(calls, 1);
}

TEST_F(StorePostgresTest, RecycleReplacesOldConnections) {
  auto db = Open({.pool_size = 1, .max_overflow = 0, .recycle = milliseconds(100)});
  ASSERT_TRUE(db);
  int64_t first = BackendPid(*db);
  std::this_thread::sleep_for(milliseconds(150));
  int64_t second = BackendPid(*db);
  EXPECT_NE(first, second);
  EXPECT_EQ(db->pool_stats().recycled, 1u);
  EXPECT_EQ(db->pool_stats().reconnects, 0u);
}

TEST_F(StorePostgresTest, TransactRetriesSerializationFailuresAndDeadlocks) {
  auto db = Open({});
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE t (x BIGINT)").ok());
  for (const char* state : {"40001", "40P01"}) {
    int calls = 0;
    core::Status s = db->Transact([&](Session& session) -> core::Status {
      ++calls;
      auto insert = session.Execute("INSERT INTO t VALUES ($1)", {int64_t{calls}});
      if (!insert.ok()) return insert.status();
      if (calls < 3) {
        return session
            .Execute(std::string("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '") +
                     state + "'; END $$")
            .status();
      }
      return core::Status::Ok();
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(calls, 3) << state;
    auto rows = db->Execute("SELECT count(*), max(x) FROM t");
    ASSERT_TRUE(rows.ok());
    EXPECT_EQ(rows->GetInt(0, 0), 1) << state;  // the failed attempts rolled back
    EXPECT_EQ(rows->GetInt(0, 1), 3) << state;
    ASSERT_TRUE(db->Execute("DELETE FROM t").ok());
  }
  // A persistent conflict gives up after max_attempts with the conflict's status.
  int calls = 0;
  core::Status s = db->Transact([&](Session& session) {
    ++calls;
    return session.Execute("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
        .status();
  });
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(SqlState(s), "40001");
  EXPECT_EQ(calls, 5);
}

TEST_F(StorePostgresTest, IgnoredFailureInsideTransactIsNotCommitted) {
  auto db = Open({});
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE t (x BIGINT PRIMARY KEY)").ok());
  core::Status s = db->Transact([](Session& session) {
    session.Execute("INSERT INTO t VALUES (1)");
    session.Execute("INSERT INTO t VALUES (1)");  // fails; the caller ignores it
    return core::Status::Ok();
  });
  EXPECT_FALSE(s.ok());
  auto rows = db->Execute("SELECT count(*) FROM t");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetInt(0, 0), 0);
}

TEST(StorePostgresOpenTest, UnreachableServerIsUnavailableWithoutLeakingThePassword) {
  auto db = Database::Open(
      {.url = "postgresql://user:hunter2@127.0.0.1:1/none", .connect_timeout = milliseconds(1000)});
  ASSERT_FALSE(db.ok());
  EXPECT_EQ(db.status().code(), StatusCode::kUnavailable) << db.status().ToString();
  EXPECT_THAT(db.status().message(), ::testing::Not(::testing::HasSubstr("hunter2")));
  EXPECT_THAT(db.status().message(), ::testing::HasSubstr("user:********@127.0.0.1:1"));
}

}  // namespace
}  // namespace megaserve::store
