// Upstream: how a request finds a target, and what happens when targets misbehave.
//
// Balancing. round_robin hands out targets in turn from one atomic counter shared by all loops.
// least_request uses the "power of two choices" (M. Mitzenmacher, "The Power of Two Choices in
// Randomized Load Balancing", IEEE TPDS 2001; Envoy's default LEAST_REQUEST policy): pick two
// distinct targets at random and send to the one with fewer requests in flight. It needs no
// global scan or lock, yet keeps the maximum load exponentially closer to the mean than random
// choice, and a slow target (whose requests pile up in flight) quickly stops being chosen.
// Both choose among targets that are healthy and not ejected. When there are none, every
// target is eligible again ("panic mode", as in Envoy): sending to possibly-bad targets beats
// failing every request on the strength of a health signal that may itself be wrong.
//
// Active health checks. Every health_interval the first loop GETs health_path on each target
// with health_timeout. Two failures in a row (any status other than 2xx, or no answer) mark the
// target unhealthy; one pass marks it healthy again.
//
// Outlier ejection (Envoy's consecutive_5xx detector). eject_after_5xx consecutive 5xx
// responses or connection failures eject a target for base_ejection times the number of times
// it has been ejected so far. Ejection ends by itself when that time passes (checked when
// targets are picked). A target is never ejected when that would leave more than half of them
// ejected (Envoy's max_ejection_percent = 50).
//
// Retries. A connection failure or reset, or a 502/503/504, is retried once on a different
// target when the request is idempotent, or when the failure happened before any byte of the
// request could have reached the target (DNS or connect failure), and the retry budget allows
// it (Envoy's retry budgets): retries in flight may not exceed
// max(min_retries, retry_budget * requests in flight). A budget rather than a fixed retry count
// keeps retries from multiplying the load on an upstream that is failing because it is
// overloaded. The request's timeout is one deadline for the whole exchange: a retry gets only
// what is left of it.
#include "gateway/upstream.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <random>
#include <string_view>
#include <unordered_set>

#include "metrics/registry.h"
#include "net/url.h"

namespace megaserve::gateway {
namespace {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

// The "code" label of megaserve_upstream_requests_total: the status class, or how it failed.
enum CodeClass : std::size_t { k1xx, k2xx, k3xx, k4xx, k5xx, kError, kTimeout, kCodeClasses };
constexpr std::array<std::string_view, kCodeClasses> kCodeLabels = {"1xx", "2xx",   "3xx",    "4xx",
                                                                    "5xx", "error", "timeout"};

CodeClass ClassOf(const core::Result<net::ClientResponse>& result) {
  if (!result.ok()) {
    return result.status().code() == core::StatusCode::kDeadlineExceeded ? kTimeout : kError;
  }
  const int hundreds = std::clamp(result->status / 100, 1, 5);
  return static_cast<CodeClass>(hundreds - 1);
}

// True when net::HttpClient failed before the request could have reached the peer: it reports
// resolution and connect failures (refused, unreachable, connect timeout) with these prefixes.
bool FailedBeforeSending(const core::Status& status) {
  const std::string_view message = status.message();
  return message.starts_with("connect to ") || message.starts_with("resolve ");
}

std::int64_t Ticks(Clock::time_point t) { return t.time_since_epoch().count(); }

// A small per-thread generator for the two random choices.
std::uint64_t NextRandom() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return rng();
}

core::Status Invalid(const UpstreamConfig& config, const std::string& what) {
  return core::InvalidArgument("upstream \"" + config.name + "\": " + what);
}

}  // namespace

struct Upstream::Target {
  std::string url;    // "http://host:port"
  std::string label;  // "host:port", the metrics label
  std::atomic<int> in_flight{0};
  std::atomic<bool> healthy{true};
  std::atomic<int> consecutive_errors{0};
  std::atomic<std::int64_t> ejected_until{0};  // Clock ticks; in the past = not ejected
  int times_ejected = 0;                       // guarded by eject_mu_
  int health_failures = 0;                     // first loop only
  bool check_pending = false;                  // first loop only
  std::array<metrics::Counter*, kCodeClasses> requests{};
  metrics::Counter* ejections = nullptr;
  metrics::Gauge* healthy_gauge = nullptr;
  metrics::Gauge* in_flight_gauge = nullptr;

