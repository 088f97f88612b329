#include "jobs/coalescer.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace megaserve::jobs {
namespace {

TEST(CoalescerTest, EveryCallerGetsItsOwnResultAndBusyMomentsShareFlushes) {
  std::atomic<int> flushes{0};
  std::atomic<size_t> largest{0};
  Coalescer<int, int> doubler(
      [&](const std::vector<int>& items) {
        ++flushes;
        size_t seen = largest.load();
        while (items.size() > seen && !largest.compare_exchange_weak(seen, items.size())) {
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a round trip
        std::vector<int> out;
        for (int i : items) out.push_back(i * 2);
        return out;
      },
      /*max_batch=*/5);
  constexpr int kThreads = 8;
  constexpr int kEach = 50;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const int item = t * 1000 + i;
        if (doubler.Submit(item) != item * 2) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LT(flushes.load(), kThreads * kEach);  // some calls shared a flush
  EXPECT_GT(largest.load(), 1u);
  EXPECT_LE(largest.load(), 5u);  // never more than max_batch
}

TEST(CoalescerTest, ALoneCallerFlushesAtOnce) {
  Coalescer<int, int> identity([](const std::vector<int>& items) { return items; }, 8);
  EXPECT_EQ(identity.Submit(7), 7);
  EXPECT_EQ(identity.Submit(9), 9);
}

}  // namespace
}  // namespace megaserve::jobs
