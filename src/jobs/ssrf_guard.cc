// SSRF guard: special-purpose address ranges from the IANA IPv4 and IPv6 Special-Purpose Address
// Registries (RFC 6890), checked first match wins, most specific range first. The references
// next to each range name the RFC that reserves it.
#include "jobs/ssrf_guard.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <optional>
#include <span>

namespace megaserve::jobs {
namespace {

namespace ip = boost::asio::ip;

enum class Action {
  kBlock,        // never reachable unless allow-listed
  kPrivate,      // reachable when SsrfPolicy::allow_private
  kEmbedMapped,  // IPv4 address in the last 32 bits: judge that instead
  kEmbedNat64,   // likewise
  kEmbed6to4,    // IPv4 address in bits 16..47
};

struct RangeRule {
  std::string_view cidr;
  std::string_view name;
  Action action;
};

constexpr RangeRule kV4Rules[] = {
    {"0.0.0.0/32", "unspecified", Action::kBlock},
    {"0.0.0.0/8", "reserved", Action::kBlock},                 // "this network", RFC 791
    {"10.0.0.0/8", "private", Action::kPrivate},               // RFC 1918
    {"100.64.0.0/10", "carrier-grade NAT", Action::kPrivate},  // RFC 6598
    {"127.0.0.0/8", "loopback", Action::kBlock},
    {"169.254.169.254/32", "link-local, cloud metadata", Action::kBlock},
    {"169.254.0.0/16", "link-local", Action::kBlock},  // RFC 3927
    {"172.16.0.0/12", "private", Action::kPrivate},
    {"192.0.0.0/24", "reserved", Action::kBlock},       // IETF protocol assignments, RFC 6890
    {"192.0.2.0/24", "documentation", Action::kBlock},  // TEST-NET-1, RFC 5737
    {"192.88.99.0/24", "reserved", Action::kBlock},     // 6to4 relay anycast, RFC 7526
    {"192.168.0.0/16", "private", Action::kPrivate},
    {"198.18.0.0/15", "benchmarking", Action::kBlock},     // RFC 2544
    {"198.51.100.0/24", "documentation", Action::kBlock},  // TEST-NET-2
    {"203.0.113.0/24", "documentation", Action::kBlock},   // TEST-NET-3
    {"224.0.0.0/4", "multicast", Action::kBlock},
    {"255.255.255.255/32", "broadcast", Action::kBlock},
    {"240.0.0.0/4", "reserved", Action::kBlock},  // RFC 1112 section 4
};

constexpr RangeRule kV6Rules[] = {
    {"::/128", "unspecified", Action::kBlock},
    {"::1/128", "loopback", Action::kBlock},
    {"::ffff:0:0/96", "IPv4-mapped", Action::kEmbedMapped},  // RFC 4291 section 2.5.5.2
    {"::/96", "reserved", Action::kBlock},  // IPv4-compatible, deprecated by RFC 4291 2.5.5.1
    {"64:ff9b::/96", "NAT64", Action::kEmbedNat64},      // RFC 6052 section 2.1
    {"64:ff9b:1::/48", "reserved", Action::kBlock},      // local-use NAT64, RFC 8215
    {"100::/64", "reserved", Action::kBlock},            // discard-only, RFC 6666
    {"2001::/32", "reserved", Action::kBlock},           // Teredo, RFC 4380
    {"2001:db8::/32", "documentation", Action::kBlock},  // RFC 3849
    {"2002::/16", "6to4", Action::kEmbed6to4},           // RFC 3056 section 2
    {"3fff::/20", "documentation", Action::kBlock},      // RFC 9637
    {"fc00::/7", "unique-local", Action::kPrivate},      // RFC 4193
    {"fe80::/10", "link-local", Action::kBlock},         // RFC 4291 section 2.5.6
    {"fec0::/10", "reserved", Action::kBlock},           // site-local, deprecated by RFC 3879
    {"ff00::/8", "multicast", Action::kBlock},
};

// Only 2000::/3 is allocated for global unicast (RFC 4291 section 2.4); the rest of the space,
// less the ranges above, is unassigned and has no business in a webhook URL.
constexpr std::string_view kV6GlobalUnicast = "2000::/3";

struct ParsedCidr {
  bool v4 = false;
  std::array<uint8_t, 16> bytes{};
  int prefix = 0;
};

std::optional<ParsedCidr> ParseCidr(std::string_view text, std::string* error) {
  size_t slash = text.find('/');
  std::string addr_text(text.substr(0, slash));
  boost::system::error_code ec;
  ip::address addr = ip::make_address(addr_text, ec);
  if (ec) {
    *error = "not an IP address";
    return std::nullopt;
  }
  if (addr.is_v6() && addr.to_v6().scope_id() != 0) {
    *error = "a zone index is not allowed";
    return std::nullopt;
  }
  ParsedCidr cidr;
  cidr.v4 = addr.is_v4();
  const int max_prefix = cidr.v4 ? 32 : 128;
  if (cidr.v4) {
    auto b = addr.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), cidr.bytes.begin());
  } else {
    cidr.bytes = addr.to_v6().to_bytes();
  }
  cidr.prefix = max_prefix;
  if (slash != std::string_view::npos) {
    std::string_view p = text.substr(slash + 1);
    auto [ptr, perr] = std::from_chars(p.data(), p.data() + p.size(), cidr.prefix);
    if (p.empty() || perr != std::errc() || ptr != p.data() + p.size() || cidr.prefix < 0 ||
        cidr.prefix > max_prefix) {
      *error = "prefix length must be 0 to " + std::to_string(max_prefix);
      return std::nullopt;
    }
  }
  for (int bit = cidr.prefix; bit < max_prefix; ++bit) {
    if (cidr.bytes[bit / 8] & (0x80 >> (bit % 8))) {
      *error = "host bits are set";
      return std::nullopt;
    }
  }
  return cidr;
}

