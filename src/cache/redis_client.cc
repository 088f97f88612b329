// RedisClient: hiredis' async context driven by a boost::asio loop.
//
// Event-loop adapter. hiredis has no asio binding; it asks its host loop for readiness through
// five hooks (redisAsyncContext::ev): addRead/delRead/addWrite/delWrite and cleanup. Each
// connection (Conn) wraps hiredis' socket in a posix::stream_descriptor and keeps "wanted" flags
// per direction, like a level-triggered poller: while a direction is wanted, one async_wait is
// outstanding, and its handler calls redisAsyncHandleRead/Write and re-arms if the direction is
// still wanted. del* only clear the flag (an outstanding wait then completes harmlessly). hiredis
// owns the file descriptor, so cleanup release()s it from the descriptor object instead of
// closing it. A Conn outlives its hiredis context until every handler that captured it has run.
//
// Pipelining comes from hiredis itself: redisAsyncCommandArgv appends to the output buffer and
// asks for write readiness once, so all commands issued in one loop turn leave in one write.
//
// Handshake. On TCP connect the client sends AUTH (when the URL has a password), SELECT (when the
// db is not 0), or else PING, and is ready only when the last of them is answered; a failure drops
// the connection. Running the handshake also means readiness (and the ready hooks) is always
// reached from inside a reply callback, where hiredis defers a free until the callback returns.
//
// Timeouts. Replies come back in command order, so only the oldest outstanding command can be the
// first to time out: one timer watches the head of the in-flight queue, re-armed lazily when it
// fires. A head past its deadline means the server stopped answering; the connection is dropped
// (hiredis then fails every outstanding command: those past their deadline with
// DeadlineExceeded, the rest with Unavailable) and made again.
//
// Reconnection uses capped exponential backoff with "equal jitter" (AWS Architecture Blog,
// "Exponential Backoff And Jitter", 2015): the delay is uniform in [d/2, d], d doubling from
// reconnect_initial to reconnect_max after each failed attempt.
//
// Callbacks with a reply run inline from the read handler; failures without a reply (connection
// lost, timeout, shutdown) are posted to the loop, so no caller code runs inside hiredis' free.
#include "cache/redis_client.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cassert>
#include <cctype>
#include <charconv>
#include <csignal>
#include <deque>
#include <mutex>
#include <optional>
#include <random>

namespace megaserve::cache {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using Callback = RedisClient::Callback;

bool ParseInt(std::string_view s, int& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// Converts a hiredis reply (never a top-level error) into our value type.
RedisReply Convert(const redisReply* r) {
  RedisReply out;
  switch (r->type) {
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r->integer;
      break;
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r->str, r->len);
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r->elements);
      for (std::size_t i = 0; i < r->elements; ++i) out.elements.push_back(Convert(r->element[i]));
      break;
    default:
      out.type = RedisReply::Type::kNil;
  }
  return out;
}

// An error reply as a Status: the conditions Redis documents as transient are Unavailable.
core::Status ErrorStatus(std::string_view message) {
  for (std::string_view transient : {"LOADING ", "BUSY ", "TRYAGAIN ", "MASTERDOWN "}) {
    if (message.substr(0, transient.size()) == transient) {
      return core::Unavailable(std::string(message));
    }
  }
  return core::Internal(std::string(message));
}

bool IsPubSubCommand(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (std::string_view n : {"subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
                             "sunsubscribe", "monitor"}) {
    if (lower == n) return true;
  }
  return false;
}

struct Metrics {
  metrics::Gauge* connected = nullptr;
  metrics::Counter* reconnects = nullptr;
  metrics::Counter* commands = nullptr;
  metrics::Counter* err_connect = nullptr;
  metrics::Counter* err_handshake = nullptr;
  metrics::Counter* err_io = nullptr;
  metrics::Counter* err_timeout = nullptr;
  metrics::Counter* err_reply = nullptr;
  metrics::Counter* err_unavailable = nullptr;
  // Unregistered instances when there is no registry.
  std::unique_ptr<metrics::Gauge> own_gauge;
  std::vector<std::unique_ptr<metrics::Counter>> own_counters;

