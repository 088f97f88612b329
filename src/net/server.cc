#include "net/server.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <charconv>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include "core/logging.h"
#include "metrics/registry.h"

namespace megaserve::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kReadChunk = std::size_t{16} * 1024;
// Responses to pipelined requests are batched up to this size before a write.
constexpr std::size_t kMaxBatchedOutput = std::size_t{64} * 1024;
// The most a worker keeps of the buffer lazy bodies are made in (Response::make_body).
constexpr std::size_t kMaxKeptScratch = std::size_t{1} << 20;
// How long a connection closed after an error keeps draining the client's unread bytes, so the
// client reads our error response instead of a reset.
constexpr std::chrono::milliseconds kLingerTime{1000};
// A streaming client that falls this far behind is disconnected.
constexpr std::size_t kMaxStreamBacklog = std::size_t{4} << 20;

constexpr std::string_view kOverloadResponse =
    "HTTP/1.1 503 Service Unavailable\r\nServer: megaserve\r\nContent-Type: application/json\r\n"
    "Retry-After: 1\r\nConnection: close\r\nContent-Length: 137\r\n\r\n"
    R"({"error":{"type":"server_error","code":"too_many_connections","message":"the server has )"
    R"(too many open connections; retry later","param":null}})";

std::string_view ToView(beast::string_view s) { return {s.data(), s.size()}; }

std::string_view FindHeader(const void* fields, std::string_view name) {
  const auto& f = *static_cast<const http::fields*>(fields);
  auto it = f.find(beast::string_view(name.data(), name.size()));
  return it == f.end() ? std::string_view{} : ToView(it->value());
}

void EachHeader(const void* fields, Request::HeaderVisitor visit, void* fn) {
  for (const auto& field : *static_cast<const http::fields*>(fields)) {
    visit(fn, ToView(field.name_string()), ToView(field.value()));
  }
}

// A client-supplied X-Request-Id is kept when it is 1..128 characters of [A-Za-z0-9._:-].
bool SaneRequestId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void AppendNumber(std::string& out, uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

}  // namespace

// State shared by all I/O threads; read-only once the server runs, except the atomics.
struct Server::Shared {
  Shared(const core::Config& c, const Router& r, metrics::Registry& reg)
      : config(c), router(r), access_log(core::AccessLogger()) {
    requests = &reg.AddCounter("megaserve_http_requests_total",
                               "HTTP requests served, by route pattern, method and status code.",
                               {"route", "method", "code"});
    auto& durations = reg.AddHistogram(
        "megaserve_http_request_duration_seconds",
        "Time from a complete request to its response being queued for writing, by route.",
        c.metrics.duration_buckets, {"route"});
    for (const auto& route : r.routes()) {
      route_durations.push_back(&durations.WithLabels({route->pattern}));
    }
    route_durations.push_back(&durations.WithLabels({"unmatched"}));
    in_flight = &reg.AddGauge("megaserve_http_requests_in_flight",
                              "Requests received and not yet answered.")
                     .WithLabels({});
    connections =
        &reg.AddGauge("megaserve_http_connections_open", "Open client connections.").WithLabels({});
    rejected = &reg.AddCounter("megaserve_http_connections_rejected_total",
                               "Connections refused with 503 because server.max_connections "
                               "were open.")
                    .WithLabels({});
    for (const auto& o : c.cors.allowed_origins) {
      if (o == "*") cors_any = true;
      cors_origins.insert(o);
    }
    cors_enabled = !c.cors.allowed_origins.empty();
    for (const auto& h : c.cors.allowed_headers) {
      if (!cors_headers.empty()) cors_headers += ", ";
      cors_headers += h;
    }
    cors_max_age =
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(c.cors.max_age).count());
  }

  bool OriginAllowed(std::string_view origin) const {
    return cors_any || cors_origins.find(std::string(origin)) != cors_origins.end();
  }

  const core::Config& config;
  const Router& router;
  std::shared_ptr<spdlog::logger> access_log;
  metrics::Family<metrics::Counter>* requests;
  std::vector<metrics::Histogram*> route_durations;  // by route id; last = unmatched
  metrics::Gauge* in_flight;
  metrics::Gauge* connections;
  metrics::Counter* rejected;
  bool cors_enabled = false;
  bool cors_any = false;
  std::unordered_set<std::string> cors_origins;
  std::string cors_headers;
  std::string cors_max_age;
  std::atomic<int> open_connections{0};
  std::atomic<bool>* draining = nullptr;
};

