#include "gateway/policies.h"

#include <gtest/gtest.h>

namespace megaserve::gateway {
namespace {

TEST(PoliciesTest, ExactBeatsPrefixAndPrefixBeatsDefault) {
  auto policies = DefaultPolicies();
  EXPECT_EQ(PolicyFor(policies, "/v1/models/{name}").pattern, "/v1/models/{name}");
  EXPECT_EQ(PolicyFor(policies, "/v1/jobs/{id}/events").pattern, "/v1/jobs*");
  EXPECT_EQ(PolicyFor(policies, "/v1/jobs/{id}/events").scope, "jobs");
  EXPECT_EQ(PolicyFor(policies, "/v1/something").pattern, "*");
  EXPECT_EQ(PolicyFor(policies, "/v1/something").route, "/v1/something");
  EXPECT_TRUE(PolicyFor(policies, "/healthz").filters.empty());
}

TEST(PoliciesTest, DefaultTtlsFollowTheRouteKind) {
  auto policies = DefaultPolicies();
  EXPECT_EQ(PolicyFor(policies, "/v1/status").cache_ttl, std::chrono::seconds(30));
  EXPECT_EQ(PolicyFor(policies, "/v1/forecasts/{symbol}").cache_ttl, std::chrono::minutes(5));
  EXPECT_TRUE(PolicyFor(policies, "/v1/forecasts").cache_post);
  EXPECT_FALSE(PolicyFor(policies, "/v1/models").cache_post);
  EXPECT_EQ(PolicyFor(policies, "/v1/markets/{symbol}/candles").cache_ttl,
            std::chrono::seconds(30));
  EXPECT_EQ(PolicyFor(policies, "/v1/markets/{symbol}/candles").scope, "forecasts");
  EXPECT_EQ(PolicyFor(policies, "/v1/models").cache_ttl, std::chrono::hours(1));
}

TEST(PoliciesTest, ConfiguredRoutesReplaceDefaultsAndAddNewOnes) {
  core::Config config;
  core::RouteConfig status;
  status.pattern = "/v1/status";
  status.filters = {"auth", "rate_limit", "cache"};
  status.cache_ttl = std::chrono::seconds(5);
  config.routes.push_back(status);
  core::RouteConfig longer;
  longer.pattern = "/v1/jobs/{id}*";
  longer.scope = "admin";
  config.routes.push_back(longer);
  auto policies = EffectivePolicies(config);
  RoutePolicy s = PolicyFor(policies, "/v1/status");
  EXPECT_EQ(s.cache_ttl, std::chrono::seconds(5));
  EXPECT_EQ(s.filters.size(), 3u);
  EXPECT_EQ(PolicyFor(policies, "/v1/jobs/{id}/events").scope, "admin");
  EXPECT_EQ(PolicyFor(policies, "/v1/jobs").scope, "jobs");
}

}  // namespace
}  // namespace megaserve::gateway
