// SQLite engine specifics: pragmas, concurrency of writers and readers, foreign keys.
#include "store/sqlite_database.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include "store/test_util.h"

namespace megaserve::store {
namespace {

using core::StatusCode;

std::unique_ptr<Database> OpenOrDie(const std::string& url) {
  auto db = Database::Open({.url = url});
  EXPECT_TRUE(db.ok()) << db.status().ToString();
  return db.ok() ? std::move(*db) : nullptr;
}

// Inserts `count` rows from each of `threads` threads, each in a read-then-write transaction.
void HammerWrites(Database& db, int threads, int count, int64_t base, std::atomic<int>* errors) {
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < count; ++i) {
        core::Status s = db.Transact([&](Session& session) -> core::Status {
          auto n = session.Execute("SELECT count(*) FROM items");
          if (!n.ok()) return n.status();
          return session
              .Execute("INSERT INTO items (id, seen) VALUES ($1, $2)",
                       {base + t * count + i, n->GetInt(0, 0)})
              .status();
        });
        if (!s.ok()) {
          ADD_FAILURE() << s.ToString();
          ++*errors;
        }
      }
    });
  }
  for (auto& w : workers) w.join();
}

TEST(StoreSqliteTest, UsesWalNormalSyncAndForeignKeys) {
  testing::TempDir dir;
  auto db = OpenOrDie(dir.SqliteUrl());
  ASSERT_TRUE(db);
  core::Status s = db->WithSession([](Session& session) -> core::Status {
    auto mode = session.Execute("PRAGMA journal_mode");
    auto sync = session.Execute("PRAGMA synchronous");
    auto fk = session.Execute("PRAGMA foreign_keys");
    auto busy = session.Execute("PRAGMA busy_timeout");
    if (!mode.ok() || !sync.ok() || !fk.ok() || !busy.ok()) return core::Internal("pragma");
    EXPECT_EQ(mode->GetText(0, 0), "wal");
    EXPECT_EQ(sync->GetInt(0, 0), 1);  // NORMAL
    EXPECT_EQ(fk->GetInt(0, 0), 1);
    EXPECT_EQ(busy->GetInt(0, 0), 5000);
    return core::Status::Ok();
  });
  ASSERT_TRUE(s.ok()) << s.ToString();
  PoolStats stats = db->pool_stats();
  EXPECT_EQ(stats.open, 5);  // the writer and four readers
  EXPECT_EQ(stats.in_use, 0);

  ASSERT_TRUE(db->Execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)").ok());
  ASSERT_TRUE(db->Execute("CREATE TABLE child (p INTEGER NOT NULL REFERENCES parent (id))").ok());
  auto orphan = db->Execute("INSERT INTO child (p) VALUES ($1)", {int64_t{9}});
  EXPECT_EQ(orphan.status().code(), StatusCode::kFailedPrecondition) << orphan.status().ToString();
  EXPECT_EQ(SqlState(orphan.status()), "23503");
  auto null = db->Execute("INSERT INTO child (p) VALUES ($1)", {std::monostate{}});
  EXPECT_EQ(SqlState(null.status()), "23502");
}

TEST(StoreSqliteTest, ConcurrentWritersAndReadersSeeNoBusy) {
  testing::TempDir dir;
  auto db = OpenOrDie(dir.SqliteUrl());
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE items (id BIGINT PRIMARY KEY, seen BIGINT)").ok());
  std::atomic<bool> done{false};
  std::atomic<int> errors{0};
  std::atomic<int> reads{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!done) {
        auto rows = db->Execute("SELECT count(*) FROM items WHERE seen >= $1", {int64_t{0}});
        if (!rows.ok()) {
          ADD_FAILURE() << rows.status().ToString();
          ++errors;
        }
        ++reads;
      }
    });
  }
  HammerWrites(*db, 8, 50, 0, &errors);
  done = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(errors, 0);
  EXPECT_GT(reads, 0);
  auto rows = db->Execute("SELECT count(*), count(DISTINCT seen) FROM items");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetInt(0, 0), 400);
  EXPECT_EQ(rows->GetInt(0, 1), 400);  // every transaction saw the ones before it
}