class Connection;

// One I/O thread: its io_context, its acceptor, its connections and the caches its hot path uses.
class Server::Worker {
 public:
  Worker(Shared& shared, unsigned seed) : shared_(shared), rng_(seed), sweep_(ioc_) {}

  asio::io_context& ioc() { return ioc_; }
  Shared& shared() { return shared_; }

  core::Status Listen(const tcp::endpoint& ep, int backlog) {
    boost::system::error_code ec;
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (setsockopt(acceptor_.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0)
        ec.assign(errno, boost::system::system_category());
    }
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(backlog, ec);
    if (ec) {
      return core::Unavailable("cannot listen on " + ep.address().to_string() + ":" +
                               std::to_string(ep.port()) + ": " + ec.message());
    }
    return core::Status::Ok();
  }
  unsigned short local_port() const { return acceptor_.local_endpoint().port(); }

  void Run() {
    Accept();
    ArmSweep();
    ioc_.run();
  }

  // Stops accepting and closes connections that are between requests.
  void BeginDrain();
  // Closes every connection and stops the loop.
  void Stop();

  void Link(Connection* c);
  void Unlink(Connection* c);

  // The cached Date header value, refreshed once a second.
  std::string_view Date() {
    std::time_t now = std::time(nullptr);
    if (now != date_time_) {
      date_time_ = now;
      std::tm tm;
      gmtime_r(&now, &tm);
      date_len_ = std::strftime(date_, sizeof date_, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    }
    return {date_, date_len_};
  }

  // Writes a new 32-hex-digit request id into out.
  void NewRequestId(char (&out)[32]) {
    static constexpr char kHex[] = "0123456789abcdef";
    uint64_t a = rng_(), b = rng_();
    for (int i = 0; i < 16; ++i) {
      out[i] = kHex[(a >> (i * 4)) & 15];
      out[16 + i] = kHex[(b >> (i * 4)) & 15];
    }
  }

  bool Sample(double rate) {
    if (rate >= 1.0) return true;
    if (rate <= 0.0) return false;
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < rate;
  }

  // The requests_total series for (route, method, code), looked up in the registry once per
  // thread and then kept here, so the hot path takes no lock.
  metrics::Counter& RequestCounter(const Route* route, Method method, int code) {
    uint64_t route_key = route ? route->id + 1 : 0;
    uint64_t key = route_key << 24 | static_cast<uint64_t>(method) << 16 | uint64_t(code);
    auto it = counters_.find(key);
    if (it != counters_.end()) return *it->second;
    std::string code_text = std::to_string(code);
    auto& c = shared_.requests->WithLabels(
        {route ? std::string_view(route->pattern) : std::string_view("unmatched"),
         MethodName(method), code_text});
    counters_.emplace(key, &c);
    return c;
  }

  rapidjson::StringBuffer& log_buffer() { return log_buffer_; }
  // Where Finish makes a response's lazy body (Response::make_body) before copying it out.
  std::string& body_scratch() { return body_scratch_; }

 private:
  void Accept();
  void ArmSweep();
  void Sweep();

  Shared& shared_;
  std::mt19937_64 rng_;
  Connection* head_ = nullptr;  // intrusive list of open connections
  std::unordered_map<uint64_t, metrics::Counter*> counters_;
  rapidjson::StringBuffer log_buffer_;
  std::string body_scratch_;
  std::time_t date_time_ = 0;
  char date_[40] = {};
  std::size_t date_len_ = 0;
  bool accepting_ = true;
  // Declared last so that it is destroyed first, while the members above still exist for the
  // handlers (and connections) it destroys.
  asio::io_context ioc_{1};
  tcp::acceptor acceptor_{ioc_};
  asio::steady_timer sweep_;
};

// The StreamWriter handed to a streaming handler. Writes are posted to the connection's thread;
// the connection marks the stream ended (and runs the OnClose callbacks) on that thread.
class ConnectionStream final : public StreamWriter {
 public:
  ConnectionStream(std::weak_ptr<Connection> conn, asio::any_io_executor ex)
      : conn_(std::move(conn)), ex_(std::move(ex)) {}

