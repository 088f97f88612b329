// The durable job queue: jobs live in the `jobs` table of a store::Database (SQLite or
// PostgreSQL, same SQL), every state change is recorded in `job_events`.
//
// States. queued -> running -> succeeded | failed | canceled. A queued job becomes claimable
// once run_after <= now. Priority: LOWER values run first; ties go to the earlier run_after,
// then to the older id (ids are UUIDv7, so id order is creation order).
//
// Leases and fencing. Claim() hands a job to one worker for `lease` (lease_owner,
// lease_expires_at) and increments the job's fencing_token, returning the new value. Every
// later write by the worker (Heartbeat, Progress, Complete, Fail) is a conditional UPDATE
// "... WHERE id = $id AND status = 'running' AND fencing_token = $token", so it only takes
// effect while that token is still current. A lease can expire while its holder is paused (GC,
// swap, a partition); RescueExpired() then requeues the job and bumps the token, so when the old
// holder wakes up its writes match no row and fail with kFailedPrecondition instead of
// overwriting the new holder's work. This is the fencing-token scheme of M. Kleppmann, "How to do
// distributed locking" (2016) and "Designing Data-Intensive Applications", ch. 8: the storage
// itself rejects writes carrying an outdated token, so correctness does not depend on clocks or
// on the lease holder noticing its expiry in time. A token stays valid until the job is
// rescued or re-claimed, even if the lease has lapsed meanwhile.
//
// Claiming. On PostgreSQL, claimers select candidates with "FOR UPDATE SKIP LOCKED" inside the
// UPDATE (PostgreSQL docs, SELECT, "The Locking Clause"): rows another transaction is claiming
// are skipped rather than waited for, so concurrent workers take disjoint jobs without
// blocking. On SQLite, the whole claim runs inside BEGIN IMMEDIATE, which holds the single
// writer lock, so the same statement without SKIP LOCKED is already exclusive.
//
// Events. Each state change appends a job_events row (kinds: queued, started, progress,
// succeeded, failed, retry, canceled, cancel_requested) in the same transaction, with
// seq = max(seq) + 1 for that job. The job row is updated first in every transaction, so its
// row lock serializes the appends for one job and seq is gap-free and increasing.
//
// Cancelation. A queued job is canceled at once. The schema has no column for a cancel request
// on a running job, so one is recorded as a `cancel_requested` event: the job stays running,
// Job::cancel_requested reports it, Heartbeat answers kCanceled (the worker should stop), and
// when the worker then calls Fail, or its lease expires, the job ends `canceled` rather than
// being retried. A worker that completes anyway still succeeds.
//
// Idempotency. A job enqueued with an idempotency_key is unique per (type, key). Enqueueing
// again with the same input (compared by SHA-256 of input_json) returns the existing job; with a
// different input it fails with kAlreadyExists.
//
// Times are unix microseconds. All calls block; JobQueue is thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/status.h"
#include "jobs/coalescer.h"
#include "store/database.h"