  explicit Metrics(metrics::Registry* registry) {
    if (registry == nullptr) {
      own_gauge = std::make_unique<metrics::Gauge>();
      connected = own_gauge.get();
      for (metrics::Counter** c : {&reconnects, &commands, &err_connect, &err_handshake, &err_io,
                                   &err_timeout, &err_reply, &err_unavailable}) {
        own_counters.push_back(std::make_unique<metrics::Counter>());
        *c = own_counters.back().get();
      }
      return;
    }
    connected = &registry
                     ->AddGauge("megaserve_redis_connected",
                                "Redis connections up and ready (one per I/O loop when healthy).")
                     .WithLabels({});
    reconnects = &registry
                      ->AddCounter("megaserve_redis_reconnects_total",
                                   "Redis connections re-established after one was lost.")
                      .WithLabels({});
    commands = &registry->AddCounter("megaserve_redis_commands_total", "Redis commands issued.")
                    .WithLabels({});
    auto& errors = registry->AddCounter(
        "megaserve_redis_errors_total",
        "Redis failures by kind: connect, handshake, io (connection lost), timeout, reply (error "
        "reply), unavailable (command refused while disconnected).",
        {"kind"});
    err_connect = &errors.WithLabels({"connect"});
    err_handshake = &errors.WithLabels({"handshake"});
    err_io = &errors.WithLabels({"io"});
    err_timeout = &errors.WithLabels({"timeout"});
    err_reply = &errors.WithLabels({"reply"});
    err_unavailable = &errors.WithLabels({"unavailable"});
  }
};

}  // namespace

core::Result<RedisAddress> ParseRedisUrl(std::string_view url) {
  constexpr std::string_view kScheme = "redis://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return core::InvalidArgument("redis URL must start with redis://: " + std::string(url));
  }
  std::string_view rest = url.substr(kScheme.size());
  RedisAddress addr;
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path =
      authority.size() < rest.size() ? rest.substr(authority.size() + 1) : std::string_view();
  if (std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority.remove_prefix(at + 1);
    std::size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos) {
      addr.password = std::string(userinfo);  // redis://secret@host
    } else {
      addr.user = std::string(userinfo.substr(0, colon));
      addr.password = std::string(userinfo.substr(colon + 1));
    }
  }
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {  // IPv6 literal
    std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return core::InvalidArgument("bad redis URL host");
    addr.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return core::InvalidArgument("bad redis URL host");
      port = after.substr(1);
    }
  } else {
    std::size_t colon = authority.find(':');
    addr.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (addr.host.empty()) return core::InvalidArgument("redis URL has no host: " + std::string(url));
  if (!port.empty() && (!ParseInt(port, addr.port) || addr.port <= 0 || addr.port > 65535)) {
    return core::InvalidArgument("bad redis URL port: " + std::string(port));
  }
  if (!path.empty() && (!ParseInt(path, addr.db) || addr.db < 0)) {
    return core::InvalidArgument("bad redis URL database: " + std::string(path));
  }
  return addr;
}

