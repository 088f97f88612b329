// ProxyFilter in a gateway chain, forwarding to a real worker server on loopback.
#include "gateway/proxy_filter.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gateway/test_service.h"
#include "metrics/registry.h"
#include "net/router.h"

namespace megaserve::gateway {
namespace {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Headers = std::vector<std::pair<std::string, std::string>>;

// What the worker received.
struct Seen {
  std::string method, target, body;
  std::map<std::string, std::string> headers;  // names lower-cased
};

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// A worker: /echo records the request and answers 201 text; /slow answers after 400 ms.
class Worker {
 public:
  Worker() {
    auto echo = [this](const net::Request& req) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        seen_.method = std::string(req.method_text);
        seen_.target = std::string(req.target);
        seen_.body = std::string(req.body);
        seen_.headers.clear();
        req.ForEachHeader([this](std::string_view n, std::string_view v) {
          seen_.headers[Lower(n)] = std::string(v);
        });
      }
      net::Response r;
      r.status = 201;
      r.content_type = "text/plain; charset=utf-8";
      r.body = "echo:" + std::string(req.body);
      r.headers = {{"X-Backend", "one"},
                   {"Keep-Alive", "timeout=5"},
                   {"Connection", "X-Hop"},
                   {"X-Hop", "1"},
                   {"Cache-Control", "max-age=5"}};
      return r;
    };
    for (auto m : {net::Method::kGet, net::Method::kPost, net::Method::kPut}) {
      service_.router().Add(m, "/echo", echo);
    }
    service_.router().AddAsync(
        net::Method::kGet, "/slow", [this](const net::Request&, net::Reply reply) {
          auto timer = std::make_shared<asio::steady_timer>(service_.timers(), 400ms);
          timer->async_wait([timer, reply = std::move(reply)](const boost::system::error_code&) {
            reply(net::JsonResponse(200, "{}"));
          });
        });
    service_.Start();
  }

  bool started() const { return service_.started(); }
  std::string url() const { return service_.url(); }
  unsigned short port() const { return service_.port(); }
  Seen seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  Seen seen_;
  TestService service_{1};  // last: stops before what its handlers use goes
};

// Collects the chain's deferred answer.
class PromiseDeferrer final : public net::Deferrer {
 public:
  net::Reply Defer() override {
    return [this](net::Response r) { promise_.set_value(std::move(r)); };
  }
  std::future<net::Response> future() { return promise_.get_future(); }

 private:
  std::promise<net::Response> promise_;
};

// A request the way the server hands one to a route, over a header vector.
struct TestRequest {
  TestRequest(std::string method, std::string target_text, Headers hdrs, std::string body_text)
      : method_text(std::move(method)),
        target(std::move(target_text)),
        body(std::move(body_text)),
        headers(std::move(hdrs)) {
    request.method = net::ParseMethod(method_text);
    request.method_text = method_text;
    request.SetTarget(target);
    request.body = body;
    request.request_id = "req-abc";
    request.remote_addr = "10.0.0.7";
    request.SetHeaderSource(&headers, &Find, &Each);
  }
  TestRequest(const TestRequest&) = delete;
  TestRequest& operator=(const TestRequest&) = delete;

  static std::string_view Find(const void* self, std::string_view name) {
    for (const auto& [n, v] : *static_cast<const Headers*>(self)) {
      if (Lower(n) == Lower(name)) return v;
    }
    return {};
  }
  static void Each(const void* self, net::Request::HeaderVisitor visit, void* fn) {
    for (const auto& [n, v] : *static_cast<const Headers*>(self)) visit(fn, n, v);
  }

  std::string method_text, target, body;
  Headers headers;
  net::Request request;
};

bool HasHeader(const net::Response& r, std::string_view name) {
  for (const auto& [n, v] : r.headers) {
    if (Lower(n) == Lower(name)) return true;
  }
  return false;
}

std::string HeaderValue(const net::Response& r, std::string_view name) {
  for (const auto& [n, v] : r.headers) {
    if (Lower(n) == Lower(name)) return v;
  }
  return "";
}

class ProxyFilterTest : public ::testing::Test {
 protected:
  ProxyFilterTest() : guard_(asio::make_work_guard(loop_)) {
    loop_thread_ = std::thread([this] { loop_.run(); });
  }
  ~ProxyFilterTest() override {
    guard_.reset();
    loop_.stop();
    loop_thread_.join();
    upstreams_.clear();  // with the loop stopped, as the upstream requires
  }

  ProxyFilter MakeFilter(std::vector<std::string> targets) {
    UpstreamConfig config;
    config.name = "workers";
    config.targets = std::move(targets);
    config.eject_after_5xx = 0;
    auto created = Upstream::Create(std::move(config), {&loop_}, registry_);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    upstreams_.push_back(std::move(created).value());
    return ProxyFilter({{"workers", upstreams_.back().get()}});
  }

  // Runs `req` through a chain of just the proxy filter and waits for the answer.
  net::Response Run(ProxyFilter& filter, RoutePolicy policy, TestRequest& req) {
    Chain chain(std::move(policy), {&filter}, nullptr, nullptr);
    PromiseDeferrer deferrer;
    auto future = deferrer.future();
    net::Response out;
    if (chain.Handle(req.request, out, deferrer)) return out;
    if (future.wait_for(5s) != std::future_status::ready) {
      ADD_FAILURE() << "no answer within 5 s";
      return out;
    }
    return future.get();
  }

  static RoutePolicy Policy(std::string upstream = "workers", Duration timeout = 2s) {
    RoutePolicy policy;
    policy.pattern = "/echo";
    policy.filters = {"proxy"};
    policy.upstream = std::move(upstream);
    policy.timeout = timeout;
    return policy;
  }

