#include "net/http_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::net {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;
using std::chrono::milliseconds;
using std::chrono::steady_clock;
using namespace std::chrono_literals;

using ServerRequest = http::request<http::string_body>;
using ServerResponse = http::response<http::string_body>;

// What the in-test server does after reading a request.
enum class Action {
  kRespond,               // answer, keep the connection if the request allows it
  kRespondAfterInterim,   // send "100 Continue" first, then answer as kRespond
  kRespondAndClose,       // answer with "Connection: close", then close
  kRespondThenDrop,       // answer as if keeping the connection alive, then close it anyway
  kCloseWithoutResponse,  // close without answering
  kHang,                  // never answer; wait for the client to go away
};

// Fills `res` for `req`, the `request_index`-th request on accepted connection
// `connection_index` (both from 0), and says what to do next. Runs on a server thread.
using Handler = std::function<Action(const ServerRequest& req, ServerResponse& res,
                                     int connection_index, int request_index)>;

// An HTTP/1.1 (or HTTPS when given a TLS context) server on 127.0.0.1 with an ephemeral port:
// one thread accepts, one thread serves each connection with Beast's blocking calls.
class TestServer {
 public:
  explicit TestServer(Handler handler, ssl::context* tls = nullptr)
      : handler_(std::move(handler)),
        tls_(tls),
        acceptor_(ioc_, tcp::endpoint(asio::ip::address_v4::loopback(), 0)) {
    port_ = acceptor_.local_endpoint().port();
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~TestServer() {
    stopping_ = true;
    {
      tcp::socket wake(ioc_);
      error_code ignored;
      wake.connect(tcp::endpoint(asio::ip::address_v4::loopback(), port_), ignored);
    }
    accept_thread_.join();
    // Wakes connection threads blocked in reads; the sockets stay open (and their descriptors
    // reserved) until the threads are joined.
    for (auto& socket : sockets_) ::shutdown(socket->native_handle(), SHUT_RDWR);
    for (auto& thread : threads_) thread.join();
  }

  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  std::uint16_t port() const { return port_; }
  int accepted() const { return accepted_.load(); }
  int closed() const { return closed_.load(); }

  // The TLS server name (SNI) of the last handshake, "" if none was sent.
  std::string sni() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sni_;
  }

  std::string Url(const std::string& path_and_query, const std::string& host = "127.0.0.1") const {
    return std::string(tls_ ? "https" : "http") + "://" + host + ":" + std::to_string(port_) +
           path_and_query;
  }

 private:
  void AcceptLoop() {
    for (;;) {
      auto socket = std::make_unique<tcp::socket>(ioc_);
      error_code ec;
      acceptor_.accept(*socket, ec);
      if (stopping_ || ec) return;
      const int index = accepted_++;
      tcp::socket* raw = socket.get();
      std::lock_guard<std::mutex> lock(mu_);
      sockets_.push_back(std::move(socket));
      threads_.emplace_back([this, raw, index] { Serve(*raw, index); });
    }
  }

  void Serve(tcp::socket& socket, int index) {
    if (tls_ != nullptr) {
      ssl::stream<tcp::socket&> stream(socket, *tls_);
      error_code ec;
      stream.handshake(ssl::stream_base::server, ec);
      if (!ec) {
        const char* name = SSL_get_servername(stream.native_handle(), TLSEXT_NAMETYPE_host_name);
        {
          std::lock_guard<std::mutex> lock(mu_);
          sni_ = name != nullptr ? name : "";
        }
        ServeStream(stream, index);
      }
    } else {
      ServeStream(socket, index);
    }
    ::shutdown(socket.native_handle(), SHUT_RDWR);
    ++closed_;
  }

  template <typename Stream>
  void ServeStream(Stream& stream, int index) {
    beast::flat_buffer buffer;
    for (int request_index = 0;; ++request_index) {
      ServerRequest req;
      error_code ec;
      http::read(stream, buffer, req, ec);
      if (ec) return;
      ServerResponse res{http::status::ok, req.version()};
      const Action action = handler_(req, res, index, request_index);
      if (action == Action::kCloseWithoutResponse) return;
      if (action == Action::kHang) {
        char byte;
        while (!ec) stream.read_some(asio::buffer(&byte, 1), ec);
        return;
      }
      if (action == Action::kRespondAfterInterim) {
        http::response<http::empty_body> interim{http::status::continue_, 11};
        http::write(stream, interim, ec);
        if (ec) return;
      }
      res.keep_alive(action != Action::kRespondAndClose && req.keep_alive());
      if (!res.chunked() && res.find(http::field::content_length) == res.end()) {
        res.prepare_payload();
      }
      http::write(stream, res, ec);
      const bool keep = action == Action::kRespond || action == Action::kRespondAfterInterim;
      if (ec || !keep || !res.keep_alive()) return;
    }
  }

