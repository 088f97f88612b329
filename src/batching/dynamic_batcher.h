// DynamicBatcher: groups concurrent requests for one model into batches, as Triton's dynamic
// batcher does (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/
// user_guide/model_configuration.html#dynamic-batcher), and runs them on N backend instances.
//
// Scheduling rules.
//  * Buckets. Every request carries a bucket key (e.g. "512x512/steps=20"); a batch holds
//    requests of one key only. Each bucket has its own queue, one FIFO per priority level.
//  * Priority and aging. Levels run from 1 (highest) to `priority_levels`. A request's
//    effective level is its level minus one per `aging_interval` it has waited (never above
//    1), so a low-priority request eventually ties with, then beats, newer high-priority ones.
//    Requests are ordered by (effective level, arrival); within a level the oldest is first.
//  * Batch formation. A bucket's candidate batch is its first `max_batch_size` requests in
//    that order. A bucket is ready when (first match wins):
//      1. it holds >= max_batch_size requests: dispatch max_batch_size;
//      2. its oldest request arrived >= max_queue_delay ago (or the batcher is stopping):
//         dispatch all of it, up to max_batch_size;
//      3. it holds >= one of `preferred_batch_sizes`: dispatch the largest such size.
//    The delay counts from the arrival of the bucket's oldest queued request, not from any
//    poll or wake-up. Among ready buckets, the one whose first request comes first in the
//    order above is dispatched first.
//  * In-flight cap. At most `max_inflight` requests execute at once across all instances; a
//    batch is cut to the free slots, and nothing is dispatched while none are free.
//  * Deadlines. A request's optional deadline is checked on arrival, by a timer while queued
//    and again right before its batch executes; an expired request fails with
//    kDeadlineExceeded and never reaches the backend.
//  * Queue cap. With `max_queue_size` requests queued, Submit fails at once with
//    kResourceExhausted whose message carries "retry_after_s=<n>": the queue length divided by
//    the measured drain rate, rounded up, at least 1 (see RetryAfterSeconds()).
//  * Ordering. With `preserve_ordering`, results are delivered in arrival order even when
//    batches (or priorities) finish them out of order; a result waits for all earlier ones.
//
// Threads. Each of `instances` worker threads waits for a ready batch, takes it, calls the
// backend and delivers the results. One more thread fails queued requests as their deadlines
// pass, also while every instance is busy. With `instances` = 0 no thread is started and the owner
// drives the batcher with Poll(), one step at a time; tests do this with a FakeClock. Idle
// workers and waiting submitters spin for up to `wait_spin` before they sleep, since waking a
// sleeping thread costs more than the batcher's own work per request.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "batching/batcher_metrics.h"
#include "batching/clock.h"
#include "batching/result_future.h"
#include "core/status.h"
#include "metrics/registry.h"

