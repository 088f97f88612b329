// ResultFuture: the one-shot result of a submitted request, as DynamicBatcher::Submit returns it.
//
// It does what std::future does for one waiting thread, with two differences that matter when a
// batch completes in microseconds:
//  * One allocation and no mutex: the state is a 32-bit word (empty, ready, or empty with a
//    sleeping waiter) beside the value, and the waiter sleeps on that word with a futex.
//  * Spin, then sleep. A waiter first polls the word for up to `spin`, but only while the
//    machine has a spare core for it: at most `spare_cores` waiters spin at once, process-wide,
//    and the others sleep at once. Waking a sleeping thread costs a futex call and a context
//    switch, often more than the batch itself (bench/batching.sh); a spinning waiter sees the
//    result as soon as it is stored. Spinning is bounded, so a long batch costs a spare core
//    for `spin` at most. Adaptive spinning of this kind is what glibc's
//    adaptive mutexes and many thread pools do.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <utility>

namespace megaserve::batching {

namespace detail {

// The word's states.
inline constexpr uint32_t kEmpty = 0;
inline constexpr uint32_t kReady = 1;
inline constexpr uint32_t kSleeper = 2;  // empty, and the waiter sleeps on the word

// Sleeps while `*word` == `expected`, at most `timeout` (none when nullptr). May return early.
void FutexWait(std::atomic<uint32_t>& word, uint32_t expected,
               const std::chrono::nanoseconds* timeout);
// Wakes every thread sleeping on `word`.
void FutexWake(std::atomic<uint32_t>& word);
// Polls `word` until it reads kReady or `spin` passes, if fewer than `spare_cores` waiters are
// spinning right now (process-wide). Returns whether it read kReady.
bool SpinUntilReady(const std::atomic<uint32_t>& word, std::chrono::nanoseconds spin,
                    int spare_cores);
// Polls `value` until it differs from `seen` or `spin` passes; returns whether it changed.
bool SpinWhileEqual(const std::atomic<uint64_t>& value, uint64_t seen,
                    std::chrono::nanoseconds spin);

template <class T>
struct ResultState {
  std::atomic<uint32_t> word{kEmpty};
  std::optional<T> value;  // written once, before word becomes kReady
  std::chrono::nanoseconds spin{};
  int spare_cores = 0;

  // Publishes the value and wakes the waiter if it sleeps. Called once.
  void Set(T v) {
    value.emplace(std::move(v));
    if (word.exchange(kReady, std::memory_order_acq_rel) == kSleeper) FutexWake(word);
  }

  // Waits until the value is there or `deadline` (none when nullopt) passes; returns whether it
  // is there.
  bool Wait(std::optional<std::chrono::steady_clock::time_point> deadline) {
    if (word.load(std::memory_order_acquire) == kReady) return true;
    // A timed wait spins no longer than its timeout (a zero timeout is a plain poll).
    std::chrono::nanoseconds budget = spin;
    if (deadline) {
      budget = std::min(budget, std::chrono::duration_cast<std::chrono::nanoseconds>(
                                    *deadline - std::chrono::steady_clock::now()));
    }
    if (SpinUntilReady(word, budget, spare_cores)) return true;
    for (;;) {
      uint32_t w = word.load(std::memory_order_acquire);
      if (w == kReady) return true;
      if (w == kEmpty && !word.compare_exchange_strong(w, kSleeper, std::memory_order_acq_rel)) {
        continue;  // the value arrived meanwhile
      }
      if (!deadline) {
        FutexWait(word, kSleeper, nullptr);
        continue;
      }
      const auto left = *deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::nanoseconds::zero()) {
        return word.load(std::memory_order_acquire) == kReady;
      }
      const auto timeout = std::chrono::duration_cast<std::chrono::nanoseconds>(left);
      FutexWait(word, kSleeper, &timeout);
    }
  }
};

}  // namespace detail

template <class T>
class ResultFuture {
 public:
  // An invalid future (no state), as std::future's default.
  ResultFuture() = default;

  // True until get() has taken the result.
  bool valid() const { return state_ != nullptr; }

  // Blocks until the result is there.
  void wait() const {
    Check();
    state_->Wait(std::nullopt);
  }

  // Waits at most `timeout`: std::future_status::ready or ::timeout.
  template <class Rep, class Period>
  std::future_status wait_for(const std::chrono::duration<Rep, Period>& timeout) const {
    Check();
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::duration_cast<std::chrono::steady_clock::duration>(timeout);
    return state_->Wait(deadline) ? std::future_status::ready : std::future_status::timeout;
  }

  // Waits, then moves the result out; the future is no longer valid() afterwards.
  T get() {
    wait();
    std::shared_ptr<detail::ResultState<T>> state = std::move(state_);
    return std::move(*state->value);
  }

  // The producer's side: a future and the state its result is published through (Set()).
  static std::pair<ResultFuture, std::shared_ptr<detail::ResultState<T>>> Make(
      std::chrono::nanoseconds spin, int spare_cores) {
    auto state = std::make_shared<detail::ResultState<T>>();
    state->spin = spin;
    state->spare_cores = spare_cores;
    ResultFuture f;
    f.state_ = state;
    return {std::move(f), std::move(state)};
  }

 private:
  void Check() const {
    if (!state_) throw std::future_error(std::future_errc::no_state);
  }

  std::shared_ptr<detail::ResultState<T>> state_;
};

}  // namespace megaserve::batching
