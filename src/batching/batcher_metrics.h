// The dynamic batcher's metrics, one set per model, with the meanings of Triton's
// (https://docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/user_guide/metrics.html):
//
//   megaserve_inference_request_duration_seconds{model}   arrival to completion, per request
//                                                         that reached the backend
//   megaserve_inference_queue_duration_seconds{model}     arrival to the start of its batch
//   megaserve_inference_compute_duration_seconds{model}   the backend call of its batch
//   megaserve_inference_batch_size{model}                 requests per backend call
//   megaserve_inference_pending_requests{model}           requests queued, not yet dispatched
//   megaserve_inference_request_success_total{model}
//   megaserve_inference_request_failure_total{model,reason}  reason: rejected, deadline,
//                                                         canceled, backend
#pragma once

#include <string_view>

#include "metrics/registry.h"

namespace megaserve::batching {

// Why a request failed; the `reason` label of the failure counter.
enum class FailureReason { kRejected, kDeadline, kCanceled, kBackend };

// The label value of a reason, e.g. "deadline".
std::string_view FailureReasonName(FailureReason reason);

// The series of one model, looked up once so updates take no lock.
struct BatcherMetrics {
  // Registers the families in `registry` (or finds them) and looks up the series of `model`.
  BatcherMetrics(metrics::Registry& registry, std::string_view model);

  metrics::Counter& failure(FailureReason reason) { return *failures[static_cast<int>(reason)]; }

  metrics::Histogram& request_duration;
  metrics::Histogram& queue_duration;
  metrics::Histogram& compute_duration;
  metrics::Histogram& batch_size;
  metrics::Gauge& pending;
  metrics::Counter& success;
  metrics::Counter* failures[4];
};

}  // namespace megaserve::batching
