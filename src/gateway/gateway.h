// The gateway as a whole: builds the filters from the configuration and wraps
// every route of a router in the filter chain of its policy
// (gateway/policies.h).
//
// Filters are shared by all routes: one auth filter per mode (keys optional /
// required), one rate-limit filter, one cache filter over one L1 and the
// optional Redis L2, one proxy filter over the [[upstreams]]. Routes whose
// policy has no filters keep their handler untouched and pay nothing. Redis
// connections and upstream clients live on the server's I/O loops (one Redis
// connection per loop), so the gateway is built after Server::Bind() and before
// Server::Start().
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cache/memory_cache.h"
#include "core/blocking_pool.h"
#include "core/config.h"
#include "core/status.h"
#include "gateway/api_keys.h"
#include "gateway/filter.h"
#include "net/router.h"

namespace boost::asio {
class io_context;
}

namespace megaserve::metrics {
class Registry;
}

namespace megaserve::cache {
class RedisCache;
class RedisPool;
}  // namespace megaserve::cache

namespace megaserve::gateway {

class AuthFilter;
class CacheFilter;
class ProxyFilter;
class RateLimitFilter;
class Upstream;

struct GatewayOptions {
  const core::Config* config = nullptr;
  metrics::Registry* registry = nullptr;
  ApiKeyStore* keys = nullptr;                  // the API keys (in the job store)
  core::BlockingPool* pool = nullptr;           // store reads off the I/O threads
  std::vector<boost::asio::io_context*> loops;  // the server's I/O loops
  // megaserve gateway: routes whose policy names an upstream are proxied. In
  // serve they stay in-process and their upstream is ignored.
  bool proxy = false;
  // The response cache's per-route key salt (CacheFilterOptions::key_salt); null = none.
  std::function<std::uint64_t(std::string_view route)> cache_key_salt;
};

// Whether API keys are required, from gateway.auth and server.listen: "auto"
// requires them unless the server listens on loopback only. Refuses
// (FailedPrecondition-like InvalidArgument with the fix in the message) to
// listen beyond loopback while keys are optional or none exist, unless
// gateway.allow_unauthenticated is set.
core::Result<bool> ResolveKeysRequired(const core::Config& config, std::size_t key_count);

class Gateway {
 public:
  // Builds the filters, the Redis pool and the upstreams; nothing connects
  // until Start().
  static core::Result<std::unique_ptr<Gateway>> Create(GatewayOptions options);
  ~Gateway();
  Gateway(const Gateway&) = delete;  // No copying allowed.
  Gateway& operator=(const Gateway&) = delete;

  // Wraps the handlers of every route in `router` in its policy's chain. Call
  // once, after every route is registered and before the server starts. Fails
  // when a proxied route names an upstream that does not exist.
  core::Status Install(net::Router& router);

  // Connects to Redis and starts upstream health checks.
  void Start();
  // Stops health checks and Redis reconnects. Call after the server's loops
  // have stopped.
  void Stop();

  // Drops the cached GET of `path` on `route` from both cache tiers (see CacheFilter).
  void Invalidate(std::string_view route, std::string_view path);

 private:
  explicit Gateway(GatewayOptions options);
  std::vector<Filter*> FiltersFor(const RoutePolicy& policy);

  GatewayOptions options_;
  bool keys_required_ = false;
  std::unique_ptr<KeyCache> key_cache_;
  std::unique_ptr<AuthFilter> auth_optional_;
  std::unique_ptr<AuthFilter> auth_required_;
  std::unique_ptr<cache::RedisPool> redis_;
  std::unique_ptr<cache::RedisCache> redis_cache_;
  std::unique_ptr<cache::MemoryCache> memory_;
  std::unique_ptr<CacheFilter> cache_;
  std::unique_ptr<RateLimitFilter> rate_limit_;
  std::map<std::string, std::unique_ptr<Upstream>, std::less<>> upstreams_;
  std::unique_ptr<ProxyFilter> proxy_;
  std::vector<std::unique_ptr<Chain>> chains_;
};

}  // namespace megaserve::gateway
