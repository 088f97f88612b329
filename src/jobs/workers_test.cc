// Workers against both engines: a SQLite file and a PostgreSQL schema of its own, with the
// real clock (leases, heartbeats and polls are timed by it).
#include "jobs/workers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <thread>

#include "jobs/builtin_handlers.h"
#include "store/migrations.h"
#include "store/test_util.h"

namespace megaserve::jobs {
namespace {

using namespace std::chrono_literals;
using store::Engine;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

class WorkersTest : public ::testing::TestWithParam<Engine> {
 protected:
  // Two handlers, one capped at 2 of 5 slots; checks the cap holds and the rest still run.
  void RunCapCheck(bool from_options);

  void SetUp() override {
    std::string pg_url;
    if (GetParam() == Engine::kPostgres) {
      MEGASERVE_REQUIRE_POSTGRES(base);
      pg_url = base;
    }
    database_.Open(GetParam(), pg_url);
    ASSERT_FALSE(HasFatalFailure());
    db_ = &database_.db();
    JobQueue::Options queue_options;
    queue_options.retry_base = 10ms;
    queue_options.retry_cap = 20ms;
    queue_options.seed = 7;
    queue_ = std::make_unique<JobQueue>(*db_, "worker-a", queue_options);
  }

  // Fast defaults for tests: short polls and heartbeats.
  static WorkersOptions FastOptions() {
    WorkersOptions options;
    options.concurrency = 4;
    options.poll_interval = 50ms;
    options.heartbeat_interval = 50ms;
    return options;
  }

  Job MustEnqueue(NewJob spec) {
    auto job = queue_->Enqueue(spec);
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? *job : Job{};
  }

  Job MustGet(const std::string& id) {
    auto job = queue_->Get(id);
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? *job : Job{};
  }

  // Polls the job until `done` holds for it or `timeout` passes; returns whether it held.
  template <typename Pred>
  bool WaitForJob(const std::string& id, std::chrono::milliseconds timeout, Pred done) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (done(MustGet(id))) return true;
      std::this_thread::sleep_for(10ms);
    }
    return done(MustGet(id));
  }

  bool WaitForStatus(const std::string& id, JobStatus status, std::chrono::milliseconds timeout) {
    return WaitForJob(id, timeout, [status](const Job& j) { return j.status == status; });
  }

  int CountEvents(const std::string& id, const std::string& kind) {
    auto events = queue_->Events(id);
    EXPECT_TRUE(events.ok()) << events.status().ToString();
    if (!events.ok()) return 0;
    return static_cast<int>(std::count_if(events->begin(), events->end(),
                                          [&](const JobEvent& e) { return e.kind == kind; }));
  }

  store::testing::TestDatabase database_;
  store::Database* db_ = nullptr;
  std::unique_ptr<JobQueue> queue_;
};

TEST_P(WorkersTest, RegistersTypes) {
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  EXPECT_TRUE(workers.Handles("noop"));
  EXPECT_TRUE(workers.Handles("sleep"));
  EXPECT_FALSE(workers.Handles("forecast"));
  EXPECT_THAT(workers.types(), ::testing::ElementsAre("fail", "noop", "sleep"));
}

TEST_P(WorkersTest, FiftyNoopJobsSucceed) {
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(MustEnqueue({.type = "noop"}).id);
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  for (const std::string& id : ids) {
    ASSERT_TRUE(WaitForStatus(id, JobStatus::kSucceeded, 10s)) << id;
    Job job = MustGet(id);
    EXPECT_EQ(job.output_json, "{}");
    EXPECT_EQ(job.attempts, 1);
  }
  workers.Stop(1s);
  EXPECT_EQ(workers.running(), 0);
}

// The cap comes from Register() or, overriding it, from WorkersOptions::type_limits
// (jobs.type_concurrency).
TEST_P(WorkersTest, RespectsPerTypeCap) { RunCapCheck(/*from_options=*/false); }
TEST_P(WorkersTest, RespectsPerTypeCapFromOptions) { RunCapCheck(/*from_options=*/true); }

