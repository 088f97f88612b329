#include "cache/redis_client.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cache/redis_test_util.h"
#include "metrics/registry.h"

namespace megaserve::cache {
namespace {

using namespace std::chrono_literals;
using testing::LoopThread;
using testing::OwnRedisServer;
using testing::UniqueName;
using testing::WaitFor;

// A minimal RESP server on loopback, one connection at a time: answers PING with PONG at once and
// withholds the replies to every other command until `hold_until` of them have arrived (0: never
// replies), then answers the i-th with the integer i.
class FakeRedis {
 public:
  explicit FakeRedis(int hold_until) : hold_until_(hold_until) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listen_fd_, 8);
    socklen_t len = sizeof(addr);
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { Serve(); });
  }
  ~FakeRedis() {
    stop_ = true;
    thread_.join();
    close(listen_fd_);
  }

  std::string Url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
  int accepted() const { return accepted_; }
  // recv() calls it took for the first `hold_until` commands to arrive; -1 before they have.
  int reads_for_batch() const { return reads_for_batch_; }

 private:
  // Removes one complete RESP command from the front of `buf`; its first argument in `name`.
  static bool TakeCommand(std::string& buf, std::string& name) {
    std::size_t pos = 0;
    auto line = [&](std::string& out) {
      std::size_t end = buf.find("\r\n", pos);
      if (end == std::string::npos) return false;
      out = buf.substr(pos, end - pos);
      pos = end + 2;
      return true;
    };
    std::string header;
    if (!line(header) || header.empty() || header[0] != '*') return false;
    int n = std::stoi(header.substr(1));
    for (int i = 0; i < n; ++i) {
      std::string bulk;
      if (!line(bulk)) return false;
      std::size_t len = std::stoul(bulk.substr(1));
      if (buf.size() < pos + len + 2) return false;
      if (i == 0) name = buf.substr(pos, len);
      pos += len + 2;
    }
    buf.erase(0, pos);
    return true;
  }

  void Serve() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      int fd = accept(listen_fd_, nullptr, nullptr);
      if (fd < 0) continue;
      ++accepted_;
      Handle(fd);
      close(fd);
    }
  }

  void Handle(int fd) {
    std::string buf;
    int held = 0, reads = 0;
    while (!stop_) {
      pollfd p{fd, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      char chunk[65536];
      ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) return;  // the client hung up
      buf.append(chunk, n);
      bool counted = false;
      std::string name, out;
      while (TakeCommand(buf, name)) {
        if (name == "PING") {
          out += "+PONG\r\n";
          continue;
        }
        if (!counted) {
          ++reads;
          counted = true;
        }
        if (++held == hold_until_) {
          reads_for_batch_ = reads;
          for (int i = 1; i <= held; ++i) out += ":" + std::to_string(i) + "\r\n";
        }
      }
      if (!out.empty()) send(fd, out.data(), out.size(), MSG_NOSIGNAL);
    }
  }

  const int hold_until_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::atomic<int> reads_for_batch_{-1};
  std::thread thread_;
};

// One client on its own loop thread, created, started and destroyed on that loop.
class ClientFixture {
 public:
  ClientFixture(RedisOptions options, metrics::Registry* registry, bool start = true) {
    loop_.Run([&] {
      client_ = std::make_unique<RedisClient>(loop_.ioc(), std::move(options), registry);
      if (start) client_->Start();
    });
  }
  ~ClientFixture() {
    loop_.Run([&] { client_.reset(); });
  }

  RedisClient& client() { return *client_; }
  LoopThread& loop() { return loop_; }
  // Destroys the client on its loop.
  void Destroy() {
    loop_.Run([&] { client_.reset(); });
  }
  bool WaitConnected(std::chrono::milliseconds timeout = 5s) {
    return WaitFor([&] { return client_->connected(); }, timeout);
  }
  // Sends `argv` from the test thread and waits for the result.
  core::Result<RedisReply> Call(std::vector<std::string> argv) {
    return client_->Command(std::move(argv)).get();
  }

 private:
  LoopThread loop_;
  std::unique_ptr<RedisClient> client_;
};

RedisOptions OptionsFor(std::string url) {
  RedisOptions o;
  o.url = std::move(url);
  return o;
}