  Handler handler_;
  ssl::context* tls_;  // not owned; null for plain HTTP
  asio::io_context ioc_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> closed_{0};
  std::thread accept_thread_;
  mutable std::mutex mu_;
  std::string sni_;
  std::vector<std::unique_ptr<tcp::socket>> sockets_;
  std::vector<std::thread> threads_;
};

std::string Str(beast::string_view s) { return std::string(s.data(), s.size()); }

// Echoes the request line and selected request headers as X-Echo-* response headers. GET gets
// "hello", anything else its own body back; POST answers 201.
Action Echo(const ServerRequest& req, ServerResponse& res, int, int) {
  res.set("X-Echo-Method", Str(req.method_string()));
  res.set("X-Echo-Target", Str(req.target()));
  for (const char* name : {"Host", "User-Agent", "Content-Length", "X-Custom"}) {
    auto it = req.find(name);
    if (it != req.end()) res.set(std::string("X-Echo-") + name, Str(it->value()));
  }
  auto agents = req.equal_range(http::field::user_agent);
  res.set("X-Echo-User-Agent-Count", std::to_string(std::distance(agents.first, agents.second)));
  res.set(http::field::content_type, "text/plain");
  if (req.method() == http::verb::post) res.result(http::status::created);
  res.body() = req.method() == http::verb::get ? "hello" : req.body();
  return Action::kRespond;
}

ClientRequest Get(std::string url) {
  ClientRequest req;
  req.url = std::move(url);
  return req;
}

// Runs `ioc` on this thread until `done()` or 5 s have passed.
template <typename Pred>
void RunUntil(asio::io_context& ioc, Pred done) {
  ioc.restart();
  const auto deadline = steady_clock::now() + 5s;
  while (!done() && steady_clock::now() < deadline) {
    ioc.run_one_for(20ms);
    if (ioc.stopped()) ioc.restart();
  }
}

// Fetches on this thread, running the loop until the callback has run.
core::Result<ClientResponse> FetchNow(asio::io_context& ioc, HttpClient& client,
                                      ClientRequest req) {
  std::optional<core::Result<ClientResponse>> out;
  client.Fetch(std::move(req),
               [&out](core::Result<ClientResponse> r) { out.emplace(std::move(r)); });
  RunUntil(ioc, [&out] { return out.has_value(); });
  if (!out) return core::Internal("test: no result within 5 s");
  return std::move(*out);
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// True when "localhost" resolves to 127.0.0.1 and nothing else (normally from /etc/hosts, so
// no query leaves the machine). Tests of name resolution run only then.
bool LocalhostIsOnlyLoopbackV4() {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo("localhost", nullptr, &hints, &found) != 0) return false;
  bool only = found != nullptr;
  for (addrinfo* p = found; p != nullptr; p = p->ai_next) {
    only = only && p->ai_family == AF_INET &&
           reinterpret_cast<sockaddr_in*>(p->ai_addr)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
  }
  ::freeaddrinfo(found);
  return only;
}

class HttpClientTest : public ::testing::Test {
 protected:
  asio::io_context ioc_;
};

TEST_F(HttpClientTest, GetRoundTrip) {
  TestServer server(Echo);
  HttpClient client(ioc_);
  ClientRequest req = Get(server.Url("/items?id=7"));
  req.headers = {{"X-Custom", "abc"}};
  auto res = FetchNow(ioc_, client, req);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "hello");
  EXPECT_EQ(res->Header("x-echo-method"), "GET");
  EXPECT_EQ(res->Header("X-ECHO-TARGET"), "/items?id=7");
  EXPECT_EQ(res->Header("X-Echo-X-Custom"), "abc");
  EXPECT_EQ(res->Header("X-Echo-User-Agent"), "megaserve");
  EXPECT_EQ(res->Header("X-Echo-Host"), "127.0.0.1:" + std::to_string(server.port()));
  EXPECT_EQ(res->Header("X-Echo-Content-Length"), "");  // no body, no length
  EXPECT_EQ(res->Header("Content-Type"), "text/plain");
  EXPECT_EQ(res->Header("X-Not-There"), "");
  EXPECT_EQ(client.stats().requests, 1u);
  EXPECT_EQ(client.stats().connections_opened, 1u);
}

