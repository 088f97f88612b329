// The gateway over real sockets: the response cache under a stampede and with expiring entries,
// API keys, rate limits (in-process and in Redis), Redis dying under load, and two gateway
// processes sharing the store.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "gateway/api_keys.h"
#include "store/test_util.h"
#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// An origin route that counts its calls and answers after `delay` from another thread.
struct CountingOrigin {
  std::atomic<int> calls{0};
  std::atomic<int> status{200};
  std::chrono::milliseconds delay{0};

  void Register(net::Router& router, const std::string& pattern) {
    router.AddAsync(net::Method::kGet, pattern, [this](const net::Request&, net::Reply reply) {
      int n = ++calls;
      int code = status.load();
      std::thread([this, n, code, reply = std::move(reply)] {
        std::this_thread::sleep_for(delay);
        net::Response r = net::JsonResponse(code, "{\"call\":" + std::to_string(n) + "}");
        reply(std::move(r));
      }).detach();
    });
  }
};

core::RouteConfig Route(std::string pattern, std::vector<std::string> filters) {
  core::RouteConfig r;
  r.pattern = std::move(pattern);
  r.filters = std::move(filters);
  return r;
}

std::string RedisUrl() {
  const char* url = std::getenv("TEST_REDIS_URL");
  return url && *url ? url : "";
}

#define REQUIRE_REDIS(var)                                                          \
  std::string var = RedisUrl();                                                     \
  if (var.empty()) {                                                                \
    const char* ci = std::getenv("CI");                                             \
    if (ci && std::string(ci) == "true") GTEST_FAIL() << "TEST_REDIS_URL is unset"; \
    GTEST_SKIP() << "TEST_REDIS_URL is unset; run through scripts/test.sh";         \
  }

// The sum of a metric's samples whose line starts with `prefix` in a /metrics exposition.
double MetricSum(unsigned short port, const std::string& prefix);

// Counts the 200s in a burst of `n` sequential requests on one connection.
int Burst(unsigned short port, const std::string& path, int n, const std::string& headers = "",
          std::vector<RawResponse>* out = nullptr) {
  RawClient c(port);
  int ok = 0;
  for (int i = 0; i < n; ++i) {
    auto r = c.Roundtrip(Get(path, headers));
    if (!r) return -1;
    if (r->status == 200) ++ok;
    if (out) out->push_back(*r);
  }
  return ok;
}

TEST(GatewayCacheTest, ThousandConcurrentIdenticalMissesMakeOneOriginCall) {
  core::Config config = TestConfig();
  core::RouteConfig route = Route("/test/slow", {"cache"});
  route.cache_ttl = 60s;
  config.routes.push_back(route);
  config.server.header_timeout = 10s;
  TestServer server(config);
  CountingOrigin origin;
  origin.delay = 500ms;
  origin.Register(server.router(), "/test/slow");
  server.Start();

  constexpr int kClients = 1000;
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawClient>(server.port(), 15s));
    ASSERT_TRUE(clients.back()->connected()) << i;
  }
  for (auto& c : clients) ASSERT_TRUE(c->Send(Get("/test/slow?b=2&a=1")));
  int ok = 0, collapsed = 0;
  for (auto& c : clients) {
    auto r = c->Read();
    ASSERT_TRUE(r.has_value());
    if (r->status == 200 && r->body == "{\"call\":1}") ++ok;
    if (r->Header("cache-status").find("collapsed") != std::string::npos) ++collapsed;
  }
  EXPECT_EQ(origin.calls.load(), 1);
  EXPECT_EQ(ok, kClients);
  EXPECT_GT(collapsed, 0);
  // Same key with the query in another order: a hit.
  auto again = RawClient(server.port()).Roundtrip(Get("/test/slow?a=1&b=2"));
  ASSERT_TRUE(again);
  EXPECT_THAT(again->Header("cache-status"), HasSubstr("hit"));
  EXPECT_EQ(origin.calls.load(), 1);
}

