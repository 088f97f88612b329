#include "api/system_routes.h"

#include <openssl/crypto.h>

#include "metrics/registry.h"

namespace megaserve::api {

using net::Method;
using net::Request;
using net::Response;

void RegisterSystemRoutes(net::Router& router, const SystemContext& ctx) {
  router.Add(Method::kGet, "/healthz",
             [](const Request&) { return net::JsonResponse(200, R"({"status":"ok"})"); });

  router.Add(Method::kGet, "/readyz", [ctx](const Request&) {
    if (ctx.ready()) return net::JsonResponse(200, R"({"status":"ready"})");
    Response r = net::JsonResponse(
        503, ctx.draining() ? R"({"status":"draining"})" : R"({"status":"starting"})");
    r.headers.emplace_back("Retry-After", "1");
    return r;
  });

  router.Add(Method::kGet, "/v1/status", [status = ctx.status](const Request&) {
    Response r;
    r.shared_body = status->Get();
    r.headers.emplace_back("Cache-Control", "public, max-age=30");
    return r;
  });

  auto openapi = std::make_shared<const std::string>(kOpenApiJson);
  router.Add(Method::kGet, "/openapi.json", [openapi](const Request&) {
    Response r;
    r.shared_body = openapi;
    return r;
  });

  if (ctx.config->metrics.enabled) {
    router.Add(Method::kGet, "/metrics", [ctx](const Request& req) {
      const std::string& token = ctx.config->metrics.bearer_token;
      if (!token.empty()) {
        std::string_view auth = req.Header("authorization");
        constexpr std::string_view kBearer = "Bearer ";
        bool ok = auth.size() == kBearer.size() + token.size() &&
                  auth.substr(0, kBearer.size()) == kBearer &&
                  CRYPTO_memcmp(auth.data() + kBearer.size(), token.data(), token.size()) == 0;
        if (!ok) {
          Response r = net::ErrorResponse(401, "unauthorized",
                                          "GET /metrics needs the configured bearer token");
          r.headers.emplace_back("WWW-Authenticate", "Bearer");
          return r;
        }
      }
      Response r;
      r.content_type = metrics::kContentType;
      ctx.registry->ExposeTo(r.body);
      return r;
    });
  }
}

}  // namespace megaserve::api