double ErrorCount(metrics::Registry& registry, std::string_view kind) {
  return static_cast<double>(registry
                                 .AddCounter("megaserve_redis_errors_total",
                                             "Redis failures by kind: connect, handshake, io "
                                             "(connection lost), timeout, reply (error reply), "
                                             "unavailable (command refused while disconnected).",
                                             {"kind"})
                                 .WithLabels({kind})
                                 .Value());
}

TEST(ParseRedisUrlTest, ParsesAllParts) {
  auto a = ParseRedisUrl("redis://:s3cret@cache.internal:6380/2");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->host, "cache.internal");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->user, "");
  EXPECT_EQ(a->password, "s3cret");
  EXPECT_EQ(a->db, 2);

  auto b = ParseRedisUrl("redis://localhost");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->host, "localhost");
  EXPECT_EQ(b->port, 6379);
  EXPECT_EQ(b->db, 0);
  EXPECT_EQ(b->password, "");

  auto c = ParseRedisUrl("redis://gateway:pw@[::1]:7000/");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->host, "::1");
  EXPECT_EQ(c->port, 7000);
  EXPECT_EQ(c->user, "gateway");
  EXPECT_EQ(c->password, "pw");
}

TEST(ParseRedisUrlTest, RejectsMalformed) {
  for (std::string_view bad :
       {"http://host:6379", "redis://", "redis://host:0", "redis://host:99999", "redis://host:port",
        "redis://host/db", "redis://host/-1", "redis://[::1"}) {
    EXPECT_FALSE(ParseRedisUrl(bad).ok()) << bad;
  }
}

TEST(RedisClientTest, FailsFastAndNotInlineWhenNotConnected) {
  metrics::Registry registry;
  // Nothing listens on this port, so the client never connects.
  ClientFixture f(OptionsFor("redis://127.0.0.1:" + std::to_string(testing::FreePort())),
                  &registry);
  std::promise<core::Status> result;
  bool returned = false, inline_call = false;
  auto started = std::chrono::steady_clock::now();
  f.loop().Run([&] {
    f.client().Command({"PING"}, [&](core::Result<RedisReply> r) {
      inline_call = !returned;
      result.set_value(r.status());
    });
    returned = true;
  });
  core::Status s = result.get_future().get();
  EXPECT_EQ(s.code(), core::StatusCode::kUnavailable) << s.ToString();
  EXPECT_FALSE(inline_call);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 500ms);
  EXPECT_FALSE(f.client().connected());
  EXPECT_TRUE(WaitFor([&] { return ErrorCount(registry, "connect") >= 1; }));
  EXPECT_GE(ErrorCount(registry, "unavailable"), 1);
}

// hiredis writes without MSG_NOSIGNAL, so a client must leave the process ignoring SIGPIPE: a
// write to a Redis that just died would otherwise end the process
// (GatewayRedisTest.RedisKilledUnderLoad... hits that race now and then).
TEST(RedisClientTest, MakingAClientTurnsSigpipeOff) {
  metrics::Registry registry;
  ClientFixture f(OptionsFor("redis://127.0.0.1:" + std::to_string(testing::FreePort())),
                  &registry);
  struct sigaction current {};
  ASSERT_EQ(sigaction(SIGPIPE, nullptr, &current), 0);
  EXPECT_EQ(current.sa_handler, SIG_IGN);
}

TEST(RedisClientTest, MalformedUrlFailsEveryCommand) {
  ClientFixture f(OptionsFor("redis://host:notaport"), nullptr);
  auto r = f.Call({"PING"});
  EXPECT_EQ(r.status().code(), core::StatusCode::kInvalidArgument);
}

