#include "jobs/ssrf_guard.h"

#include <gtest/gtest.h>

#include <string>

namespace megaserve::jobs {
namespace {

using boost::asio::ip::address;
using boost::asio::ip::make_address;
using core::StatusCode;

SsrfGuard MakeGuard(SsrfPolicy policy = {}) {
  auto guard = SsrfGuard::Create(std::move(policy));
  EXPECT_TRUE(guard.ok()) << guard.status().ToString();
  return *guard;
}

// The rule name in a PermissionDenied message, or "allowed".
std::string Verdict(const SsrfGuard& guard, std::string_view text) {
  core::Status s = guard.Check(make_address(std::string(text)));
  if (s.ok()) return "allowed";
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied) << s.ToString();
  // The message names the address (in its canonical spelling).
  EXPECT_NE(s.message().find(make_address(std::string(text)).to_string()), std::string::npos)
      << s.message();
  return s.message();
}

void ExpectBlockedAs(const SsrfGuard& guard, std::string_view addr, std::string_view rule) {
  std::string verdict = Verdict(guard, addr);
  EXPECT_NE(verdict, "allowed") << addr;
  EXPECT_NE(verdict.find(std::string(rule)), std::string::npos)
      << addr << " expected rule '" << rule << "', got: " << verdict;
}

TEST(SsrfGuardTest, PublicAddressesAreAllowed) {
  const SsrfGuard guard = MakeGuard();
  for (std::string_view a :
       {"8.8.8.8",           "1.1.1.1",         "93.184.216.34",        "9.255.255.255",
        "11.0.0.0",          "100.63.255.255",  "100.128.0.0",          "172.15.255.255",
        "172.32.0.0",        "192.167.255.255", "192.169.0.0",          "198.17.255.255",
        "198.20.0.0",        "223.255.255.255", "2606:4700:4700::1111", "2001:4860:4860::8888",
        "2a00:1450:4001::1", "::ffff:8.8.8.8",  "64:ff9b::808:808",     "2002:808:808::1"}) {
    EXPECT_EQ(Verdict(guard, a), "allowed") << a;
  }
}

TEST(SsrfGuardTest, BlocksIpv4SpecialRanges) {
  const SsrfGuard guard = MakeGuard();
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"0.0.0.0", "unspecified"},
      {"0.1.2.3", "reserved"},
      {"10.0.0.1", "private"},
      {"10.255.255.255", "private"},
      {"100.64.0.1", "carrier-grade NAT"},
      {"100.127.255.255", "carrier-grade NAT"},
      {"127.0.0.1", "loopback"},
      {"127.255.255.254", "loopback"},
      {"169.254.0.1", "link-local"},
      {"169.254.169.254", "cloud metadata"},
      {"172.16.0.1", "private"},
      {"172.31.255.255", "private"},
      {"192.0.0.8", "reserved"},
      {"192.0.2.1", "documentation"},
      {"192.168.1.1", "private"},
      {"198.18.0.1", "benchmarking"},
      {"198.19.255.255", "benchmarking"},
      {"224.0.0.1", "multicast"},
      {"239.255.255.255", "multicast"},
      {"240.0.0.1", "reserved"},
      {"255.255.255.254", "reserved"},
      {"255.255.255.255", "broadcast"},
  };
  for (const auto& [addr, rule] : cases) ExpectBlockedAs(guard, addr, rule);
}

TEST(SsrfGuardTest, BlocksIpv6SpecialRanges) {
  const SsrfGuard guard = MakeGuard();
  const std::pair<std::string_view, std::string_view> cases[] = {
      {"::", "unspecified"},
      {"::1", "loopback"},
      {"::7f00:1", "reserved"},  // IPv4-compatible
      {"fc00::1", "unique-local"},
      {"fd12:3456::1", "unique-local"},
      {"fd00:ec2::254", "unique-local"},  // AWS IPv6 metadata endpoint
      {"fe80::1", "link-local"},
      {"febf:ffff::1", "link-local"},
      {"fec0::1", "reserved"},
      {"ff02::1", "multicast"},
      {"ff0e::1", "multicast"},
      {"2001:db8::1", "documentation"},
      {"2001:0:4136:e378::1", "reserved"},  // Teredo
      {"100::1", "reserved"},
      {"64:ff9b:1::1", "reserved"},
      {"3fff::1", "documentation"},
      {"4000::1", "outside global unicast"},
      {"1::1", "outside global unicast"},
  };
  for (const auto& [addr, rule] : cases) ExpectBlockedAs(guard, addr, rule);
}

