// Migrations on both engines: apply once, idempotence, status, failure rollback, concurrency.
#include "store/migrations.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "store/test_util.h"

namespace megaserve::store {
namespace {

using core::StatusCode;

class StoreMigrationsTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    if (GetParam() == Engine::kSqlite) {
      url_ = dir_.SqliteUrl();
    } else {
      MEGASERVE_REQUIRE_POSTGRES(base);
      schema_ = std::make_unique<testing::PostgresSchema>(base);
      url_ = schema_->url();
    }
    db_ = OpenDb();
    ASSERT_TRUE(db_);
  }

  std::unique_ptr<Database> OpenDb() {
    auto db = Database::Open({.url = url_, .pool_size = 2});
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    return db.ok() ? std::move(*db) : nullptr;
  }

  testing::TempDir dir_;
  std::unique_ptr<testing::PostgresSchema> schema_;
  std::string url_;
  std::unique_ptr<Database> db_;
};

TEST_P(StoreMigrationsTest, AppliesOnceAndIsIdempotent) {
  auto before = MigrationStatus(*db_);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  ASSERT_EQ(before->size(), Migrations().size());
  for (const MigrationInfo& m : *before) EXPECT_FALSE(m.applied) << m.version;

  std::vector<MigrationInfo> applied;
  core::Status s = Migrate(*db_, &applied);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_EQ(applied.size(), Migrations().size());
  EXPECT_EQ(applied[0].version, 1);
  EXPECT_EQ(applied[0].name, "create_jobs");

  std::vector<MigrationInfo> again;
  ASSERT_TRUE(Migrate(*db_, &again).ok());
  EXPECT_TRUE(again.empty());

  auto after = MigrationStatus(*db_);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), Migrations().size());
  EXPECT_TRUE((*after)[0].applied);
  EXPECT_GT((*after)[0].applied_at, int64_t{1'600'000'000} * 1'000'000);
  auto count = db_->Execute("SELECT count(*) FROM schema_migrations");
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(count->GetInt(0, 0), static_cast<int64_t>(Migrations().size()));
}

TEST_P(StoreMigrationsTest, JobTablesEnforceTheirConstraints) {
  ASSERT_TRUE(Migrate(*db_).ok());
  const char* insert =
      "INSERT INTO jobs (id, type, status, priority, input, idempotency_key, created_at, "
      "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)";
  int64_t now = 1'700'000'000'000'000;
  auto ok = db_->Execute(
      insert, {std::string("0190a0b0-0000-7000-8000-000000000001"), std::string("images"),
               std::string("queued"), int64_t{5}, std::string("{}"), std::string("key-1"), now});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  auto bad_status =
      db_->Execute(insert, {std::string("id-2"), std::string("images"), std::string("bogus"),
                            int64_t{0}, std::string("{}"), std::monostate{}, now});
  EXPECT_EQ(bad_status.status().code(), StatusCode::kFailedPrecondition)
      << bad_status.status().ToString();
  auto same_key =
      db_->Execute(insert, {std::string("id-3"), std::string("images"), std::string("queued"),
                            int64_t{0}, std::string("{}"), std::string("key-1"), now});
  EXPECT_EQ(same_key.status().code(), StatusCode::kAlreadyExists) << same_key.status().ToString();
  auto other_type =
      db_->Execute(insert, {std::string("id-4"), std::string("videos"), std::string("queued"),
                            int64_t{0}, std::string("{}"), std::string("key-1"), now});
  EXPECT_TRUE(other_type.ok()) << other_type.status().ToString();

  auto event = db_->Execute(
      "INSERT INTO job_events (job_id, seq, kind, data, created_at) VALUES ($1, 1, 'created', "
      "'{}', $2)",
      {std::string("id-4"), now});
  EXPECT_TRUE(event.ok()) << event.status().ToString();
  auto duplicate_seq = db_->Execute(
      "INSERT INTO job_events (job_id, seq, kind, data, created_at) VALUES ($1, 1, 'again', "
      "'{}', $2)",
      {std::string("id-4"), now});
  EXPECT_EQ(duplicate_seq.status().code(), StatusCode::kAlreadyExists);
  auto orphan = db_->Execute(
      "INSERT INTO webhook_deliveries (job_id, event, url, payload, next_attempt_at, created_at) "
      "VALUES ('nope', 'completed', 'https://example.com/h', '{}', 0, 0)");
  EXPECT_EQ(orphan.status().code(), StatusCode::kFailedPrecondition);
  auto delivery = db_->Execute(
      "INSERT INTO webhook_deliveries (job_id, event, url, payload, next_attempt_at, "
      "created_at) VALUES ($1, 'completed', 'https://example.com/h', '{}', $2, $2) "
      "RETURNING id",
      {std::string("id-4"), now});
  ASSERT_TRUE(delivery.ok()) << delivery.status().ToString();
  EXPECT_GT(delivery->GetInt(0, 0), 0);
  // Deleting a job cascades to its deliveries; its events (no foreign key since migration 2, see
  // migrations.cc) are deleted by whoever deletes the job.
  auto deleted = db_->Execute(
      "DELETE FROM job_events WHERE job_id = 'id-4'; DELETE FROM jobs WHERE id = 'id-4'");
  ASSERT_TRUE(deleted.ok()) << deleted.status().ToString();
  auto left = db_->Execute(
      "SELECT (SELECT count(*) FROM job_events) + (SELECT count(*) FROM webhook_deliveries)");
  ASSERT_TRUE(left.ok());
  EXPECT_EQ(left->GetInt(0, 0), 0);
}

TEST_P(StoreMigrationsTest, AFailedMigrationRollsBackAndCanBeRetried) {
  std::vector<Migration> broken = {
      {1, "one", "CREATE TABLE one (x BIGINT)", "CREATE TABLE one (x BIGINT)"},
      {2, "two", "CREATE TABLE two (x BIGINT); INSERT INTO nowhere VALUES (1)",
       "CREATE TABLE two (x BIGINT); INSERT INTO nowhere VALUES (1)"},
  };
  core::Status s = Migrate(*db_, broken, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), ::testing::HasSubstr("migration 2 (two)"));
  auto status = MigrationStatus(*db_, broken);
  ASSERT_TRUE(status.ok());
  ASSERT_EQ(status->size(), 2u);
  EXPECT_TRUE((*status)[0].applied);
  EXPECT_FALSE((*status)[1].applied);
  EXPECT_FALSE(db_->Execute("SELECT count(*) FROM two").ok());  // rolled back

  std::vector<Migration> fixed = {
      broken[0], {2, "two", "CREATE TABLE two (x BIGINT)", "CREATE TABLE two (x BIGINT)"}};
  std::vector<MigrationInfo> applied;
  ASSERT_TRUE(Migrate(*db_, fixed, &applied).ok());
  ASSERT_EQ(applied.size(), 1u);
  EXPECT_EQ(applied[0].version, 2);
  EXPECT_TRUE(db_->Execute("SELECT count(*) FROM two").ok());

  // A version recorded by a newer binary is listed after the known ones.
  auto known = MigrationStatus(*db_, {broken[0]});
  ASSERT_TRUE(known.ok());
  ASSERT_EQ(known->size(), 2u);
  EXPECT_EQ((*known)[1].version, 2);
  EXPECT_TRUE((*known)[1].applied);
}