// True if the first `prefix` bits of `a` and `net` agree.
bool PrefixMatches(std::span<const uint8_t> a, std::span<const uint8_t> net, int prefix) {
  int full = prefix / 8;
  for (int i = 0; i < full; ++i) {
    if (a[i] != net[i]) return false;
  }
  int rest = prefix % 8;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (net[full] & mask);
}

struct CompiledRule {
  ParsedCidr cidr;
  const RangeRule* rule;
};

std::vector<CompiledRule> Compile(std::span<const RangeRule> rules) {
  std::vector<CompiledRule> out;
  for (const RangeRule& r : rules) {
    std::string error;
    auto cidr = ParseCidr(r.cidr, &error);
    assert(cidr.has_value());  // the tables are constants
    out.push_back({*cidr, &r});
  }
  return out;
}

// Built once; immutable afterwards.
const std::vector<CompiledRule>& V4Rules() {
  static const std::vector<CompiledRule> rules = Compile(kV4Rules);
  return rules;
}
const std::vector<CompiledRule>& V6Rules() {
  static const std::vector<CompiledRule> rules = Compile(kV6Rules);
  return rules;
}

const CompiledRule* FirstMatch(const std::vector<CompiledRule>& rules,
                               std::span<const uint8_t> bytes) {
  for (const CompiledRule& r : rules) {
    if (PrefixMatches(bytes, r.cidr.bytes, r.cidr.prefix)) return &r;
  }
  return nullptr;
}

core::Status PermissionDenied(std::string message) {
  return {core::StatusCode::kPermissionDenied, std::move(message)};
}

std::string Describe(const CompiledRule& r) {
  return std::string(r.rule->name) + " (" + std::string(r.rule->cidr) + ")";
}

}  // namespace