  bool Write(std::string data) override;
  void Close() override;
  bool closed() const override { return closed_.load(std::memory_order_acquire); }
  void OnClose(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      if (!ended_) {
        on_close_.push_back(std::move(fn));
        return;
      }
    }
    fn();
  }

  // Called by the connection, on its thread, when the stream is over.
  void MarkEnded() {
    closed_.store(true, std::memory_order_release);
    std::vector<std::function<void()>> fns;
    {
      std::lock_guard lock(mu_);
      ended_ = true;
      fns.swap(on_close_);
    }
    for (auto& fn : fns) fn();
  }

 private:
  std::weak_ptr<Connection> conn_;
  asio::any_io_executor ex_;
  std::atomic<bool> closed_{false};
  std::mutex mu_;
  bool ended_ = false;                           // guarded by mu_
  std::vector<std::function<void()>> on_close_;  // guarded by mu_
};

// One client connection. Owned by the shared_ptrs held by its pending operations (and by a
// pending async handler's Reply); the worker's list only points at it.
class Connection final : public std::enable_shared_from_this<Connection>, public Deferrer {
 public:
  enum class State { kIdle, kHead, kBody, kHandling, kWriting, kStreaming, kLingering, kClosed };

  Connection(Server::Worker& worker, tcp::socket socket)
      : worker_(worker), shared_(worker.shared()), socket_(std::move(socket)) {
    const auto& s = shared_.config.server;
    in_.max_size(s.max_header_bytes + s.max_body_bytes + 2 * kReadChunk);
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    socket_.non_blocking(true, ec);
    auto ep = socket_.remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string();
    worker_.Link(this);
    shared_.connections->Inc();
  }

  ~Connection() { Close(); }

  void Start() {
    SetDeadline(State::kIdle, shared_.config.server.header_timeout);
    Read();
  }

  // Called by the sweep when the deadline has passed.
  void OnTimeout() {
    switch (state_) {
      case State::kHead:
      case State::kBody:
        // Cancel the read; its handler answers 408.
        timed_out_ = true;
        socket_.cancel();
        break;
      case State::kHandling:
        break;  // no deadline while a handler runs; the drain deadline bounds it
      case State::kStreaming:
        if (stream_writing_) Close();  // the client stopped reading
        break;
      default:
        Close();
    }
  }

  // Shutdown has begun: close now if between requests, else after the current response.
  void Drain() {
    if (state_ == State::kIdle && in_.size() == 0) Close();
    if (state_ == State::kStreaming) {
      close_after_ = true;
      StreamEnd();
    }
  }

  void Close() {
    if (state_ == State::kClosed) return;
    if (state_ == State::kHandling) shared_.in_flight->Dec();
    state_ = State::kClosed;
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    worker_.Unlink(this);
    if (stream_) std::exchange(stream_, nullptr)->MarkEnded();
    shared_.connections->Dec();
    shared_.open_connections.fetch_sub(1, std::memory_order_relaxed);
  }

  State state() const { return state_; }
  Clock::time_point deadline() const { return deadline_; }

  Connection* prev = nullptr;
  Connection* next = nullptr;

 private:
  void SetDeadline(State s, std::chrono::milliseconds d) {
    state_ = s;
    deadline_ = Clock::now() + d;
  }

  // Reads with Asio's reactive read: the recv is tried at once, and when it finds nothing the
  // read waits on the socket's standing epoll registration. Boost 1.74's reactor stops trying at
  // once only after a read of 0 bytes, so an idle keep-alive connection pays one recv that finds
  // nothing per request. Waiting for readability first (async_wait) would cost an epoll_ctl call
  // per request instead, as Asio re-arms the descriptor for every wait.
  void Read() {
    asio::mutable_buffer buf;
    try {
      buf = in_.prepare(kReadChunk);
    } catch (const std::length_error&) {
      return Fail(431, "header_too_large", "request header fields too large");
    }
    socket_.async_read_some(
        buf, [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
          self->OnRead(ec, n);
        });
  }

  void OnRead(boost::system::error_code ec, std::size_t n) {
    if (state_ == State::kClosed) return;
    if (ec) {
      if (timed_out_ && (state_ == State::kHead || state_ == State::kBody)) {
        timed_out_ = false;
        return Fail(408, "request_timeout",
                    state_ == State::kHead ? "the request head was not received in time"
                                           : "the request body was not received in time");
      }
      return Close();
    }
    in_.commit(n);
    if (state_ == State::kIdle) SetDeadline(State::kHead, shared_.config.server.header_timeout);
    Process();
  }