TEST_P(StoreMigrationsTest, ConcurrentMigratorsApplyEachMigrationOnce) {
  constexpr int kMigrators = 4;
  std::vector<std::unique_ptr<Database>> dbs;
  for (int i = 0; i < kMigrators; ++i) {
    dbs.push_back(OpenDb());
    ASSERT_TRUE(dbs.back());
  }
  std::atomic<int> applied_total{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kMigrators; ++i) {
    threads.emplace_back([&, i] {
      std::vector<MigrationInfo> applied;
      core::Status s = Migrate(*dbs[i], &applied);
      EXPECT_TRUE(s.ok()) << s.ToString();
      applied_total += static_cast<int>(applied.size());
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(applied_total, static_cast<int>(Migrations().size()));
  auto count = db_->Execute("SELECT count(*) FROM schema_migrations");
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(count->GetInt(0, 0), static_cast<int64_t>(Migrations().size()));
}

// Migration 2 fills the new columns of jobs created under migration 1 from their events.
TEST_P(StoreMigrationsTest, EventCounterAndCancelColumnAreBackfilled) {
  ASSERT_TRUE(Migrate(*db_, {Migrations()[0]}, nullptr).ok());
  const int64_t now = 1'700'000'000'000'000;
  for (const char* id : {"running-canceled", "queued-plain"}) {
    auto job = db_->Execute(
        "INSERT INTO jobs (id, type, status, created_at, updated_at) VALUES ($1, 'noop', $2, $3, "
        "$3)",
        {std::string(id),
         std::string(std::string_view(id).starts_with("running") ? "running" : "queued"), now});
    ASSERT_TRUE(job.ok()) << job.status().ToString();
  }
  const char* kinds[] = {"queued", "started", "cancel_requested"};
  for (int seq = 1; seq <= 3; ++seq) {
    auto event = db_->Execute(
        "INSERT INTO job_events (job_id, seq, kind, created_at) VALUES ('running-canceled', $1, "
        "$2, $3)",
        {int64_t{seq}, std::string(kinds[seq - 1]), now + seq});
    ASSERT_TRUE(event.ok()) << event.status().ToString();
  }
  auto first = db_->Execute(
      "INSERT INTO job_events (job_id, seq, kind, created_at) VALUES ('queued-plain', 1, "
      "'queued', $1)",
      {now});
  ASSERT_TRUE(first.ok()) << first.status().ToString();

  ASSERT_TRUE(Migrate(*db_).ok());
  auto rows = db_->Execute("SELECT id, event_seq, cancel_requested_at FROM jobs ORDER BY id DESC");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ(rows->GetText(0, 0), "running-canceled");
  EXPECT_EQ(rows->GetInt(0, 1), 3);
  EXPECT_EQ(rows->GetInt(0, 2), now + 3);
  EXPECT_EQ(rows->GetInt(1, 1), 1);
  EXPECT_TRUE(rows->IsNull(1, 2));
  auto endpoints = db_->Execute("SELECT count(*) FROM webhook_endpoints");
  ASSERT_TRUE(endpoints.ok()) << endpoints.status().ToString();
  EXPECT_EQ(endpoints->GetInt(0, 0), 0);
}

// Migration 3 adds api_keys: ids are unique, a name and hash are required, quotas are not
// negative, and the optional columns start NULL.
TEST_P(StoreMigrationsTest, ApiKeysTableEnforcesItsConstraints) {
  ASSERT_TRUE(Migrate(*db_).ok());
  auto last = MigrationStatus(*db_);
  ASSERT_TRUE(last.ok());
  ASSERT_GE(last->size(), 3u);
  EXPECT_EQ((*last)[2].version, 3);
  EXPECT_EQ((*last)[2].name, "api_keys");
  const char* insert =
      "INSERT INTO api_keys (id, name, secret_hash, scopes, quota, created_at) VALUES ($1, $2, $3, "
      "'jobs', $4, 1)";
  auto ok = db_->Execute(
      insert, {std::string("abcdefghijkl"), std::string("k"), std::string(64, 'a'), int64_t{0}});
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  auto dup = db_->Execute(
      insert, {std::string("abcdefghijkl"), std::string("k2"), std::string(64, 'b'), int64_t{0}});
  EXPECT_EQ(dup.status().code(), StatusCode::kAlreadyExists);
  auto negative = db_->Execute(
      insert, {std::string("bbbbbbbbbbbb"), std::string("k3"), std::string(64, 'c'), int64_t{-1}});
  EXPECT_EQ(negative.status().code(), StatusCode::kFailedPrecondition);
  auto no_name = db_->Execute(
      insert, {std::string("cccccccccccc"), store::Value{}, std::string(64, 'c'), int64_t{0}});
  EXPECT_EQ(no_name.status().code(), StatusCode::kFailedPrecondition);
  auto row = db_->Execute("SELECT quota, last_used_at, revoked_at FROM api_keys");
  ASSERT_TRUE(row.ok());
  ASSERT_EQ(row->size(), 1u);
  EXPECT_EQ(row->GetInt(0, 0), 0);
  EXPECT_TRUE(row->IsNull(0, 1));
  EXPECT_TRUE(row->IsNull(0, 2));
}

INSTANTIATE_TEST_SUITE_P(Engines, StoreMigrationsTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const ::testing::TestParamInfo<Engine>& info) {
                           return std::string(EngineName(info.param));
                         });

TEST(StoreMigrationListTest, VersionsIncreaseAndBothEnginesHaveSql) {
  const auto& all = Migrations();
  ASSERT_FALSE(all.empty());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].version, static_cast<int>(i) + 1);
    EXPECT_FALSE(all[i].name.empty());
    EXPECT_FALSE(all[i].sqlite_sql.empty());
    EXPECT_FALSE(all[i].postgres_sql.empty());
  }
}

}  // namespace
}  // namespace megaserve::store
