// Asynchronous Redis client on boost::asio, built on hiredis' async API (redisAsyncContext).
//
// A RedisClient belongs to one boost::asio::io_context (one I/O loop) and is confined to it, like
// net::HttpClient: the callback overload of Command, Start and Stop must be called on that loop's
// thread (or before the loop starts running), and every callback runs there. Threads off the loop
// use Post or the future overload, which post to the loop.
//
// Commands issued in the same loop turn are written together (hiredis buffers them and flushes on
// the next write readiness), so a burst of commands is pipelined without any batching API. While
// the client is not connected, commands fail at once with Unavailable: callers fall back (treat a
// cache lookup as a miss, a global rate limit as a local one) rather than queue behind an outage.
// See redis_client.cc for the event-loop adapter, timeouts and reconnection rules.
//
// RedisPool holds one RedisClient per I/O loop, so a request handler always talks to Redis from
// the thread it runs on.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "metrics/registry.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace megaserve::cache {

// One reply from Redis. Error replies at the top level arrive as a non-OK Status instead; inside
// an array (e.g. EXEC's results) they appear as kError elements.
struct RedisReply {
  enum class Type { kNil, kInteger, kString, kStatus, kArray, kError };
  Type type = Type::kNil;
  std::int64_t integer = 0;          // kInteger
  std::string str;                   // kString (binary-safe), kStatus, kError
  std::vector<RedisReply> elements;  // kArray

  // Whether this is the nil reply (e.g. GET of a missing key).
  bool is_nil() const { return type == Type::kNil; }
};

struct RedisOptions {
  // redis://[[user]:password@]host[:port][/db] (redis://password@host also names a password;
  // no percent-decoding); port defaults to 6379 and db to 0. A password is sent with AUTH and a
  // non-zero db with SELECT each time a connection is made. The host is resolved with a blocking
  // lookup at each connect, so give an IP address or a name in /etc/hosts.
  std::string url = "redis://127.0.0.1:6379/0";
  // TCP connect plus the AUTH/SELECT handshake.
  std::chrono::milliseconds connect_timeout{1000};
  // A command not answered this long after it was issued fails with DeadlineExceeded, and the
  // connection is dropped and made again (a server that stopped answering is not waited on).
  std::chrono::milliseconds command_timeout{1000};
  // Reconnection delay: starts at the initial value, doubles after each failed attempt up to the
  // maximum, and is drawn uniformly from [delay/2, delay] so that many clients do not reconnect
  // in lockstep. Reset once a connection is ready.
  std::chrono::milliseconds reconnect_initial{100};
  std::chrono::milliseconds reconnect_max{5000};
};

// The parts of a redis:// URL.
struct RedisAddress {
  std::string host;
  int port = 6379;
  std::string user;  // empty = AUTH with the password alone
  std::string password;
  int db = 0;
};

// Parses `url` as described for RedisOptions::url; InvalidArgument when it is malformed.
core::Result<RedisAddress> ParseRedisUrl(std::string_view url);

class RedisClient {
 public:
  using Callback = std::function<void(core::Result<RedisReply>)>;

  // A client for `options.url` whose I/O runs on `ioc`, which must outlive it. Does not connect
  // until Start(). Metrics go to `registry`; null = none. Never fails: a malformed URL is reported
  // by every command (InvalidArgument) and counted as a connect error.
  RedisClient(boost::asio::io_context& ioc, RedisOptions options, metrics::Registry* registry);
  // Drops the connection. Commands still in flight complete with Canceled, posted to the loop.
  // Must run on the loop's thread or after the loop has stopped, and not from inside one of this
  // client's callbacks.
  ~RedisClient();
  // No copying allowed.
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Starts connecting in the background; the client keeps reconnecting until Stop(). Loop thread
  // only (or before the loop runs). Calling it again while started does nothing.
  void Start();

  // Drops the connection and stops reconnecting; commands in flight fail with Unavailable and
  // later commands fail at once. Loop thread only. Start() may be called again.
  void Stop();

