#include "api/model_routes.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

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
  WriteString(w, "max_queue_delay", core::FormatDuration(c.batching.max_queue_delay));
  w.Key("preferred_batch_sizes");
  w.StartArray();
  for (int size : c.batching.preferred_batch_sizes) w.Int(size);
  w.EndArray();
  w.Key("max_queue_size");
  w.Int(c.batching.max_queue_size);
  w.Key("priority_levels");
  w.Int(c.batching.priority_levels);
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

  // Load and unload are administrative. There is no authentication layer yet, so anyone who can
  // reach the API can call them; put them behind one when it exists.
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
