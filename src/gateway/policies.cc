#include "gateway/policies.h"

#include <algorithm>

namespace megaserve::gateway {
namespace {

RoutePolicy Make(std::string pattern, std::vector<std::string> filters, std::string scope = "",
                 Duration ttl = Duration(0)) {
  RoutePolicy p;
  p.pattern = std::move(pattern);
  p.filters = std::move(filters);
  p.scope = std::move(scope);
  p.cache_ttl = ttl;
  p.origin = "default";
  return p;
}

bool Matches(std::string_view pattern, std::string_view route) {
  if (pattern == "*") return true;
  if (pattern.ends_with('*')) return route.starts_with(pattern.substr(0, pattern.size() - 1));
  return pattern == route;
}

}  // namespace

std::vector<RoutePolicy> DefaultPolicies() {
  using std::chrono::hours;
  using std::chrono::minutes;
  using std::chrono::seconds;
  std::vector<RoutePolicy> p = {
      Make("/healthz", {}),
      Make("/readyz", {}),
      Make("/metrics", {}),  // guarded by metrics.bearer_token
      Make("/openapi.json", {}),
      Make("/v1/status", {"cache"}, "", seconds(30)),
      Make("/v1/models", {"auth", "rate_limit", "cache"}, "", hours(1)),
      Make("/v1/models/{name}", {"auth", "rate_limit", "cache"}, "", hours(1)),
      Make("/v1/models/{name}/load", {"auth", "rate_limit"}, "admin"),
      Make("/v1/models/{name}/unload", {"auth", "rate_limit"}, "admin"),
      Make("/v1/admin*", {"auth"}, "admin"),
      Make("/v1/jobs*", {"auth", "rate_limit"}, "jobs"),
      Make("/v1/forecasts*", {"auth", "rate_limit", "cache"}, "forecasts", minutes(5)),
      Make("/v1/markets*", {"auth", "rate_limit", "cache"}, "forecasts", seconds(30)),
      Make("/v1/images*", {"auth", "rate_limit"}, "images"),
      Make("/v1/videos*", {"auth", "rate_limit"}, "videos"),
      Make("*", {"auth", "rate_limit"}),
  };
  // A forecast is asked for with a POST body; identical bodies share an entry.
  for (RoutePolicy& policy : p) policy.cache_post = policy.pattern == "/v1/forecasts*";
  return p;
}

std::vector<RoutePolicy> EffectivePolicies(const core::Config& config) {
  std::vector<RoutePolicy> policies = DefaultPolicies();
  for (const RoutePolicy& configured : config.routes) {
    auto same = std::find_if(policies.begin(), policies.end(),
                             [&](const RoutePolicy& p) { return p.pattern == configured.pattern; });
    if (same != policies.end()) {
      *same = configured;
    } else {
      policies.push_back(configured);
    }
  }
  return policies;
}

RoutePolicy PolicyFor(const std::vector<RoutePolicy>& policies, std::string_view route) {
  const RoutePolicy* best = nullptr;
  std::size_t best_rank = 0;  // exact beats any prefix; longer prefixes beat shorter ones
  for (const RoutePolicy& p : policies) {
    if (!Matches(p.pattern, route)) continue;
    std::size_t rank = p.pattern == route ? SIZE_MAX : p.pattern.size();
    if (!best || rank > best_rank) {
      best = &p;
      best_rank = rank;
    }
  }
  RoutePolicy out = best ? *best : RoutePolicy{};
  out.route = std::string(route);
  return out;
}

}  // namespace megaserve::gateway
