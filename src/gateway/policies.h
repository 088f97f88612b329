// Which policy each route gets: the built-in defaults, overridden by the [[routes]] tables.
//
// A policy's pattern is an exact route pattern ("/v1/models/{name}"), a prefix ending in '*'
// ("/v1/jobs*", matching every route pattern that starts with "/v1/jobs"), or "*" for every
// route. A route takes the exact match, else the longest matching prefix, else "*". A [[routes]]
// table replaces the built-in policy with the same pattern as a whole.
#pragma once

#include <string_view>
#include <vector>

#include "core/config.h"
#include "gateway/route_policy.h"

namespace megaserve::gateway {

// The built-in policies: system routes unfiltered, /v1/status cached 30 s, model metadata 1 h,
// forecasts 5 min (POST bodies cached too), market data 30 s, job and admin routes behind their
// scopes, and "*" = auth and rate limit.
std::vector<RoutePolicy> DefaultPolicies();

// The defaults with config.routes laid over them.
std::vector<RoutePolicy> EffectivePolicies(const core::Config& config);

// The policy for `route` (a registered route pattern), with its `route` field set. `policies`
// must contain "*".
RoutePolicy PolicyFor(const std::vector<RoutePolicy>& policies, std::string_view route);

}  // namespace megaserve::gateway
