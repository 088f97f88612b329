// The "proxy" filter: the last filter of a route served by `megaserve gateway`, which forwards
// the request to the route's upstream and answers with what comes back.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "gateway/filter.h"
#include "gateway/upstream.h"

namespace megaserve::gateway {

class ProxyFilter final : public Filter {
 public:
  // Borrows the upstreams, by name; they must outlive the filter and every request in flight.
  explicit ProxyFilter(std::map<std::string, Upstream*, std::less<>> upstreams);
  ProxyFilter(const ProxyFilter&) = delete;  // No copying allowed.
  ProxyFilter& operator=(const ProxyFilter&) = delete;

  std::string_view name() const override { return "proxy"; }

  // Forwards the request to the upstream named by the route's policy and answers it with the
  // upstream's response; never passes it on. Answers 502 bad_gateway itself when the upstream
  // is unknown or fails, and 504 upstream_timeout when the route's timeout passes. Hop-by-hop
  // headers (RFC 9110 section 7.6.1) are dropped both ways; X-Forwarded-For (the client's
  // address appended), X-Forwarded-Proto and X-Request-Id are added on the way in. Suspends the
  // request; the answer comes from the upstream's loop.
  void OnRequest(Exchange& ex) override;

  // Turns an upstream's result into the response for the client (exposed for tests).
  static net::Response ToResponse(core::Result<net::ClientResponse> result,
                                  std::string_view upstream);

 private:
  std::map<std::string, Upstream*, std::less<>> upstreams_;
};

}  // namespace megaserve::gateway
