// WebhookDispatcher: a store thread claims due deliveries, builds and signs their requests and
// records outcomes; an I/O thread runs the HttpClient that sends them. See the header for the
// delivery protocol.
#include "jobs/webhook_dispatcher.h"

#include <fmt/format.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "core/time_format.h"
#include "jobs/backoff.h"
#include "metrics/registry.h"
#include "net/http_client.h"
#include "net/url.h"

namespace megaserve::jobs {
namespace {

namespace asio = boost::asio;
using core::Status;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

// How long a claim holds a delivery beyond the attempt's timeout: time to look the job up before
// sending and to write the outcome after. Only a dispatcher that dies mid-attempt makes anyone
// wait for it.
constexpr milliseconds kLeaseSlack{30'000};
// A receiver's answer is not used beyond its status; larger bodies fail the attempt.
constexpr std::size_t kMaxResponseBytes = 1 << 20;
// Bytes of a failed response's body kept in last_error.
constexpr std::size_t kErrorBodyBytes = 200;

// Whether anything is due, asked before taking a claim's write transaction: on SQLite that is
// the one writer lock the job queue also needs, so an idle poll should not take it.
constexpr std::string_view kAnyDue =
    "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= $1 LIMIT 1";

// Fails the due pending deliveries whose URL is a disabled endpoint, so they are never sent.
// {lock} is " FOR UPDATE SKIP LOCKED" on PostgreSQL (rows being claimed elsewhere are left to
// their claimer), empty on SQLite.
constexpr std::string_view kFailDisabled =
    "UPDATE webhook_deliveries SET status = 'failed', last_error = 'endpoint disabled: ' || "
    "(SELECT reason FROM webhook_endpoints e WHERE e.url = webhook_deliveries.url) "
    "WHERE id IN (SELECT d.id FROM webhook_deliveries d WHERE d.status = 'pending' AND "
    "d.next_attempt_at <= $1 AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.url = d.url)"
    "{lock})";

// Claims up to $3 due deliveries, oldest due first: one more attempt, leased until $1.
constexpr std::string_view kClaim =
    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $1 "
    "WHERE id IN (SELECT d.id FROM webhook_deliveries d WHERE d.status = 'pending' AND "
    "d.next_attempt_at <= $2 ORDER BY d.next_attempt_at, d.id LIMIT $3{lock}) "
    "RETURNING id, job_id, event, url, attempts, created_at";

// Outcome writes match only the attempt that claimed the row (see the header).
constexpr std::string_view kDelivered =
    "UPDATE webhook_deliveries SET status = 'delivered', last_error = NULL "
    "WHERE id = $1 AND status = 'pending' AND attempts = $2";
constexpr std::string_view kFailed =
    "UPDATE webhook_deliveries SET status = 'failed', last_error = $3 "
    "WHERE id = $1 AND status = 'pending' AND attempts = $2";
constexpr std::string_view kRetry =
    "UPDATE webhook_deliveries SET next_attempt_at = $3, last_error = $4 "
    "WHERE id = $1 AND status = 'pending' AND attempts = $2";
constexpr std::string_view kDisableEndpoint =
    "INSERT INTO webhook_endpoints (url, disabled_at, reason) VALUES ($1, $2, $3) "
    "ON CONFLICT (url) DO NOTHING";
constexpr std::string_view kFailAllToUrl =
    "UPDATE webhook_deliveries SET status = 'failed', last_error = $2 "
    "WHERE url = $1 AND status = 'pending'";

// One claimed row of webhook_deliveries.
struct Delivery {
  int64_t id = 0;
  std::string job_id;
  std::string event;
  std::string url;
  int attempts = 0;  // including the one just claimed
  int64_t created_at_us = 0;
};

// An attempt's answer, handed from the I/O thread to the store thread.
struct Attempt {
  Delivery delivery;
  core::Result<net::ClientResponse> response;
  double seconds = 0;
};

// The Standard Webhooks event type for an outbox event name, or "" for an unknown one.
std::string_view EventType(std::string_view event) {
  if (event == "start") return "job.started";
  if (event == "progress") return "job.progress";
  if (event == "completed") return "job.completed";
  return "";
}

std::string Body(std::string_view type, int64_t at_us, const std::string& data) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  w.Key("type");
  w.String(type.data(), static_cast<rapidjson::SizeType>(type.size()));
  w.Key("timestamp");
  const std::string timestamp = core::Rfc3339(at_us, /*with_micros=*/true);
  w.String(timestamp.data(), static_cast<rapidjson::SizeType>(timestamp.size()));
  w.Key("data");
  if (data.empty()) {
    w.Null();
  } else {
    w.RawValue(data.data(), data.size(), rapidjson::kObjectType);
  }
  w.EndObject();
  return {sb.GetString(), sb.GetSize()};
}

// The URL without its query (which may carry a receiver's token), for logs.
std::string ForLog(const std::string& url) {
  auto parsed = net::ParseUrl(url);
  if (!parsed.ok()) return "(unparsable URL)";
  return parsed->scheme + "://" + parsed->HostPort() +
         parsed->target.substr(0, parsed->target.find('?'));
}

// "HTTP 503: <start of the body>", with control and non-ASCII bytes replaced.
std::string HttpError(const net::ClientResponse& response) {
  std::string out = "HTTP " + std::to_string(response.status);
  if (response.body.empty()) return out;
  out += ": ";
  for (char c : std::string_view(response.body).substr(0, kErrorBodyBytes)) {
    out += c >= 0x20 && c < 0x7f ? c : '?';
  }
  return out;
}

metrics::Counter& Outcomes(metrics::Registry& registry, std::string_view result) {
  return registry
      .AddCounter("megaserve_webhook_deliveries_total",
                  "Webhook delivery outcomes: delivered, retry (an attempt failed, another is "
                  "scheduled), failed (given up), disabled (endpoint answered 410 Gone), refused "
                  "(blocked by the SSRF guard)",
                  {"result"})
      .WithLabels({result});
}

}  // namespace

class WebhookDispatcher::Impl {
 public:
  Impl(store::Database& db, JobQueue& queue, WebhookDispatcherOptions options, SsrfGuard guard,
       WebhookJobRenderer render, metrics::Registry& registry);
  ~Impl() { Stop(milliseconds(0)); }

