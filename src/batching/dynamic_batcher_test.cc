#include "batching/dynamic_batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "batching/clock.h"
#include "metrics/registry.h"

namespace megaserve::batching {
namespace {

using std::chrono::milliseconds;

struct Req {
  int id = 0;
  std::string bucket;
};
using Batcher = DynamicBatcher<Req, int>;
using Result = core::Result<int>;

// A backend that records every batch (request ids) and answers id * 10.
class RecordingBackend {
 public:
  Batcher::Backend Fn() {
    return [this](std::vector<Req>& reqs) {
      std::vector<Result> out;
      std::vector<int> ids;
      for (const Req& r : reqs) {
        ids.push_back(r.id);
        out.emplace_back(r.id * 10);
      }
      std::lock_guard<std::mutex> lock(mu_);
      batches_.push_back(std::move(ids));
      return out;
    };
  }
  std::vector<std::vector<int>> batches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  std::vector<int> flat() const {
    std::vector<int> all;
    for (const auto& b : batches()) all.insert(all.end(), b.begin(), b.end());
    return all;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::vector<int>> batches_;
};

SubmitOptions Priority(int p) {
  SubmitOptions o;
  o.priority = p;
  return o;
}
SubmitOptions Deadline(Clock::TimePoint t) {
  SubmitOptions o;
  o.deadline = t;
  return o;
}
SubmitOptions Bucket(std::string_view key) {
  SubmitOptions o;
  o.bucket = key;
  return o;
}

bool Ready(const Batcher::Future& f) {
  return f.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

// Options for a batcher driven by Poll() on a fake clock, with its own metrics registry.
DynamicBatcherOptions PollOptions(FakeClock& clock, metrics::Registry& registry) {
  DynamicBatcherOptions o;
  o.model = "m";
  o.instances = 0;
  o.clock = &clock;
  o.registry = &registry;
  o.max_queue_delay = milliseconds(10);
  return o;
}

class DynamicBatcherTest : public ::testing::Test {
 protected:
  // Counts of the batcher's metrics for model "m" in registry_.
  BatcherMetrics& Metrics() {
    if (!metrics_) metrics_ = std::make_unique<BatcherMetrics>(registry_, "m");
    return *metrics_;
  }

  FakeClock clock_;
  metrics::Registry registry_;
  RecordingBackend backend_;
  std::unique_ptr<BatcherMetrics> metrics_;
};

TEST_F(DynamicBatcherTest, FormsBatchesUpToMaxBatchSize) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 4;
  Batcher b(o, backend_.Fn());
  std::vector<Batcher::Future> fs;
  for (int i = 1; i <= 10; ++i) fs.push_back(b.Submit({i, ""}).result);
  EXPECT_EQ(b.Poll(), 4u);
  EXPECT_EQ(b.Poll(), 4u);
  EXPECT_EQ(b.Poll(), 0u);  // two left, delay not over
  clock_.Advance(milliseconds(10));
  EXPECT_EQ(b.Poll(), 2u);
  EXPECT_EQ(backend_.batches(),
            (std::vector<std::vector<int>>{{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 10}}));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(fs[i].get().value(), (i + 1) * 10);
}

TEST_F(DynamicBatcherTest, DelayCountsFromOldestArrival) {
  Batcher b(PollOptions(clock_, registry_), backend_.Fn());
  auto a = b.Submit({1, ""});
  clock_.Advance(milliseconds(6));
  auto c = b.Submit({2, ""});
  clock_.Advance(milliseconds(3));
  EXPECT_EQ(b.Poll(), 0u);  // 9 ms after the first arrival
  clock_.Advance(milliseconds(1));
  EXPECT_EQ(b.Poll(), 2u);  // 10 ms after the first, 4 ms after the second
  EXPECT_TRUE(Ready(a.result));
  EXPECT_TRUE(Ready(c.result));
}

TEST_F(DynamicBatcherTest, WorkerTimerFollowsFakeClock) {
  auto o = PollOptions(clock_, registry_);
  o.instances = 1;
  o.max_queue_delay = milliseconds(50);
  Batcher b(o, backend_.Fn());
  auto t = b.Submit({1, ""});
  while (clock_.waiters() == 0) std::this_thread::yield();
  clock_.Advance(milliseconds(50));
  ASSERT_EQ(t.result.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(t.result.get().value(), 10);
}

TEST_F(DynamicBatcherTest, PreferredSizesDispatchEarly) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 16;
  o.preferred_batch_sizes = {8, 4};
  o.max_queue_delay = std::chrono::seconds(1);
  Batcher b(o, backend_.Fn());
  for (int i = 1; i <= 3; ++i) b.Submit({i, ""});
  EXPECT_EQ(b.Poll(), 0u);
  b.Submit({4, ""});
  EXPECT_EQ(b.Poll(), 4u);
  for (int i = 5; i <= 13; ++i) b.Submit({i, ""});
  EXPECT_EQ(b.Poll(), 8u);  // the largest preferred size that fits 9
  EXPECT_EQ(b.Poll(), 0u);
  EXPECT_EQ(b.queued(), 1u);
}

TEST_F(DynamicBatcherTest, HigherPriorityRunsFirst) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 1;
  o.max_queue_delay = {};
  o.priority_levels = 3;
  o.aging_interval = {};
  Batcher b(o, backend_.Fn());
  b.Submit({1, ""}, Priority(3), nullptr);
  b.Submit({2, ""}, Priority(1), nullptr);
  b.Submit({3, ""}, Priority(2), nullptr);
  while (b.Poll() > 0) {
  }
  EXPECT_EQ(backend_.flat(), (std::vector<int>{2, 3, 1}));
}

TEST_F(DynamicBatcherTest, AgingLetsLowPriorityOvertakeNewerHighPriority) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 1;
  o.max_queue_delay = {};
  o.priority_levels = 3;
  o.aging_interval = milliseconds(10);
  Batcher b(o, backend_.Fn());
  b.Submit({100, ""}, Priority(3), nullptr);  // the low-priority request
  b.Submit({0, ""}, Priority(1), nullptr);
  EXPECT_EQ(b.Poll(), 1u);
  // A new high-priority request every 5 ms; one Poll per arrival, so the queue never drains.
  for (int i = 1; i <= 6; ++i) {
    clock_.Advance(milliseconds(5));
    b.Submit({i, ""}, Priority(1), nullptr);
    EXPECT_EQ(b.Poll(), 1u);
  }
  // At 20 ms the low request has aged to level 1 and, being older, goes before request 4.
  EXPECT_EQ(backend_.flat(), (std::vector<int>{0, 1, 2, 3, 100, 4, 5}));
}

TEST_F(DynamicBatcherTest, DeadlinePassedOnArrivalNeverQueues) {
  Batcher b(PollOptions(clock_, registry_), backend_.Fn());
  auto t = b.Submit({1, ""}, Deadline(clock_.Now()));
  EXPECT_EQ(t.id, 0u);
  ASSERT_TRUE(Ready(t.result));
  EXPECT_EQ(t.result.get().status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(b.queued(), 0u);
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(b.Poll(), 0u);
  EXPECT_TRUE(backend_.batches().empty());
  EXPECT_EQ(Metrics().failure(FailureReason::kDeadline).Value(), 1u);
}

TEST_F(DynamicBatcherTest, DeadlineTimerFiresWhileQueued) {
  auto o = PollOptions(clock_, registry_);
  o.instances = 1;
  o.max_queue_delay = std::chrono::seconds(1);
  Batcher b(o, backend_.Fn());
  auto t = b.Submit({1, ""}, Deadline(clock_.Now() + milliseconds(5)));
  auto other = b.Submit({2, ""});
  clock_.Advance(milliseconds(5));
  ASSERT_EQ(t.result.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(t.result.get().status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(Ready(other.result));  // its delay has not run out
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(other.result.get().value(), 20);
  EXPECT_EQ(backend_.flat(), (std::vector<int>{2}));
  EXPECT_EQ(Metrics().failure(FailureReason::kDeadline).Value(), 1u);
  EXPECT_EQ(Metrics().success.Value(), 1u);
}

TEST_F(DynamicBatcherTest, DeadlineTimerFiresWhileEveryInstanceIsBusy) {
  auto o = PollOptions(clock_, registry_);
  o.instances = 1;
  o.max_queue_delay = milliseconds(0);
  std::mutex mu;
  std::condition_variable cv;
  bool open = false, entered = false;
  Batcher b(o, [&](std::vector<Req>& reqs) {
    std::unique_lock lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
    return std::vector<Result>(reqs.size(), Result(1));
  });
  auto running = b.Submit({1, ""});
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return entered; }));
  }
  // The only instance is busy; the queued request's deadline passes all the same.
  auto queued = b.Submit({2, ""}, Deadline(clock_.Now() + milliseconds(5)));
  clock_.Advance(milliseconds(5));
  ASSERT_EQ(queued.result.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(queued.result.get().status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(Ready(running.result));
  {
    std::lock_guard lock(mu);
    open = true;
  }
  cv.notify_all();
  EXPECT_TRUE(running.result.get().ok());
}

TEST_F(DynamicBatcherTest, DeadlineCheckedRightBeforeExecution) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 2;
  o.on_batch_taken = [this](std::size_t) { clock_.Advance(milliseconds(10)); };
  Batcher b(o, backend_.Fn());
  auto late = b.Submit({1, ""}, Deadline(clock_.Now() + milliseconds(5)));
  auto fine = b.Submit({2, ""});
  EXPECT_EQ(b.Poll(), 1u);
  EXPECT_EQ(late.result.get().status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(fine.result.get().value(), 20);
  EXPECT_EQ(backend_.batches(), (std::vector<std::vector<int>>{{2}}));
  EXPECT_EQ(Metrics().failure(FailureReason::kDeadline).Value(), 1u);
}

TEST_F(DynamicBatcherTest, FullQueueRejectsWithRetryAfterFromDrainRate) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 1;
  o.max_queue_delay = {};
  o.max_queue_size = 4;
  Batcher b(o, backend_.Fn());
  for (int i = 1; i <= 4; ++i) b.Submit({i, ""});
  auto early = b.Submit({5, ""});  // no drain measured yet
  ASSERT_TRUE(Ready(early.result));
  auto early_status = early.result.get().status();
  EXPECT_EQ(early_status.code(), core::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfterSeconds(early_status), 1);

  EXPECT_EQ(b.Poll(), 1u);
  clock_.Advance(std::chrono::seconds(1));
  EXPECT_EQ(b.Poll(), 1u);  // one request per second
  b.Submit({6, ""});
  b.Submit({7, ""});
  auto rejected = b.Submit({8, ""});
  ASSERT_TRUE(Ready(rejected.result));
  auto status = rejected.result.get().status();
  EXPECT_EQ(status.code(), core::StatusCode::kResourceExhausted);
  EXPECT_EQ(RetryAfterSeconds(status), 4);  // 4 queued at 1 request/s
  EXPECT_EQ(Metrics().failure(FailureReason::kRejected).Value(), 2u);
}

TEST_F(DynamicBatcherTest, MaxInflightCapsConcurrentRequests) {
  DynamicBatcherOptions o;
  o.registry = &registry_;
  o.model = "m";
  o.instances = 4;
  o.max_batch_size = 2;
  o.max_inflight = 3;
  o.max_queue_delay = {};
  std::atomic<int> inflight{0}, peak{0};
  Batcher b(o, [&](std::vector<Req>& reqs) {
    const int now =
        inflight.fetch_add(static_cast<int>(reqs.size())) + static_cast<int>(reqs.size());
    int p = peak.load();
    while (now > p && !peak.compare_exchange_weak(p, now)) {
    }
    std::this_thread::sleep_for(milliseconds(2));
    inflight.fetch_sub(static_cast<int>(reqs.size()));
    return std::vector<Result>(reqs.size(), Result(1));
  });
  std::vector<Batcher::Future> fs;
  for (int i = 0; i < 60; ++i) fs.push_back(b.Submit({i, ""}).result);
  for (auto& f : fs) EXPECT_TRUE(f.get().ok());
  EXPECT_LE(peak.load(), 3);
  EXPECT_GE(peak.load(), 2);
}

TEST_F(DynamicBatcherTest, PreserveOrderingDeliversInArrivalOrder) {
  for (bool preserve : {false, true}) {
    metrics::Registry registry;
    auto o = PollOptions(clock_, registry);
    o.max_batch_size = 1;
    o.max_queue_delay = {};
    o.priority_levels = 2;
    o.aging_interval = {};
    o.preserve_ordering = preserve;
    Batcher b(o, backend_.Fn());
    std::vector<int> delivered;
    b.Submit({1, ""}, Priority(2), [&](Result r) { delivered.push_back(r.value()); });
    b.Submit({2, ""}, Priority(1), [&](Result r) { delivered.push_back(r.value()); });
    EXPECT_EQ(b.Poll(), 1u);  // runs request 2 first
    EXPECT_EQ(delivered.size(), preserve ? 0u : 1u) << "preserve=" << preserve;
    EXPECT_EQ(b.Poll(), 1u);
    EXPECT_EQ(delivered, preserve ? (std::vector<int>{10, 20}) : (std::vector<int>{20, 10}))
        << "preserve=" << preserve;
  }
}

TEST_F(DynamicBatcherTest, BucketsNeverShareABatch) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 4;
  Batcher b(o, backend_.Fn());
  for (int i = 1; i <= 6; ++i) {
    b.Submit({i, ""}, Bucket(i % 2 ? "512x512/steps=20" : "256x256/steps=20"), nullptr);
  }
  EXPECT_EQ(b.Poll(), 0u);
  clock_.Advance(milliseconds(10));
  EXPECT_EQ(b.Poll(), 3u);
  EXPECT_EQ(b.Poll(), 3u);
  EXPECT_EQ(backend_.batches(), (std::vector<std::vector<int>>{{1, 3, 5}, {2, 4, 6}}));
}