TEST(GatewayCacheTest, EntriesExpireAndStaleOnesServeErrors) {
  core::Config config = TestConfig();
  core::RouteConfig route = Route("/test/ttl", {"cache"});
  route.cache_ttl = 600ms;
  route.stale_if_error = 30s;
  config.routes.push_back(route);
  TestServer server(config);
  CountingOrigin origin;
  origin.Register(server.router(), "/test/ttl");
  server.Start();

  RawClient c(server.port());
  auto first = c.Roundtrip(Get("/test/ttl"));
  ASSERT_TRUE(first);
  EXPECT_THAT(first->Header("cache-status"), HasSubstr("fwd=miss"));
  auto hit = c.Roundtrip(Get("/test/ttl"));
  ASSERT_TRUE(hit);
  EXPECT_THAT(hit->Header("cache-status"), HasSubstr("hit"));
  EXPECT_EQ(hit->Header("age"), "0");
  EXPECT_EQ(origin.calls.load(), 1);

  std::this_thread::sleep_for(700ms);
  auto refreshed = c.Roundtrip(Get("/test/ttl"));
  ASSERT_TRUE(refreshed);
  EXPECT_EQ(refreshed->body, "{\"call\":2}");
  EXPECT_EQ(origin.calls.load(), 2);

  // Past the TTL with the origin failing: the stale entry answers instead of the 500.
  std::this_thread::sleep_for(700ms);
  origin.status = 500;
  auto stale = c.Roundtrip(Get("/test/ttl"));
  ASSERT_TRUE(stale);
  EXPECT_EQ(stale->status, 200);
  EXPECT_EQ(stale->body, "{\"call\":2}");
  EXPECT_THAT(stale->Header("cache-status"), HasSubstr("stale"));
  EXPECT_EQ(origin.calls.load(), 3);
}

class GatewayAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = TestConfig();
    config_.gateway.auth = "required";
    core::RouteConfig route = Route("/test/jobs", {"auth", "rate_limit"});
    route.scope = "jobs";
    config_.routes.push_back(route);
    server_ = std::make_unique<TestServer>(config_);
    server_->router().Add(net::Method::kGet, "/test/jobs",
                          [](const net::Request&) { return net::JsonResponse(200, "{}"); });
    server_->Start();
  }

  std::string Token(std::string_view scopes) {
    auto bits = gateway::ParseScopes(scopes);
    EXPECT_TRUE(bits.ok());
    auto created = server_->app().keys().Create("test", *bits, 0);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created->token;
  }

  core::Config config_;
  std::unique_ptr<TestServer> server_;
};

TEST_F(GatewayAuthTest, KeysAreCheckedScopedAndRevokedWithinASecond) {
  std::string jobs = Token("jobs");
  std::string images = Token("images");
  RawClient c(server_->port());

  auto missing = c.Roundtrip(Get("/test/jobs"));
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 401);
  EXPECT_THAT(missing->body, HasSubstr("\"code\":\"missing_api_key\""));
  EXPECT_THAT(missing->Header("www-authenticate"), HasSubstr("Bearer"));

  auto wrong = c.Roundtrip(Get("/test/jobs", "Authorization: Bearer " + jobs + "x\r\n"));
  ASSERT_TRUE(wrong);
  EXPECT_EQ(wrong->status, 401);

  auto scoped = c.Roundtrip(Get("/test/jobs", "Authorization: Bearer " + images + "\r\n"));
  ASSERT_TRUE(scoped);
  EXPECT_EQ(scoped->status, 403);
  EXPECT_THAT(scoped->body, HasSubstr("jobs"));

  auto ok = c.Roundtrip(Get("/test/jobs", "Authorization: Bearer " + jobs + "\r\n"));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_THAT(ok->Header("ratelimit-policy"), HasSubstr("q="));

  // Revoked behind the gateway's back, as another process would: refused within a second.
  auto parsed = gateway::ParseToken(jobs);
  ASSERT_TRUE(parsed.ok());
  auto revoked_at = std::chrono::steady_clock::now();
  {
    gateway::ApiKeyStore other(server_->app().database());
    ASSERT_TRUE(other.Revoke(parsed->id).ok());
  }
  int status = 200;
  while (status == 200 && std::chrono::steady_clock::now() - revoked_at < 3s) {
    auto r = c.Roundtrip(Get("/test/jobs", "Authorization: Bearer " + jobs + "\r\n"));
    ASSERT_TRUE(r);
    status = r->status;
    if (status == 200) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(status, 401);
  EXPECT_LE(std::chrono::steady_clock::now() - revoked_at, 1s);
}