  void Start();
  void Wake();
  void Stop(milliseconds drain);

 private:
  // The store thread: claims while slots are free, records outcomes, sleeps until Wake(), an
  // outcome, or poll_interval.
  void Run();
  // Claims up to `max` due deliveries and sends them; returns how many it claimed.
  int ClaimAndSend(int max);
  core::Result<std::vector<Delivery>> Claim(int max);
  void Send(Delivery delivery);
  void Record(const Attempt& attempt);
  // Writes an outcome; a row another attempt has taken over matches nothing.
  void Write(const Delivery& d, std::string_view sql, store::Params extra);
  void Fail(const Delivery& d, const std::string& error, metrics::Counter& result);
  void RetryOrFail(const Delivery& d, const std::string& error);
  void DisableEndpoint(const Delivery& d);
  int64_t Now() const { return options_.now_us ? options_.now_us() : core::NowMicros(); }

  store::Database& db_;
  JobQueue& queue_;
  const WebhookDispatcherOptions options_;
  const SsrfGuard guard_;
  const WebhookJobRenderer render_;
  metrics::Counter& delivered_;
  metrics::Counter& retried_;
  metrics::Counter& failed_;
  metrics::Counter& disabled_;
  metrics::Counter& refused_;
  metrics::Histogram& duration_;
  std::mt19937_64 rng_;  // store thread only