  // Parses and answers every complete request in the input buffer, then writes or reads.
  void Process() {
    const auto& cfg = shared_.config.server;
    while (!streaming_ && in_.size() > 0 && out_.size() < kMaxBatchedOutput) {
      if (!parser_) {
        parser_.emplace();
        parser_->header_limit(static_cast<std::uint32_t>(cfg.max_header_bytes));
        parser_->body_limit(cfg.max_body_bytes);
        parser_->eager(true);
        if (state_ == State::kIdle) SetDeadline(State::kHead, cfg.header_timeout);
      }
      boost::system::error_code ec;
      std::size_t used = parser_->put(in_.data(), ec);
      in_.consume(used);
      if (ec == http::error::need_more) ec = {};
      if (ec) {
        if (ec == http::error::header_limit)
          return Fail(431, "header_too_large", "request header fields too large");
        if (ec == http::error::body_limit)
          return Fail(413, "body_too_large",
                      "request body exceeds " + std::to_string(cfg.max_body_bytes) + " bytes");
        return Fail(400, "bad_request", "malformed HTTP request: " + ec.message());
      }
      if (state_ == State::kHead && parser_->is_header_done()) {
        SetDeadline(State::kBody, cfg.body_timeout);
        if (!parser_->is_done() &&
            beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
          out_ += "HTTP/1.1 100 Continue\r\n\r\n";
        }
      }
      if (!parser_->is_done()) {
        if (used == 0) break;  // need more bytes
        continue;
      }
      if (!Dispatch()) return;  // an async handler will resume us
      if (close_after_ || streaming_) break;
    }
    if (streaming_) return StartStream();
    if (!out_.empty()) return Write();
    if (close_after_) return Close();
    Read();
  }

  // Answers the parsed request. Returns false when an async handler took it.
  bool Dispatch() {
    auto& msg = parser_->get();
    started_ = Clock::now();
    state_ = State::kHandling;
    shared_.in_flight->Inc();

    req_ = Request{};
    req_.method_text = ToView(msg.method_string());
    req_.method = ParseMethod(req_.method_text);
    req_.SetTarget(ToView(msg.target()));
    req_.body = msg.body();
    req_.version = msg.version();
    req_.remote_addr = remote_;
    req_.SetHeaderSource(&msg.base(), &FindHeader, &EachHeader);
    std::string_view id = req_.Header("x-request-id");
    if (SaneRequestId(id)) {
      req_.request_id = id;
    } else {
      worker_.NewRequestId(id_buf_);
      req_.request_id = {id_buf_, sizeof id_buf_};
    }
    keep_alive_ = msg.keep_alive();
    if (req_.version == 11 && msg.find(http::field::host) == msg.end()) {
      // RFC 9112 section 3.2: an HTTP/1.1 request without Host is answered with 400.
      Response r = ErrorResponse(400, "missing_host", "HTTP/1.1 requests need a Host header");
      r.close = true;
      Finish(r);
      return true;
    }
    origin_ = shared_.cors_enabled ? req_.Header("origin") : std::string_view{};
    if (!origin_.empty() && !shared_.OriginAllowed(origin_)) origin_ = {};

    auto match = shared_.router.Find(req_);
    route_ = match.route;
    if (!route_) {
      Finish(ErrorResponse(404, "not_found", "no route for " + std::string(req_.path)));
      return true;
    }
    if (req_.method == Method::kOptions && !route_->Handles(Method::kOptions)) {
      Finish(Preflight());
      return true;
    }
    if (!match.method_allowed) {
      Response r =
          ErrorResponse(405, "method_not_allowed",
                        std::string(req_.method_text) + " is not allowed on " + route_->pattern);
      r.headers.emplace_back("Allow", route_->allow);
      Finish(std::move(r));
      return true;
    }
    auto idx = static_cast<std::size_t>(req_.method);
    if (!route_->Handles(req_.method)) idx = static_cast<std::size_t>(Method::kGet);  // HEAD
    if (const auto& h = route_->sync[idx]) {
      Finish(h(req_));
      return true;
    }
    if (const auto& h = route_->hybrid[idx]) {
      Response out;
      if (!h(req_, out, *this)) return false;
      Finish(out);
      return true;
    }
    route_->async[idx](req_, Defer());
    return false;
  }

