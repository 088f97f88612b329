#include "core/time_format.h"

#include <gtest/gtest.h>

namespace megaserve::core {
namespace {

TEST(TimeFormatTest, Rfc3339) {
  EXPECT_EQ(Rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(Rfc3339(1'614'265'330'000'123), "2021-02-25T15:02:10Z");
  EXPECT_EQ(Rfc3339(1'614'265'330'000'123, true), "2021-02-25T15:02:10.000123Z");
  EXPECT_EQ(Rfc3339(-1, true), "1969-12-31T23:59:59.999999Z");
}

TEST(TimeFormatTest, NowIsRecent) {
  EXPECT_GT(NowMicros(), int64_t{1'700'000'000} * 1'000'000);  // after 2023-11
}

}  // namespace
}  // namespace megaserve::core