class RedisClient::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(asio::io_context& ioc, RedisOptions options, metrics::Registry* registry, RedisClient* owner)
      : ioc_(ioc),
        options_(std::move(options)),
        owner_(owner),
        metrics_(registry),
        conn_timer_(ioc),
        command_timer_(ioc),
        rng_(std::random_device{}()),
        backoff_(options_.reconnect_initial) {
    auto parsed = ParseRedisUrl(options_.url);
    if (parsed.ok()) {
      address_ = std::move(*parsed);
    } else {
      url_error_ = parsed.status();
    }
  }

  // Drops everything; commands in flight get Canceled. Called by ~RedisClient.
  void Shutdown() {
    closing_ = true;
    Stop();
  }

  void Start() {
    if (state_ != State::kStopped) return;
    if (!url_error_.ok()) {
      metrics_.err_connect->Inc();
      return;
    }
    backoff_ = options_.reconnect_initial;
    Connect();
  }

  void Stop() {
    state_ = State::kStopped;
    ++conn_timer_seq_;
    conn_timer_.cancel();
    command_timer_.cancel();
    command_timer_armed_ = false;
    if (current_ != nullptr) Drop();
  }

  bool connected() const { return connected_.load(std::memory_order_acquire); }

  void Command(std::vector<std::string> argv, Callback done) {
    metrics_.commands->Inc();
    if (argv.empty()) return Fail(std::move(done), core::InvalidArgument("empty redis command"));
    if (IsPubSubCommand(argv[0])) {
      return Fail(std::move(done),
                  core::InvalidArgument("redis command not supported: " + argv[0]));
    }
    if (!url_error_.ok()) return Fail(std::move(done), url_error_);
    if (state_ != State::kReady || current_ == nullptr) {
      metrics_.err_unavailable->Inc();
      return Fail(std::move(done), core::Unavailable("redis not connected"));
    }
    Send(argv, std::move(done), /*internal=*/false);
  }

  void AddReadyHook(std::function<void(RedisClient&)> hook) {
    ready_hooks_.push_back(std::move(hook));
  }

  asio::io_context& ioc() const { return ioc_; }

 private:
  enum class State { kStopped, kConnecting, kHandshaking, kReady, kBackoff };

  struct Conn;

  // One command handed to hiredis; owned by hiredis (as privdata) until its callback runs, which
  // hiredis guarantees exactly once (with a null reply when the context is freed first).
  struct Pending {
    Conn* conn;
    Callback done;
    Clock::time_point deadline;
    bool internal;  // handshake: `done` belongs to the Impl and runs inline even without a reply
  };

  // One hiredis connection and its descriptor. Kept alive by `self` until hiredis' cleanup hook
  // and by every handler that captured it.
  struct Conn : std::enable_shared_from_this<Conn> {
    Impl* impl = nullptr;  // valid while `ac` is set
    redisAsyncContext* ac = nullptr;
    std::optional<asio::posix::stream_descriptor> sd;
    std::shared_ptr<Conn> self;
    std::deque<Pending*> in_flight;
    bool want_read = false, want_write = false;
    bool read_waiting = false, write_waiting = false;
    bool freeing = false;

    void Arm(bool read) {
      bool& want = read ? want_read : want_write;
      bool& waiting = read ? read_waiting : write_waiting;
      if (!want || waiting || !sd) return;
      waiting = true;
      sd->async_wait(read ? asio::posix::stream_descriptor::wait_read
                          : asio::posix::stream_descriptor::wait_write,
                     [c = shared_from_this(), read](const error_code& ec) {
                       (read ? c->read_waiting : c->write_waiting) = false;
                       if (ec || c->ac == nullptr || !(read ? c->want_read : c->want_write)) {
                         return;
                       }
                       if (read) {
                         redisAsyncHandleRead(c->ac);
                       } else {
                         redisAsyncHandleWrite(c->ac);
                       }
                       // The context may have been freed inside; then ac is null.
                       if (c->ac != nullptr) c->Arm(read);
                     });
    }
  };

  static void AddRead(void* data) {
    auto* c = static_cast<Conn*>(data);
    c->want_read = true;
    c->Arm(true);
  }
  static void DelRead(void* data) { static_cast<Conn*>(data)->want_read = false; }
  static void AddWrite(void* data) {
    auto* c = static_cast<Conn*>(data);
    c->want_write = true;
    c->Arm(false);
  }
  static void DelWrite(void* data) { static_cast<Conn*>(data)->want_write = false; }
  static void Cleanup(void* data) {
    auto* c = static_cast<Conn*>(data);
    c->ac = nullptr;
    c->want_read = c->want_write = false;
    if (c->sd) {
      c->sd->release();  // hiredis closes the fd itself; waits still pending are aborted
      c->sd.reset();
    }
    // hiredis still calls onDisconnect with this context after cleanup, so the Conn is released
    // only from the loop, once the current handler has returned.
    asio::post(c->impl->ioc_, [self = std::move(c->self)] {});
  }

  static void OnConnect(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    Impl* impl = c->impl;
    if (c != impl->current_) return;
    if (status != REDIS_OK) {
      // hiredis frees the context when this returns.
      c->freeing = true;
      impl->current_ = nullptr;
      impl->metrics_.err_connect->Inc();
      impl->ScheduleReconnect();
      return;
    }
    impl->Handshake();
  }

  static void OnDisconnect(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    Impl* impl = c->impl;
    if (c != impl->current_) return;  // dropped by us, already accounted for
    // Lost by an I/O error or EOF.
    impl->current_ = nullptr;
    impl->SetConnected(false);
    impl->metrics_.err_io->Inc();
    impl->ScheduleReconnect();
  }

  static void OnReply(redisAsyncContext* ac, void* r, void* privdata) {
    std::unique_ptr<Pending> p(static_cast<Pending*>(privdata));
    Conn* c = p->conn;
    if (!c->in_flight.empty() && c->in_flight.front() == p.get()) {
      c->in_flight.pop_front();
    } else {
      c->in_flight.erase(std::find(c->in_flight.begin(), c->in_flight.end(), p.get()));
    }
    Impl* impl = c->impl;
    auto* reply = static_cast<redisReply*>(r);
    std::optional<core::Result<RedisReply>> result;
    if (reply == nullptr) {
      c->freeing = true;  // null replies come only from hiredis freeing the context
      if (impl->closing_) {
        result.emplace(core::Canceled("redis client destroyed"));
      } else if (Clock::now() >= p->deadline) {
        result.emplace(core::DeadlineExceeded("redis command timed out"));
      } else {
        result.emplace(core::Unavailable("redis connection lost"));
      }
      if (!p->internal) {
        if (p->done) {
          asio::post(impl->ioc_, [done = std::move(p->done), res = std::move(*result)]() mutable {
            done(std::move(res));
          });
        }
        return;
      }
    } else if (reply->type == REDIS_REPLY_ERROR) {
      impl->metrics_.err_reply->Inc();
      result.emplace(ErrorStatus(std::string_view(reply->str, reply->len)));
    } else {
      result.emplace(Convert(reply));
    }
    if (p->done) p->done(std::move(*result));
  }

  void Fail(Callback done, core::Status status) {
    if (!done) return;
    asio::post(ioc_, [done = std::move(done), status = std::move(status)]() mutable {
      done(std::move(status));
    });
  }

  void Connect() {
    state_ = State::kConnecting;
    redisAsyncContext* ac = redisAsyncConnect(address_.host.c_str(), address_.port);
    if (ac == nullptr || ac->err) {
      if (ac != nullptr) redisAsyncFree(ac);
      metrics_.err_connect->Inc();
      ScheduleReconnect();
      return;
    }
    auto conn = std::make_shared<Conn>();
    conn->impl = this;
    conn->ac = ac;
    conn->self = conn;
    error_code ec;
    conn->sd.emplace(ioc_);
    conn->sd->assign(ac->c.fd, ec);
    ac->data = conn.get();
    ac->ev.data = conn.get();
    ac->ev.addRead = &Impl::AddRead;
    ac->ev.delRead = &Impl::DelRead;
    ac->ev.addWrite = &Impl::AddWrite;
    ac->ev.delWrite = &Impl::DelWrite;
    ac->ev.cleanup = &Impl::Cleanup;
    current_ = conn.get();
    if (ec) {
      metrics_.err_connect->Inc();
      Drop();
      ScheduleReconnect();
      return;
    }
    redisAsyncSetDisconnectCallback(ac, &Impl::OnDisconnect);
    redisAsyncSetConnectCallback(ac, &Impl::OnConnect);  // waits for writability: the connect
    ArmConnTimer(options_.connect_timeout, [this] {
      if (state_ != State::kConnecting && state_ != State::kHandshaking) return;
      metrics_.err_connect->Inc();
      Drop();
      ScheduleReconnect();
    });
  }

  void Handshake() {
    state_ = State::kHandshaking;
    std::vector<std::vector<std::string>> steps;
    if (!address_.password.empty()) {
      if (address_.user.empty()) {
        steps.push_back({"AUTH", address_.password});
      } else {
        steps.push_back({"AUTH", address_.user, address_.password});
      }
    }
    if (address_.db != 0) steps.push_back({"SELECT", std::to_string(address_.db)});
    if (steps.empty()) steps.push_back({"PING"});
    auto remaining = std::make_shared<std::size_t>(steps.size());
    Conn* conn = current_;
    for (const auto& step : steps) {
      Send(
          step,
          [this, conn, remaining](core::Result<RedisReply> r) {
            if (conn != current_ || state_ != State::kHandshaking) return;
            if (!r.ok()) {
              metrics_.err_handshake->Inc();
              Drop();
              ScheduleReconnect();
              return;
            }
            if (--*remaining == 0) Ready();
          },
          /*internal=*/true);
    }
  }

  void Ready() {
    state_ = State::kReady;
    ++conn_timer_seq_;
    conn_timer_.cancel();
    backoff_ = options_.reconnect_initial;
    if (ever_ready_) metrics_.reconnects->Inc();
    ever_ready_ = true;
    SetConnected(true);
    for (auto& hook : ready_hooks_) hook(*owner_);
  }

  void SetConnected(bool up) {
    if (connected_.exchange(up, std::memory_order_acq_rel) == up) return;
    if (up) {
      metrics_.connected->Inc();
    } else {
      metrics_.connected->Dec();
    }
  }

  // Hands `argv` to hiredis on the current connection.
  void Send(const std::vector<std::string>& argv, Callback done, bool internal) {
    // hiredis copies the arguments into its output buffer, so pointers to them suffice; commands
    // of up to kInlineArgs arguments (all the cache and rate limiter send) need no allocation.
    constexpr std::size_t kInlineArgs = 8;
    const char* inline_args[kInlineArgs];
    std::size_t inline_lens[kInlineArgs];
    std::vector<const char*> heap_args;
    std::vector<std::size_t> heap_lens;
    const char** args = inline_args;
    std::size_t* lens = inline_lens;
    if (argv.size() > kInlineArgs) {
      heap_args.resize(argv.size());
      heap_lens.resize(argv.size());
      args = heap_args.data();
      lens = heap_lens.data();
    }
    for (std::size_t i = 0; i < argv.size(); ++i) {
      args[i] = argv[i].data();
      lens[i] = argv[i].size();
    }
    auto p = std::make_unique<Pending>(
        Pending{current_, std::move(done), Clock::now() + options_.command_timeout, internal});
    Pending* raw = p.get();
    if (redisAsyncCommandArgv(current_->ac, &Impl::OnReply, raw, static_cast<int>(argv.size()),
                              args, lens) != REDIS_OK) {
      metrics_.err_unavailable->Inc();
      Fail(std::move(p->done), core::Unavailable("redis connection is closing"));
      return;
    }
    p.release();
    current_->in_flight.push_back(raw);
    ArmCommandTimer(raw->deadline);
  }

  // Frees the current connection (deferred by hiredis when inside one of its callbacks).
  void Drop() {
    Conn* c = current_;
    current_ = nullptr;
    SetConnected(false);
    if (c == nullptr || c->freeing || c->ac == nullptr) return;
    c->freeing = true;
    redisAsyncFree(c->ac);
  }

  void ScheduleReconnect() {
    if (state_ == State::kStopped) return;
    state_ = State::kBackoff;
    auto half = backoff_ / 2;
    std::uniform_int_distribution<std::int64_t> dist(half.count(), backoff_.count());
    std::chrono::milliseconds delay(dist(rng_));
    backoff_ = std::min(backoff_ * 2, options_.reconnect_max);
    ArmConnTimer(delay, [this] {
      if (state_ == State::kBackoff) Connect();
    });
  }

  void ArmConnTimer(std::chrono::milliseconds after, std::function<void()> fn) {
    std::uint64_t seq = ++conn_timer_seq_;
    conn_timer_.expires_after(after);
    conn_timer_.async_wait(
        [weak = weak_from_this(), seq, fn = std::move(fn)](const error_code& ec) {
          auto self = weak.lock();
          if (ec || !self || seq != self->conn_timer_seq_) return;
          fn();
        });
  }

  void ArmCommandTimer(Clock::time_point deadline) {
    if (command_timer_armed_) return;
    command_timer_armed_ = true;
    command_timer_.expires_at(deadline);
    command_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
      auto self = weak.lock();
      if (!self) return;
      self->command_timer_armed_ = false;
      if (ec) return;
      self->CheckTimeouts();
    });
  }

  void CheckTimeouts() {
    if (current_ == nullptr || current_->in_flight.empty()) return;
    Clock::time_point head = current_->in_flight.front()->deadline;
    if (Clock::now() < head) {
      ArmCommandTimer(head);
      return;
    }
    metrics_.err_timeout->Inc();
    Drop();
    ScheduleReconnect();
  }

  asio::io_context& ioc_;
  const RedisOptions options_;
  RedisClient* const owner_;
  Metrics metrics_;
  RedisAddress address_;
  core::Status url_error_;
  asio::steady_timer conn_timer_;  // connect timeout or reconnect delay
  std::uint64_t conn_timer_seq_ = 0;
  asio::steady_timer command_timer_;
  bool command_timer_armed_ = false;
  std::minstd_rand rng_;
  std::chrono::milliseconds backoff_;
  State state_ = State::kStopped;
  Conn* current_ = nullptr;
  bool ever_ready_ = false;
  bool closing_ = false;
  std::atomic<bool> connected_{false};
  std::vector<std::function<void(RedisClient&)>> ready_hooks_;
};