TEST_F(GatewayAuthTest, OnlyAHashOfTheKeyIsStored) {
  std::string token = Token("jobs,admin");
  auto parsed = gateway::ParseToken(token);
  ASSERT_TRUE(parsed.ok());
  server_->app().Shutdown();
  std::string bytes;
  for (const auto& entry : std::filesystem::directory_iterator(config_.data_dir)) {
    if (!entry.is_regular_file()) continue;
    bytes += ReadFile(entry.path().string());
  }
  ASSERT_FALSE(bytes.empty());
  EXPECT_NE(bytes.find(parsed->id), std::string::npos);      // the id is there...
  EXPECT_EQ(bytes.find(parsed->secret), std::string::npos);  // ...the secret is not
  EXPECT_EQ(bytes.find(token), std::string::npos);
}

// Rate limits: `limit` requests at once pass, the next is refused with Retry-After, and after
// one period the bucket holds `limit` again, to within one request.
void ExpectExactLimit(const std::vector<unsigned short>& ports, const std::string& path) {
  std::vector<RawResponse> responses;
  int ok = 0;
  for (std::size_t i = 0; i < 15; ++i) {
    ok += Burst(ports[i % ports.size()], path, 1, "", &responses);
  }
  // 10 at once; one more if a 200 ms emission interval passed during the burst.
  EXPECT_GE(ok, 10);
  EXPECT_LE(ok, 11);
  auto refused = std::find_if(responses.begin(), responses.end(),
                              [](const RawResponse& r) { return r.status == 429; });
  ASSERT_NE(refused, responses.end());
  // The first refusal comes right after the tenth request.
  EXPECT_EQ(std::count_if(responses.begin(), refused,
                          [](const RawResponse& r) { return r.status == 200; }),
            10);
  EXPECT_THAT(refused->body, HasSubstr("rate_limited"));
  EXPECT_FALSE(refused->Header("retry-after").empty());
  EXPECT_THAT(refused->Header("ratelimit"), HasSubstr("r=0"));
  std::this_thread::sleep_for(2s);
  ok = 0;
  for (std::size_t i = 0; i < 15; ++i) ok += Burst(ports[i % ports.size()], path, 1);
  EXPECT_GE(ok, 10);
  EXPECT_LE(ok, 11);
}

core::Config RateLimited(const std::string& redis_url) {
  core::Config config = TestConfig();
  core::RouteConfig route = Route("/test/limited", {"rate_limit"});
  route.rate_limit = 10;
  route.rate_period = 2s;
  config.routes.push_back(route);
  if (!redis_url.empty()) {
    config.redis.url = redis_url;
    config.gateway.rate_limit_store = "redis";
  }
  return config;
}

TEST(GatewayRateLimitTest, LocalLimitIsExactAtTheWindowBoundary) {
  TestServer server(RateLimited(""));
  server.router().Add(net::Method::kGet, "/test/limited",
                      [](const net::Request&) { return net::JsonResponse(200, "{}"); });
  server.Start();
  ExpectExactLimit({server.port()}, "/test/limited");
}

TEST(GatewayRateLimitTest, GlobalLimitIsSharedByTwoGatewaysThroughRedis) {
  REQUIRE_REDIS(url);
  std::vector<std::unique_ptr<TestServer>> servers;
  std::vector<unsigned short> ports;
  for (int i = 0; i < 2; ++i) {
    servers.push_back(std::make_unique<TestServer>(RateLimited(url)));
    servers.back()->router().Add(net::Method::kGet, "/test/limited",
                                 [](const net::Request&) { return net::JsonResponse(200, "{}"); });
    servers.back()->Start();
    ports.push_back(servers.back()->port());
  }
  // Each test run gets fresh buckets: the bucket is keyed by client IP and policy, so clear it.
  std::system(("redis-cli -u '" + url +
               "' --scan --pattern 'megaserve:ratelimit:*' | xargs -r redis-cli -u '" + url +
               "' del >/dev/null")
                  .c_str());
  // Until every I/O thread's Redis connection is up, checks fall back to per-process buckets.
  for (unsigned short port : ports) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (MetricSum(port, "megaserve_redis_connected") < 2 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(10ms);
    }
    ASSERT_EQ(MetricSum(port, "megaserve_redis_connected"), 2);
  }
  ExpectExactLimit(ports, "/test/limited");
}

