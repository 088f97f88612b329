#include "jobs/workers.h"

#include <rapidjson/document.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

namespace megaserve::jobs {

using Clock = std::chrono::steady_clock;
using core::Status;
using core::StatusCode;

namespace {

// The JobContext progress throttle: at most this many store writes per second.
constexpr auto kProgressWriteInterval = std::chrono::milliseconds(250);
// Used when a claim reports no usable lease length.
constexpr auto kFallbackHeartbeat = std::chrono::milliseconds(10'000);

}  // namespace

namespace internal {

// One claimed job, shared by the runner executing it, the heartbeat thread and its JobContext.
struct RunningJob {
  Job job;
  int64_t token = 0;
  std::chrono::milliseconds heartbeat_every{0};
  Clock::time_point next_heartbeat;  // guarded by Workers::Impl::mu_
  std::atomic<bool> canceled{false};
  std::atomic<bool> lease_lost{false};
  std::atomic<bool> stopping{false};  // canceled because the workers are stopping
  std::mutex mu;                      // pairs with cv for SleepFor
  std::condition_variable cv;

  // Flags the job canceled and wakes a handler sleeping in SleepFor.
  void Cancel() {
    {
      std::lock_guard<std::mutex> lock(mu);
      canceled = true;
    }
    cv.notify_all();
  }
};

}  // namespace internal

using internal::RunningJob;

// ---------------------------------------------------------------------------------------------
// JobContext

JobContext::JobContext(JobQueue& queue, std::shared_ptr<RunningJob> running)
    : queue_(queue), running_(std::move(running)) {}

JobContext::~JobContext() = default;

const Job& JobContext::job() const { return running_->job; }

bool JobContext::canceled() const { return running_->canceled.load(); }

Status JobContext::Progress(int64_t value, int64_t max, std::string_view message) {
  pending_ = true;
  pending_value_ = value;
  pending_max_ = max;
  pending_message_.assign(message);
  const auto now = Clock::now();
  if (last_write_ == Clock::time_point{} || now - last_write_ >= kProgressWriteInterval) {
    FlushProgress();
  }
  if (canceled()) return core::Canceled("job " + running_->job.id + " was canceled");
  return Status::Ok();
}

void JobContext::FlushProgress() {
  if (!pending_ || running_->lease_lost) return;
  pending_ = false;
  last_write_ = Clock::now();
  Status status =
      queue_.Progress(running_->job.id, running_->token, static_cast<double>(pending_value_),
                      static_cast<double>(pending_max_), pending_message_);
  if (status.code() == StatusCode::kFailedPrecondition) {
    running_->lease_lost = true;
    running_->Cancel();
  } else if (!status.ok()) {
    spdlog::warn("job {}: recording progress failed: {}", running_->job.id, status.ToString());
  }
}

void JobContext::OnComplete(std::function<Status(store::Session&)> hook) {
  on_complete_ = std::move(hook);
}

bool JobContext::SleepFor(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lock(running_->mu);
  return !running_->cv.wait_for(lock, d, [this] { return running_->canceled.load(); });
}

// ---------------------------------------------------------------------------------------------
// Workers::Impl

class Workers::Impl {
 public:
  Impl(JobQueue& queue, WorkersOptions options) : queue_(queue), options_(std::move(options)) {
    options_.concurrency = std::max(1, options_.concurrency);
  }

  struct Handler {
    JobHandler fn;
    int max_concurrency = 0;
  };

  // The cap for `type`: type_limits first, else what Register() was given; 0 = none.
  int Cap(const std::string& type, const Handler& handler) const {
    auto it = options_.type_limits.find(type);
    return it != options_.type_limits.end() ? it->second : handler.max_concurrency;
  }

  void Start();
  void Stop(std::chrono::milliseconds drain);
  void Wake();
  int running() const;

  JobQueue& queue_;
  WorkersOptions options_;
  // Written only before Start(), read without locking afterwards.
  std::map<std::string, Handler, std::less<>> handlers_;

