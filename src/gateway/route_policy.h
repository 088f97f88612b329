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

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace megaserve::gateway {

using Duration = std::chrono::milliseconds;

struct RoutePolicy {
  std::string pattern = "*";
  std::vector<std::string> filters;  // in order; names of gateway filters
  std::string scope;                 // required API-key scope; "" = any valid key

  // Rate limit: `rate_limit` requests per `rate_period`, bursts up to the whole limit.
  // rate_limit 0 = unlimited.
  std::int64_t rate_limit = 0;
  Duration rate_period{60'000};

  // Response cache. cache_ttl 0 = not cached.
  Duration cache_ttl{0};
  Duration stale_while_revalidate{0};
  Duration stale_if_error{0};
  bool cache_post = false;         // POST responses are cacheable, keyed by body too
  std::vector<std::string> vary;   // request headers (lower case) that select a variant

  // Proxying (megaserve gateway).
  std::string upstream;  // [[upstreams]] name; "" = served in-process
  Duration timeout{30'000};
};

// One [[upstreams]] table: a named group of equivalent worker services.
struct UpstreamConfig {
  std::string name;
  std::vector<std::string> targets;  // base URLs: "http://10.0.0.5:8081"
  std::string balance = "least_request";  // or "round_robin"
  std::string health_path = "/readyz";
  Duration health_interval{5'000};
  Duration health_timeout{1'000};
  int eject_after_5xx = 5;          // consecutive 5xx responses before a target is ejected
  Duration base_ejection{30'000};   // first ejection length; doubles for each repeat
  double retry_budget = 0.2;        // retries allowed as a fraction of requests in flight
  int min_retries = 3;              // retries always allowed regardless of the budget
};

}  // namespace megaserve::gateway
