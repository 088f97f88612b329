// Behaviour both engines share, run against a SQLite file and a PostgreSQL schema.
#include "store/database.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <limits>

#include "store/test_util.h"

namespace megaserve::store {
namespace {

using core::StatusCode;
using ::testing::HasSubstr;

class StoreDatabaseTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    StoreOptions options;
    if (GetParam() == Engine::kSqlite) {
      options.url = dir_.SqliteUrl();
    } else {
      MEGASERVE_REQUIRE_POSTGRES(base);
      schema_ = std::make_unique<testing::PostgresSchema>(base);
      options.url = schema_->url();
    }
    options.pool_size = 4;
    auto db = Database::Open(options);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    ASSERT_EQ(db_->engine(), GetParam());
    auto created = db_->Execute(
        "CREATE TABLE items (id BIGINT PRIMARY KEY, i BIGINT, d DOUBLE PRECISION, s TEXT, "
        "n TEXT)");
    ASSERT_TRUE(created.ok()) << created.status().ToString();
  }

  int64_t Count() {
    auto rows = db_->Execute("SELECT count(*) FROM items");
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? rows->GetInt(0, 0) : -1;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::PostgresSchema> schema_;
  std::unique_ptr<Database> db_;
};

TEST_P(StoreDatabaseTest, BindsEveryValueTypeAndRoundTripsNull) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  const int64_t small = std::numeric_limits<int64_t>::min();
  const std::string text = "h\xC3\xA9llo 'quoted' \"double\" $1 ; -- not a comment";
  const char* insert = "INSERT INTO items (id, i, d, s, n) VALUES ($1, $2, $3, $4, $5)";
  auto first = db_->Execute(insert, {int64_t{1}, big, 2.5, text, std::monostate{}});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->affected_rows(), 1);
  ASSERT_TRUE(
      db_->Execute(insert, {int64_t{2}, small, -1e-300, std::string(), std::monostate{}}).ok());
  ASSERT_TRUE(db_->Execute(insert, {int64_t{3}, std::monostate{}, std::monostate{},
                                    std::monostate{}, std::string("x")})
                  .ok());

  auto rows =
      db_->Execute("SELECT id, i, d, s, n FROM items WHERE id >= $1 ORDER BY id", {int64_t{1}});
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 3u);
  EXPECT_EQ(rows->columns(), (std::vector<std::string>{"id", "i", "d", "s", "n"}));
  EXPECT_EQ(rows->affected_rows(), 0);
  EXPECT_EQ(rows->ColumnIndex("s"), 3);
  EXPECT_EQ(rows->ColumnIndex("missing"), -1);

  EXPECT_EQ(rows->Get(0, 1), Value(big));
  EXPECT_EQ(rows->GetInt(0, 1), big);
  EXPECT_EQ(rows->Get(0, 2), Value(2.5));
  EXPECT_EQ(rows->GetDouble(0, 2), 2.5);
  EXPECT_EQ(rows->Get(0, 3), Value(text));
  EXPECT_TRUE(rows->IsNull(0, 4));
  EXPECT_EQ(rows->GetText(0, 4), "");

  EXPECT_EQ(rows->GetInt(1, 1), small);
  EXPECT_EQ(rows->GetDouble(1, 2), -1e-300);
  EXPECT_FALSE(rows->IsNull(1, 3));
  EXPECT_EQ(rows->GetText(1, 3), "");

  for (int col = 1; col <= 3; ++col) EXPECT_TRUE(rows->IsNull(2, col)) << col;
  EXPECT_EQ(rows->GetText(2, 4), "x");
  EXPECT_EQ(rows->GetText(2, 0), "3");

  // NULL and text parameters in a WHERE clause; a parameter used twice.
  auto nulls =
      db_->Execute("SELECT id FROM items WHERE n IS NULL AND (s = $1 OR $1 = 'none')", {text});
  ASSERT_TRUE(nulls.ok()) << nulls.status().ToString();
  ASSERT_EQ(nulls->size(), 1u);
  EXPECT_EQ(nulls->GetInt(0, 0), 1);
}

TEST_P(StoreDatabaseTest, ReportsAffectedRows) {
  for (int64_t id = 1; id <= 3; ++id) {
    ASSERT_TRUE(db_->Execute("INSERT INTO items (id, i) VALUES ($1, $2)", {id, id % 2}).ok());
  }
  auto updated =
      db_->Execute("UPDATE items SET s = $1 WHERE i = $2", {std::string("odd"), int64_t{1}});
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  EXPECT_EQ(updated->affected_rows(), 2);
  auto deleted = db_->Execute("DELETE FROM items WHERE id = $1", {int64_t{42}});
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->affected_rows(), 0);
}

