// HttpClient: one Exchange object per Fetch drives connect -> write -> read on a pooled or fresh
// Connection, all on the client's io_context.
//
// Pooling (RFC 9112 section 9.3): after a complete response the connection goes back to the idle
// pool of its (scheme, host, port) unless either side asked for "Connection: close", the body was
// delimited by EOF, or unread bytes follow the response. Idle connections are reused newest first
// (the least likely to have been closed by the server); each carries a timer that drops it after
// idle_timeout. On checkout a non-blocking MSG_PEEK weeds out connections the server has already
// closed. The server may still close one just as the request goes out; RFC 9112 section 9.3.1
// allows resending idempotent requests then, so such a request (no response byte seen yet) is
// retried once on a fresh connection.
//
// Address filter: HttpClientOptions::address_filter judges the very addresses about to be
// connected to, after resolution, so a name cannot pass a check and then resolve elsewhere
// (DNS rebinding) before the connect.
//
// Timeouts: the request timer covers the whole exchange, connect included; a second timer covers
// DNS + TCP connect + TLS handshake. A firing timer closes the socket (or cancels the resolver),
// which makes the pending operation complete with operation_aborted, and reports the timeout.
// Every completion handler first checks whether the exchange has already ended, so exactly one
// result reaches the caller; the handlers hold the Exchange (and through it the Connection) alive
// until the I/O they started is over.
#include "net/http_client.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <exception>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "net/url.h"

namespace megaserve::net {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;
using Callback = std::function<void(core::Result<ClientResponse>)>;

constexpr std::uint32_t kMaxHeaderBytes = 64 * 1024;

// RFC 9110 section 5.6.2 token characters (methods and header names).
bool IsToken(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
  });
}

// RFC 9110 section 9.2.2; these may be resent when a reused connection fails.
bool IsIdempotent(std::string_view method) {
  for (std::string_view m : {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}) {
    if (method == m) return true;
  }
  return false;
}

core::Status ValidateRequest(const ClientRequest& req) {
  if (!IsToken(req.method)) {
    return core::InvalidArgument("invalid HTTP method \"" + req.method + "\"");
  }
  for (const auto& [name, value] : req.headers) {
    if (!IsToken(name)) return core::InvalidArgument("invalid header name \"" + name + "\"");
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      return core::InvalidArgument("header \"" + name + "\" contains CR, LF or NUL");
    }
  }
  if (req.timeout.count() < 0) return core::InvalidArgument("negative request timeout");
  return core::Status::Ok();
}

std::string_view ToStd(beast::string_view s) { return {s.data(), s.size()}; }

// Idle connections are shared per origin: (scheme, host, port).
std::string PoolKey(const Url& url) { return url.scheme + "://" + url.HostPort(); }

