// JobQueue against both engines: a SQLite file and a PostgreSQL schema of its own.
#include "jobs/job_queue.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "store/migrations.h"
#include "store/test_util.h"

namespace megaserve::jobs {
namespace {

using core::StatusCode;
using store::Engine;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kSecond = 1'000'000;

class JobQueueTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    std::string pg_url;
    if (GetParam() == Engine::kPostgres) {
      MEGASERVE_REQUIRE_POSTGRES(base);
      pg_url = base;
    }
    database_.Open(GetParam(), pg_url);
    ASSERT_FALSE(HasFatalFailure());
    db_ = &database_.db();
    queue_ = MakeQueue("worker-a");
  }

  std::unique_ptr<JobQueue> MakeQueue(const std::string& worker) {
    JobQueue::Options options;
    options.now_us = [this] { return now_.load(); };
    options.seed = 42;
    return std::make_unique<JobQueue>(*db_, worker, options);
  }

  Job MustEnqueue(NewJob spec) {
    auto job = queue_->Enqueue(spec);
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? *job : Job{};
  }

  std::vector<Claimed> MustClaim(int max, JobQueue* queue = nullptr) {
    auto claimed = (queue ? queue : queue_.get())->Claim("default", {}, max);
    EXPECT_TRUE(claimed.ok()) << claimed.status().ToString();
    return claimed.ok() ? *claimed : std::vector<Claimed>{};
  }

  std::vector<std::string> EventKinds(const std::string& id) {
    auto events = queue_->Events(id);
    EXPECT_TRUE(events.ok()) << events.status().ToString();
    std::vector<std::string> kinds;
    if (events.ok()) {
      for (const JobEvent& e : *events) kinds.push_back(e.kind);
    }
    return kinds;
  }

  std::atomic<int64_t> now_{1'700'000'000 * kSecond};
  store::testing::TestDatabase database_;
  store::Database* db_ = nullptr;
  std::unique_ptr<JobQueue> queue_;
};

TEST_P(JobQueueTest, EnqueueAndGetRoundTrip) {
  Job job = MustEnqueue({.type = "forecast",
                         .queue = "default",
                         .priority = 3,
                         .input_json = R"({"x":1})",
                         .max_attempts = 5,
                         .webhook_url = "https://example.com/hook",
                         .webhook_events = "job.succeeded"});
  auto got = queue_->Get(job.id);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->id, job.id);
  EXPECT_EQ(got->type, "forecast");
  EXPECT_EQ(got->queue, "default");
  EXPECT_EQ(got->status, JobStatus::kQueued);
  EXPECT_EQ(got->priority, 3);
  EXPECT_EQ(got->input_json, R"({"x":1})");
  EXPECT_EQ(got->max_attempts, 5);
  EXPECT_EQ(got->attempts, 0);
  EXPECT_EQ(got->run_after_us, now_.load());
  EXPECT_EQ(got->created_at_us, now_.load());
  EXPECT_EQ(got->webhook_url, "https://example.com/hook");
  EXPECT_EQ(got->webhook_events, "job.succeeded");
  EXPECT_EQ(got->fencing_token, 0);
  EXPECT_FALSE(got->has_progress);
  EXPECT_THAT(EventKinds(job.id), ElementsAre("queued"));
  // What Enqueue returns (built without reading the row back) matches the stored row.
  EXPECT_EQ(job.type, got->type);
  EXPECT_EQ(job.queue, got->queue);
  EXPECT_EQ(job.status, got->status);
  EXPECT_EQ(job.priority, got->priority);
  EXPECT_EQ(job.input_json, got->input_json);
  EXPECT_EQ(job.max_attempts, got->max_attempts);
  EXPECT_EQ(job.run_after_us, got->run_after_us);
  EXPECT_EQ(job.idempotency_key, got->idempotency_key);
  EXPECT_EQ(job.input_hash, got->input_hash);
  EXPECT_EQ(job.webhook_url, got->webhook_url);
  EXPECT_EQ(job.webhook_events, got->webhook_events);
  EXPECT_EQ(job.created_at_us, got->created_at_us);
  EXPECT_EQ(job.updated_at_us, got->updated_at_us);
}

