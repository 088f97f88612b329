#include "metrics/process.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <system_error>

namespace megaserve::metrics {
namespace {

core::Status ErrnoStatus(std::string_view what) {
  return core::Unavailable(std::string(what) + ": " + std::generic_category().message(errno));
}

// Reads `path` into `buf` (at most `cap` bytes; /proc files are generated in one read as long as
// the buffer is big enough). Returns the length, or -1 with errno set.
ssize_t ReadSmallFile(const char* path, char* buf, std::size_t cap) {
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n;
  do {
    n = ::read(fd, buf, cap);
  } while (n < 0 && errno == EINTR);
  int saved = errno;
  ::close(fd);
  errno = saved;
  return n;
}

// The boot time in seconds since the epoch: the "btime" line of /proc/stat. Read once per process,
// so the file (which grows with the CPU count) is simply read whole.
core::Result<double> ReadBootTime() {
  int fd = ::open("/proc/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("open /proc/stat");
  std::string text;
  char chunk[4096];
  for (ssize_t n; (n = ::read(fd, chunk, sizeof(chunk))) > 0;) text.append(chunk, n);
  ::close(fd);
  constexpr std::string_view kKey = "\nbtime ";
  std::size_t at = text.find(kKey);
  if (at == std::string::npos) return core::Unavailable("no btime line in /proc/stat");
  return static_cast<double>(std::strtoull(text.c_str() + at + kKey.size(), nullptr, 10));
}

// The number of open descriptors: the entries of /proc/self/fd, less the one listing it.
core::Result<uint64_t> CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return ErrnoStatus("opendir /proc/self/fd");
  uint64_t count = 0;
  const int own = ::dirfd(dir);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.' && std::atoi(entry->d_name) != own) ++count;
  }
  ::closedir(dir);
  return count;
}

}  // namespace

core::Result<ProcessStats> ReadProcessStats() {
  static const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  static const long page_size = ::sysconf(_SC_PAGESIZE);
  static const core::Result<double> boot_time = ReadBootTime();
  if (!boot_time.ok()) return boot_time.status();

  // /proc/self/stat is "pid (comm) state f4 f5 ..."; comm may hold spaces and parentheses, so
  // fields are counted from the last ')'. See proc(5) for the field numbers.
  char buf[2048];
  ssize_t n = ReadSmallFile("/proc/self/stat", buf, sizeof(buf) - 1);
  if (n < 0) return ErrnoStatus("read /proc/self/stat");
  buf[n] = '\0';
  enum { kState = 3, kUtime = 14, kStime = 15, kStartTime = 22, kVsize = 23, kRss = 24 };
  const char* p = std::strrchr(buf, ')');
  // Skip ") S", the state letter: field 4 starts after the next space.
  if (p != nullptr && (p = std::strchr(p, ' ')) != nullptr) p = std::strchr(p + 1, ' ');
  if (p == nullptr) return core::Unavailable("malformed /proc/self/stat");
  unsigned long long field[kRss + 1] = {};  // field[i] is proc(5)'s field i, from kState + 1 on
  for (int i = kState + 1; i <= kRss; ++i) {
    char* end;
    field[i] = std::strtoull(p, &end, 10);
    if (end == p) return core::Unavailable("malformed /proc/self/stat");
    p = end;
  }

  core::Result<uint64_t> open_fds = CountOpenFds();
  if (!open_fds.ok()) return open_fds.status();
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return ErrnoStatus("getrlimit");

  const double ticks = static_cast<double>(ticks_per_second);
  ProcessStats s;
  s.cpu_seconds = static_cast<double>(field[kUtime] + field[kStime]) / ticks;
  s.resident_memory_bytes = field[kRss] * static_cast<uint64_t>(page_size);
  s.virtual_memory_bytes = field[kVsize];
  s.open_fds = *open_fds;
  s.max_fds = limit.rlim_cur;
  s.start_time_seconds = *boot_time + static_cast<double>(field[kStartTime]) / ticks;
  return s;
}

void RegisterProcessMetrics(Registry& r) {
  r.AddCollector([](std::string& out) {
    core::Result<ProcessStats> s = ReadProcessStats();
    if (!s.ok()) return;
    AppendSimpleMetric(out, "process_cpu_seconds_total",
                       "Total user and system CPU time spent in seconds.", "counter",
                       s->cpu_seconds);
    AppendSimpleMetric(out, "process_resident_memory_bytes", "Resident memory size in bytes.",
                       "gauge", static_cast<double>(s->resident_memory_bytes));
    AppendSimpleMetric(out, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                       "gauge", static_cast<double>(s->virtual_memory_bytes));
    AppendSimpleMetric(out, "process_open_fds", "Number of open file descriptors.", "gauge",
                       static_cast<double>(s->open_fds));
    AppendSimpleMetric(out, "process_max_fds", "Maximum number of open file descriptors.", "gauge",
                       static_cast<double>(s->max_fds));
    AppendSimpleMetric(out, "process_start_time_seconds",
                       "Start time of the process since unix epoch in seconds.", "gauge",
                       s->start_time_seconds);
  });
}

}  // namespace megaserve::metrics