  asio::io_context ioc_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::unique_ptr<net::HttpClient> client_;  // on the I/O thread once started
  std::thread io_thread_;
  std::thread store_thread_;

  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;        // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
  bool woken_ = false;          // guarded by mu_
  int in_flight_ = 0;           // sent, outcome not recorded yet; guarded by mu_
  std::vector<Attempt> done_;   // answers waiting to be recorded; guarded by mu_
  Clock::time_point deadline_;  // guarded by mu_
};

WebhookDispatcher::Impl::Impl(store::Database& db, JobQueue& queue,
                              WebhookDispatcherOptions options, SsrfGuard guard,
                              WebhookJobRenderer render, metrics::Registry& registry)
    : db_(db),
      queue_(queue),
      options_(std::move(options)),
      guard_(std::move(guard)),
      render_(std::move(render)),
      delivered_(Outcomes(registry, "delivered")),
      retried_(Outcomes(registry, "retry")),
      failed_(Outcomes(registry, "failed")),
      disabled_(Outcomes(registry, "disabled")),
      refused_(Outcomes(registry, "refused")),
      duration_(registry
                    .AddHistogram("megaserve_webhook_attempt_duration_seconds",
                                  "Time from sending a webhook request to its answer or failure",
                                  {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30})
                    .WithLabels({})),
      rng_(options_.seed != 0 ? options_.seed : std::random_device{}()),
      work_(asio::make_work_guard(ioc_)) {
  net::HttpClientOptions http;
  http.connect_timeout = options_.timeout;
  http.request_timeout = options_.timeout;
  http.max_response_bytes = kMaxResponseBytes;
  http.address_filter = [guard = &guard_](std::string_view host,
                                          const std::vector<asio::ip::address>& addresses) {
    return guard->CheckUrlHost(host, addresses);
  };
  client_ = std::make_unique<net::HttpClient>(ioc_, std::move(http));
}

void WebhookDispatcher::Impl::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_ || stopping_) return;
  started_ = true;
  io_thread_ = std::thread([this] { ioc_.run(); });
  store_thread_ = std::thread([this] { Run(); });
}

void WebhookDispatcher::Impl::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  cv_.notify_all();
}

void WebhookDispatcher::Impl::Stop(milliseconds drain) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_ || stopping_) return;
    stopping_ = true;
    deadline_ = Clock::now() + drain;
  }
  cv_.notify_all();
  store_thread_.join();
  // Destroying the client cancels what is still in flight; its callbacks run on the loop, and
  // their answers are left unrecorded (the rows' leases expire and they are sent again).
  asio::post(ioc_, [this] { client_.reset(); });
  work_.reset();
  io_thread_.join();
}

void WebhookDispatcher::Impl::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  Clock::time_point next_claim = Clock::now();
  for (;;) {
    if (!done_.empty()) {
      std::vector<Attempt> batch;
      batch.swap(done_);
      lock.unlock();
      for (const Attempt& attempt : batch) Record(attempt);
      lock.lock();
      in_flight_ -= static_cast<int>(batch.size());
      continue;
    }
    if (stopping_) {
      if (in_flight_ == 0) return;
      if (!cv_.wait_until(lock, deadline_, [this] { return !done_.empty(); })) return;
      continue;
    }
    const int free = options_.concurrency - in_flight_;
    if (free <= 0) {
      cv_.wait(lock, [this] { return stopping_ || !done_.empty(); });
      continue;
    }
    if (woken_ || Clock::now() >= next_claim) {
      woken_ = false;
      lock.unlock();
      const int claimed = ClaimAndSend(free);
      lock.lock();
      // A full batch means more may be due: claim again as soon as a slot is free.
      next_claim = Clock::now() + (claimed == free ? milliseconds(0) : options_.poll_interval);
      continue;
    }
    cv_.wait_until(lock, next_claim, [this] { return stopping_ || woken_ || !done_.empty(); });
  }
}

int WebhookDispatcher::Impl::ClaimAndSend(int max) {
  auto claimed = Claim(max);
  if (!claimed.ok()) {
    spdlog::warn("webhooks: claiming deliveries failed: {}", claimed.status().ToString());
    return 0;
  }
  const int n = static_cast<int>(claimed->size());
  for (Delivery& delivery : *claimed) Send(std::move(delivery));
  return n;
}