  // Whether a connection is up and ready for commands. Safe from any thread.
  bool connected() const;

  // Sends the command `argv` (e.g. {"SET", key, value}; arguments are binary-safe) and calls
  // `done` exactly once on the loop with the reply or an error:
  //   Unavailable        not connected (failed at once), or the connection broke before the reply;
  //                      also Redis' LOADING, BUSY, TRYAGAIN and MASTERDOWN error replies;
  //   DeadlineExceeded   no reply within command_timeout;
  //   Internal           any other error reply; the message is Redis' error text, e.g.
  //                      "NOSCRIPT No matching script. Please use EVAL.";
  //   InvalidArgument    empty argv, a malformed URL, or a subscribe/monitor command (which do not
  //                      fit one reply per command);
  //   Canceled           the client was destroyed first.
  // `done` is never called from inside Command; an empty `done` discards the result. Must be
  // called on the loop's thread, or before the loop starts running.
  void Command(std::vector<std::string> argv, Callback done);

  // Like Command, from any thread: posts the command to the loop, where `done` runs. If the client
  // is destroyed before the command runs, `done` gets Canceled.
  void Post(std::vector<std::string> argv, Callback done);

  // Like Post, returning a future for the result. Safe from any thread; never block on the future
  // from the loop's own thread.
  std::future<core::Result<RedisReply>> Command(std::vector<std::string> argv);

  // Adds `hook`, called on the loop each time a connection becomes ready (after AUTH and SELECT),
  // before any command waiting on connected() could observe it; e.g. to SCRIPT LOAD. Loop thread
  // only, or before the loop runs.
  void AddReadyHook(std::function<void(RedisClient&)> hook);

  // The io_context this client runs on.
  boost::asio::io_context& io_context() const;

 private:
  class Impl;
  // Shared with handlers queued on the loop, which check it is still alive before touching it.
  std::shared_ptr<Impl> impl_;
};

// One RedisClient per I/O loop, all for the same server.
class RedisPool {
 public:
  // One client per loop in `loops` (at least one; they must outlive the pool), created but not
  // started.
  RedisPool(std::vector<boost::asio::io_context*> loops, RedisOptions options,
            metrics::Registry* registry);
  // Must run after the loops have stopped, or from a thread that runs none of them while no
  // handler of the pool's clients can run (e.g. after their threads were joined).
  ~RedisPool();
  // No copying allowed.
  RedisPool(const RedisPool&) = delete;
  RedisPool& operator=(const RedisPool&) = delete;

  // Starts every client, each on its own loop (posted there). Safe from any thread.
  void Start();
  // Stops every client, each on its own loop (posted there). Safe from any thread.
  void Stop();

  // The client whose loop is running in the calling thread, or null off every loop.
  RedisClient* Current();
  // The client whose loop is running in the calling thread. Must be called on one of the loops.
  RedisClient& ForCurrentThread();

  // Runs `fn` with a client on that client's loop: inline with the current thread's client when
  // called on one of the loops, otherwise posted to the next loop in turn.
  void Run(std::function<void(RedisClient&)> fn);

  // Sends `argv` through Run: on a loop, `done` runs later on that same loop; elsewhere, on the
  // loop the command was posted to. Never calls `done` from inside Command.
  void Command(std::vector<std::string> argv, RedisClient::Callback done);

  // Adds `hook` to every client (see RedisClient::AddReadyHook). Call before Start().
  void AddReadyHook(std::function<void(RedisClient&)> hook);

  // Whether any client is connected. Safe from any thread.
  bool connected() const;

  // The clients, one per loop, in the order of the loops given.
  const std::vector<std::unique_ptr<RedisClient>>& clients() const { return clients_; }

 private:
  std::vector<std::unique_ptr<RedisClient>> clients_;
  std::atomic<std::size_t> next_{0};
};

}  // namespace megaserve::cache
