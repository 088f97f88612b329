// The Generic Cell Rate Algorithm (GCRA) for rate limits, shared by the in-process limiter and the
// Redis one (cache/redis_gcra.h), whose Lua script mirrors GcraStep exactly.
//
// GCRA is the ATM Forum's "virtual scheduling" form of the leaky bucket used as a meter (ATM
// Forum Traffic Management Specification 4.1, section 4.4.3; ITU-T I.371). A limit of `limit`
// requests per `period` gives an emission interval T = period / limit and a burst tolerance
// tau = T * (limit - 1), so that `limit` requests may arrive at once. The only state per key is
// the theoretical arrival time (TAT): the instant at which the bucket would be empty again if
// every allowed request had been spaced exactly T apart. A request at time t with
// TAT' = max(TAT, t) is allowed when TAT' - t <= tau, and then TAT becomes TAT' + T; otherwise it
// is denied and may be retried at TAT' - tau. So a key idle for a period may send `limit` requests
// at once and after that one every T: at most limit + floor(d / T) requests in any interval of
// length d, never more than `limit` at once, whereas fixed windows let 2 * limit through in the
// instant straddling a window boundary.
#pragma once

#include <cstdint>

namespace megaserve::cache {

// The outcome of one rate-limit check, as reported in RateLimit-* / Retry-After headers.
struct GcraResult {
  bool allowed = false;
  std::int64_t limit = 0;
  // Requests that would still be allowed right now, after this one.
  std::int64_t remaining = 0;
  // When denied: milliseconds until a request would be allowed (rounded up); 0 when allowed.
  std::int64_t retry_after_ms = 0;
  // Milliseconds until the bucket is full again, i.e. `limit` requests would be allowed at once
  // (rounded up); 0 for an untouched key.
  std::int64_t reset_ms = 0;

  bool operator==(const GcraResult&) const = default;
};

// One check at `now_us` against the state `tat_us` (microseconds on the same clock; 0 or any
// time in the past for a key never seen), which is advanced when the request is allowed.
// Requires limit >= 1 and period_us >= 1. The emission interval is period_us / limit rounded down
// (at least 1 us), so the effective rate is at most a rounding error above limit per period.
GcraResult GcraStep(std::int64_t& tat_us, std::int64_t now_us, std::int64_t limit,
                    std::int64_t period_us);

}  // namespace megaserve::cache