TEST_F(DynamicBatcherTest, InstancesRunBatchesInParallel) {
  DynamicBatcherOptions o;
  o.registry = &registry_;
  o.instances = 3;
  o.max_batch_size = 1;
  o.max_queue_delay = {};
  std::mutex mu;
  std::condition_variable cv;
  int running = 0;
  bool all_three = false;
  Batcher b(o, [&](std::vector<Req>& reqs) {
    std::unique_lock<std::mutex> lock(mu);
    ++running;
    cv.notify_all();
    // Each call waits until three are running at once; one instance could never get there.
    if (cv.wait_for(lock, std::chrono::seconds(10), [&] { return running >= 3; })) {
      all_three = true;
    }
    return std::vector<Result>(reqs.size(), Result(1));
  });
  std::vector<Batcher::Future> fs;
  for (int i = 0; i < 3; ++i) fs.push_back(b.Submit({i, ""}).result);
  for (auto& f : fs) EXPECT_TRUE(f.get().ok());
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_TRUE(all_three);
}

TEST_F(DynamicBatcherTest, BackendFailureFailsWholeBatch) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 3;
  int calls = 0;
  Batcher b(o, [&](std::vector<Req>&) -> std::vector<Result> {
    ++calls;
    if (calls == 1) throw std::runtime_error("device lost");
    return {Result(1)};  // the wrong number of results
  });
  std::vector<Batcher::Future> fs;
  for (int i = 0; i < 6; ++i) fs.push_back(b.Submit({i, ""}).result);
  EXPECT_EQ(b.Poll(), 3u);
  EXPECT_EQ(b.Poll(), 3u);
  for (auto& f : fs) EXPECT_EQ(f.get().status().code(), core::StatusCode::kInternal);
  EXPECT_EQ(Metrics().failure(FailureReason::kBackend).Value(), 6u);
  EXPECT_EQ(Metrics().success.Value(), 0u);
}

