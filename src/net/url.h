// Absolute http:// and https:// URLs, split into the parts an HTTP/1.1 client needs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace megaserve::net {

// A parsed absolute URL. Only the http and https schemes exist here.
struct Url {
  std::string scheme;       // "http" or "https", lower case
  std::string host;         // lower case; an IPv6 literal is kept without its brackets
  bool host_is_ip = false;  // host is an IPv4 or IPv6 literal (no DNS lookup, no TLS SNI)
  std::uint16_t port = 0;   // the explicit port, else 80 (http) or 443 (https)
  std::string target;       // path and query as sent in the request line, at least "/"

  // True for https.
  bool tls() const { return scheme == "https"; }

  // "host:port" with IPv6 in brackets, e.g. "[::1]:8443". Used in messages and pool keys.
  std::string HostPort() const;

  // The Host header value: HostPort() without the port when it is the scheme's default.
  std::string Authority() const;
};

// Parses `text` as an absolute http or https URL: scheme (any case), host (name, IPv4 literal or
// [IPv6] literal), optional port, then an optional path and query ("/" when absent). A fragment
// is dropped. Returns InvalidArgument naming the problem for other schemes, user info, empty or
// malformed hosts, ports outside 1..65535, and whitespace, control or non-ASCII characters
// (which must be percent-encoded).
core::Result<Url> ParseUrl(std::string_view text);

}  // namespace megaserve::net