std::string Millis(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

// A TCP or TLS connection to one origin, plus the read buffer that outlives single responses.
class Connection {
 public:
  // A plain connection when `tls` is null, else a TLS one using that context.
  Connection(asio::io_context& ioc, std::string pool_key, ssl::context* tls)
      : pool_key_(std::move(pool_key)), idle_timer_(ioc) {
    if (tls != nullptr) {
      tls_ = std::make_unique<ssl::stream<tcp::socket>>(ioc, *tls);
    } else {
      plain_ = std::make_unique<tcp::socket>(ioc);
    }
  }

  const std::string& pool_key() const { return pool_key_; }
  tcp::socket& socket() { return tls_ ? tls_->next_layer() : *plain_; }
  ssl::stream<tcp::socket>* tls() { return tls_.get(); }
  beast::flat_buffer& buffer() { return buffer_; }
  asio::steady_timer& idle_timer() { return idle_timer_; }

  // Calls f(stream) with the TCP socket or the TLS stream.
  template <typename F>
  void WithStream(F&& f) {
    if (tls_) {
      f(*tls_);
    } else {
      f(*plain_);
    }
  }

  // False when the peer has closed an idle connection or sent bytes nobody asked for (for TLS
  // that is usually a close_notify alert); either way the connection is unusable.
  bool LooksAlive() {
    if (!socket().is_open()) return false;
    char byte;
    const ssize_t n = ::recv(socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  // Closes the socket; pending operations complete with operation_aborted.
  void Close() {
    error_code ignored;
    socket().shutdown(tcp::socket::shutdown_both, ignored);
    socket().close(ignored);
    idle_timer_.cancel();
  }

  // Idle bookkeeping, owned by the pool: `idle` is true while the connection sits in the pool,
  // and `idle_epoch` tells a stale idle-timer completion from the current one.
  bool idle = false;
  std::uint64_t idle_epoch = 0;

 private:
  std::string pool_key_;
  std::unique_ptr<tcp::socket> plain_;
  std::unique_ptr<ssl::stream<tcp::socket>> tls_;
  beast::flat_buffer buffer_;
  asio::steady_timer idle_timer_;
};

class Exchange;

// The client's state on its loop: options, TLS context, idle pool and requests in flight.
// HttpClient::Impl (private in the header) derives from it, so Exchange can name this type.
class ClientCore : public std::enable_shared_from_this<ClientCore> {
 public:
  using Stats = HttpClient::Stats;

  ClientCore(asio::io_context& ioc, HttpClientOptions options)
      : ioc_(ioc), options_(std::move(options)) {}

  asio::io_context& ioc() { return ioc_; }
  const HttpClientOptions& options() const { return options_; }

  void Fetch(ClientRequest req, Callback done);
  void Shutdown();

  // A live idle connection for `key`, or null. Dead ones found on the way are dropped.
  std::shared_ptr<Connection> TakeIdle(const std::string& key);
  // Pools `conn` if `reusable` and there is room, else closes it.
  void Release(std::shared_ptr<Connection> conn, bool reusable);
  // A new unconnected connection for `url`, or the error that prevents one (a bad ca_file).
  core::Result<std::shared_ptr<Connection>> NewConnection(const Url& url);

  void Register(Exchange* exchange) { active_.insert(exchange); }
  void Unregister(Exchange* exchange) { active_.erase(exchange); }

  Stats stats() const {
    return {opened_.load(std::memory_order_relaxed), reused_.load(std::memory_order_relaxed),
            requests_.load(std::memory_order_relaxed)};
  }
  void CountOpened() { opened_.fetch_add(1, std::memory_order_relaxed); }
  void CountReused() { reused_.fetch_add(1, std::memory_order_relaxed); }
  void CountRequest() { requests_.fetch_add(1, std::memory_order_relaxed); }

 private:
  void EvictIdle(const Connection* conn);
  core::Status InitTls();

  asio::io_context& ioc_;
  const HttpClientOptions options_;
  // Created on the first https request; SSL objects hold their own reference to the SSL_CTX.
  std::optional<ssl::context> tls_;
  std::optional<core::Status> tls_error_;
  std::unordered_map<std::string, std::vector<std::shared_ptr<Connection>>> idle_;
  std::unordered_set<Exchange*> active_;  // not owned; each removes itself when it finishes
  bool shut_down_ = false;
  std::atomic<std::uint64_t> opened_{0};
  std::atomic<std::uint64_t> reused_{0};
  std::atomic<std::uint64_t> requests_{0};
};

// One Fetch from start to callback, including at most one retry on a fresh connection.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(std::shared_ptr<ClientCore> client, Url url, ClientRequest req, Callback done)
      : client_(std::move(client)),
        url_(std::move(url)),
        done_(std::move(done)),
        timeout_(req.timeout.count() > 0 ? req.timeout : client_->options().request_timeout),
        request_timer_(client_->ioc()),
        connect_timer_(client_->ioc()) {
    BuildRequest(std::move(req));
  }

  // Normally Finish() has unregistered us already; not so when the io_context is destroyed with
  // our handlers still queued.
  ~Exchange() { client_->Unregister(this); }

  void Start();

  // Ends the exchange with `status` (delivered from a fresh handler) and aborts its I/O.
  void Interrupt(core::Status status);

 private:
  void BuildRequest(ClientRequest req);
  void Connect();
  void OnResolved(const error_code& ec, const tcp::resolver::results_type& results);
  // Runs the address filter over endpoints_, then connects to the first that answers.
  void ConnectToEndpoints();
  void OnConnected(const error_code& ec);
  void OnHandshake(const error_code& ec);
  void Send();
  void Read();
  void OnWritten(const error_code& ec);
  void OnHeader(const error_code& ec);
  void OnRead(const error_code& ec);
  void OnIoError(const error_code& ec);
  void Complete();
  void Fail(core::Status status);
  void Finish(core::Result<ClientResponse> result);

  // True once the caller has its answer or is about to get it; handlers then only unwind.
  bool Over() const { return finished_ || interrupted_; }
  // "GET https://host:443/path" without the query, which may carry credentials.
  std::string Describe() const {
    return std::string(ToStd(request_.method_string())) + " " + url_.scheme + "://" +
           url_.HostPort() + url_.target.substr(0, url_.target.find('?'));
  }

  std::shared_ptr<ClientCore> client_;
  Url url_;
  Callback done_;
  std::chrono::milliseconds timeout_;
  http::request<http::string_body> request_;
  asio::steady_timer request_timer_;
  asio::steady_timer connect_timer_;
  std::uint64_t connect_epoch_ = 0;
  bool connecting_ = false;
  std::optional<tcp::resolver> resolver_;
  std::vector<tcp::endpoint> endpoints_;
  std::shared_ptr<Connection> conn_;
  std::shared_ptr<Connection> retired_;  // a failed reused connection, kept until we are gone
  std::optional<http::response_parser<http::string_body>> parser_;
  bool reused_ = false;
  bool retried_ = false;
  bool finished_ = false;
  bool interrupted_ = false;
};

void Exchange::BuildRequest(ClientRequest req) {
  request_.method_string(req.method);
  request_.target(url_.target);
  request_.version(11);
  bool has_host = false;
  bool has_agent = false;
  bool has_length = false;
  for (const auto& [name, value] : req.headers) {
    request_.insert(name, value);
    has_host = has_host || beast::iequals(name, "host");
    has_agent = has_agent || beast::iequals(name, "user-agent");
    has_length = has_length || beast::iequals(name, "content-length") ||
                 beast::iequals(name, "transfer-encoding");
  }
  if (!has_host) request_.set(http::field::host, url_.Authority());
  if (!has_agent && !client_->options().user_agent.empty()) {
    request_.set(http::field::user_agent, client_->options().user_agent);
  }
  // RFC 9110 section 8.6: POST/PUT/PATCH announce even an empty body.
  const bool body_expected = req.method == "POST" || req.method == "PUT" || req.method == "PATCH";
  if (!has_length && (!req.body.empty() || body_expected)) {
    request_.set(http::field::content_length, std::to_string(req.body.size()));
  }
  request_.body() = std::move(req.body);
}

void Exchange::Start() {
  client_->Register(this);
  request_timer_.expires_after(timeout_);
  request_timer_.async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->Over()) return;
    self->Interrupt(
        core::DeadlineExceeded(self->Describe() + " timed out after " + Millis(self->timeout_)));
  });
  if (auto conn = client_->TakeIdle(PoolKey(url_))) {
    conn_ = std::move(conn);
    reused_ = true;
    client_->CountReused();
    Send();
    return;
  }
  Connect();
}

