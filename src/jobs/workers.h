// In-process job workers: run the handlers registered for job types on jobs claimed from a
// JobQueue.
//
// Threads. One dispatcher claims jobs and hands them to a fixed pool of `concurrency` runner
// threads; one heartbeat thread renews the leases of the running jobs. All store calls block, so
// they run on these threads and never on the HTTP I/O threads.
//
// Scheduling rule. The dispatcher claims only when a runner slot is free, and only for the
// registered types that are under their per-type cap. It claims in batches of
//   n = min(free slots, min over the eligible capped types of (cap - running of that type))
// across all eligible types at once, so the queue's own order (priority, run_after, age) decides
// between types, and no capped type can exceed its cap even if the whole batch is of that type.
// It repeats while slots are free and the queue keeps returning full batches, then sleeps until
// Wake(), a job finishing, or poll_interval. RescueExpired() runs every rescue_interval. Wake()
// comes from the JobQueue when this process enqueues or requeues a job, and, on PostgreSQL, from a
// listener thread holding a LISTEN connection on kJobsChannel, which every enqueue notifies.
//
// Leases. Each running job is heartbeated every heartbeat_interval (by default a third of the
// lease its claim was granted). A kCanceled answer means a cancel was requested: the handler is
// told through JobContext::canceled() and its job ends canceled when it returns with an error.
// A kFailedPrecondition answer means the lease was lost (another worker may hold the job now):
// the handler is told to stop and its result is discarded, never written. The store's fencing
// token rejects such writes anyway (see job_queue.h); not sending them avoids the noise.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "jobs/job_queue.h"

namespace megaserve::jobs {

namespace internal {
struct RunningJob;
}  // namespace internal

// What a handler sees of its job; used from the handler's thread only.
class JobContext {
 public:
  // No copying allowed.
  JobContext(const JobContext&) = delete;
  JobContext& operator=(const JobContext&) = delete;
  ~JobContext();

  // The job as claimed (attempts and fencing_token already counted for this attempt).
  const Job& job() const;

  // Records progress (value of max, with a message). Writes reach the store at most 4 times a
  // second; the latest value is kept and flushed before the job ends. Returns kCanceled once
  // cancellation was requested or the lease was lost (the handler should return), else OK; a
  // failed store write is logged, not returned.
  core::Status Progress(int64_t value, int64_t max, std::string_view message);

  // True once a cancel was requested (learned from the heartbeat), the lease was lost, or the
  // workers are stopping.
  bool canceled() const;

  // Sleeps up to `d`; returns false early if canceled (at once if already canceled), true after
  // sleeping the whole time.
  bool SleepFor(std::chrono::milliseconds d);

  // Sets writes to make in the job store in the same transaction that marks this job succeeded
  // (JobQueue::Complete's `in_transaction`): they commit if and only if the completion does, so a
  // handler's effects in the store happen exactly once even when a worker dies mid-job and the
  // job is run again. Replaces an earlier hook; ignored when the handler returns an error.
  void OnComplete(std::function<core::Status(store::Session&)> hook);

 private:
  friend class Workers;
  JobContext(JobQueue& queue, std::shared_ptr<internal::RunningJob> running);
  // Writes the kept progress value, if any, to the store.
  void FlushProgress();

  JobQueue& queue_;
  std::shared_ptr<internal::RunningJob> running_;
  std::chrono::steady_clock::time_point last_write_{};
  bool pending_ = false;
  int64_t pending_value_ = 0;
  int64_t pending_max_ = 0;
  std::string pending_message_;
  std::function<core::Status(store::Session&)> on_complete_;
};

// Returns the output JSON (an object or any JSON value, as text) or an error, after which the job
// fails (and is retried while attempts remain).
using JobHandler = std::function<core::Result<std::string>(JobContext&)>;

struct WorkersOptions {
  std::string queue = "default";
  int concurrency = 4;                              // jobs running at once in this process
  std::chrono::milliseconds poll_interval{200};     // claim attempt when idle and not woken
  std::chrono::milliseconds heartbeat_interval{0};  // 0 = a third of the queue's lease
  std::chrono::milliseconds rescue_interval{5000};  // RescueExpired cadence
  // Per-type caps that replace Register()'s max_concurrency for those types (config:
  // jobs.type_concurrency).
  std::map<std::string, int, std::less<>> type_limits;
};

class Workers {
 public:
  // `queue` must outlive the workers.
  explicit Workers(JobQueue& queue, WorkersOptions options = {});
  // Stop(0) if running.
  ~Workers();
  // No copying allowed.
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;

  // Registers `handler` for jobs of `type`, replacing an earlier one; max_concurrency 0 = only
  // the global limit, else at most that many jobs of this type run at once in this process.
  // Call before Start().
  void Register(std::string type, JobHandler handler, int max_concurrency = 0);

  // True when a handler is registered for `type`.
  bool Handles(std::string_view type) const;

  // The registered types, sorted.
  std::vector<std::string> types() const;

  // Starts the dispatcher, runner and heartbeat threads. Does nothing if already started or
  // stopped.
  void Start();

  // A job was enqueued in this process: claim now instead of at the next poll.
  void Wake();

  // Stops claiming; waits up to `drain` for running jobs, then signals them canceled and waits
  // for their handlers to return. Their jobs are failed ("worker stopping"), so they are retried
  // later while attempts remain, or end canceled when a cancel was requested (JobQueue rules).
  // Idempotent; does nothing before Start().
  void Stop(std::chrono::milliseconds drain);

  // Jobs claimed by this process and not finished yet.
  int running() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace megaserve::jobs
