// A PostgreSQL restart in the middle of a run. The test starts a server of its own (the shared
// test server serves other tests meanwhile), runs in-process workers and a producer that
// enqueues 1,000 "record" jobs, and restarts the server with `pg_ctl restart -m fast` while both
// are busy. Every session dies; the connection pool must notice by itself (pre_ping reconnects,
// broken connections discarded) and carry on, with no reset from the caller. The producer
// retries the enqueues that fail with kUnavailable, as any caller must: each job has an
// idempotency key, so a retry of an enqueue whose commit did reach the server returns the same
// job instead of adding a second one. In the end every job enqueued has succeeded exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "jobs/job_queue.h"
#include "jobs/workers.h"
#include "record_handler.h"
#include "reliability_support.h"
#include "store/database.h"
#include "store/migrations.h"
#include "store/test_util.h"

namespace megaserve::reliability {
namespace {

constexpr char kQueue[] = "reliability";
constexpr int kJobs = 1000;
constexpr int kRestartAfter = kJobs / 3;  // jobs enqueued before the restart

// What the producer did.
struct Produced {
  std::atomic<int> enqueued{0};
  std::atomic<int> retries{0};    // enqueues repeated after kUnavailable
  std::atomic<int> abandoned{0};  // enqueues that failed otherwise
  std::string first_other_error;  // written by the producer before it finishes
};

// Enqueues kJobs jobs, pacing them so the run spans the restart; retries kUnavailable until
// `deadline`.
void Produce(jobs::JobQueue& queue, jobs::Workers& workers, Produced* out,
             std::chrono::steady_clock::time_point deadline) {
  for (int i = 0; i < kJobs; ++i) {
    const jobs::NewJob job = {.type = std::string(kRecordType),
                              .queue = kQueue,
                              .max_attempts = 1000,
                              .idempotency_key = "restart-" + std::to_string(i)};
    for (;;) {
      auto enqueued = queue.Enqueue(job);
      if (enqueued.ok()) {
        ++out->enqueued;
        break;
      }
      if (enqueued.status().code() == core::StatusCode::kUnavailable &&
          std::chrono::steady_clock::now() < deadline) {
        ++out->retries;
        std::this_thread::sleep_for(20ms);
        continue;
      }
      if (out->abandoned++ == 0) out->first_other_error = enqueued.status().ToString();
      break;
    }
    workers.Wake();
    std::this_thread::sleep_for(3ms);
  }
}

TEST(PostgresRestartTest, PoolRecoversAndNoJobIsLost) {
  // The shared server itself is not used: TEST_POSTGRES_URL says PostgreSQL is installed and
  // expected, so this test fails or skips exactly when the other PostgreSQL tests do.
  MEGASERVE_REQUIRE_POSTGRES(shared_url);
  store::testing::TempDir dir;
  PrivatePostgres pg(dir.path());
  ASSERT_FALSE(pg.url().empty());

  auto db = store::Database::Open({.url = pg.url(),
                                   .pool_size = 8,
                                   .pool_timeout = std::chrono::milliseconds(10'000),
                                   .connect_timeout = std::chrono::milliseconds(2'000)});
  ASSERT_TRUE(db.ok()) << db.status().ToString();
  ASSERT_TRUE(store::Migrate(**db).ok());
  ASSERT_TRUE((*db)->Execute(std::string(kCreateCompletionsSql)).ok());

  jobs::JobQueue::Options queue_options;
  queue_options.lease = std::chrono::milliseconds(600);
  jobs::JobQueue queue(**db, "reliability-restart", queue_options);
  jobs::WorkersOptions options;
  options.queue = kQueue;
  options.concurrency = 4;
  options.poll_interval = std::chrono::milliseconds(20);
  options.rescue_interval = std::chrono::milliseconds(200);
  jobs::Workers workers(queue, options);
  RegisterRecordHandler(workers, **db, {.max_work = std::chrono::milliseconds(5)});
  workers.Start();

  const auto start = std::chrono::steady_clock::now();
  Produced produced;
  std::thread producer([&] { Produce(queue, workers, &produced, start + 45s); });
  while (produced.enqueued < kRestartAfter && produced.abandoned == 0 &&
         std::chrono::steady_clock::now() < start + 30s) {
    std::this_thread::sleep_for(5ms);
  }
  const auto restart_start = std::chrono::steady_clock::now();
  const bool restarted = pg.Restart();
  const double restart_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - restart_start).count();
  producer.join();
  EXPECT_TRUE(restarted) << pg.Log();
  EXPECT_EQ(produced.abandoned, 0)
      << "an enqueue failed with other than kUnavailable: " << produced.first_other_error;

  const int64_t done = WaitSucceeded(**db, kQueue, produced.enqueued, start + 60s);
  workers.Stop(std::chrono::milliseconds(2'000));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(done, produced.enqueued) << "jobs left unfinished 60 s after the start";

  const store::PoolStats stats = (*db)->pool_stats();
  const Outcome outcome = Inspect(**db, kQueue);
  std::printf(
      "[reliability] postgresql restart: %d jobs enqueued (%d enqueue retries after "
      "kUnavailable), restart took %.1f s, %lld rescued attempts, %lld completion rows for %lld "
      "jobs, pool: %llu reconnects, %llu discarded, %.1f s\n",
      produced.enqueued.load(), produced.retries.load(), restart_seconds,
      static_cast<long long>(outcome.attempts - outcome.jobs),
      static_cast<long long>(outcome.completions), static_cast<long long>(outcome.distinct_jobs),
      static_cast<unsigned long long>(stats.reconnects),
      static_cast<unsigned long long>(stats.discarded), seconds);
  std::fflush(stdout);

  EXPECT_EQ(produced.enqueued, kJobs);
  ExpectExactlyOnce(outcome, kJobs);
  EXPECT_GT(stats.reconnects + stats.discarded, 0u)
      << "the pool never replaced a connection, so the restart went unnoticed";
}

}  // namespace
}  // namespace megaserve::reliability
