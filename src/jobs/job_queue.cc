// The job queue over store::Database; see job_queue.h for the lease/fencing protocol.
#include "jobs/job_queue.h"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <thread>
#include <tuple>

#include "core/ids.h"
#include "core/time_format.h"
#include "jobs/backoff.h"
#include "jobs/coalescer.h"

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

// Every column of `jobs`, in Job order; the last one tells whether a cancel was requested.
constexpr std::string_view kJobColumns =
    "id, type, queue, status, priority, input, output, error, attempts, max_attempts, "
    "run_after, lease_owner, lease_expires_at, fencing_token, idempotency_key, input_hash, "
    "progress_value, progress_max, progress_message, webhook_url, webhook_events, created_at, "
    "started_at, completed_at, updated_at, cancel_requested_at";

// What a state change returns to append its event and webhook delivery. Qualified, so updates
// joining another relation with the same column names (CompleteMany) can use it too.
constexpr std::string_view kTransitionReturning =
    " RETURNING jobs.id, jobs.event_seq, jobs.webhook_url, jobs.webhook_events";

// The guard of every write made under a lease: $1 is the id, $2 the fencing token.
constexpr std::string_view kFenced = "id = $1 AND status = 'running' AND fencing_token = $2";

// The event's seq comes from jobs.event_seq, which the same transaction's UPDATE of the job
// incremented (see migration 2): the job's row lock orders concurrent writers.
constexpr std::string_view kInsertEvent =
    "INSERT INTO job_events (job_id, seq, kind, data, created_at) VALUES ($1, $2, $3, $4, $5)";

constexpr std::string_view kInsertDelivery =
    "INSERT INTO webhook_deliveries (job_id, event, url, payload, next_attempt_at, created_at) "
    "VALUES ($1, $2, $3, $4, $5, $5)";

// PostgreSQL error codes a single statement may simply be rerun after.
bool Retryable(const Status& status) {
  const std::string state = store::SqlState(status);
  return state == "40001" || state == "40P01";
}

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
  job.cancel_requested = !rows.IsNull(r, c++) && job.status == JobStatus::kRunning;
  return job;
}

Result<Job> LoadJob(Session& s, const std::string& id) {
  auto rows = s.Execute(fmt::format("SELECT {} FROM jobs WHERE id = $1", kJobColumns), {id});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return core::NotFound(fmt::format("job {} not found", id));
  return JobFromRow(*rows, 0);
}

// True when the comma-joined `filter` names `event`.
bool FilterHas(std::string_view filter, std::string_view event) {
  while (!filter.empty()) {
    const size_t comma = filter.find(',');
    if (filter.substr(0, comma) == event) return true;
    if (comma == std::string_view::npos) break;
    filter.remove_prefix(comma + 1);
  }
  return false;
}

// The job's state as a transition's RETURNING clause (kTransitionReturning) gave it.
struct Transitioned {
  std::string id;
  int64_t seq = 0;
  std::string webhook_url;
  std::string webhook_events;
};

Transitioned TransitionedFromRow(const Rows& rows, size_t r) {
  return {rows.GetText(r, 0), rows.GetInt(r, 1), rows.GetText(r, 2), rows.GetText(r, 3)};
}

// Appends the event of a transition and, when the job's webhook filter asks for `hook_event`
// ("" = none), its webhook delivery (the outbox the dispatcher sends from).
Status RecordTransition(Session& s, const Transitioned& t, std::string_view kind,
                        const std::string& data_json, std::string_view hook_event, int64_t now) {
  auto event =
      s.Execute(kInsertEvent, {t.id, t.seq, std::string(kind), TextOrNull(data_json), now});
  if (!event.ok()) return event.status();
  if (hook_event.empty() || t.webhook_url.empty() || !FilterHas(t.webhook_events, hook_event)) {
    return Status::Ok();
  }
  return s
      .Execute(kInsertDelivery, {t.id, std::string(hook_event), t.webhook_url,
                                 data_json.empty() ? std::string("{}") : data_json, now})
      .status();
}

