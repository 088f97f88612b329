#include "cache/gcra.h"

#include <algorithm>

namespace megaserve::cache {
namespace {

std::int64_t CeilMs(std::int64_t us) { return (us + 999) / 1000; }

}  // namespace

GcraResult GcraStep(std::int64_t& tat_us, std::int64_t now_us, std::int64_t limit,
                    std::int64_t period_us) {
  const std::int64_t interval = std::max<std::int64_t>(1, period_us / limit);
  const std::int64_t tolerance = interval * (limit - 1);
  const std::int64_t tat = std::max(tat_us, now_us);
  GcraResult r;
  r.limit = limit;
  if (tat - now_us > tolerance) {
    r.allowed = false;
    r.remaining = 0;
    r.retry_after_ms = CeilMs(tat - tolerance - now_us);
    r.reset_ms = CeilMs(tat - now_us);
    return r;
  }
  tat_us = tat + interval;
  const std::int64_t ahead = tat_us - now_us;  // in (0, limit * interval]
  r.allowed = true;
  // Further requests k = 1, 2, ... are allowed while ahead + (k - 1) * T <= tau.
  r.remaining = (limit * interval - ahead) / interval;
  r.retry_after_ms = 0;
  r.reset_ms = CeilMs(ahead);
  return r;
}

}  // namespace megaserve::cache
