#include "core/config_tables.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace megaserve::core {
namespace {

using ::testing::HasSubstr;

Result<LoadedConfig> LoadText(const std::string& content) {
  static int counter = 0;
  std::string path = (std::filesystem::temp_directory_path() /
                      ("megaserve_tables_test_" + std::to_string(getpid()) + "_" +
                       std::to_string(counter++) + ".toml"))
                         .string();
  std::ofstream(path) << content;
  auto loaded = LoadConfig({.file = path});
  std::filesystem::remove(path);
  return loaded;
}

TEST(ConfigTablesTest, RoutesAndUpstreamsAreRead) {
  auto loaded = LoadText(R"(
[[routes]]
pattern = "/v1/forecasts/{symbol}"
filters = ["auth", "rate_limit", "cache", "proxy"]
scope = "forecasts"
rate_limit = "100/10s"
cache_ttl = "5m"
stale_while_revalidate = "30s"
stale_if_error = 600
vary = ["Accept"]
upstream = "forecasters"
timeout = "2s"

[[upstreams]]
name = "forecasters"
targets = ["http://10.0.0.5:8081", "http://10.0.0.6:8081"]
balance = "round_robin"
eject_after_5xx = 3
retry_budget = 0.1
)");
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  const Config& c = loaded->config;
  ASSERT_EQ(c.routes.size(), 1u);
  const RouteConfig& r = c.routes[0];
  EXPECT_EQ(r.pattern, "/v1/forecasts/{symbol}");
  EXPECT_EQ(r.filters.size(), 4u);
  EXPECT_EQ(r.rate_limit, 100);
  EXPECT_EQ(r.rate_period, std::chrono::seconds(10));
  EXPECT_EQ(r.cache_ttl, std::chrono::minutes(5));
  EXPECT_EQ(r.stale_if_error, std::chrono::minutes(10));
  EXPECT_EQ(r.vary, std::vector<std::string>{"accept"});
  EXPECT_EQ(r.timeout, std::chrono::seconds(2));
  EXPECT_THAT(r.origin, HasSubstr(":2"));
  ASSERT_EQ(c.upstreams.size(), 1u);
  EXPECT_EQ(c.upstreams[0].targets.size(), 2u);
  EXPECT_EQ(c.upstreams[0].balance, "round_robin");
  EXPECT_EQ(c.upstreams[0].eject_after_5xx, 3);
  EXPECT_DOUBLE_EQ(c.upstreams[0].retry_budget, 0.1);
}

TEST(ConfigTablesTest, ProblemsNameTheTableKeyAndLine) {
  auto loaded = LoadText(R"([[routes]]
pattern = "/v1/status"
filters = ["auth", "cahce"]

[[routes]]
pattern = "/v1/x"
cache_ttl = "soon"
colour = "blue"

[[upstreams]]
name = "a"
targets = ["10.0.0.1:80"]
)");
  ASSERT_FALSE(loaded.ok());
  std::string m = loaded.status().message();
  EXPECT_THAT(m, HasSubstr("routes[0]: filters: unknown filter \"cahce\""));
  EXPECT_THAT(m, HasSubstr("routes[1]: cache_ttl:"));
  EXPECT_THAT(m, HasSubstr("unknown key \"colour\""));
  EXPECT_THAT(m, HasSubstr("upstreams[0]: targets: \"10.0.0.1:80\" is not an http:// URL"));
  EXPECT_THAT(m, HasSubstr(":7:"));  // the line of cache_ttl
}

TEST(ConfigTablesTest, RoutesMustBeAnArrayOfTables) {
  auto loaded = LoadText("routes = \"all\"\n");
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("expected [[routes]] tables"));
}

TEST(ConfigTablesTest, RatesParse) {
  auto r = ParseRate("600/min");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, 600);
  EXPECT_EQ(r->second, std::chrono::minutes(1));
  EXPECT_EQ(ParseRate("5/s")->second, std::chrono::seconds(1));
  EXPECT_EQ(ParseRate("100/10s")->second, std::chrono::seconds(10));
  EXPECT_EQ(ParseRate(" 7 / h ")->second, std::chrono::hours(1));
  EXPECT_FALSE(ParseRate("600").ok());
  EXPECT_FALSE(ParseRate("0/s").ok());
  EXPECT_FALSE(ParseRate("-1/s").ok());
  EXPECT_FALSE(ParseRate("10/fortnight").ok());
}

TEST(ConfigTablesTest, GatewayKeysValidate) {
  auto bad = LoadConfig({.overrides = {{"gateway.rate_limit", "lots", "flag --set"},
                                       {"redis.url", "http://x", "flag --set"},
                                       {"gateway.auth", "maybe", "flag --set"}}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("gateway.rate_limit"));
  EXPECT_THAT(bad.status().message(), HasSubstr("redis.url"));
  EXPECT_THAT(bad.status().message(), HasSubstr("gateway.auth"));
}

}  // namespace
}  // namespace megaserve::core