 public:
  // The Reply of the request being handled (net::Deferrer).
  Reply Defer() override {
    return [self = shared_from_this()](Response r) {
      asio::post(self->socket_.get_executor(), [self, r = std::move(r)]() mutable {
        if (self->state_ != State::kHandling) return;  // closed meanwhile
        self->Finish(std::move(r));
        self->Process();
      });
    };
  }

 private:
  // OPTIONS on a route: a CORS preflight when it is one, else the Allow list.
  Response Preflight() {
    Response r;
    r.status = 204;
    r.headers.emplace_back("Allow", route_->allow);
    if (!origin_.empty() && !req_.Header("access-control-request-method").empty()) {
      r.headers.emplace_back("Access-Control-Allow-Methods", route_->allow);
      r.headers.emplace_back("Access-Control-Allow-Headers", shared_.cors_headers);
      r.headers.emplace_back("Access-Control-Max-Age", shared_.cors_max_age);
    }
    return r;
  }

  // Serializes the response into the output buffer, records metrics and the access log line,
  // and readies the connection for the next request.
  void Finish(const Response& r) {
    auto now = Clock::now();
    double seconds = std::chrono::duration<double>(now - started_).count();
    if (r.close || !keep_alive_ || shared_.draining->load(std::memory_order_relaxed))
      close_after_ = true;
    bool head = req_.method == Method::kHead;
    std::string_view body;
    if (!r.stream && r.make_body) {
      // Made here on the I/O thread, into a buffer that keeps its capacity between responses.
      std::string& produced = worker_.body_scratch();
      produced.clear();
      r.make_body(produced);
      body = produced;
    } else if (!r.stream) {
      body = r.Body();
    }
    AppendHead(r, body.size());
    if (!head) out_.append(body);
    if (r.stream && !head) {
      streaming_ = true;
      stream_start_ = r.stream;
    }

    worker_.RequestCounter(route_, req_.method, r.status).Inc();
    shared_.route_durations[route_ ? route_->id : shared_.route_durations.size() - 1]->Observe(
        seconds);
    shared_.in_flight->Dec();
    if (shared_.access_log &&
        (r.status >= 400 || worker_.Sample(shared_.config.log.access_sample))) {
      LogAccess(r.status, head ? 0 : body.size(), seconds);
    }
    parser_.reset();
    route_ = nullptr;
    SetDeadline(in_.size() > 0 ? State::kHead : State::kIdle, shared_.config.server.idle_timeout);
    // A rare large lazy body does not pin its memory to the worker.
    if (std::string& scratch = worker_.body_scratch(); scratch.capacity() > kMaxKeptScratch) {
      std::string().swap(scratch);
    }
  }

  void AppendHead(const Response& r, std::size_t body_size) {
    out_ += "HTTP/1.1 ";
    AppendNumber(out_, r.status);
    out_ += ' ';
    out_ += ReasonPhrase(r.status);
    out_ += "\r\nServer: megaserve\r\nDate: ";
    out_ += worker_.Date();
    if (r.status != 204 && r.status != 304) {
      out_ += "\r\nContent-Type: ";
      out_ += r.ContentType();
      if (r.stream) {
        out_ += "\r\nTransfer-Encoding: chunked";
      } else {
        out_ += "\r\nContent-Length: ";
        AppendNumber(out_, body_size);
      }
    }
    out_ += "\r\nX-Request-Id: ";
    out_ += req_.request_id;
    if (!origin_.empty()) {
      out_ += "\r\nAccess-Control-Allow-Origin: ";
      out_ += origin_;
      out_ += "\r\nAccess-Control-Expose-Headers: X-Request-Id, Retry-After\r\nVary: Origin";
    }
    for (const auto& [name, value] : r.headers) {
      out_ += "\r\n";
      out_ += name;
      out_ += ": ";
      out_ += value;
    }
    if (r.header_lines) out_ += *r.header_lines;
    out_ += r.more_header_lines;
    if (close_after_) {
      out_ += "\r\nConnection: close";
    } else if (req_.version == 10) {
      out_ += "\r\nConnection: keep-alive";
    }
    out_ += "\r\n\r\n";
  }