 private:
  void DispatchLoop();
  void ListenLoop();
  void RunLoop();
  void HeartbeatLoop();
  // Runs one job's handler and writes its outcome.
  void Execute(const std::shared_ptr<RunningJob>& job);
  // Writes `status` of a Complete/Fail call to the log unless it is OK.
  void LogWrite(const RunningJob& job, const char* what, const Status& status);
  // How many jobs to claim now and of which types (see the scheduling rule in workers.h); 0
  // when nothing may be claimed. Requires mu_.
  int ClaimSize(std::vector<std::string>* types);
  // Tracks freshly claimed jobs and hands them to the runners. Requires mu_.
  void Admit(std::vector<Claimed> claimed);

  mutable std::mutex mu_;
  std::condition_variable dispatch_cv_;   // Wake(), a job finishing, Stop()
  std::condition_variable runner_cv_;     // ready_ grew, or runners must exit
  std::condition_variable idle_cv_;       // a job finished
  std::condition_variable heartbeat_cv_;  // a job was admitted, or the heartbeat must exit
  bool started_ = false;
  bool stopped_ = false;
  bool stop_claiming_ = false;
  bool aborting_ = false;
  bool runners_exit_ = false;
  bool heartbeat_exit_ = false;
  bool woken_ = false;
  std::deque<std::shared_ptr<RunningJob>> ready_;               // claimed, not yet picked up
  std::map<std::string, std::shared_ptr<RunningJob>> running_;  // claimed, unfinished, by id
  std::map<std::string, int, std::less<>> running_by_type_;     // counts of running_
  std::thread dispatcher_;
  std::thread heartbeater_;
  int subscription_ = 0;                       // JobQueue::Subscribe id
  std::unique_ptr<store::Listener> listener_;  // LISTEN connection, PostgreSQL only
  std::atomic<bool> listen_exit_{false};
  std::thread listen_thread_;
  std::vector<std::thread> runners_;
};

void Workers::Impl::Start() {
  // Subscribed before mu_ is taken: the queue calls its listeners (Wake, which takes mu_) while
  // holding its own listeners' lock, so subscribing under mu_ would take the two locks in both
  // orders, and an enqueue during Start() could deadlock.
  const int subscription = queue_.Subscribe([this](const std::string& queue) {
    if (queue == options_.queue) Wake();
  });
  std::unique_lock<std::mutex> lock(mu_);
  if (started_) {
    lock.unlock();
    queue_.Unsubscribe(subscription);
    return;
  }
  started_ = true;
  subscription_ = subscription;
  auto listener = queue_.database().Listen(std::string(kJobsChannel));
  if (listener.ok()) {
    listener_ = std::move(*listener);
    listen_thread_ = std::thread([this] { ListenLoop(); });
  }
  for (int i = 0; i < options_.concurrency; ++i) runners_.emplace_back([this] { RunLoop(); });
  heartbeater_ = std::thread([this] { HeartbeatLoop(); });
  dispatcher_ = std::thread([this] { DispatchLoop(); });
}

void Workers::Impl::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  dispatch_cv_.notify_one();
}

int Workers::Impl::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(running_.size());
}

void Workers::Impl::Stop(std::chrono::milliseconds drain) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_ || stopped_) return;
  stopped_ = true;
  stop_claiming_ = true;
  dispatch_cv_.notify_all();
  lock.unlock();
  queue_.Unsubscribe(subscription_);
  if (listener_) {
    listen_exit_ = true;
    listener_->Interrupt();
    listen_thread_.join();
  }
  dispatcher_.join();  // after this no job is claimed any more
  lock.lock();
  idle_cv_.wait_for(lock, drain, [this] { return running_.empty(); });
  aborting_ = true;
  for (auto& [id, job] : running_) {
    job->stopping = true;
    job->Cancel();
  }
  runners_exit_ = true;
  runner_cv_.notify_all();
  lock.unlock();
  for (std::thread& t : runners_) t.join();
  lock.lock();
  heartbeat_exit_ = true;
  heartbeat_cv_.notify_all();
  lock.unlock();
  heartbeater_.join();
}

