// Test helpers for the Redis client, cache and rate limiter: an I/O loop on its own thread, a
// throwaway redis-server of the test's own, and the TEST_REDIS_URL guard.
//
// Tests against the shared server read TEST_REDIS_URL (scripts/test.sh starts a server and sets
// it). When it is unset they fail under CI=true and are skipped otherwise.
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <optional>
#include <random>
#include <string>
#include <thread>

namespace megaserve::cache::testing {

// TEST_REDIS_URL, or "" when unset.
inline std::string RedisUrl() {
  const char* url = std::getenv("TEST_REDIS_URL");
  return url && *url ? url : "";
}

// True under CI=true, where a missing Redis server is a failure rather than a skip.
inline bool RedisRequired() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// Declares `url_var` holding TEST_REDIS_URL; when it is unset, fails the test (fatally) under
// CI=true and skips it otherwise.
#define MEGASERVE_REQUIRE_REDIS(url_var)                                                   \
  std::string url_var = ::megaserve::cache::testing::RedisUrl();                           \
  if (url_var.empty()) {                                                                   \
    if (::megaserve::cache::testing::RedisRequired()) {                                    \
      GTEST_FAIL() << "TEST_REDIS_URL is not set under CI=true; run the tests through "    \
                      "scripts/test.sh";                                                   \
    }                                                                                      \
    GTEST_SKIP() << "TEST_REDIS_URL is not set; run through scripts/test.sh to test with " \
                    "Redis";                                                               \
  }

// A key prefix unique to this process and call, so tests sharing a server do not collide.
inline std::string UniqueName(const std::string& stem) {
  static std::atomic<int> counter{0};
  return "megaserve-test:" + stem + ":" + std::to_string(getpid()) + ":" +
         std::to_string(counter++) + ":" + std::to_string(std::random_device{}());
}

// An io_context running on a thread of its own until destroyed.
class LoopThread {
 public:
  LoopThread() : guard_(ioc_.get_executor()), thread_([this] { ioc_.run(); }) {}
  ~LoopThread() { Stop(); }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  boost::asio::io_context& ioc() { return ioc_; }
  std::thread::id thread_id() const { return thread_.get_id(); }

  // Stops the loop and joins its thread; the io_context stays, for objects still bound to it.
  void Stop() {
    if (!thread_.joinable()) return;
    guard_.reset();
    ioc_.stop();
    thread_.join();
  }

  // Runs `fn` on the loop and waits for it to return.
  void Run(std::function<void()> fn) {
    std::promise<void> done;
    boost::asio::post(ioc_, [&] {
      fn();
      done.set_value();
    });
    done.get_future().wait();
  }

 private:
  boost::asio::io_context ioc_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// Polls `pred` every 5 ms until it holds or `timeout` passes; returns its last value.
inline bool WaitFor(const std::function<bool()>& pred,
                    std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// A loopback TCP port that nothing listens on (at the time of the call).
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Whether something accepts TCP connections on loopback `port`.
inline bool PortOpen(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A redis-server of the test's own, on a free loopback port, in a temporary directory, with no
// persistence. Start() and Kill() may alternate; the port stays the same.
class OwnRedisServer {
 public:
  explicit OwnRedisServer(std::string extra_args = "")
      : port_(FreePort()), extra_args_(std::move(extra_args)) {
    dir_ = std::filesystem::temp_directory_path() /
           ("megaserve_redis_test_" + std::to_string(getpid()) + "_" + std::to_string(port_));
    std::filesystem::create_directories(dir_);
  }
  ~OwnRedisServer() {
    Kill();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  OwnRedisServer(const OwnRedisServer&) = delete;
  OwnRedisServer& operator=(const OwnRedisServer&) = delete;

  // Starts the server and waits until it accepts connections; false if it did not.
  bool Start() {
    std::string cmd = "redis-server --port " + std::to_string(port_) +
                      " --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --pidfile " +
                      (dir_ / "redis.pid").string() + " --dir " + dir_.string() + " --logfile " +
                      (dir_ / "redis.log").string() + " " + extra_args_;
    if (std::system(cmd.c_str()) != 0) return false;
    return WaitFor([&] { return PortOpen(port_); }, std::chrono::seconds(5));
  }

  // Kills the server (SIGKILL: no goodbye to clients) and waits until the port is closed.
  void Kill() {
    std::ifstream in(dir_ / "redis.pid");
    pid_t pid = 0;
    if (!(in >> pid) || pid <= 0) return;
    in.close();
    ::kill(pid, SIGKILL);
    // Not kill(pid, 0): the daemon is not our child, and may linger as a zombie nobody reaps.
    WaitFor([&] { return !PortOpen(port_); }, std::chrono::seconds(5));
    std::filesystem::remove(dir_ / "redis.pid");
  }

  int port() const { return port_; }
  // redis://127.0.0.1:<port>/<db>, with `password` when given.
  std::string Url(int db = 0, const std::string& password = "") const {
    return "redis://" + (password.empty() ? "" : ":" + password + "@") +
           "127.0.0.1:" + std::to_string(port_) + "/" + std::to_string(db);
  }

 private:
  int port_;
  std::string extra_args_;
  std::filesystem::path dir_;
};

}  // namespace megaserve::cache::testing
