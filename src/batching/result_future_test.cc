#include "batching/result_future.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

namespace megaserve::batching {
namespace {

using namespace std::chrono_literals;
using Future = ResultFuture<std::string>;

TEST(ResultFutureTest, ValueSetBeforeWaitingIsThereAtOnce) {
  auto [future, state] = Future::Make(0ns, 0);
  EXPECT_TRUE(future.valid());
  EXPECT_EQ(future.wait_for(0s), std::future_status::timeout);
  state->Set("done");
  EXPECT_EQ(future.wait_for(0s), std::future_status::ready);
  EXPECT_EQ(future.get(), "done");
  EXPECT_FALSE(future.valid());
  EXPECT_THROW(future.wait(), std::future_error);
}

TEST(ResultFutureTest, ASleepingWaiterIsWoken) {
  auto [future, state] = Future::Make(0ns, 0);  // no spinning: straight to the futex
  std::thread producer([state = state] {
    std::this_thread::sleep_for(50ms);
    state->Set("late");
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(future.get(), "late");
  EXPECT_GE(std::chrono::steady_clock::now() - start, 40ms);
  producer.join();
}

TEST(ResultFutureTest, WaitForTimesOutThenStillDelivers) {
  auto [future, state] = Future::Make(0ns, 0);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(future.wait_for(30ms), std::future_status::timeout);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 30ms);
  std::thread producer([state = state] { state->Set("after"); });
  EXPECT_EQ(future.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(future.get(), "after");
  producer.join();
}

TEST(ResultFutureTest, ASpinningWaiterSeesTheValueAndLongWaitsFallBackToSleep) {
  // Spinning allowed (one spare core) for 10 ms; the value comes first in one case and after
  // the spin in the other, and both arrive.
  for (auto delay : {1ms, 40ms}) {
    auto [future, state] = Future::Make(10ms, 1);
    std::thread producer([state = state, delay] {
      std::this_thread::sleep_for(delay);
      state->Set("spun");
    });
    EXPECT_EQ(future.get(), "spun");
    producer.join();
  }
}

TEST(ResultFutureTest, AZeroTimeoutDoesNotSpin) {
  auto [future, state] = Future::Make(1s, 1);  // a spin long enough to notice
  const auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(future.wait_for(0s), std::future_status::timeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms);
  state->Set("x");
  EXPECT_EQ(future.get(), "x");
}

TEST(ResultFutureTest, ManyWaitersAndProducersAcrossThreads) {
  constexpr int kPairs = 64;
  std::vector<std::thread> threads;
  std::vector<std::string> got(kPairs);
  for (int i = 0; i < kPairs; ++i) {
    auto [future, state] = Future::Make(20us, 1);
    threads.emplace_back([state = state, i] { state->Set(std::to_string(i)); });
    threads.emplace_back([f = std::move(future), &got, i]() mutable { got[i] = f.get(); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kPairs; ++i) EXPECT_EQ(got[i], std::to_string(i));
}

}  // namespace
}  // namespace megaserve::batching
