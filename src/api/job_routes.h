// The jobs API: POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}, POST /v1/jobs/{id}/cancel and
// GET /v1/jobs/{id}/events (Server-Sent Events). Shapes follow Replicate's prediction object:
// status, input, output, error, urls.get/cancel/stream, metrics.predict_time, timestamps, and
// webhook / webhook_events_filter (see webhook_dispatcher.h for what is sent).
//
// Store calls block, so every handler is asynchronous: it copies what it needs from the request
// and runs on the blocking pool; a full pool answers 503 with Retry-After.
#pragma once

#include <memory>

#include "core/blocking_pool.h"
#include "core/config.h"
#include "jobs/job_queue.h"
#include "jobs/ssrf_guard.h"
#include "jobs/workers.h"
#include "net/router.h"

namespace megaserve::api {

class JobEventStreams;

struct JobsContext {
  jobs::JobQueue* queue = nullptr;
  jobs::Workers* workers = nullptr;  // knows the job types (the queue wakes it on enqueue)
  core::BlockingPool* pool = nullptr;
  JobEventStreams* streams = nullptr;
  // Checks webhook URLs whose host is an IP literal when the job is created (names are checked
  // by the dispatcher after resolution). Null = webhooks are refused (webhooks.secret is empty).
  const jobs::SsrfGuard* webhook_guard = nullptr;
};

// Largest accepted `input` object, serialized.
inline constexpr std::size_t kMaxJobInputBytes = 256 * 1024;
// Longest accepted `webhook` URL.
inline constexpr std::size_t kMaxWebhookUrlBytes = 2048;

// Registers the jobs routes. The context's pointers must outlive the router.
void RegisterJobRoutes(net::Router& router, const JobsContext& context);

// The job as its JSON API object.
std::string JobJson(const jobs::Job& job);

}  // namespace megaserve::api