namespace {

// hiredis writes with send(fd, ..., 0), without MSG_NOSIGNAL: a write to a Redis that has just
// died raises SIGPIPE, whose default action ends the whole process (a gateway losing its Redis
// under load would go down with it). The first client made turns SIGPIPE off for the process;
// the other sockets here (Boost.Asio's, libpq's) already ask for EPIPE instead of the signal,
// so nothing relies on it.
void IgnoreSigpipe() {
  static std::once_flag once;
  std::call_once(once, [] { std::signal(SIGPIPE, SIG_IGN); });
}

}  // namespace

// SIGPIPE is turned off before the connection is opened.
RedisClient::RedisClient(asio::io_context& ioc, RedisOptions options, metrics::Registry* registry)
    : impl_((IgnoreSigpipe(), std::make_shared<Impl>(ioc, std::move(options), registry, this))) {}

RedisClient::~RedisClient() { impl_->Shutdown(); }

void RedisClient::Start() { impl_->Start(); }

void RedisClient::Stop() { impl_->Stop(); }

bool RedisClient::connected() const { return impl_->connected(); }

void RedisClient::Command(std::vector<std::string> argv, Callback done) {
  impl_->Command(std::move(argv), std::move(done));
}

void RedisClient::Post(std::vector<std::string> argv, Callback done) {
  asio::post(impl_->ioc(), [weak = std::weak_ptr<Impl>(impl_), argv = std::move(argv),
                            done = std::move(done)]() mutable {
    if (auto impl = weak.lock()) {
      impl->Command(std::move(argv), std::move(done));
    } else if (done) {
      done(core::Canceled("redis client destroyed"));
    }
  });
}

