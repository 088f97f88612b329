// SSRF guard for user-supplied webhook URLs: decides whether an outbound delivery may connect to
// an address. Blocks the special-purpose ranges of the IANA IPv4 and IPv6 Special-Purpose
// Address Registries (RFC 6890) that are not globally reachable, plus multicast, and looks
// inside IPv6 forms that embed an IPv4 address (IPv4-mapped, RFC 4291 section 2.5.5.2; NAT64,
// RFC 6052 section 2.1; 6to4, RFC 3056 section 2) so that 169.254.169.254 cannot be reached
// as ::ffff:169.254.169.254. No DNS happens here: the HTTP client resolves a name, passes every
// answer to CheckUrlHost, and connects only to addresses that passed.
#pragma once

#include <array>
#include <boost/asio/ip/address.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace megaserve::jobs {

// What outbound deliveries may reach beyond the public internet.
struct SsrfPolicy {
  // Also allow RFC 1918 private, RFC 6598 carrier-grade NAT and RFC 4193 unique-local
  // addresses (on-premises deployments). Loopback, link-local (cloud metadata), multicast and
  // reserved ranges stay blocked unless listed in allowed_cidrs.
  bool allow_private = false;
  // Ranges that are always allowed, overriding every block: "10.1.0.0/16", "127.0.0.1/32",
  // "::1/128". A bare address means a single host. Host bits must be zero.
  std::vector<std::string> allowed_cidrs;
};

// Checks one address against a policy, parsing the policy's CIDRs on every call (use SsrfGuard
// to parse them once). Returns OK if allowed; PermissionDenied naming the address and the rule
// that blocks it ("loopback", "private", "link-local", ...); InvalidArgument if a CIDR in the
// policy does not parse.
core::Status CheckAddress(const boost::asio::ip::address& address, const SsrfPolicy& policy);

// An SsrfPolicy with its CIDRs parsed. Immutable, so one guard may be shared between threads.
class SsrfGuard {
 public:
  // Parses the policy. Returns InvalidArgument naming the first CIDR that is not
  // "<address>[/<prefix>]" with a prefix in range and zero host bits.
  static core::Result<SsrfGuard> Create(SsrfPolicy policy);

  // Returns OK if deliveries may connect to `address`, or PermissionDenied naming the address
  // and the rule that blocks it. An address inside allowed_cidrs is always allowed; an IPv6
  // address embedding an IPv4 one is judged by the embedded address.
  core::Status Check(const boost::asio::ip::address& address) const;

  // Checks the host of a URL. `host` is the URL's host: an IP literal (IPv6 with or without
  // brackets) or a name. `resolved` is every address the resolver returned for it. Every
  // address must pass, so a DNS answer mixing public and internal addresses is refused. A name
  // with no resolved addresses is InvalidArgument; a literal needs none (it is checked itself,
  // together with any addresses given).
  core::Status CheckUrlHost(std::string_view host,
                            const std::vector<boost::asio::ip::address>& resolved) const;

 private:
  struct Cidr {
    bool v4 = false;
    std::array<uint8_t, 16> bytes{};  // the first 4 bytes for IPv4
    int prefix = 0;
  };

  SsrfGuard(bool allow_private, std::vector<Cidr> allowed)
      : allow_private_(allow_private), allowed_(std::move(allowed)) {}

  bool IsAllowListed(const boost::asio::ip::address& address) const;
  // Why `address` is blocked, e.g. "loopback (127.0.0.0/8)", or nullopt if it is allowed.
  std::optional<std::string> BlockReason(const boost::asio::ip::address& address) const;

  bool allow_private_;
  std::vector<Cidr> allowed_;
};

}  // namespace megaserve::jobs
