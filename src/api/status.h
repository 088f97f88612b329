// The GET /v1/status document: who is serving, which build, for how long, with which limits.
//
// Building it costs a few microseconds, so it is rebuilt at most once per TTL (30 s by default)
// and served from a cache in between. Each I/O thread keeps its own copy of the current body so
// that serving it touches no shared cache line; threads refresh their copy when the generation
// changes.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "net/router.h"

namespace megaserve::api {

struct StatusInfo {
  std::string service = "megaserve";
  std::vector<std::string> roles;       // what this process runs, e.g. {"api"}
  const net::Router* router = nullptr;  // the routes served, listed in the document
  const core::Config* config = nullptr;
  unsigned io_threads = 0;
};

class StatusCache {
 public:
  using Clock = std::chrono::steady_clock;

  explicit StatusCache(StatusInfo info, std::chrono::milliseconds ttl = std::chrono::seconds(30));
  StatusCache(const StatusCache&) = delete;  // No copying allowed.
  StatusCache& operator=(const StatusCache&) = delete;

  // The current document; rebuilt when older than the TTL. Thread-safe. The returned body is
  // this thread's copy: sharing it with other threads is safe but defeats its purpose.
  std::shared_ptr<const std::string> Get();

  // How many times the document has been built (for tests and metrics).
  uint64_t builds() const { return builds_.load(std::memory_order_relaxed); }

  // Builds the document now, without touching the cache.
  std::string Build() const;

 private:
  const StatusInfo info_;
  const std::chrono::milliseconds ttl_;
  const std::chrono::system_clock::time_point started_wall_;
  const Clock::time_point started_;
  const uint64_t id_;  // tells apart instances in the per-thread copies

  std::mutex mu_;
  std::shared_ptr<const std::string> body_;  // guarded by mu_
  std::atomic<int64_t> expires_ns_{0};       // steady-clock nanoseconds
  std::atomic<uint64_t> generation_{0};
  std::atomic<uint64_t> builds_{0};
};

}  // namespace megaserve::api