void Exchange::Interrupt(core::Status status) {
  if (Over()) return;
  interrupted_ = true;
  request_timer_.cancel();
  connect_timer_.cancel();
  if (resolver_) resolver_->cancel();
  if (conn_) conn_->Close();
  asio::post(client_->ioc(), [self = shared_from_this(), status = std::move(status)]() mutable {
    self->Finish(std::move(status));
  });
}

void Exchange::Connect() {
  auto conn = client_->NewConnection(url_);
  if (!conn.ok()) return Fail(conn.status());
  conn_ = std::move(conn).value();
  reused_ = false;
  connecting_ = true;
  const std::uint64_t epoch = ++connect_epoch_;
  const auto limit = client_->options().connect_timeout;
  connect_timer_.expires_after(limit);
  connect_timer_.async_wait([self = shared_from_this(), epoch, limit](const error_code& ec) {
    if (ec || self->Over() || !self->connecting_ || self->connect_epoch_ != epoch) return;
    self->Interrupt(core::DeadlineExceeded("connect to " + self->url_.HostPort() +
                                           " timed out after " + Millis(limit)));
  });

  if (url_.host_is_ip) {
    error_code ec;
    const auto address = asio::ip::make_address(url_.host, ec);
    if (ec) return Fail(core::InvalidArgument("bad IP address " + url_.host));
    endpoints_.assign(1, tcp::endpoint(address, url_.port));
    ConnectToEndpoints();
    return;
  }
  resolver_.emplace(client_->ioc());
  resolver_->async_resolve(url_.host, std::to_string(url_.port),
                           [self = shared_from_this()](const error_code& ec,
                                                       const tcp::resolver::results_type& results) {
                             self->OnResolved(ec, results);
                           });
}