TEST_F(HttpClientTest, PostRoundTrip) {
  TestServer server(Echo);
  HttpClient client(ioc_);
  ClientRequest req = Get(server.Url("/submit"));
  req.method = "POST";
  req.body = R"({"x":1})";
  req.headers = {{"Content-Type", "application/json"}};
  auto res = FetchNow(ioc_, client, req);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 201);
  EXPECT_EQ(res->body, R"({"x":1})");
  EXPECT_EQ(res->Header("X-Echo-Method"), "POST");
  EXPECT_EQ(res->Header("X-Echo-Content-Length"), "7");

  ClientRequest empty = Get(server.Url("/submit"));
  empty.method = "POST";
  res = FetchNow(ioc_, client, empty);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->Header("X-Echo-Content-Length"), "0");
  EXPECT_EQ(res->body, "");
}

TEST_F(HttpClientTest, CallerHeadersReplaceDefaults) {
  TestServer server(Echo);
  HttpClient client(ioc_);
  ClientRequest req = Get(server.Url("/"));
  req.headers = {{"user-agent", "probe/2"}, {"Host", "example.test"}};
  auto res = FetchNow(ioc_, client, req);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->Header("X-Echo-User-Agent"), "probe/2");
  EXPECT_EQ(res->Header("X-Echo-User-Agent-Count"), "1");
  EXPECT_EQ(res->Header("X-Echo-Host"), "example.test");
}