// Transactions from many threads share commits (group commit), yet each stays atomic on its
// own: the failing ones leave nothing behind, the others all land.
TEST(StoreSqliteTest, GroupedTransactionsFailAndCommitIndependently) {
  testing::TempDir dir;
  auto db = OpenOrDie(dir.SqliteUrl());
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE items (id BIGINT PRIMARY KEY, note TEXT)").ok());
  constexpr int kThreads = 8;
  constexpr int kEach = 100;
  std::atomic<int> unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int64_t id = int64_t{t} * kEach + i;
        const bool fail = id % 3 == 0;
        core::Status s = db->Transact([&](Session& session) -> core::Status {
          auto a = session.Execute("INSERT INTO items (id, note) VALUES ($1, 'a')", {id});
          if (!a.ok()) return a.status();
          // Two writes per transaction; the failing ones write first, then give up.
          auto b =
              session.Execute("INSERT INTO items (id, note) VALUES ($1, 'b')", {id + 1'000'000});
          if (!b.ok()) return b.status();
          if (fail) return core::Internal("give up");
          return core::Status::Ok();
        });
        if (s.ok() == fail) ++unexpected;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(unexpected, 0);
  auto rows = db->Execute(
      "SELECT count(*), sum(CASE WHEN id % 3 = 0 THEN 1 ELSE 0 END) FROM items WHERE id < "
      "1000000");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  const int64_t total = kThreads * kEach;
  EXPECT_EQ(rows->GetInt(0, 0), total - (total + 2) / 3);
  EXPECT_EQ(rows->GetInt(0, 1), 0);
  auto pairs = db->Execute("SELECT count(*) FROM items WHERE id >= 1000000");
  ASSERT_TRUE(pairs.ok());
  EXPECT_EQ(pairs->GetInt(0, 0), rows->GetInt(0, 0));  // both writes or neither
}

TEST(StoreSqliteTest, TwoHandlesOnOneFileShareTheWriteLock) {
  // Two Database objects stand in for two processes: busy_timeout and Transact's retry keep
  // SQLITE_BUSY from reaching the caller.
  testing::TempDir dir;
  auto a = OpenOrDie(dir.SqliteUrl());
  auto b = OpenOrDie(dir.SqliteUrl());
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->Execute("CREATE TABLE items (id BIGINT PRIMARY KEY, seen BIGINT)").ok());
  std::atomic<int> errors{0};
  std::thread other([&] { HammerWrites(*b, 3, 30, 100000, &errors); });
  HammerWrites(*a, 3, 30, 0, &errors);
  other.join();
  EXPECT_EQ(errors, 0);
  auto rows = b->Execute("SELECT count(*) FROM items");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetInt(0, 0), 180);
}

TEST(StoreSqliteTest, ReadersDoNotWaitForAnOpenTransaction) {
  testing::TempDir dir;
  auto db = OpenOrDie(dir.SqliteUrl());
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE items (id BIGINT PRIMARY KEY)").ok());
  std::promise<void> inserted;
  std::promise<void> read_done;
  std::thread writer([&] {
    core::Status s = db->Transact([&](Session& session) -> core::Status {
      auto r = session.Execute("INSERT INTO items (id) VALUES (1)");
      inserted.set_value();
      read_done.get_future().wait();
      return r.status();
    });
    EXPECT_TRUE(s.ok()) << s.ToString();
  });
  inserted.get_future().wait();
  auto during = db->Execute("SELECT count(*) FROM items");  // runs on a reader
  read_done.set_value();
  writer.join();
  ASSERT_TRUE(during.ok()) << during.status().ToString();
  EXPECT_EQ(during->GetInt(0, 0), 0);  // the open transaction is not visible
  auto after = db->Execute("SELECT count(*) FROM items");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->GetInt(0, 0), 1);
}

TEST(StoreSqliteTest, InMemoryDatabase) {
  auto db = OpenOrDie("sqlite::memory:");
  ASSERT_TRUE(db);
  ASSERT_TRUE(db->Execute("CREATE TABLE t (x TEXT)").ok());
  ASSERT_TRUE(db->Execute("INSERT INTO t VALUES ($1)", {std::string("a")}).ok());
  auto rows = db->Execute("SELECT x FROM t");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetText(0, 0), "a");
  EXPECT_EQ(db->pool_stats().open, 1);
}

TEST(StoreSqliteTest, CreatesTheParentDirectory) {
  testing::TempDir dir;
  auto db = OpenOrDie("sqlite://" + (dir.path() / "a" / "b" / "m.db").string());
  ASSERT_TRUE(db);
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "a" / "b" / "m.db"));
}

}  // namespace
}  // namespace megaserve::store
