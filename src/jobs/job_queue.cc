// The job queue over store::Database; see job_queue.h for the lease/fencing protocol.
#include "jobs/job_queue.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>
#include <tuple>

#include "core/ids.h"
#include "core/time_format.h"
#include "jobs/backoff.h"

namespace megaserve::jobs {
namespace {

using core::Result;
using core::Status;
using core::StatusCode;
using store::Engine;
using store::Params;
using store::Rows;
using store::Session;
using store::Value;

// Every column of `jobs`, in Job order, then whether a cancel was requested.
#define MEGASERVE_JOB_ROW_COLUMNS                                                             \
  "id, type, queue, status, priority, input, output, error, attempts, max_attempts, "         \
  "run_after, lease_owner, lease_expires_at, fencing_token, idempotency_key, input_hash, "    \
  "progress_value, progress_max, progress_message, webhook_url, webhook_events, created_at, " \
  "started_at, completed_at, updated_at, "
constexpr std::string_view kJobColumns = MEGASERVE_JOB_ROW_COLUMNS
    "CASE WHEN EXISTS (SELECT 1 FROM job_events e WHERE e.job_id = jobs.id AND "
    "e.kind = 'cancel_requested') THEN 1 ELSE 0 END";
// The same columns for RETURNING right after a claim, when no cancel can have been requested
// yet (a queued job is canceled outright), so the row comes back without a second query.
constexpr std::string_view kClaimedColumns = MEGASERVE_JOB_ROW_COLUMNS "0";
#undef MEGASERVE_JOB_ROW_COLUMNS

// The guard of every write made under a lease: $1 is the id, $2 the fencing token.
constexpr std::string_view kFenced = "id = $1 AND status = 'running' AND fencing_token = $2";

// The events table's next seq for the job is computed in the INSERT itself. Casts keep
// PostgreSQL from typing the untyped text parameters of the SELECT list as text.
constexpr std::string_view kAppendEvent =
    "INSERT INTO job_events (job_id, seq, kind, data, created_at) "
    "SELECT CAST($1 AS TEXT), COALESCE(MAX(seq), 0) + 1, CAST($2 AS TEXT), CAST($3 AS TEXT), "
    "CAST($4 AS BIGINT) FROM job_events WHERE job_id = $1";

Status FailedPrecondition(std::string message) {
  return Status(StatusCode::kFailedPrecondition, std::move(message));
}

Status NotLeased(const std::string& id, int64_t token) {
  return FailedPrecondition(fmt::format("job {} is not running under fencing token {}", id, token));
}

Value TextOrNull(const std::string& s) {
  if (s.empty()) return std::monostate{};
  return s;
}

Job JobFromRow(const Rows& rows, size_t r) {
  Job job;
  size_t c = 0;
  job.id = rows.GetText(r, c++);
  job.type = rows.GetText(r, c++);
  job.queue = rows.GetText(r, c++);
  job.status = ParseJobStatus(rows.GetText(r, c++)).value_or(JobStatus::kQueued);
  job.priority = static_cast<int>(rows.GetInt(r, c++));
  job.input_json = rows.GetText(r, c++);
  job.output_json = rows.GetText(r, c++);
  job.error = rows.GetText(r, c++);
  job.attempts = static_cast<int>(rows.GetInt(r, c++));
  job.max_attempts = static_cast<int>(rows.GetInt(r, c++));
  job.run_after_us = rows.GetInt(r, c++);
  job.lease_owner = rows.GetText(r, c++);
  job.lease_expires_at_us = rows.GetInt(r, c++);
  job.fencing_token = rows.GetInt(r, c++);
  job.idempotency_key = rows.GetText(r, c++);
  job.input_hash = rows.GetText(r, c++);
  job.has_progress = !rows.IsNull(r, c);
  job.progress_value = rows.GetDouble(r, c++);
  job.progress_max = rows.GetDouble(r, c++);
  job.progress_message = rows.GetText(r, c++);
  job.webhook_url = rows.GetText(r, c++);
  job.webhook_events = rows.GetText(r, c++);
  job.created_at_us = rows.GetInt(r, c++);
  job.started_at_us = rows.GetInt(r, c++);
  job.completed_at_us = rows.GetInt(r, c++);
  job.updated_at_us = rows.GetInt(r, c++);
  job.cancel_requested = rows.GetInt(r, c++) != 0 && job.status == JobStatus::kRunning;
  return job;
}

Result<Job> LoadJob(Session& s, const std::string& id) {
  auto rows = s.Execute(fmt::format("SELECT {} FROM jobs WHERE id = $1", kJobColumns), {id});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return core::NotFound(fmt::format("job {} not found", id));
  return JobFromRow(*rows, 0);
}

Status AppendEventIn(Session& s, const std::string& job_id, std::string_view kind,
                     const std::string& data_json, int64_t now) {
  return s.Execute(kAppendEvent, {job_id, std::string(kind), TextOrNull(data_json), now}).status();
}

// A small JSON object writer for event payloads.
class JsonObject {
 public:
  JsonObject() { w_.StartObject(); }
  JsonObject& Str(const char* key, const std::string& v) {
    w_.Key(key);
    w_.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
    return *this;
  }
  JsonObject& Int(const char* key, int64_t v) {
    w_.Key(key);
    w_.Int64(v);
    return *this;
  }
  JsonObject& Num(const char* key, double v) {
    w_.Key(key);
    w_.Double(v);
    return *this;
  }
  std::string Done() {
    w_.EndObject();
    return buf_.GetString();
  }

