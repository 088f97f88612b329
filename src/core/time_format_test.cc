#include "core/time_format.h"

#include <gtest/gtest.h>

#include <ctime>
#include <random>
#include <string>
#include <vector>

namespace megaserve::core {
namespace {

TEST(TimeFormatTest, Rfc3339) {
  EXPECT_EQ(Rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(Rfc3339(1'614'265'330'000'123), "2021-02-25T15:02:10Z");
  EXPECT_EQ(Rfc3339(1'614'265'330'000'123, true), "2021-02-25T15:02:10.000123Z");
  EXPECT_EQ(Rfc3339(-1, true), "1969-12-31T23:59:59.999999Z");
}

// Against gmtime_r and strftime, the C library's calendar, over 1900..2400 (leap days, century
// years, the epoch's neighbours), and outside the four-digit years.
TEST(TimeFormatTest, Rfc3339MatchesTheCLibrary) {
  auto reference = [](int64_t seconds) {
    std::time_t t = static_cast<std::time_t>(seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char text[64];
    std::size_t n = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return std::string(text, n);
  };
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> any(-2'208'988'800, 13'569'465'600);  // 1900 .. 2400
  std::vector<int64_t> seconds = {0,
                                  -1,
                                  1,
                                  86'399,
                                  86'400,
                                  951'782'400,
                                  951'868'799,
                                  4'107'542'399,
                                  4'107'542'400,
                                  253'402'300'799,
                                  253'402'300'800,
                                  -62'167'219'201};
  for (int i = 0; i < 20000; ++i) seconds.push_back(any(rng));
  for (int64_t s : seconds) {
    ASSERT_EQ(Rfc3339(s * 1'000'000), reference(s)) << s;
    std::string with_micros = reference(s);
    with_micros.insert(with_micros.size() - 1, ".000007");
    ASSERT_EQ(Rfc3339(s * 1'000'000 + 7, true), with_micros) << s;
  }
  // RFC 3339 years have four digits, where glibc's %Y prints "0" for year 0.
  EXPECT_EQ(Rfc3339(int64_t{-62'167'219'200} * 1'000'000), "0000-01-01T00:00:00Z");
}

TEST(TimeFormatTest, NowIsRecent) {
  EXPECT_GT(NowMicros(), int64_t{1'700'000'000} * 1'000'000);  // after 2023-11
}

}  // namespace
}  // namespace megaserve::core
