#include "core/time_format.h"

#include <time.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace megaserve::core {

std::string Rfc3339(int64_t unix_micros, bool with_micros) {
  int64_t seconds = unix_micros / 1'000'000;
  int64_t fraction = unix_micros % 1'000'000;
  if (fraction < 0) {  // floor, for times before 1970
    fraction += 1'000'000;
    --seconds;
  }
  std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[40];
  std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
  if (with_micros) {
    n += static_cast<std::size_t>(
        std::snprintf(text + n, sizeof text - n, ".%06lld", static_cast<long long>(fraction)));
  }
  text[n++] = 'Z';
  return {text, n};
}

int64_t NowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t CoarseNowMicros() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME_COARSE, &ts);
  return int64_t{ts.tv_sec} * 1'000'000 + ts.tv_nsec / 1000;
}

std::chrono::steady_clock::time_point CoarseSteadyNow() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return std::chrono::steady_clock::time_point(std::chrono::seconds(ts.tv_sec) +
                                               std::chrono::nanoseconds(ts.tv_nsec));
}

}  // namespace megaserve::core