 private:
  rapidjson::StringBuffer buf_;
  rapidjson::Writer<rapidjson::StringBuffer> w_{buf_};
};

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  std::string out;
  out.reserve(len * 2);
  for (unsigned int i = 0; i < len; ++i) out += fmt::format("{:02x}", digest[i]);
  return out;
}

// Cursors are "j" + the last id's 32 hex digits; opaque to callers.
std::string EncodeCursor(const std::string& id) {
  std::string out = "j";
  for (char ch : id) {
    if (ch != '-') out += ch;
  }
  return out;
}

std::optional<std::string> DecodeCursor(const std::string& cursor) {
  if (cursor.size() != 33 || cursor[0] != 'j') return std::nullopt;
  std::string id;
  for (size_t i = 1; i < cursor.size(); ++i) {
    if (i == 9 || i == 13 || i == 17 || i == 21) id += '-';
    char ch = cursor[i];
    if (!std::isxdigit(static_cast<unsigned char>(ch))) return std::nullopt;
    id += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  if (!core::IsUuid(id)) return std::nullopt;
  return id;
}

}  // namespace

std::string_view JobStatusName(JobStatus status) {
  switch (status) {
    case JobStatus::kQueued:
      return "queued";
    case JobStatus::kRunning:
      return "running";
    case JobStatus::kSucceeded:
      return "succeeded";
    case JobStatus::kFailed:
      return "failed";
    case JobStatus::kCanceled:
      return "canceled";
  }
  return "queued";
}

std::optional<JobStatus> ParseJobStatus(std::string_view name) {
  for (JobStatus s : {JobStatus::kQueued, JobStatus::kRunning, JobStatus::kSucceeded,
                      JobStatus::kFailed, JobStatus::kCanceled}) {
    if (JobStatusName(s) == name) return s;
  }
  return std::nullopt;
}

JobQueue::JobQueue(store::Database& db, std::string worker_id, Options options)
    : db_(db),
      worker_id_(std::move(worker_id)),
      options_(std::move(options)),
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()) {}

int64_t JobQueue::Now() const {
  if (options_.now_us) return options_.now_us();
  return core::NowMicros();
}

int64_t JobQueue::RetryDelayUs(int attempts) {
  std::lock_guard lock(rng_mu_);
  auto delay = JobRetryDelay(attempts - 1, options_.retry_base, options_.retry_cap, rng_);
  return std::chrono::duration_cast<std::chrono::microseconds>(delay).count();
}