namespace megaserve::batching {

struct DynamicBatcherOptions {
  // The `model` label of the metrics.
  std::string model = "default";
  // The most requests in one backend call; >= 1.
  std::size_t max_batch_size = 8;
  // How long the oldest queued request of a bucket may wait for its batch to fill.
  Clock::Duration max_queue_delay = std::chrono::milliseconds(1);
  // Batch sizes dispatched as soon as a bucket reaches them; may be empty.
  std::vector<std::size_t> preferred_batch_sizes;
  // Queued requests beyond which Submit rejects; 0 for no limit.
  std::size_t max_queue_size = 0;
  // Requests executing at once across instances; 0 for no limit.
  std::size_t max_inflight = 0;
  // Worker threads, each calling the backend; 0 for none (the owner calls Poll()).
  int instances = 1;
  // Deliver results in arrival order.
  bool preserve_ordering = false;
  // Priority levels 1 (highest) .. priority_levels.
  int priority_levels = 1;
  // The level of a request submitted with priority 0; clamped to the valid range.
  int default_priority = 1;
  // A queued request's effective level improves by one per interval; zero disables aging.
  Clock::Duration aging_interval = std::chrono::milliseconds(100);
  // How long an idle worker polls for a new submission before sleeping, and a thread waiting on
  // a Ticket's result polls for it (only while the machine has a core beyond `instances` to
  // spare; see result_future.h). Zero sleeps at once.
  std::chrono::nanoseconds wait_spin = std::chrono::microseconds(50);
  // The time source; nullptr for Clock::Steady(). Borrowed: must outlive the batcher.
  Clock* clock = nullptr;
  // Where metrics are registered; nullptr for Registry::Global(). Borrowed.
  metrics::Registry* registry = nullptr;
  // Called on the executing thread with each batch's size after it leaves the queue and before
  // the last deadline check and the backend call; for tests and tracing. May be empty.
  std::function<void(std::size_t)> on_batch_taken;
};

struct SubmitOptions {
  // 1 (highest) .. priority_levels; 0 for the batcher's default_priority.
  int priority = 0;
  // When the result stops being useful; none by default.
  std::optional<Clock::TimePoint> deadline;
  // Only requests with equal keys share a batch. Copied when first seen.
  std::string_view bucket;
};

// The seconds a kResourceExhausted status from DynamicBatcher::Submit asks the caller to wait,
// or nullopt if the status carries none.
std::optional<int> RetryAfterSeconds(const core::Status& status);

namespace detail {
// The status of a submission refused because the queue is full.
core::Status QueueFull(std::size_t queued, int retry_after_s);
}  // namespace detail

template <class Request, class Response>
class DynamicBatcher {
 public:
  using Result = core::Result<Response>;
  // Receives a request's result exactly once, on a worker thread, the thread that called
  // Poll()/Cancel()/Stop(), or the submitting thread for immediate failures. It must not call
  // Cancel(), Poll() or Stop() when preserve_ordering is set (results are delivered under a lock).
  using Callback = std::function<void(Result)>;
  // Executes one batch: returns one result per request, in order. An exception, or a vector of
  // the wrong length, fails every request of the batch with reason backend.
  using Backend = std::function<std::vector<Result>(std::vector<Request>&)>;

  using Future = ResultFuture<Result>;
  // What Submit returns: the request's id (0 when it failed at once) and its future result.
  struct Ticket {
    uint64_t id = 0;
    Future result;
  };

  // Starts options.instances worker threads.
  DynamicBatcher(DynamicBatcherOptions options, Backend backend)
      : options_(std::move(options)),
        backend_(std::move(backend)),
        clock_(options_.clock != nullptr ? options_.clock : &Clock::Steady()),
        spare_cores_(std::max(0, static_cast<int>(std::thread::hardware_concurrency()) -
                                     std::max(0, options_.instances))),
        metrics_(options_.registry != nullptr ? *options_.registry : metrics::Registry::Global(),
                 options_.model) {
    options_.max_batch_size = std::max<std::size_t>(1, options_.max_batch_size);
    options_.priority_levels = std::max(1, options_.priority_levels);
    options_.default_priority = std::clamp(options_.default_priority, 1, options_.priority_levels);
    std::sort(options_.preferred_batch_sizes.begin(), options_.preferred_batch_sizes.end());
    for (int i = 0; i < options_.instances; ++i) workers_.emplace_back([this] { WorkerLoop(); });
    if (options_.instances > 0) timer_ = std::thread([this] { TimerLoop(); });
  }
  // Stop()s.
  ~DynamicBatcher() { Stop(); }
  // No copying allowed.
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `request`; `done` receives its result. Returns the request's id, or 0 when it failed
  // at once (deadline already passed, queue full, batcher stopping) and `done` has already run.
  uint64_t Submit(Request request, const SubmitOptions& opts, Callback done) {
    return Enqueue(std::move(request), opts, std::move(done), nullptr);
  }
  // As above, with the result delivered through a future.
  Ticket Submit(Request request, const SubmitOptions& opts = {}) {
    auto [future, state] = Future::Make(options_.wait_spin, spare_cores_);
    Ticket t;
    t.result = std::move(future);
    t.id = Enqueue(std::move(request), opts, nullptr, std::move(state));
    return t;
  }

