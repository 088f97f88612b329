#include "gateway/rate_limit_filter.h"

#include <xxhash.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>

#include "cache/redis_gcra.h"
#include "core/time_format.h"
#include "metrics/registry.h"

namespace megaserve::gateway {
namespace {

// Seconds rounded up, for Retry-After and the t parameter.
std::int64_t CeilSeconds(std::int64_t ms) { return ms <= 0 ? 0 : (ms + 999) / 1000; }

}  // namespace

cache::GcraResult LocalRateLimiter::Check(std::uint64_t caller, std::int64_t limit, Duration period,
                                          std::int64_t now_us) {
  Shard& shard = shards_[caller % kShards];
  const std::int64_t period_us = period.count() * 1000;
  // One step against the shared arrival time: retried when another thread moved it meanwhile.
  auto step = [&](std::atomic<std::int64_t>& tat) {
    std::int64_t seen = tat.load(std::memory_order_relaxed);
    while (true) {
      std::int64_t next = seen;
      cache::GcraResult r = cache::GcraStep(next, now_us, limit, period_us);
      if (next == seen || tat.compare_exchange_weak(seen, next, std::memory_order_relaxed)) {
        return r;
      }
    }
  };
  struct Memo {
    std::uint64_t owner = 0;
    std::uint64_t caller = 0;
    std::uint64_t sweeps = 0;
    std::shared_ptr<std::atomic<std::int64_t>> tat;
  };
  thread_local Memo memo;
  const std::uint64_t sweeps = shard.sweeps.load(std::memory_order_acquire);
  if (memo.owner == instance_ && memo.caller == caller && memo.sweeps == sweeps && memo.tat) {
    return step(*memo.tat);
  }
  std::shared_ptr<std::atomic<std::int64_t>> tat;
  {
    std::shared_lock lock(shard.mu);
    if (auto it = shard.tat_us.find(caller); it != shard.tat_us.end()) tat = it->second;
  }
  if (!tat) {
    std::unique_lock lock(shard.mu);
    if (shard.tat_us.size() > kSweepAbove) {
      std::erase_if(shard.tat_us, [now_us](const auto& entry) {
        return entry.second->load(std::memory_order_relaxed) <= now_us;
      });
      shard.sweeps.fetch_add(1, std::memory_order_acq_rel);
    }
    auto& slot = shard.tat_us[caller];
    if (!slot) slot = std::make_shared<std::atomic<std::int64_t>>(0);
    tat = slot;
  }
  memo = Memo{instance_, caller, sweeps, tat};
  return step(*tat);
}

RateLimitFilter::RateLimitFilter(Options options) : options_(options) {
  if (options_.redis) redis_ = std::make_unique<cache::RedisGcra>(*options_.redis);
  if (options_.registry) {
    auto& decisions = options_.registry->AddCounter(
        "megaserve_ratelimit_requests_total", "Rate-limit checks by result (allowed or limited).",
        {"result"});
    allowed_ = &decisions.WithLabels({"allowed"});
    limited_ = &decisions.WithLabels({"limited"});
    fallbacks_ = &options_.registry
                      ->AddCounter("megaserve_ratelimit_fallbacks_total",
                                   "Global rate-limit checks answered by the local buckets "
                                   "because Redis was unreachable.")
                      .WithLabels({});
  }
}

RateLimitFilter::~RateLimitFilter() = default;

void RateLimitFilter::OnRequest(Exchange& ex) {
  const RoutePolicy& policy = ex.policy();
  const Identity& who = ex.identity();
  if (policy.rate_limit == 0) return ex.Next();  // the route is not limited
  std::int64_t limit = policy.rate_limit < 0 ? options_.default_limit : policy.rate_limit;
  Duration period = policy.rate_limit < 0 ? options_.default_period : policy.rate_period;
  if (who.quota > 0) {
    limit = who.quota;
    period = Duration(60'000);
  }
  if (limit <= 0) return ex.Next();

  // The bucket: caller and policy, hashed together (no allocation on the hot path).
  std::string_view who_id = who.key_id.empty() ? ex.request().remote_addr : who.key_id;
  char buf[512];
  std::size_t n = 0;
  auto put = [&](std::string_view part) {
    std::size_t take = std::min(part.size(), sizeof buf - n);
    if (take > 0) std::memcpy(buf + n, part.data(), take);  // empty views may have null data()
    n += take;
  };
  put(who.key_id.empty() ? "i" : "k");
  put(who_id);
  put(std::string_view("\0", 1));
  put(policy.pattern);
  std::uint64_t caller = XXH3_64bits(buf, n);

  if (!redis_) {
    return Decide(ex, local_.Check(caller, limit, period, core::NowMicros()), limit, period);
  }
  ex.Suspend();
  char key[24];
  int len = std::snprintf(key, sizeof key, "%016llx", static_cast<unsigned long long>(caller));
  redis_->Check(std::string_view(key, static_cast<std::size_t>(len)), limit, period,
                [this, &ex, caller, limit, period](core::Result<cache::GcraResult> r) {
                  if (r.ok()) return Decide(ex, *r, limit, period);
                  if (fallbacks_) fallbacks_->Inc();
                  Decide(ex, local_.Check(caller, limit, period, core::NowMicros()), limit, period);
                });
}

void RateLimitFilter::Decide(Exchange& ex, const cache::GcraResult& r, std::int64_t limit,
                             Duration period) {
  const std::int64_t window = std::max<std::int64_t>(1, CeilSeconds(period.count()));
  // The header values, written with to_chars into one buffer (this runs on every request).
  char buf[160];
  char* const end = buf + sizeof buf;
  auto put = [end](char* at, std::string_view text) {
    std::size_t n = std::min<std::size_t>(text.size(), end - at);
    std::memcpy(at, text.data(), n);
    return at + n;
  };
  auto num = [end](char* at, std::int64_t v) { return std::to_chars(at, end, v).ptr; };
  char* p = put(buf, "\r\nRateLimit-Policy: \"default\";q=");
  p = num(p, limit);
  p = put(p, ";w=");
  p = num(p, window);
  p = put(p, "\r\nRateLimit: \"default\";r=");
  p = num(p, std::max<std::int64_t>(0, r.remaining));
  p = put(p, ";t=");
  p = num(p, CeilSeconds(r.reset_ms));
  if (r.allowed) {
    if (allowed_) allowed_->Inc();
    ex.AppendResponseHeaderLines(std::string_view(buf, p - buf));
    return ex.Next();
  }
  if (limited_) limited_->Inc();
  std::int64_t retry = std::max<std::int64_t>(1, CeilSeconds(r.retry_after_ms));
  net::Response response = net::ErrorResponse(
      429, "rate_limited",
      "rate limit of " + std::to_string(limit) + " requests per " + std::to_string(window) +
          " s exceeded; retry in " + std::to_string(retry) + " s");
  response.headers.emplace_back("Retry-After", std::to_string(retry));
  response.more_header_lines.assign(buf, p);
  ex.Respond(std::move(response));
}

}  // namespace megaserve::gateway