  bool Ejected(std::int64_t now) const {
    return ejected_until.load(std::memory_order_relaxed) > now;
  }
  bool Eligible(std::int64_t now) const {
    return healthy.load(std::memory_order_relaxed) && !Ejected(now);
  }
};

// One Forward from start to callback; lives on one loop.
struct Upstream::Call {
  ProxyRequest req;
  Callback done;
  std::size_t loop = 0;
  Clock::time_point deadline;
  int first_target = -1;
  // The attempt in flight (or just ended) is the retry, which counts in retries_in_flight_.
  bool retry = false;
};

// The periodic health checks, all on the first loop.
class Upstream::HealthChecker {
 public:
  HealthChecker(Upstream& upstream, asio::io_context& ioc, net::HttpClient& client)
      : upstream_(upstream), ioc_(ioc), client_(client), timer_(ioc) {}
  HealthChecker(const HealthChecker&) = delete;  // No copying allowed.
  HealthChecker& operator=(const HealthChecker&) = delete;

  void Start() {
    if (running_.exchange(true)) return;
    asio::post(ioc_, [this] { Tick(); });
  }

  void Stop() {
    if (!running_.exchange(false)) return;
    asio::post(ioc_, [this] { timer_.cancel(); });
  }

  // For the destructor, when the loop is not running.
  void StopNow() {
    running_ = false;
    timer_.cancel();
  }

 private:
  void Tick() {
    if (!running_) return;
    const UpstreamConfig& config = upstream_.config_;
    for (std::size_t i = 0; i < upstream_.targets_.size(); ++i) {
      Target& target = *upstream_.targets_[i];
      if (target.check_pending) continue;  // a check slower than the interval
      target.check_pending = true;
      net::ClientRequest req;
      req.url = target.url + config.health_path;
      req.headers.emplace_back("User-Agent", "megaserve-health-check");
      req.timeout = config.health_timeout;
      client_.Fetch(std::move(req), [this, i](core::Result<net::ClientResponse> result) {
        upstream_.targets_[i]->check_pending = false;
        OnResult(i, result.ok() && result->status >= 200 && result->status < 300, result);
      });
    }
    timer_.expires_after(config.health_interval);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Tick();
    });
  }

  void OnResult(std::size_t i, bool passed, const core::Result<net::ClientResponse>& result) {
    Target& target = *upstream_.targets_[i];
    if (passed) {
      target.health_failures = 0;
      if (!target.healthy.exchange(true)) {
        target.healthy_gauge->Set(1);
        spdlog::info("upstream {}: target {} is healthy again", upstream_.name(), target.label);
      }
      return;
    }
    if (++target.health_failures >= 2 && target.healthy.exchange(false)) {
      target.healthy_gauge->Set(0);
      spdlog::warn(
          "upstream {}: target {} failed its health checks: {}", upstream_.name(), target.label,
          result.ok() ? "status " + std::to_string(result->status) : result.status().ToString());
    }
  }

  Upstream& upstream_;
  asio::io_context& ioc_;
  net::HttpClient& client_;
  asio::steady_timer timer_;
  std::atomic<bool> running_{false};
};

Upstream::Upstream(UpstreamConfig config, std::vector<asio::io_context*> loops)
    : config_(std::move(config)),
      least_request_(config_.balance == "least_request"),
      loops_(std::move(loops)) {}

