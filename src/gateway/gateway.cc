#include "gateway/gateway.h"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/address.hpp>

#include "cache/redis_cache.h"
#include "cache/redis_client.h"
#include "gateway/auth_filter.h"
#include "gateway/cache_filter.h"
#include "gateway/policies.h"
#include "gateway/proxy_filter.h"
#include "gateway/rate_limit_filter.h"
#include "gateway/upstream.h"
#include "metrics/registry.h"

namespace megaserve::gateway {
namespace {

bool IsLoopback(const std::string& host) {
  if (host == "localhost") return true;
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(host, ec);
  return !ec && address.is_loopback();
}

}  // namespace

core::Result<bool> ResolveKeysRequired(const core::Config& config, std::size_t key_count) {
  auto listen = core::ParseListen(config.server.listen);
  if (!listen.ok()) return listen.status();
  const std::string& host = listen->first;
  bool loopback = IsLoopback(host);
  const std::string& mode = config.gateway.auth;
  bool required = mode == "required" || (mode == "auto" && !loopback);
  if (!loopback && !config.gateway.allow_unauthenticated) {
    if (!required) {
      return core::InvalidArgument("refusing to listen on " + config.server.listen +
                                   " with gateway.auth = \"optional\": anyone "
                                   "who can reach it could call every API. Set "
                                   "gateway.auth = \"required\" (create keys "
                                   "with `megaserve keys create`), or set "
                                   "gateway.allow_unauthenticated = true if "
                                   "something in front of megaserve "
                                   "authenticates callers");
    }
    if (key_count == 0) {
      return core::InvalidArgument(
          "refusing to listen on " + config.server.listen +
          ": API keys are required there and none exists yet. Create one with "
          "`megaserve keys "
          "create --name NAME --scopes admin` (same --config/--data-dir), or "
          "set "
          "gateway.allow_unauthenticated = true");
    }
  }
  if (!required) {
    spdlog::warn(
        "API KEYS ARE OFF: anonymous requests are accepted on {} (loopback only), admin routes "
        "included. Set gateway.auth = \"required\" to require keys",
        config.server.listen);
  }
  return required;
}

Gateway::Gateway(GatewayOptions options) : options_(std::move(options)) {}

Gateway::~Gateway() { Stop(); }

core::Result<std::unique_ptr<Gateway>> Gateway::Create(GatewayOptions options) {
  const core::Config& config = *options.config;
  metrics::Registry& registry = *options.registry;
  std::unique_ptr<Gateway> g(new Gateway(options));

  auto keys = options.keys->List();
  if (!keys.ok()) return keys.status();
  std::size_t active = 0;
  for (const ApiKey& k : *keys) active += k.revoked() ? 0 : 1;
  auto required = ResolveKeysRequired(config, active);
  if (!required.ok()) return required.status();
  g->keys_required_ = *required;
  KeyCacheOptions key_options;
  key_options.max_age = config.gateway.key_cache_ttl;
  key_options.fresh = config.gateway.key_cache_ttl / 2;
  key_options.negative_ttl = config.gateway.key_cache_ttl;
  g->key_cache_ = std::make_unique<KeyCache>(*options.keys, *options.pool, key_options);
  g->auth_optional_ =
      std::make_unique<AuthFilter>(*g->key_cache_, AuthFilterOptions{.required = false}, registry);
  g->auth_required_ =
      std::make_unique<AuthFilter>(*g->key_cache_, AuthFilterOptions{.required = true}, registry);

  if (!config.redis.url.empty()) {
    cache::RedisOptions redis;
    redis.url = config.redis.url;
    redis.command_timeout = config.redis.timeout;
    redis.connect_timeout = config.redis.connect_timeout;
    g->redis_ = std::make_unique<cache::RedisPool>(options.loops, redis, &registry);
  }
  g->memory_ = std::make_unique<cache::MemoryCache>(config.cache.memory_bytes);
  if (g->redis_ && config.cache.redis) {
    g->redis_cache_ = std::make_unique<cache::RedisCache>(*g->redis_);
  }
  CacheFilterOptions cache_options;
  cache_options.xfetch_beta = config.cache.xfetch_beta;
  cache_options.key_salt = options.cache_key_salt;
  g->cache_ =
      std::make_unique<CacheFilter>(*g->memory_, g->redis_cache_.get(), registry, cache_options);

  RateLimitFilter::Options rate;
  if (!config.gateway.rate_limit.empty()) {
    auto parsed = core::ParseRate(config.gateway.rate_limit);
    if (!parsed.ok())
      return core::InvalidArgument("gateway.rate_limit: " + parsed.status().message());
    rate.default_limit = parsed->first;
    rate.default_period = parsed->second;
  }
  if (config.gateway.rate_limit_store == "redis") {
    if (!g->redis_) {
      return core::InvalidArgument("gateway.rate_limit_store = \"redis\" needs redis.url");
    }
    rate.redis = g->redis_.get();
  }
  rate.registry = &registry;
  g->rate_limit_ = std::make_unique<RateLimitFilter>(rate);

  if (options.proxy) {
    std::map<std::string, Upstream*, std::less<>> by_name;
    for (const core::UpstreamConfig& u : config.upstreams) {
      auto upstream = Upstream::Create(u, options.loops, registry);
      if (!upstream.ok()) {
        return core::InvalidArgument("upstreams \"" + u.name +
                                     "\": " + upstream.status().message());
      }
      by_name[u.name] = upstream->get();
      g->upstreams_[u.name] = std::move(*upstream);
    }
    g->proxy_ = std::make_unique<ProxyFilter>(std::move(by_name));
  }
  return g;
}

std::vector<Filter*> Gateway::FiltersFor(const RoutePolicy& policy) {
  std::vector<Filter*> filters;
  for (const std::string& name : policy.filters) {
    if (name == "auth") {
      filters.push_back(keys_required_ ? auth_required_.get() : auth_optional_.get());
    } else if (name == "rate_limit") {
      filters.push_back(rate_limit_.get());
    } else if (name == "cache") {
      filters.push_back(cache_.get());
    } else if (name == "proxy" && proxy_ && !policy.upstream.empty()) {
      filters.push_back(proxy_.get());
    }
  }
  if (proxy_ && !policy.upstream.empty() && (filters.empty() || filters.back() != proxy_.get())) {
    filters.push_back(proxy_.get());
  }
  return filters;
}

core::Status Gateway::Install(net::Router& router) {
  std::vector<RoutePolicy> policies = EffectivePolicies(*options_.config);
  for (const auto& route : router.routes()) {
    RoutePolicy policy = PolicyFor(policies, route->pattern);
    if (!options_.proxy) policy.upstream.clear();
    if (!policy.upstream.empty() && !upstreams_.count(policy.upstream)) {
      return core::InvalidArgument("route " + route->pattern + " (policy from " + policy.origin +
                                   ") names upstream \"" + policy.upstream +
                                   "\", which no [[upstreams]] table defines");
    }
    std::vector<Filter*> filters = FiltersFor(policy);
    if (filters.empty()) continue;
    const bool proxied = proxy_ && filters.back() == proxy_.get();
    for (std::size_t m = 0; m < net::kMethodCount; ++m) {
      auto method = static_cast<net::Method>(m);
      if (!route->Handles(method) || route->hybrid[m]) continue;
      auto chain = std::make_unique<Chain>(policy, filters, proxied ? nullptr : route->sync[m],
                                           proxied ? nullptr : route->async[m]);
      Chain* raw = chain.get();
      chains_.push_back(std::move(chain));
      router.AddHybrid(method, route->pattern,
                       [raw](const net::Request& req, net::Response& out, net::Deferrer& defer) {
                         return raw->Handle(req, out, defer);
                       });
    }
  }
  return core::Status::Ok();
}

void Gateway::Start() {
  if (redis_) redis_->Start();
  for (auto& [name, upstream] : upstreams_) upstream->Start();
}

void Gateway::Stop() {
  for (auto& [name, upstream] : upstreams_) upstream->Stop();
  if (redis_) redis_->Stop();
}

void Gateway::Invalidate(std::string_view route, std::string_view path) {
  cache_->Invalidate(route, path);
}

}  // namespace megaserve::gateway