TEST_F(HttpClientTest, ResolvesHostNames) {
  if (!LocalhostIsOnlyLoopbackV4()) GTEST_SKIP() << "localhost does not resolve to 127.0.0.1 only";
  TestServer server(Echo);
  HttpClient client(ioc_);
  auto res = FetchNow(ioc_, client, Get(server.Url("/named", "localhost")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->Header("X-Echo-Host"), "localhost:" + std::to_string(server.port()));
}

// Records every address_filter call and answers with `verdict`.
struct FilterProbe {
  core::Status verdict = core::Status::Ok();
  std::vector<std::string> hosts;
  std::vector<std::vector<asio::ip::address>> addresses;

  HttpClientOptions Options() {
    HttpClientOptions options;
    options.address_filter = [this](std::string_view host,
                                    const std::vector<asio::ip::address>& resolved) {
      hosts.emplace_back(host);
      addresses.push_back(resolved);
      return verdict;
    };
    return options;
  }
};

TEST_F(HttpClientTest, AddressFilterSeesIpLiteralAndAllows) {
  TestServer server(Echo);
  FilterProbe probe;
  HttpClient client(ioc_, probe.Options());
  auto res = FetchNow(ioc_, client, Get(server.Url("/a")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->status, 200);
  ASSERT_EQ(probe.hosts.size(), 1u);
  EXPECT_EQ(probe.hosts[0], "127.0.0.1");
  ASSERT_EQ(probe.addresses[0].size(), 1u);
  EXPECT_EQ(probe.addresses[0][0], asio::ip::make_address("127.0.0.1"));
  // A pooled connection was checked when it was opened.
  res = FetchNow(ioc_, client, Get(server.Url("/b")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(probe.hosts.size(), 1u);
  EXPECT_EQ(client.stats().connections_reused, 1u);
}

TEST_F(HttpClientTest, AddressFilterRefusalFailsWithoutConnecting) {
  TestServer server(Echo);
  FilterProbe probe;
  probe.verdict = core::Status(core::StatusCode::kPermissionDenied, "loopback is not allowed");
  HttpClient client(ioc_, probe.Options());
  ClientRequest req = Get(server.Url("/hook"));
  req.method = "POST";
  req.body = "{}";
  auto res = FetchNow(ioc_, client, req);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kPermissionDenied);
  EXPECT_EQ(res.status().message(), "loopback is not allowed");
  EXPECT_EQ(probe.hosts.size(), 1u);
  EXPECT_EQ(client.stats().connections_opened, 0u);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(server.accepted(), 0);
}

TEST_F(HttpClientTest, AddressFilterSeesResolvedAddresses) {
  if (!LocalhostIsOnlyLoopbackV4()) GTEST_SKIP() << "localhost does not resolve to 127.0.0.1 only";
  TestServer server(Echo);
  FilterProbe probe;
  probe.verdict = core::Status(core::StatusCode::kPermissionDenied, "refused");
  HttpClient client(ioc_, probe.Options());
  auto res = FetchNow(ioc_, client, Get(server.Url("/named", "localhost")));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kPermissionDenied);
  ASSERT_EQ(probe.hosts.size(), 1u);
  EXPECT_EQ(probe.hosts[0], "localhost");
  ASSERT_EQ(probe.addresses[0].size(), 1u);
  EXPECT_EQ(probe.addresses[0][0], asio::ip::make_address("127.0.0.1"));
  EXPECT_EQ(server.accepted(), 0);
}

TEST_F(HttpClientTest, KeepAliveReusesConnection) {
  TestServer server(Echo);
  HttpClient client(ioc_);
  for (int i = 0; i < 2; ++i) {
    auto res = FetchNow(ioc_, client, Get(server.Url("/ping")));
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->body, "hello");
  }
  EXPECT_EQ(server.accepted(), 1);
  const HttpClient::Stats stats = client.stats();
  EXPECT_EQ(stats.connections_opened, 1u);
  EXPECT_EQ(stats.connections_reused, 1u);
  EXPECT_EQ(stats.requests, 2u);
}

TEST_F(HttpClientTest, HeadResponseHasNoBodyAndKeepsConnection) {
  TestServer server([](const ServerRequest& req, ServerResponse& res, int, int) {
    if (req.method() == http::verb::head) {
      res.set(http::field::content_length, "5");  // the size a GET would get
      return Action::kRespond;
    }
    return Echo(req, res, 0, 0);
  });
  HttpClient client(ioc_);
  ClientRequest head = Get(server.Url("/"));
  head.method = "HEAD";
  auto res = FetchNow(ioc_, client, head);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->Header("Content-Length"), "5");
  EXPECT_EQ(res->body, "");
  res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->body, "hello");
  EXPECT_EQ(client.stats().connections_reused, 1u);
}

TEST_F(HttpClientTest, InterimResponseIsSkipped) {
  TestServer server([](const ServerRequest& req, ServerResponse& res, int, int) {
    Echo(req, res, 0, 0);
    return Action::kRespondAfterInterim;
  });
  HttpClient client(ioc_);
  for (int i = 0; i < 2; ++i) {
    auto res = FetchNow(ioc_, client, Get(server.Url("/")));
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, "hello");
  }
  EXPECT_EQ(client.stats().connections_reused, 1u);
}

TEST_F(HttpClientTest, ServerConnectionCloseOpensNewConnection) {
  TestServer server([](const ServerRequest& req, ServerResponse& res, int, int) {
    Echo(req, res, 0, 0);
    return Action::kRespondAndClose;
  });
  HttpClient client(ioc_);
  for (int i = 0; i < 2; ++i) {
    auto res = FetchNow(ioc_, client, Get(server.Url("/")));
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->Header("Connection"), "close");
  }
  EXPECT_EQ(server.accepted(), 2);
  EXPECT_EQ(client.stats().connections_opened, 2u);
  EXPECT_EQ(client.stats().connections_reused, 0u);
}

TEST_F(HttpClientTest, IdleConnectionClosedByServerIsNotReused) {
  TestServer server([](const ServerRequest& req, ServerResponse& res, int, int) {
    Echo(req, res, 0, 0);
    return Action::kRespondThenDrop;
  });
  HttpClient client(ioc_);
  auto res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  for (int i = 0; i < 200 && server.closed() < 1; ++i) std::this_thread::sleep_for(5ms);
  std::this_thread::sleep_for(20ms);
  res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(client.stats().connections_opened, 2u);
  EXPECT_EQ(client.stats().connections_reused, 0u);
}

