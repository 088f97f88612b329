#include "batching/batcher_metrics.h"

#include <string>
#include <vector>

namespace megaserve::batching {
namespace {

std::vector<double> SecondsBuckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
          0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
}

std::vector<double> SizeBuckets() { return {1, 2, 4, 8, 16, 32, 64, 128, 256}; }

metrics::Histogram& Seconds(metrics::Registry& r, const char* name, const char* help,
                            std::string_view model) {
  return r.AddHistogram(name, help, SecondsBuckets(), {"model"}).WithLabels({model});
}

}  // namespace

std::string_view FailureReasonName(FailureReason reason) {
  switch (reason) {
    case FailureReason::kRejected:
      return "rejected";
    case FailureReason::kDeadline:
      return "deadline";
    case FailureReason::kCanceled:
      return "canceled";
    case FailureReason::kBackend:
      return "backend";
  }
  return "unknown";
}

BatcherMetrics::BatcherMetrics(metrics::Registry& r, std::string_view model)
    : request_duration(Seconds(r, "megaserve_inference_request_duration_seconds",
                               "Time from a request's arrival to its completion, for requests "
                               "that reached the backend.",
                               model)),
      queue_duration(Seconds(r, "megaserve_inference_queue_duration_seconds",
                             "Time a request waited in the batcher's queue before its batch "
                             "started executing.",
                             model)),
      compute_duration(Seconds(r, "megaserve_inference_compute_duration_seconds",
                               "Duration of the backend call that executed a request's batch.",
                               model)),
      batch_size(r.AddHistogram("megaserve_inference_batch_size",
                                "Number of requests in each batch passed to the backend.",
                                SizeBuckets(), {"model"})
                     .WithLabels({model})),
      pending(r.AddGauge("megaserve_inference_pending_requests",
                         "Requests queued in the batcher and not yet dispatched.", {"model"})
                  .WithLabels({model})),
      success(r.AddCounter("megaserve_inference_request_success_total",
                           "Requests completed successfully.", {"model"})
                  .WithLabels({model})) {
  auto& family = r.AddCounter("megaserve_inference_request_failure_total",
                              "Requests that failed, by reason (rejected, deadline, canceled, "
                              "backend).",
                              {"model", "reason"});
  for (int i = 0; i < 4; ++i) {
    failures[i] = &family.WithLabels({model, FailureReasonName(static_cast<FailureReason>(i))});
  }
}

}  // namespace megaserve::batching