int Workers::Impl::ClaimSize(std::vector<std::string>* types) {
  types->clear();
  int n = options_.concurrency - static_cast<int>(running_.size());
  if (n <= 0) return 0;
  for (const auto& [type, handler] : handlers_) {
    if (const int cap = Cap(type, handler); cap > 0) {
      auto it = running_by_type_.find(type);
      const int busy = it == running_by_type_.end() ? 0 : it->second;
      if (busy >= cap) continue;
      n = std::min(n, cap - busy);
    }
    types->push_back(type);
  }
  return types->empty() ? 0 : n;
}

void Workers::Impl::Admit(std::vector<Claimed> claimed) {
  const auto now = Clock::now();
  for (Claimed& c : claimed) {
    auto job = std::make_shared<RunningJob>();
    job->token = c.fencing_token;
    job->job = std::move(c.job);
    std::chrono::milliseconds every = options_.heartbeat_interval;
    if (every.count() <= 0) {
      const int64_t lease_us = job->job.lease_expires_at_us - job->job.started_at_us;
      every = lease_us > 0 ? std::chrono::milliseconds(lease_us / 3000) : kFallbackHeartbeat;
      every = std::max(every, std::chrono::milliseconds(1));
    }
    job->heartbeat_every = every;
    job->next_heartbeat = now + every;
    running_by_type_[job->job.type]++;
    running_[job->job.id] = job;
    ready_.push_back(std::move(job));
  }
  runner_cv_.notify_all();
  heartbeat_cv_.notify_one();
}

void Workers::Impl::DispatchLoop() {
  auto next_rescue = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_claiming_) {
    if (Clock::now() >= next_rescue) {
      lock.unlock();
      auto rescued = queue_.RescueExpired();
      if (!rescued.ok()) {
        spdlog::warn("jobs: rescuing expired leases failed: {}", rescued.status().ToString());
      } else if (*rescued > 0) {
        spdlog::info("jobs: requeued {} job(s) whose lease expired", *rescued);
      }
      lock.lock();
      next_rescue = Clock::now() + options_.rescue_interval;
    }
    woken_ = false;  // a Wake() from here on triggers another round
    std::vector<std::string> types;
    for (int n = ClaimSize(&types); n > 0 && !stop_claiming_; n = ClaimSize(&types)) {
      lock.unlock();
      auto claimed = queue_.Claim(options_.queue, types, n);
      lock.lock();
      if (!claimed.ok()) {
        spdlog::warn("jobs: claiming from queue {} failed: {}", options_.queue,
                     claimed.status().ToString());
        break;
      }
      const bool full = static_cast<int>(claimed->size()) == n;
      if (!claimed->empty()) Admit(std::move(*claimed));
      if (!full) break;  // the queue has nothing more due for us
    }
    const auto wake_at = std::min(Clock::now() + options_.poll_interval, next_rescue);
    dispatch_cv_.wait_until(lock, wake_at, [this] { return stop_claiming_ || woken_; });
  }
}

void Workers::Impl::ListenLoop() {
  bool reported = false;
  while (!listen_exit_) {
    auto notified = listener_->Wait(options_.poll_interval);
    if (!notified.ok()) {
      // Polling carries on meanwhile; the listener reconnects on the next Wait.
      if (!reported)
        spdlog::warn("jobs: LISTEN {}: {}", kJobsChannel, notified.status().ToString());
      reported = true;
      continue;
    }
    reported = false;
    for (const std::string& queue : *notified) {
      if (queue == options_.queue) {
        Wake();
        break;
      }
    }
  }
}

void Workers::Impl::RunLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    runner_cv_.wait(lock, [this] { return runners_exit_ || !ready_.empty(); });
    if (ready_.empty()) return;  // exiting, and every claimed job has been taken
    std::shared_ptr<RunningJob> job = std::move(ready_.front());
    ready_.pop_front();
    if (aborting_) {
      job->stopping = true;
      job->Cancel();
    }
    lock.unlock();
    Execute(job);
    lock.lock();
    running_.erase(job->job.id);
    if (--running_by_type_[job->job.type] <= 0) running_by_type_.erase(job->job.type);
    woken_ = true;  // a slot is free: claim the next job now
    dispatch_cv_.notify_one();
    idle_cv_.notify_all();
  }
}

