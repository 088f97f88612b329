#include "api/job_routes.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <optional>

#include "api/job_events.h"
#include "api/route_helpers.h"
#include "core/ids.h"
#include "core/time_format.h"
#include "jobs/builtin_handlers.h"
#include "net/url.h"

namespace megaserve::api {

using net::Method;
using net::Request;
using net::Response;
using Writer = JsonWriter;

namespace {

// The blocking pool's 503 names what requests wait for here.
void RunOffLoop(core::BlockingPool* pool, net::Reply reply, std::function<Response()> work) {
  OffLoop(*pool, std::move(reply), std::move(work), "the store");
}

// RFC 3339 with microseconds, or null for 0.
void WriteTime(Writer& w, int64_t micros) {
  if (micros == 0) {
    w.Null();
    return;
  }
  std::string text = core::Rfc3339(micros, /*with_micros=*/true);
  w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
}

// Stored JSON goes out as JSON (not as a string); empty means null.
void WriteRaw(Writer& w, const char* key, const std::string& json) {
  w.Key(key);
  if (json.empty()) {
    w.Null();
  } else {
    w.RawValue(json.data(), json.size(), rapidjson::kObjectType);
  }
}

void WriteJob(Writer& w, const jobs::Job& j) {
  std::string base = "/v1/jobs/" + j.id;
  w.StartObject();
  WriteString(w, "id", j.id);
  WriteString(w, "object", "job");
  WriteString(w, "type", j.type);
  WriteString(w, "status", jobs::JobStatusName(j.status));
  WriteRaw(w, "input", j.input_json);
  WriteRaw(w, "output", j.output_json);
  w.Key("error");
  if (j.error.empty()) {
    w.Null();
  } else {
    w.String(j.error.c_str());
  }
  w.Key("priority");
  w.Int(j.priority);
  w.Key("attempts");
  w.Int(j.attempts);
  w.Key("max_attempts");
  w.Int(j.max_attempts);
  w.Key("cancel_requested");
  w.Bool(j.cancel_requested);
  w.Key("progress");
  if (j.has_progress) {
    w.StartObject();
    w.Key("value");
    w.Double(j.progress_value);
    w.Key("max");
    w.Double(j.progress_max);
    WriteString(w, "message", j.progress_message);
    w.EndObject();
  } else {
    w.Null();
  }
  if (!j.webhook_url.empty()) {
    WriteString(w, "webhook", j.webhook_url);
    w.Key("webhook_events_filter");
    w.StartArray();
    std::string_view events = j.webhook_events;
    while (!events.empty()) {
      const std::size_t comma = events.find(',');
      std::string_view event = events.substr(0, comma);
      w.String(event.data(), static_cast<rapidjson::SizeType>(event.size()));
      if (comma == std::string_view::npos) break;
      events.remove_prefix(comma + 1);
    }
    w.EndArray();
  }
  w.Key("created_at");
  WriteTime(w, j.created_at_us);
  w.Key("started_at");
  WriteTime(w, j.started_at_us);
  w.Key("completed_at");
  WriteTime(w, j.completed_at_us);
  w.Key("urls");
  w.StartObject();
  WriteString(w, "get", base);
  WriteString(w, "cancel", base + "/cancel");
  WriteString(w, "stream", base + "/events");
  w.EndObject();
  w.Key("metrics");
  w.StartObject();
  if (j.started_at_us != 0 && j.completed_at_us != 0) {
    w.Key("predict_time");
    w.Double(static_cast<double>(j.completed_at_us - j.started_at_us) / 1e6);
  }
  w.EndObject();
  w.EndObject();
}

Response JobResponse(int status, const jobs::Job& job) {
  return net::JsonResponse(status, JobJson(job));
}

// Maps a store or queue failure to the HTTP error a client should see.
Response StoreError(const core::Status& s) {
  switch (s.code()) {
    case core::StatusCode::kNotFound:
      return net::ErrorResponse(404, "not_found", s.message());
    case core::StatusCode::kInvalidArgument:
      return net::ErrorResponse(400, "invalid_request", s.message());
    case core::StatusCode::kAlreadyExists:
      return net::ErrorResponse(409, "idempotency_conflict", s.message());
    case core::StatusCode::kFailedPrecondition:
      return net::ErrorResponse(409, "job_finished", s.message());
    case core::StatusCode::kUnavailable:
    case core::StatusCode::kResourceExhausted:
      return StoreUnavailable(s);
    default:
      return net::ErrorResponse(500, "internal", s.message());
  }
}

struct ParsedJob {
  jobs::NewJob job;
  std::optional<Response> error;
};

Response BadField(std::string_view code, std::string_view message, std::string_view param) {
  return net::ErrorResponse(400, code, message, param);
}

// The webhook events a job may ask for, in the order webhook_events stores them.
constexpr std::array<std::string_view, 3> kWebhookEvents = {"start", "progress", "completed"};

// Validates "webhook" and "webhook_events_filter" of a POST /v1/jobs body into `job`.
std::optional<Response> ParseWebhook(const SmallJsonBody::Document& d, const jobs::SsrfGuard* guard,
                                     jobs::NewJob& job) {
  if (!d.HasMember("webhook")) {
    if (d.HasMember("webhook_events_filter")) {
      return BadField("invalid_webhook_events_filter",
                      "\"webhook_events_filter\" needs a \"webhook\"", "webhook_events_filter");
    }
    return std::nullopt;
  }
  const auto& url = d["webhook"];
  if (!url.IsString()) {
    return BadField("invalid_webhook", "\"webhook\" must be a URL string", "webhook");
  }
  if (guard == nullptr) {
    return BadField("webhooks_disabled",
                    "webhooks are not enabled on this server: set webhooks.secret (make one with "
                    "\"megaserve webhooks new-secret\")",
                    "webhook");
  }
  job.webhook_url.assign(url.GetString(), url.GetStringLength());
  if (job.webhook_url.size() > kMaxWebhookUrlBytes) {
    return BadField("invalid_webhook",
                    "\"webhook\" is longer than " + std::to_string(kMaxWebhookUrlBytes) + " bytes",
                    "webhook");
  }
  auto parsed = net::ParseUrl(job.webhook_url);
  if (!parsed.ok()) {
    return BadField(
        "invalid_webhook",
        "\"webhook\" must be an absolute http or https URL: " + parsed.status().message(),
        "webhook");
  }
  // A literal address is refused now; a name is checked after each resolution when sending.
  if (parsed->host_is_ip) {
    if (auto allowed = guard->CheckUrlHost(parsed->host, {}); !allowed.ok()) {
      return BadField("invalid_webhook", "\"webhook\" is not allowed: " + allowed.message(),
                      "webhook");
    }
  }
  std::array<bool, kWebhookEvents.size()> wanted{};
  if (!d.HasMember("webhook_events_filter")) {
    wanted.fill(true);
  } else {
    const auto& filter = d["webhook_events_filter"];
    auto bad = [] {
      return BadField("invalid_webhook_events_filter",
                      "\"webhook_events_filter\" must be a non-empty array of distinct values "
                      "from \"start\", \"progress\", \"completed\"",
                      "webhook_events_filter");
    };
    if (!filter.IsArray() || filter.Empty()) return bad();
    for (const auto& item : filter.GetArray()) {
      if (!item.IsString()) return bad();
      std::string_view name(item.GetString(), item.GetStringLength());
      auto it = std::find(kWebhookEvents.begin(), kWebhookEvents.end(), name);
      if (it == kWebhookEvents.end()) return bad();
      bool& seen = wanted[static_cast<std::size_t>(it - kWebhookEvents.begin())];
      if (seen) return bad();
      seen = true;
    }
  }
  for (std::size_t i = 0; i < kWebhookEvents.size(); ++i) {
    if (!wanted[i]) continue;
    if (!job.webhook_events.empty()) job.webhook_events += ',';
    job.webhook_events += kWebhookEvents[i];
  }
  return std::nullopt;
}

// Validates a POST /v1/jobs body into a NewJob.
ParsedJob ParseNewJob(const std::string& body, const jobs::Workers& workers,
                      const jobs::SsrfGuard* webhook_guard) {
  ParsedJob out;
  SmallJsonBody parsed(body);
  const auto& d = parsed.doc();
  if (d.HasParseError() || !d.IsObject()) {
    out.error = BadField("invalid_json", "the body must be a JSON object", "");
    return out;
  }
  for (auto& m : d.GetObject()) {
    std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name != "type" && name != "input" && name != "priority" && name != "max_attempts" &&
        name != "webhook" && name != "webhook_events_filter") {
      out.error = BadField("unknown_field", "unknown field \"" + std::string(name) + "\"", name);
      return out;
    }
  }
  if (!d.HasMember("type") || !d["type"].IsString()) {
    out.error = BadField("missing_field", "\"type\" must be a string", "type");
    return out;
  }
  out.job.type.assign(d["type"].GetString(), d["type"].GetStringLength());
  if (!workers.Handles(out.job.type)) {
    std::string known;
    for (const auto& t : workers.types()) known += (known.empty() ? "" : ", ") + t;
    out.error = BadField("unknown_job_type",
                         "unknown job type \"" + out.job.type + "\"; known: " + known, "type");
    return out;
  }
  if (d.HasMember("input")) {
    if (!d["input"].IsObject()) {
      out.error = BadField("invalid_input", "\"input\" must be a JSON object", "input");
      return out;
    }
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    d["input"].Accept(w);
    out.job.input_json.assign(sb.GetString(), sb.GetSize());
  }
  if (out.job.input_json.size() > kMaxJobInputBytes) {
    out.error = BadField("input_too_large",
                         "\"input\" is larger than " + std::to_string(kMaxJobInputBytes) + " bytes",
                         "input");
    return out;
  }
  if (auto s = jobs::ValidateBuiltinInput(out.job.type, out.job.input_json); !s.ok()) {
    out.error = BadField("invalid_input", s.message(), "input");
    return out;
  }
  auto int_field = [&](const char* name, int lo, int hi, int& target) {
    if (!d.HasMember(name)) return true;
    const auto& v = d[name];
    if (!v.IsInt() || v.GetInt() < lo || v.GetInt() > hi) {
      out.error = BadField("invalid_" + std::string(name),
                           "\"" + std::string(name) + "\" must be an integer from " +
                               std::to_string(lo) + " to " + std::to_string(hi),
                           name);
      return false;
    }
    target = v.GetInt();
    return true;
  };
  if (!int_field("priority", -1000, 1000, out.job.priority)) return out;
  if (!int_field("max_attempts", 1, 100, out.job.max_attempts)) return out;
  out.error = ParseWebhook(d, webhook_guard, out.job);
  return out;
}

// An Idempotency-Key is 1..255 visible ASCII characters.
bool SaneKey(std::string_view key) {
  if (key.empty() || key.size() > 255) return false;
  for (char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

std::string JobJson(const jobs::Job& job) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  WriteJob(w, job);
  return {sb.GetString(), sb.GetSize()};
}

void RegisterJobRoutes(net::Router& router, const JobsContext& ctx) {
  router.AddAsync(Method::kPost, "/v1/jobs", [ctx](const Request& req, net::Reply reply) {
    std::string key(req.Header("idempotency-key"));
    if (!key.empty() && !SaneKey(key)) {
      return reply(BadField("invalid_idempotency_key",
                            "Idempotency-Key must be 1 to 255 visible ASCII characters",
                            "Idempotency-Key"));
    }
    ParsedJob parsed = ParseNewJob(std::string(req.body), *ctx.workers, ctx.webhook_guard);
    if (parsed.error) return reply(std::move(*parsed.error));
    parsed.job.idempotency_key = std::move(key);
    RunOffLoop(ctx.pool, std::move(reply), [ctx, job = std::move(parsed.job)] {
      int64_t before = core::NowMicros();
      auto created = ctx.queue->Enqueue(job);
      if (!created.ok()) return StoreError(created.status());
      // A replayed idempotent request gets the existing job with 200 instead of 201.
      return JobResponse(created->created_at_us >= before ? 201 : 200, *created);
    });
  });

  router.AddAsync(Method::kGet, "/v1/jobs", [ctx](const Request& req, net::Reply reply) {
    std::optional<jobs::JobStatus> status;
    if (std::string_view s = req.QueryParam("status"); !s.empty()) {
      status = jobs::ParseJobStatus(s);
      if (!status) {
        return reply(BadField("invalid_status",
                              "status must be queued, running, succeeded, failed or canceled",
                              "status"));
      }
    }
    int limit = 50;
    if (std::string_view l = req.QueryParam("limit"); !l.empty()) {
      auto [p, ec] = std::from_chars(l.data(), l.data() + l.size(), limit);
      if (ec != std::errc() || p != l.data() + l.size() || limit < 1 || limit > 1000) {
        return reply(BadField("invalid_limit", "limit must be an integer from 1 to 1000", "limit"));
      }
    }
    std::string type(req.QueryParam("type"));
    std::string cursor(req.QueryParam("cursor"));
    RunOffLoop(ctx.pool, std::move(reply), [ctx, status, limit, type, cursor] {
      auto page = ctx.queue->List(status, type, limit, cursor);
      if (!page.ok()) {
        if (page.status().code() == core::StatusCode::kInvalidArgument) {
          return BadField("invalid_cursor", page.status().message(), "cursor");
        }
        return StoreError(page.status());
      }
      rapidjson::StringBuffer sb;
      Writer w(sb);
      w.StartObject();
      WriteString(w, "object", "list");
      w.Key("data");
      w.StartArray();
      for (const auto& j : page->jobs) WriteJob(w, j);
      w.EndArray();
      w.Key("next_cursor");
      if (page->next_cursor.empty()) {
        w.Null();
      } else {
        w.String(page->next_cursor.c_str());
      }
      w.EndObject();
      return net::JsonResponse(200, std::string(sb.GetString(), sb.GetSize()));
    });
  });

  auto unknown = [](std::string_view id) {
    return net::ErrorResponse(404, "not_found", "no job " + std::string(id), "id");
  };

  router.AddAsync(
      Method::kGet, "/v1/jobs/{id}", [ctx, unknown](const Request& req, net::Reply reply) {
        std::string id(req.Param("id"));
        if (!core::IsUuid(id)) return reply(unknown(id));
        RunOffLoop(ctx.pool, std::move(reply), [ctx, id, unknown] {
          auto job = ctx.queue->Get(id);
          if (!job.ok()) {
            return job.status().code() == core::StatusCode::kNotFound ? unknown(id)
                                                                      : StoreError(job.status());
          }
          return JobResponse(200, *job);
        });
      });

  router.AddAsync(
      Method::kPost, "/v1/jobs/{id}/cancel", [ctx, unknown](const Request& req, net::Reply reply) {
        std::string id(req.Param("id"));
        if (!core::IsUuid(id)) return reply(unknown(id));
        RunOffLoop(ctx.pool, std::move(reply), [ctx, id, unknown] {
          auto job = ctx.queue->Cancel(id);
          if (!job.ok()) {
            return job.status().code() == core::StatusCode::kNotFound ? unknown(id)
                                                                      : StoreError(job.status());
          }
          return JobResponse(200, *job);
        });
      });

  router.AddAsync(
      Method::kGet, "/v1/jobs/{id}/events", [ctx, unknown](const Request& req, net::Reply reply) {
        std::string id(req.Param("id"));
        if (!core::IsUuid(id)) return reply(unknown(id));
        int64_t after = 0;
        if (std::string_view last = req.Header("last-event-id"); !last.empty()) {
          auto [p, ec] = std::from_chars(last.data(), last.data() + last.size(), after);
          if (ec != std::errc() || p != last.data() + last.size() || after < 0) {
            return reply(BadField("invalid_last_event_id", "Last-Event-ID must be an event id",
                                  "Last-Event-ID"));
          }
        }
        RunOffLoop(ctx.pool, std::move(reply), [ctx, id, after, unknown] {
          auto job = ctx.queue->Get(id);
          if (!job.ok()) {
            return job.status().code() == core::StatusCode::kNotFound ? unknown(id)
                                                                      : StoreError(job.status());
          }
          Response r;
          r.content_type = "text/event-stream";
          r.headers.emplace_back("Cache-Control", "no-cache");
          r.headers.emplace_back("X-Accel-Buffering", "no");  // nginx: pass events through at once
          r.stream = [streams = ctx.streams, id, after](std::shared_ptr<net::StreamWriter> w) {
            streams->Add(id, after, std::move(w));
          };
          return r;
        });
      });
}

}  // namespace megaserve::api