  metrics::Registry registry_;
  asio::io_context loop_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread loop_thread_;
  std::vector<std::unique_ptr<Upstream>> upstreams_;
};

TEST_F(ProxyFilterTest, ForwardsTheRequestAndReturnsTheResponse) {
  Worker worker;
  ASSERT_TRUE(worker.started());
  ProxyFilter filter = MakeFilter({worker.url()});
  EXPECT_EQ(filter.name(), "proxy");
  TestRequest req("POST", "/echo?x=1&y=two",
                  {{"Content-Type", "text/plain"},
                   {"Content-Length", "5"},
                   {"X-Custom", "abc"},
                   {"Host", "gateway.example"},
                   {"Connection", "keep-alive, X-Conn-Listed"},
                   {"X-Conn-Listed", "secret"},
                   {"Keep-Alive", "timeout=5"},
                   {"Proxy-Authorization", "Basic eDp5"},
                   {"TE", "trailers"},
                   {"Upgrade", "h2c"},
                   {"X-Forwarded-For", "192.0.2.1"},
                   {"X-Request-Id", "client-chosen"},
                   {"User-Agent", "test-agent/1"}},
                  "hello");
  net::Response r = Run(filter, Policy(), req);

  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.ContentType(), "text/plain; charset=utf-8");
  EXPECT_EQ(r.Body(), "echo:hello");
  EXPECT_EQ(HeaderValue(r, "X-Backend"), "one");
  EXPECT_EQ(HeaderValue(r, "Cache-Control"), "max-age=5");
  for (std::string_view dropped : {"Keep-Alive", "Connection", "X-Hop", "Content-Length",
                                   "Content-Type", "Date", "Server", "X-Request-Id"}) {
    EXPECT_FALSE(HasHeader(r, dropped)) << dropped;
  }

  const Seen seen = worker.seen();
  EXPECT_EQ(seen.method, "POST");
  EXPECT_EQ(seen.target, "/echo?x=1&y=two");
  EXPECT_EQ(seen.body, "hello");
  auto header = [&](const std::string& name) {
    auto it = seen.headers.find(name);
    return it == seen.headers.end() ? std::string("<absent>") : it->second;
  };
  EXPECT_EQ(header("content-type"), "text/plain");
  EXPECT_EQ(header("content-length"), "5");
  EXPECT_EQ(header("x-custom"), "abc");
  EXPECT_EQ(header("user-agent"), "test-agent/1");
  EXPECT_EQ(header("host"), "127.0.0.1:" + std::to_string(worker.port()));
  EXPECT_EQ(header("x-forwarded-for"), "192.0.2.1, 10.0.0.7");
  EXPECT_EQ(header("x-forwarded-proto"), "http");
  EXPECT_EQ(header("x-request-id"), "req-abc");
  for (const char* dropped :
       {"x-conn-listed", "keep-alive", "proxy-authorization", "te", "upgrade"}) {
    EXPECT_EQ(header(dropped), "<absent>") << dropped;
  }
  EXPECT_NE(header("connection"), "keep-alive, X-Conn-Listed");
}

TEST_F(ProxyFilterTest, PassesUpstreamErrorStatusesThrough) {
  Worker worker;
  ASSERT_TRUE(worker.started());
  ProxyFilter filter = MakeFilter({worker.url()});
  TestRequest req("GET", "/missing", {}, "");
  net::Response r = Run(filter, Policy(), req);
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.ContentType(), "application/json");
  EXPECT_NE(r.Body().find("not_found"), std::string_view::npos) << r.Body();
  EXPECT_EQ(worker.seen().method, "");  // /echo never ran
}

TEST_F(ProxyFilterTest, UnknownUpstreamIsBadGateway) {
  ProxyFilter filter({});
  TestRequest req("GET", "/echo", {}, "");
  net::Response r = Run(filter, Policy("nowhere"), req);
  EXPECT_EQ(r.status, 502);
  EXPECT_NE(r.Body().find("\"code\":\"bad_gateway\""), std::string_view::npos) << r.Body();
  EXPECT_NE(r.Body().find("nowhere"), std::string_view::npos) << r.Body();
}

TEST_F(ProxyFilterTest, TimeoutIsGatewayTimeout) {
  Worker worker;
  ASSERT_TRUE(worker.started());
  ProxyFilter filter = MakeFilter({worker.url()});
  TestRequest req("GET", "/slow", {}, "");
  const auto start = std::chrono::steady_clock::now();
  net::Response r = Run(filter, Policy("workers", 100ms), req);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 350ms);
  EXPECT_EQ(r.status, 504);
  EXPECT_EQ(r.ContentType(), "application/json");
  EXPECT_NE(r.Body().find("\"code\":\"upstream_timeout\""), std::string_view::npos) << r.Body();
}

TEST_F(ProxyFilterTest, UnreachableUpstreamIsBadGateway) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);  // nothing listens there now
  ProxyFilter filter = MakeFilter({"http://127.0.0.1:" + std::to_string(ntohs(a.sin_port))});
  TestRequest req("GET", "/echo", {}, "");
  net::Response r = Run(filter, Policy(), req);
  EXPECT_EQ(r.status, 502);
  EXPECT_NE(r.Body().find("\"code\":\"bad_gateway\""), std::string_view::npos) << r.Body();
  EXPECT_EQ(r.Body().find("127.0.0.1"), std::string_view::npos) << "leaks the address";
}

}  // namespace
}  // namespace megaserve::gateway