// The server reads a second request on its first connection and closes without answering, as
// when a keep-alive connection times out just as the request is sent.
Action DropSecondRequestOnFirstConnection(const ServerRequest& req, ServerResponse& res,
                                          int connection_index, int request_index) {
  if (connection_index == 0 && request_index == 1) return Action::kCloseWithoutResponse;
  return Echo(req, res, connection_index, request_index);
}

TEST_F(HttpClientTest, IdempotentRequestIsRetriedOnFreshConnection) {
  TestServer server(DropSecondRequestOnFirstConnection);
  HttpClient client(ioc_);
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  ClientRequest put = Get(server.Url("/thing"));
  put.method = "PUT";
  put.body = "v2";
  auto res = FetchNow(ioc_, client, put);
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->body, "v2");
  EXPECT_EQ(server.accepted(), 2);
  EXPECT_EQ(client.stats().connections_reused, 1u);
  EXPECT_EQ(client.stats().connections_opened, 2u);
}

TEST_F(HttpClientTest, PostIsNotRetried) {
  TestServer server(DropSecondRequestOnFirstConnection);
  HttpClient client(ioc_);
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  ClientRequest post = Get(server.Url("/orders"));
  post.method = "POST";
  post.body = "buy";
  auto res = FetchNow(ioc_, client, post);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(res.status().message(), "connection closed by server"))
      << res.status().message();
  EXPECT_EQ(client.stats().connections_opened, 1u);
}

TEST_F(HttpClientTest, IdleTimeoutDropsConnection) {
  TestServer server(Echo);
  HttpClientOptions options;
  options.idle_timeout = 50ms;
  HttpClient client(ioc_, options);
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  ioc_.restart();
  ioc_.run_for(300ms);  // the idle timer fires, then the loop runs out of work
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  EXPECT_EQ(client.stats().connections_opened, 2u);
  EXPECT_EQ(client.stats().connections_reused, 0u);
  for (int i = 0; i < 200 && server.closed() < 1; ++i) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(server.closed(), 1);  // the client really closed the idle socket
}

TEST_F(HttpClientTest, ZeroMaxIdleDisablesReuse) {
  TestServer server(Echo);
  HttpClientOptions options;
  options.max_idle_per_host = 0;
  HttpClient client(ioc_, options);
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  ASSERT_TRUE(FetchNow(ioc_, client, Get(server.Url("/"))).ok());
  EXPECT_EQ(client.stats().connections_opened, 2u);
  EXPECT_EQ(server.accepted(), 2);
}

Action Hang(const ServerRequest&, ServerResponse&, int, int) { return Action::kHang; }

TEST_F(HttpClientTest, RequestTimeout) {
  TestServer server(Hang);
  HttpClient client(ioc_);
  ClientRequest req = Get(server.Url("/slow?token=secret"));
  req.timeout = 200ms;
  const auto start = steady_clock::now();
  auto res = FetchNow(ioc_, client, req);
  const auto elapsed = steady_clock::now() - start;
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(res.status().message(), "timed out after 200 ms")) << res.status().message();
  EXPECT_FALSE(Contains(res.status().message(), "secret")) << res.status().message();
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 2s);
}

TEST_F(HttpClientTest, DefaultRequestTimeoutFromOptions) {
  TestServer server(Hang);
  HttpClientOptions options;
  options.request_timeout = 150ms;
  HttpClient client(ioc_, options);
  auto res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(res.status().message(), "after 150 ms")) << res.status().message();
}

// Owns raw file descriptors and closes them.
struct FdCloser {
  std::vector<int> fds;
  ~FdCloser() {
    for (int fd : fds) ::close(fd);
  }
};

TEST_F(HttpClientTest, ConnectTimeout) {
  // A loopback listener that never accepts, its accept queue (listen backlog 0) filled by raw
  // connections: Linux then drops new SYNs, so the client's connect hangs until the timeout.
  FdCloser closer;
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  closer.fds.push_back(listener);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 0), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  bool saturated = false;
  for (int i = 0; i < 64 && !saturated; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    closer.fds.push_back(fd);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) continue;
    ASSERT_EQ(errno, EINPROGRESS);
    pollfd pfd{fd, POLLOUT, 0};
    saturated = ::poll(&pfd, 1, 100) == 0;
  }
  if (!saturated) GTEST_SKIP() << "the kernel completed every connect; cannot provoke a timeout";

  const int port = ntohs(addr.sin_port);
  HttpClientOptions options;
  options.connect_timeout = 200ms;
  HttpClient client(ioc_, options);
  const auto start = steady_clock::now();
  auto res = FetchNow(ioc_, client, Get("http://127.0.0.1:" + std::to_string(port) + "/"));
  const auto elapsed = steady_clock::now() - start;
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(res.status().message(),
            "connect to 127.0.0.1:" + std::to_string(port) + " timed out after 200 ms");
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 2s);
}