core::Result<std::unique_ptr<Upstream>> Upstream::Create(UpstreamConfig config,
                                                         std::vector<asio::io_context*> loops,
                                                         metrics::Registry& registry) {
  if (config.name.empty()) return core::InvalidArgument("an upstream needs a name");
  if (loops.empty() || std::find(loops.begin(), loops.end(), nullptr) != loops.end()) {
    return Invalid(config, "needs at least one I/O loop");
  }
  if (config.targets.empty()) return Invalid(config, "has no targets");
  if (config.balance != "round_robin" && config.balance != "least_request") {
    return Invalid(config, "balance must be \"round_robin\" or \"least_request\", got \"" +
                               config.balance + "\"");
  }
  if (config.health_path.empty() || config.health_path[0] != '/') {
    return Invalid(config, "health_path must start with '/'");
  }
  if (config.health_interval.count() <= 0 || config.health_timeout.count() <= 0) {
    return Invalid(config, "health_interval and health_timeout must be positive");
  }
  if (config.eject_after_5xx < 0 || config.base_ejection.count() < 0) {
    return Invalid(config, "eject_after_5xx and base_ejection must not be negative");
  }
  if (!(config.retry_budget >= 0 && config.retry_budget <= 1) || config.min_retries < 0) {
    return Invalid(config, "retry_budget must be within 0..1 and min_retries not negative");
  }

  std::vector<std::unique_ptr<Target>> targets;
  std::unordered_set<std::string> seen;
  for (const std::string& text : config.targets) {
    auto url = net::ParseUrl(text);
    if (!url.ok()) return Invalid(config, "target \"" + text + "\": " + url.status().message());
    if (url->scheme != "http" || url->target != "/") {
      return Invalid(config, "target \"" + text + "\" must be a base URL http://host:port");
    }
    auto target = std::make_unique<Target>();
    target->label = url->HostPort();
    target->url = "http://" + target->label;
    if (!seen.insert(target->url).second) {
      return Invalid(config, "target \"" + text + "\" is listed twice");
    }
    targets.push_back(std::move(target));
  }

  auto& requests = registry.AddCounter(
      "megaserve_upstream_requests_total",
      "Requests sent to upstream targets, by status class (1xx..5xx) or error or timeout.",
      {"upstream", "target", "code"});
  auto& retries = registry.AddCounter("megaserve_upstream_retries_total",
                                      "Requests retried on another target.", {"upstream"});
  auto& ejections =
      registry.AddCounter("megaserve_upstream_ejections_total",
                          "Outlier ejections of upstream targets.", {"upstream", "target"});
  auto& healthy = registry.AddGauge("megaserve_upstream_healthy",
                                    "1 while the target passes its health checks, else 0.",
                                    {"upstream", "target"});
  auto& in_flight = registry.AddGauge("megaserve_upstream_in_flight",
                                      "Requests to the target in flight.", {"upstream", "target"});
  for (auto& target : targets) {
    for (std::size_t c = 0; c < kCodeClasses; ++c) {
      target->requests[c] = &requests.WithLabels({config.name, target->label, kCodeLabels[c]});
    }
    target->ejections = &ejections.WithLabels({config.name, target->label});
    target->healthy_gauge = &healthy.WithLabels({config.name, target->label});
    target->healthy_gauge->Set(1);
    target->in_flight_gauge = &in_flight.WithLabels({config.name, target->label});
  }

  std::unique_ptr<Upstream> upstream(new Upstream(std::move(config), std::move(loops)));
  upstream->targets_ = std::move(targets);
  upstream->retries_counter_ = &retries.WithLabels({upstream->config_.name});
  net::HttpClientOptions options;
  options.max_idle_per_host = 64;  // a busy upstream keeps many connections per loop warm
  // Below the usual server keep-alive timeouts, so the pool rarely offers a connection the
  // target is closing.
  options.idle_timeout = std::chrono::seconds(30);
  options.user_agent.clear();  // proxied requests carry the client's own User-Agent
  for (asio::io_context* loop : upstream->loops_) {
    upstream->clients_.push_back(std::make_unique<net::HttpClient>(*loop, options));
  }
  upstream->health_ =
      std::make_unique<HealthChecker>(*upstream, *upstream->loops_[0], *upstream->clients_[0]);
  return upstream;
}

Upstream::~Upstream() {
  health_->StopNow();
  health_.reset();
  clients_.clear();
}

void Upstream::Start() { health_->Start(); }

void Upstream::Stop() { health_->Stop(); }

const std::string& Upstream::target_url(std::size_t i) const { return targets_.at(i)->url; }

bool Upstream::healthy(std::size_t i) const {
  return targets_.at(i)->healthy.load(std::memory_order_relaxed);
}

bool Upstream::ejected(std::size_t i) const { return targets_.at(i)->Ejected(Ticks(Clock::now())); }

