// Webhook delivery: sends the rows of the `webhook_deliveries` outbox (written by JobQueue in
// the same transaction as the job change they announce) to their URLs, signed per Standard
// Webhooks 1.0.0 (https://www.standardwebhooks.com/; see webhook_signature.h).
//
// Request. POST <url>, content-type: application/json, body
//   {"type":"job.started"|"job.progress"|"job.completed","timestamp":RFC3339,"data":<job>}
// where timestamp is when the event happened (the row's created_at) and data is the job as the
// renderer draws it at send time. Headers webhook-id ("msg_<delivery id>", the same on every
// retry, so receivers can drop duplicates), webhook-timestamp (send time, unix seconds) and
// webhook-signature. Redirects are not followed (a 3xx is a failed attempt).
//
// Claiming. A delivery is due when status = 'pending' and next_attempt_at <= now. A claim, in
// one transaction, increments attempts and pushes next_attempt_at past the attempt's timeout
// (a lease), so no other dispatcher sends it meanwhile; on PostgreSQL the candidates are picked
// with FOR UPDATE SKIP LOCKED so concurrent dispatchers take disjoint rows without waiting, on
// SQLite the single writer already makes the claim exclusive. Every outcome is written with
// "WHERE id = $id AND status = 'pending' AND attempts = $n", so an attempt that overran its
// lease (and was claimed again elsewhere) cannot overwrite the newer attempt's outcome. A
// dispatcher that dies mid-attempt leaves the row pending; it is sent again when the lease
// expires.
//
// Outcomes (metric result in brackets):
//   2xx                          -> 'delivered' [delivered]
//   410 Gone                     -> the URL goes into webhook_endpoints, and this and every other
//                                   pending delivery to it become 'failed' [disabled]
//   URL of a disabled endpoint   -> 'failed' when due, never sent [disabled]
//   address refused by the SSRF guard -> 'failed' at once, nothing connected [refused]
//   a URL that does not parse, a job that no longer exists -> 'failed' at once [failed]
//   any other status, timeout or network error -> pending again, due after
//                                   retry_schedule[attempts - 1] +-20% [retry]; once the
//                                   schedule is exhausted 'failed' keeping last_error [failed]
//
// Threads. One thread owns the store work (claims, job lookups, outcomes); one runs the
// io_context of the HttpClient that sends; at most `concurrency` attempts are in flight.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "jobs/job_queue.h"
#include "jobs/ssrf_guard.h"
#include "jobs/webhook_signature.h"
#include "store/database.h"

namespace megaserve::metrics {
class Registry;
}  // namespace megaserve::metrics

namespace megaserve::jobs {

struct WebhookDispatcherOptions {
  std::optional<WebhookSecret> secret;        // required: the signing key
  SsrfPolicy ssrf;                            // what outbound deliveries may connect to
  std::chrono::milliseconds timeout{10'000};  // one attempt, connect included
  // Waits before the 2nd, 3rd, ... attempt, each with +-20% jitter.
  std::vector<std::chrono::milliseconds> retry_schedule = {
      std::chrono::seconds(5), std::chrono::minutes(5), std::chrono::minutes(30),
      std::chrono::hours(2),   std::chrono::hours(5),   std::chrono::hours(10),
      std::chrono::hours(24)};
  int concurrency = 8;                           // attempts in flight at once
  std::chrono::milliseconds poll_interval{250};  // claim attempt when idle and not woken
  std::function<int64_t()> now_us;               // clock (unix microseconds); unset = system
  uint64_t seed = 0;                             // jitter seed; 0 = random
};

// Draws the job's JSON object (the "data" of a delivery).
using WebhookJobRenderer = std::function<std::string(const Job&)>;

class WebhookDispatcher {
 public:
  // Checks the options and builds a stopped dispatcher. InvalidArgument when the secret is
  // missing, a CIDR of the SSRF policy does not parse, the retry schedule is empty or holds a
  // wait <= 0, or timeout, concurrency or poll_interval is not positive. `db` (migrated),
  // `queue`, `registry` must outlive the dispatcher.
  static core::Result<std::unique_ptr<WebhookDispatcher>> Create(store::Database& db,
                                                                 JobQueue& queue,
                                                                 WebhookDispatcherOptions options,
                                                                 WebhookJobRenderer render,
                                                                 metrics::Registry& registry);
  // Stop(0) if running.
  ~WebhookDispatcher();
  // No copying allowed.
  WebhookDispatcher(const WebhookDispatcher&) = delete;
  WebhookDispatcher& operator=(const WebhookDispatcher&) = delete;

  // Starts the store and I/O threads. Does nothing if already started or stopped.
  void Start();

  // New deliveries may be due: claim now instead of at the next poll.
  void Wake();

  // Stops claiming; waits up to `drain` for attempts in flight and records their outcomes, then
  // cancels the rest (their rows stay pending and are sent again once their lease expires).
  // Idempotent; does nothing before Start().
  void Stop(std::chrono::milliseconds drain);

 private:
  class Impl;
  explicit WebhookDispatcher(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace megaserve::jobs