TEST_P(JobQueueTest, RejectsInvalidJobs) {
  EXPECT_EQ(queue_->Enqueue({.type = ""}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(queue_->Enqueue({.type = "t", .max_attempts = 0}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_P(JobQueueTest, UnknownIdIsNotFound) {
  EXPECT_EQ(queue_->Get("01900000-0000-7000-8000-000000000000").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(queue_->Cancel("01900000-0000-7000-8000-000000000000").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(queue_->AppendEvent("01900000-0000-7000-8000-000000000000", "x", "").code(),
            StatusCode::kNotFound);
}

TEST_P(JobQueueTest, ClaimsByPriorityThenRunAfterThenAge) {
  const int64_t now = now_.load();
  Job low = MustEnqueue({.type = "t", .priority = 5});
  Job later = MustEnqueue({.type = "t", .priority = 0, .run_after_us = now - 10 * kSecond});
  Job earlier = MustEnqueue({.type = "t", .priority = 0, .run_after_us = now - 20 * kSecond});
  Job tie = MustEnqueue({.type = "t", .priority = 0, .run_after_us = now - 20 * kSecond});
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    auto claimed = MustClaim(1);
    ASSERT_EQ(claimed.size(), 1u);
    order.push_back(claimed[0].job.id);
  }
  EXPECT_THAT(order, ElementsAre(earlier.id, tie.id, later.id, low.id));
  EXPECT_TRUE(MustClaim(1).empty());
}

TEST_P(JobQueueTest, ClaimFiltersByQueueAndType) {
  Job a = MustEnqueue({.type = "a"});
  Job b = MustEnqueue({.type = "b"});
  Job other = MustEnqueue({.type = "a", .queue = "gpu"});
  auto claimed = queue_->Claim("default", {"b", "c"}, 10);
  ASSERT_TRUE(claimed.ok()) << claimed.status().ToString();
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].job.id, b.id);
  claimed = queue_->Claim("gpu", {}, 10);
  ASSERT_TRUE(claimed.ok()) << claimed.status().ToString();
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].job.id, other.id);
  auto rest = MustClaim(10);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0].job.id, a.id);
}

TEST_P(JobQueueTest, ClaimSetsLeaseTokenAndAttempt) {
  Job job = MustEnqueue({.type = "t"});
  auto claimed = MustClaim(5);
  ASSERT_EQ(claimed.size(), 1u);
  const Job& got = claimed[0].job;
  EXPECT_EQ(got.id, job.id);
  EXPECT_EQ(got.status, JobStatus::kRunning);
  EXPECT_EQ(got.attempts, 1);
  EXPECT_EQ(got.lease_owner, "worker-a");
  EXPECT_EQ(got.lease_expires_at_us, now_.load() + 30 * kSecond);
  EXPECT_EQ(got.started_at_us, now_.load());
  EXPECT_EQ(claimed[0].fencing_token, 1);
  EXPECT_EQ(got.fencing_token, 1);
  EXPECT_THAT(EventKinds(job.id), ElementsAre("queued", "started"));
}

TEST_P(JobQueueTest, DelayedJobWaitsForRunAfter) {
  Job job = MustEnqueue({.type = "t", .run_after_us = now_.load() + 60 * kSecond});
  EXPECT_TRUE(MustClaim(1).empty());
  now_ += 59 * kSecond;
  EXPECT_TRUE(MustClaim(1).empty());
  now_ += 1 * kSecond;
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].job.id, job.id);
}