// The same for PostgreSQL as one statement around `update` (an UPDATE of one or more jobs whose
// last parameter is $n): appends `RETURNING`, the event insert and the delivery insert as
// data-modifying CTEs, and selects the ids of the jobs changed. Parameters n+1.. are kind, data,
// now and, with a hook event, the event name; PostgreSQLTransitionParams appends them.
std::string PostgresTransition(std::string_view update, size_t n, std::string_view hook_event) {
  std::string sql = fmt::format(
      "WITH u AS ({}{}), e AS (INSERT INTO job_events (job_id, seq, kind, data, created_at) "
      "SELECT id, event_seq, CAST(${} AS TEXT), CAST(${} AS TEXT), CAST(${} AS BIGINT) FROM u)",
      update, kTransitionReturning, n + 1, n + 2, n + 3);
  if (!hook_event.empty()) {
    sql += fmt::format(
        ", w AS (INSERT INTO webhook_deliveries (job_id, event, url, payload, next_attempt_at, "
        "created_at) SELECT id, CAST(${0} AS TEXT), webhook_url, COALESCE(CAST(${1} AS TEXT), "
        "'{{}}'), CAST(${2} AS BIGINT), CAST(${2} AS BIGINT) FROM u WHERE webhook_url IS NOT NULL "
        "AND strpos(',' || webhook_events || ',', ',' || CAST(${0} AS TEXT) || ',') > 0)",
        n + 4, n + 2, n + 3);
  }
  return sql + " SELECT id FROM u";
}

void PostgresTransitionParams(Params& params, std::string_view kind, const std::string& data_json,
                              int64_t now, std::string_view hook_event) {
  params.push_back(std::string(kind));
  params.push_back(TextOrNull(data_json));
  params.push_back(now);
  if (!hook_event.empty()) params.push_back(std::string(hook_event));
}

// A JSON string literal for `text` (quotes included).
std::string JsonString(const std::string& text) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  return buf.GetString();
}

// A PostgreSQL array literal of text elements: {"a","b"} with quotes and backslashes escaped.
std::string PgTextArray(const std::vector<std::string>& items) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char ch : items[i]) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  return out + "}";
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
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()) {
  claimer_ = std::make_unique<Coalescer<ClaimRequest, Result<std::vector<Claimed>>>>(
      [this](const std::vector<ClaimRequest>& requests) {
        // Requests for the same queue and types share one claim of their summed size; the
        // jobs are dealt out in claim order, each request taking up to its max.
        std::vector<Result<std::vector<Claimed>>> out(requests.size(), std::vector<Claimed>{});
        std::vector<bool> served(requests.size(), false);
        for (size_t i = 0; i < requests.size(); ++i) {
          if (served[i]) continue;
          std::vector<size_t> same;
          int total = 0;
          for (size_t j = i; j < requests.size(); ++j) {
            if (!served[j] && requests[j].queue == requests[i].queue &&
                requests[j].types == requests[i].types) {
              same.push_back(j);
              served[j] = true;
              total += requests[j].max;
            }
          }
          auto claimed = ClaimNow(requests[i].queue, requests[i].types, total);
          if (!claimed.ok()) {
            for (size_t j : same) out[j] = claimed.status();
            continue;
          }
          size_t next = 0;
          for (size_t j : same) {
            std::vector<Claimed> mine;
            while (next < claimed->size() && static_cast<int>(mine.size()) < requests[j].max) {
              mine.push_back(std::move((*claimed)[next++]));
            }
            out[j] = std::move(mine);
          }
        }
        return out;
      },
      kMaxCoalesced);
  completer_ = std::make_unique<Coalescer<Ack, Status>>(
      [this](const std::vector<Ack>& acks) {
        auto done = CompleteMany(acks);
        if (done.ok()) return std::move(*done);
        return std::vector<Status>(acks.size(), done.status());
      },
      kMaxCoalesced);
  enqueuer_ = std::make_unique<Coalescer<NewJob, Result<Job>>>(
      [this](const std::vector<NewJob>& specs) {
        std::vector<Result<Job>> out;
        if (specs.size() == 1) {
          out.push_back(EnqueueOne(specs[0], false));
          return out;
        }
        auto many = InsertMany(specs, /*announce=*/false);
        if (many.ok()) {
          for (Job& job : *many) out.push_back(std::move(job));
          return out;
        }
        // One bad job must not fail its neighbours: each goes again on its own.
        for (const NewJob& spec : specs) out.push_back(EnqueueOne(spec, false));
        return out;
      },
      kMaxCoalesced);
}

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
  auto job = EnqueueOne(spec, true);
  if (job.ok()) Announce(spec.queue);
  return job;
}

