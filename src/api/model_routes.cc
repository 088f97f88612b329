#include "api/model_routes.h"

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include "api/route_helpers.h"
#include "core/config.h"

namespace megaserve::api {

using net::Method;
using net::Request;
using net::Response;
using Writer = JsonWriter;

namespace {

// The blocking pool's 503 names what requests wait for here.
void RunOffLoop(core::BlockingPool* pool, net::Reply reply, std::function<Response()> work) {
  OffLoop(*pool, std::move(reply), std::move(work), "a thread");
}

void WriteConfig(Writer& w, const models::ModelConfig& c) {
  w.StartObject();
  WriteString(w, "backend", c.backend);
  w.Key("version");
  w.Int(c.version);
  w.Key("instances");
  w.Int(c.instances);
  w.Key("batching");
  w.StartObject();
  w.Key("max_batch_size");
  w.Int(c.batching.max_batch_size);
  WriteString(w, "max_queue_delay", core::FormatFineDuration(c.batching.max_queue_delay));
  w.Key("preferred_batch_sizes");
  w.StartArray();
  for (int size : c.batching.preferred_batch_sizes) w.Int(size);
  w.EndArray();
  w.Key("max_queue_size");
  w.Int(c.batching.max_queue_size);
  w.Key("priority_levels");
  w.Int(c.batching.priority_levels);
  w.Key("wait_spin_us");
  w.Int(c.batching.wait_spin_us);
  w.EndObject();
  w.Key("warmup");
  w.StartObject();
  w.Key("inputs");
  w.StartArray();
  // Warm-up inputs are stored as JSON text already (toml++'s JSON formatter wrote them).
  for (const std::string& input : c.warmup_inputs) {
    w.RawValue(input.data(), input.size(), rapidjson::kObjectType);
  }
  w.EndArray();
  w.EndObject();
  w.EndObject();
}

// The fields a listing shows; the full object adds the rest.
void WriteSummary(Writer& w, const models::ModelInfo& info) {
  WriteString(w, "object", "model");
  WriteString(w, "name", info.name);
  w.Key("version");
  w.Int(info.version);
  WriteString(w, "status", models::ModelStateName(info.state));
  w.Key("memory_bytes");
  w.Uint64(info.memory_bytes);
}

Response ModelError(const core::Status& s) {
  switch (s.code()) {
    case core::StatusCode::kNotFound:
      return net::ErrorResponse(404, "model_not_found", s.message(), "name");
    case core::StatusCode::kFailedPrecondition:
    case core::StatusCode::kUnavailable:
      return net::ErrorResponse(409, "model_conflict", s.message(), "name");
    default:
      return net::ErrorResponse(500, "model_load_failed", s.message(), "name");
  }
}

// A POST /v1/models/{name}/infer body: {"input": any JSON, "priority": 1.., "timeout_ms": >0,
// "bucket": "..."}; input is required.
struct InferRequest {
  std::string input;  // as JSON text
  batching::SubmitOptions options;
  std::string bucket;
  std::optional<Response> error;
};

InferRequest ParseInferRequest(const std::string& body) {
  InferRequest out;
  auto bad = [&out](std::string_view code, std::string message, std::string_view param) {
    out.error = net::ErrorResponse(400, code, message, param);
    return out;
  };
  SmallJsonBody parsed(body);
  const auto& d = parsed.doc();
  if (d.HasParseError() || !d.IsObject()) {
    return bad("invalid_json", "the body must be a JSON object", "");
  }
  bool has_input = false;
  for (auto& m : d.GetObject()) {
    std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name == "input") {
      rapidjson::StringBuffer sb;
      rapidjson::Writer<rapidjson::StringBuffer> w(sb);
      m.value.Accept(w);
      out.input.assign(sb.GetString(), sb.GetSize());
      has_input = true;
    } else if (name == "priority") {
      if (!m.value.IsInt() || m.value.GetInt() < 1) {
        return bad("invalid_priority", "priority must be an integer >= 1 (1 is the highest)",
                   "priority");
      }
      out.options.priority = m.value.GetInt();
    } else if (name == "timeout_ms") {
      if (!m.value.IsNumber() || !(m.value.GetDouble() > 0)) {
        return bad("invalid_timeout", "timeout_ms must be a number > 0", "timeout_ms");
      }
      out.options.deadline = batching::Clock::Steady().Now() +
                             std::chrono::duration_cast<batching::Clock::Duration>(
                                 std::chrono::duration<double, std::milli>(m.value.GetDouble()));
    } else if (name == "bucket") {
      if (!m.value.IsString()) return bad("invalid_bucket", "bucket must be a string", "bucket");
      out.bucket.assign(m.value.GetString(), m.value.GetStringLength());
    } else {
      return bad("unknown_field", "unknown field \"" + std::string(name) + "\"", name);
    }
  }
  if (!has_input) return bad("missing_input", "the body needs an \"input\"", "input");
  return out;
}

// The response to an inference that did not succeed.
Response InferError(const core::Status& s) {
  switch (s.code()) {
    case core::StatusCode::kResourceExhausted: {
      Response r = net::ErrorResponse(429, "queue_full", s.message());
      r.headers.emplace_back("Retry-After",
                             std::to_string(batching::RetryAfterSeconds(s).value_or(1)));
      return r;
    }
    case core::StatusCode::kDeadlineExceeded:
      return net::ErrorResponse(504, "deadline_exceeded", s.message(), "timeout_ms");
    case core::StatusCode::kUnavailable: {
      Response r = net::ErrorResponse(503, "model_unavailable", s.message(), "name");
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    case core::StatusCode::kInvalidArgument:
      return net::ErrorResponse(400, "invalid_input", s.message(), "input");
    default:
      return net::ErrorResponse(500, "inference_failed", s.message());
  }
}

Response InfoResponse(const core::Result<models::ModelInfo>& info) {
  if (!info.ok()) return ModelError(info.status());
  return net::JsonResponse(200, ModelJson(*info));
}

}  // namespace

std::string ModelJson(const models::ModelInfo& info) {
  rapidjson::StringBuffer sb;
  Writer w(sb);
  w.StartObject();
  WriteSummary(w, info);
  w.Key("reloading");
  w.Bool(info.reloading);
  w.Key("last_error");
  if (info.last_error.empty()) {
    w.Null();
  } else {
    w.String(info.last_error.data(), static_cast<rapidjson::SizeType>(info.last_error.size()));
  }
  w.Key("config");
  if (info.config) {
    WriteConfig(w, *info.config);
  } else {
    w.Null();
  }
  w.EndObject();
  return {sb.GetString(), sb.GetSize()};
}

void RegisterModelRoutes(net::Router& router, const ModelsContext& ctx) {
  router.AddAsync(Method::kGet, "/v1/models", [ctx](const Request&, net::Reply reply) {
    RunOffLoop(ctx.pool, std::move(reply), [ctx] {
      rapidjson::StringBuffer sb;
      Writer w(sb);
      w.StartObject();
      WriteString(w, "object", "list");
      w.Key("data");
      w.StartArray();
      for (const models::ModelInfo& info : ctx.repository->List()) {
        w.StartObject();
        WriteSummary(w, info);
        w.EndObject();
      }
      w.EndArray();
      w.EndObject();
      return net::JsonResponse(200, std::string(sb.GetString(), sb.GetSize()));
    });
  });

  router.AddAsync(Method::kGet, "/v1/models/{name}", [ctx](const Request& req, net::Reply reply) {
    RunOffLoop(ctx.pool, std::move(reply), [ctx, name = std::string(req.Param("name"))] {
      return InfoResponse(ctx.repository->Info(name));
    });
  });

  // Acquiring may load the model (blocking), so it runs on the pool; the request then waits in
  // the model's batcher, holding no thread, and the batcher's thread answers.
  router.AddAsync(
      Method::kPost, "/v1/models/{name}/infer", [ctx](const Request& req, net::Reply reply) {
        auto parsed = std::make_shared<InferRequest>(ParseInferRequest(std::string(req.body)));
        if (parsed->error) return reply(std::move(*parsed->error));
        auto shared_reply = std::make_shared<net::Reply>(std::move(reply));
        bool queued =
            ctx.pool->Submit([ctx, shared_reply, parsed, name = std::string(req.Param("name"))] {
              auto handle = ctx.repository->Acquire(name);
              if (!handle.ok()) {
                (*shared_reply)(handle.status().code() == core::StatusCode::kUnavailable
                                    ? InferError(handle.status())
                                    : ModelError(handle.status()));
                return;
              }
              auto held = std::make_shared<models::ModelHandle>(std::move(*handle));
              parsed->options.bucket = parsed->bucket;
              held->Infer(std::move(parsed->input), parsed->options,
                          [shared_reply, held, parsed](core::Result<std::string> out) {
                            if (!out.ok()) return (*shared_reply)(InferError(out.status()));
                            rapidjson::StringBuffer sb;
                            Writer w(sb);
                            w.StartObject();
                            WriteString(w, "object", "inference");
                            WriteString(w, "model", held->name());
                            w.Key("version");
                            w.Int(held->version());
                            w.Key("output");
                            w.RawValue(out->data(), out->size(), rapidjson::kObjectType);
                            w.EndObject();
                            (*shared_reply)(
                                net::JsonResponse(200, std::string(sb.GetString(), sb.GetSize())));
                          });
            });
        if (!queued) {
          Response r =
              net::ErrorResponse(503, "overloaded", "too many requests waiting for a thread");
          r.headers.emplace_back("Retry-After", "1");
          (*shared_reply)(std::move(r));
        }
      });

  // Load and unload are administrative: the gateway's built-in policy asks for the admin scope.
  router.AddAsync(
      Method::kPost, "/v1/models/{name}/load", [ctx](const Request& req, net::Reply reply) {
        RunOffLoop(ctx.pool, std::move(reply), [ctx, name = std::string(req.Param("name"))] {
          return InfoResponse(ctx.repository->Load(name));
        });
      });

  // Waits for the model's requests in flight, holding a pool thread meanwhile.
  router.AddAsync(
      Method::kPost, "/v1/models/{name}/unload", [ctx](const Request& req, net::Reply reply) {
        RunOffLoop(ctx.pool, std::move(reply), [ctx, name = std::string(req.Param("name"))] {
          return InfoResponse(ctx.repository->Unload(name));
        });
      });
}

}  // namespace megaserve::api