// A loopback port with nothing listening.
std::uint16_t ClosedPort(asio::io_context& ioc) {
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::address_v4::loopback(), 0));
  return acceptor.local_endpoint().port();
}

TEST_F(HttpClientTest, ConnectionRefusedIsUnavailable) {
  const std::uint16_t port = ClosedPort(ioc_);
  HttpClient client(ioc_);
  auto res = FetchNow(ioc_, client, Get("http://127.0.0.1:" + std::to_string(port) + "/"));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(res.status().message(), "connect to 127.0.0.1:" + std::to_string(port)))
      << res.status().message();
  EXPECT_TRUE(Contains(res.status().message(), "refused")) << res.status().message();
}

TEST_F(HttpClientTest, OversizeResponseFailsAndDropsConnection) {
  TestServer server([](const ServerRequest& req, ServerResponse& res, int, int) {
    if (req.target() == "/big") res.body() = std::string(64 * 1024, 'x');
    if (req.target() == "/big-chunked") {
      res.body() = std::string(64 * 1024, 'y');
      res.chunked(true);
    }
    if (req.target() == "/big-header") {
      for (int i = 0; i < 8; ++i) res.insert("X-Big-" + std::to_string(i), std::string(10000, 'h'));
    }
    if (req.target() == "/small") res.body() = std::string(1024, 'z');
    return Action::kRespond;
  });
  HttpClientOptions options;
  options.max_response_bytes = 1024;
  HttpClient client(ioc_, options);
  for (const char* path : {"/big", "/big-chunked"}) {
    auto res = FetchNow(ioc_, client, Get(server.Url(path)));
    ASSERT_FALSE(res.ok()) << path;
    EXPECT_EQ(res.status().code(), core::StatusCode::kResourceExhausted) << path;
    EXPECT_TRUE(Contains(res.status().message(), "max_response_bytes")) << res.status().message();
  }
  auto res = FetchNow(ioc_, client, Get(server.Url("/big-header")));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kResourceExhausted);
  EXPECT_TRUE(Contains(res.status().message(), "response header")) << res.status().message();
  res = FetchNow(ioc_, client, Get(server.Url("/small")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->body.size(), 1024u);
  EXPECT_EQ(client.stats().connections_opened, 4u);  // each oversize response cost its connection
}

TEST_F(HttpClientTest, MalformedUrlIsInvalidArgument) {
  HttpClient client(ioc_);
  for (const char* url : {"", "localhost:8080/x", "ftp://127.0.0.1/", "http://", "http://a b/",
                          "http://127.0.0.1:99999/"}) {
    bool called = false;
    std::optional<core::Result<ClientResponse>> out;
    client.Fetch(Get(url), [&](core::Result<ClientResponse> r) {
      called = true;
      out.emplace(std::move(r));
    });
    EXPECT_FALSE(called) << "callback ran inside Fetch";
    RunUntil(ioc_, [&] { return called; });
    ASSERT_TRUE(out.has_value()) << url;
    ASSERT_FALSE(out->ok()) << url;
    EXPECT_EQ(out->status().code(), core::StatusCode::kInvalidArgument) << url;
    EXPECT_TRUE(Contains(out->status().message(), "bad URL")) << out->status().message();
  }
}

TEST_F(HttpClientTest, InvalidMethodOrHeaderIsInvalidArgument) {
  HttpClient client(ioc_);
  ClientRequest injected = Get("http://127.0.0.1:1/");
  injected.headers = {{"X-Note", "a\r\nX-Injected: 1"}};
  auto res = FetchNow(ioc_, client, injected);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kInvalidArgument);

  ClientRequest bad_method = Get("http://127.0.0.1:1/");
  bad_method.method = "GE T";
  res = FetchNow(ioc_, client, bad_method);
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(client.stats().connections_opened, 0u);
}

