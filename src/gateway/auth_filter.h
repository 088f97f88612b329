// The "auth" gateway filter: API keys on every request.
//
// A key is read from "Authorization: Bearer ms_..." (RFC 6750 §2.1), or from "X-API-Key: ms_..."
// for clients that cannot set Authorization. A request without one is refused with 401
// missing_api_key, or passed on anonymously (with an empty Identity) when the filter is not
// `required`; a request that presents a key that is malformed, unknown, wrong or revoked is
// always refused with 401 invalid_api_key, and a valid key without the route's scope with 403
// insufficient_scope. 401s carry `WWW-Authenticate: Bearer realm="megaserve"` with the RFC 6750
// §3 error attributes.
//
// Hot path: the key's cache entry is fresh (see KeyCache in api_keys.h), so the filter hashes the
// secret, compares, checks the scope and passes the request on without suspending or touching
// the store. On a cache miss it suspends, the store is read on the blocking pool, and the request
// continues (Next or Respond) from that pool thread. Secrets are never logged; key ids may be.
#pragma once

#include <string_view>

#include "gateway/api_keys.h"
#include "gateway/filter.h"
#include "metrics/registry.h"

namespace megaserve::gateway {

struct AuthFilterOptions {
  // When false, requests without a key pass with an empty Identity.
  bool required = true;
};

class AuthFilter final : public Filter {
 public:
  // `cache` must outlive the filter. Counts megaserve_auth_requests_total{result} in `registry`.
  AuthFilter(KeyCache& cache, AuthFilterOptions options = {},
             metrics::Registry& registry = metrics::Registry::Global());
  // No copying allowed.
  AuthFilter(const AuthFilter&) = delete;
  AuthFilter& operator=(const AuthFilter&) = delete;

  // "auth".
  std::string_view name() const override { return "auth"; }
  // Identifies the caller and fills ex.identity(), or answers 401/403 (503 when the key store
  // cannot be read).
  void OnRequest(Exchange& ex) override;

 private:
  // Ends the request once the key's check is known: Next() or Respond().
  void Conclude(Exchange& ex, std::string_view id, KeyCheck check);

  KeyCache& cache_;
  const AuthFilterOptions options_;
  metrics::Counter& ok_;
  metrics::Counter& anonymous_;
  metrics::Counter& missing_;
  metrics::Counter& invalid_;
  metrics::Counter& revoked_;
  metrics::Counter& forbidden_;
  metrics::Counter& unavailable_;
};

}  // namespace megaserve::gateway
