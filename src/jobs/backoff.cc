// Retry delays: capped full-jitter exponential backoff for jobs (AWS Architecture Blog,
// "Exponential Backoff And Jitter", section "Adding Jitter", Full Jitter) and a fixed, jittered
// schedule for webhook deliveries (after the Standard Webhooks suggested retry schedule).
#include "jobs/backoff.h"

#include <algorithm>
#include <cstdint>

namespace megaserve::jobs {

std::chrono::milliseconds JobRetryDelay(int attempt, std::chrono::milliseconds base,
                                        std::chrono::milliseconds cap, std::mt19937_64& rng) {
  const int64_t b = std::max<int64_t>(base.count(), 0);
  const int64_t c = std::max<int64_t>(cap.count(), 0);
  const int shift = std::max(attempt, 0);
  // window = min(c, b << shift), computed without overflow: b << shift exceeds c exactly when
  // b > c >> shift, and any shift of 63 or more exceeds every positive c.
  int64_t window;
  if (b == 0) {
    window = 0;
  } else if (shift >= 63 || b > (c >> shift)) {
    window = c;
  } else {
    window = b << shift;
  }
  std::uniform_int_distribution<int64_t> dist(0, window);
  return std::chrono::milliseconds(dist(rng));
}

std::optional<std::chrono::milliseconds> WebhookRetryDelay(int failed_attempts,
                                                           std::mt19937_64& rng) {
  static const auto schedule = [] {
    std::array<std::chrono::milliseconds, kWebhookRetrySchedule.size()> ms{};
    std::copy(kWebhookRetrySchedule.begin(), kWebhookRetrySchedule.end(), ms.begin());
    return ms;
  }();
  return WebhookRetryDelay(failed_attempts, schedule, rng);
}

std::optional<std::chrono::milliseconds> WebhookRetryDelay(
    int failed_attempts, std::span<const std::chrono::milliseconds> schedule,
    std::mt19937_64& rng) {
  if (failed_attempts <= 0) return std::chrono::milliseconds(0);
  if (static_cast<size_t>(failed_attempts) > schedule.size()) return std::nullopt;
  const int64_t base = std::max<int64_t>(schedule[failed_attempts - 1].count(), 0);
  const int64_t spread = base * kWebhookJitterPercent / 100;
  std::uniform_int_distribution<int64_t> dist(base - spread, base + spread);
  return std::chrono::milliseconds(dist(rng));
}

}  // namespace megaserve::jobs
