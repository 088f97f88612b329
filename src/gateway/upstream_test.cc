// Upstream against real worker servers on loopback: balancing, keep-alive reuse, health
// checks, outlier ejection, retries and their budget, and the request deadline.
#include "gateway/upstream.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gateway/test_service.h"
#include "metrics/registry.h"
#include "net/router.h"

namespace megaserve::gateway {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;

// I/O loops, each run by its own thread, standing in for the gateway server's.
class Loops {
 public:
  explicit Loops(int n) {
    for (int i = 0; i < n; ++i) {
      iocs_.push_back(std::make_unique<asio::io_context>());
      guards_.emplace_back(asio::make_work_guard(*iocs_.back()));
    }
    for (auto& ioc : iocs_) threads_.emplace_back([io = ioc.get()] { io->run(); });
  }
  ~Loops() { Stop(); }
  Loops(const Loops&) = delete;
  Loops& operator=(const Loops&) = delete;

  std::vector<asio::io_context*> get() const {
    std::vector<asio::io_context*> out;
    for (const auto& ioc : iocs_) out.push_back(ioc.get());
    return out;
  }
  // Stops and joins the threads; the io_contexts live on until destruction.
  void Stop() {
    guards_.clear();
    for (auto& ioc : iocs_) ioc->stop();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::vector<std::unique_ptr<asio::io_context>> iocs_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::vector<std::thread> threads_;
};

// A worker service: GET/POST /work answers `status` after `delay_ms`; /readyz follows `ready`.
class Backend {
 public:
  Backend() {
    auto work = [this](const net::Request&, net::Reply reply) {
      hits.fetch_add(1);
      const int code = status.load();
      const int delay = delay_ms.load();
      auto respond = [reply = std::move(reply), code] {
        reply(net::JsonResponse(code, "{\"ok\":true}"));
      };
      if (delay == 0) return respond();
      auto timer =
          std::make_shared<asio::steady_timer>(service_.timers(), std::chrono::milliseconds(delay));
      timer->async_wait([timer, respond](const boost::system::error_code&) { respond(); });
    };
    service_.router().AddAsync(net::Method::kGet, "/work", work);
    service_.router().AddAsync(net::Method::kPost, "/work", work);
    service_.router().Add(net::Method::kGet, "/readyz", [this](const net::Request&) {
      health_checks.fetch_add(1);
      return ready.load() ? net::JsonResponse(200, "{}") : net::JsonResponse(503, "{}");
    });
    service_.Start();
  }

  bool started() const { return service_.started(); }
  std::string url() const { return service_.url(); }
  std::string label() const { return "127.0.0.1:" + std::to_string(service_.port()); }

  std::atomic<int> hits{0};
  std::atomic<int> health_checks{0};
  std::atomic<int> status{200};
  std::atomic<int> delay_ms{0};
  std::atomic<bool> ready{true};

 private:
  TestService service_{2};  // last: stops before the counters its handlers use go
};

// A loopback URL nothing listens on: connections to it are refused.
std::string DeadUrl() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port));
}

ProxyRequest Get(std::string target = "/work") {
  ProxyRequest req;
  req.method = "GET";
  req.target = std::move(target);
  req.idempotent = true;
  req.timeout = 2s;
  return req;
}

// Polls `cond` every 10 ms for up to `limit`.
template <typename Cond>
bool WaitFor(Cond cond, std::chrono::milliseconds limit = 3000ms) {
  const auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

class UpstreamTest : public ::testing::Test {
 protected:
  ~UpstreamTest() override {
    loops_.Stop();  // the upstream's clients must not be destroyed under running loops
    upstream_.reset();
  }

  UpstreamConfig Config(std::vector<std::string> targets, std::string balance = "round_robin") {
    UpstreamConfig c;
    c.name = "workers";
    c.targets = std::move(targets);
    c.balance = std::move(balance);
    c.health_interval = 50ms;
    c.health_timeout = 200ms;
    c.eject_after_5xx = 0;  // off unless a test wants it
    return c;
  }

  Upstream& Make(UpstreamConfig config) {
    auto created = Upstream::Create(std::move(config), loops_.get(), registry_);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    upstream_ = std::move(created).value();
    return *upstream_;
  }

  std::future<core::Result<net::ClientResponse>> Send(ProxyRequest req) {
    auto promise = std::make_shared<std::promise<core::Result<net::ClientResponse>>>();
    auto future = promise->get_future();
    upstream_->Forward(std::move(req), [promise](core::Result<net::ClientResponse> result) {
      promise->set_value(std::move(result));
    });
    return future;
  }

  core::Result<net::ClientResponse> Call(ProxyRequest req) {
    auto future = Send(std::move(req));
    if (future.wait_for(5s) != std::future_status::ready) {
      return core::Internal("no answer within 5 s");
    }
    return future.get();
  }

  // The value of one exposed sample line, or -1 when the line is absent.
  double Metric(const std::string& series) {
    const std::string text = registry_.Expose();
    const std::size_t at = text.find("\n" + series + " ");
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + series.size() + 2));
  }

  metrics::Registry registry_;
  Loops loops_{2};
  std::unique_ptr<Upstream> upstream_;
};