TEST_F(HttpClientTest, FutureFetchFromAnotherThread) {
  TestServer server(Echo);
  HttpClient client(ioc_);
  auto work = asio::make_work_guard(ioc_);
  std::thread loop([this] { ioc_.run(); });
  auto first = client.Fetch(Get(server.Url("/a")));
  auto second = client.Fetch(Get(server.Url("/b")));
  const bool ready = first.wait_for(5s) == std::future_status::ready &&
                     second.wait_for(5s) == std::future_status::ready;
  ioc_.stop();
  loop.join();
  ASSERT_TRUE(ready);
  auto a = first.get();
  auto b = second.get();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->Header("X-Echo-Target"), "/a");
  EXPECT_EQ(b->Header("X-Echo-Target"), "/b");
  EXPECT_EQ(client.stats().requests, 2u);
}

TEST_F(HttpClientTest, FutureIsCanceledWhenLoopNeverRuns) {
  std::future<core::Result<ClientResponse>> future;
  {
    asio::io_context ioc;
    HttpClient client(ioc);
    future = client.Fetch(Get("http://127.0.0.1:1/"));
  }
  ASSERT_EQ(future.wait_for(0s), std::future_status::ready);
  auto res = future.get();
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kCanceled);
}

TEST_F(HttpClientTest, DestroyingClientCancelsRequestsInFlight) {
  TestServer server(Hang);
  std::optional<core::Result<ClientResponse>> out;
  {
    HttpClient client(ioc_);
    client.Fetch(Get(server.Url("/")),
                 [&out](core::Result<ClientResponse> r) { out.emplace(std::move(r)); });
    RunUntil(ioc_, [&] { return server.accepted() == 1; });
    ioc_.restart();
    ioc_.run_for(50ms);  // the request is written and the client waits for the answer
    ASSERT_FALSE(out.has_value());
  }
  RunUntil(ioc_, [&] { return out.has_value(); });
  ASSERT_TRUE(out.has_value());
  ASSERT_FALSE(out->ok());
  EXPECT_EQ(out->status().code(), core::StatusCode::kCanceled);
}

// ---- HTTPS ----

struct Pem {
  std::string cert;
  std::string key;
};

std::string BioToString(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(size));
}

// A self-signed P-256 certificate for `common_name` with the given subjectAltName list
// (OpenSSL config syntax, e.g. "DNS:localhost,IP:127.0.0.1"), valid for a day.
Pem MakeSelfSignedCert(const char* common_name, const char* subject_alt_names, long serial) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
  std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
  if (!key || !cert) return {};
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 24 * 3600);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  const std::pair<int, const char*> extensions[] = {{NID_basic_constraints, "critical,CA:TRUE"},
                                                    {NID_subject_alt_name, subject_alt_names}};
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (ext == nullptr) return {};
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) return {};
  Pem pem;
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_X509(cert_bio.get(), cert.get());
  pem.cert = BioToString(cert_bio.get());
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(BIO_new(BIO_s_mem()), BIO_free);
  PEM_write_bio_PrivateKey(key_bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  pem.key = BioToString(key_bio.get());
  return pem;
}

class HttpsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char dir_template[] = "/tmp/http_client_test.XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = new std::filesystem::path(dir_template);
    good_ = new Pem(MakeSelfSignedCert("localhost", "DNS:localhost,IP:127.0.0.1", 1));
    wrong_host_ = new Pem(MakeSelfSignedCert("other.invalid", "DNS:other.invalid", 2));
    ASSERT_FALSE(good_->cert.empty());
    ASSERT_FALSE(wrong_host_->cert.empty());
    std::ofstream(*dir_ / "good.pem") << good_->cert;
    std::ofstream(*dir_ / "wrong_host.pem") << wrong_host_->cert;
  }

  static void TearDownTestSuite() {
    if (dir_ != nullptr) std::filesystem::remove_all(*dir_);
    delete dir_;
    delete good_;
    delete wrong_host_;
    dir_ = nullptr;
    good_ = wrong_host_ = nullptr;
  }

  static std::unique_ptr<ssl::context> ServerContext(const Pem& pem) {
    auto context = std::make_unique<ssl::context>(ssl::context::tls_server);
    context->use_certificate_chain(asio::buffer(pem.cert));
    context->use_private_key(asio::buffer(pem.key), ssl::context::pem);
    return context;
  }

  static std::string CaFile(const char* name) { return (*dir_ / name).string(); }

  static inline std::filesystem::path* dir_ = nullptr;
  static inline Pem* good_ = nullptr;
  static inline Pem* wrong_host_ = nullptr;
  asio::io_context ioc_;
};