std::future<core::Result<RedisReply>> RedisClient::Command(std::vector<std::string> argv) {
  auto promise = std::make_shared<std::promise<core::Result<RedisReply>>>();
  auto future = promise->get_future();
  Post(std::move(argv),
       [promise](core::Result<RedisReply> r) { promise->set_value(std::move(r)); });
  return future;
}

void RedisClient::AddReadyHook(std::function<void(RedisClient&)> hook) {
  impl_->AddReadyHook(std::move(hook));
}

asio::io_context& RedisClient::io_context() const { return impl_->ioc(); }

RedisPool::RedisPool(std::vector<asio::io_context*> loops, RedisOptions options,
                     metrics::Registry* registry) {
  clients_.reserve(loops.size());
  for (asio::io_context* loop : loops) {
    clients_.push_back(std::make_unique<RedisClient>(*loop, options, registry));
  }
}

RedisPool::~RedisPool() = default;

void RedisPool::Start() {
  for (auto& c : clients_) asio::post(c->io_context(), [c = c.get()] { c->Start(); });
}

void RedisPool::Stop() {
  for (auto& c : clients_) asio::post(c->io_context(), [c = c.get()] { c->Stop(); });
}

RedisClient* RedisPool::Current() {
  for (auto& c : clients_) {
    if (c->io_context().get_executor().running_in_this_thread()) return c.get();
  }
  return nullptr;
}

