// An upstream: one named group of equivalent worker services that `megaserve gateway` proxies
// to, with load balancing, active health checks, outlier ejection, budgeted retries and a
// per-request deadline. The algorithms and their sources are described in upstream.cc.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"
#include "gateway/route_policy.h"
#include "net/http_client.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace megaserve::metrics {
class Counter;
class Registry;
}  // namespace megaserve::metrics

namespace megaserve::gateway {

// One request to forward to a target of an upstream.
struct ProxyRequest {
  std::string method = "GET";
  std::string target = "/";  // path and query, as sent in the request line
  // Sent as given; the client adds Host and Content-Length.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Covers the whole exchange, a retry included; 0 or less means 30 s.
  Duration timeout{30'000};
  // True when the request may be sent twice (RFC 9110 section 9.2.2). A request that is not
  // idempotent is retried only when it provably never left (its connection was never made).
  bool idempotent = false;
};

class Upstream {
 public:
  using Callback = std::function<void(core::Result<net::ClientResponse>)>;

  // Builds the upstream named config.name over `loops` (at least one; usually the gateway
  // server's I/O loops), with one keep-alive HTTP client per loop. Returns InvalidArgument when
  // a target is not an "http://host:port" base URL (no path, query or user info), there are no
  // targets, balance is neither "round_robin" nor "least_request", or a duration or count is
  // out of range. The metric series of every target (megaserve_upstream_requests_total, whose
  // code label is the status class "2xx".."5xx" or "error" or "timeout", _retries_total,
  // _ejections_total, _healthy, _in_flight) are created here, in `registry`, which must outlive
  // the upstream, as must the loops.
  static core::Result<std::unique_ptr<Upstream>> Create(UpstreamConfig config,
                                                        std::vector<boost::asio::io_context*> loops,
                                                        metrics::Registry& registry);

  // Must run while none of the loops is running (before they start or after they stopped):
  // the HTTP clients are confined to their loops. Requests still queued on the loops are
  // dropped uncalled when the loops are destroyed.
  ~Upstream();

  // No copying allowed.
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  // Starts the active health checks: every health_interval, a GET of health_path on each target
  // (from the first loop's thread). Safe to call from any thread; a second call does nothing.
  void Start();
  // Stops the health checks; a check in flight still records its result. Safe to call from any
  // thread. Targets keep the health they last had.
  void Stop();

  // Sends `req` to a target chosen by the balancer and calls `done` exactly once with the
  // response (any HTTP status; a 502/503/504 when it was not retried or the retry failed too)
  // or an error:
  //   DeadlineExceeded  req.timeout passed (the retry included);
  //   Unavailable       connection refused or reset, malformed response;
  //   (other)           what net::HttpClient::Fetch reported (InvalidArgument for a bad
  //                     method or header, ResourceExhausted for an oversized response).
  // Callable from any thread. Runs on the loop whose thread is calling, if any, else is posted
  // to one of the loops (round robin); `done` runs on that loop's thread, never inside Forward.
  void Forward(ProxyRequest req, Callback done);

  // The upstream's name (UpstreamConfig::name).
  const std::string& name() const { return config_.name; }
  // The number of targets; targets are numbered in configuration order.
  std::size_t target_count() const { return targets_.size(); }
  // Target i's base URL, normalised to "http://host:port".
  const std::string& target_url(std::size_t i) const;
  // False once target i failed two health checks in a row, until one passes.
  bool healthy(std::size_t i) const;
  // True while target i is ejected for consecutive errors.
  bool ejected(std::size_t i) const;
  // Requests to target i in flight now.
  int in_flight(std::size_t i) const;
  // Retries started since creation.
  std::uint64_t retries() const { return retries_started_.load(std::memory_order_relaxed); }
  // Retries not started because the retry budget was spent.
  std::uint64_t retries_over_budget() const {
    return retries_denied_.load(std::memory_order_relaxed);
  }
  // The HTTP clients' counters, summed over the loops. Safe to call from any thread.
  net::HttpClient::Stats client_stats() const;

 private:
  struct Target;
  struct Call;
  class HealthChecker;

  Upstream(UpstreamConfig config, std::vector<boost::asio::io_context*> loops);

  // Starts the next attempt of `call` on its loop.
  void Attempt(const std::shared_ptr<Call>& call);
  // Handles the result of an attempt on target `t`.
  void OnAttemptDone(const std::shared_ptr<Call>& call, std::size_t t,
                     core::Result<net::ClientResponse> result);
  // Ends `call` with `result`.
  void Finish(const std::shared_ptr<Call>& call, core::Result<net::ClientResponse> result);
  // The target for the next attempt, never `exclude`; -1 when there is no other target.
  int Pick(int exclude);
  // Counts the outcome for outlier ejection and metrics.
  void Record(std::size_t t, const core::Result<net::ClientResponse>& result);
  // Ejects target t unless more than half the targets would then be ejected.
  void MaybeEject(std::size_t t);
  // The loop index whose thread is calling, or -1.
  int CurrentLoop() const;

  const UpstreamConfig config_;
  const bool least_request_;
  const std::vector<boost::asio::io_context*> loops_;
  std::vector<std::unique_ptr<net::HttpClient>> clients_;  // one per loop, confined to it
  std::vector<std::unique_ptr<Target>> targets_;
  std::unique_ptr<HealthChecker> health_;
  std::atomic<std::uint64_t> next_target_{0};  // round robin
  std::atomic<std::uint64_t> next_loop_{0};    // where Forward posts from foreign threads
  std::atomic<std::int64_t> requests_in_flight_{0};
  std::atomic<std::int64_t> retries_in_flight_{0};
  std::atomic<std::uint64_t> retries_started_{0};
  std::atomic<std::uint64_t> retries_denied_{0};
  std::mutex eject_mu_;  // serialises ejection decisions, which are rare
  metrics::Counter* retries_counter_ = nullptr;
};

}  // namespace megaserve::gateway
