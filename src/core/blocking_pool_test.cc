#include "core/blocking_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>

namespace megaserve::core {
namespace {

TEST(BlockingPoolTest, RunsEveryTaskOnItsWorkers) {
  std::atomic<int> sum{0};
  std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> on_caller{false};
  {
    BlockingPool pool("test", 3, 1000);
    for (int i = 1; i <= 100; ++i) {
      ASSERT_TRUE(pool.Submit([&, i] {
        sum += i;
        if (std::this_thread::get_id() == caller) on_caller = true;
      }));
    }
  }  // the destructor drains the queue
  EXPECT_EQ(sum.load(), 5050);
  EXPECT_FALSE(on_caller.load());
}

TEST(BlockingPoolTest, FullQueueRefusesAtOnce) {
  BlockingPool pool("test", 1, 2);
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::promise<void> running;
  ASSERT_TRUE(pool.Submit([&] {
    running.set_value();
    gate.wait();
  }));
  running.get_future().wait();  // the worker is busy; the queue is empty
  EXPECT_TRUE(pool.Submit([] {}));
  EXPECT_TRUE(pool.Submit([] {}));
  EXPECT_EQ(pool.queued(), 2u);
  EXPECT_FALSE(pool.Submit([] {}));  // full
  release.set_value();
  pool.Shutdown();
  EXPECT_EQ(pool.queued(), 0u);
  EXPECT_FALSE(pool.Submit([] {}));  // stopped
}

TEST(BlockingPoolTest, ThrowingTaskDoesNotKillTheWorker) {
  std::atomic<int> ran{0};
  {
    BlockingPool pool("test", 1, 10);
    pool.Submit([] { throw std::runtime_error("boom"); });
    pool.Submit([&] { ++ran; });
  }
  EXPECT_EQ(ran.load(), 1);
}

}  // namespace
}  // namespace megaserve::core