void Exchange::OnResolved(const error_code& ec, const tcp::resolver::results_type& results) {
  if (Over()) return;
  if (ec) return Fail(core::Unavailable("resolve " + url_.host + ": " + ec.message()));
  endpoints_.assign(results.begin(), results.end());
  ConnectToEndpoints();
}

void Exchange::ConnectToEndpoints() {
  if (const auto& filter = client_->options().address_filter) {
    std::vector<asio::ip::address> addresses;
    addresses.reserve(endpoints_.size());
    for (const tcp::endpoint& endpoint : endpoints_) addresses.push_back(endpoint.address());
    if (core::Status allowed = filter(url_.host, addresses); !allowed.ok()) {
      return Fail(std::move(allowed));
    }
  }
  asio::async_connect(conn_->socket(), endpoints_,
                      [self = shared_from_this()](const error_code& ec, const tcp::endpoint&) {
                        self->OnConnected(ec);
                      });
}

void Exchange::OnConnected(const error_code& ec) {
  if (Over()) return;
  if (ec) {
    return Fail(core::Unavailable("connect to " + url_.HostPort() + " failed: " + ec.message()));
  }
  client_->CountOpened();
  error_code ignored;
  conn_->socket().set_option(tcp::no_delay(true), ignored);
  ssl::stream<tcp::socket>* tls = conn_->tls();
  if (tls == nullptr) {
    connecting_ = false;
    connect_timer_.cancel();
    return Send();
  }
  SSL* ssl = tls->native_handle();
  // RFC 6066 section 3: SNI carries host names only, never IP literals.
  if (!url_.host_is_ip && SSL_set_tlsext_host_name(ssl, url_.host.c_str()) != 1) {
    return Fail(core::Internal("cannot set TLS server name " + url_.host));
  }
  if (client_->options().verify_peer) {
    // The certificate must name the URL's host (RFC 6125): a DNS name or an IP address SAN.
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    int ok;
    if (url_.host_is_ip) {
      ok = X509_VERIFY_PARAM_set1_ip_asc(param, url_.host.c_str());
    } else {
      X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      ok = X509_VERIFY_PARAM_set1_host(param, url_.host.c_str(), url_.host.size());
    }
    if (ok != 1) return Fail(core::Internal("cannot set TLS host check for " + url_.host));
  }
  tls->async_handshake(ssl::stream_base::client, [self = shared_from_this()](const error_code& ec) {
    self->OnHandshake(ec);
  });
}