namespace megaserve::jobs {

// The PostgreSQL notification channel a job becoming due is announced on; the payload is the
// job's queue. Workers LISTEN on it to claim at once instead of at their next poll.
inline constexpr std::string_view kJobsChannel = "megaserve_jobs";

enum class JobStatus { kQueued, kRunning, kSucceeded, kFailed, kCanceled };

// "queued", "running", "succeeded", "failed" or "canceled".
std::string_view JobStatusName(JobStatus status);
// The status named `name`; nullopt for an unknown name.
std::optional<JobStatus> ParseJobStatus(std::string_view name);

// What to enqueue.
struct NewJob {
  std::string type;  // required
  std::string queue = "default";
  int priority = 0;  // lower runs first
  std::string input_json = "{}";
  int max_attempts = 3;           // at least 1
  int64_t run_after_us = 0;       // not claimable before this time; 0 = now
  std::string idempotency_key{};  // "" = none
  std::string webhook_url{};      // "" = none
  std::string webhook_events{};   // "" = none
};

// One row of `jobs`. Optional columns that are NULL read as "" / 0, with has_* flags where the
// difference matters.
struct Job {
  std::string id;
  std::string type;
  std::string queue;
  JobStatus status = JobStatus::kQueued;
  int priority = 0;
  std::string input_json;
  std::string output_json;  // "" until succeeded
  std::string error;        // the last failure's message, "" if none
  int attempts = 0;         // claims so far
  int max_attempts = 0;
  int64_t run_after_us = 0;
  std::string lease_owner;          // "" when not running
  int64_t lease_expires_at_us = 0;  // 0 when not running
  int64_t fencing_token = 0;
  std::string idempotency_key{};
  std::string input_hash;  // hex SHA-256 of input_json when an idempotency key is set
  bool has_progress = false;
  double progress_value = 0;
  double progress_max = 0;
  std::string progress_message;
  std::string webhook_url{};
  std::string webhook_events{};
  int64_t created_at_us = 0;
  int64_t started_at_us = 0;    // when the latest attempt was claimed; 0 before
  int64_t completed_at_us = 0;  // 0 until terminal
  int64_t updated_at_us = 0;
  bool cancel_requested = false;  // running and asked to stop (a cancel_requested event exists)
};

// A job handed to this worker, with the token its later writes must carry.
struct Claimed {
  Job job;
  int64_t fencing_token = 0;
};

// One row of `job_events`.
struct JobEvent {
  std::string job_id;
  int64_t seq = 0;
  std::string kind;
  std::string data_json;  // "" when NULL
  int64_t created_at_us = 0;
};

// A page of List().
struct JobPage {
  std::vector<Job> jobs;
  std::string next_cursor;  // "" on the last page
};

class JobQueue {
 public:
  struct Options {
    std::chrono::milliseconds lease{30'000};       // how long a claim holds a job
    std::chrono::milliseconds retry_base{1'000};   // JobRetryDelay base
    std::chrono::milliseconds retry_cap{600'000};  // JobRetryDelay cap
    std::function<int64_t()> now_us;               // clock; unset = system clock
    uint64_t seed = 0;                             // jitter seed; 0 = random
    // PostgreSQL: concurrent Enqueue (without idempotency key), Claim and Complete (without
    // hook) calls on this queue share statements (group commit; see coalescer.h). Each call
    // keeps its own result and semantics.
    bool coalesce = true;
  };

  // `db` must already be migrated (store::Migrate) and outlive the queue. `worker_id` is
  // recorded as lease_owner on claims.
  JobQueue(store::Database& db, std::string worker_id, Options options);
  JobQueue(store::Database& db, std::string worker_id) : JobQueue(db, std::move(worker_id), {}) {}
  // Sends pending notifications' thread home; pending ones are dropped (workers also poll).
  ~JobQueue();
  // No copying allowed.
  JobQueue(const JobQueue&) = delete;
  JobQueue& operator=(const JobQueue&) = delete;

  // Inserts a queued job (and its `queued` event) and returns it. kInvalidArgument for an
  // empty type or max_attempts < 1. With an idempotency key already used for this type: the
  // existing job if its input is the same, kAlreadyExists otherwise.
  core::Result<Job> Enqueue(const NewJob& job);

  // Inserts several queued jobs at once, all or none (on PostgreSQL one statement, on SQLite one
  // transaction), for producers that batch: returns them in order. kInvalidArgument, inserting
  // nothing, when any is invalid or carries an idempotency key (use Enqueue for those).
  core::Result<std::vector<Job>> EnqueueMany(const std::vector<NewJob>& jobs);

  // Claims up to `max` due queued jobs of `queue` (any type when `types` is empty, else only
  // those types), best first: each becomes running with attempts + 1, a new fencing token and a
  // lease owned by this worker, and gets a `started` event. Returns fewer (possibly none) when
  // fewer are due; concurrent claimers never receive the same job.
  core::Result<std::vector<Claimed>> Claim(const std::string& queue,
                                           const std::vector<std::string>& types, int max);

  // Extends the lease to now + lease. kFailedPrecondition when the job is not running under
  // `token` any more (the caller must stop working on it); kCanceled, with the lease still
  // extended, when a cancel was requested (the caller should stop and call Fail).
  core::Status Heartbeat(const std::string& id, int64_t token);

  // Records progress (value of max, with a message) and a `progress` event.
  // kFailedPrecondition, writing nothing, unless running under `token`.
  core::Status Progress(const std::string& id, int64_t token, double value, double max,
                        const std::string& message);

  // Marks the job succeeded with `output_json`. kFailedPrecondition, writing nothing, unless
  // running under `token`. When `in_transaction` is set it runs inside the same transaction,
  // after the fenced update succeeded; an error from it rolls everything back and is returned.
  core::Status Complete(const std::string& id, int64_t token, const std::string& output_json,
                        const std::function<core::Status(store::Session&)>& in_transaction = {});

  // One job to acknowledge in CompleteMany.
  struct Ack {
    std::string id;
    int64_t token = 0;
    std::string output_json = "{}";
  };
  // Completes several jobs in one transaction (batched ack): the result has one status per ack,
  // in order, each what Complete would have returned for it. A store failure fails them all.
  core::Result<std::vector<core::Status>> CompleteMany(const std::vector<Ack>& acks);

  // Records a failed attempt with `error`: while attempts < max_attempts the job goes back to
  // queued, due after JobRetryDelay (a `retry` event); otherwise it ends failed keeping the
  // error (a `failed` event). A cancel-requested job ends canceled instead. kFailedPrecondition,
  // writing nothing, unless running under `token`.
  core::Status Fail(const std::string& id, int64_t token, const std::string& error);

  // Cancels a job: a queued one becomes canceled at once; a running one gets a cancel request
  // (see the file comment) and stays running. Returns the job afterwards. kNotFound for an
  // unknown id; kFailedPrecondition for a job already succeeded, failed or canceled.
  core::Result<Job> Cancel(const std::string& id);

  // Requeues running jobs whose lease has expired (immediately due), or ends them failed
  // ("lease expired") when out of attempts, or canceled when a cancel was requested; bumps their
  // fencing token either way. Returns how many jobs it rescued.
  core::Result<int> RescueExpired();

  // The job with `id`; kNotFound when there is none.
  core::Result<Job> Get(const std::string& id);

  // Jobs newest first, optionally only those with `status` and/or `type` ("" = any), at most
  // `limit` (1..1000) per page. Pass the previous page's next_cursor to continue; a cursor not
  // produced by List is kInvalidArgument. Pagination is by id (keyset), so jobs enqueued while
  // paging do not shift later pages.
  core::Result<JobPage> List(std::optional<JobStatus> status, const std::string& type, int limit,
                             const std::string& cursor);

  // Appends an event of `kind` with `data_json` ("" = NULL) to the job's log. kNotFound for an
  // unknown job.
  core::Status AppendEvent(const std::string& job_id, const std::string& kind,
                           const std::string& data_json);

  // The job's events with seq > after_seq, in seq order.
  core::Result<std::vector<JobEvent>> Events(const std::string& job_id, int64_t after_seq = 0);

  // Calls `listener` with the queue's name whenever this JobQueue makes a job due at once
  // (enqueued, or requeued by a rescue), after the change committed; on the calling thread, so it
  // must be quick (Workers::Wake). Other processes learn of it through kJobsChannel. Returns an
  // id for Unsubscribe.
  int Subscribe(std::function<void(const std::string& queue)> listener);
  void Unsubscribe(int id);

  // The store the queue lives in.
  store::Database& database() { return db_; }

 private:
  // Enqueue; on PostgreSQL a job without an idempotency key goes through enqueuer_ when
  // `coalesce` is set.
  core::Result<Job> EnqueueOne(const NewJob& spec, bool coalesce);
  // EnqueueMany, announcing the new work only when `announce` is set.
  core::Result<std::vector<Job>> InsertMany(const std::vector<NewJob>& jobs, bool announce);
  int64_t Now() const;
  int64_t RetryDelayUs(int attempts);
  // Database::Execute, rerun up to twice after a serialization failure or deadlock.
  core::Result<store::Rows> ExecuteRetrying(const std::string& sql, const store::Params& params);
  // A fenced state change of one job: `update` is an UPDATE ... WHERE <fenced> that increments
  // event_seq; appends the event `kind` with `data_json` and, when the job's filter asks for
  // `hook_event` ("" = none), a webhook delivery. kFailedPrecondition when no row matched. On
  // PostgreSQL without `in_transaction` this is a single statement.
  core::Status Transition(const std::string& id, int64_t token, std::string update,
                          store::Params params, std::string_view kind, const std::string& data_json,
                          std::string_view hook_event, int64_t now,
                          const std::function<core::Status(store::Session&)>& in_transaction);
  // After a commit that made jobs of `queue` due: tells this process's subscribers at once and,
  // on PostgreSQL, has the notifier thread NOTIFY kJobsChannel. Notifications pending together
  // are sent once per queue, so a burst of enqueues costs a few NOTIFYs, not one each.
  void Announce(const std::string& queue);
  void NotifyLoop();

  store::Database& db_;
  std::string worker_id_;
  Options options_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;  // guarded by rng_mu_
  std::mutex listeners_mu_;
  std::vector<std::pair<int, std::function<void(const std::string&)>>> listeners_;
  int last_listener_ = 0;  // guarded by listeners_mu_
  std::mutex notify_mu_;
  std::condition_variable notify_cv_;
  std::set<std::string> notify_pending_;  // guarded by notify_mu_
  bool notify_exit_ = false;              // guarded by notify_mu_
  std::thread notifier_;                  // started by the first Announce on PostgreSQL
  // PostgreSQL: concurrent Complete calls (without a hook) become one CompleteMany, concurrent
  // Enqueue calls (without an idempotency key) one EnqueueMany; see coalescer.h.
  static constexpr size_t kMaxCoalesced = 128;
  struct ClaimRequest {
    std::string queue;
    std::vector<std::string> types;
    int max = 0;
  };
  // Claim without coalescing.
  core::Result<std::vector<Claimed>> ClaimNow(const std::string& queue,
                                              const std::vector<std::string>& types, int max);
  std::unique_ptr<Coalescer<ClaimRequest, core::Result<std::vector<Claimed>>>> claimer_;
  std::unique_ptr<Coalescer<Ack, core::Status>> completer_;
  std::unique_ptr<Coalescer<NewJob, core::Result<Job>>> enqueuer_;
};

}  // namespace megaserve::jobs