core::Result<SsrfGuard> SsrfGuard::Create(SsrfPolicy policy) {
  std::vector<Cidr> allowed;
  allowed.reserve(policy.allowed_cidrs.size());
  for (const std::string& text : policy.allowed_cidrs) {
    std::string error;
    auto parsed = ParseCidr(text, &error);
    if (!parsed) return core::InvalidArgument("allowed CIDR '" + text + "': " + error);
    allowed.push_back(Cidr{parsed->v4, parsed->bytes, parsed->prefix});
  }
  return SsrfGuard(policy.allow_private, std::move(allowed));
}

bool SsrfGuard::IsAllowListed(const ip::address& address) const {
  const bool v4 = address.is_v4();
  std::array<uint8_t, 16> bytes{};
  if (v4) {
    auto b = address.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), bytes.begin());
  } else {
    bytes = address.to_v6().to_bytes();
  }
  for (const Cidr& c : allowed_) {
    if (c.v4 == v4 && PrefixMatches(bytes, c.bytes, c.prefix)) return true;
  }
  return false;
}

std::optional<std::string> SsrfGuard::BlockReason(const ip::address& address) const {
  if (IsAllowListed(address)) return std::nullopt;

  if (address.is_v4()) {
    const CompiledRule* r = FirstMatch(V4Rules(), address.to_v4().to_bytes());
    if (r == nullptr) return std::nullopt;
    if (r->rule->action == Action::kPrivate && allow_private_) return std::nullopt;
    return Describe(*r);
  }

  auto bytes = address.to_v6().to_bytes();
  const CompiledRule* r = FirstMatch(V6Rules(), bytes);
  if (r == nullptr) {
    static const ParsedCidr global = [] {
      std::string error;
      return *ParseCidr(kV6GlobalUnicast, &error);
    }();
    if (PrefixMatches(bytes, global.bytes, global.prefix)) return std::nullopt;
    return "reserved (outside global unicast " + std::string(kV6GlobalUnicast) + ")";
  }
  ip::address_v4::bytes_type embedded;
  switch (r->rule->action) {
    case Action::kPrivate:
      if (allow_private_) return std::nullopt;
      return Describe(*r);
    case Action::kBlock:
      return Describe(*r);
    case Action::kEmbedMapped:
    case Action::kEmbedNat64:
      embedded = {bytes[12], bytes[13], bytes[14], bytes[15]};
      break;
    case Action::kEmbed6to4:
      embedded = {bytes[2], bytes[3], bytes[4], bytes[5]};
      break;
  }
  // Packets end up at the embedded IPv4 address, so that address decides.
  const ip::address_v4 inner(embedded);
  std::optional<std::string> inner_reason = BlockReason(ip::address(inner));
  if (!inner_reason) return std::nullopt;
  return std::string(r->rule->name) + " " + std::string(r->rule->cidr) + " embedding " +
         inner.to_string() + ", which is " + *inner_reason;
}

core::Status SsrfGuard::Check(const ip::address& address) const {
  std::optional<std::string> reason = BlockReason(address);
  if (!reason) return core::Status::Ok();
  return PermissionDenied("address " + address.to_string() + " is blocked: " + *reason);
}

core::Status SsrfGuard::CheckUrlHost(std::string_view host,
                                     const std::vector<ip::address>& resolved) const {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) return core::InvalidArgument("URL has an empty host");
  boost::system::error_code ec;
  ip::address literal = ip::make_address(std::string(host), ec);
  if (!ec) {
    if (core::Status s = Check(literal); !s.ok()) return s;
  } else if (resolved.empty()) {
    return core::InvalidArgument("host '" + std::string(host) + "' resolved to no addresses");
  }
  for (const ip::address& a : resolved) {
    if (core::Status s = Check(a); !s.ok()) {
      return PermissionDenied("host '" + std::string(host) + "': " + s.message());
    }
  }
  return core::Status::Ok();
}

core::Status CheckAddress(const ip::address& address, const SsrfPolicy& policy) {
  auto guard = SsrfGuard::Create(policy);
  if (!guard.ok()) return guard.status();
  return guard->Check(address);
}

}  // namespace megaserve::jobs