void Exchange::OnHandshake(const error_code& ec) {
  if (Over()) return;
  if (ec) {
    const long verify = SSL_get_verify_result(conn_->tls()->native_handle());
    if (client_->options().verify_peer && verify != X509_V_OK) {
      return Fail(core::Unavailable("TLS certificate verification failed for " + url_.HostPort() +
                                    ": " + X509_verify_cert_error_string(verify)));
    }
    return Fail(
        core::Unavailable("TLS handshake with " + url_.HostPort() + " failed: " + ec.message()));
  }
  connecting_ = false;
  connect_timer_.cancel();
  Send();
}

void Exchange::Send() {
  conn_->WithStream([this](auto& stream) {
    http::async_write(
        stream, request_,
        [self = shared_from_this()](const error_code& ec, std::size_t) { self->OnWritten(ec); });
  });
}

void Exchange::OnWritten(const error_code& ec) {
  if (Over()) return;
  if (ec) return OnIoError(ec);
  Read();
}

void Exchange::Read() {
  parser_.emplace();
  parser_->header_limit(kMaxHeaderBytes);
  parser_->body_limit(client_->options().max_response_bytes);
  // A response to HEAD has headers announcing a body that never comes (RFC 9110 section 9.3.2).
  if (request_.method() == http::verb::head) parser_->skip(true);
  // The header is read on its own so that an announced Content-Length over the limit fails
  // before the body is read. (Beast 1.74's eager whole-message read loses that body_limit error
  // when body bytes arrive with the header; chunked and EOF-delimited bodies are checked as
  // they stream in either way.)
  conn_->WithStream([this](auto& stream) {
    http::async_read_header(
        stream, conn_->buffer(), *parser_,
        [self = shared_from_this()](const error_code& ec, std::size_t) { self->OnHeader(ec); });
  });
}

void Exchange::OnHeader(const error_code& ec) {
  if (Over()) return;
  if (ec) return OnIoError(ec);
  const auto length = parser_->content_length();
  if (length && *length > client_->options().max_response_bytes) {
    return OnIoError(http::error::body_limit);
  }
  if (parser_->is_done()) return OnRead(ec);
  conn_->WithStream([this](auto& stream) {
    http::async_read(
        stream, conn_->buffer(), *parser_,
        [self = shared_from_this()](const error_code& ec, std::size_t) { self->OnRead(ec); });
  });
}

void Exchange::OnRead(const error_code& ec) {
  if (Over()) return;
  if (ec) return OnIoError(ec);
  const unsigned status = parser_->get().result_int();
  // Interim 1xx responses precede the real one; 101 is final (the protocol changes).
  if (status >= 100 && status < 200 && status != 101) return Read();
  Complete();
}

void Exchange::OnIoError(const error_code& ec) {
  if (ec == http::error::body_limit || ec == http::error::buffer_overflow) {
    return Fail(core::Status(core::StatusCode::kResourceExhausted,
                             "response from " + url_.HostPort() + " exceeds max_response_bytes (" +
                                 std::to_string(client_->options().max_response_bytes) +
                                 " bytes)"));
  }
  if (ec == http::error::header_limit) {
    return Fail(core::Status(core::StatusCode::kResourceExhausted,
                             "response header from " + url_.HostPort() + " exceeds " +
                                 std::to_string(kMaxHeaderBytes) + " bytes"));
  }
  const bool nothing_received = !parser_ || !parser_->got_some();
  if (reused_ && !retried_ && nothing_received && IsIdempotent(ToStd(request_.method_string()))) {
    // The server closed the idle connection as we reused it; try once on a fresh connection.
    retried_ = true;
    conn_->Close();
    retired_ = std::move(conn_);
    return Connect();
  }
  std::string what = ec == http::error::end_of_stream
                         ? "connection closed by server before a response"
                         : ec.message();
  Fail(core::Unavailable(Describe() + " failed: " + what));
}

