// Timestamps as text, in UTC.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace megaserve::core {

// RFC 3339 for Unix time in microseconds: "2026-11-27T01:02:03Z", or with
// fractional seconds "2026-11-27T01:02:03.000123Z" when with_micros is set.
std::string Rfc3339(int64_t unix_micros, bool with_micros = false);
// The same text written to `out`, which must hold kRfc3339Size chars; returns its length (no
// terminating zero). For hot paths that append timestamps to a larger text.
inline constexpr std::size_t kRfc3339Size = 48;
std::size_t Rfc3339To(int64_t unix_micros, char* out, bool with_micros = false);

// Unix time in microseconds now.
int64_t NowMicros();

// Cheaper clocks for per-request bookkeeping that needs only milliseconds: they read the kernel's
// last tick (CLOCK_*_COARSE, a few milliseconds of resolution) without asking the hardware.
// Unix time in microseconds:
int64_t CoarseNowMicros();
// The steady clock's time (same epoch as std::chrono::steady_clock):
std::chrono::steady_clock::time_point CoarseSteadyNow();

}  // namespace megaserve::core
