// The operational endpoints every megaserve process serves: /healthz, /readyz, /metrics,
// /v1/status and /openapi.json.
#pragma once

#include <functional>
#include <memory>
#include <string_view>

#include "api/status.h"
#include "core/config.h"
#include "net/router.h"

namespace megaserve::metrics {
class Registry;
}

namespace megaserve::api {

// The OpenAPI 3.1 document (api/openapi.json), compiled into the binary.
extern const std::string_view kOpenApiJson;

struct SystemContext {
  const core::Config* config = nullptr;
  metrics::Registry* registry = nullptr;
  StatusCache* status = nullptr;
  std::function<bool()> ready;     // readiness for /readyz
  std::function<bool()> draining;  // true once shutdown has begun
};

// Registers the operational routes. The context's pointers must outlive the router.
void RegisterSystemRoutes(net::Router& router, const SystemContext& context);

}  // namespace megaserve::api