Result<Job> JobQueue::Enqueue(const NewJob& spec) {
  if (spec.type.empty()) return core::InvalidArgument("job type is required");
  if (spec.max_attempts < 1) return core::InvalidArgument("max_attempts must be at least 1");
  const int64_t now = Now();
  const std::string id = core::NewUuidV7();
  const bool keyed = !spec.idempotency_key.empty();
  const std::string hash = keyed ? Sha256Hex(spec.input_json) : "";
  std::string sql =
      "INSERT INTO jobs (id, type, queue, status, priority, input, max_attempts, run_after, "
      "idempotency_key, input_hash, webhook_url, webhook_events, created_at, updated_at) "
      "VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)";
  // A concurrent insert of the same key waits for the other and then does nothing, so the
  // existing row is read below instead of the transaction aborting on a unique violation.
  if (keyed) sql += " ON CONFLICT (type, idempotency_key) DO NOTHING";
  Params params = {id,
                   spec.type,
                   spec.queue,
                   int64_t{spec.priority},
                   spec.input_json,
                   int64_t{spec.max_attempts},
                   spec.run_after_us > 0 ? spec.run_after_us : now,
                   TextOrNull(spec.idempotency_key),
                   TextOrNull(hash),
                   TextOrNull(spec.webhook_url),
                   TextOrNull(spec.webhook_events),
                   now};
  Job out;
  Status status = db_.Transact([&](Session& s) -> Status {
    auto inserted = s.Execute(sql, params);
    if (!inserted.ok()) return inserted.status();
    if (inserted->affected_rows() == 0) {
      auto rows = s.Execute(
          fmt::format("SELECT {} FROM jobs WHERE type = $1 AND idempotency_key = $2", kJobColumns),
          {spec.type, spec.idempotency_key});
      if (!rows.ok()) return rows.status();
      if (rows->empty()) return core::Internal("idempotent insert found no existing job");
      out = JobFromRow(*rows, 0);
      if (out.input_hash != hash) {
        return Status(
            StatusCode::kAlreadyExists,
            fmt::format("idempotency key reused with a different input (job {})", out.id));
      }
      return Status::Ok();
    }
    Status appended = AppendEventIn(s, id, "queued", "", now);
    if (!appended.ok()) return appended;
    // Every column of the new row is known here; reading it back would cost a round trip.
    out = Job{};
    out.id = id;
    out.type = spec.type;
    out.queue = spec.queue;
    out.status = JobStatus::kQueued;
    out.priority = spec.priority;
    out.input_json = spec.input_json;
    out.max_attempts = spec.max_attempts;
    out.run_after_us = spec.run_after_us > 0 ? spec.run_after_us : now;
    out.idempotency_key = spec.idempotency_key;
    out.input_hash = hash;
    out.webhook_url = spec.webhook_url;
    out.webhook_events = spec.webhook_events;
    out.created_at_us = now;
    out.updated_at_us = now;
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return out;
}

Result<std::vector<Claimed>> JobQueue::Claim(const std::string& queue,
                                             const std::vector<std::string>& types, int max) {
  if (max <= 0) return std::vector<Claimed>{};
  const int64_t now = Now();
  const int64_t expires =
      now + std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count();
  Params params = {worker_id_, expires, now, queue, int64_t{max}};
  std::string type_filter;
  for (size_t i = 0; i < types.size(); ++i) {
    type_filter += fmt::format("{}${}", i == 0 ? " AND type IN (" : ", ", params.size() + 1);
    params.push_back(types[i]);
  }
  if (!types.empty()) type_filter += ")";
  const bool postgres = db_.engine() == Engine::kPostgres;
  const std::string sql = fmt::format(
      "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1, "
      "lease_expires_at = $2, fencing_token = fencing_token + 1, started_at = $3, "
      "updated_at = $3 WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND queue = $4 "
      "AND run_after <= $3{} ORDER BY priority, run_after, id LIMIT $5{}) RETURNING {}",
      type_filter, postgres ? " FOR UPDATE SKIP LOCKED" : "", kClaimedColumns);
  std::vector<Claimed> out;
  Status status = db_.Transact([&](Session& s) -> Status {
    out.clear();
    auto rows = s.Execute(sql, params);
    if (!rows.ok()) return rows.status();
    for (size_t r = 0; r < rows->size(); ++r) {
      Job job = JobFromRow(*rows, r);
      Status appended = AppendEventIn(
          s, job.id, "started",
          JsonObject().Int("attempt", job.attempts).Str("worker", worker_id_).Done(), now);
      if (!appended.ok()) return appended;
      int64_t token = job.fencing_token;
      out.push_back({std::move(job), token});
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  std::sort(out.begin(), out.end(), [](const Claimed& a, const Claimed& b) {
    return std::tie(a.job.priority, a.job.run_after_us, a.job.id) <
           std::tie(b.job.priority, b.job.run_after_us, b.job.id);
  });
  return out;
}

Status JobQueue::Heartbeat(const std::string& id, int64_t token) {
  const int64_t now = Now();
  const int64_t expires =
      now + std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count();
  bool cancel_requested = false;
  Status status = db_.Transact([&](Session& s) -> Status {
    auto updated = s.Execute(
        fmt::format("UPDATE jobs SET lease_expires_at = $3, updated_at = $4 WHERE {}", kFenced),
        {id, token, expires, now});
    if (!updated.ok()) return updated.status();
    if (updated->affected_rows() == 0) return NotLeased(id, token);
    auto job = LoadJob(s, id);
    if (!job.ok()) return job.status();
    cancel_requested = job->cancel_requested;
    return Status::Ok();
  });
  if (!status.ok()) return status;
  if (cancel_requested) return core::Canceled(fmt::format("job {}: cancel requested", id));
  return Status::Ok();
}

Status JobQueue::Progress(const std::string& id, int64_t token, double value, double max,
                          const std::string& message) {
  const int64_t now = Now();
  return db_.Transact([&](Session& s) -> Status {
    auto updated = s.Execute(fmt::format("UPDATE jobs SET progress_value = $3, progress_max = $4, "
                                         "progress_message = $5, updated_at = $6 WHERE {}",
                                         kFenced),
                             {id, token, value, max, message, now});
    if (!updated.ok()) return updated.status();
    if (updated->affected_rows() == 0) return NotLeased(id, token);
    return AppendEventIn(
        s, id, "progress",
        JsonObject().Num("value", value).Num("max", max).Str("message", message).Done(), now);
  });
}

Status JobQueue::Complete(const std::string& id, int64_t token, const std::string& output_json) {
  const int64_t now = Now();
  return db_.Transact([&](Session& s) -> Status {
    auto updated = s.Execute(
        fmt::format("UPDATE jobs SET status = 'succeeded', output = $3, lease_owner = NULL, "
                    "lease_expires_at = NULL, completed_at = $4, updated_at = $4 WHERE {}",
                    kFenced),
        {id, token, output_json, now});
    if (!updated.ok()) return updated.status();
    if (updated->affected_rows() == 0) return NotLeased(id, token);
    return AppendEventIn(s, id, "succeeded", "", now);
  });
}

Status JobQueue::Fail(const std::string& id, int64_t token, const std::string& error) {
  const int64_t now = Now();
  return db_.Transact([&](Session& s) -> Status {
    // The fenced write comes first: it checks the token and locks the row for what follows.
    auto updated =
        s.Execute(fmt::format("UPDATE jobs SET error = $3, updated_at = $4 WHERE {}", kFenced),
                  {id, token, error, now});
    if (!updated.ok()) return updated.status();
    if (updated->affected_rows() == 0) return NotLeased(id, token);
    auto job = LoadJob(s, id);
    if (!job.ok()) return job.status();
    const std::string data = JsonObject().Int("attempt", job->attempts).Str("error", error).Done();
    if (job->cancel_requested) {
      auto done = s.Execute(
          "UPDATE jobs SET status = 'canceled', lease_owner = NULL, lease_expires_at = NULL, "
          "completed_at = $2, updated_at = $2 WHERE id = $1",
          {id, now});
      if (!done.ok()) return done.status();
      return AppendEventIn(s, id, "canceled", data, now);
    }
    if (job->attempts < job->max_attempts) {
      const int64_t run_after = now + RetryDelayUs(job->attempts);
      auto requeued = s.Execute(
          "UPDATE jobs SET status = 'queued', run_after = $2, lease_owner = NULL, "
          "lease_expires_at = NULL, updated_at = $3 WHERE id = $1",
          {id, run_after, now});
      if (!requeued.ok()) return requeued.status();
      return AppendEventIn(s, id, "retry",
                           JsonObject()
                               .Int("attempt", job->attempts)
                               .Str("error", error)
                               .Int("run_after", run_after)
                               .Done(),
                           now);
    }
    auto failed = s.Execute(
        "UPDATE jobs SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL, "
        "completed_at = $2, updated_at = $2 WHERE id = $1",
        {id, now});
    if (!failed.ok()) return failed.status();
    return AppendEventIn(s, id, "failed", data, now);
  });
}

Result<Job> JobQueue::Cancel(const std::string& id) {
  const int64_t now = Now();
  Job out;
  Status status = db_.Transact([&](Session& s) -> Status {
    auto canceled = s.Execute(
        "UPDATE jobs SET status = 'canceled', completed_at = $2, updated_at = $2 "
        "WHERE id = $1 AND status = 'queued'",
        {id, now});
    if (!canceled.ok()) return canceled.status();
    if (canceled->affected_rows() == 1) {
      Status appended = AppendEventIn(s, id, "canceled", "", now);
      if (!appended.ok()) return appended;
    } else {
      // Touching the row locks it, so a concurrent Fail or rescue sees the request or precedes it.
      auto running = s.Execute(
          "UPDATE jobs SET updated_at = $2 WHERE id = $1 AND status = 'running'", {id, now});
      if (!running.ok()) return running.status();
      if (running->affected_rows() == 0) {
        auto job = LoadJob(s, id);
        if (!job.ok()) return job.status();
        return FailedPrecondition(
            fmt::format("job {} is already {}", id, JobStatusName(job->status)));
      }
      auto job = LoadJob(s, id);
      if (!job.ok()) return job.status();
      if (!job->cancel_requested) {
        Status appended = AppendEventIn(s, id, "cancel_requested", "", now);
        if (!appended.ok()) return appended;
      }
    }
    auto job = LoadJob(s, id);
    if (!job.ok()) return job.status();
    out = std::move(*job);
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return out;
}

Result<int> JobQueue::RescueExpired() {
  const int64_t now = Now();
  const bool postgres = db_.engine() == Engine::kPostgres;
  int rescued = 0;
  Status status = db_.Transact([&](Session& s) -> Status {
    rescued = 0;
    auto expired = s.Execute(
        fmt::format("SELECT {} FROM jobs WHERE status = 'running' AND lease_expires_at < $1 "
                    "ORDER BY lease_expires_at LIMIT 1000{}",
                    kJobColumns, postgres ? " FOR UPDATE SKIP LOCKED" : ""),
        {now});
    if (!expired.ok()) return expired.status();
    for (size_t r = 0; r < expired->size(); ++r) {
      Job job = JobFromRow(*expired, r);
      std::string_view next = job.cancel_requested              ? "canceled"
                              : job.attempts < job.max_attempts ? "queued"
                                                                : "failed";
      const bool terminal = next != "queued";
      auto updated = s.Execute(
          fmt::format("UPDATE jobs SET status = $3, fencing_token = fencing_token + 1, "
                      "lease_owner = NULL, lease_expires_at = NULL, error = 'lease expired', "
                      "run_after = $4, completed_at = $5, updated_at = $4 WHERE {}",
                      kFenced),
          {job.id, job.fencing_token, std::string(next), now,
           terminal ? Value{now} : Value{std::monostate{}}});
      if (!updated.ok()) return updated.status();
      if (updated->affected_rows() == 0) continue;  // finished meanwhile
      std::string_view kind = next == "queued" ? "retry" : next;
      Status appended = AppendEventIn(
          s, job.id, kind,
          JsonObject().Int("attempt", job.attempts).Str("error", "lease expired").Done(), now);
      if (!appended.ok()) return appended;
      ++rescued;
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return rescued;
}

Result<Job> JobQueue::Get(const std::string& id) {
  auto rows = db_.Execute(fmt::format("SELECT {} FROM jobs WHERE id = $1", kJobColumns), {id});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return core::NotFound(fmt::format("job {} not found", id));
  return JobFromRow(*rows, 0);
}

Result<JobPage> JobQueue::List(std::optional<JobStatus> status, const std::string& type, int limit,
                               const std::string& cursor) {
  if (limit < 1 || limit > 1000) return core::InvalidArgument("limit must be in 1..1000");
  std::string where = "1 = 1";
  Params params;
  if (status) {
    params.push_back(std::string(JobStatusName(*status)));
    where += fmt::format(" AND status = ${}", params.size());
  }
  if (!type.empty()) {
    params.push_back(type);
    where += fmt::format(" AND type = ${}", params.size());
  }
  if (!cursor.empty()) {
    std::optional<std::string> after = DecodeCursor(cursor);
    if (!after) return core::InvalidArgument("invalid cursor");
    params.push_back(*after);
    where += fmt::format(" AND id < ${}", params.size());
  }
  params.push_back(int64_t{limit} + 1);  // one extra row tells whether another page follows
  auto rows = db_.Execute(fmt::format("SELECT {} FROM jobs WHERE {} ORDER BY id DESC LIMIT ${}",
                                      kJobColumns, where, params.size()),
                          params);
  if (!rows.ok()) return rows.status();
  JobPage page;
  for (size_t r = 0; r < rows->size() && r < static_cast<size_t>(limit); ++r) {
    page.jobs.push_back(JobFromRow(*rows, r));
  }
  if (rows->size() > static_cast<size_t>(limit))
    page.next_cursor = EncodeCursor(page.jobs.back().id);
  return page;
}

Status JobQueue::AppendEvent(const std::string& job_id, const std::string& kind,
                             const std::string& data_json) {
  const int64_t now = Now();
  return db_.Transact([&](Session& s) -> Status {
    // Locks the job row, which serializes seq assignment for this job.
    auto touched = s.Execute("UPDATE jobs SET updated_at = $2 WHERE id = $1", {job_id, now});
    if (!touched.ok()) return touched.status();
    if (touched->affected_rows() == 0) {
      return core::NotFound(fmt::format("job {} not found", job_id));
    }
    return AppendEventIn(s, job_id, kind, data_json, now);
  });
}

Result<std::vector<JobEvent>> JobQueue::Events(const std::string& job_id, int64_t after_seq) {
  auto rows = db_.Execute(
      "SELECT job_id, seq, kind, data, created_at FROM job_events WHERE job_id = $1 AND "
      "seq > $2 ORDER BY seq",
      {job_id, after_seq});
  if (!rows.ok()) return rows.status();
  std::vector<JobEvent> out;
  for (size_t r = 0; r < rows->size(); ++r) {
    out.push_back({rows->GetText(r, 0), rows->GetInt(r, 1), rows->GetText(r, 2),
                   rows->GetText(r, 3), rows->GetInt(r, 4)});
  }
  return out;
}

}  // namespace megaserve::jobs
