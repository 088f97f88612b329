// The rate-limit filter: GCRA per caller (cache/gcra.h), in-process or shared
// through Redis.
//
// The caller is the API key the auth filter established, or the client IP when
// anonymous; each caller gets one bucket per route policy (routes that share
// the default policy share it). The limit is the key's own quota (requests per
// minute) when it has one, else the route's rate_limit, else
// gateway.rate_limit.
//
// Local mode keeps the theoretical arrival times in a sharded hash map: a check
// is one short critical section and never leaves the I/O thread. Global mode
// runs one Lua script per check in Redis (commands issued in one loop turn
// share one write, so checks are pipelined); while Redis is unreachable, checks
// fall back to the local buckets, counted in
// megaserve_ratelimit_fallbacks_total, so an outage degrades the limit to
// per-process instead of failing requests.
//
// Every answer carries the headers of draft-ietf-httpapi-ratelimit-headers:
//   RateLimit-Policy: "default";q=600;w=60     (quota q per window of w
//   seconds) RateLimit: "default";r=599;t=0              (r left now; t seconds
//   until the bucket is full)
// and a 429 adds Retry-After (RFC 9110 section 10.2.3) in whole seconds,
// rounded up.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "cache/gcra.h"
#include "core/ids.h"
#include "gateway/filter.h"

namespace megaserve::metrics {
class Counter;
class Registry;
}  // namespace megaserve::metrics

namespace megaserve::cache {
class RedisGcra;
class RedisPool;
}  // namespace megaserve::cache

namespace megaserve::gateway {

// In-process GCRA buckets, sharded by caller hash. Thread-safe.
class LocalRateLimiter {
 public:
  LocalRateLimiter() = default;
  LocalRateLimiter(const LocalRateLimiter&) = delete;  // No copying allowed.
  LocalRateLimiter& operator=(const LocalRateLimiter&) = delete;

  // One request by `caller` (a 64-bit hash of caller and policy) against
  // `limit` per `period`.
  cache::GcraResult Check(std::uint64_t caller, std::int64_t limit, Duration period,
                          std::int64_t now_us);

 private:
  static constexpr std::size_t kShards = 64;
  // Buckets are dropped once full again (their arrival time has passed); swept
  // when a shard grows past this.
  static constexpr std::size_t kSweepAbove = 4096;
  // Each thread remembers the bucket of the caller it saw last, so a busy caller's checks touch
  // only the bucket's arrival time (one compare-and-swap), not the shard's lock. A sweep bumps
  // `sweeps`, which makes every remembered bucket of the shard be looked up again; buckets are
  // shared_ptrs, so one still held by a thread outlives the sweep (a swept bucket was full, the
  // same state as a new one, so at most one request per sweep is counted on the old one).
  struct alignas(64) Shard {
    std::shared_mutex mu;
    std::unordered_map<std::uint64_t, std::shared_ptr<std::atomic<std::int64_t>>> tat_us;
    std::atomic<std::uint64_t> sweeps{0};
  };
  std::array<Shard, kShards> shards_;
  const std::uint64_t instance_ = core::NextInstanceId();  // for per-thread memos
};

class RateLimitFilter final : public Filter {
 public:
  struct Options {
    std::int64_t default_limit = 0;  // gateway.rate_limit; 0 = none
    Duration default_period{60'000};
    cache::RedisPool* redis = nullptr;  // global mode when set
    metrics::Registry* registry = nullptr;
  };
  // With options.redis, construct before the pool starts (the check script is
  // loaded on connect).
  explicit RateLimitFilter(Options options);
  ~RateLimitFilter() override;

  std::string_view name() const override { return "rate_limit"; }
  void OnRequest(Exchange& ex) override;

 private:
  void Decide(Exchange& ex, const cache::GcraResult& r, std::int64_t limit, Duration period);

  Options options_;
  LocalRateLimiter local_;
  std::unique_ptr<cache::RedisGcra> redis_;  // global mode
  metrics::Counter* allowed_ = nullptr;
  metrics::Counter* limited_ = nullptr;
  metrics::Counter* fallbacks_ = nullptr;
};

}  // namespace megaserve::gateway