namespace {

// Runs `handler`, turning an exception into an error.
core::Result<std::string> RunHandler(const JobHandler& handler, JobContext& context) {
  try {
    return handler(context);
  } catch (const std::exception& e) {
    return core::Internal(std::string("handler threw: ") + e.what());
  } catch (...) {
    return core::Internal("handler threw a non-standard exception");
  }
}

bool IsJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.data(), text.size());
  return !doc.HasParseError();
}

}  // namespace

void Workers::Impl::Execute(const std::shared_ptr<RunningJob>& job) {
  const std::string& id = job->job.id;
  if (job->stopping) {
    // Claimed while stopping: hand it back without running it.
    LogWrite(*job, "fail", queue_.Fail(id, job->token, "worker stopping"));
    return;
  }
  auto handler = handlers_.find(job->job.type);
  core::Result<std::string> result = core::Internal("no handler for job type " + job->job.type);
  JobContext context(queue_, job);
  if (handler != handlers_.end()) result = RunHandler(handler->second.fn, context);
  context.FlushProgress();
  if (job->lease_lost) {
    // Another worker may own the job now; our result must not be written.
    spdlog::warn("job {}: lease lost while running; result discarded", id);
    return;
  }
  if (result.ok()) {
    std::string output = result.value().empty() ? "{}" : std::move(result.value());
    if (IsJson(output)) {
      LogWrite(*job, "complete", queue_.Complete(id, job->token, output, context.on_complete_));
      return;
    }
    result = core::Internal("handler returned output that is not JSON");
  }
  Status error = result.status();
  std::string message = error.message().empty() ? error.ToString() : error.message();
  if (job->stopping) message = "worker stopping: " + message;
  LogWrite(*job, "fail", queue_.Fail(id, job->token, message));
}

void Workers::Impl::LogWrite(const RunningJob& job, const char* what, const Status& status) {
  if (status.ok()) return;
  // A lost lease (kFailedPrecondition) is expected after a rescue; anything else is the store's
  // trouble, and the lease will expire and the job be rescued.
  spdlog::warn("job {}: {} failed: {}", job.job.id, what, status.ToString());
}

void Workers::Impl::HeartbeatLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!heartbeat_exit_) {
    const auto now = Clock::now();
    auto next = now + std::chrono::seconds(1);
    std::vector<std::shared_ptr<RunningJob>> due;
    for (auto& [id, job] : running_) {
      if (job->next_heartbeat <= now) {
        due.push_back(job);
        job->next_heartbeat = now + job->heartbeat_every;
      }
      next = std::min(next, job->next_heartbeat);
    }
    if (due.empty()) {
      heartbeat_cv_.wait_until(lock, next);
      continue;
    }
    lock.unlock();
    for (const auto& job : due) {
      if (job->lease_lost) continue;
      Status status = queue_.Heartbeat(job->job.id, job->token);
      if (status.code() == StatusCode::kCanceled) {
        job->Cancel();
      } else if (status.code() == StatusCode::kFailedPrecondition) {
        job->lease_lost = true;
        job->Cancel();
      } else if (!status.ok()) {
        spdlog::warn("job {}: heartbeat failed: {}", job->job.id, status.ToString());
      }
    }
    lock.lock();
  }
}

// ---------------------------------------------------------------------------------------------
// Workers

Workers::Workers(JobQueue& queue, WorkersOptions options)
    : impl_(std::make_unique<Impl>(queue, std::move(options))) {}

Workers::~Workers() { Stop(std::chrono::milliseconds(0)); }

void Workers::Register(std::string type, JobHandler handler, int max_concurrency) {
  impl_->handlers_[std::move(type)] = {std::move(handler), std::max(0, max_concurrency)};
}

bool Workers::Handles(std::string_view type) const {
  return impl_->handlers_.find(type) != impl_->handlers_.end();
}

std::vector<std::string> Workers::types() const {
  std::vector<std::string> out;
  for (const auto& [type, handler] : impl_->handlers_) out.push_back(type);
  return out;
}

void Workers::Start() { impl_->Start(); }

void Workers::Wake() { impl_->Wake(); }

void Workers::Stop(std::chrono::milliseconds drain) { impl_->Stop(drain); }

int Workers::running() const { return impl_->running(); }

}  // namespace megaserve::jobs
