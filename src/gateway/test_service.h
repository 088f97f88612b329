// For the gateway's tests: an HTTP service on a loopback port (a worker the gateway forwards
// to). Add routes to router(), then Start(); timers() runs on its own thread, for replies that
// come later.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "core/config.h"
#include "metrics/registry.h"
#include "net/router.h"
#include "net/server.h"

namespace megaserve::gateway {

class TestService {
 public:
  explicit TestService(int io_threads) : guard_(boost::asio::make_work_guard(timers_)) {
    config_.server.listen = "127.0.0.1:0";
    config_.server.threads = io_threads;
    config_.server.drain_timeout = std::chrono::seconds(2);
    config_.log.access = false;
    timer_thread_ = std::thread([this] { timers_.run(); });
  }
  ~TestService() {
    if (server_) server_->Shutdown();  // waits for later replies, so the timers still run
    guard_.reset();
    timer_thread_.join();
  }
  TestService(const TestService&) = delete;
  TestService& operator=(const TestService&) = delete;

  net::Router& router() { return router_; }
  boost::asio::io_context& timers() { return timers_; }

  // Listens with the routes added so far; started() says whether it worked.
  void Start() {
    server_ = std::make_unique<net::Server>(config_, router_, registry_);
    started_ = server_->Start().ok();
  }
  bool started() const { return started_; }
  unsigned short port() const { return server_->port(); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port()); }

 private:
  core::Config config_;
  net::Router router_;
  metrics::Registry registry_;
  boost::asio::io_context timers_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::thread timer_thread_;
  std::unique_ptr<net::Server> server_;
  bool started_ = false;
};

}  // namespace megaserve::gateway