  // Fails the queued request `id` with kCanceled. Returns false when it is not queued (unknown,
  // already executing or done). Linear in the number of queued requests.
  bool Cancel(uint64_t id) {
    std::unique_ptr<Entry> e;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [key, bucket] : buckets_) {
        for (auto& level : bucket.levels) {
          auto it =
              std::find_if(level.begin(), level.end(), [id](const auto& p) { return p->id == id; });
          if (it == level.end()) continue;
          e = std::move(*it);
          level.erase(it);
          ForgetLocked(*e);
          break;
        }
        if (e) break;
      }
    }
    if (!e) return false;
    Fail(std::move(e), core::Canceled("request canceled"), FailureReason::kCanceled);
    return true;
  }

  // One scheduling step on the calling thread: fails expired queued requests, then takes at
  // most one ready batch and executes it. Returns the number of requests passed to the backend.
  // Meant for instances = 0; with worker threads it competes with them.
  std::size_t Poll() {
    std::vector<std::unique_ptr<Entry>> expired, batch;
    Clock::TimePoint next_wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto now = clock_->Now();
      ExpireLocked(now, expired);
      TakeBatchLocked(now, batch, next_wake);
    }
    ExpireAll(expired);
    return batch.empty() ? 0 : Execute(batch);
  }

  // Stops accepting requests (Submit then fails with kUnavailable, reason rejected), finishes
  // every queued request (dispatched without waiting for max_queue_delay; deadlines still apply),
  // and joins the worker threads. With instances = 0 the queue is drained on the calling thread.
  // Idempotent; safe to call from several threads.
  void Stop() {
    std::lock_guard<std::mutex> stop_lock(stop_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      activity_.fetch_add(1, std::memory_order_release);  // ends a worker's spin
    }
    cv_.notify_all();
    timer_cv_.notify_all();
    if (timer_.joinable()) timer_.join();
    for (auto& w : workers_) w.join();
    workers_.clear();
    while (queued() > 0) Poll();
  }

  // True on one of the batcher's own threads (a worker or the deadline timer), where results
  // are delivered: the batcher must not be destroyed there, since Stop() joins those threads.
  bool OnOwnThread() const {
    const auto self = std::this_thread::get_id();
    if (timer_.get_id() == self) return true;
    return std::any_of(workers_.begin(), workers_.end(),
                       [self](const std::thread& w) { return w.get_id() == self; });
  }

  // Requests queued and not yet dispatched.
  std::size_t queued() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queued_;
  }
  // Requests executing right now.
  std::size_t inflight() const {
    std::lock_guard<std::mutex> lock(mu_);
    return inflight_;
  }

 private:
  struct Bucket;
  struct Entry {
    explicit Entry(Request r, Callback cb) : request(std::move(r)), done(std::move(cb)) {}
    Request request;
    Callback done;                                         // either this
    std::shared_ptr<detail::ResultState<Result>> promise;  // or this receives the result
    uint64_t id = 0;  // arrival order; consecutive over accepted requests
    int priority = 1;
    Clock::TimePoint arrival;
    std::optional<Clock::TimePoint> deadline;
    Bucket* bucket = nullptr;
  };
  using EntryPtr = std::unique_ptr<Entry>;
  struct Bucket {
    std::vector<std::deque<EntryPtr>> levels;  // index = priority level - 1; FIFO each
    std::size_t count = 0;
  };

  uint64_t Enqueue(Request request, const SubmitOptions& opts, Callback done,
                   std::shared_ptr<detail::ResultState<Result>> promise) {
    auto e = std::make_unique<Entry>(std::move(request), std::move(done));
    e->promise = std::move(promise);
    e->arrival = clock_->Now();
    e->deadline = opts.deadline;
    e->priority = std::clamp(opts.priority == 0 ? options_.default_priority : opts.priority, 1,
                             options_.priority_levels);
    if (e->deadline && *e->deadline <= e->arrival) {
      Fail(std::move(e), core::DeadlineExceeded("deadline passed before the request was queued"),
           FailureReason::kDeadline);
      return 0;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stopping_) {
      lock.unlock();
      Fail(std::move(e), core::Unavailable("batcher is stopping"), FailureReason::kRejected);
      return 0;
    }
    if (options_.max_queue_size > 0 && queued_ >= options_.max_queue_size) {
      const int retry = RetryAfterLocked();
      const std::size_t queued = queued_;
      lock.unlock();
      Fail(std::move(e), detail::QueueFull(queued, retry), FailureReason::kRejected);
      return 0;
    }
    auto it = buckets_.find(opts.bucket);
    if (it == buckets_.end()) {
      it = buckets_.emplace(std::string(opts.bucket), Bucket{}).first;
      it->second.levels.resize(options_.priority_levels);
    }
    Bucket& bucket = it->second;
    e->bucket = &bucket;
    e->id = ++last_id_;
    const uint64_t id = e->id;
    // The deadline timer sleeps until the earliest deadline; a new earliest one wakes it.
    bool earliest = false;
    if (e->deadline) {
      auto at = deadlines_.emplace(*e->deadline, e.get()).first;
      earliest = at == deadlines_.begin();
    }
    bucket.levels[e->priority - 1].push_back(std::move(e));
    ++bucket.count;
    ++queued_;
    activity_.fetch_add(1, std::memory_order_release);
    metrics_.pending.Inc();
    // A sleeping worker needs waking only when this request can change what it waits for: a
    // bucket's first request sets a new queue-delay deadline, and reaching the largest or a
    // preferred batch size makes the bucket ready now. Any other request joins a bucket whose
    // deadline a worker already sleeps until; waking it would find nothing to do and cost a
    // futex call and a context switch for every such request.
    const std::size_t n = bucket.count;
    const auto& preferred = options_.preferred_batch_sizes;
    const bool wake = n == 1 || n >= options_.max_batch_size ||
                      std::find(preferred.begin(), preferred.end(), n) != preferred.end();
    lock.unlock();
    if (wake) cv_.notify_one();
    if (earliest) timer_cv_.notify_one();
    return id;
  }

  // Removes `e`'s bookkeeping after it left its level's deque. Requires mu_.
  void ForgetLocked(const Entry& e) {
    if (e.deadline) deadlines_.erase({*e.deadline, const_cast<Entry*>(&e)});
    --e.bucket->count;
    --queued_;
    metrics_.pending.Dec();
  }

  int EffectiveLevel(const Entry& e, Clock::TimePoint now) const {
    if (options_.aging_interval <= Clock::Duration::zero()) return e.priority;
    const auto steps = (now - e.arrival) / options_.aging_interval;
    return static_cast<int>(std::max<int64_t>(1, e.priority - steps));
  }
  // True when `a` is served before `b`.
  bool Before(const Entry& a, const Entry& b, Clock::TimePoint now) const {
    const int la = EffectiveLevel(a, now), lb = EffectiveLevel(b, now);
    return la != lb ? la < lb : a.id < b.id;
  }

  // Moves every queued request whose deadline is <= now into `out`. Requires mu_.
  void ExpireLocked(Clock::TimePoint now, std::vector<EntryPtr>& out) {
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      Entry* e = deadlines_.begin()->second;
      auto& level = e->bucket->levels[e->priority - 1];
      auto it =
          std::find_if(level.begin(), level.end(), [e](const EntryPtr& p) { return p.get() == e; });
      out.push_back(std::move(*it));
      level.erase(it);
      ForgetLocked(*e);
    }
  }

  // How many requests of `b` are ready to go now (0 if none); otherwise lowers `next_wake` to
  // when its delay runs out. Requires mu_.
  std::size_t ReadySize(const Bucket& b, Clock::TimePoint now, Clock::TimePoint& next_wake) const {
    if (b.count == 0) return 0;
    if (b.count >= options_.max_batch_size) return options_.max_batch_size;
    Clock::TimePoint oldest = Clock::TimePoint::max();
    for (const auto& level : b.levels) {
      if (!level.empty()) oldest = std::min(oldest, level.front()->arrival);
    }
    if (stopping_ || now - oldest >= options_.max_queue_delay) return b.count;
    const auto& preferred = options_.preferred_batch_sizes;
    for (auto it = preferred.rbegin(); it != preferred.rend(); ++it) {
      if (*it <= b.count) return *it;
    }
    next_wake = std::min(next_wake, oldest + options_.max_queue_delay);
    return 0;
  }

  // The first request of `b` in service order. Requires mu_ and a non-empty bucket.
  const Entry* Head(const Bucket& b, Clock::TimePoint now) const {
    const Entry* best = nullptr;
    for (const auto& level : b.levels) {
      if (!level.empty() && (best == nullptr || Before(*level.front(), *best, now))) {
        best = level.front().get();
      }
    }
    return best;
  }

  // Takes the next ready batch into `batch` (left empty if none) and counts it in flight;
  // otherwise sets `next_wake` to when something may become ready. Requires mu_.
  void TakeBatchLocked(Clock::TimePoint now, std::vector<EntryPtr>& batch,
                       Clock::TimePoint& next_wake) {
    next_wake = deadlines_.empty() ? Clock::TimePoint::max() : deadlines_.begin()->first;
    std::size_t slots = options_.max_batch_size;
    if (options_.max_inflight > 0) {
      if (inflight_ >= options_.max_inflight) return;  // a finishing batch notifies
      slots = std::min(slots, options_.max_inflight - inflight_);
    }
    Bucket* chosen = nullptr;
    const Entry* chosen_head = nullptr;
    std::size_t size = 0;
    for (auto& [key, bucket] : buckets_) {
      const std::size_t n = ReadySize(bucket, now, next_wake);
      if (n == 0) continue;
      const Entry* head = Head(bucket, now);
      if (chosen == nullptr || Before(*head, *chosen_head, now)) {
        chosen = &bucket;
        chosen_head = head;
        size = n;
      }
    }
    if (chosen == nullptr) return;
    size = std::min(size, slots);
    // Merge the level FIFOs in service order; each level gives up a prefix.
    std::vector<std::size_t>& taken = taken_scratch_;
    taken.assign(chosen->levels.size(), 0);
    for (std::size_t i = 0; i < size; ++i) {
      std::size_t best = chosen->levels.size();
      for (std::size_t l = 0; l < chosen->levels.size(); ++l) {
        const auto& level = chosen->levels[l];
        if (taken[l] == level.size()) continue;
        if (best == chosen->levels.size() ||
            Before(*level[taken[l]], *chosen->levels[best][taken[best]], now)) {
          best = l;
        }
      }
      batch.push_back(std::move(chosen->levels[best][taken[best]++]));
    }
    for (std::size_t l = 0; l < chosen->levels.size(); ++l) {
      auto& level = chosen->levels[l];
      level.erase(level.begin(), level.begin() + static_cast<std::ptrdiff_t>(taken[l]));
    }
    for (const auto& e : batch) ForgetLocked(*e);
    inflight_ += batch.size();
    RecordDrainLocked(now, batch.size());
  }

  // Updates the drain-rate estimate behind retry-after (an exponentially weighted mean of
  // requests dispatched per second between dispatches). Requires mu_.
  void RecordDrainLocked(Clock::TimePoint now, std::size_t n) {
    if (last_dispatch_ != Clock::TimePoint{} && now > last_dispatch_) {
      const double seconds = std::chrono::duration<double>(now - last_dispatch_).count();
      const double rate = static_cast<double>(n) / seconds;
      drain_rate_ = drain_rate_ == 0 ? rate : 0.8 * drain_rate_ + 0.2 * rate;
    }
    last_dispatch_ = now;
  }
  int RetryAfterLocked() const {
    if (drain_rate_ <= 0) return 1;
    const double seconds = static_cast<double>(queued_) / drain_rate_;
    return std::max(1, static_cast<int>(std::ceil(seconds)));
  }

  void WorkerLoop() {
    std::vector<EntryPtr> expired, batch;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        bool spun = false;  // once per idle spell
        for (;;) {
          const auto now = clock_->Now();
          ExpireLocked(now, expired);
          if (!expired.empty()) break;
          Clock::TimePoint next_wake;
          TakeBatchLocked(now, batch, next_wake);
          if (!batch.empty()) break;
          if (stopping_ && queued_ == 0) return;
          if (!spun) {
            spun = true;
            SpinForSubmission(lock);
            continue;  // anything may have changed while the lock was released: look again
          }
          clock_->WaitUntil(cv_, lock, next_wake);
        }
        // Others may find a batch in what is left.
        if (queued_ > 0) cv_.notify_one();
      }
      ExpireAll(expired);
      if (!batch.empty()) Execute(batch);
    }
  }

  // An idle worker with an empty queue polls for a new submission (or Stop()) for up to
  // wait_spin before it sleeps: waking a sleeping thread costs more than a short batch. Called and
  // returns with `lock` held, and releases it while spinning.
  void SpinForSubmission(std::unique_lock<std::mutex>& lock) {
    if (options_.wait_spin <= std::chrono::nanoseconds::zero() || queued_ > 0) return;
    const uint64_t seen = activity_.load(std::memory_order_relaxed);
    lock.unlock();
    detail::SpinWhileEqual(activity_, seen, options_.wait_spin);
    lock.lock();
  }

  // Fails queued requests as their deadlines pass. Workers expire requests too, but only
  // between batches: with every instance busy, this thread keeps the promise of the deadline.
  void TimerLoop() {
    std::vector<EntryPtr> expired;
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      ExpireLocked(clock_->Now(), expired);
      if (!expired.empty()) {
        lock.unlock();
        ExpireAll(expired);
        lock.lock();
        continue;
      }
      clock_->WaitUntil(timer_cv_, lock,
                        deadlines_.empty() ? Clock::TimePoint::max() : deadlines_.begin()->first);
    }
  }

  // Runs `batch` (counted in flight) through the backend and delivers its results; leaves it
  // empty. Returns the number of requests passed to the backend.
  std::size_t Execute(std::vector<EntryPtr>& batch) {
    const std::size_t taken = batch.size();
    if (options_.on_batch_taken) options_.on_batch_taken(taken);
    const auto start = clock_->Now();
    std::vector<EntryPtr> live;
    live.reserve(batch.size());
    for (auto& e : batch) {
      if (e->deadline && *e->deadline <= start) {
        Fail(std::move(e), core::DeadlineExceeded("deadline passed before execution"),
             FailureReason::kDeadline);
      } else {
        live.push_back(std::move(e));
      }
    }
    batch.clear();
    std::vector<Request> requests;
    requests.reserve(live.size());
    for (auto& e : live) {
      metrics_.queue_duration.Observe(Seconds(start - e->arrival));
      requests.push_back(std::move(e->request));
    }
    std::optional<std::vector<Result>> results;
    std::string error;
    if (!live.empty()) {
      metrics_.batch_size.Observe(static_cast<double>(live.size()));
      try {
        results.emplace(backend_(requests));
        if (results->size() != live.size()) {
          error = "backend returned " + std::to_string(results->size()) + " results for " +
                  std::to_string(live.size()) + " requests";
          results.reset();
        }
      } catch (const std::exception& ex) {
        error = std::string("backend threw: ") + ex.what();
      } catch (...) {
        error = "backend threw";
      }
    }
    const auto end = clock_->Now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      inflight_ -= taken;
    }
    if (options_.max_inflight > 0) cv_.notify_one();
    for (std::size_t i = 0; i < live.size(); ++i) {
      metrics_.compute_duration.Observe(Seconds(end - start));
      metrics_.request_duration.Observe(Seconds(end - live[i]->arrival));
      if (!results) {
        Fail(std::move(live[i]), core::Internal(error), FailureReason::kBackend);
      } else if (!(*results)[i].ok()) {
        Fail(std::move(live[i]), std::move((*results)[i]), FailureReason::kBackend);
      } else {
        metrics_.success.Inc();
        Deliver(std::move(live[i]), std::move((*results)[i]));
      }
    }
    return live.size();
  }

  static double Seconds(Clock::Duration d) { return std::chrono::duration<double>(d).count(); }

  // Fails requests whose deadline passed while they were queued.
  void ExpireAll(std::vector<EntryPtr>& entries) {
    for (auto& e : entries) {
      Fail(std::move(e), core::DeadlineExceeded("deadline passed while queued"),
           FailureReason::kDeadline);
    }
    entries.clear();
  }
  void Fail(EntryPtr e, Result result, FailureReason reason) {
    metrics_.failure(reason).Inc();
    Deliver(std::move(e), std::move(result));
  }

  // Hands `result` to e's receiver; with preserve_ordering, only once every earlier accepted
  // request has had its result (requests refused on arrival have id 0 and never wait).
  void Deliver(EntryPtr e, Result result) {
    if (!options_.preserve_ordering || e->id == 0) {
      Hand(*e, std::move(result));
      return;
    }
    std::lock_guard<std::mutex> lock(order_mu_);
    const uint64_t id = e->id;
    held_.emplace(id, std::make_pair(std::move(e), std::move(result)));
    // Invariant: every id below next_delivery_ has been delivered.
    for (auto it = held_.begin(); it != held_.end() && it->first == next_delivery_;
         it = held_.erase(it), ++next_delivery_) {
      Hand(*it->second.first, std::move(it->second.second));
    }
  }
  static void Hand(Entry& e, Result result) {
    if (e.promise) {
      e.promise->Set(std::move(result));
    } else if (e.done) {
      e.done(std::move(result));
    }
  }

  DynamicBatcherOptions options_;
  const Backend backend_;
  Clock* const clock_;
  const int spare_cores_;  // cores beyond the worker threads, for waiters to spin on
  BatcherMetrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;                          // queue changed, slots freed, or stopping
  std::condition_variable timer_cv_;                    // a new earliest deadline, or stopping
  std::map<std::string, Bucket, std::less<>> buckets_;  // guarded by mu_; never shrinks
  std::set<std::pair<Clock::TimePoint, Entry*>> deadlines_;  // guarded by mu_; queued only
  std::vector<std::size_t> taken_scratch_;                   // guarded by mu_
  std::size_t queued_ = 0;                                   // guarded by mu_
  std::size_t inflight_ = 0;                                 // guarded by mu_
  uint64_t last_id_ = 0;                                     // guarded by mu_
  std::atomic<uint64_t> activity_{0};  // bumped under mu_ by Submit and Stop; spinning workers
                                       // watch it without mu_
  bool stopping_ = false;              // guarded by mu_
  Clock::TimePoint last_dispatch_{};   // guarded by mu_
  double drain_rate_ = 0;              // guarded by mu_; requests/s

  std::mutex order_mu_;
  uint64_t next_delivery_ = 1;                            // guarded by order_mu_
  std::map<uint64_t, std::pair<EntryPtr, Result>> held_;  // guarded by order_mu_

  std::mutex stop_mu_;                // serializes Stop()
  std::vector<std::thread> workers_;  // joined by Stop() under stop_mu_
  std::thread timer_;                 // expires deadlines; joined by Stop() under stop_mu_
};

}  // namespace megaserve::batching