TEST_P(StoreDatabaseTest, TransactCommits) {
  core::Status status = db_->Transact([](Session& s) -> core::Status {
    for (int64_t id = 1; id <= 2; ++id) {
      auto r = s.Execute("INSERT INTO items (id) VALUES ($1)", {id});
      if (!r.ok()) return r.status();
    }
    auto inside = s.Execute("SELECT count(*) FROM items");
    if (!inside.ok() || inside->GetInt(0, 0) != 2) return core::Internal("not visible inside");
    return core::Status::Ok();
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(Count(), 2);
}

TEST_P(StoreDatabaseTest, TransactRollsBackOnError) {
  int calls = 0;
  core::Status status = db_->Transact([&](Session& s) -> core::Status {
    ++calls;
    auto r = s.Execute("INSERT INTO items (id) VALUES ($1)", {int64_t{1}});
    if (!r.ok()) return r.status();
    return core::Internal("boom");
  });
  EXPECT_EQ(status.code(), StatusCode::kInternal);
  EXPECT_EQ(status.message(), "boom");
  EXPECT_EQ(calls, 1);  // not a transient conflict: no retry
  EXPECT_EQ(Count(), 0);
  // The connection is usable afterwards.
  EXPECT_TRUE(db_->Transact([](Session& s) {
                   return s.Execute("INSERT INTO items (id) VALUES (7)").status();
                 })
                  .ok());
  EXPECT_EQ(Count(), 1);
}

TEST_P(StoreDatabaseTest, UniqueViolationIsAlreadyExists) {
  ASSERT_TRUE(db_->Execute("INSERT INTO items (id) VALUES ($1)", {int64_t{1}}).ok());
  auto again = db_->Execute("INSERT INTO items (id) VALUES ($1)", {int64_t{1}});
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status().ToString();
  EXPECT_EQ(SqlState(again.status()), "23505");

  // Inside a transaction: the whole transaction rolls back.
  core::Status status = db_->Transact([](Session& s) -> core::Status {
    auto ok = s.Execute("INSERT INTO items (id) VALUES (2)");
    if (!ok.ok()) return ok.status();
    return s.Execute("INSERT INTO items (id) VALUES (1)").status();
  });
  EXPECT_EQ(status.code(), StatusCode::kAlreadyExists) << status.ToString();
  EXPECT_EQ(Count(), 1);
}

TEST_P(StoreDatabaseTest, ParameterCountMismatchIsInvalidArgument) {
  auto too_few = db_->Execute("SELECT id FROM items WHERE id = $1 AND i = $2", {int64_t{1}});
  EXPECT_EQ(too_few.status().code(), StatusCode::kInvalidArgument) << too_few.status().ToString();
  auto too_many = db_->Execute("SELECT id FROM items WHERE id = $1", {int64_t{1}, int64_t{2}});
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument) << too_many.status().ToString();
  auto syntax = db_->Execute("SELEC 1");
  EXPECT_EQ(syntax.status().code(), StatusCode::kInvalidArgument) << syntax.status().ToString();
  // Still usable.
  EXPECT_EQ(Count(), 0);
}

TEST_P(StoreDatabaseTest, RunsScriptsOfSeveralStatements) {
  auto script = db_->Execute(
      "CREATE TABLE other (x BIGINT);\nINSERT INTO other VALUES (1);\nINSERT INTO other VALUES "
      "(2);\n");
  ASSERT_TRUE(script.ok()) << script.status().ToString();
  auto rows = db_->Execute("SELECT sum(x) FROM other");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetInt(0, 0), 3);
}

TEST_P(StoreDatabaseTest, WithSessionKeepsOneConnection) {
  core::Status status = db_->WithSession([](Session& s) -> core::Status {
    auto a = s.Execute("BEGIN");
    if (!a.ok()) return a.status();
    auto b = s.Execute("INSERT INTO items (id) VALUES (5)");
    if (!b.ok()) return b.status();
    return s.Execute("COMMIT").status();
  });
  ASSERT_TRUE(status.ok()) << status.ToString();
  EXPECT_EQ(Count(), 1);
  // A transaction left open is rolled back and reported.
  status = db_->WithSession([](Session& s) -> core::Status {
    s.Execute("BEGIN");
    return s.Execute("INSERT INTO items (id) VALUES (6)").status();
  });
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(Count(), 1);
}

INSTANTIATE_TEST_SUITE_P(Engines, StoreDatabaseTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const ::testing::TestParamInfo<Engine>& info) {
                           return std::string(EngineName(info.param));
                         });

TEST(StoreOpenTest, RejectsUnknownUrls) {
  for (const char* url : {"mysql://u:pw@h/db", "sqlite://", "", "sqlite:///"}) {
    auto db = Database::Open({.url = url});
    ASSERT_FALSE(db.ok()) << url;
    EXPECT_EQ(db.status().code(), StatusCode::kInvalidArgument) << url;
    EXPECT_THAT(db.status().message(), ::testing::Not(HasSubstr("pw@"))) << url;
  }
}

TEST(StoreOpenTest, DefaultUrlIsSqliteInDataDir) {
  core::Config config;
  config.data_dir = "/var/lib/megaserve/";
  StoreOptions options = StoreOptionsFromConfig(config);
  EXPECT_EQ(options.url, "sqlite:///var/lib/megaserve/megaserve.db");
  config.store.url = "postgresql://h/db";
  config.store.pool_size = 3;
  config.store.pool_timeout = std::chrono::milliseconds(250);
  options = StoreOptionsFromConfig(config);
  EXPECT_EQ(options.url, "postgresql://h/db");
  EXPECT_EQ(options.pool_size, 3);
  EXPECT_EQ(options.pool_timeout, std::chrono::milliseconds(250));
}

TEST(StoreOpenTest, SqlStateIsReadFromTheMessage) {
  EXPECT_EQ(SqlState(core::Status(StatusCode::kAlreadyExists, "x [SQLSTATE 23505]")), "23505");
  EXPECT_EQ(SqlState(core::Internal("no state")), "");
  EXPECT_EQ(SqlState(core::Status::Ok()), "");
}

}  // namespace
}  // namespace megaserve::store