TEST_F(UpstreamTest, CreateRejectsBadConfiguration) {
  auto bad = [&](UpstreamConfig c) {
    auto r = Upstream::Create(std::move(c), loops_.get(), registry_);
    return !r.ok() && r.status().code() == core::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(bad(Config({})));
  EXPECT_TRUE(bad(Config({"ftp://127.0.0.1:21"})));
  EXPECT_TRUE(bad(Config({"https://127.0.0.1:8443"})));
  EXPECT_TRUE(bad(Config({"http://127.0.0.1:8081/v1"})));
  EXPECT_TRUE(bad(Config({"http://127.0.0.1:8081?x=1"})));
  EXPECT_TRUE(bad(Config({"127.0.0.1:8081"})));
  EXPECT_TRUE(bad(Config({"http://127.0.0.1:8081", "http://127.0.0.1:8081/"})));
  EXPECT_TRUE(bad(Config({"http://127.0.0.1:8081"}, "random")));
  auto no_loops = Upstream::Create(Config({"http://127.0.0.1:8081"}), {}, registry_);
  EXPECT_FALSE(no_loops.ok());

  auto good = Upstream::Create(Config({"http://127.0.0.1:8081/", "http://localhost:9000"}),
                               loops_.get(), registry_);
  ASSERT_TRUE(good.ok()) << good.status().ToString();
  EXPECT_EQ((*good)->target_count(), 2u);
  EXPECT_EQ((*good)->target_url(0), "http://127.0.0.1:8081");
  EXPECT_EQ((*good)->target_url(1), "http://localhost:9000");
  EXPECT_TRUE((*good)->healthy(0));
  EXPECT_FALSE((*good)->ejected(1));
  loops_.Stop();
}

TEST_F(UpstreamTest, RoundRobinSpreadsEvenly) {
  Backend a, b, c;
  ASSERT_TRUE(a.started() && b.started() && c.started());
  Upstream& up = Make(Config({a.url(), b.url(), c.url()}));
  for (int i = 0; i < 30; ++i) {
    auto r = Call(Get());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 200);
    EXPECT_EQ(r->body, "{\"ok\":true}");
  }
  EXPECT_EQ(a.hits, 10);
  EXPECT_EQ(b.hits, 10);
  EXPECT_EQ(c.hits, 10);
  EXPECT_EQ(up.in_flight(0) + up.in_flight(1) + up.in_flight(2), 0);
  EXPECT_EQ(Metric("megaserve_upstream_requests_total{upstream=\"workers\",target=\"" + a.label() +
                   "\",code=\"2xx\"}"),
            10);
  EXPECT_EQ(
      Metric("megaserve_upstream_in_flight{upstream=\"workers\",target=\"" + b.label() + "\"}"), 0);
}

TEST_F(UpstreamTest, KeepAliveConnectionsAreReused) {
  Backend a;
  ASSERT_TRUE(a.started());
  Upstream& up = Make(Config({a.url()}));
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(Call(Get()).ok());
  const auto stats = up.client_stats();
  EXPECT_EQ(stats.requests, 40u);
  EXPECT_LE(stats.connections_opened, 2u);  // one per loop
  EXPECT_GE(stats.connections_reused, 38u);
}

TEST_F(UpstreamTest, LeastRequestAvoidsTheSlowTarget) {
  Backend slow, fast;
  ASSERT_TRUE(slow.started() && fast.started());
  slow.delay_ms = 400;
  Make(Config({slow.url(), fast.url()}, "least_request"));
  std::vector<std::future<core::Result<net::ClientResponse>>> pending;
  for (int i = 0; i < 20; ++i) {
    pending.push_back(Send(Get()));
    std::this_thread::sleep_for(10ms);
  }
  for (auto& f : pending) {
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    EXPECT_TRUE(f.get().ok());
  }
  // Round robin would give the slow target 10; two choices only pick it while it is as idle as
  // the fast one, which after its first request it never is again until that one returns.
  EXPECT_LE(slow.hits, 3);
  EXPECT_EQ(slow.hits + fast.hits, 20);
}