TEST_P(JobQueueTest, ConcurrentClaimsTakeEveryJobExactlyOnce) {
  constexpr int kJobs = 200;
  constexpr int kThreads = 4;
  for (int i = 0; i < kJobs; ++i) MustEnqueue({.type = "t", .priority = i % 3});
  std::vector<std::vector<std::string>> taken(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto queue = MakeQueue("worker-" + std::to_string(t));
      for (;;) {
        auto claimed = queue->Claim("default", {}, 3);
        if (!claimed.ok()) {
          ++errors;
          return;
        }
        if (claimed->empty()) return;
        for (const Claimed& c : *claimed) {
          taken[t].push_back(c.job.id);
          if (!queue->Complete(c.job.id, c.fencing_token, "{}").ok()) ++errors;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  std::set<std::string> unique;
  size_t total = 0;
  for (const auto& ids : taken) {
    total += ids.size();
    unique.insert(ids.begin(), ids.end());
  }
  EXPECT_EQ(total, static_cast<size_t>(kJobs));
  EXPECT_EQ(unique.size(), static_cast<size_t>(kJobs));
  auto succeeded = queue_->List(JobStatus::kSucceeded, "", 1000, "");
  ASSERT_TRUE(succeeded.ok()) << succeeded.status().ToString();
  EXPECT_EQ(succeeded->jobs.size(), static_cast<size_t>(kJobs));
}

// Many threads sharing one JobQueue: on PostgreSQL their enqueues, claims and completions are
// coalesced into shared statements; every call must still get exactly its own result.
TEST_P(JobQueueTest, ConcurrentCallsOnOneQueueEachGetTheirOwnResult) {
  constexpr int kThreads = 8;
  constexpr int kEach = 40;
  std::atomic<int> errors{0};
  std::vector<std::vector<std::string>> enqueued(kThreads), taken(kThreads);
  std::vector<std::thread> producers;
  for (int t = 0; t < kThreads; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        auto job = queue_->Enqueue(
            {.type = "t", .input_json = "{\"n\":" + std::to_string(t * kEach + i) + "}"});
        if (!job.ok()) {
          ++errors;
          continue;
        }
        enqueued[t].push_back(job->id);
        auto got = queue_->Get(job->id);
        if (!got.ok() || got->input_json != job->input_json) ++errors;
      }
    });
  }
  for (auto& p : producers) p.join();
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (;;) {
        auto claimed = queue_->Claim("default", {"t"}, 1 + t % 2);
        if (!claimed.ok()) {
          ++errors;
          return;
        }
        if (claimed->empty()) return;
        if (static_cast<int>(claimed->size()) > 1 + t % 2) ++errors;
        for (const Claimed& c : *claimed) {
          taken[t].push_back(c.job.id);
          if (!queue_->Complete(c.job.id, c.fencing_token, c.job.input_json).ok()) ++errors;
          // A second completion under the same token is refused.
          if (queue_->Complete(c.job.id, c.fencing_token, "{}").code() !=
              StatusCode::kFailedPrecondition) {
            ++errors;
          }
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  EXPECT_EQ(errors.load(), 0);
  std::set<std::string> all_enqueued, all_taken;
  size_t total = 0;
  for (int t = 0; t < kThreads; ++t) {
    all_enqueued.insert(enqueued[t].begin(), enqueued[t].end());
    all_taken.insert(taken[t].begin(), taken[t].end());
    total += taken[t].size();
  }
  EXPECT_EQ(all_enqueued.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(total, all_taken.size());  // nobody got a job twice
  EXPECT_EQ(all_taken, all_enqueued);
  for (const std::string& id : all_taken) {
    auto job = queue_->Get(id);
    ASSERT_TRUE(job.ok());
    EXPECT_EQ(job->status, JobStatus::kSucceeded);
    EXPECT_EQ(job->output_json, job->input_json);  // its own output, not a neighbour's
  }
}

TEST_P(JobQueueTest, HeartbeatExtendsTheLease) {
  MustEnqueue({.type = "t"});
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  const std::string id = claimed[0].job.id;
  now_ += 20 * kSecond;
  ASSERT_TRUE(queue_->Heartbeat(id, claimed[0].fencing_token).ok());
  EXPECT_EQ(queue_->Get(id)->lease_expires_at_us, now_.load() + 30 * kSecond);
  now_ += 25 * kSecond;  // past the original lease, inside the extended one
  auto rescued = queue_->RescueExpired();
  ASSERT_TRUE(rescued.ok()) << rescued.status().ToString();
  EXPECT_EQ(*rescued, 0);
  EXPECT_EQ(queue_->Heartbeat(id, claimed[0].fencing_token + 1).code(),
            StatusCode::kFailedPrecondition);
}

TEST_P(JobQueueTest, ExpiredLeaseIsRescuedAndTheStaleTokenIsFenced) {
  MustEnqueue({.type = "t"});
  auto first = MustClaim(1);
  ASSERT_EQ(first.size(), 1u);
  const std::string id = first[0].job.id;
  const int64_t stale = first[0].fencing_token;

  now_ += 31 * kSecond;
  auto rescued = queue_->RescueExpired();
  ASSERT_TRUE(rescued.ok()) << rescued.status().ToString();
  EXPECT_EQ(*rescued, 1);
  Job requeued = *queue_->Get(id);
  EXPECT_EQ(requeued.status, JobStatus::kQueued);
  EXPECT_GT(requeued.fencing_token, stale);
  EXPECT_EQ(requeued.lease_owner, "");

  auto other = MakeQueue("worker-b");
  auto second = MustClaim(1, other.get());
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].job.id, id);
  EXPECT_EQ(second[0].job.attempts, 2);
  EXPECT_EQ(second[0].job.lease_owner, "worker-b");

  const size_t events_before = EventKinds(id).size();
  EXPECT_EQ(queue_->Complete(id, stale, R"({"late":true})").code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->Fail(id, stale, "late").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->Progress(id, stale, 1, 2, "late").code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->Heartbeat(id, stale).code(), StatusCode::kFailedPrecondition);
  Job after = *queue_->Get(id);
  EXPECT_EQ(after.status, JobStatus::kRunning);
  EXPECT_EQ(after.output_json, "");
  EXPECT_FALSE(after.has_progress);
  EXPECT_EQ(EventKinds(id).size(), events_before);

  ASSERT_TRUE(other->Complete(id, second[0].fencing_token, R"({"ok":true})").ok());
  after = *queue_->Get(id);
  EXPECT_EQ(after.status, JobStatus::kSucceeded);
  EXPECT_EQ(after.output_json, R"({"ok":true})");
  EXPECT_EQ(after.completed_at_us, now_.load());
  EXPECT_THAT(EventKinds(id), ElementsAre("queued", "started", "retry", "started", "succeeded"));
}

TEST_P(JobQueueTest, RescueEndsFailedWhenOutOfAttempts) {
  MustEnqueue({.type = "t", .max_attempts = 1});
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  now_ += 31 * kSecond;
  ASSERT_EQ(*queue_->RescueExpired(), 1);
  Job job = *queue_->Get(claimed[0].job.id);
  EXPECT_EQ(job.status, JobStatus::kFailed);
  EXPECT_EQ(job.error, "lease expired");
}

TEST_P(JobQueueTest, FailRetriesWithBackoffThenEndsFailed) {
  Job job = MustEnqueue({.type = "t", .max_attempts = 3});
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto claimed = MustClaim(1);
    ASSERT_EQ(claimed.size(), 1u) << "attempt " << attempt;
    EXPECT_EQ(claimed[0].job.attempts, attempt);
    const std::string error = "boom " + std::to_string(attempt);
    ASSERT_TRUE(queue_->Fail(job.id, claimed[0].fencing_token, error).ok());
    Job after = *queue_->Get(job.id);
    EXPECT_EQ(after.error, error);
    if (attempt < 3) {
      EXPECT_EQ(after.status, JobStatus::kQueued);
      // Full jitter over [0, base * 2^(attempt-1)] with base 1 s.
      EXPECT_GE(after.run_after_us, now_.load());
      EXPECT_LE(after.run_after_us, now_.load() + (kSecond << (attempt - 1)));
      now_ = after.run_after_us;
    } else {
      EXPECT_EQ(after.status, JobStatus::kFailed);
      EXPECT_EQ(after.attempts, 3);
      EXPECT_EQ(after.completed_at_us, now_.load());
    }
  }
  EXPECT_THAT(EventKinds(job.id),
              ElementsAre("queued", "started", "retry", "started", "retry", "started", "failed"));
  EXPECT_EQ(queue_->Fail(job.id, 3, "again").code(), StatusCode::kFailedPrecondition);
}

