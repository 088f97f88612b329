#include "batching/clock.h"

#include <algorithm>

namespace megaserve::batching {

Clock& Clock::Steady() {
  static SteadyClock* const clock = new SteadyClock();
  return *clock;
}

void SteadyClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                            TimePoint deadline) {
  // An unbounded wait: converting TimePoint::max() for a timed wait could overflow.
  if (deadline == TimePoint::max()) {
    cv.wait(lock);
  } else {
    cv.wait_until(lock, deadline);
  }
}

FakeClock::FakeClock() : now_(std::chrono::hours(24 * 365).count()) {}

void FakeClock::WaitUntil(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
                          TimePoint deadline) {
  {
    std::lock_guard<std::mutex> g(waiters_mu_);
    waiters_.push_back({lock.mutex(), &cv});
  }
  // Registered before this re-check: an Advance() that the check misses finds us in waiters_
  // and cannot notify before cv.wait() has released `lock`.
  if (Now() < deadline) cv.wait(lock);
  std::lock_guard<std::mutex> g(waiters_mu_);
  auto it = std::find_if(waiters_.begin(), waiters_.end(),
                         [&](const Waiter& w) { return w.cv == &cv && w.mu == lock.mutex(); });
  if (it != waiters_.end()) waiters_.erase(it);
}

void FakeClock::Advance(Duration d) {
  now_.fetch_add(std::max(d, Duration::zero()).count());
  WakeAll();
}

int FakeClock::waiters() const {
  std::lock_guard<std::mutex> g(waiters_mu_);
  return static_cast<int>(waiters_.size());
}

void FakeClock::WakeAll() {
  std::vector<Waiter> copy;
  {
    std::lock_guard<std::mutex> g(waiters_mu_);
    copy = waiters_;
  }
  for (const Waiter& w : copy) {
    std::lock_guard<std::mutex> g(*w.mu);
    w.cv->notify_all();
  }
}

}  // namespace megaserve::batching
