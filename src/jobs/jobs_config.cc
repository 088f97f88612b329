#include "jobs/jobs_config.h"

#include <charconv>

namespace megaserve::jobs {

JobQueue::Options QueueOptionsFromConfig(const core::Config& config) {
  JobQueue::Options options;
  options.lease = config.jobs.lease;
  return options;
}

WorkersOptions WorkersOptionsFromConfig(const core::Config& config) {
  WorkersOptions options;
  options.queue = config.jobs.queue;
  options.concurrency = config.jobs.concurrency;
  options.heartbeat_interval = config.jobs.heartbeat;
  options.poll_interval = config.jobs.poll_interval;
  options.rescue_interval = config.jobs.rescue_interval;
  for (const std::string& entry : config.jobs.type_concurrency) {
    const std::size_t eq = entry.find('=');
    int n = 0;
    std::from_chars(entry.data() + eq + 1, entry.data() + entry.size(), n);
    options.type_limits[entry.substr(0, eq)] = n;
  }
  return options;
}

}  // namespace megaserve::jobs