TEST_P(JobQueueTest, RetryIsNotClaimableBeforeItsDelay) {
  Job job = MustEnqueue({.type = "t"});
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  ASSERT_TRUE(queue_->Fail(job.id, claimed[0].fencing_token, "x").ok());
  const int64_t run_after = queue_->Get(job.id)->run_after_us;
  if (run_after > now_.load()) {
    EXPECT_TRUE(MustClaim(1).empty());
  }
  now_ = run_after;
  EXPECT_EQ(MustClaim(1).size(), 1u);
}

TEST_P(JobQueueTest, CancelQueuedRunningAndTerminal) {
  Job queued = MustEnqueue({.type = "t"});
  auto canceled = queue_->Cancel(queued.id);
  ASSERT_TRUE(canceled.ok()) << canceled.status().ToString();
  EXPECT_EQ(canceled->status, JobStatus::kCanceled);
  EXPECT_EQ(canceled->completed_at_us, now_.load());
  EXPECT_THAT(EventKinds(queued.id), ElementsAre("queued", "canceled"));
  auto again = queue_->Cancel(queued.id);
  EXPECT_EQ(again.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(again.status().message(), HasSubstr("canceled"));
  EXPECT_TRUE(MustClaim(1).empty());

  Job running = MustEnqueue({.type = "t"});
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  auto requested = queue_->Cancel(running.id);
  ASSERT_TRUE(requested.ok()) << requested.status().ToString();
  EXPECT_EQ(requested->status, JobStatus::kRunning);
  EXPECT_TRUE(requested->cancel_requested);
  ASSERT_TRUE(queue_->Cancel(running.id).ok());  // asking twice records one request
  EXPECT_EQ(queue_->Heartbeat(running.id, claimed[0].fencing_token).code(), StatusCode::kCanceled);
  ASSERT_TRUE(queue_->Fail(running.id, claimed[0].fencing_token, "stopped").ok());
  Job done = *queue_->Get(running.id);
  EXPECT_EQ(done.status, JobStatus::kCanceled);
  EXPECT_FALSE(done.cancel_requested);
  EXPECT_THAT(EventKinds(running.id),
              ElementsAre("queued", "started", "cancel_requested", "canceled"));

  Job finished = MustEnqueue({.type = "t"});
  claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  ASSERT_TRUE(queue_->Complete(finished.id, claimed[0].fencing_token, "{}").ok());
  EXPECT_EQ(queue_->Cancel(finished.id).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(queue_->Get(finished.id)->status, JobStatus::kSucceeded);
}

TEST_P(JobQueueTest, IdempotencyKey) {
  Job first = MustEnqueue({.type = "t", .input_json = R"({"a":1})", .idempotency_key = "k1"});
  EXPECT_FALSE(first.input_hash.empty());
  Job same = MustEnqueue({.type = "t", .input_json = R"({"a":1})", .idempotency_key = "k1"});
  EXPECT_EQ(same.id, first.id);
  auto different =
      queue_->Enqueue({.type = "t", .input_json = R"({"a":2})", .idempotency_key = "k1"});
  EXPECT_EQ(different.status().code(), StatusCode::kAlreadyExists);
  EXPECT_THAT(different.status().message(),
              HasSubstr("idempotency key reused with a different input"));
  Job other_type = MustEnqueue({.type = "u", .input_json = R"({"a":2})", .idempotency_key = "k1"});
  EXPECT_NE(other_type.id, first.id);
  Job unkeyed = MustEnqueue({.type = "t", .input_json = R"({"a":1})"});
  EXPECT_NE(unkeyed.id, first.id);
  auto all = queue_->List(std::nullopt, "", 100, "");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->jobs.size(), 3u);
  EXPECT_THAT(EventKinds(first.id), ElementsAre("queued"));
}

TEST_P(JobQueueTest, ListPagesThroughEveryJobOnce) {
  std::set<std::string> ids;
  for (int i = 0; i < 25; ++i) ids.insert(MustEnqueue({.type = i % 5 == 0 ? "x" : "t"}).id);
  std::set<std::string> seen;
  std::string cursor;
  int pages = 0;
  std::string previous;
  do {
    auto page = queue_->List(std::nullopt, "", 7, cursor);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    ++pages;
    for (const Job& job : page->jobs) {
      EXPECT_TRUE(seen.insert(job.id).second) << job.id;
      if (!previous.empty()) {
        EXPECT_LT(job.id, previous);  // newest first
      }
      previous = job.id;
    }
    cursor = page->next_cursor;
    ASSERT_LE(pages, 10);
  } while (!cursor.empty());
  EXPECT_EQ(pages, 4);
  EXPECT_EQ(seen, ids);

  auto typed = queue_->List(JobStatus::kQueued, "x", 100, "");
  ASSERT_TRUE(typed.ok());
  EXPECT_EQ(typed->jobs.size(), 5u);
  EXPECT_TRUE(typed->next_cursor.empty());
  auto none = queue_->List(JobStatus::kRunning, "", 100, "");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->jobs.empty());

  for (const std::string& bad :
       std::vector<std::string>{"garbage", "j" + std::string(32, 'z'), std::string(33, '0')}) {
    EXPECT_EQ(queue_->List(std::nullopt, "", 7, bad).status().code(), StatusCode::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(queue_->List(std::nullopt, "", 0, "").status().code(), StatusCode::kInvalidArgument);
}

TEST_P(JobQueueTest, EnqueueManyInsertsAllOrNone) {
  auto bad = queue_->EnqueueMany({{.type = "noop"}, {.type = ""}});
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  auto keyed = queue_->EnqueueMany({{.type = "noop", .idempotency_key = "k"}});
  EXPECT_EQ(keyed.status().code(), StatusCode::kInvalidArgument);
  auto none = queue_->List(std::nullopt, "", 10, "");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->jobs.empty());

  auto added =
      queue_->EnqueueMany({{.type = "noop", .priority = 2, .input_json = R"({"s":"a \"q\" {x}"})"},
                           {.type = "sleep",
                            .queue = "other",
                            .max_attempts = 7,
                            .webhook_url = "https://example.com/h",
                            .webhook_events = "completed"}});
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  ASSERT_EQ(added->size(), 2u);
  for (const Job& job : *added) {
    auto got = queue_->Get(job.id);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->type, job.type);
    EXPECT_EQ(got->queue, job.queue);
    EXPECT_EQ(got->priority, job.priority);
    EXPECT_EQ(got->input_json, job.input_json);
    EXPECT_EQ(got->max_attempts, job.max_attempts);
    EXPECT_EQ(got->run_after_us, now_.load());
    EXPECT_EQ(got->webhook_url, job.webhook_url);
    EXPECT_EQ(got->webhook_events, job.webhook_events);
    EXPECT_EQ(got->status, JobStatus::kQueued);
    EXPECT_THAT(EventKinds(job.id), ElementsAre("queued"));
  }
  EXPECT_EQ(queue_->Get((*added)[0].id)->input_json, R"({"s":"a \"q\" {x}"})");
  EXPECT_EQ(queue_->Get((*added)[1].id)->max_attempts, 7);
  // The first job is claimable like any other.
  std::vector<Claimed> claimed = MustClaim(5);
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(claimed[0].job.id, (*added)[0].id);
}

