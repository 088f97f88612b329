// The [jobs] configuration section turned into JobQueue and Workers options, shared by `serve`
// and `worker`.
#pragma once

#include "core/config.h"
#include "jobs/job_queue.h"
#include "jobs/workers.h"

namespace megaserve::jobs {

// Lease length from jobs.lease.
JobQueue::Options QueueOptionsFromConfig(const core::Config& config);

// Queue, concurrency, heartbeat, poll and rescue intervals and per-type caps from [jobs].
// Entries of jobs.type_concurrency were validated when the configuration was loaded.
WorkersOptions WorkersOptionsFromConfig(const core::Config& config);

}  // namespace megaserve::jobs
