#include "gateway/rate_limit_filter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "metrics/registry.h"

namespace megaserve::gateway {
namespace {

using ::testing::HasSubstr;

// Answers synchronously; a chain that suspends would make Handle return false.
class NoDefer final : public net::Deferrer {
 public:
  net::Reply Defer() override {
    ADD_FAILURE() << "the local rate limiter suspended a request";
    return [](net::Response) {};
  }
};

// Sets the caller's identity, as the auth filter would.
class FakeAuth final : public Filter {
 public:
  std::string key_id;
  std::int64_t quota = 0;
  std::string_view name() const override { return "auth"; }
  void OnRequest(Exchange& ex) override {
    ex.identity().key_id = key_id;
    ex.identity().quota = quota;
    ex.Next();
  }
};

struct Fixture {
  metrics::Registry registry;
  FakeAuth auth;
  RateLimitFilter filter{
      {.default_limit = 5, .default_period = std::chrono::seconds(60), .registry = &registry}};
  net::Response Call(const RoutePolicy& policy, std::string_view ip = "10.0.0.1") {
    Chain chain(
        policy, {&auth, &filter}, [](const net::Request&) { return net::JsonResponse(200, "{}"); },
        nullptr);
    net::Request req;
    req.method = net::Method::kGet;
    req.path = "/x";
    req.remote_addr = ip;
    net::Response out;
    NoDefer defer;
    EXPECT_TRUE(chain.Handle(req, out, defer));
    return out;
  }
};

std::string HeaderOf(const net::Response& r, std::string_view name) {
  return std::string(r.HeaderValue(name));
}

TEST(LocalRateLimiterTest, AllowsTheLimitAtOnceThenOneEveryInterval) {
  LocalRateLimiter limiter;
  const std::int64_t t0 = 1'000'000'000;
  int allowed = 0;
  for (int i = 0; i < 20; ++i) allowed += limiter.Check(7, 10, std::chrono::seconds(1), t0).allowed;
  EXPECT_EQ(allowed, 10);
  auto denied = limiter.Check(7, 10, std::chrono::seconds(1), t0);
  EXPECT_FALSE(denied.allowed);
  EXPECT_EQ(denied.retry_after_ms, 100);
  EXPECT_TRUE(limiter.Check(7, 10, std::chrono::seconds(1), t0 + 100'000).allowed);
  EXPECT_FALSE(limiter.Check(7, 10, std::chrono::seconds(1), t0 + 100'000).allowed);
  // Another caller has its own bucket.
  EXPECT_TRUE(limiter.Check(8, 10, std::chrono::seconds(1), t0).allowed);
}

TEST(RateLimitFilterTest, DefaultLimitPerClientIpWithHeaders) {
  Fixture f;
  RoutePolicy policy;
  for (int i = 0; i < 5; ++i) {
    net::Response r = f.Call(policy);
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(HeaderOf(r, "RateLimit-Policy"), "\"default\";q=5;w=60");
    EXPECT_THAT(HeaderOf(r, "RateLimit"), HasSubstr("r=" + std::to_string(4 - i)));
  }
  net::Response limited = f.Call(policy);
  EXPECT_EQ(limited.status, 429);
  EXPECT_EQ(HeaderOf(limited, "Retry-After"),
            "12");  // one request every 60 s / 5
  EXPECT_THAT(limited.body, HasSubstr("\"code\":\"rate_limited\""));
  EXPECT_EQ(f.Call(policy, "10.0.0.2").status, 200);  // another client
}

TEST(RateLimitFilterTest, RoutePolicyAndKeyQuotaOverrideTheDefault) {
  Fixture f;
  RoutePolicy policy;
  policy.pattern = "/v1/jobs*";
  policy.rate_limit = 2;
  policy.rate_period = std::chrono::seconds(10);
  EXPECT_EQ(f.Call(policy).status, 200);
  EXPECT_EQ(f.Call(policy).status, 200);
  EXPECT_EQ(f.Call(policy).status, 429);

  f.auth.key_id = "abc";
  f.auth.quota = 3;  // per minute, the key's own
  for (int i = 0; i < 3; ++i) EXPECT_EQ(f.Call(policy).status, 200);
  net::Response r = f.Call(policy);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(HeaderOf(r, "RateLimit-Policy"), "\"default\";q=3;w=60");

  RoutePolicy unlimited;
  unlimited.rate_limit = 0;
  for (int i = 0; i < 50; ++i) EXPECT_EQ(f.Call(unlimited).status, 200);
}

}  // namespace
}  // namespace megaserve::gateway