int Upstream::in_flight(std::size_t i) const {
  return targets_.at(i)->in_flight.load(std::memory_order_relaxed);
}

net::HttpClient::Stats Upstream::client_stats() const {
  net::HttpClient::Stats total;
  for (const auto& client : clients_) {
    const auto s = client->stats();
    total.connections_opened += s.connections_opened;
    total.connections_reused += s.connections_reused;
    total.requests += s.requests;
  }
  return total;
}

int Upstream::CurrentLoop() const {
  for (std::size_t i = 0; i < loops_.size(); ++i) {
    if (loops_[i]->get_executor().running_in_this_thread()) return static_cast<int>(i);
  }
  return -1;
}

void Upstream::Forward(ProxyRequest req, Callback done) {
  auto call = std::make_shared<Call>();
  const Duration timeout = req.timeout.count() > 0 ? req.timeout : Duration(30'000);
  call->deadline = Clock::now() + timeout;
  call->req = std::move(req);
  call->done = std::move(done);
  requests_in_flight_.fetch_add(1, std::memory_order_relaxed);
  if (const int loop = CurrentLoop(); loop >= 0) {
    call->loop = static_cast<std::size_t>(loop);
    Attempt(call);  // the client never calls back from inside Fetch
    return;
  }
  call->loop = next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size();
  asio::post(*loops_[call->loop], [this, call] { Attempt(call); });
}

int Upstream::Pick(int exclude) {
  const std::int64_t now = Ticks(Clock::now());
  const int n = static_cast<int>(targets_.size());
  bool panic = false;
  auto eligible = [&](int i) {
    return i != exclude && (panic || targets_[static_cast<std::size_t>(i)]->Eligible(now));
  };
  int count = 0;
  for (int i = 0; i < n; ++i) count += eligible(i) ? 1 : 0;
  if (count == 0) {
    panic = true;  // nothing healthy: try them all rather than fail everything
    for (int i = 0; i < n; ++i) count += eligible(i) ? 1 : 0;
    if (count == 0) return -1;
  }
  // The k-th eligible target (k < count).
  auto nth = [&](int k) {
    for (int i = 0; i < n; ++i) {
      if (eligible(i) && k-- == 0) return i;
    }
    return -1;
  };
  if (!least_request_) {
    // A retry does not take a turn: the rotation stays even for first attempts.
    const std::uint64_t turn = exclude >= 0 ? next_target_.load(std::memory_order_relaxed)
                                            : next_target_.fetch_add(1, std::memory_order_relaxed);
    return nth(static_cast<int>(turn % static_cast<std::uint64_t>(count)));
  }
  if (count == 1) return nth(0);
  const std::uint64_t r = NextRandom();
  const int a = static_cast<int>(r % static_cast<std::uint64_t>(count));
  int b = static_cast<int>((r >> 32) % static_cast<std::uint64_t>(count - 1));
  if (b >= a) ++b;  // two distinct choices
  const int ta = nth(a);
  const int tb = nth(b);
  return targets_[static_cast<std::size_t>(tb)]->in_flight.load(std::memory_order_relaxed) <
                 targets_[static_cast<std::size_t>(ta)]->in_flight.load(std::memory_order_relaxed)
             ? tb
             : ta;
}

void Upstream::Attempt(const std::shared_ptr<Call>& call) {
  const auto remaining =
      std::chrono::ceil<std::chrono::milliseconds>(call->deadline - Clock::now());
  if (remaining.count() <= 0) {
    return Finish(call, core::DeadlineExceeded("upstream " + config_.name + ": timed out"));
  }
  const int picked = Pick(call->retry ? call->first_target : -1);
  if (picked < 0)
    return Finish(call, core::Unavailable("upstream " + config_.name + ": no target"));
  const auto t = static_cast<std::size_t>(picked);
  if (!call->retry) call->first_target = picked;
  Target& target = *targets_[t];
  target.in_flight.fetch_add(1, std::memory_order_relaxed);
  target.in_flight_gauge->Inc();

  net::ClientRequest creq;
  creq.method = call->req.method;
  creq.url = target.url + call->req.target;
  creq.timeout = remaining;
  if (call->retry) {  // the last attempt: nothing left to keep
    creq.headers = std::move(call->req.headers);
    creq.body = std::move(call->req.body);
  } else {
    creq.headers = call->req.headers;
    creq.body = call->req.body;
  }
  clients_[call->loop]->Fetch(std::move(creq),
                              [this, call, t](core::Result<net::ClientResponse> result) {
                                OnAttemptDone(call, t, std::move(result));
                              });
}

void Upstream::OnAttemptDone(const std::shared_ptr<Call>& call, std::size_t t,
                             core::Result<net::ClientResponse> result) {
  Target& target = *targets_[t];
  target.in_flight.fetch_sub(1, std::memory_order_relaxed);
  target.in_flight_gauge->Dec();
  Record(t, result);
  if (call->retry) return Finish(call, std::move(result));

  bool retryable = false;
  const bool time_left = Clock::now() < call->deadline;
  if (result.ok()) {
    const int status = result->status;
    retryable = call->req.idempotent && (status == 502 || status == 503 || status == 504);
  } else {
    const core::Status& status = result.status();
    const bool not_sent = FailedBeforeSending(status);
    // A connect timeout is a connection failure; the request's own timeout ends the exchange.
    retryable =
        (status.code() == core::StatusCode::kUnavailable && (call->req.idempotent || not_sent)) ||
        (status.code() == core::StatusCode::kDeadlineExceeded && not_sent);
  }
  if (!retryable || !time_left || targets_.size() < 2) return Finish(call, std::move(result));

  // Envoy's retry budget: retries in flight <= max(min_retries, budget * requests in flight).
  const double allowed =
      std::max(static_cast<double>(config_.min_retries),
               config_.retry_budget *
                   static_cast<double>(requests_in_flight_.load(std::memory_order_relaxed)));
  if (static_cast<double>(retries_in_flight_.fetch_add(1, std::memory_order_relaxed) + 1) >
      allowed) {
    retries_in_flight_.fetch_sub(1, std::memory_order_relaxed);
    retries_denied_.fetch_add(1, std::memory_order_relaxed);
    return Finish(call, std::move(result));
  }
  retries_started_.fetch_add(1, std::memory_order_relaxed);
  retries_counter_->Inc();
  call->retry = true;  // counted in retries_in_flight_ until Finish
  Attempt(call);
}

void Upstream::Finish(const std::shared_ptr<Call>& call, core::Result<net::ClientResponse> result) {
  if (call->retry) retries_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  requests_in_flight_.fetch_sub(1, std::memory_order_relaxed);
  Callback done = std::move(call->done);
  call->done = nullptr;
  done(std::move(result));
}

void Upstream::Record(std::size_t t, const core::Result<net::ClientResponse>& result) {
  Target& target = *targets_[t];
  const CodeClass code = ClassOf(result);
  target.requests[code]->Inc();
  const bool failed = code == k5xx || code == kError;
  if (!failed) {
    if (code != kTimeout) target.consecutive_errors.store(0, std::memory_order_relaxed);
    return;
  }
  if (config_.eject_after_5xx > 0 &&
      target.consecutive_errors.fetch_add(1, std::memory_order_relaxed) + 1 >=
          config_.eject_after_5xx) {
    MaybeEject(t);
  }
}

void Upstream::MaybeEject(std::size_t t) {
  std::lock_guard<std::mutex> lock(eject_mu_);
  Target& target = *targets_[t];
  const Clock::time_point now = Clock::now();
  if (target.Ejected(Ticks(now))) return;  // another loop got here first
  std::size_t ejected = 0;
  for (const auto& other : targets_) ejected += other->Ejected(Ticks(now)) ? 1 : 0;
  target.consecutive_errors.store(0, std::memory_order_relaxed);
  if ((ejected + 1) * 2 > targets_.size()) return;  // keep at least half in service
  ++target.times_ejected;
  const auto length = config_.base_ejection * target.times_ejected;
  target.ejected_until.store(Ticks(now + length), std::memory_order_relaxed);
  target.ejections->Inc();
  spdlog::warn("upstream {}: ejected target {} for {} ms after {} consecutive errors", config_.name,
               target.label, length.count(), config_.eject_after_5xx);
}

}  // namespace megaserve::gateway