// A redis-server of the test's own, on a free port, that the test can kill and restart.
class OwnRedis {
 public:
  OwnRedis() : dir_(FreshDataDir()) {
    port_ = FreePort();
    Start();
  }
  ~OwnRedis() { Kill(); }
  void Start() {
    std::string cmd = "redis-server --port " + std::to_string(port_) +
                      " --bind 127.0.0.1 --save '' --appendonly no --daemonize yes --dir " + dir_ +
                      " --pidfile " + dir_ + "/redis.pid --logfile " + dir_ + "/redis.log";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    for (int i = 0; i < 200; ++i) {
      if (std::system(
              ("redis-cli -p " + std::to_string(port_) + " ping >/dev/null 2>&1").c_str()) == 0) {
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
    FAIL() << "redis-server did not start";
  }
  void Kill() {
    std::string pid = ReadFile(dir_ + "/redis.pid");
    if (!pid.empty()) ::kill(std::stoi(pid), SIGKILL);
    std::filesystem::remove(dir_ + "/redis.pid");
    std::this_thread::sleep_for(50ms);
  }
  std::string url() const { return "redis://127.0.0.1:" + std::to_string(port_) + "/0"; }
  int Count(const std::string& pattern) const {
    std::string out = dir_ + "/count.txt";
    std::system(("redis-cli -p " + std::to_string(port_) + " --scan --pattern '" + pattern +
                 "' | wc -l > " + out)
                    .c_str());
    std::string n = ReadFile(out);
    return n.empty() ? 0 : std::stoi(n);
  }

 private:
  static int FreePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
  }
  std::string dir_;
  int port_ = 0;
};

double MetricSum(unsigned short port, const std::string& prefix) {
  auto r = RawClient(port).Roundtrip(Get("/metrics"));
  double sum = 0;
  if (!r) return -1;
  std::istringstream in(r->body);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

TEST(GatewayRedisTest, RedisKilledUnderLoadCostsNoErrorsAndIsUsedAgainAfterARestart) {
  OwnRedis redis;
  core::Config config = TestConfig();
  config.redis.url = redis.url();
  config.gateway.rate_limit_store = "redis";
  core::RouteConfig route = Route("/test/cached", {"rate_limit", "cache"});
  route.cache_ttl = 200ms;
  route.rate_limit = 1'000'000;
  route.rate_period = 1s;
  config.routes.push_back(route);
  TestServer server(config);
  CountingOrigin origin;
  origin.Register(server.router(), "/test/cached");
  server.Start();
  auto connected = std::chrono::steady_clock::now() + 10s;
  while (MetricSum(server.port(), "megaserve_redis_connected") < 2 &&
         std::chrono::steady_clock::now() < connected) {
    std::this_thread::sleep_for(10ms);
  }

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, errors{0}, other{0};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      RawClient c(server.port());
      for (int i = 0; !stop; ++i) {
        auto r = c.Roundtrip(Get("/test/cached?k=" + std::to_string((i * 7 + t) % 50)));
        if (!r) {
          ++other;
          return;
        }
        (r->status == 200 ? ok : r->status >= 500 ? errors : other)++;
      }
    });
  }
  std::this_thread::sleep_for(1s);
  int before_kill = ok.load();
  redis.Kill();
  std::this_thread::sleep_for(1500ms);
  int while_down = ok.load() - before_kill;
  redis.Start();
  // Every I/O thread's connection comes back.
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (MetricSum(server.port(), "megaserve_redis_connected") < 2 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(MetricSum(server.port(), "megaserve_redis_connected"), 2);
  double fallbacks = MetricSum(server.port(), "megaserve_ratelimit_fallbacks_total");
  std::this_thread::sleep_for(1s);
  // Checks go to Redis again: no more fallbacks to the local buckets.
  EXPECT_EQ(MetricSum(server.port(), "megaserve_ratelimit_fallbacks_total"), fallbacks);
  EXPECT_GE(fallbacks, 1);
  stop = true;
  for (auto& t : load) t.join();

  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(before_kill, 100);
  EXPECT_GT(while_down, 100);                      // served from L1 and the origin, limited locally
  EXPECT_GT(redis.Count("megaserve:cache:*"), 0);  // written again after the restart
}