void WorkersTest::RunCapCheck(bool from_options) {
  std::atomic<int> capped_now{0}, capped_max{0}, all_now{0}, all_max{0};
  auto track = [&](std::atomic<int>& now, std::atomic<int>& max) {
    int n = ++now;
    int seen = max.load();
    while (n > seen && !max.compare_exchange_weak(seen, n)) {
    }
  };
  auto handler = [&](bool capped) {
    return [&, capped](JobContext& ctx) -> core::Result<std::string> {
      if (capped) track(capped_now, capped_max);
      track(all_now, all_max);
      ctx.SleepFor(60ms);
      --all_now;
      if (capped) --capped_now;
      return std::string(R"({"ok":true})");
    };
  };
  WorkersOptions options = FastOptions();
  options.concurrency = 5;
  if (from_options) options.type_limits["capped"] = 2;
  Workers workers(*queue_, options);
  workers.Register("capped", handler(true), from_options ? 4 : 2);
  workers.Register("free", handler(false));
  std::vector<std::string> ids;
  for (int i = 0; i < 8; ++i) ids.push_back(MustEnqueue({.type = "capped"}).id);
  for (int i = 0; i < 6; ++i) ids.push_back(MustEnqueue({.type = "free"}).id);
  workers.Start();
  for (const std::string& id : ids) ASSERT_TRUE(WaitForStatus(id, JobStatus::kSucceeded, 10s));
  EXPECT_EQ(capped_max.load(), 2);
  EXPECT_LE(all_max.load(), 5);
  EXPECT_GE(all_max.load(), 3);  // free jobs ran beside the capped ones
}

TEST_P(WorkersTest, FailingJobEndsFailedAfterMaxAttempts) {
  Job job = MustEnqueue({.type = "fail", .input_json = R"({"message":"boom"})", .max_attempts = 3});
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kFailed, 5s));
  Job done = MustGet(job.id);
  EXPECT_EQ(done.error, "boom");
  EXPECT_EQ(done.attempts, 3);
  EXPECT_EQ(CountEvents(job.id, "retry"), 2);
  EXPECT_EQ(CountEvents(job.id, "failed"), 1);
}

TEST_P(WorkersTest, ThrowingHandlerFailsTheJob) {
  Job job = MustEnqueue({.type = "throws", .max_attempts = 1});
  Workers workers(*queue_, FastOptions());
  workers.Register("throws", [](JobContext&) -> core::Result<std::string> {
    throw std::runtime_error("kaboom");
  });
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kFailed, 5s));
  EXPECT_THAT(MustGet(job.id).error, HasSubstr("kaboom"));
}

TEST_P(WorkersTest, InvalidJsonOutputFailsTheJob) {
  Job job = MustEnqueue({.type = "bad", .max_attempts = 1});
  Workers workers(*queue_, FastOptions());
  workers.Register(
      "bad", [](JobContext&) -> core::Result<std::string> { return std::string("{not json"); });
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kFailed, 5s));
  EXPECT_THAT(MustGet(job.id).error, HasSubstr("not JSON"));
}

TEST_P(WorkersTest, SleepReportsThrottledProgress) {
  Job job = MustEnqueue({.type = "sleep", .input_json = R"({"seconds":0.6})"});
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kSucceeded, 5s));
  Job done = MustGet(job.id);
  EXPECT_EQ(done.output_json, R"({"slept_ms":600})");
  EXPECT_TRUE(done.has_progress);
  EXPECT_EQ(done.progress_value, 600);  // the final value was flushed
  EXPECT_EQ(done.progress_max, 600);
  EXPECT_EQ(done.progress_message, "sleeping");
  // Reported every 100 ms (7 times) but written at most 4 times a second, plus the final flush.
  const int progress = CountEvents(job.id, "progress");
  EXPECT_GE(progress, 3);
  EXPECT_LE(progress, 5);
}

TEST_P(WorkersTest, CancelEndsRunningSleepQuickly) {
  Job job = MustEnqueue({.type = "sleep", .input_json = R"({"seconds":60})"});
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kRunning, 5s));
  const auto start = Clock::now();
  ASSERT_TRUE(queue_->Cancel(job.id).ok());
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kCanceled, 1s));
  EXPECT_LT(Clock::now() - start, 1s);
  EXPECT_EQ(MustGet(job.id).attempts, 1);
}

TEST_P(WorkersTest, StopCancelsLongJobAndLeavesItRetryable) {
  Job job = MustEnqueue({.type = "sleep", .input_json = R"({"seconds":60})", .max_attempts = 3});
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kRunning, 5s));
  // The claim marks the job running in the store just before the dispatcher registers it.
  const auto registered_by = Clock::now() + 5s;
  while (workers.running() == 0 && Clock::now() < registered_by) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(workers.running(), 1);
  const auto start = Clock::now();
  workers.Stop(200ms);
  const auto took = Clock::now() - start;
  EXPECT_GE(took, 200ms);  // it drained first
  EXPECT_LT(took, 700ms);
  EXPECT_EQ(workers.running(), 0);
  // Failed with attempts left: back to queued, due after the retry delay (JobQueue rules).
  Job after = MustGet(job.id);
  EXPECT_EQ(after.status, JobStatus::kQueued);
  EXPECT_EQ(after.attempts, 1);
  EXPECT_THAT(after.error, HasSubstr("worker stopping"));
  EXPECT_EQ(CountEvents(job.id, "retry"), 1);
  workers.Stop(0ms);  // idempotent
}

