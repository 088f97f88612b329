#include "core/ids.h"

#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <thread>

namespace megaserve::core {
namespace {

TEST(IdsTest, CanonicalVersion7Variant10) {
  std::string id = NewUuidV7();
  ASSERT_TRUE(IsUuid(id)) << id;
  EXPECT_EQ(id[14], '7');
  EXPECT_NE(std::string("89ab").find(id[19]), std::string::npos) << id;
}

TEST(IdsTest, StrictlyIncreasingWithinAThreadEvenInOneMillisecond) {
  std::string prev = NewUuidV7();
  for (int i = 0; i < 20000; ++i) {
    std::string next = NewUuidV7();
    ASSERT_LT(prev, next);
    prev = next;
  }
}

TEST(IdsTest, UniqueAcrossThreads) {
  std::vector<std::vector<std::string>> per(4);
  std::vector<std::thread> threads;
  for (auto& v : per) {
    threads.emplace_back([&v] {
      for (int i = 0; i < 5000; ++i) v.push_back(NewUuidV7());
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> all;
  for (auto& v : per) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), 20000u);
}

TEST(IdsTest, TimestampIsNow) {
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  int64_t ms = UuidV7Millis(NewUuidV7());
  EXPECT_GE(ms, now - 5);
  EXPECT_LE(ms, now + 1000);
  EXPECT_EQ(UuidV7Millis("not-a-uuid"), -1);
  EXPECT_EQ(UuidV7Millis("123e4567-e89b-42d3-a456-426614174000"), -1);  // version 4
  EXPECT_EQ(UuidV7Millis("00000000-0001-7000-8000-000000000000"), 1);
}

TEST(IdsTest, IsUuidRejectsNearMisses) {
  EXPECT_TRUE(IsUuid("0190B5B8-0000-7000-8000-000000000000"));
  EXPECT_FALSE(IsUuid(""));
  EXPECT_FALSE(IsUuid("0190b5b8-0000-7000-8000-00000000000"));    // short
  EXPECT_FALSE(IsUuid("0190b5b8-0000-7000-8000-00000000000g"));   // not hex
  EXPECT_FALSE(IsUuid("0190b5b8_0000-7000-8000-000000000000"));   // wrong separator
  EXPECT_FALSE(IsUuid("0190b5b8-0000-7000-8000-000000000000 "));  // trailing space
}

}  // namespace
}  // namespace megaserve::core
