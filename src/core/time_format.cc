#include "core/time_format.h"

#include <time.h>

#include <chrono>
#include <cstdio>
#include <ctime>

namespace megaserve::core {

namespace {

// Writes v as `width` decimal digits (zero-padded) at p; returns the end.
char* Digits(char* p, unsigned v, int width) {
  for (int i = width - 1; i >= 0; --i) {
    p[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
  return p + width;
}

}  // namespace

// The date comes from std::chrono's civil calendar (days since 1970 to year/month/day, plain
// arithmetic) and the digits are written directly, without gmtime_r's and strftime's general
// machinery: a forecast answer prints about a dozen timestamps. Years outside 0..9999, which
// need more than four digits, go through strftime as before.
std::size_t Rfc3339To(int64_t unix_micros, char* text, bool with_micros) {
  int64_t seconds = unix_micros / 1'000'000;
  int64_t fraction = unix_micros % 1'000'000;
  if (fraction < 0) {  // floor, for times before 1970
    fraction += 1'000'000;
    --seconds;
  }
  char* p = text;
  int64_t days = seconds / 86'400, second_of_day = seconds % 86'400;
  if (second_of_day < 0) {
    second_of_day += 86'400;
    --days;
  }
  const std::chrono::year_month_day date{std::chrono::sys_days{std::chrono::days{days}}};
  const int year = static_cast<int>(date.year());
  if (year >= 0 && year <= 9999) {
    p = Digits(p, static_cast<unsigned>(year), 4);
    *p++ = '-';
    p = Digits(p, static_cast<unsigned>(date.month()), 2);
    *p++ = '-';
    p = Digits(p, static_cast<unsigned>(date.day()), 2);
    *p++ = 'T';
    p = Digits(p, static_cast<unsigned>(second_of_day / 3600), 2);
    *p++ = ':';
    p = Digits(p, static_cast<unsigned>(second_of_day / 60 % 60), 2);
    *p++ = ':';
    p = Digits(p, static_cast<unsigned>(second_of_day % 60), 2);
  } else {
    std::time_t t = static_cast<std::time_t>(seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    p += std::strftime(text, 40, "%Y-%m-%dT%H:%M:%S", &tm);
  }
  if (with_micros) {
    *p++ = '.';
    p = Digits(p, static_cast<unsigned>(fraction), 6);
  }
  *p++ = 'Z';
  return static_cast<std::size_t>(p - text);
}

std::string Rfc3339(int64_t unix_micros, bool with_micros) {
  char text[kRfc3339Size];
  return {text, Rfc3339To(unix_micros, text, with_micros)};
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
