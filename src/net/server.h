// The HTTP/1.1 server: one io_context and one SO_REUSEPORT acceptor per I/O thread.
//
// Each connection lives on one thread for its whole life, so connection state needs no locks.
// Requests on a connection are handled one at a time, in order, which makes pipelining correct
// by construction: responses to requests that arrived together are written in one batch.
//
// Built into the request path (before the router): request ids, CORS, the access log and HTTP
// metrics. Limits: header bytes (431), body bytes (413), time to receive the head and the body
// (408), keep-alive idle time, write time, and open connections (503 with Retry-After). Timeouts
// are enforced by a per-thread sweep every kSweepInterval, not by a timer per connection: one
// pass over the thread's connections is cheaper than arming and cancelling a timer per request.
//
// Shutdown (Shutdown()): readiness goes false, after server.shutdown_delay the listeners close,
// idle keep-alive connections close, requests in flight finish (their responses carry
// "Connection: close"), and whatever is still open after server.drain_timeout is closed.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/config.h"
#include "core/status.h"
#include "net/router.h"

namespace boost::asio {
class io_context;
}

namespace megaserve::metrics {
class Registry;
}

namespace megaserve::net {

class Server {
 public:
  static constexpr std::chrono::milliseconds kSweepInterval{50};

  // Borrows router and registry; both must outlive the server. Routes must all be registered
  // before Start().
  Server(const core::Config& config, const Router& router, metrics::Registry& registry);
  ~Server();                       // Stops the server (without draining) if it is still running.
  Server(const Server&) = delete;  // No copying allowed.
  Server& operator=(const Server&) = delete;

  // Binds the listeners and starts the I/O threads. Fails, with nothing left running, when the
  // address cannot be bound.
  core::Status Start();

  // Binds the listeners and creates the I/O loops (loops()) without running them, so clients
  // can be attached to the loops before the first request. Start() calls it when needed.
  core::Status Bind();

  // The bound port (useful with port 0).
  unsigned short port() const { return port_; }

  // Readiness as reported by /readyz: false until set_ready(true), false again once Shutdown()
  // begins.
  bool ready() const { return ready_.load(std::memory_order_relaxed); }
  void set_ready(bool r) { ready_.store(r, std::memory_order_relaxed); }
  bool draining() const { return draining_.load(std::memory_order_relaxed); }

  // Graceful shutdown as described above; blocks until every I/O thread has exited. Safe to call
  // from any thread except an I/O thread, and more than once.
  void Shutdown();

  // The I/O loops, for clients that should run on them (one per thread).
  std::vector<boost::asio::io_context*> loops() const;

  // Open connections across all threads.
  int open_connections() const { return open_connections_->load(std::memory_order_relaxed); }

  class Worker;  // one per I/O thread (defined in server.cc)
  struct Shared;

 private:
  void Stop();

  const core::Config& config_;
  std::unique_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<std::thread> threads_;
  std::atomic<int>* open_connections_ = nullptr;  // owned by shared_
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<bool> stopped_{false};
  unsigned short port_ = 0;
};

}  // namespace megaserve::net
