// Logging: the application log (stderr, text or JSON lines) and the access log (JSON lines, on
// spdlog's async logger so the I/O threads never wait for the disk or the terminal).
#pragma once

#include <memory>

#include "core/config.h"
#include "core/status.h"

namespace spdlog {
class logger;
}

namespace megaserve::core {

// Sets spdlog's default logger from the config and creates the access logger when log.access is
// on. Call once, before any thread starts.
Status InitLogging(const LogConfig& config);

// The access logger, or null when the access log is off. Lines passed to it are complete JSON.
std::shared_ptr<spdlog::logger> AccessLogger();

// Flushes and stops the async loggers; call before exit.
void ShutdownLogging();

}  // namespace megaserve::core