TEST(RedisClientTest, CommandsAndReplyTypes) {
  MEGASERVE_REQUIRE_REDIS(url);
  metrics::Registry registry;
  ClientFixture f(OptionsFor(url), &registry);
  ASSERT_TRUE(f.WaitConnected());
  std::string key = UniqueName("types");

  auto set = f.Call({"SET", key, "hello", "PX", "10000"});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->type, RedisReply::Type::kStatus);
  EXPECT_EQ(set->str, "OK");

  auto get = f.Call({"GET", key});
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->type, RedisReply::Type::kString);
  EXPECT_EQ(get->str, "hello");

  auto missing = f.Call({"GET", key + ":missing"});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->is_nil());

  auto pushed = f.Call({"RPUSH", key + ":list", "a", "b", "c"});
  ASSERT_TRUE(pushed.ok());
  EXPECT_EQ(pushed->type, RedisReply::Type::kInteger);
  EXPECT_EQ(pushed->integer, 3);
  auto range = f.Call({"LRANGE", key + ":list", "0", "-1"});
  ASSERT_TRUE(range.ok());
  ASSERT_EQ(range->type, RedisReply::Type::kArray);
  ASSERT_EQ(range->elements.size(), 3u);
  EXPECT_EQ(range->elements[2].str, "c");

  EXPECT_EQ(f.Call({"DEL", key, key + ":list"})->integer, 2);
  EXPECT_EQ(registry.AddCounter("megaserve_redis_commands_total", "Redis commands issued.")
                .WithLabels({})
                .Value(),
            6u);
  EXPECT_EQ(registry
                .AddGauge("megaserve_redis_connected",
                          "Redis connections up and ready (one per I/O loop when healthy).")
                .WithLabels({})
                .Value(),
            1.0);
}