void Exchange::Complete() {
  auto& message = parser_->get();
  ClientResponse response;
  response.status = static_cast<int>(message.result_int());
  for (const auto& field : message) {
    response.headers.emplace_back(ToStd(field.name_string()), ToStd(field.value()));
  }
  response.body = std::move(message.body());
  const bool reusable = message.keep_alive() && request_.keep_alive() && !parser_->need_eof() &&
                        response.status != 101 && conn_->buffer().size() == 0;
  parser_.reset();
  request_timer_.cancel();
  client_->Release(std::move(conn_), reusable);
  Finish(std::move(response));
}

void Exchange::Fail(core::Status status) {
  if (conn_) conn_->Close();
  Finish(std::move(status));
}

void Exchange::Finish(core::Result<ClientResponse> result) {
  if (finished_) return;
  finished_ = true;
  request_timer_.cancel();
  connect_timer_.cancel();
  client_->Unregister(this);
  Callback done = std::move(done_);
  done(std::move(result));
}

// Fulfils a promise exactly once: with the result, or with Canceled if it is dropped unanswered
// (e.g. the io_context is destroyed with the request still queued).
class PromiseSlot {
 public:
  PromiseSlot() = default;
  PromiseSlot(const PromiseSlot&) = delete;
  PromiseSlot& operator=(const PromiseSlot&) = delete;
  ~PromiseSlot() {
    if (!set_) promise_.set_value(core::Canceled("HTTP client stopped before the request ended"));
  }

  std::future<core::Result<ClientResponse>> future() { return promise_.get_future(); }
  void Set(core::Result<ClientResponse> result) {
    set_ = true;
    promise_.set_value(std::move(result));
  }

 private:
  std::promise<core::Result<ClientResponse>> promise_;
  bool set_ = false;
};

void ClientCore::Fetch(ClientRequest req, Callback done) {
  CountRequest();
  if (!done) done = [](const core::Result<ClientResponse>&) {};
  auto reject = [this, &done](core::Status status) {
    asio::post(ioc_, [done = std::move(done), status = std::move(status)]() mutable {
      done(std::move(status));
    });
  };
  if (shut_down_) return reject(core::Canceled("HTTP client destroyed"));
  auto url = ParseUrl(req.url);
  if (!url.ok()) return reject(url.status());
  if (core::Status valid = ValidateRequest(req); !valid.ok()) return reject(std::move(valid));
  auto exchange = std::make_shared<Exchange>(shared_from_this(), std::move(url).value(),
                                             std::move(req), std::move(done));
  exchange->Start();
}

void ClientCore::Shutdown() {
  shut_down_ = true;
  idle_.clear();  // closes the sockets; idle timers complete with operation_aborted
  // Interrupt() removes nothing from active_ synchronously (Finish is posted), but copy anyway.
  const std::vector<Exchange*> active(active_.begin(), active_.end());
  for (Exchange* exchange : active) {
    exchange->Interrupt(core::Canceled("HTTP client destroyed"));
  }
}

std::shared_ptr<Connection> ClientCore::TakeIdle(const std::string& key) {
  auto it = idle_.find(key);
  if (it == idle_.end()) return nullptr;
  std::shared_ptr<Connection> found;
  auto& stack = it->second;
  while (!stack.empty() && !found) {
    std::shared_ptr<Connection> conn = std::move(stack.back());
    stack.pop_back();
    conn->idle = false;
    conn->idle_timer().cancel();
    if (conn->LooksAlive()) {
      found = std::move(conn);
    } else {
      conn->Close();
    }
  }
  if (stack.empty()) idle_.erase(it);
  return found;
}

