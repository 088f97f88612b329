#include "metrics/process.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <limits>
#include <string>

namespace megaserve::metrics {
namespace {

ProcessStats Read() {
  core::Result<ProcessStats> stats = ReadProcessStats();
  EXPECT_TRUE(stats.ok()) << stats.status().ToString();
  return stats.ok() ? *stats : ProcessStats{};
}

double CpuSecondsNow() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

TEST(ProcessStatsTest, MemoryAndLimitsAreSane) {
  ProcessStats s = Read();
  EXPECT_GT(s.resident_memory_bytes, 0u);
  EXPECT_GE(s.virtual_memory_bytes, s.resident_memory_bytes);
  EXPECT_GE(s.open_fds, 3u);  // stdin, stdout, stderr
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  EXPECT_EQ(s.max_fds, limit.rlim_cur);
}

TEST(ProcessStatsTest, OpenFdsMatchesProbedDescriptors) {
  uint64_t probed = 0;
  for (int fd = 0; fd < 65536; ++fd) probed += fcntl(fd, F_GETFD) != -1;
  EXPECT_EQ(Read().open_fds, probed);
}

TEST(ProcessStatsTest, OpenFdsCountsANewDescriptor) {
  uint64_t before = Read().open_fds;
  int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  uint64_t during = Read().open_fds;
  close(fd);
  EXPECT_EQ(during, before + 1);
  EXPECT_EQ(Read().open_fds, before);
}

TEST(ProcessStatsTest, StartTimeIsWithinTheLastHour) {
  double now = static_cast<double>(std::time(nullptr));
  double start = Read().start_time_seconds;
  EXPECT_LE(start, now + 1);  // btime is whole seconds, so allow one second of rounding
  EXPECT_GT(start, now - 3600);
}

TEST(ProcessStatsTest, CpuSecondsGrowWithBusyWork) {
  double before = Read().cpu_seconds;
  // Spin for 100 ms of CPU time, ten clock ticks at the usual 100 Hz, mostly in user mode
  // (reading the CPU clock is a system call, so it is done only now and then).
  volatile double sink = 0;
  for (double until = CpuSecondsNow() + 0.1; CpuSecondsNow() < until;) {
    for (int i = 0; i < 100000; ++i) sink = sink + 1;
  }
  EXPECT_GE(Read().cpu_seconds, before + 0.05);
}

TEST(ProcessMetricsTest, ExposesTheStandardNames) {
  Registry r;
  RegisterProcessMetrics(r);
  std::string text = r.Expose();
  for (const char* type_line :
       {"# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_virtual_memory_bytes gauge\n", "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n", "# TYPE process_start_time_seconds gauge\n"}) {
    EXPECT_NE(text.find(type_line), std::string::npos) << type_line << "missing from\n" << text;
  }
  EXPECT_EQ(text.find("process_resident_memory_bytes 0\n"), std::string::npos);
}

// Runs `promtool check metrics` on `text`; returns its exit code and fills `output`.
int PromtoolCheck(const std::string& text, std::string& output) {
  char path[] = "/tmp/megaserve_metrics_XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0 || write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    ADD_FAILURE() << "cannot write " << path;
    return -1;
  }
  close(fd);
  std::string command = std::string("/usr/bin/promtool check metrics < ") + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  char buf[4096];
  for (size_t n; pipe != nullptr && (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) {
    output.append(buf, n);
  }
  int status = pipe != nullptr ? pclose(pipe) : -1;
  unlink(path);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(PromtoolTest, AcceptsEveryMetricTypeAndTheProcessMetrics) {
  ASSERT_EQ(access("/usr/bin/promtool", X_OK), 0)
      << "promtool is missing: install Debian's prometheus package (scripts/setup.sh)";
  Registry r;
  auto& requests =
      r.AddCounter("megaserve_http_requests_total", "Requests served.", {"method", "path"});
  requests.WithLabels({"GET", "/v1/\"odd\"\\path\n"}).Inc(7);
  r.AddCounter("megaserve_errors_total", "Errors.");
  r.AddGauge("megaserve_in_flight_requests", "Requests in flight.").WithLabels({}).Inc(3);
  r.AddGauge("megaserve_temperature_celsius", "Help with \\ and\nnewline.")
      .WithLabels({})
      .Set(-std::numeric_limits<double>::infinity());
  auto& latency = r.AddHistogram("megaserve_request_duration_seconds", "Request latency.",
                                 {0.005, 0.01, 0.1, 1, 10}, {"route"});
  latency.WithLabels({"chat"}).Observe(0.005);
  latency.WithLabels({"chat"}).Observe(3);
  latency.WithLabels({"embed"}).Observe(0.02);
  r.AddHistogram("megaserve_response_size_bytes", "Response sizes.", {100, 1e4, 1e6});
  r.AddCallbackGauge("megaserve_uptime_seconds", "Uptime.", [] { return 12.5; });
  RegisterProcessMetrics(r);

  std::string text = r.Expose();
  std::string output;
  EXPECT_EQ(PromtoolCheck(text, output), 0) << output << "\nfor:\n" << text;
  EXPECT_EQ(output, "") << "for:\n" << text;
}

}  // namespace
}  // namespace megaserve::metrics
