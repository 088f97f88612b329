// ProxyFilter: a reverse proxy in the sense of RFC 9110 section 7.6. Hop-by-hop fields
// (section 7.6.1: Connection and the fields it names, Keep-Alive, Proxy-*, TE, Trailer,
// Transfer-Encoding, Upgrade) describe one connection and are never forwarded. The body is
// re-framed by whoever sends it next, so Content-Length goes too, and Host is set by the client
// for the target. X-Forwarded-For keeps the chain of client addresses (the de facto form of
// RFC 7239's Forwarded), so workers can see who called.
#include "gateway/proxy_filter.h"

#include <algorithm>
#include <cctype>
#include <utility>

namespace megaserve::gateway {
namespace {

bool IEquals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

bool IStartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && IEquals(s.substr(0, prefix.size()), prefix);
}

// True when `name` is one of the comma-separated tokens of a Connection header value.
bool ListedIn(std::string_view connection, std::string_view name) {
  while (!connection.empty()) {
    const std::size_t comma = connection.find(',');
    std::string_view token = connection.substr(0, comma);
    connection =
        comma == std::string_view::npos ? std::string_view{} : connection.substr(comma + 1);
    while (!token.empty() && (token.front() == ' ' || token.front() == '\t'))
      token.remove_prefix(1);
    while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.remove_suffix(1);
    if (IEquals(token, name)) return true;
  }
  return false;
}

// RFC 9110 section 7.6.1, plus the fields named by this message's Connection header.
bool IsHopByHop(std::string_view name, std::string_view connection) {
  for (std::string_view h :
       {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}) {
    if (IEquals(name, h)) return true;
  }
  return IStartsWith(name, "proxy-") || ListedIn(connection, name);
}

// Request fields the proxy drops: hop-by-hop ones, what the client sets (Host, Content-Length),
// what is answered here (Expect) and what it rewrites (X-Forwarded-For, X-Request-Id).
bool DropFromRequest(std::string_view name, std::string_view connection) {
  for (std::string_view h :
       {"host", "content-length", "expect", "x-forwarded-for", "x-request-id"}) {
    if (IEquals(name, h)) return true;
  }
  return IsHopByHop(name, connection);
}

// Response fields the proxy drops: hop-by-hop ones and those the server writes itself.
bool DropFromResponse(std::string_view name, std::string_view connection) {
  for (std::string_view h : {"content-length", "content-type", "date", "server", "x-request-id"}) {
    if (IEquals(name, h)) return true;
  }
  return IsHopByHop(name, connection);
}

// RFC 9110 section 9.2.2.
bool IsIdempotent(std::string_view method) {
  for (std::string_view m : {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"}) {
    if (method == m) return true;
  }
  return false;
}

ProxyRequest BuildRequest(const net::Request& request, Duration timeout) {
  ProxyRequest out;
  out.method = std::string(request.method_text);
  out.target = std::string(request.target);
  out.body = std::string(request.body);
  out.timeout = timeout;
  out.idempotent = IsIdempotent(request.method_text);
  const std::string_view connection = request.Header("connection");
  bool has_proto = false;
  request.ForEachHeader([&](std::string_view name, std::string_view value) {
    if (DropFromRequest(name, connection)) return;
    has_proto = has_proto || IEquals(name, "x-forwarded-proto");
    out.headers.emplace_back(std::string(name), std::string(value));
  });
  std::string forwarded_for(request.Header("x-forwarded-for"));
  if (!request.remote_addr.empty()) {
    if (!forwarded_for.empty()) forwarded_for += ", ";
    forwarded_for += request.remote_addr;
  }
  if (!forwarded_for.empty()) out.headers.emplace_back("X-Forwarded-For", std::move(forwarded_for));
  if (!has_proto) out.headers.emplace_back("X-Forwarded-Proto", "http");
  if (!request.request_id.empty()) {
    out.headers.emplace_back("X-Request-Id", std::string(request.request_id));
  }
  return out;
}

}  // namespace

ProxyFilter::ProxyFilter(std::map<std::string, Upstream*, std::less<>> upstreams)
    : upstreams_(std::move(upstreams)) {}

void ProxyFilter::OnRequest(Exchange& ex) {
  const RoutePolicy& policy = ex.policy();
  auto it = upstreams_.find(policy.upstream);
  if (it == upstreams_.end() || it->second == nullptr) {
    ex.Respond(net::ErrorResponse(
        502, "bad_gateway",
        "route " + policy.pattern + " names no known upstream \"" + policy.upstream + "\""));
    return;
  }
  Upstream* upstream = it->second;
  ProxyRequest req = BuildRequest(ex.request(), policy.timeout);
  ex.Suspend();
  upstream->Forward(std::move(req), [&ex, upstream](core::Result<net::ClientResponse> result) {
    ex.Respond(ToResponse(std::move(result), upstream->name()));
  });
}

net::Response ProxyFilter::ToResponse(core::Result<net::ClientResponse> result,
                                      std::string_view upstream) {
  if (!result.ok()) {
    const core::Status& status = result.status();
    if (status.code() == core::StatusCode::kDeadlineExceeded) {
      return net::ErrorResponse(504, "upstream_timeout",
                                "upstream " + std::string(upstream) + " did not answer in time");
    }
    // The detail (internal addresses) stays out of the client's view.
    return net::ErrorResponse(502, "bad_gateway",
                              "upstream " + std::string(upstream) + " failed (" +
                                  std::string(core::StatusCodeName(status.code())) + ")");
  }
  net::ClientResponse& from = result.value();
  net::Response out;
  out.status = from.status;
  out.owned_content_type = std::string(from.Header("content-type"));
  // RFC 9110 section 8.3: a recipient may treat a body without a type as octet-stream.
  if (out.owned_content_type.empty()) out.content_type = "application/octet-stream";
  out.body = std::move(from.body);
  const std::string connection(from.Header("connection"));
  for (auto& [name, value] : from.headers) {
    if (DropFromResponse(name, connection)) continue;
    out.headers.emplace_back(std::move(name), std::move(value));
  }
  return out;
}

}  // namespace megaserve::gateway
