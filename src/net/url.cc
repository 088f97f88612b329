#include "net/url.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>

namespace megaserve::net {
namespace {

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

std::string Lowered(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), Lower);
  return out;
}

bool IsNameChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
}

core::Status Bad(std::string_view text, std::string_view why) {
  return core::InvalidArgument("bad URL \"" + std::string(text) + "\": " + std::string(why));
}

}  // namespace

std::string Url::HostPort() const {
  std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  out += ':';
  out += std::to_string(port);
  return out;
}

std::string Url::Authority() const {
  const std::uint16_t default_port = tls() ? 443 : 80;
  if (port != default_port) return HostPort();
  return host.find(':') != std::string::npos ? "[" + host + "]" : host;
}

core::Result<Url> ParseUrl(std::string_view text) {
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return Bad(text,
                 "contains whitespace, control or non-ASCII characters (percent-encode them)");
    }
  }
  const std::size_t sep = text.find("://");
  if (sep == std::string_view::npos) return Bad(text, "must start with http:// or https://");
  Url url;
  url.scheme = Lowered(text.substr(0, sep));
  if (url.scheme != "http" && url.scheme != "https") {
    return Bad(text, "unsupported scheme \"" + url.scheme + "\" (want http or https)");
  }
  std::string_view rest = text.substr(sep + 3);
  if (const std::size_t hash = rest.find('#'); hash != std::string_view::npos) {
    rest = rest.substr(0, hash);
  }
  const std::size_t authority_end = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view target =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  if (authority.find('@') != std::string_view::npos) {
    return Bad(text, "user info (user:password@) is not supported");
  }

  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return Bad(text, "unterminated [IPv6] host");
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Bad(text, "unexpected characters after [IPv6] host");
      has_port = true;
      port_text = after.substr(1);
    }
    in6_addr addr6;
    if (inet_pton(AF_INET6, std::string(host).c_str(), &addr6) != 1) {
      return Bad(text, "malformed IPv6 address \"" + std::string(host) + "\"");
    }
    url.host_is_ip = true;
  } else {
    const std::size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = authority.substr(colon + 1);
    }
    if (host.empty()) return Bad(text, "missing host");
    if (!std::all_of(host.begin(), host.end(), IsNameChar)) {
      return Bad(text, "invalid characters in host \"" + std::string(host) + "\"");
    }
    in_addr addr4;
    const bool numeric = std::all_of(host.begin(), host.end(), [](char c) {
      return c == '.' || std::isdigit(static_cast<unsigned char>(c));
    });
    if (inet_pton(AF_INET, std::string(host).c_str(), &addr4) == 1) {
      url.host_is_ip = true;
    } else if (numeric) {
      // The resolver would read "10.1" as 10.0.0.1; refuse such forms rather than guess.
      return Bad(text, "malformed IPv4 address \"" + std::string(host) + "\"");
    }
  }
  if (host.empty()) return Bad(text, "missing host");
  url.host = Lowered(host);

  if (has_port) {
    if (port_text.empty() || port_text.size() > 5 ||
        !std::all_of(port_text.begin(), port_text.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      return Bad(text, "port must be a number in 1..65535");
    }
    const int port = std::stoi(std::string(port_text));
    if (port < 1 || port > 65535) return Bad(text, "port must be a number in 1..65535");
    url.port = static_cast<std::uint16_t>(port);
  } else {
    url.port = url.tls() ? 443 : 80;
  }

  if (target.empty()) {
    url.target = "/";
  } else if (target.front() == '?') {
    url.target = "/" + std::string(target);
  } else {
    url.target = std::string(target);
  }
  return url;
}

}  // namespace megaserve::net