TEST_F(UpstreamTest, ForwardOnALoopThreadStaysOnThatLoop) {
  Backend a;
  ASSERT_TRUE(a.started());
  Upstream& up = Make(Config({a.url()}));
  std::promise<std::pair<std::thread::id, std::thread::id>> ids;
  asio::post(*loops_.get()[1], [&] {
    const auto caller = std::this_thread::get_id();
    up.Forward(Get(), [&ids, caller](core::Result<net::ClientResponse> r) {
      EXPECT_TRUE(r.ok());
      ids.set_value({caller, std::this_thread::get_id()});
    });
  });
  auto future = ids.get_future();
  ASSERT_EQ(future.wait_for(5s), std::future_status::ready);
  const auto [caller, callback] = future.get();
  EXPECT_EQ(caller, callback);
}

TEST_F(UpstreamTest, HealthChecksTakeATargetOutAndBringItBack) {
  Backend a, b;
  ASSERT_TRUE(a.started() && b.started());
  Upstream& up = Make(Config({a.url(), b.url()}));
  up.Start();
  up.Start();  // idempotent
  ASSERT_TRUE(WaitFor([&] { return b.health_checks >= 2; }));
  EXPECT_TRUE(up.healthy(1));

  b.ready = false;
  ASSERT_TRUE(WaitFor([&] { return !up.healthy(1); }));
  EXPECT_TRUE(up.healthy(0));
  EXPECT_EQ(Metric("megaserve_upstream_healthy{upstream=\"workers\",target=\"" + b.label() + "\"}"),
            0);
  const int b_before = b.hits;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Call(Get()).ok());
  EXPECT_EQ(b.hits, b_before);

  b.ready = true;
  ASSERT_TRUE(WaitFor([&] { return up.healthy(1); }));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Call(Get()).ok());
  EXPECT_EQ(b.hits, b_before + 5);

  up.Stop();
  std::this_thread::sleep_for(100ms);  // let a check already in flight land
  const int checks = b.health_checks;
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(b.health_checks, checks);
}

TEST_F(UpstreamTest, PanicModeUsesUnhealthyTargetsWhenNoneIsHealthy) {
  Backend a, b;
  ASSERT_TRUE(a.started() && b.started());
  a.ready = false;
  b.ready = false;
  Upstream& up = Make(Config({a.url(), b.url()}));
  up.Start();
  ASSERT_TRUE(WaitFor([&] { return !up.healthy(0) && !up.healthy(1); }));
  for (int i = 0; i < 4; ++i) {
    auto r = Call(Get());
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(a.hits, 2);
  EXPECT_EQ(b.hits, 2);
  up.Stop();
}

TEST_F(UpstreamTest, ConsecutiveErrorsEjectATargetForAGrowingTime) {
  Backend a, b;
  ASSERT_TRUE(a.started() && b.started());
  b.status = 500;  // not retried: only 502/503/504 are
  auto config = Config({a.url(), b.url()});
  config.eject_after_5xx = 5;
  config.base_ejection = 300ms;
  Upstream& up = Make(config);

  for (int i = 0; i < 10; ++i) ASSERT_TRUE(Call(Get()).ok());
  EXPECT_EQ(b.hits, 5);
  EXPECT_TRUE(up.ejected(1));
  EXPECT_FALSE(up.ejected(0));
  EXPECT_EQ(Metric("megaserve_upstream_ejections_total{upstream=\"workers\",target=\"" + b.label() +
                   "\"}"),
            1);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(Call(Get()).ok());
  EXPECT_EQ(b.hits, 5);  // no traffic while ejected

  ASSERT_TRUE(WaitFor([&] { return !up.ejected(1); }, 1000ms));
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Call(Get()).ok());
  EXPECT_EQ(b.hits, 7);  // back in rotation

  // The second ejection lasts twice as long.
  for (int i = 0; i < 10 && !up.ejected(1); ++i) ASSERT_TRUE(Call(Get()).ok());
  ASSERT_TRUE(up.ejected(1));
  std::this_thread::sleep_for(400ms);
  EXPECT_TRUE(up.ejected(1));
  EXPECT_TRUE(WaitFor([&] { return !up.ejected(1); }, 1000ms));
}