TEST(SsrfGuardTest, ChecksIpv4EmbeddedInIpv6) {
  const SsrfGuard guard = MakeGuard();
  ExpectBlockedAs(guard, "::ffff:127.0.0.1", "IPv4-mapped");
  ExpectBlockedAs(guard, "::ffff:127.0.0.1", "loopback");
  ExpectBlockedAs(guard, "::ffff:169.254.169.254", "cloud metadata");
  ExpectBlockedAs(guard, "::ffff:a9fe:a9fe", "169.254.169.254");
  ExpectBlockedAs(guard, "::ffff:10.1.2.3", "private");
  ExpectBlockedAs(guard, "::ffff:0.0.0.0", "unspecified");
  ExpectBlockedAs(guard, "64:ff9b::127.0.0.1", "NAT64");
  ExpectBlockedAs(guard, "64:ff9b::a9fe:a9fe", "link-local");
  ExpectBlockedAs(guard, "64:ff9b::192.168.0.1", "private");
  ExpectBlockedAs(guard, "2002:7f00:1::1", "6to4");
  ExpectBlockedAs(guard, "2002:a9fe:a9fe::", "cloud metadata");
}

TEST(SsrfGuardTest, AllowPrivateOpensOnlyPrivateRanges) {
  const SsrfGuard guard = MakeGuard({.allow_private = true, .allowed_cidrs = {}});
  for (std::string_view a : {"10.0.0.1", "172.16.5.4", "192.168.1.1", "100.64.0.1", "fd00::1",
                             "::ffff:192.168.1.1", "64:ff9b::10.0.0.1"}) {
    EXPECT_EQ(Verdict(guard, a), "allowed") << a;
  }
  ExpectBlockedAs(guard, "127.0.0.1", "loopback");
  ExpectBlockedAs(guard, "169.254.169.254", "cloud metadata");
  ExpectBlockedAs(guard, "::1", "loopback");
  ExpectBlockedAs(guard, "fe80::1", "link-local");
  ExpectBlockedAs(guard, "224.0.0.1", "multicast");
  ExpectBlockedAs(guard, "::ffff:127.0.0.1", "loopback");
}

TEST(SsrfGuardTest, AllowedCidrsOverrideBlocks) {
  const SsrfGuard guard = MakeGuard({.allowed_cidrs = {"10.1.0.0/16", "127.0.0.1/32", "::1/128",
                                                       "169.254.10.10", "fd00:1::/32"}});
  for (std::string_view a : {"10.1.0.1", "10.1.255.255", "127.0.0.1", "::1", "169.254.10.10",
                             "fd00:1:ffff::1", "::ffff:127.0.0.1", "::ffff:10.1.2.3"}) {
    EXPECT_EQ(Verdict(guard, a), "allowed") << a;
  }
  ExpectBlockedAs(guard, "10.2.0.1", "private");
  ExpectBlockedAs(guard, "10.0.255.255", "private");
  ExpectBlockedAs(guard, "127.0.0.2", "loopback");
  ExpectBlockedAs(guard, "169.254.169.254", "cloud metadata");
  ExpectBlockedAs(guard, "fd00:2::1", "unique-local");
  ExpectBlockedAs(guard, "::2", "reserved");
}

TEST(SsrfGuardTest, PrefixLengthsAreHonoured) {
  const SsrfGuard guard = MakeGuard({.allowed_cidrs = {"10.0.0.0/9", "fe80::/11", "0.0.0.0/0"}});
  // 0.0.0.0/0 allows every IPv4 address, but no IPv6 one.
  EXPECT_EQ(Verdict(guard, "127.0.0.1"), "allowed");
  EXPECT_EQ(Verdict(guard, "fe80::1"), "allowed");
  EXPECT_EQ(Verdict(guard, "fe9f::1"), "allowed");
  ExpectBlockedAs(guard, "fea0::1", "link-local");
  ExpectBlockedAs(guard, "::1", "loopback");
}