core::Result<std::vector<Delivery>> WebhookDispatcher::Impl::Claim(int max) {
  const bool postgres = db_.engine() == store::Engine::kPostgres;
  const std::string_view lock = postgres ? " FOR UPDATE SKIP LOCKED" : "";
  const std::string fail_disabled =
      fmt::format(fmt::runtime(kFailDisabled), fmt::arg("lock", lock));
  const std::string claim = fmt::format(fmt::runtime(kClaim), fmt::arg("lock", lock));
  const int64_t now = Now();
  const int64_t lease_until =
      now +
      std::chrono::duration_cast<std::chrono::microseconds>(options_.timeout + kLeaseSlack).count();
  std::vector<Delivery> out;
  auto due = db_.Execute(kAnyDue, {now});
  if (!due.ok()) return due.status();
  if (due->empty()) return out;
  int64_t disabled = 0;
  Status status = db_.Transact([&](store::Session& s) -> Status {
    out.clear();
    auto failed = s.Execute(fail_disabled, {now});
    if (!failed.ok()) return failed.status();
    disabled = failed->affected_rows();
    auto rows = s.Execute(claim, {lease_until, now, static_cast<int64_t>(max)});
    if (!rows.ok()) return rows.status();
    for (size_t r = 0; r < rows->size(); ++r) {
      out.push_back({.id = rows->GetInt(r, 0),
                     .job_id = rows->GetText(r, 1),
                     .event = rows->GetText(r, 2),
                     .url = rows->GetText(r, 3),
                     .attempts = static_cast<int>(rows->GetInt(r, 4)),
                     .created_at_us = rows->GetInt(r, 5)});
    }
    return Status::Ok();
  });
  if (!status.ok()) return status;
  if (disabled > 0) {
    disabled_.Inc(static_cast<uint64_t>(disabled));
    spdlog::info("webhooks: {} delivery(ies) to disabled endpoints failed", disabled);
  }
  // RETURNING gives no order; send the oldest first.
  std::sort(out.begin(), out.end(),
            [](const Delivery& a, const Delivery& b) { return a.id < b.id; });
  return out;
}

void WebhookDispatcher::Impl::Send(Delivery delivery) {
  const std::string_view type = EventType(delivery.event);
  if (type.empty()) {
    return Fail(delivery, "unknown event \"" + delivery.event + "\"", failed_);
  }
  auto job = queue_.Get(delivery.job_id);
  if (!job.ok()) {
    if (job.status().code() == core::StatusCode::kNotFound) {
      return Fail(delivery, "job " + delivery.job_id + " no longer exists", failed_);
    }
    return RetryOrFail(delivery, "loading the job failed: " + job.status().message());
  }
  std::string body = Body(type, delivery.created_at_us, render_(*job));
  const SignedHeaders signed_headers = SignedWebhookHeaders(
      *options_.secret, "msg_" + std::to_string(delivery.id), Now() / 1'000'000, body);
  net::ClientRequest request;
  request.method = "POST";
  request.url = delivery.url;
  request.headers = {{"content-type", "application/json"},
                     {"webhook-id", signed_headers.id},
                     {"webhook-timestamp", signed_headers.timestamp},
                     {"webhook-signature", signed_headers.signature}};
  request.body = std::move(body);
  request.timeout = options_.timeout;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++in_flight_;
  }
  asio::post(ioc_, [this, delivery = std::move(delivery), request = std::move(request)]() mutable {
    if (!client_) return;
    const Clock::time_point start = Clock::now();
    client_->Fetch(std::move(request), [this, delivery = std::move(delivery),
                                        start](core::Result<net::ClientResponse> response) mutable {
      const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
      {
        std::lock_guard<std::mutex> lock(mu_);
        done_.push_back({std::move(delivery), std::move(response), seconds});
      }
      cv_.notify_all();
    });
  });
}

void WebhookDispatcher::Impl::Record(const Attempt& attempt) {
  const Delivery& d = attempt.delivery;
  if (attempt.response.ok()) {
    duration_.Observe(attempt.seconds);
    const net::ClientResponse& response = *attempt.response;
    if (response.status >= 200 && response.status < 300) {
      delivered_.Inc();
      Write(d, kDelivered, {});
      return;
    }
    if (response.status == 410) return DisableEndpoint(d);
    return RetryOrFail(d, HttpError(response));
  }
  const Status& error = attempt.response.status();
  switch (error.code()) {
    case core::StatusCode::kCanceled:  // stopping: the lease expires and it is sent again
      return;
    case core::StatusCode::kPermissionDenied:
      return Fail(d, "refused by the SSRF guard: " + error.message(), refused_);
    case core::StatusCode::kInvalidArgument:
      return Fail(d, error.message(), failed_);
    default:
      duration_.Observe(attempt.seconds);
      return RetryOrFail(d, error.message());
  }
}

