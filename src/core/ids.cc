#include "core/ids.h"

#include <atomic>
#include <chrono>
#include <random>

namespace megaserve::core {
namespace {

struct Generator {
  std::mt19937_64 rng{std::random_device{}()};
  uint64_t last_ms = 0;
  uint16_t counter = 0;  // 12 bits used
};
thread_local Generator t_gen;

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::string NewUuidV7() {
  Generator& g = t_gen;
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  uint64_t ms = static_cast<uint64_t>(now);
  if (ms > g.last_ms) {
    g.last_ms = ms;
    g.counter = static_cast<uint16_t>(g.rng() & 0x7FF);  // top bit clear: room to count up
  } else if (++g.counter > 0xFFF) {
    // Counter exhausted within one millisecond (or the clock went back): borrow the next one.
    ++g.last_ms;
    g.counter = 0;
  }
  ms = g.last_ms;
  uint64_t hi = (ms & 0xFFFFFFFFFFFFull) << 16 | 0x7000u | g.counter;
  uint64_t lo = (g.rng() & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull;

  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(36, '-');
  int pos = 0;
  auto put = [&](uint64_t v, int nibbles) {
    for (int i = nibbles - 1; i >= 0; --i) {
      if (pos == 8 || pos == 13 || pos == 18 || pos == 23) ++pos;
      out[pos++] = kHex[(v >> (i * 4)) & 15];
    }
  };
  put(hi, 16);
  put(lo, 16);
  return out;
}

bool IsUuid(std::string_view t) {
  if (t.size() != 36) return false;
  for (std::size_t i = 0; i < t.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? t[i] != '-' : HexValue(t[i]) < 0) return false;
  }
  return true;
}

int64_t UuidV7Millis(std::string_view t) {
  if (!IsUuid(t) || t[14] != '7') return -1;
  int64_t ms = 0;
  for (std::size_t i = 0; i < 13; ++i) {
    if (i == 8) continue;
    ms = ms << 4 | HexValue(t[i]);
  }
  return ms;
}

std::uint64_t NextInstanceId() {
  static std::atomic<std::uint64_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed) + 1;
}

}  // namespace megaserve::core
