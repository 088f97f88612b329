// The API-key admin routes; see key_routes.h.
#include "api/key_routes.h"

#include <rapidjson/document.h>

#include <functional>
#include <string>
#include <utility>
#include <variant>

#include "api/route_helpers.h"

namespace megaserve::api {
namespace {

using net::Method;
using net::Request;
using net::Response;

struct NewKey {
  std::string name;
  std::uint32_t scopes = 0;
  std::int64_t quota = 0;
};

Response BadParam(std::string_view message, std::string_view param) {
  return net::ErrorResponse(400, "invalid_param", message, param);
}

// The body of POST /v1/admin/keys, or the 400 that refuses it.
std::variant<NewKey, Response> ParseNewKey(const std::string& body) {
  SmallJsonBody parsed(body);
  const auto& d = parsed.doc();
  if (d.HasParseError() || !d.IsObject()) {
    return net::ErrorResponse(400, "invalid_json", "the body must be a JSON object");
  }
  NewKey out;
  if (!d.HasMember("name") || !d["name"].IsString() || d["name"].GetStringLength() == 0) {
    return BadParam("\"name\" must be a non-empty string", "name");
  }
  out.name.assign(d["name"].GetString(), d["name"].GetStringLength());
  if (out.name.size() > 200) return BadParam("\"name\" is at most 200 bytes", "name");
  if (d.HasMember("scopes")) {
    const auto& scopes = d["scopes"];
    if (!scopes.IsArray()) return BadParam("\"scopes\" must be an array of strings", "scopes");
    for (const auto& s : scopes.GetArray()) {
      if (!s.IsString()) return BadParam("\"scopes\" must be an array of strings", "scopes");
      auto scope = gateway::ParseScope(std::string_view(s.GetString(), s.GetStringLength()));
      if (!scope.ok()) return BadParam(scope.status().message(), "scopes");
      out.scopes |= gateway::ScopeBit(*scope);
    }
  }
  if (d.HasMember("quota") && !d["quota"].IsNull()) {
    const auto& quota = d["quota"];
    if (!quota.IsInt64() || quota.GetInt64() < 0 || quota.GetInt64() > kMaxKeyQuota) {
      return BadParam("\"quota\" must be an integer from 0 (the route's limit) to 1000000000",
                      "quota");
    }
    out.quota = quota.GetInt64();
  }
  return out;
}

Response StoreError(const core::Status& s) {
  switch (s.code()) {
    case core::StatusCode::kNotFound:
      return net::ErrorResponse(404, "key_not_found", s.message(), "id");
    case core::StatusCode::kInvalidArgument:
      return BadParam(s.message(), "");
    case core::StatusCode::kUnavailable:
    case core::StatusCode::kResourceExhausted:
      return StoreUnavailable(s);
    default:
      return net::ErrorResponse(500, "internal_error", s.message());
  }
}

Response KeyResponse(const core::Result<gateway::ApiKey>& key) {
  if (!key.ok()) return StoreError(key.status());
  return net::JsonResponse(200, key->ToJson());
}

void RunOffLoop(core::BlockingPool* pool, net::Reply reply, std::function<Response()> work) {
  OffLoop(*pool, std::move(reply), std::move(work), "the store");
}

}  // namespace

void RegisterKeyRoutes(net::Router& router, const KeysContext& ctx) {
  router.AddAsync(Method::kPost, "/v1/admin/keys", [ctx](const Request& req, net::Reply reply) {
    auto parsed = ParseNewKey(std::string(req.body));
    if (auto* error = std::get_if<Response>(&parsed)) {
      reply(std::move(*error));
      return;
    }
    RunOffLoop(ctx.pool, std::move(reply), [ctx, key = std::get<NewKey>(std::move(parsed))] {
      auto created = ctx.store->Create(key.name, key.scopes, key.quota);
      if (!created.ok()) return StoreError(created.status());
      return net::JsonResponse(201, created->key.ToJson(created->token));
    });
  });

  router.AddAsync(Method::kGet, "/v1/admin/keys", [ctx](const Request&, net::Reply reply) {
    RunOffLoop(ctx.pool, std::move(reply), [ctx] {
      auto keys = ctx.store->List();
      if (!keys.ok()) return StoreError(keys.status());
      std::string body = R"({"object":"list","data":[)";
      for (std::size_t i = 0; i < keys->size(); ++i) {
        if (i > 0) body += ',';
        body += (*keys)[i].ToJson();
      }
      body += "]}";
      return net::JsonResponse(200, std::move(body));
    });
  });

  router.AddAsync(Method::kGet, "/v1/admin/keys/{id}", [ctx](const Request& req, net::Reply reply) {
    RunOffLoop(ctx.pool, std::move(reply), [ctx, id = std::string(req.Param("id"))] {
      return KeyResponse(ctx.store->Get(id));
    });
  });

  router.AddAsync(
      Method::kDelete, "/v1/admin/keys/{id}", [ctx](const Request& req, net::Reply reply) {
        RunOffLoop(ctx.pool, std::move(reply), [ctx, id = std::string(req.Param("id"))] {
          return KeyResponse(ctx.store->Revoke(id));
        });
      });
}

}  // namespace megaserve::api