void ClientCore::Release(std::shared_ptr<Connection> conn, bool reusable) {
  if (!reusable || shut_down_ || options_.max_idle_per_host == 0) {
    conn->Close();
    return;
  }
  auto& stack = idle_[conn->pool_key()];
  if (stack.size() >= options_.max_idle_per_host) {
    conn->Close();
    return;
  }
  conn->idle = true;
  const std::uint64_t epoch = ++conn->idle_epoch;
  conn->idle_timer().expires_after(options_.idle_timeout);
  conn->idle_timer().async_wait([client = weak_from_this(), weak = std::weak_ptr<Connection>(conn),
                                 epoch](const error_code& ec) {
    if (ec) return;
    auto self = client.lock();
    auto idle_conn = weak.lock();
    if (!self || !idle_conn || !idle_conn->idle || idle_conn->idle_epoch != epoch) return;
    self->EvictIdle(idle_conn.get());
  });
  stack.push_back(std::move(conn));
}

void ClientCore::EvictIdle(const Connection* conn) {
  auto it = idle_.find(conn->pool_key());
  if (it == idle_.end()) return;
  auto& stack = it->second;
  auto pos = std::find_if(stack.begin(), stack.end(),
                          [conn](const auto& candidate) { return candidate.get() == conn; });
  if (pos == stack.end()) return;
  (*pos)->Close();
  stack.erase(pos);
  if (stack.empty()) idle_.erase(it);
}

core::Status ClientCore::InitTls() {
  if (tls_error_) return *tls_error_;
  if (tls_) return core::Status::Ok();
  try {
    ssl::context context(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(context.native_handle(), TLS1_2_VERSION);
    error_code ec;
    if (options_.verify_peer) {
      if (!options_.ca_file.empty()) {
        context.load_verify_file(options_.ca_file, ec);
        if (ec) {
          tls_error_ = core::InvalidArgument("cannot load ca_file " + options_.ca_file + ": " +
                                             ec.message());
          return *tls_error_;
        }
      } else {
        context.set_default_verify_paths(ec);
        if (ec) {
          tls_error_ = core::Unavailable("cannot load the system CA certificates: " + ec.message());
          return *tls_error_;
        }
      }
      context.set_verify_mode(ssl::verify_peer);
    } else {
      context.set_verify_mode(ssl::verify_none);
    }
    tls_.emplace(std::move(context));
  } catch (const std::exception& e) {
    tls_error_ = core::Internal(std::string("cannot create TLS context: ") + e.what());
    return *tls_error_;
  }
  return core::Status::Ok();
}

core::Result<std::shared_ptr<Connection>> ClientCore::NewConnection(const Url& url) {
  if (url.tls()) {
    if (core::Status status = InitTls(); !status.ok()) return status;
  }
  try {
    return std::make_shared<Connection>(ioc_, PoolKey(url), url.tls() ? &*tls_ : nullptr);
  } catch (const std::exception& e) {
    return core::Internal(std::string("cannot create connection: ") + e.what());
  }
}

}  // namespace

class HttpClient::Impl : public ClientCore {
 public:
  using ClientCore::ClientCore;
};

std::string_view ClientResponse::Header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (beast::iequals(key, beast::string_view(name.data(), name.size()))) return value;
  }
  return {};
}

HttpClient::HttpClient(boost::asio::io_context& ioc, HttpClientOptions options)
    : impl_(std::make_shared<Impl>(ioc, std::move(options))) {}

HttpClient::~HttpClient() { impl_->Shutdown(); }

void HttpClient::Fetch(ClientRequest req, std::function<void(core::Result<ClientResponse>)> done) {
  impl_->Fetch(std::move(req), std::move(done));
}

std::future<core::Result<ClientResponse>> HttpClient::Fetch(ClientRequest req) {
  auto slot = std::make_shared<PromiseSlot>();
  auto future = slot->future();
  asio::post(impl_->ioc(), [impl = impl_, req = std::move(req), slot]() mutable {
    impl->Fetch(std::move(req),
                [slot](core::Result<ClientResponse> result) { slot->Set(std::move(result)); });
  });
  return future;
}

HttpClient::Stats HttpClient::stats() const { return impl_->stats(); }

}  // namespace megaserve::net
