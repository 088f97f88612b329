// Standard Prometheus process metrics for the running process, read from Linux /proc.
//
// The names and meanings follow the Prometheus client convention
// (https://prometheus.io/docs/instrumenting/writing_clientlibs/#process-metrics):
// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds and process_start_time_seconds. CPU time, memory and start
// time come from one read of /proc/self/stat (into a stack buffer), open descriptors from listing
// /proc/self/fd, the descriptor limit from getrlimit(RLIMIT_NOFILE). The start time is the
// stat "starttime" (clock ticks after boot) plus the boot time "btime" from /proc/stat, which is
// read once per process because it never changes.
#pragma once

#include <cstdint>

#include "core/status.h"
#include "metrics/registry.h"

namespace megaserve::metrics {

// A snapshot of the calling process's resource usage.
struct ProcessStats {
  double cpu_seconds = 0;  // user + system CPU time
  uint64_t resident_memory_bytes = 0;
  uint64_t virtual_memory_bytes = 0;
  uint64_t open_fds = 0;
  uint64_t max_fds = 0;           // the soft limit on open descriptors
  double start_time_seconds = 0;  // seconds since the Unix epoch
};

// Reads the current stats. Fails with kUnavailable when /proc cannot be read (not Linux, or
// /proc mounted with restrictions).
core::Result<ProcessStats> ReadProcessStats();

// Adds a collector to `r` that exposes the stats above at every scrape (nothing, if they cannot
// be read, so the rest of the scrape still succeeds). Call it once per registry: a second call
// would expose every process metric twice.
void RegisterProcessMetrics(Registry& r);

}  // namespace megaserve::metrics
