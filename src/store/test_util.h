// Test helpers for the store: temporary SQLite files and throwaway PostgreSQL schemas.
//
// PostgreSQL tests read TEST_POSTGRES_URL (scripts/test.sh starts a server and sets it). When it
// is unset they fail under CI=true and are skipped otherwise.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>

#include "store/database.h"
#include "store/migrations.h"

namespace megaserve::store::testing {

// A fresh directory under the system temp directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("megaserve_store_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++) +
             "_" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // A sqlite:/// URL for a file named `name` in this directory.
  std::string SqliteUrl(const std::string& name = "test.db") const {
    return "sqlite://" + (path_ / name).string();
  }

 private:
  std::filesystem::path path_;
};

// TEST_POSTGRES_URL, or "" when unset.
inline std::string PostgresUrl() {
  const char* url = std::getenv("TEST_POSTGRES_URL");
  return url && *url ? url : "";
}

// True under CI=true, where a missing PostgreSQL server is a failure rather than a skip.
inline bool PostgresRequired() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Declares `url_var` holding TEST_POSTGRES_URL; when it is unset, fails the test (fatally, so a
// fixture's test body does not run) under CI=true and skips it otherwise.
#define MEGASERVE_REQUIRE_POSTGRES(url_var)                                                   \
  std::string url_var = ::megaserve::store::testing::PostgresUrl();                           \
  if (url_var.empty()) {                                                                      \
    if (::megaserve::store::testing::PostgresRequired()) {                                    \
      GTEST_FAIL() << "TEST_POSTGRES_URL is not set under CI=true; run the tests through "    \
                      "scripts/test.sh";                                                      \
    }                                                                                         \
    GTEST_SKIP() << "TEST_POSTGRES_URL is not set; run through scripts/test.sh to test with " \
                    "PostgreSQL";                                                             \
  }

// A schema of its own for one test, dropped with everything in it on destruction. url() points
// connections at it through the libpq "options" parameter (search_path).
class PostgresSchema {
 public:
  explicit PostgresSchema(const std::string& base_url) {
    static std::atomic<int> counter{0};
    name_ = "t_" + std::to_string(getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(std::random_device{}() % 1000000);
    StoreOptions options;
    options.url = base_url;
    options.pool_size = 1;
    auto admin = Database::Open(options);
    EXPECT_TRUE(admin.ok()) << admin.status().ToString();
    if (!admin.ok()) return;
    admin_ = std::move(*admin);
    auto created = admin_->Execute("CREATE SCHEMA " + name_);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    url_ = base_url + (base_url.find('?') == std::string::npos ? "?" : "&") +
           "options=-csearch_path%3D" + name_;
  }
  ~PostgresSchema() {
    if (admin_) admin_->Execute("DROP SCHEMA " + name_ + " CASCADE");
  }
  PostgresSchema(const PostgresSchema&) = delete;
  PostgresSchema& operator=(const PostgresSchema&) = delete;

  const std::string& url() const { return url_; }
  const std::string& name() const { return name_; }
  // A connection outside the test's pool (e.g. to terminate its backends).
  Database& admin() { return *admin_; }

 private:
  std::string name_;
  std::string url_;
  std::unique_ptr<Database> admin_;
};

// One test's database: a SQLite file in a temporary folder, or a PostgreSQL schema of its own,
// opened with a pool of 8 and migrated. Failures are reported as test failures; check
// HasFatalFailure() after Open().
class TestDatabase {
 public:
  // pg_url is TEST_POSTGRES_URL for kPostgres (checked by the caller with
  // MEGASERVE_REQUIRE_POSTGRES), unused for kSqlite.
  void Open(Engine engine, const std::string& pg_url = "") {
    StoreOptions options;
    if (engine == Engine::kSqlite) {
      options.url = dir_.SqliteUrl();
    } else {
      schema_ = std::make_unique<PostgresSchema>(pg_url);
      options.url = schema_->url();
    }
    options.pool_size = 8;
    auto db = Database::Open(options);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    auto migrated = Migrate(*db_);
    ASSERT_TRUE(migrated.ok()) << migrated.ToString();
  }

  Database& db() { return *db_; }

 private:
  TempDir dir_;
  std::unique_ptr<PostgresSchema> schema_;
  std::unique_ptr<Database> db_;
};

// Opens `test_db` (a TestDatabase) for `engine`; for kPostgres without TEST_POSTGRES_URL the test
// fails or is skipped as MEGASERVE_REQUIRE_POSTGRES says. Check HasFatalFailure() after it.
#define MEGASERVE_OPEN_TEST_DATABASE(test_db, engine)                          \
  do {                                                                         \
    if ((engine) == ::megaserve::store::Engine::kPostgres) {                   \
      MEGASERVE_REQUIRE_POSTGRES(megaserve_pg_url);                            \
      (test_db).Open(::megaserve::store::Engine::kPostgres, megaserve_pg_url); \
    } else {                                                                   \
      (test_db).Open(engine);                                                  \
    }                                                                          \
  } while (false)

}  // namespace megaserve::store::testing
