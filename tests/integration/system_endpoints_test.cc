// The operational endpoints over real sockets: /healthz, /readyz, /metrics, /v1/status and
// /openapi.json.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <cstdio>
#include <fstream>
#include <set>

#include "metrics/process.h"
#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;

TEST(SystemEndpointsTest, ReadyzFollowsReadiness) {
  TestServer server;
  server.Start();
  RawClient c(server.port());
  auto r = c.Roundtrip(Get("/readyz"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  server.server().set_ready(false);
  r = c.Roundtrip(Get("/readyz"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->Header("retry-after"), "1");
  EXPECT_EQ(r->body, R"({"status":"starting"})");
  // Liveness does not depend on readiness.
  r = c.Roundtrip(Get("/healthz"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(SystemEndpointsTest, MetricsCountWhatWasServed) {
  TestServer server;
  server.Start();
  RawClient c(server.port());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(c.Roundtrip(Get("/healthz")));
  ASSERT_TRUE(c.Roundtrip(Get("/missing")));
  ASSERT_TRUE(c.Roundtrip("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  auto r = c.Roundtrip(Get("/metrics"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->Header("content-type"), HasSubstr("text/plain; version=0.0.4"));
  const std::string& m = r->body;
  EXPECT_THAT(
      m, HasSubstr(R"(megaserve_http_requests_total{route="/healthz",method="GET",code="200"} 3)"));
  EXPECT_THAT(
      m,
      HasSubstr(R"(megaserve_http_requests_total{route="unmatched",method="GET",code="404"} 1)"));
  EXPECT_THAT(
      m,
      HasSubstr(R"(megaserve_http_requests_total{route="/healthz",method="POST",code="405"} 1)"));
  EXPECT_THAT(m, HasSubstr(R"(megaserve_http_request_duration_seconds_count{route="/healthz"} 4)"));
  // The scrape itself is in flight while the text is produced.
  EXPECT_THAT(m, HasSubstr("megaserve_http_requests_in_flight 1"));
  EXPECT_THAT(m, HasSubstr("megaserve_http_connections_open 1"));
}

TEST(SystemEndpointsTest, MetricsPassPromtool) {
  TestServer server;
  metrics::RegisterProcessMetrics(server.registry);
  server.Start();
  RawClient c(server.port());
  ASSERT_TRUE(c.Roundtrip(Get("/v1/status")));
  auto r = c.Roundtrip(Get("/metrics"));
  ASSERT_TRUE(r);
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes",
                           "process_open_fds", "process_start_time_seconds"}) {
    EXPECT_THAT(r->body, HasSubstr(name));
  }
  std::string path = ::testing::TempDir() + "/metrics.txt";
  std::ofstream(path) << r->body;
  std::string cmd = "promtool check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "");
}

TEST(SystemEndpointsTest, MetricsBearerToken) {
  auto config = TestConfig();
  config.metrics.bearer_token = "s3cret-token";
  TestServer server(config);
  server.Start();
  RawClient c(server.port());
  auto r = c.Roundtrip(Get("/metrics"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(r->Header("www-authenticate"), "Bearer");
  r = c.Roundtrip(Get("/metrics", "Authorization: Bearer wrong-token!\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = c.Roundtrip(Get("/metrics", "Authorization: Bearer s3cret-token\r\n"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
}

TEST(SystemEndpointsTest, StatusIsAboutOneKilobyteAndBuiltOncePerTtl) {
  TestServer server;
  server.Start();
  RawClient c(server.port());
  std::string first;
  for (int i = 0; i < 20; ++i) {
    auto r = c.Roundtrip(Get("/v1/status"));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200);
    if (i == 0) first = r->body;
    EXPECT_EQ(r->body, first);  // cached: even uptime does not move
  }
  EXPECT_EQ(server.status().builds(), 1u);
  rapidjson::Document d;
  d.Parse(first.c_str());
  ASSERT_FALSE(d.HasParseError());
  EXPECT_STREQ(d["service"].GetString(), "megaserve");
  EXPECT_TRUE(d["version"].IsString());
  EXPECT_TRUE(d["uptime_seconds"].IsNumber());
  EXPECT_TRUE(d["roles"].IsArray());
  EXPECT_TRUE(d["build"]["commit"].IsString());
  EXPECT_EQ(d["server"]["io_threads"].GetUint(), 2u);
  EXPECT_GT(first.size(), 800u);
  EXPECT_LT(first.size(), 2048u);
}

TEST(SystemEndpointsTest, OpenApiDescribesEveryRoute) {
  TestServer server;
  server.Start();
  RawClient c(server.port());
  auto r = c.Roundtrip(Get("/openapi.json"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  rapidjson::Document d;
  d.Parse(r->body.c_str());
  ASSERT_FALSE(d.HasParseError());
  EXPECT_STREQ(d["openapi"].GetString(), "3.1.0");
  std::set<std::string> documented;
  for (auto& p : d["paths"].GetObject()) documented.insert(p.name.GetString());
  std::set<std::string> served;
  for (const auto& route : server.router().routes()) served.insert(route->pattern);
  EXPECT_EQ(documented, served);
  // And every documented operation exists with the documented method.
  for (const auto& route : server.router().routes()) {
    const auto& ops = d["paths"][route->pattern.c_str()];
    for (std::size_t m = 0; m < net::kMethodCount; ++m) {
      auto method = static_cast<net::Method>(m);
      if (method == net::Method::kHead || method == net::Method::kOther) continue;
      std::string lower(net::MethodName(method));
      for (auto& ch : lower) ch = static_cast<char>(std::tolower(ch));
      EXPECT_EQ(route->Handles(method), ops.HasMember(lower.c_str()))
          << route->pattern << " " << lower;
    }
  }
}

}  // namespace
}  // namespace megaserve::testing