TEST_P(WorkersTest, StopLetsShortJobsFinishWithinDrain) {
  Job job = MustEnqueue({.type = "sleep", .input_json = R"({"seconds":0.3})"});
  Workers workers(*queue_, FastOptions());
  RegisterBuiltinHandlers(workers);
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kRunning, 5s));
  workers.Stop(5s);
  EXPECT_EQ(MustGet(job.id).status, JobStatus::kSucceeded);
}

TEST_P(WorkersTest, WakeClaimsBeforeThePoll) {
  WorkersOptions options = FastOptions();
  options.poll_interval = 5s;
  options.rescue_interval = 60s;
  Workers workers(*queue_, options);
  RegisterBuiltinHandlers(workers);
  workers.Start();
  std::this_thread::sleep_for(100ms);  // the dispatcher's first round is over; it now waits
  Job job = MustEnqueue({.type = "noop"});
  const auto start = Clock::now();
  workers.Wake();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kSucceeded, 1s));
  EXPECT_LT(Clock::now() - start, 1s);
}

TEST_P(WorkersTest, AnEnqueueThroughTheSameQueueWakesTheWorkers) {
  WorkersOptions options = FastOptions();
  options.poll_interval = 5s;
  options.rescue_interval = 60s;
  Workers workers(*queue_, options);
  RegisterBuiltinHandlers(workers);
  workers.Start();
  std::this_thread::sleep_for(100ms);
  const auto start = Clock::now();
  Job job = MustEnqueue({.type = "noop"});
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kSucceeded, 1s));
  EXPECT_LT(Clock::now() - start, 1s);
  workers.Stop(0ms);
}

// Another JobQueue stands for another process: on PostgreSQL its enqueue reaches the workers
// through NOTIFY; SQLite has no notifications, so the job waits for the next poll.
TEST_P(WorkersTest, AnEnqueueElsewhereWakesThroughNotifyOnPostgres) {
  WorkersOptions options = FastOptions();
  options.poll_interval = 5s;
  options.rescue_interval = 60s;
  Workers workers(*queue_, options);
  RegisterBuiltinHandlers(workers);
  workers.Start();
  std::this_thread::sleep_for(200ms);
  JobQueue elsewhere(*db_, "producer");
  auto job = elsewhere.Enqueue({.type = "noop"});
  ASSERT_TRUE(job.ok()) << job.status().ToString();
  if (GetParam() == Engine::kPostgres) {
    EXPECT_TRUE(WaitForStatus(job->id, JobStatus::kSucceeded, 1s));
  } else {
    std::this_thread::sleep_for(500ms);
    EXPECT_EQ(MustGet(job->id).status, JobStatus::kQueued);
  }
  workers.Stop(0ms);
}

TEST_P(WorkersTest, LostLeaseIsNeverCompleted) {
  std::atomic<bool> saw_cancel{false};
  std::atomic<bool> returned{false};
  Workers workers(*queue_, FastOptions());
  workers.Register("hold", [&](JobContext& ctx) -> core::Result<std::string> {
    saw_cancel = !ctx.SleepFor(10s);
    returned = true;
    return std::string(R"({"late":true})");
  });
  Job job = MustEnqueue({.type = "hold", .max_attempts = 1});
  workers.Start();
  ASSERT_TRUE(WaitForStatus(job.id, JobStatus::kRunning, 5s));
  // Another process whose clock is an hour ahead sees the lease as expired and rescues the job.
  JobQueue::Options rescuer_options;
  rescuer_options.now_us = [] {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch() + std::chrono::hours(1))
        .count();
  };
  JobQueue rescuer(*db_, "worker-b", rescuer_options);
  auto rescued = rescuer.RescueExpired();
  ASSERT_TRUE(rescued.ok()) << rescued.status().ToString();
  EXPECT_EQ(*rescued, 1);
  // The heartbeat learns the lease is gone and stops the handler.
  const auto deadline = Clock::now() + 2s;
  while (!returned && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(returned.load());
  EXPECT_TRUE(saw_cancel.load());
  workers.Stop(2s);
  Job after = MustGet(job.id);
  EXPECT_EQ(after.status, JobStatus::kFailed);
  EXPECT_EQ(after.error, "lease expired");
  EXPECT_EQ(after.output_json, "");
  EXPECT_EQ(CountEvents(job.id, "succeeded"), 0);
}

INSTANTIATE_TEST_SUITE_P(Engines, WorkersTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const ::testing::TestParamInfo<Engine>& info) {
                           return std::string(store::EngineName(info.param));
                         });

}  // namespace
}  // namespace megaserve::jobs
