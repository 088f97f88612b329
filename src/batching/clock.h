// The time source of the dynamic batcher, replaceable so tests run without sleeping.
//
// A Clock answers Now() and performs the batcher's only timed wait (WaitUntil). SteadyClock is
// std::chrono::steady_clock. FakeClock stands still until a test calls Advance(), which wakes
// every thread blocked in its WaitUntil() so it re-reads the time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace megaserve::batching {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using Duration = std::chrono::steady_clock::duration;

  virtual ~Clock() = default;

  // The current time.
  virtual TimePoint Now() const = 0;

  // Blocks until `cv` is notified or this clock reaches `deadline`, whichever comes first;
  // spurious returns are allowed, so callers re-check their condition. `lock` holds the mutex
  // that guards the condition on entry and on return, as with std::condition_variable::wait.
  virtual void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                         TimePoint deadline) = 0;

  // The process-wide steady clock; never destroyed.
  static Clock& Steady();
};

// std::chrono::steady_clock.
class SteadyClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 TimePoint deadline) override;
};

// A clock that moves only when told to. Thread-safe. Threads blocked in WaitUntil() wait on
// their condition variable without a timeout; Advance() and Set() notify each of them while
// holding that waiter's mutex, so a wake-up is never lost. Whoever waits on a FakeClock (e.g. a
// DynamicBatcher) must not be destroyed while another thread is inside Advance().
class FakeClock final : public Clock {
 public:
  // Starts at an arbitrary fixed point far from the epoch (so `Now() - x` never underflows).
  FakeClock();
  // No copying allowed.
  FakeClock(const FakeClock&) = delete;
  FakeClock& operator=(const FakeClock&) = delete;

  TimePoint Now() const override { return TimePoint(Duration(now_.load())); }
  void WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                 TimePoint deadline) override;

  // Moves the time forward by `d` (>= 0) and wakes every waiter.
  void Advance(Duration d);
  // The number of threads blocked in WaitUntil() right now; lets a test wait until the
  // batcher's workers have gone idle before it advances time.
  int waiters() const;

 private:
  struct Waiter {
    std::mutex* mu;
    std::condition_variable* cv;
  };
  void WakeAll();

  std::atomic<Duration::rep> now_;
  mutable std::mutex waiters_mu_;
  std::vector<Waiter> waiters_;  // guarded by waiters_mu_; one entry per blocked thread
};

}  // namespace megaserve::batching
