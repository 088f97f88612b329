// Retry delays for jobs and webhook deliveries.
//
// Jobs: capped exponential backoff with "Full Jitter" (M. Brooker, "Exponential Backoff And
// Jitter", AWS Architecture Blog, 2015): sleep = uniform(0, min(cap, base * 2^attempt)).
// Spreading retries over the whole window keeps clients that failed together from retrying
// together.
//
// Webhooks: a fixed schedule in the style the Standard Webhooks specification suggests
// (immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), shortened at the end so that the
// base delays sum to about a day, each with +-20% jitter.
#pragma once

#include <array>
#include <chrono>
#include <optional>
#include <random>
#include <span>

namespace megaserve::jobs {

// The delay before retry number `attempt` of a job (0 for the first retry): uniform over
// [0, min(cap, base * 2^attempt)], in whole milliseconds. Never negative, never above `cap`,
// and overflow-safe for any attempt (a negative attempt counts as 0; a negative base or cap
// as 0).
std::chrono::milliseconds JobRetryDelay(int attempt, std::chrono::milliseconds base,
                                        std::chrono::milliseconds cap, std::mt19937_64& rng);

// Base delays of webhook delivery retries: kWebhookRetrySchedule[i] is the wait after the
// (i+1)-th failed attempt. Cumulative: 5 s, 5 min 5 s, 35 min 5 s, 2 h 35 min 5 s,
// 7 h 35 min 5 s, 15 h 35 min 5 s, 23 h 35 min 5 s; so the last of the 8 attempts (the first
// plus 7 retries) is made about 23.6 h (between 18.9 h and 28.3 h with jitter) after the first.
inline constexpr std::array<std::chrono::seconds, 7> kWebhookRetrySchedule = {
    std::chrono::seconds(5), std::chrono::minutes(5), std::chrono::minutes(30),
    std::chrono::hours(2),   std::chrono::hours(5),   std::chrono::hours(8),
    std::chrono::hours(8),
};

// Jitter applied to each webhook base delay: the result is uniform over base * [0.8, 1.2].
inline constexpr int kWebhookJitterPercent = 20;

// The wait before the next delivery attempt after `failed_attempts` attempts have failed.
// 0 failed attempts means the first delivery, which is sent at once (zero delay, no jitter).
// Returns nullopt once kWebhookRetrySchedule is exhausted (after the 8th failed attempt the
// delivery is abandoned).
std::optional<std::chrono::milliseconds> WebhookRetryDelay(int failed_attempts,
                                                           std::mt19937_64& rng);

// The same for a configured schedule (webhooks.retry_schedule): schedule[failed_attempts - 1]
// with kWebhookJitterPercent jitter, 0 for 0 failed attempts, nullopt once the schedule is
// exhausted. Negative entries count as 0.
std::optional<std::chrono::milliseconds> WebhookRetryDelay(
    int failed_attempts, std::span<const std::chrono::milliseconds> schedule, std::mt19937_64& rng);

}  // namespace megaserve::jobs