TEST_F(UpstreamTest, NeverEjectsMoreThanHalfTheTargets) {
  Backend a, b;
  ASSERT_TRUE(a.started() && b.started());
  a.status = 500;
  b.status = 500;
  auto config = Config({a.url(), b.url()});
  config.eject_after_5xx = 2;
  config.base_ejection = 10s;
  Upstream& up = Make(config);
  for (int i = 0; i < 20; ++i) {
    auto r = Call(Get());
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 500);
  }
  EXPECT_EQ(static_cast<int>(up.ejected(0)) + static_cast<int>(up.ejected(1)), 1);
}

TEST_F(UpstreamTest, RetriesOnAnotherTargetWhenAConnectionIsRefused) {
  Backend live;
  ASSERT_TRUE(live.started());
  Upstream& up = Make(Config({DeadUrl(), live.url()}));
  for (int i = 0; i < 10; ++i) {
    ProxyRequest req = Get();
    req.method = "POST";  // not idempotent, but a refused connection never carried it
    req.idempotent = false;
    req.body = "{}";
    auto r = Call(std::move(req));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 200);
  }
  EXPECT_EQ(live.hits, 10);
  EXPECT_EQ(up.retries(), 5u);
  EXPECT_EQ(Metric("megaserve_upstream_retries_total{upstream=\"workers\"}"), 5);
  EXPECT_EQ(Metric("megaserve_upstream_requests_total{upstream=\"workers\",target=\"" +
                   live.label() + "\",code=\"2xx\"}"),
            10);
}

TEST_F(UpstreamTest, RetriesGatewayErrorsOnlyForIdempotentRequests) {
  Backend bad, good;
  ASSERT_TRUE(bad.started() && good.started());
  bad.status = 503;
  Upstream& up = Make(Config({bad.url(), good.url()}));

  auto get = Call(Get());  // round robin starts with `bad`
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(up.retries(), 1u);

  ASSERT_TRUE(Call(Get()).ok());  // `good`'s turn
  ProxyRequest post = Get();
  post.method = "POST";
  post.idempotent = false;
  auto r = Call(std::move(post));  // `bad` again: the request reached it, so no retry
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(up.retries(), 1u);
  EXPECT_EQ(bad.hits, 2);
}

TEST_F(UpstreamTest, RetryBudgetCapsRetries) {
  Backend slow;
  ASSERT_TRUE(slow.started());
  slow.delay_ms = 300;  // keeps the one allowed retry in flight
  auto config = Config({DeadUrl(), slow.url()});
  config.retry_budget = 0;
  config.min_retries = 1;
  Upstream& up = Make(config);
  std::vector<std::future<core::Result<net::ClientResponse>>> pending;
  for (int i = 0; i < 10; ++i) pending.push_back(Send(Get()));
  int failed = 0;
  for (auto& f : pending) {
    ASSERT_EQ(f.wait_for(5s), std::future_status::ready);
    auto r = f.get();
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), core::StatusCode::kUnavailable) << r.status().ToString();
      ++failed;
    }
  }
  EXPECT_EQ(up.retries(), 1u);
  EXPECT_EQ(up.retries_over_budget(), 4u);
  EXPECT_EQ(failed, 4);
  EXPECT_EQ(slow.hits, 6);
}

TEST_F(UpstreamTest, TimeoutIsDeadlineExceeded) {
  Backend slow;
  ASSERT_TRUE(slow.started());
  slow.delay_ms = 600;
  Make(Config({slow.url()}));
  ProxyRequest req = Get();
  req.timeout = 100ms;
  const auto start = std::chrono::steady_clock::now();
  auto r = Call(std::move(req));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_LT(took, 450ms);
  EXPECT_EQ(Metric("megaserve_upstream_requests_total{upstream=\"workers\",target=\"" +
                   slow.label() + "\",code=\"timeout\"}"),
            1);
}

TEST_F(UpstreamTest, TimeoutCoversTheRetry) {
  Backend failing, slow;
  ASSERT_TRUE(failing.started() && slow.started());
  failing.status = 503;
  failing.delay_ms = 100;
  slow.delay_ms = 800;
  Upstream& up = Make(Config({failing.url(), slow.url()}));
  ProxyRequest req = Get();
  req.timeout = 250ms;
  const auto start = std::chrono::steady_clock::now();
  auto r = Call(std::move(req));
  const auto took = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(up.retries(), 1u);
  EXPECT_EQ(slow.hits, 1);
  EXPECT_GE(took, 240ms);
  EXPECT_LT(took, 500ms);  // not 100 ms plus a fresh 250 ms
}

}  // namespace
}  // namespace megaserve::gateway
