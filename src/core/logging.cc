#include "core/logging.h"

#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace megaserve::core {
namespace {

std::shared_ptr<spdlog::logger> g_access;  // set once in InitLogging, before threads start

}  // namespace

Status InitLogging(const LogConfig& config) {
  spdlog::drop("megaserve");
  spdlog::drop("access");
  auto app = spdlog::stderr_logger_mt("megaserve");
  if (config.format == "json") {
    app->set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","logger":"%n","msg":"%v"})",
                     spdlog::pattern_time_type::utc);
  } else {
    app->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  app->set_level(spdlog::level::from_str(config.level));
  app->flush_on(spdlog::level::warn);
  spdlog::set_default_logger(app);

  if (config.access) {
    // One background thread, a bounded queue; when it is full the oldest line is dropped
    // rather than stalling an I/O thread. spdlog allocates the whole queue up front: with 65536
    // slots idle RSS was 32.3 MiB, with 8192 slots 10.0 MiB (bench/http_vs_nginx.sh with
    // ACCESS_LOG=on, docs/benchmarks.md); 8192 still holds a fraction of a second at full speed.
    spdlog::init_thread_pool(8192, 1);
    try {
      if (config.access_file == "-") {
        g_access = spdlog::create_async_nb<spdlog::sinks::stdout_sink_mt>("access");
      } else {
        g_access = spdlog::create_async_nb<spdlog::sinks::basic_file_sink_mt>("access",
                                                                              config.access_file);
      }
    } catch (const spdlog::spdlog_ex& e) {
      return InvalidArgument("log.access_file: cannot open \"" + config.access_file +
                             "\": " + e.what());
    }
    g_access->set_pattern("%v");
    g_access->set_level(spdlog::level::info);
  }
  return Status::Ok();
}

std::shared_ptr<spdlog::logger> AccessLogger() { return g_access; }

void ShutdownLogging() {
  if (g_access) g_access->flush();
  spdlog::default_logger()->flush();
  spdlog::shutdown();
  g_access.reset();
}

}  // namespace megaserve::core