TEST_F(DynamicBatcherTest, CancelCompletesQueuedRequest) {
  Batcher b(PollOptions(clock_, registry_), backend_.Fn());
  auto t = b.Submit({1, ""});
  EXPECT_TRUE(b.Cancel(t.id));
  EXPECT_FALSE(b.Cancel(t.id));
  EXPECT_EQ(t.result.get().status().code(), core::StatusCode::kCanceled);
  clock_.Advance(milliseconds(10));
  EXPECT_EQ(b.Poll(), 0u);
  EXPECT_EQ(Metrics().failure(FailureReason::kCanceled).Value(), 1u);
  EXPECT_EQ(Metrics().pending.Value(), 0);
}

TEST_F(DynamicBatcherTest, MetricsFollowTritonMeanings) {
  auto o = PollOptions(clock_, registry_);
  o.max_batch_size = 8;
  o.on_batch_taken = [this](std::size_t) {};
  Batcher b(o, [this](std::vector<Req>& reqs) {
    clock_.Advance(milliseconds(4));  // compute time
    return std::vector<Result>(reqs.size(), Result(1));
  });
  for (int i = 0; i < 3; ++i) b.Submit({i, ""});
  EXPECT_EQ(Metrics().pending.Value(), 3);
  clock_.Advance(milliseconds(10));
  EXPECT_EQ(b.Poll(), 3u);
  EXPECT_EQ(Metrics().pending.Value(), 0);
  EXPECT_EQ(Metrics().success.Value(), 3u);
  EXPECT_EQ(Metrics().batch_size.Count(), 1u);
  EXPECT_DOUBLE_EQ(Metrics().batch_size.Sum(), 3);
  EXPECT_EQ(Metrics().queue_duration.Count(), 3u);
  EXPECT_NEAR(Metrics().queue_duration.Sum(), 3 * 0.010, 1e-9);
  EXPECT_EQ(Metrics().compute_duration.Count(), 3u);
  EXPECT_NEAR(Metrics().compute_duration.Sum(), 3 * 0.004, 1e-9);
  EXPECT_NEAR(Metrics().request_duration.Sum(), 3 * 0.014, 1e-9);
  const std::string text = registry_.Expose();
  EXPECT_NE(text.find("megaserve_inference_request_success_total{model=\"m\"} 3"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("megaserve_inference_request_failure_total{model=\"m\",reason=\"backend\"} 0"),
      std::string::npos)
      << text;
}

TEST_F(DynamicBatcherTest, StopFinishesQueuedRequestsAndRefusesNewOnes) {
  DynamicBatcherOptions o;
  o.registry = &registry_;
  o.model = "m";
  o.max_queue_delay = std::chrono::hours(1);
  Batcher b(o, backend_.Fn());
  std::vector<Batcher::Future> fs;
  for (int i = 1; i <= 3; ++i) fs.push_back(b.Submit({i, ""}).result);
  b.Stop();
  for (auto& f : fs) EXPECT_TRUE(f.get().ok());
  auto late = b.Submit({4, ""});
  EXPECT_EQ(late.result.get().status().code(), core::StatusCode::kUnavailable);
  EXPECT_EQ(Metrics().failure(FailureReason::kRejected).Value(), 1u);
}

// An idle worker spins for wait_spin, then sleeps: requests arriving inside the window and
// after it are both served, and Stop() ends a spin at once.
TEST_F(DynamicBatcherTest, WaitSpinServesRequestsDuringAndAfterTheSpin) {
  DynamicBatcherOptions o;
  o.registry = &registry_;
  o.model = "m";
  o.instances = 1;
  o.max_batch_size = 4;
  o.max_queue_delay = {};
  o.wait_spin = milliseconds(200);
  std::atomic<int> executed{0};
  auto b = std::make_unique<Batcher>(o, [&](std::vector<Req>& reqs) {
    executed.fetch_add(static_cast<int>(reqs.size()));
    std::vector<Result> out;
    for (const Req& r : reqs) out.emplace_back(r.id * 2);
    return out;
  });
  for (int i = 1; i <= 50; ++i) {  // back to back: each arrives while the worker spins
    auto r = b->Submit({i, ""}).result.get();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.value(), 2 * i);
  }
  std::this_thread::sleep_for(milliseconds(300));  // past the window: the worker sleeps
  auto late = b->Submit({99, ""}).result;
  ASSERT_EQ(late.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_EQ(late.get().value(), 198);
  EXPECT_EQ(executed.load(), 51);
  b->Submit({7, ""}).result.get();  // the worker is spinning again
  const auto t0 = std::chrono::steady_clock::now();
  b.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, milliseconds(100));  // the spin lasts 200
}

