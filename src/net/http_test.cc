#include "net/http.h"

#include <gtest/gtest.h>

namespace megaserve::net {
namespace {

TEST(HttpTest, MethodsRoundTrip) {
  for (std::size_t i = 0; i + 1 < kMethodCount; ++i) {
    auto m = static_cast<Method>(i);
    EXPECT_EQ(ParseMethod(MethodName(m)), m);
  }
  EXPECT_EQ(ParseMethod("get"), Method::kOther);  // methods are case-sensitive
  EXPECT_EQ(ParseMethod("BREW"), Method::kOther);
}

TEST(HttpTest, ErrorResponseShapeAndTypeByStatus) {
  Response r = ErrorResponse(404, "not_found", "no \"x\"", "id");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(
      r.body,
      R"({"error":{"type":"invalid_request_error","code":"not_found","message":"no \"x\"","param":"id"}})");
  EXPECT_NE(ErrorResponse(429, "rate_limited", "slow down").body.find("rate_limit_error"),
            std::string::npos);
  EXPECT_NE(ErrorResponse(503, "unavailable", "busy").body.find(R"("type":"server_error")"),
            std::string::npos);
  EXPECT_NE(ErrorResponse(400, "bad", "m").body.find(R"("param":null)"), std::string::npos);
}

TEST(HttpTest, QueryAndPathParameters) {
  Request r;
  r.query = "a=1&bb=two&flag&c=";
  EXPECT_EQ(r.QueryParam("a"), "1");
  EXPECT_EQ(r.QueryParam("bb"), "two");
  EXPECT_EQ(r.QueryParam("flag"), "");
  EXPECT_EQ(r.QueryParam("c"), "");
  EXPECT_EQ(r.QueryParam("missing"), "");
  r.AddParam("id", "42");
  EXPECT_EQ(r.Param("id"), "42");
  EXPECT_EQ(r.Param("other"), "");
  EXPECT_EQ(r.Header("anything"), "");  // no header source: nothing, no crash
}

TEST(HttpTest, SharedBodyWinsOverBody) {
  Response r;
  r.body = "own";
  EXPECT_EQ(r.Body(), "own");
  r.shared_body = std::make_shared<const std::string>("shared");
  EXPECT_EQ(r.Body(), "shared");
}

TEST(HttpTest, ReasonPhrases) {
  EXPECT_EQ(ReasonPhrase(200), "OK");
  EXPECT_EQ(ReasonPhrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(ReasonPhrase(799), "Unknown");
}

}  // namespace
}  // namespace megaserve::net

namespace megaserve::net {
namespace {

TEST(ResponseTest, HeaderValueSearchesEveryHeaderForm) {
  Response r;
  r.headers.emplace_back("Retry-After", "3");
  r.header_lines = std::make_shared<const std::string>("\r\nCache-Control: max-age=60\r\nAge: 2");
  r.more_header_lines = "\r\nRateLimit: \"default\";r=1;t=0";
  EXPECT_EQ(r.HeaderValue("retry-after"), "3");
  EXPECT_EQ(r.HeaderValue("cache-control"), "max-age=60");
  EXPECT_EQ(r.HeaderValue("AGE"), "2");
  EXPECT_EQ(r.HeaderValue("ratelimit"), "\"default\";r=1;t=0");
  EXPECT_EQ(r.HeaderValue("ratelimit-policy"), "");
}

}  // namespace
}  // namespace megaserve::net