TEST(GatewayProcessesTest, RevokedKeyIsRefusedWithinASecondByTwoGatewaysSharingTheStore) {
  MEGASERVE_REQUIRE_POSTGRES(pg_url);
  REQUIRE_REDIS(redis_url);
  store::testing::PostgresSchema schema(pg_url);
  std::vector<std::string> common = {"--set",      "store.url=" + schema.url(),
                                     "--set",      "redis.url=" + redis_url,
                                     "--data-dir", FreshDataDir()};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), common.begin(), common.end());
    return args;
  };
  Process create(with({"keys", "create", "--name", "ops", "--scopes", "admin", "--quiet"}));
  ASSERT_EQ(create.Wait(), 0) << create.Stderr();
  std::string token = create.Stdout();
  token.erase(token.find_last_not_of("\n") + 1);
  auto parsed = gateway::ParseToken(token);
  ASSERT_TRUE(parsed.ok()) << token;

  std::vector<std::unique_ptr<Process>> gateways;
  std::vector<unsigned short> ports;
  for (int i = 0; i < 2; ++i) {
    gateways.push_back(std::make_unique<Process>(
        with({"gateway", "--listen", "127.0.0.1:0", "--set", "gateway.auth=required"}),
        std::vector<std::string>{"MEGASERVE_LOG_ACCESS=false"}));
    ports.push_back(gateways.back()->WaitReady());
    ASSERT_NE(ports.back(), 0) << gateways.back()->Stderr();
  }
  std::string auth = "Authorization: Bearer " + token + "\r\n";
  for (unsigned short port : ports) {
    auto r = RawClient(port).Roundtrip(Get("/v1/admin/keys", auth));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }

  auto start = std::chrono::steady_clock::now();
  Process revoke(with({"keys", "revoke", std::string(parsed->id)}));
  ASSERT_EQ(revoke.Wait(), 0) << revoke.Stderr();
  for (unsigned short port : ports) {
    RawClient c(port);
    int status = 200;
    while (status == 200 && std::chrono::steady_clock::now() - start < 5s) {
      auto r = c.Roundtrip(Get("/v1/admin/keys", auth));
      ASSERT_TRUE(r);
      status = r->status;
      if (status == 200) std::this_thread::sleep_for(5ms);
    }
    auto took = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(status, 401);
    EXPECT_LE(took, 1s) << "port " << port;
    std::printf("revocation seen by the gateway on port %u after %lld ms\n", port,
                static_cast<long long>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  }
}

// `megaserve keys`: create prints the key once, list never shows it, revoke marks it.
TEST(GatewayBinaryTest, KeysCreateListAndRevoke) {
  std::string dir = FreshDataDir();
  Process create({"keys", "create", "--data-dir", dir, "--name", "ci", "--scopes", "jobs,images",
                  "--quota", "60", "--json"});
  ASSERT_EQ(create.Wait(), 0) << create.Stderr();
  rapidjson::Document d;
  d.Parse(create.Stdout().c_str());
  ASSERT_FALSE(d.HasParseError()) << create.Stdout();
  std::string token = d["key"].GetString();
  std::string id = d["id"].GetString();
  EXPECT_EQ(d["quota"].GetInt(), 60);
  auto parsed = gateway::ParseToken(token);
  ASSERT_TRUE(parsed.ok());

  Process list({"keys", "list", "--data-dir", dir});
  ASSERT_EQ(list.Wait(), 0) << list.Stderr();
  EXPECT_THAT(list.Stdout(), HasSubstr(id));
  EXPECT_THAT(list.Stdout(), HasSubstr("images,jobs"));
  EXPECT_EQ(list.Stdout().find(parsed->secret), std::string::npos);

  Process revoke({"keys", "revoke", "--data-dir", dir, id});
  ASSERT_EQ(revoke.Wait(), 0) << revoke.Stderr();
  EXPECT_THAT(revoke.Stdout(), HasSubstr("revoked key " + id));
  Process again({"keys", "revoke", "--data-dir", dir, "nosuchkey000"});
  EXPECT_EQ(again.Wait(), 2);
  EXPECT_THAT(again.Stderr(), HasSubstr("no API key with id"));
  Process bad({"keys", "create", "--data-dir", dir, "--name", "x", "--scopes", "everything"});
  EXPECT_EQ(bad.Wait(), 2);
  EXPECT_THAT(bad.Stderr(), HasSubstr("everything"));
}

