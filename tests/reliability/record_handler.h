// The "record" job handler shared by the reliability worker process and the in-process
// reliability tests: it works for a random while, then records its completion as one row of
// `reliability_completions`. That table has no unique constraint, so a job whose effects were
// applied twice shows up as two rows with the same job_id.
#pragma once

#include <unistd.h>

#include <chrono>
#include <random>
#include <string>

#include "core/status.h"
#include "core/time_format.h"
#include "jobs/workers.h"
#include "store/database.h"

namespace megaserve::reliability {

// The completions table, the same SQL on both engines.
inline constexpr std::string_view kCreateCompletionsSql =
    "CREATE TABLE reliability_completions (job_id TEXT NOT NULL, worker_pid BIGINT NOT NULL, "
    "fencing_token BIGINT NOT NULL, at BIGINT NOT NULL)";

// The job type the handler is registered for.
inline constexpr std::string_view kRecordType = "record";

struct RecordOptions {
  std::chrono::milliseconds max_work{3};  // each job works a uniform random 0..max_work
  // true: the row is inserted by JobContext::OnComplete, in the transaction that marks the job
  // succeeded. false: it is inserted by the handler before its work, in a transaction of its
  // own, as a handler unaware of the hook would; a worker killed mid-job then leaves a row
  // behind and the rerun adds a second one. Only the tests' negative control uses false.
  bool transactional = true;
};

namespace internal {

// Inserts the completion row of the job holding `token`, stamped with the current time.
inline core::Status InsertCompletion(store::Session& session, const std::string& job_id,
                                     int64_t token) {
  constexpr std::string_view kInsert =
      "INSERT INTO reliability_completions (job_id, worker_pid, fencing_token, at) "
      "VALUES ($1, $2, $3, $4)";
  const store::Params row = {job_id, static_cast<int64_t>(getpid()), token, core::NowMicros()};
  return session.Execute(kInsert, row).status();
}

}  // namespace internal

// Registers the "record" handler on `workers`; `db` is the database behind their queue and must
// outlive them.
inline void RegisterRecordHandler(jobs::Workers& workers, store::Database& db,
                                  RecordOptions options) {
  auto handler = [&db, options](jobs::JobContext& ctx) -> core::Result<std::string> {
    thread_local std::mt19937 rng{std::random_device{}()};
    const std::string id = ctx.job().id;
    const int64_t token = ctx.job().fencing_token;
    if (!options.transactional) {
      core::Status inserted =
          db.Transact([&](store::Session& s) { return internal::InsertCompletion(s, id, token); });
      if (!inserted.ok()) return inserted;
    }
    std::uniform_int_distribution<int64_t> work(0, options.max_work.count());
    if (!ctx.SleepFor(std::chrono::milliseconds(work(rng)))) {
      return core::Canceled("job " + id + " canceled");
    }
    if (options.transactional) {
      ctx.OnComplete(
          [id, token](store::Session& s) { return internal::InsertCompletion(s, id, token); });
    }
    return std::string("{}");
  };
  workers.Register(std::string(kRecordType), std::move(handler));
}

}  // namespace megaserve::reliability
