// Per-route gateway policy, from the [[routes]] tables of the configuration file.
//
//   [[routes]]
//   pattern = "/v1/forecasts/{symbol}"   # a registered route pattern, or "*" for the default
//   filters = ["auth", "rate_limit", "cache"]
//   scope = "forecasts"                  # scope an API key needs ("" = any valid key)
//   rate_limit = "600/min"               # GCRA limit per key (per client IP when anonymous)
//   cache_ttl = "5m"
//   stale_while_revalidate = "30s"
//   stale_if_error = "10m"
//   vary = ["accept"]
//   upstream = "forecasts"               # megaserve gateway: proxy to this [[upstreams]] name
//   timeout = "30s"
#pragma once

#include "core/config.h"

namespace megaserve::gateway {

using Duration = core::Duration;
using RoutePolicy = core::RouteConfig;
using UpstreamConfig = core::UpstreamConfig;

}  // namespace megaserve::gateway
