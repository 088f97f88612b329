#include "net/url.h"

#include <gtest/gtest.h>

namespace megaserve::net {
namespace {

TEST(UrlTest, ParsesHttpWithDefaults) {
  auto url = ParseUrl("http://Example.COM");
  ASSERT_TRUE(url.ok()) << url.status().ToString();
  EXPECT_EQ(url->scheme, "http");
  EXPECT_EQ(url->host, "example.com");
  EXPECT_FALSE(url->host_is_ip);
  EXPECT_EQ(url->port, 80);
  EXPECT_EQ(url->target, "/");
  EXPECT_FALSE(url->tls());
  EXPECT_EQ(url->Authority(), "example.com");
  EXPECT_EQ(url->HostPort(), "example.com:80");
}

TEST(UrlTest, ParsesHttpsPortPathAndQuery) {
  auto url = ParseUrl("HTTPS://api.example.com:8443/v1/ticker?symbol=BTC&x=1#frag");
  ASSERT_TRUE(url.ok()) << url.status().ToString();
  EXPECT_TRUE(url->tls());
  EXPECT_EQ(url->port, 8443);
  EXPECT_EQ(url->target, "/v1/ticker?symbol=BTC&x=1");
  EXPECT_EQ(url->Authority(), "api.example.com:8443");
}

TEST(UrlTest, DefaultHttpsPortIsOmittedFromAuthority) {
  auto url = ParseUrl("https://example.com:443/x");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->port, 443);
  EXPECT_EQ(url->Authority(), "example.com");
}

TEST(UrlTest, ParsesIpLiterals) {
  auto v4 = ParseUrl("http://127.0.0.1:8080?q=1");
  ASSERT_TRUE(v4.ok());
  EXPECT_TRUE(v4->host_is_ip);
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->target, "/?q=1");

  auto v6 = ParseUrl("http://[::1]:9000/a");
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_TRUE(v6->host_is_ip);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9000);
  EXPECT_EQ(v6->HostPort(), "[::1]:9000");
  EXPECT_EQ(v6->Authority(), "[::1]:9000");

  auto v6_default = ParseUrl("https://[2001:DB8::1]/");
  ASSERT_TRUE(v6_default.ok());
  EXPECT_EQ(v6_default->Authority(), "[2001:db8::1]");
}

TEST(UrlTest, RejectsMalformedUrls) {
  for (const char* bad :
       {"", "example.com/x", "ftp://example.com/", "http://", "http:///path", "http://:80/",
        "http://host:0/", "http://host:65536/", "http://host:/", "http://host:12a/",
        "http://user:pw@host/", "http://[::1/", "http://[::g]/", "http://[::1]x/",
        "http://exa mple.com/", "http://host/a b", "http://ho$t/", "http://10.1/",
        "http://host/\xc3\xa9"}) {
    auto url = ParseUrl(bad);
    ASSERT_FALSE(url.ok()) << "accepted: " << bad;
    EXPECT_EQ(url.status().code(), core::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(url.status().message().find("bad URL"), std::string::npos);
  }
}

TEST(UrlTest, MessageNamesTheProblem) {
  auto url = ParseUrl("gopher://example.com/");
  ASSERT_FALSE(url.ok());
  EXPECT_NE(url.status().message().find("unsupported scheme \"gopher\""), std::string::npos)
      << url.status().message();
}

}  // namespace
}  // namespace megaserve::net