Result<Job> JobQueue::EnqueueOne(const NewJob& spec, bool coalesce_enqueues) {
  if (spec.type.empty()) return core::InvalidArgument("job type is required");
  if (spec.max_attempts < 1) return core::InvalidArgument("max_attempts must be at least 1");
  const int64_t now = Now();
  const std::string id = core::NewUuidV7();
  const bool keyed = !spec.idempotency_key.empty();
  const bool postgres = db_.engine() == Engine::kPostgres;
  const std::string hash = keyed ? Sha256Hex(spec.input_json) : "";
  const int64_t run_after = spec.run_after_us > 0 ? spec.run_after_us : now;
  constexpr std::string_view kInsert =
      "INSERT INTO jobs (id, type, queue, status, priority, input, max_attempts, run_after, "
      "idempotency_key, input_hash, webhook_url, webhook_events, created_at, updated_at, "
      "event_seq) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, 1)";
  Params params = {id,
                   spec.type,
                   spec.queue,
                   int64_t{spec.priority},
                   spec.input_json,
                   int64_t{spec.max_attempts},
                   run_after,
                   TextOrNull(spec.idempotency_key),
                   TextOrNull(hash),
                   TextOrNull(spec.webhook_url),
                   TextOrNull(spec.webhook_events),
                   now};
  // Every column of a new row is known here; reading it back would cost a round trip.
  Job out;
  out.id = id;
  out.type = spec.type;
  out.queue = spec.queue;
  out.status = JobStatus::kQueued;
  out.priority = spec.priority;
  out.input_json = spec.input_json;
  out.max_attempts = spec.max_attempts;
  out.run_after_us = run_after;
  out.idempotency_key = spec.idempotency_key;
  out.input_hash = hash;
  out.webhook_url = spec.webhook_url;
  out.webhook_events = spec.webhook_events;
  out.created_at_us = now;
  out.updated_at_us = now;
  Status status;
  if (postgres && !keyed && coalesce_enqueues && options_.coalesce) {
    // Concurrent enqueues share one EnqueueMany statement (see coalescer.h).
    return enqueuer_->Submit(spec);
  }
  if (postgres && !keyed) {
    // One statement, so one round trip and one commit: the job and its first event.
    status = ExecuteRetrying(fmt::format("WITH j AS ({} RETURNING id), e AS (INSERT INTO "
                                         "job_events (job_id, seq, kind, data, created_at) "
                                         "SELECT id, 1, 'queued', NULL, CAST($12 AS BIGINT) FROM "
                                         "j) SELECT id FROM j",
                                         kInsert),
                             params)
                 .status();
  } else {
    std::string sql(kInsert);
    // A concurrent insert of the same key waits for the other and then does nothing, so the
    // existing row is read below instead of the transaction aborting on a unique violation.
    if (keyed) sql += " ON CONFLICT (type, idempotency_key) DO NOTHING";
    status = db_.Transact([&](Session& s) -> Status {
      auto inserted = s.Execute(sql, params);
      if (!inserted.ok()) return inserted.status();
      if (inserted->affected_rows() == 0) {
        auto rows =
            s.Execute(fmt::format("SELECT {} FROM jobs WHERE type = $1 AND idempotency_key = $2",
                                  kJobColumns),
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
      return s
          .Execute(kInsertEvent,
                   {id, int64_t{1}, std::string("queued"), Value{std::monostate{}}, now})
          .status();
    });
  }
  if (!status.ok()) return status;
  return out;
}

Result<std::vector<Job>> JobQueue::EnqueueMany(const std::vector<NewJob>& specs) {
  return InsertMany(specs, true);
}

Result<std::vector<Job>> JobQueue::InsertMany(const std::vector<NewJob>& specs, bool announce) {
  std::vector<Job> out;
  if (specs.empty()) return out;
  const int64_t now = Now();
  for (const NewJob& spec : specs) {
    if (spec.type.empty()) return core::InvalidArgument("job type is required");
    if (spec.max_attempts < 1) return core::InvalidArgument("max_attempts must be at least 1");
    if (!spec.idempotency_key.empty()) {
      return core::InvalidArgument("EnqueueMany takes no idempotency keys; use Enqueue");
    }
    Job job;
    job.id = core::NewUuidV7();
    job.type = spec.type;
    job.queue = spec.queue;
    job.priority = spec.priority;
    job.input_json = spec.input_json;
    job.max_attempts = spec.max_attempts;
    job.run_after_us = spec.run_after_us > 0 ? spec.run_after_us : now;
    job.webhook_url = spec.webhook_url;
    job.webhook_events = spec.webhook_events;
    job.created_at_us = now;
    job.updated_at_us = now;
    out.push_back(std::move(job));
  }
  Status status;
  if (db_.engine() == Engine::kPostgres) {
    // The rows travel as parallel arrays; an empty webhook element stands for NULL.
    std::vector<std::string> ids, types, queues, priorities, inputs, attempts, run_afters;
    std::vector<std::string> url_items, event_items;
    for (const Job& j : out) {
      ids.push_back(j.id);
      types.push_back(j.type);
      queues.push_back(j.queue);
      priorities.push_back(std::to_string(j.priority));
      inputs.push_back(j.input_json);
      attempts.push_back(std::to_string(j.max_attempts));
      run_afters.push_back(std::to_string(j.run_after_us));
      url_items.push_back(j.webhook_url);
      event_items.push_back(j.webhook_events);
    }
    status =
        ExecuteRetrying(
            "WITH j AS (INSERT INTO jobs (id, type, queue, status, priority, input, max_attempts, "
            "run_after, webhook_url, webhook_events, created_at, updated_at, event_seq) SELECT id, "
            "type, queue, 'queued', priority, input, max_attempts, run_after, NULLIF(url, ''), "
            "NULLIF(events, ''), $10, $10, 1 FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS TEXT[]), "
            "CAST($3 AS TEXT[]), CAST($4 AS INTEGER[]), CAST($5 AS TEXT[]), CAST($6 AS "
            "INTEGER[]), CAST($7 AS BIGINT[]), CAST($8 AS TEXT[]), CAST($9 AS TEXT[])) AS v(id, "
            "type, queue, priority, input, max_attempts, run_after, url, events) RETURNING id), "
            "e AS (INSERT INTO job_events (job_id, seq, kind, data, created_at) SELECT id, 1, "
            "'queued', NULL, CAST($10 AS BIGINT) FROM j) SELECT count(*) FROM j",
            {PgTextArray(ids), PgTextArray(types), PgTextArray(queues), PgTextArray(priorities),
             PgTextArray(inputs), PgTextArray(attempts), PgTextArray(run_afters),
             PgTextArray(url_items), PgTextArray(event_items), now})
            .status();
  } else {
    status = db_.Transact([&](Session& s) -> Status {
      for (const Job& j : out) {
        auto inserted = s.Execute(
            "INSERT INTO jobs (id, type, queue, status, priority, input, max_attempts, run_after, "
            "webhook_url, webhook_events, created_at, updated_at, event_seq) VALUES ($1, $2, $3, "
            "'queued', $4, $5, $6, $7, $8, $9, $10, $10, 1)",
            {j.id, j.type, j.queue, int64_t{j.priority}, j.input_json, int64_t{j.max_attempts},
             j.run_after_us, TextOrNull(j.webhook_url), TextOrNull(j.webhook_events), now});
        if (!inserted.ok()) return inserted.status();
        auto event = s.Execute(
            kInsertEvent, {j.id, int64_t{1}, std::string("queued"), Value{std::monostate{}}, now});
        if (!event.ok()) return event.status();
      }
      return Status::Ok();
    });
  }
  if (!status.ok()) return status;
  if (!announce) return out;
  std::vector<std::string> queues;
  for (const Job& j : out) queues.push_back(j.queue);
  std::sort(queues.begin(), queues.end());
  queues.erase(std::unique(queues.begin(), queues.end()), queues.end());
  for (const std::string& q : queues) Announce(q);
  return out;
}

Result<std::vector<Claimed>> JobQueue::Claim(const std::string& queue,
                                             const std::vector<std::string>& types, int max) {
  if (max <= 0) return std::vector<Claimed>{};
  if (db_.engine() == Engine::kPostgres && options_.coalesce) {
    return claimer_->Submit(ClaimRequest{queue, types, max});
  }
  return ClaimNow(queue, types, max);
}

Result<std::vector<Claimed>> JobQueue::ClaimNow(const std::string& queue,
                                                const std::vector<std::string>& types, int max) {
  const int64_t now = Now();
  const int64_t expires =
      now + std::chrono::duration_cast<std::chrono::microseconds>(options_.lease).count();
  const bool postgres = db_.engine() == Engine::kPostgres;
  // " AND type IN ($first, ...)" for `types`, or "" for any type.
  auto type_filter = [&](size_t first) {
    std::string sql;
    for (size_t i = 0; i < types.size(); ++i) {
      sql += fmt::format("{}${}", i == 0 ? " AND type IN (" : ", ", first + i);
    }
    return types.empty() ? sql : sql + ")";
  };
  Params params = {worker_id_, expires, now, queue, int64_t{max}};
  for (const std::string& type : types) params.push_back(type);
  const std::string update = fmt::format(
      "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_owner = $1, "
      "lease_expires_at = $2, fencing_token = fencing_token + 1, event_seq = event_seq + 1, "
      "started_at = $3, updated_at = $3 WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' "
      "AND queue = $4 AND run_after <= $3{} ORDER BY priority, run_after, id LIMIT $5{}) "
      "RETURNING {}, event_seq",
      type_filter(6), postgres ? " FOR UPDATE SKIP LOCKED" : "", kJobColumns);
  std::vector<Claimed> out;
  auto take = [&](const Rows& rows) {
    out.clear();
    for (size_t r = 0; r < rows.size(); ++r) {
      Job job = JobFromRow(rows, r);
      int64_t token = job.fencing_token;
      out.push_back({std::move(job), token});
    }
  };
  Status status;
  if (postgres) {
    // One statement: claim, started events and start webhooks commit together. The last
    // parameter is this worker's id as a JSON string, for the events. The commit does not wait
    // for its WAL flush (synchronous_commit off for this transaction): losing a claim in a
    // server crash only puts the job back in the queue, and the stale token it handed out is
    // fenced (the job's token is back to what it was, so no write under it matches). The
    // completion's synchronous commit flushes the claim's WAL too, as WAL is written in order.
    params.push_back(JsonString(worker_id_));
    const size_t worker = params.size();
    const std::string sql = fmt::format(
        "WITH c AS ({0}), e AS (INSERT INTO job_events (job_id, seq, kind, data, created_at) "
        "SELECT id, event_seq, 'started', '{{\"attempt\":' || attempts || ',\"worker\":' || "
        "CAST(${1} AS TEXT) || '}}', CAST($3 AS BIGINT) FROM c), w AS (INSERT INTO "
        "webhook_deliveries (job_id, event, url, payload, next_attempt_at, created_at) SELECT id, "
        "'start', webhook_url, '{{}}', CAST($3 AS BIGINT), CAST($3 AS BIGINT) FROM c WHERE "
        "webhook_url IS NOT NULL AND strpos(',' || webhook_events || ',', ',start,') > 0) "
        "SELECT *, set_config('synchronous_commit', 'off', true) FROM c",
        update, worker);
    auto rows = ExecuteRetrying(sql, params);
    if (rows.ok()) take(*rows);
    status = rows.status();
  } else {
    // An empty queue is the common case when idle: look from a reader first, so polling does
    // not take the single writer lock.
    Params probe = {queue, now};
    for (const std::string& type : types) probe.push_back(type);
    auto due = db_.Execute(fmt::format("SELECT 1 FROM jobs WHERE status = 'queued' AND queue = "
                                       "$1 AND run_after <= $2{} LIMIT 1",
                                       type_filter(3)),
                           probe);
    if (!due.ok()) return due.status();
    if (due->empty()) return out;
    status = db_.Transact([&](Session& s) -> Status {
      auto rows = s.Execute(update, params);
      if (!rows.ok()) return rows.status();
      take(*rows);
      for (size_t r = 0; r < rows->size(); ++r) {
        const Job& job = out[r].job;
        Transitioned t{job.id, rows->GetInt(r, rows->columns().size() - 1), job.webhook_url,
                       job.webhook_events};
        Status recorded = RecordTransition(
            s, t, "started",
            JsonObject().Int("attempt", job.attempts).Str("worker", worker_id_).Done(), "start",
            now);
        if (!recorded.ok()) return recorded;
      }
      return Status::Ok();
    });
  }
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
  // On PostgreSQL a lost heartbeat costs nothing, so its commit does not wait for a WAL flush.
  const std::string update = fmt::format(
      "UPDATE jobs SET lease_expires_at = $3, updated_at = $4 WHERE {} RETURNING "
      "cancel_requested_at",
      kFenced);
  auto rows =
      ExecuteRetrying(db_.engine() == Engine::kPostgres
                          ? fmt::format("WITH u AS ({}) SELECT cancel_requested_at, set_config("
                                        "'synchronous_commit', 'off', true) FROM u",
                                        update)
                          : update,
                      {id, token, expires, now});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return NotLeased(id, token);
  if (!rows->IsNull(0, 0)) return core::Canceled(fmt::format("job {}: cancel requested", id));
  return Status::Ok();
}

Status JobQueue::Transition(const std::string& id, int64_t token, std::string update, Params params,
                            std::string_view kind, const std::string& data_json,
                            std::string_view hook_event, int64_t now,
                            const std::function<Status(Session&)>& in_transaction) {
  if (db_.engine() == Engine::kPostgres && !in_transaction) {
    const size_t n = params.size();
    PostgresTransitionParams(params, kind, data_json, now, hook_event);
    auto rows = ExecuteRetrying(PostgresTransition(update, n, hook_event), params);
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return NotLeased(id, token);
    return Status::Ok();
  }
  update += kTransitionReturning;
  return db_.Transact([&](Session& s) -> Status {
    auto rows = s.Execute(update, params);
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return NotLeased(id, token);
    Status recorded =
        RecordTransition(s, TransitionedFromRow(*rows, 0), kind, data_json, hook_event, now);
    if (!recorded.ok() || !in_transaction) return recorded;
    return in_transaction(s);
  });
}

Status JobQueue::Progress(const std::string& id, int64_t token, double value, double max,
                          const std::string& message) {
  const int64_t now = Now();
  return Transition(
      id, token,
      fmt::format("UPDATE jobs SET progress_value = $3, progress_max = $4, progress_message = $5, "
                  "updated_at = $6, event_seq = event_seq + 1 WHERE {}",
                  kFenced),
      {id, token, value, max, message, now}, "progress",
      JsonObject().Num("value", value).Num("max", max).Str("message", message).Done(), "progress",
      now, {});
}

Status JobQueue::Complete(const std::string& id, int64_t token, const std::string& output_json,
                          const std::function<Status(Session&)>& in_transaction) {
  if (db_.engine() == Engine::kPostgres && !in_transaction && options_.coalesce) {
    // Concurrent completions share one CompleteMany statement (see coalescer.h).
    return completer_->Submit(Ack{id, token, output_json});
  }
  const int64_t now = Now();
  return Transition(id, token,
                    fmt::format("UPDATE jobs SET status = 'succeeded', output = $3, lease_owner = "
                                "NULL, lease_expires_at = NULL, completed_at = $4, updated_at = "
                                "$4, event_seq = event_seq + 1 WHERE {}",
                                kFenced),
                    {id, token, output_json, now}, "succeeded", "", "completed", now,
                    in_transaction);
}

Result<std::vector<Status>> JobQueue::CompleteMany(const std::vector<Ack>& acks) {
  std::vector<Status> out(acks.size());
  if (acks.empty()) return out;
  const int64_t now = Now();
  if (db_.engine() == Engine::kPostgres) {
    // One statement for the whole batch: the acks travel as three parallel arrays.
    std::vector<std::string> ids, tokens, outputs;
    for (const Ack& a : acks) {
      ids.push_back(a.id);
      tokens.push_back(std::to_string(a.token));
      outputs.push_back(a.output_json.empty() ? "{}" : a.output_json);
    }
    const std::string update =
        "UPDATE jobs SET status = 'succeeded', output = v.output, lease_owner = NULL, "
        "lease_expires_at = NULL, completed_at = $4, updated_at = $4, event_seq = "
        "jobs.event_seq + 1 FROM (SELECT * FROM unnest(CAST($1 AS TEXT[]), CAST($2 AS "
        "BIGINT[]), CAST($3 AS TEXT[])) AS a(id, token, output)) v WHERE jobs.id = v.id AND "
        "jobs.status = 'running' AND jobs.fencing_token = v.token";
    Params params = {PgTextArray(ids), PgTextArray(tokens), PgTextArray(outputs), now};
    PostgresTransitionParams(params, "succeeded", "", now, "completed");
    auto rows = ExecuteRetrying(PostgresTransition(update, 4, "completed"), params);
    if (!rows.ok()) return rows.status();
    std::vector<std::string> done;
    for (size_t r = 0; r < rows->size(); ++r) done.push_back(rows->GetText(r, 0));
    std::sort(done.begin(), done.end());
    for (size_t i = 0; i < acks.size(); ++i) {
      if (!std::binary_search(done.begin(), done.end(), acks[i].id)) {
        out[i] = NotLeased(acks[i].id, acks[i].token);
      }
    }
    return out;
  }
  Status status = db_.Transact([&](Session& s) -> Status {
    for (size_t i = 0; i < acks.size(); ++i) {
      const Ack& a = acks[i];
      auto rows = s.Execute(
          fmt::format("UPDATE jobs SET status = 'succeeded', output = $3, lease_owner = NULL, "
                      "lease_expires_at = NULL, completed_at = $4, updated_at = $4, event_seq = "
                      "event_seq + 1 WHERE {}{}",
                      kFenced, kTransitionReturning),
          {a.id, a.token, a.output_json.empty() ? std::string("{}") : a.output_json, now});
      if (!rows.ok()) return rows.status();
      if (rows->empty()) {
        out[i] = NotLeased(a.id, a.token);
        continue;
      }
      out[i] = Status::Ok();
      Status recorded =
          RecordTransition(s, TransitionedFromRow(*rows, 0), "succeeded", "", "completed", now);
      if (!recorded.ok()) return recorded;
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return out;
}

Status JobQueue::Fail(const std::string& id, int64_t token, const std::string& error) {
  const int64_t now = Now();
  return db_.Transact([&](Session& s) -> Status {
    // The fenced write comes first: it checks the token and locks the row for what follows.
    auto rows =
        s.Execute(fmt::format("UPDATE jobs SET error = $3, updated_at = $4 WHERE {} RETURNING {}",
                              kFenced, kJobColumns),
                  {id, token, error, now});
    if (!rows.ok()) return rows.status();
    if (rows->empty()) return NotLeased(id, token);
    const Job job = JobFromRow(*rows, 0);
    const std::string data = JsonObject().Int("attempt", job.attempts).Str("error", error).Done();
    const bool retry = !job.cancel_requested && job.attempts < job.max_attempts;
    const std::string_view next = job.cancel_requested ? "canceled" : retry ? "queued" : "failed";
    const int64_t run_after = retry ? now + RetryDelayUs(job.attempts) : job.run_after_us;
    auto changed = s.Execute(
        fmt::format("UPDATE jobs SET status = $2, run_after = $3, lease_owner = NULL, "
                    "lease_expires_at = NULL, completed_at = $4, updated_at = $5, event_seq = "
                    "event_seq + 1 WHERE id = $1{}",
                    kTransitionReturning),
        {id, std::string(next), run_after, retry ? Value{std::monostate{}} : Value{now}, now});
    if (!changed.ok()) return changed.status();
    if (changed->empty()) return core::Internal("failed job vanished");
    if (retry) {
      return RecordTransition(s, TransitionedFromRow(*changed, 0), "retry",
                              JsonObject()
                                  .Int("attempt", job.attempts)
                                  .Str("error", error)
                                  .Int("run_after", run_after)
                                  .Done(),
                              "", now);
    }
    return RecordTransition(s, TransitionedFromRow(*changed, 0), next, data, "completed", now);
  });
}

Result<Job> JobQueue::Cancel(const std::string& id) {
  const int64_t now = Now();
  Job out;
  Status status = db_.Transact([&](Session& s) -> Status {
    auto canceled = s.Execute(
        fmt::format("UPDATE jobs SET status = 'canceled', completed_at = $2, updated_at = $2, "
                    "event_seq = event_seq + 1 WHERE id = $1 AND status = 'queued'{}",
                    kTransitionReturning),
        {id, now});
    if (!canceled.ok()) return canceled.status();
    if (!canceled->empty()) {
      Status recorded =
          RecordTransition(s, TransitionedFromRow(*canceled, 0), "canceled", "", "completed", now);
      if (!recorded.ok()) return recorded;
    } else {
      // Only the first request of a running job changes it and gets an event. The row lock
      // taken here orders this against a concurrent Fail or rescue.
      auto requested = s.Execute(
          fmt::format("UPDATE jobs SET cancel_requested_at = $2, updated_at = $2, event_seq = "
                      "event_seq + 1 WHERE id = $1 AND status = 'running' AND "
                      "cancel_requested_at IS NULL{}",
                      kTransitionReturning),
          {id, now});
      if (!requested.ok()) return requested.status();
      if (!requested->empty()) {
        Status recorded = RecordTransition(s, TransitionedFromRow(*requested, 0),
                                           "cancel_requested", "", "", now);
        if (!recorded.ok()) return recorded;
      }
    }
    auto job = LoadJob(s, id);
    if (!job.ok()) return job.status();
    out = std::move(*job);
    if (canceled->empty() && out.status != JobStatus::kRunning) {
      return FailedPrecondition(fmt::format("job {} is already {}", id, JobStatusName(out.status)));
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  return out;
}

Result<int> JobQueue::RescueExpired() {
  const int64_t now = Now();
  const bool postgres = db_.engine() == Engine::kPostgres;
  int rescued = 0;
  std::vector<std::string> requeued_queues;
  Status status = db_.Transact([&](Session& s) -> Status {
    rescued = 0;
    requeued_queues.clear();
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
                      "run_after = $4, completed_at = $5, updated_at = $4, event_seq = "
                      "event_seq + 1 WHERE {}{}",
                      kFenced, kTransitionReturning),
          {job.id, job.fencing_token, std::string(next), now,
           terminal ? Value{now} : Value{std::monostate{}}});
      if (!updated.ok()) return updated.status();
      if (updated->empty()) continue;  // finished meanwhile
      std::string_view kind = terminal ? next : "retry";
      Status recorded = RecordTransition(
          s, TransitionedFromRow(*updated, 0), kind,
          JsonObject().Int("attempt", job.attempts).Str("error", "lease expired").Done(),
          terminal ? "completed" : "", now);
      if (!recorded.ok()) return recorded;
      if (!terminal) requeued_queues.push_back(job.queue);
      ++rescued;
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  std::sort(requeued_queues.begin(), requeued_queues.end());
  requeued_queues.erase(std::unique(requeued_queues.begin(), requeued_queues.end()),
                        requeued_queues.end());
  for (const std::string& q : requeued_queues) Announce(q);
  return rescued;
}

Result<Rows> JobQueue::ExecuteRetrying(const std::string& sql, const Params& params) {
  for (int attempt = 1;; ++attempt) {
    auto rows = db_.Execute(sql, params);
    if (rows.ok() || attempt >= 3 || !Retryable(rows.status())) return rows;
    std::this_thread::sleep_for(std::chrono::milliseconds(attempt));
  }
}

void JobQueue::Announce(const std::string& queue) {
  {
    std::lock_guard lock(listeners_mu_);
    for (const auto& [id, listener] : listeners_) listener(queue);
  }
  if (db_.engine() != Engine::kPostgres) return;
  {
    std::lock_guard lock(notify_mu_);
    if (notify_exit_) return;
    notify_pending_.insert(queue);
    if (!notifier_.joinable()) notifier_ = std::thread([this] { NotifyLoop(); });
  }
  notify_cv_.notify_one();
}

void JobQueue::NotifyLoop() {
  std::unique_lock lock(notify_mu_);
  for (;;) {
    notify_cv_.wait(lock, [this] { return notify_exit_ || !notify_pending_.empty(); });
    if (notify_exit_) return;
    std::set<std::string> queues;
    queues.swap(notify_pending_);
    lock.unlock();
    for (const std::string& queue : queues) {
      // Committed asynchronously (nothing durable rides on it), so the commit does not wait for
      // a WAL flush while holding PostgreSQL's lock that serializes notifying commits.
      auto sent = db_.Execute(fmt::format("SELECT set_config('synchronous_commit', 'off', true), "
                                          "pg_notify('{}', $1)",
                                          kJobsChannel),
                              {queue});
      if (!sent.ok()) {
        spdlog::debug("jobs: NOTIFY {} failed: {}", kJobsChannel, sent.status().ToString());
      }
    }
    lock.lock();
  }
}

JobQueue::~JobQueue() {
  {
    std::lock_guard lock(notify_mu_);
    notify_exit_ = true;
  }
  notify_cv_.notify_all();
  if (notifier_.joinable()) notifier_.join();
}

int JobQueue::Subscribe(std::function<void(const std::string& queue)> listener) {
  std::lock_guard lock(listeners_mu_);
  const int id = ++last_listener_;
  listeners_.emplace_back(id, std::move(listener));
  return id;
}

void JobQueue::Unsubscribe(int id) {
  std::lock_guard lock(listeners_mu_);
  std::erase_if(listeners_, [id](const auto& entry) { return entry.first == id; });
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
    auto touched = s.Execute(fmt::format("UPDATE jobs SET updated_at = $2, event_seq = event_seq "
                                         "+ 1 WHERE id = $1{}",
                                         kTransitionReturning),
                             {job_id, now});
    if (!touched.ok()) return touched.status();
    if (touched->empty()) return core::NotFound(fmt::format("job {} not found", job_id));
    return RecordTransition(s, TransitionedFromRow(*touched, 0), kind, data_json, "", now);
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