// Beyond loopback, serve refuses to start while anyone could call it without a key.
TEST(GatewayBinaryTest, NonLoopbackListenNeedsKeysOrAnExplicitOptOut) {
  std::string dir = FreshDataDir();
  Process optional(
      {"serve", "--listen", "0.0.0.0:0", "--data-dir", dir, "--set", "gateway.auth=optional"});
  EXPECT_EQ(optional.Wait(), 2);
  EXPECT_THAT(optional.Stderr(), HasSubstr("refusing to listen on 0.0.0.0:0"));

  Process no_keys({"serve", "--listen", "0.0.0.0:0", "--data-dir", dir});
  EXPECT_EQ(no_keys.Wait(), 2);
  EXPECT_THAT(no_keys.Stderr(), HasSubstr("none exists yet"));

  Process allowed({"serve", "--listen", "0.0.0.0:0", "--data-dir", dir, "--threads", "1", "--set",
                   "gateway.allow_unauthenticated=true"});
  EXPECT_NE(allowed.WaitReady(), 0) << allowed.Stderr();
  allowed.Signal(SIGTERM);
  EXPECT_EQ(allowed.Wait(), 0);

  Process create(
      {"keys", "create", "--data-dir", dir, "--name", "ops", "--scopes", "admin", "--quiet"});
  ASSERT_EQ(create.Wait(), 0);
  Process with_key({"serve", "--listen", "0.0.0.0:0", "--data-dir", dir, "--threads", "1"});
  unsigned short port = with_key.WaitReady();
  ASSERT_NE(port, 0) << with_key.Stderr();
  auto r = RawClient(port).Roundtrip(Get("/v1/models"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);  // keys are required off loopback
  with_key.Signal(SIGTERM);
  EXPECT_EQ(with_key.Wait(), 0);
}

// megaserve gateway in front of a worker service: [[routes]] naming an upstream are proxied,
// the rest are the gateway's own.
TEST(GatewayBinaryTest, GatewayProxiesConfiguredRoutesToAWorkerService) {
  Process backend(
      {"serve", "--listen", "127.0.0.1:0", "--data-dir", FreshDataDir(), "--threads", "1"},
      {"MEGASERVE_LOG_ACCESS=false"});
  unsigned short backend_port = backend.WaitReady();
  ASSERT_NE(backend_port, 0) << backend.Stderr();
  std::string config = FreshDataDir() + "/gateway.toml";
  std::ofstream(config) << "[[upstreams]]\nname = \"workers\"\ntargets = [\"http://127.0.0.1:"
                        << backend_port
                        << "\"]\nhealth_interval = \"200ms\"\n\n[[routes]]\npattern = "
                           "\"/v1/jobs\"\nfilters = [\"rate_limit\", \"proxy\"]\nupstream = "
                           "\"workers\"\n";
  Process gw({"gateway", "--config", config, "--listen", "127.0.0.1:0", "--data-dir",
              FreshDataDir(), "--threads", "1"},
             {"MEGASERVE_LOG_ACCESS=false"});
  unsigned short port = gw.WaitReady();
  ASSERT_NE(port, 0) << gw.Stderr();

  RawClient c(port);
  std::string body = R"({"type":"noop"})";
  auto created = c.Roundtrip(
      "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\nContent-Length: " +
      std::to_string(body.size()) + "\r\n\r\n" + body);
  ASSERT_TRUE(created);
  EXPECT_EQ(created->status, 201) << created->body;
  EXPECT_THAT(created->body, HasSubstr("\"type\":\"noop\""));
  EXPECT_FALSE(created->Header("ratelimit").empty());
  // The job exists on the worker service.
  rapidjson::Document job;
  job.Parse(created->body.c_str());
  auto direct =
      RawClient(backend_port).Roundtrip(Get("/v1/jobs/" + std::string(job["id"].GetString())));
  ASSERT_TRUE(direct);
  EXPECT_EQ(direct->status, 200);

  auto status = c.Roundtrip(Get("/v1/status"));
  ASSERT_TRUE(status);
  EXPECT_THAT(status->body, HasSubstr("\"roles\":[\"gateway\"]"));
  auto not_routed = c.Roundtrip(Get("/v1/models"));
  ASSERT_TRUE(not_routed);
  EXPECT_EQ(not_routed->status, 404);

  // The worker service goes away: the gateway answers 502 JSON, not a hang.
  backend.Signal(SIGKILL);
  backend.Wait();
  auto down = RawClient(port).Roundtrip(Get("/v1/jobs"));
  ASSERT_TRUE(down);
  EXPECT_EQ(down->status, 502);
  EXPECT_THAT(down->body, HasSubstr("\"error\""));
}

}  // namespace
}  // namespace megaserve::testing