TEST_F(HttpsTest, TrustedCaFileSucceedsAndKeepsAlive) {
  auto tls = ServerContext(*good_);
  TestServer server(Echo, tls.get());
  HttpClientOptions options;
  options.ca_file = CaFile("good.pem");
  HttpClient client(ioc_, options);
  for (int i = 0; i < 2; ++i) {
    auto res = FetchNow(ioc_, client, Get(server.Url("/secure")));
    ASSERT_TRUE(res.ok()) << res.status().ToString();
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, "hello");
    EXPECT_EQ(res->Header("X-Echo-Target"), "/secure");
  }
  EXPECT_EQ(server.accepted(), 1);
  EXPECT_EQ(client.stats().connections_reused, 1u);
  EXPECT_EQ(server.sni(), "");  // RFC 6066: no SNI for IP literals
}

TEST_F(HttpsTest, HostNameIsSentAsSniAndVerified) {
  if (!LocalhostIsOnlyLoopbackV4()) GTEST_SKIP() << "localhost does not resolve to 127.0.0.1 only";
  auto tls = ServerContext(*good_);
  TestServer server(Echo, tls.get());
  HttpClientOptions options;
  options.ca_file = CaFile("good.pem");
  HttpClient client(ioc_, options);
  auto res = FetchNow(ioc_, client, Get(server.Url("/", "localhost")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(server.sni(), "localhost");

  auto other = ServerContext(*wrong_host_);
  TestServer other_server(Echo, other.get());
  HttpClientOptions other_options;
  other_options.ca_file = CaFile("wrong_host.pem");
  HttpClient other_client(ioc_, other_options);
  res = FetchNow(ioc_, other_client, Get(other_server.Url("/", "localhost")));
  ASSERT_FALSE(res.ok());
  EXPECT_TRUE(Contains(res.status().message(), "hostname mismatch")) << res.status().message();
}

TEST_F(HttpsTest, UntrustedCertificateFailsVerification) {
  auto tls = ServerContext(*good_);
  TestServer server(Echo, tls.get());
  HttpClient client(ioc_);  // system CA paths, which do not hold the test certificate
  auto res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(res.status().message(), "certificate verification failed"))
      << res.status().message();
  EXPECT_TRUE(Contains(res.status().message(), "self")) << res.status().message();
}

TEST_F(HttpsTest, HostMismatchFailsVerification) {
  auto tls = ServerContext(*wrong_host_);
  TestServer server(Echo, tls.get());
  HttpClientOptions options;
  options.ca_file = CaFile("wrong_host.pem");  // trusted, but names another host
  HttpClient client(ioc_, options);
  auto res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(res.status().message(), "certificate verification failed"))
      << res.status().message();
  EXPECT_TRUE(Contains(res.status().message(), "mismatch")) << res.status().message();
}

TEST_F(HttpsTest, VerifyPeerFalseAcceptsAnyCertificate) {
  auto tls = ServerContext(*wrong_host_);
  TestServer server(Echo, tls.get());
  HttpClientOptions options;
  options.verify_peer = false;
  HttpClient client(ioc_, options);
  auto res = FetchNow(ioc_, client, Get(server.Url("/")));
  ASSERT_TRUE(res.ok()) << res.status().ToString();
  EXPECT_EQ(res->body, "hello");
}

TEST_F(HttpsTest, MissingCaFileIsReported) {
  HttpClientOptions options;
  options.ca_file = CaFile("absent.pem");
  HttpClient client(ioc_, options);
  auto res = FetchNow(ioc_, client, Get("https://127.0.0.1:1/"));
  ASSERT_FALSE(res.ok());
  EXPECT_EQ(res.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(res.status().message(), "ca_file")) << res.status().message();
}

}  // namespace
}  // namespace megaserve::net