TEST(RedisClientTest, ErrorRepliesBecomeStatusesAndTheConnectionStaysUsable) {
  MEGASERVE_REQUIRE_REDIS(url);
  metrics::Registry registry;
  ClientFixture f(OptionsFor(url), &registry);
  ASSERT_TRUE(f.WaitConnected());
  std::string key = UniqueName("err");
  ASSERT_TRUE(f.Call({"SET", key, "not a number", "PX", "10000"}).ok());

  auto incr = f.Call({"INCR", key});
  ASSERT_FALSE(incr.ok());
  EXPECT_EQ(incr.status().code(), core::StatusCode::kInternal);
  EXPECT_EQ(incr.status().message().rfind("ERR value is not an integer", 0), 0u)
      << incr.status().message();

  auto unknown = f.Call({"NO-SUCH-COMMAND"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown command"), std::string::npos);

  auto sub = f.Call({"SUBSCRIBE", "x"});
  EXPECT_EQ(sub.status().code(), core::StatusCode::kInvalidArgument);

  EXPECT_EQ(f.Call({"GET", key})->str, "not a number");
  EXPECT_EQ(ErrorCount(registry, "reply"), 2);
  EXPECT_TRUE(f.client().connected());
}

TEST(RedisClientTest, ValuesAreBinarySafe) {
  MEGASERVE_REQUIRE_REDIS(url);
  ClientFixture f(OptionsFor(url), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  std::string key = UniqueName("bin") + std::string("\0\r\n", 3);
  std::string value;
  for (int i = 0; i < 256; ++i) value.push_back(static_cast<char>(i));
  value += std::string("\r\n$5\r\n*1\r\n\0", 12);
  ASSERT_TRUE(f.Call({"SET", key, value, "PX", "10000"}).ok());
  auto get = f.Call({"GET", key});
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->str, value);
  EXPECT_EQ(f.Call({"STRLEN", key})->integer, static_cast<int64_t>(value.size()));
}

TEST(RedisClientTest, LongArgumentLists) {
  MEGASERVE_REQUIRE_REDIS(url);
  ClientFixture f(OptionsFor(url), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  std::string key = UniqueName("long");
  std::vector<std::string> argv = {"RPUSH", key};
  for (int i = 0; i < 40; ++i) argv.push_back("v" + std::to_string(i));
  auto pushed = f.Call(argv);
  ASSERT_TRUE(pushed.ok()) << pushed.status().ToString();
  EXPECT_EQ(pushed->integer, 40);
  auto range = f.Call({"LRANGE", key, "0", "-1"});
  ASSERT_EQ(range->elements.size(), 40u);
  EXPECT_EQ(range->elements[39].str, "v39");
  f.Call({"DEL", key});
}

TEST(RedisClientTest, ManyCommandsInOneTurnArePipelinedInOrder) {
  MEGASERVE_REQUIRE_REDIS(url);
  ClientFixture f(OptionsFor(url), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  std::string key = UniqueName("pipe");
  constexpr int kCommands = 2000;
  std::vector<int64_t> seen;
  std::promise<void> all;
  f.loop().Run([&] {
    for (int i = 0; i < kCommands; ++i) {
      f.client().Command({"INCR", key}, [&](core::Result<RedisReply> r) {
        seen.push_back(r.ok() ? r->integer : -1);
        if (seen.size() == kCommands) all.set_value();
      });
    }
    EXPECT_TRUE(seen.empty());  // nothing completes inside the turn that issued it
  });
  ASSERT_EQ(all.get_future().wait_for(5s), std::future_status::ready);
  for (int i = 0; i < kCommands; ++i) ASSERT_EQ(seen[i], i + 1) << "reply " << i;
  f.Call({"DEL", key});
}

TEST(RedisClientTest, CommandsOfOneTurnLeaveInOneWriteBeforeAnyReply) {
  // The fake server answers only once it holds all of them: without pipelining this hangs.
  constexpr int kCommands = 50;
  FakeRedis server(kCommands);
  ClientFixture f(OptionsFor(server.Url()), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  std::vector<int64_t> seen;
  std::promise<void> all;
  f.loop().Run([&] {
    for (int i = 0; i < kCommands; ++i) {
      f.client().Command({"ECHO", "x"}, [&](core::Result<RedisReply> r) {
        seen.push_back(r.ok() ? r->integer : -1);
        if (seen.size() == kCommands) all.set_value();
      });
    }
  });
  ASSERT_EQ(all.get_future().wait_for(5s), std::future_status::ready);
  for (int i = 0; i < kCommands; ++i) EXPECT_EQ(seen[i], i + 1);
  EXPECT_EQ(server.reads_for_batch(), 1);
}

TEST(RedisClientTest, UnansweredCommandTimesOutAndTheClientReconnects) {
  FakeRedis server(/*hold_until=*/0);  // never answers anything but PING
  metrics::Registry registry;
  RedisOptions options = OptionsFor(server.Url());
  options.command_timeout = 200ms;
  ClientFixture f(options, &registry);
  ASSERT_TRUE(f.WaitConnected());
  EXPECT_EQ(server.accepted(), 1);

  auto started = std::chrono::steady_clock::now();
  auto r = f.Call({"GET", "k"});
  auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(r.status().code(), core::StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_GE(elapsed, 190ms);
  EXPECT_LT(elapsed, 1500ms);
  EXPECT_EQ(ErrorCount(registry, "timeout"), 1);

  // The connection was dropped and is made again.
  EXPECT_TRUE(WaitFor([&] { return server.accepted() == 2 && f.client().connected(); }));
  EXPECT_EQ(registry
                .AddCounter("megaserve_redis_reconnects_total",
                            "Redis connections re-established after one was lost.")
                .WithLabels({})
                .Value(),
            1u);
}

TEST(RedisClientTest, TimeoutAgainstRealServer) {
  MEGASERVE_REQUIRE_REDIS(url);
  RedisOptions options = OptionsFor(url);
  options.command_timeout = 150ms;
  ClientFixture f(options, nullptr);
  ASSERT_TRUE(f.WaitConnected());
  // BLPOP on an empty list makes the server sit on the reply for two seconds.
  auto r = f.Call({"BLPOP", UniqueName("blpop"), "2"});
  EXPECT_EQ(r.status().code(), core::StatusCode::kDeadlineExceeded) << r.status().ToString();
  ASSERT_TRUE(f.WaitConnected());
  EXPECT_TRUE(f.Call({"PING"}).ok());
}

TEST(RedisClientTest, DestroyingTheClientCancelsCommandsInFlight) {
  MEGASERVE_REQUIRE_REDIS(url);
  ClientFixture f(OptionsFor(url), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  std::promise<core::Status> result;
  f.loop().Run([&] {
    f.client().Command({"BLPOP", UniqueName("blpop"), "2"},
                       [&](core::Result<RedisReply> r) { result.set_value(r.status()); });
  });
  std::this_thread::sleep_for(20ms);
  f.Destroy();
  auto future = result.get_future();
  ASSERT_EQ(future.wait_for(1s), std::future_status::ready);
  EXPECT_EQ(future.get().code(), core::StatusCode::kCanceled);
}

TEST(RedisClientTest, AuthAndSelectAfterConnect) {
  OwnRedisServer server("--requirepass s3cret");
  ASSERT_TRUE(server.Start());
  {
    ClientFixture f(OptionsFor(server.Url(3, "s3cret")), nullptr);
    ASSERT_TRUE(f.WaitConnected());
    ASSERT_TRUE(f.Call({"SET", "k", "in db 3"}).ok());
    ClientFixture db0(OptionsFor(server.Url(0, "s3cret")), nullptr);
    ASSERT_TRUE(db0.WaitConnected());
    EXPECT_TRUE(db0.Call({"GET", "k"})->is_nil());
    EXPECT_EQ(f.Call({"GET", "k"})->str, "in db 3");
  }
  metrics::Registry registry;
  ClientFixture wrong(OptionsFor(server.Url(0, "wrong")), &registry);
  EXPECT_TRUE(WaitFor([&] { return ErrorCount(registry, "handshake") >= 1; }));
  EXPECT_FALSE(wrong.client().connected());
  EXPECT_EQ(wrong.Call({"PING"}).status().code(), core::StatusCode::kUnavailable);
}

TEST(RedisClientTest, FailsFastWhileTheServerIsDownAndReconnectsWhenItIsBack) {
  OwnRedisServer server;
  ASSERT_TRUE(server.Start());
  metrics::Registry registry;
  ClientFixture f(OptionsFor(server.Url()), &registry);
  ASSERT_TRUE(f.WaitConnected());
  ASSERT_TRUE(f.Call({"SET", "k", "v"}).ok());

  server.Kill();
  ASSERT_TRUE(WaitFor([&] { return !f.client().connected(); }));
  EXPECT_EQ(ErrorCount(registry, "io"), 1);
  for (int i = 0; i < 5; ++i) {
    auto started = std::chrono::steady_clock::now();
    auto r = f.Call({"GET", "k"});
    EXPECT_EQ(r.status().code(), core::StatusCode::kUnavailable) << r.status().ToString();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 50ms);
    std::this_thread::sleep_for(100ms);  // across several reconnection attempts
  }
  EXPECT_GE(ErrorCount(registry, "connect"), 1);

  ASSERT_TRUE(server.Start());
  ASSERT_TRUE(f.WaitConnected(6s));
  auto r = f.Call({"SET", "k", "again"});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(registry
                .AddCounter("megaserve_redis_reconnects_total",
                            "Redis connections re-established after one was lost.")
                .WithLabels({})
                .Value(),
            1u);
  EXPECT_EQ(registry
                .AddGauge("megaserve_redis_connected",
                          "Redis connections up and ready (one per I/O loop when healthy).")
                .WithLabels({})
                .Value(),
            1.0);
}

TEST(RedisClientTest, StopDisconnectsAndStartConnectsAgain) {
  MEGASERVE_REQUIRE_REDIS(url);
  ClientFixture f(OptionsFor(url), nullptr);
  ASSERT_TRUE(f.WaitConnected());
  f.loop().Run([&] { f.client().Stop(); });
  EXPECT_FALSE(f.client().connected());
  EXPECT_EQ(f.Call({"PING"}).status().code(), core::StatusCode::kUnavailable);
  f.loop().Run([&] { f.client().Start(); });
  ASSERT_TRUE(f.WaitConnected());
  EXPECT_TRUE(f.Call({"PING"}).ok());
}

TEST(RedisPoolTest, OneClientPerLoop) {
  MEGASERVE_REQUIRE_REDIS(url);
  LoopThread a, b;
  auto pool = std::make_unique<RedisPool>(std::vector<boost::asio::io_context*>{&a.ioc(), &b.ioc()},
                                          OptionsFor(url), nullptr);
  EXPECT_EQ(pool->Current(), nullptr);
  pool->Start();
  ASSERT_TRUE(
      WaitFor([&] { return pool->clients()[0]->connected() && pool->clients()[1]->connected(); }));
  RedisClient* on_a = nullptr;
  RedisClient* on_b = nullptr;
  a.Run([&] { on_a = &pool->ForCurrentThread(); });
  b.Run([&] { on_b = &pool->ForCurrentThread(); });
  EXPECT_EQ(on_a, pool->clients()[0].get());
  EXPECT_EQ(on_b, pool->clients()[1].get());

  // Off the loops, commands are posted to one of them and complete there.
  for (int i = 0; i < 4; ++i) {
    std::promise<std::thread::id> ran_on;
    pool->Command({"PING"}, [&](core::Result<RedisReply> r) {
      EXPECT_TRUE(r.ok());
      ran_on.set_value(std::this_thread::get_id());
    });
    auto id = ran_on.get_future().get();
    EXPECT_TRUE(id == a.thread_id() || id == b.thread_id());
  }
  // As the pool's owner does: stop the loops, then destroy the pool.
  a.Stop();
  b.Stop();
  pool.reset();
}

}  // namespace
}  // namespace megaserve::cache