TEST_P(JobQueueTest, CompleteManyAcksABatchAndFencesStaleTokens) {
  for (int i = 0; i < 3; ++i) MustEnqueue({.type = "noop"});
  std::vector<Claimed> claimed = MustClaim(3);
  ASSERT_EQ(claimed.size(), 3u);
  std::vector<JobQueue::Ack> acks;
  for (const Claimed& c : claimed) acks.push_back({c.job.id, c.fencing_token, R"({"n":1})"});
  acks[1].token += 1;  // not the token the job is running under
  acks[2].output_json = R"({"quote":"a \"b\" \\ c, {d}"})";
  auto acked = queue_->CompleteMany(acks);
  ASSERT_TRUE(acked.ok()) << acked.status().ToString();
  ASSERT_EQ(acked->size(), 3u);
  EXPECT_TRUE((*acked)[0].ok()) << (*acked)[0].ToString();
  EXPECT_EQ((*acked)[1].code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*acked)[2].ok()) << (*acked)[2].ToString();
  auto first = queue_->Get(claimed[0].job.id);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->status, JobStatus::kSucceeded);
  EXPECT_EQ(first->output_json, R"({"n":1})");
  EXPECT_THAT(EventKinds(first->id), ElementsAre("queued", "started", "succeeded"));
  EXPECT_EQ(queue_->Get(claimed[1].job.id)->status, JobStatus::kRunning);
  EXPECT_EQ(queue_->Get(claimed[2].job.id)->output_json, acks[2].output_json);
  auto none = queue_->CompleteMany({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_P(JobQueueTest, CompleteHookCommitsWithTheCompletionOnly) {
  ASSERT_TRUE(db_->Execute("CREATE TABLE effects (job_id TEXT NOT NULL)").ok());
  MustEnqueue({.type = "noop"});
  MustEnqueue({.type = "noop"});
  std::vector<Claimed> claimed = MustClaim(2);
  ASSERT_EQ(claimed.size(), 2u);
  auto record = [](const std::string& id) {
    return [id](store::Session& s) {
      return s.Execute("INSERT INTO effects (job_id) VALUES ($1)", {id}).status();
    };
  };
  // A failing hook rolls the completion back; the job stays running under its token.
  core::Status failed =
      queue_->Complete(claimed[0].job.id, claimed[0].fencing_token, "{}", [&](store::Session& s) {
        (void)record(claimed[0].job.id)(s);
        return core::Internal("hook failed");
      });
  EXPECT_EQ(failed.code(), StatusCode::kInternal);
  EXPECT_EQ(queue_->Get(claimed[0].job.id)->status, JobStatus::kRunning);
  // A stale token runs no hook at all.
  EXPECT_EQ(queue_
                ->Complete(claimed[1].job.id, claimed[1].fencing_token + 1, "{}",
                           record(claimed[1].job.id))
                .code(),
            StatusCode::kFailedPrecondition);
  auto effects = db_->Execute("SELECT count(*) FROM effects");
  ASSERT_TRUE(effects.ok());
  EXPECT_EQ(effects->GetInt(0, 0), 0);
  // The real thing: completion and effect together.
  ASSERT_TRUE(
      queue_->Complete(claimed[0].job.id, claimed[0].fencing_token, "{}", record(claimed[0].job.id))
          .ok());
  effects = db_->Execute("SELECT job_id FROM effects");
  ASSERT_TRUE(effects.ok());
  ASSERT_EQ(effects->size(), 1u);
  EXPECT_EQ(effects->GetText(0, 0), claimed[0].job.id);
  EXPECT_EQ(queue_->Get(claimed[0].job.id)->status, JobStatus::kSucceeded);
}

// Each state change the job's filter names leaves one pending delivery in the outbox, written
// in the same transaction; jobs without a webhook leave none.
TEST_P(JobQueueTest, StateChangesFillTheWebhookOutboxPerFilter) {
  Job all = MustEnqueue({.type = "noop",
                         .webhook_url = "https://example.com/all",
                         .webhook_events = "start,progress,completed"});
  Job done_only = MustEnqueue(
      {.type = "noop", .webhook_url = "https://example.com/done", .webhook_events = "completed"});
  Job plain = MustEnqueue({.type = "noop"});
  Job canceled = MustEnqueue({.type = "noop",
                              .webhook_url = "https://example.com/cancel",
                              .webhook_events = "start,completed"});
  ASSERT_TRUE(queue_->Cancel(canceled.id).ok());
  std::vector<Claimed> claimed = MustClaim(3);
  ASSERT_EQ(claimed.size(), 3u);
  for (const Claimed& c : claimed) {
    ASSERT_TRUE(queue_->Progress(c.job.id, c.fencing_token, 1, 2, "half").ok());
  }
  ASSERT_TRUE(queue_->Complete(claimed[0].job.id, claimed[0].fencing_token, "{}").ok());
  auto rest = queue_->CompleteMany({{claimed[1].job.id, claimed[1].fencing_token, "{}"},
                                    {claimed[2].job.id, claimed[2].fencing_token, "{}"}});
  ASSERT_TRUE(rest.ok()) << rest.status().ToString();
  auto rows = db_->Execute(
      "SELECT url, event, status, attempts, next_attempt_at, payload FROM webhook_deliveries "
      "ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  std::vector<std::string> got;
  for (size_t r = 0; r < rows->size(); ++r) {
    got.push_back(rows->GetText(r, 0) + " " + rows->GetText(r, 1));
    EXPECT_EQ(rows->GetText(r, 2), "pending");
    EXPECT_EQ(rows->GetInt(r, 3), 0);
    EXPECT_EQ(rows->GetInt(r, 4), now_.load());
    EXPECT_FALSE(rows->GetText(r, 5).empty());
  }
  EXPECT_THAT(got, ::testing::UnorderedElementsAre(
                       "https://example.com/cancel completed", "https://example.com/all start",
                       "https://example.com/all progress", "https://example.com/all completed",
                       "https://example.com/done completed"));
  (void)all;
  (void)done_only;
  (void)plain;
}

TEST_P(JobQueueTest, ProgressAndEventsHaveIncreasingSeq) {
  Job job = MustEnqueue({.type = "t"});
  auto claimed = MustClaim(1);
  ASSERT_EQ(claimed.size(), 1u);
  const int64_t token = claimed[0].fencing_token;
  ASSERT_TRUE(queue_->Progress(job.id, token, 1, 4, "quarter \"done\"").ok());
  ASSERT_TRUE(queue_->Progress(job.id, token, 2, 4, "half").ok());
  ASSERT_TRUE(queue_->AppendEvent(job.id, "note", R"({"k":"v"})").ok());
  Job got = *queue_->Get(job.id);
  EXPECT_TRUE(got.has_progress);
  EXPECT_DOUBLE_EQ(got.progress_value, 2);
  EXPECT_DOUBLE_EQ(got.progress_max, 4);
  EXPECT_EQ(got.progress_message, "half");

  auto events = queue_->Events(job.id);
  ASSERT_TRUE(events.ok()) << events.status().ToString();
  ASSERT_EQ(events->size(), 5u);
  for (size_t i = 0; i < events->size(); ++i) {
    EXPECT_EQ((*events)[i].seq, static_cast<int64_t>(i + 1));
    EXPECT_EQ((*events)[i].job_id, job.id);
  }
  EXPECT_EQ((*events)[2].kind, "progress");
  EXPECT_THAT((*events)[2].data_json, HasSubstr(R"("message":"quarter \"done\"")"));
  EXPECT_EQ((*events)[4].data_json, R"({"k":"v"})");
  auto tail = queue_->Events(job.id, 3);
  ASSERT_TRUE(tail.ok());
  ASSERT_EQ(tail->size(), 2u);
  EXPECT_EQ((*tail)[0].seq, 4);
}

INSTANTIATE_TEST_SUITE_P(Engines, JobQueueTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const ::testing::TestParamInfo<Engine>& info) {
                           return std::string(store::EngineName(info.param));
                         });

TEST(JobQueueStatusTest, NamesRoundTrip) {
  for (JobStatus s : {JobStatus::kQueued, JobStatus::kRunning, JobStatus::kSucceeded,
                      JobStatus::kFailed, JobStatus::kCanceled}) {
    EXPECT_EQ(ParseJobStatus(JobStatusName(s)), s);
  }
  EXPECT_EQ(ParseJobStatus("bogus"), std::nullopt);
}

}  // namespace
}  // namespace megaserve::jobs
