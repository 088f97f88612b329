// Exactly-once completion under crashes. 2,000 "record" jobs (record_handler.h) are run by a
// reliability_worker process that is SIGKILLed 20 times at random moments, each time with jobs
// in flight, and started again. The jobs a dead worker held are rescued once their lease
// expires and run again, so handlers do run more than once; the completion rows they write
// through JobContext::OnComplete commit with the job's fenced completion, so there must be
// exactly one per job, carrying the job's final fencing token. Once on PostgreSQL (a schema of
// its own on the shared test server) and once on a SQLite file that the test and the worker
// processes share. A negative control runs a handler that writes outside that transaction and
// checks that the same inspection does find its duplicates.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "jobs/job_queue.h"
#include "record_handler.h"
#include "reliability_support.h"
#include "store/database.h"
#include "store/migrations.h"
#include "store/test_util.h"

namespace megaserve::reliability {
namespace {

constexpr char kQueue[] = "reliability";

struct KillRun {
  int jobs = 2000;
  int kills = 20;
  // Work per job: long enough that the kill phase (20 x 100..400 ms) ends with jobs left, so
  // every kill finds the worker busy.
  int work_ms = 60;
  bool transactional = true;
};

struct KillResult {
  int kills_in_flight = 0;       // kills that found jobs running under the victim's lease
  int64_t left_after_kills = 0;  // jobs not succeeded yet when the last worker started
  double seconds = 0;
  Outcome outcome;
};

// Enqueues run.jobs jobs into `db`, kills and restarts a worker on `url` run.kills times, lets a
// last worker finish, and inspects the result. Fails fatally when a worker does not start.
void RunWithKills(store::Database& db, const std::string& url, const std::filesystem::path& logs,
                  const KillRun& run, KillResult* result) {
  ASSERT_TRUE(db.Execute(std::string(kCreateCompletionsSql)).ok());
  jobs::JobQueue producer(db, "reliability-producer");
  for (int i = 0; i < run.jobs; ++i) {
    auto job =
        producer.Enqueue({.type = std::string(kRecordType), .queue = kQueue, .max_attempts = 1000});
    ASSERT_TRUE(job.ok()) << job.status().ToString();
  }

  std::vector<std::string> args = {
      "--url",         url,   "--queue",   kQueue, "--lease-ms", "600",
      "--rescue-ms",   "200", "--poll-ms", "50",   "--work-ms",  std::to_string(run.work_ms),
      "--concurrency", "8"};
  if (!run.transactional) args.push_back("--record-outside-transaction");
  std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<int> pause_ms(100, 400);
  const auto start = std::chrono::steady_clock::now();
  for (int k = 0; k < run.kills; ++k) {
    WorkerProcess worker(logs, args);
    ASSERT_TRUE(worker.WaitReady()) << "worker " << k << " did not start:\n"
                                    << Tail(logs / "worker.err");
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
    const int64_t running =
        QueryInt(db, "SELECT count(*) FROM jobs WHERE status = 'running' AND lease_owner = $1",
                 {worker.lease_owner()});
    if (running > 0) ++result->kills_in_flight;
    worker.Kill();
  }

  result->left_after_kills =
      run.jobs - QueryInt(db, "SELECT count(*) FROM jobs WHERE status = 'succeeded'", {});
  WorkerProcess last(logs, args);
  ASSERT_TRUE(last.WaitReady()) << Tail(logs / "worker.err");
  const int64_t done = WaitSucceeded(db, kQueue, run.jobs, start + 90s);
  EXPECT_EQ(done, run.jobs) << "not all jobs succeeded within 90 s; worker log:\n"
                            << Tail(logs / "worker.err");
  EXPECT_EQ(last.Terminate(), 0) << "the last worker did not stop cleanly on SIGTERM";
  result->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result->outcome = Inspect(db, kQueue);
}

void PrintSummary(const char* engine, const KillRun& run, const KillResult& r) {
  std::printf(
      "[reliability] %s: %d jobs, %d SIGKILLs (%d with jobs in flight, %lld jobs left after "
      "them), %lld rescued attempts, %lld completion rows for %lld jobs, %.1f s\n",
      engine, run.jobs, run.kills, r.kills_in_flight, static_cast<long long>(r.left_after_kills),
      static_cast<long long>(r.outcome.attempts - run.jobs),
      static_cast<long long>(r.outcome.completions),
      static_cast<long long>(r.outcome.distinct_jobs), r.seconds);
  std::fflush(stdout);
}

// Checks a transactional run: exactly once, and every kill really interrupted work.
void ExpectKillRunExactlyOnce(const KillRun& run, const KillResult& r) {
  ExpectExactlyOnce(r.outcome, run.jobs);
  EXPECT_EQ(r.kills_in_flight, run.kills) << "some kills found the worker idle";
  EXPECT_GT(r.outcome.attempts, run.jobs) << "no job was ever run twice: the kills hit nothing";
}

TEST(ExactlyOnceTest, PostgresWorkerKilled20Times) {
  MEGASERVE_REQUIRE_POSTGRES(pg_url);
  store::testing::TempDir logs;
  store::testing::PostgresSchema schema(pg_url);
  ASSERT_FALSE(schema.url().empty());
  auto db = store::Database::Open({.url = schema.url(), .pool_size = 4});
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  ASSERT_TRUE(store::Migrate(**db).ok());

  KillRun run;
  KillResult result;
  RunWithKills(**db, schema.url(), logs.path(), run, &result);
  if (HasFatalFailure()) return;
  PrintSummary("postgresql", run, result);
  ExpectKillRunExactlyOnce(run, result);
}

TEST(ExactlyOnceTest, SqliteWorkerKilled20Times) {
  store::testing::TempDir dir;
  const std::string url = dir.SqliteUrl("reliability.db");
  auto db = store::Database::Open({.url = url});
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  ASSERT_TRUE(store::Migrate(**db).ok());

  KillRun run;
  KillResult result;
  RunWithKills(**db, url, dir.path(), run, &result);
  if (HasFatalFailure()) return;
  PrintSummary("sqlite", run, result);
  ExpectKillRunExactlyOnce(run, result);
}

// The negative control: a handler that records its effect in a transaction of its own, before
// its work, leaves a row behind whenever it is killed mid-job, and the inspection above must
// see those duplicates. Without this, a broken inspection would pass every run.
TEST(ExactlyOnceTest, InspectionCatchesDuplicatesOfANonTransactionalHandler) {
  store::testing::TempDir dir;
  const std::string url = dir.SqliteUrl("reliability.db");
  auto db = store::Database::Open({.url = url});
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  ASSERT_TRUE(store::Migrate(**db).ok());

  KillRun run{.jobs = 200, .kills = 3, .work_ms = 200, .transactional = false};
  KillResult result;
  RunWithKills(**db, url, dir.path(), run, &result);
  if (HasFatalFailure()) return;
  PrintSummary("sqlite, completion outside the transaction", run, result);
  EXPECT_EQ(result.outcome.succeeded, run.jobs);
  EXPECT_EQ(result.outcome.distinct_jobs, run.jobs);
  EXPECT_GT(result.outcome.completions, run.jobs) << "killed handlers left no duplicate rows";
  EXPECT_FALSE(result.outcome.duplicates_sample.empty());
}

}  // namespace
}  // namespace megaserve::reliability
