#include "batching/result_future.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <climits>

namespace megaserve::batching::detail {
namespace {

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) &&
                  std::atomic<uint32_t>::is_always_lock_free,
              "the futex word must be a plain 32-bit integer");

// Waiters spinning right now, across every batcher of the process.
std::atomic<int> spinning_waiters{0};

uint32_t* Address(std::atomic<uint32_t>& word) { return reinterpret_cast<uint32_t*>(&word); }

// A spin-wait hint, issued once per 64 polls rather than on every one: under KVM, a vCPU that
// executes PAUSE back to back can be taken for a spinning lock waiter and descheduled
// (pause-loop exiting).
void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

void FutexWait(std::atomic<uint32_t>& word, uint32_t expected,
               const std::chrono::nanoseconds* timeout) {
  timespec ts{};
  if (timeout != nullptr) {
    ts.tv_sec = static_cast<time_t>(timeout->count() / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout->count() % 1'000'000'000);
  }
  // EAGAIN (the word changed), EINTR and ETIMEDOUT all send the caller back to re-check.
  syscall(SYS_futex, Address(word), FUTEX_WAIT_PRIVATE, expected,
          timeout != nullptr ? &ts : nullptr, nullptr, 0);
}

void FutexWake(std::atomic<uint32_t>& word) {
  syscall(SYS_futex, Address(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

// Polls `done` until it holds or `spin` passes; returns whether it held.
template <class Done>
bool Poll(std::chrono::nanoseconds spin, const Done& done) {
  const auto until = std::chrono::steady_clock::now() + spin;
  for (int i = 1;; ++i) {
    if (done()) return true;
    // The clock is read every 64 polls: a poll is a few nanoseconds, a clock read tens.
    if (i % 64 == 0) {
      if (std::chrono::steady_clock::now() >= until) return false;
      CpuRelax();
    }
  }
}

bool SpinUntilReady(const std::atomic<uint32_t>& word, std::chrono::nanoseconds spin,
                    int spare_cores) {
  if (spin <= std::chrono::nanoseconds::zero() || spare_cores <= 0) return false;
  if (spinning_waiters.fetch_add(1, std::memory_order_relaxed) >= spare_cores) {
    spinning_waiters.fetch_sub(1, std::memory_order_relaxed);
    return false;
  }
  const bool ready = Poll(spin, [&word] { return word.load(std::memory_order_acquire) == kReady; });
  spinning_waiters.fetch_sub(1, std::memory_order_relaxed);
  return ready;
}

bool SpinWhileEqual(const std::atomic<uint64_t>& value, uint64_t seen,
                    std::chrono::nanoseconds spin) {
  return Poll(spin, [&] { return value.load(std::memory_order_acquire) != seen; });
}

}  // namespace megaserve::batching::detail
