#include "batching/dynamic_batcher.h"

#include <charconv>

namespace megaserve::batching {
namespace {
constexpr std::string_view kRetryKey = "retry_after_s=";
}  // namespace

std::optional<int> RetryAfterSeconds(const core::Status& status) {
  if (status.code() != core::StatusCode::kResourceExhausted) return std::nullopt;
  const std::string& m = status.message();
  const auto pos = m.find(kRetryKey);
  if (pos == std::string::npos) return std::nullopt;
  const char* begin = m.data() + pos + kRetryKey.size();
  int seconds = 0;
  const auto [end, ec] = std::from_chars(begin, m.data() + m.size(), seconds);
  if (ec != std::errc() || end == begin) return std::nullopt;
  return seconds;
}

namespace detail {
core::Status QueueFull(std::size_t queued, int retry_after_s) {
  return {core::StatusCode::kResourceExhausted, "batcher queue full (" + std::to_string(queued) +
                                                    " requests queued); " + std::string(kRetryKey) +
                                                    std::to_string(retry_after_s)};
}
}  // namespace detail

}  // namespace megaserve::batching