  void LogAccess(int status, std::size_t bytes, double seconds) {
    auto& sb = worker_.log_buffer();
    sb.Clear();
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.SetMaxDecimalPlaces(3);
    auto str = [&w](std::string_view key, std::string_view v) {
      w.Key(key.data(), key.size());
      w.String(v.data(), v.size());
    };
    w.StartObject();
    char ts[32];
    std::time_t t = std::time(nullptr);
    std::tm tm;
    gmtime_r(&t, &tm);
    std::size_t len = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
    str("ts", {ts, len});
    str("request_id", req_.request_id);
    str("remote", remote_);
    str("method", req_.method_text);
    str("path", req_.path);
    str("route", route_ ? std::string_view(route_->pattern) : std::string_view("unmatched"));
    w.Key("status");
    w.Int(status);
    w.Key("bytes");
    w.Uint64(bytes);
    w.Key("duration_ms");
    w.Double(seconds * 1000.0);
    str("user_agent", req_.Header("user-agent"));
    w.EndObject();
    shared_.access_log->info(std::string_view(sb.GetString(), sb.GetSize()));
  }

  // Answers an unparseable or over-limit request and closes the connection.
  void Fail(int status, std::string_view code, const std::string& message) {
    if (state_ != State::kHandling) {
      started_ = Clock::now();
      state_ = State::kHandling;
      shared_.in_flight->Inc();
      req_ = Request{};
      worker_.NewRequestId(id_buf_);
      req_.request_id = {id_buf_, sizeof id_buf_};
      route_ = nullptr;
    }
    Response r = ErrorResponse(status, code, message);
    r.close = true;
    Finish(std::move(r));
    in_.consume(in_.size());
    linger_ = true;
    Write();
  }