// Many threads, random priorities, buckets, deadlines and cancellations against three
// instances on the real clock: every request completes exactly once, and no batch mixes
// buckets or exceeds max_batch_size.
TEST_F(DynamicBatcherTest, StressEveryRequestCompletesOnce) {
  constexpr int kThreads = 8;
  constexpr std::size_t kMaxBatch = 8;
  DynamicBatcherOptions o;
  o.registry = &registry_;
  o.model = "m";
  o.instances = 3;
  o.max_batch_size = kMaxBatch;
  o.preferred_batch_sizes = {4};
  o.max_queue_delay = std::chrono::microseconds(500);
  o.max_queue_size = 256;
  o.max_inflight = 20;
  o.priority_levels = 3;
  o.aging_interval = milliseconds(2);
  o.preserve_ordering = false;
  std::atomic<int> bad_batches{0}, executed{0};
  Batcher b(o, [&](std::vector<Req>& reqs) {
    if (reqs.empty() || reqs.size() > kMaxBatch) bad_batches.fetch_add(1);
    for (const Req& r : reqs) {
      if (r.bucket != reqs.front().bucket) bad_batches.fetch_add(1);
    }
    executed.fetch_add(static_cast<int>(reqs.size()));
    if (reqs.front().id % 7 == 0) throw std::runtime_error("flaky");
    return std::vector<Result>(reqs.size(), Result(1));
  });
  const char* buckets[] = {"a", "bb", "512x512/steps=20"};
  const auto stop_at = std::chrono::steady_clock::now() + milliseconds(1500);
  std::vector<std::vector<std::shared_ptr<std::atomic<int>>>> calls(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      int n = 0;
      while (std::chrono::steady_clock::now() < stop_at) {
        auto count = std::make_shared<std::atomic<int>>(0);
        calls[t].push_back(count);
        SubmitOptions so;
        so.priority = static_cast<int>(rng() % 4);  // 0 = default
        so.bucket = buckets[rng() % 3];
        const int d = static_cast<int>(rng() % 5);  // none, passed, 100 us, 1 ms, 50 ms
        const auto now = std::chrono::steady_clock::now();
        if (d == 1) so.deadline = now - milliseconds(1);
        if (d == 2) so.deadline = now + std::chrono::microseconds(100);
        if (d == 3) so.deadline = now + milliseconds(1);
        if (d == 4) so.deadline = now + milliseconds(50);
        const uint64_t id = b.Submit({t * 1000000 + n++, std::string(so.bucket)}, so,
                                     [count](Result) { count->fetch_add(1); });
        if (rng() % 10 == 0) b.Cancel(id);
        if (rng() % 4 == 0) std::this_thread::sleep_for(std::chrono::microseconds(rng() % 200));
      }
    });
  }
  for (auto& th : threads) th.join();
  b.Stop();
  int total = 0;
  for (const auto& v : calls) {
    for (const auto& c : v) {
      ASSERT_EQ(c->load(), 1);
      ++total;
    }
  }
  EXPECT_EQ(bad_batches.load(), 0);
  EXPECT_GT(executed.load(), 0);
  auto& m = Metrics();
  uint64_t failures = 0;
  for (auto r : {FailureReason::kRejected, FailureReason::kDeadline, FailureReason::kCanceled,
                 FailureReason::kBackend}) {
    failures += m.failure(r).Value();
  }
  EXPECT_EQ(m.success.Value() + failures, static_cast<uint64_t>(total));
  EXPECT_EQ(m.pending.Value(), 0);
}

}  // namespace
}  // namespace megaserve::batching