RedisClient& RedisPool::ForCurrentThread() {
  RedisClient* c = Current();
  assert(c != nullptr && "RedisPool::ForCurrentThread called off the pool's loops");
  return *c;
}

void RedisPool::Run(std::function<void(RedisClient&)> fn) {
  if (RedisClient* c = Current()) {
    fn(*c);
    return;
  }
  if (clients_.empty()) return;
  RedisClient* c = clients_[next_.fetch_add(1, std::memory_order_relaxed) % clients_.size()].get();
  asio::post(c->io_context(), [c, fn = std::move(fn)] { fn(*c); });
}

void RedisPool::Command(std::vector<std::string> argv, RedisClient::Callback done) {
  if (RedisClient* c = Current()) {
    c->Command(std::move(argv), std::move(done));
  } else if (!clients_.empty()) {
    clients_[next_.fetch_add(1, std::memory_order_relaxed) % clients_.size()]->Post(
        std::move(argv), std::move(done));
  }
}

void RedisPool::AddReadyHook(std::function<void(RedisClient&)> hook) {
  for (auto& c : clients_) c->AddReadyHook(hook);
}

bool RedisPool::connected() const {
  return std::any_of(clients_.begin(), clients_.end(),
                     [](const auto& c) { return c->connected(); });
}

}  // namespace megaserve::cache