  void Write() {
    SetDeadline(State::kWriting, shared_.config.server.write_timeout);
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                        self->OnWrite(ec);
                      });
  }

  void OnWrite(boost::system::error_code ec) {
    if (state_ == State::kClosed) return;
    out_.clear();
    if (ec) return Close();
    if (close_after_) return linger_ ? Linger() : Close();
    const auto& cfg = shared_.config.server;
    if (parser_) {
      // Mid-request: a 100 Continue went out, or the batch filled up before the next request
      // was complete.
      if (parser_->is_header_done()) {
        SetDeadline(State::kBody, cfg.body_timeout);
      } else {
        SetDeadline(State::kHead, cfg.header_timeout);
      }
      return Process();
    }
    SetDeadline(in_.size() > 0 ? State::kHead : State::kIdle, cfg.idle_timeout);
    if (shared_.draining->load(std::memory_order_relaxed) && in_.size() == 0) return Close();
    Process();
  }

  // Streaming responses. The head (and any batched answers before it) is in out_; chunks
  // accumulate in pending_ while a write is in flight.
  void StartStream() {
    state_ = State::kStreaming;
    deadline_ = Clock::time_point::max();
    stream_ = std::make_shared<ConnectionStream>(weak_from_this(), socket_.get_executor());
    auto start = std::move(stream_start_);
    stream_start_ = nullptr;
    FlushStream();
    WatchClient();
    start(stream_);
  }

 public:
  // Queues one chunk (I/O thread).
  void StreamAppend(const std::string& data) {
    if (!streaming_ || stream_ending_ || data.empty()) return;
    char size[20];
    auto r = std::to_chars(size, size + sizeof size, data.size(), 16);
    pending_.append(size, r.ptr);
    pending_ += "\r\n";
    pending_ += data;
    pending_ += "\r\n";
    if (pending_.size() > kMaxStreamBacklog) return Close();
    FlushStream();
  }

  // Ends the stream with the last chunk (I/O thread).
  void StreamEnd() {
    if (!streaming_ || stream_ending_) return;
    stream_ending_ = true;
    pending_ += "0\r\n\r\n";
    FlushStream();
  }

 private:
  void FlushStream() {
    if (stream_writing_ || state_ == State::kClosed) return;
    if (out_.empty()) out_.swap(pending_);
    if (out_.empty()) {
      if (stream_ending_) FinishStream();
      return;
    }
    stream_writing_ = true;
    deadline_ = Clock::now() + shared_.config.server.write_timeout;
    asio::async_write(socket_, asio::buffer(out_),
                      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                        self->stream_writing_ = false;
                        if (self->state_ == State::kClosed) return;
                        self->out_.clear();
                        if (ec) return self->Close();
                        self->deadline_ = Clock::time_point::max();
                        self->FlushStream();
                      });
  }

  // The last chunk is out: back to serving requests on this connection.
  void FinishStream() {
    streaming_ = false;
    stream_ending_ = false;
    if (stream_) std::exchange(stream_, nullptr)->MarkEnded();
    if (close_after_) return Close();
    const auto& cfg = shared_.config.server;
    SetDeadline(in_.size() > 0 ? State::kHead : State::kIdle, cfg.idle_timeout);
    if (shared_.draining->load(std::memory_order_relaxed) && in_.size() == 0) return Close();
    Process();
  }

  // Notices a client that goes away mid-stream (a read of 0 bytes). Bytes it sends meanwhile
  // (a pipelined request) are kept for after the stream.
  void WatchClient() {
    socket_.async_wait(
        tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
          if (self->state_ != State::kStreaming) return;
          if (ec) return self->Close();
          std::size_t n = self->socket_.read_some(
              self->in_.prepare(std::min(kReadChunk, self->in_.max_size() - self->in_.size())), ec);
          if (ec == asio::error::would_block) return self->WatchClient();
          if (ec) return self->Close();
          self->in_.commit(n);
          if (self->in_.size() + kReadChunk <= self->in_.max_size()) {
            self->WatchClient();
          }
        });
  }

  // Half-closes and discards what the client still sends for a moment, so that it sees our
  // error response rather than a connection reset.
  void Linger() {
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    SetDeadline(State::kLingering, kLingerTime);
    DiscardInput();
  }

  void DiscardInput() {
    in_.clear();
    socket_.async_read_some(in_.prepare(kReadChunk),
                            [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                              if (self->state_ == State::kClosed) return;
                              if (ec) return self->Close();
                              self->DiscardInput();
                            });
  }

  Server::Worker& worker_;
  Server::Shared& shared_;
  tcp::socket socket_;
  std::string remote_;
  beast::flat_buffer in_;
  std::string out_;
  std::string pending_;  // stream chunks waiting for the write in flight
  std::shared_ptr<ConnectionStream> stream_;
  std::function<void(std::shared_ptr<StreamWriter>)> stream_start_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Request req_;
  const Route* route_ = nullptr;
  std::string_view origin_;
  char id_buf_[32] = {};
  Clock::time_point started_;
  Clock::time_point deadline_;
  State state_ = State::kIdle;
  bool keep_alive_ = true;
  bool close_after_ = false;
  bool timed_out_ = false;
  bool linger_ = false;
  bool streaming_ = false;
  bool stream_ending_ = false;
  bool stream_writing_ = false;
};

bool ConnectionStream::Write(std::string data) {
  if (closed()) return false;
  asio::post(ex_, [conn = conn_, data = std::move(data)] {
    if (auto c = conn.lock()) c->StreamAppend(data);
  });
  return true;
}

void ConnectionStream::Close() {
  if (closed_.exchange(true, std::memory_order_acq_rel)) return;
  asio::post(ex_, [conn = conn_] {
    if (auto c = conn.lock()) c->StreamEnd();
  });
}

void Server::Worker::Link(Connection* c) {
  c->next = head_;
  if (head_) head_->prev = c;
  head_ = c;
}

void Server::Worker::Unlink(Connection* c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  if (head_ == c) head_ = c->next;
  c->prev = c->next = nullptr;
}

void Server::Worker::Accept() {
  acceptor_.async_accept(ioc_, [this](boost::system::error_code ec, tcp::socket socket) {
    if (!accepting_) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // Out of descriptors or similar: back off briefly instead of spinning.
      spdlog::warn("accept failed: {}", ec.message());
      auto t = std::make_shared<asio::steady_timer>(ioc_, std::chrono::milliseconds(100));
      t->async_wait([this, t](boost::system::error_code) {
        if (accepting_) Accept();
      });
      return;
    }
    int open = shared_.open_connections.fetch_add(1, std::memory_order_relaxed);
    if (open >= shared_.config.server.max_connections) {
      shared_.open_connections.fetch_sub(1, std::memory_order_relaxed);
      shared_.rejected->Inc();
      boost::system::error_code ignored;
      socket.non_blocking(true, ignored);
      socket.write_some(asio::buffer(kOverloadResponse), ignored);
      socket.shutdown(tcp::socket::shutdown_send, ignored);
      socket.close(ignored);
    } else {
      std::make_shared<Connection>(*this, std::move(socket))->Start();
    }
    Accept();
  });
}