TEST(SsrfGuardTest, InvalidCidrsAreRejected) {
  for (std::string bad :
       {"", "10.0.0.0/", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/8x", "10.0.0.1/8", "10.0.0/8",
        "::1/129", "::1/64", "fe80::1%1/128", "example.com/32", "10.0.0.0/ 8", " 10.0.0.0/8"}) {
    auto guard = SsrfGuard::Create({.allowed_cidrs = {"127.0.0.1/32", bad}});
    ASSERT_FALSE(guard.ok()) << "'" << bad << "'";
    EXPECT_EQ(guard.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(guard.status().message().find("'" + bad + "'"), std::string::npos)
        << guard.status().message();
  }
  EXPECT_EQ(CheckAddress(make_address("8.8.8.8"), {.allowed_cidrs = {"nope"}}).code(),
            StatusCode::kInvalidArgument);
}

TEST(SsrfGuardTest, CheckAddressAppliesThePolicy) {
  EXPECT_TRUE(CheckAddress(make_address("8.8.8.8"), {}).ok());
  EXPECT_EQ(CheckAddress(make_address("127.0.0.1"), {}).code(), StatusCode::kPermissionDenied);
  EXPECT_TRUE(CheckAddress(make_address("127.0.0.1"), {.allowed_cidrs = {"127.0.0.0/8"}}).ok());
  EXPECT_TRUE(
      CheckAddress(make_address("192.168.0.1"), {.allow_private = true, .allowed_cidrs = {}}).ok());
}

TEST(SsrfGuardTest, EveryResolvedAddressMustPass) {
  const SsrfGuard guard = MakeGuard();
  const address pub = make_address("93.184.216.34");
  const address priv = make_address("10.0.0.5");
  EXPECT_TRUE(guard.CheckUrlHost("example.com", {pub}).ok());
  EXPECT_TRUE(guard.CheckUrlHost("example.com", {pub, make_address("2606:2800::1")}).ok());
  core::Status mixed = guard.CheckUrlHost("rebind.example", {pub, priv});
  EXPECT_EQ(mixed.code(), StatusCode::kPermissionDenied);
  EXPECT_NE(mixed.message().find("rebind.example"), std::string::npos);
  EXPECT_NE(mixed.message().find("10.0.0.5"), std::string::npos);
  EXPECT_EQ(guard.CheckUrlHost("rebind.example", {priv, pub}).code(),
            StatusCode::kPermissionDenied);
  EXPECT_EQ(guard.CheckUrlHost("example.com", {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(guard.CheckUrlHost("", {pub}).code(), StatusCode::kInvalidArgument);
}

TEST(SsrfGuardTest, LiteralHostsAreCheckedThemselves) {
  const SsrfGuard guard = MakeGuard();
  EXPECT_TRUE(guard.CheckUrlHost("8.8.8.8", {}).ok());
  EXPECT_TRUE(guard.CheckUrlHost("[2606:4700:4700::1111]", {}).ok());
  EXPECT_EQ(guard.CheckUrlHost("127.0.0.1", {}).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(guard.CheckUrlHost("[::1]", {}).code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(guard.CheckUrlHost("::ffff:169.254.169.254", {}).code(), StatusCode::kPermissionDenied);
  // A public literal with an internal resolved address still fails.
  EXPECT_EQ(guard.CheckUrlHost("8.8.8.8", {make_address("127.0.0.1")}).code(),
            StatusCode::kPermissionDenied);
  // Shorthand forms some resolvers accept are names here, so they need resolved addresses.
  EXPECT_EQ(guard.CheckUrlHost("2130706433", {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(guard.CheckUrlHost("127.1", {make_address("127.0.0.1")}).code(),
            StatusCode::kPermissionDenied);

  const SsrfGuard loopback_ok = MakeGuard({.allowed_cidrs = {"127.0.0.1/32", "::1/128"}});
  EXPECT_TRUE(loopback_ok.CheckUrlHost("127.0.0.1", {}).ok());
  EXPECT_TRUE(loopback_ok.CheckUrlHost("[::1]", {}).ok());
  EXPECT_TRUE(
      loopback_ok.CheckUrlHost("localhost", {make_address("127.0.0.1"), make_address("::1")}).ok());
}

}  // namespace
}  // namespace megaserve::jobs