void WebhookDispatcher::Impl::Write(const Delivery& d, std::string_view sql, store::Params extra) {
  store::Params params = {d.id, static_cast<int64_t>(d.attempts)};
  for (store::Value& v : extra) params.push_back(std::move(v));
  auto written = db_.Execute(sql, params);
  if (!written.ok()) {
    spdlog::warn("webhooks: recording the outcome of msg_{} failed: {}", d.id,
                 written.status().ToString());
  }
}

void WebhookDispatcher::Impl::Fail(const Delivery& d, const std::string& error,
                                   metrics::Counter& result) {
  result.Inc();
  Write(d, kFailed, {error});
  spdlog::warn("webhooks: msg_{} ({} of job {}) to {} failed after {} attempt(s): {}", d.id,
               d.event, d.job_id, ForLog(d.url), d.attempts, error);
}

void WebhookDispatcher::Impl::RetryOrFail(const Delivery& d, const std::string& error) {
  auto delay = WebhookRetryDelay(d.attempts, options_.retry_schedule, rng_);
  if (!delay) return Fail(d, error, failed_);
  const int64_t due = Now() + std::chrono::duration_cast<std::chrono::microseconds>(*delay).count();
  retried_.Inc();
  Write(d, kRetry, {due, error});
  spdlog::info("webhooks: msg_{} ({} of job {}) to {}: {}; attempt {} in {} ms", d.id, d.event,
               d.job_id, ForLog(d.url), error, d.attempts + 1, delay->count());
}

void WebhookDispatcher::Impl::DisableEndpoint(const Delivery& d) {
  const int64_t now = Now();
  const std::string reason =
      fmt::format("answered 410 Gone to msg_{} at {}", d.id, core::Rfc3339(now));
  const std::string error = "endpoint disabled: " + reason;
  int64_t failed = 0;
  Status status = db_.Transact([&](store::Session& s) -> Status {
    auto inserted = s.Execute(kDisableEndpoint, {d.url, now, reason});
    if (!inserted.ok()) return inserted.status();
    auto updated = s.Execute(kFailAllToUrl, {d.url, error});
    if (!updated.ok()) return updated.status();
    failed = updated->affected_rows();
    return Status::Ok();
  });
  if (!status.ok()) {
    spdlog::warn("webhooks: disabling {} after 410 Gone failed: {}", ForLog(d.url),
                 status.ToString());
    return;
  }
  disabled_.Inc(static_cast<uint64_t>(failed));
  spdlog::warn("webhooks: {} {}; it is disabled and {} pending delivery(ies) to it failed",
               ForLog(d.url), reason, failed);
}

WebhookDispatcher::WebhookDispatcher(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

WebhookDispatcher::~WebhookDispatcher() = default;

core::Result<std::unique_ptr<WebhookDispatcher>> WebhookDispatcher::Create(
    store::Database& db, JobQueue& queue, WebhookDispatcherOptions options,
    WebhookJobRenderer render, metrics::Registry& registry) {
  if (!options.secret) return core::InvalidArgument("webhooks: a signing secret is required");
  if (!render) return core::InvalidArgument("webhooks: a job renderer is required");
  if (options.retry_schedule.empty()) {
    return core::InvalidArgument("webhooks: the retry schedule must not be empty");
  }
  for (milliseconds wait : options.retry_schedule) {
    if (wait.count() <= 0) {
      return core::InvalidArgument("webhooks: each retry wait must be greater than 0");
    }
  }
  if (options.timeout.count() <= 0 || options.poll_interval.count() <= 0 ||
      options.concurrency <= 0) {
    return core::InvalidArgument(
        "webhooks: timeout, poll interval and concurrency must be greater than 0");
  }
  auto guard = SsrfGuard::Create(options.ssrf);
  if (!guard.ok()) return guard.status();
  auto impl = std::make_unique<Impl>(db, queue, std::move(options), std::move(*guard),
                                     std::move(render), registry);
  return std::unique_ptr<WebhookDispatcher>(new WebhookDispatcher(std::move(impl)));
}

void WebhookDispatcher::Start() { impl_->Start(); }

void WebhookDispatcher::Wake() { impl_->Wake(); }

void WebhookDispatcher::Stop(std::chrono::milliseconds drain) { impl_->Stop(drain); }

}  // namespace megaserve::jobs