void Server::Worker::ArmSweep() {
  sweep_.expires_after(kSweepInterval);
  sweep_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    Sweep();
    ArmSweep();
  });
}

void Server::Worker::Sweep() {
  auto now = Clock::now();
  for (Connection* c = head_; c != nullptr;) {
    Connection* next = c->next;  // c may unlink itself
    if (c->deadline() <= now) c->OnTimeout();
    c = next;
  }
}

void Server::Worker::BeginDrain() {
  accepting_ = false;
  boost::system::error_code ec;
  acceptor_.close(ec);
  for (Connection* c = head_; c != nullptr;) {
    Connection* next = c->next;
    c->Drain();
    c = next;
  }
}

void Server::Worker::Stop() {
  accepting_ = false;
  boost::system::error_code ec;
  acceptor_.close(ec);
  sweep_.cancel();
  while (head_) head_->Close();
  ioc_.stop();
}

Server::Server(const core::Config& config, const Router& router, metrics::Registry& registry)
    : config_(config), shared_(std::make_unique<Shared>(config, router, registry)) {
  shared_->draining = &draining_;
  open_connections_ = &shared_->open_connections;
}

Server::~Server() {
  Stop();
  workers_.clear();
}

core::Status Server::Start() {
  if (workers_.empty()) {
    if (auto s = Bind(); !s.ok()) return s;
  }
  for (auto& w : workers_) threads_.emplace_back([worker = w.get()] { worker->Run(); });
  return core::Status::Ok();
}

core::Status Server::Bind() {
  if (!workers_.empty()) return core::Status::Ok();
  auto listen = core::ParseListen(config_.server.listen);
  if (!listen.ok()) return listen.status();
  auto [host, port] = *listen;
  boost::system::error_code ec;
  auto address = asio::ip::make_address(host, ec);
  if (ec) {
    asio::io_context tmp;
    tcp::resolver resolver(tmp);
    auto results = resolver.resolve(host, std::to_string(port), ec);
    if (ec || results.empty()) {
      return core::InvalidArgument("server.listen: cannot resolve host \"" + host +
                                   "\": " + ec.message());
    }
    address = results.begin()->endpoint().address();
  }
  unsigned n = config_.server.threads > 0 ? unsigned(config_.server.threads)
                                          : std::max(1u, std::thread::hardware_concurrency());
  std::random_device rd;
  for (unsigned i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>(*shared_, rd());
    // The first listener picks the port when 0 was asked for; the others share it.
    auto status = w->Listen(tcp::endpoint(address, port), config_.server.backlog);
    if (!status.ok()) {
      workers_.clear();
      return status;
    }
    port = w->local_port();
    workers_.push_back(std::move(w));
  }
  port_ = port;
  return core::Status::Ok();
}

std::vector<asio::io_context*> Server::loops() const {
  std::vector<asio::io_context*> out;
  for (const auto& w : workers_) out.push_back(&w->ioc());
  return out;
}

void Server::Shutdown() {
  if (stopped_.load() || workers_.empty()) return;
  set_ready(false);
  if (config_.server.shutdown_delay.count() > 0) {
    std::this_thread::sleep_for(config_.server.shutdown_delay);
  }
  draining_.store(true);
  for (auto& w : workers_) asio::post(w->ioc(), [worker = w.get()] { worker->BeginDrain(); });
  auto deadline = Clock::now() + config_.server.drain_timeout;
  while (open_connections() > 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (open_connections() > 0) {
    spdlog::warn("drain deadline passed with {} connection(s) open; closing them",
                 open_connections());
  }
  Stop();
}

void Server::Stop() {
  if (stopped_.exchange(true)) return;
  for (auto& w : workers_) asio::post(w->ioc(), [worker = w.get()] { worker->Stop(); });
  for (auto& t : threads_) t.join();
  threads_.clear();
  // The workers (and their io_contexts) stay until the destructor: a Reply still held by an
  // async handler keeps its connection, whose socket belongs to a worker's io_context.
}

}  // namespace megaserve::net
