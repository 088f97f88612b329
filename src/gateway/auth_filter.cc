// The auth filter; see auth_filter.h.
#include "gateway/auth_filter.h"

#include <fmt/format.h>

#include <string>
#include <utility>

namespace megaserve::gateway {
namespace {

constexpr std::string_view kRealm = "Bearer realm=\"megaserve\"";

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The presented token: a Bearer credential (the scheme is case-insensitive, RFC 7235 §2.1), else
// X-API-Key; "" when neither is there. Authorization with another scheme counts as no key.
std::string_view PresentedToken(const net::Request& request) {
  std::string_view auth = TrimSpaces(request.Header("authorization"));
  constexpr std::string_view kBearer = "bearer ";
  if (auth.size() > kBearer.size()) {
    bool bearer = true;
    for (std::size_t i = 0; i < kBearer.size(); ++i) {
      char c = auth[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
      bearer = bearer && c == kBearer[i];
    }
    if (bearer) return TrimSpaces(auth.substr(kBearer.size()));
  }
  return TrimSpaces(request.Header("x-api-key"));
}

net::Response Unauthorized(std::string_view code, std::string_view message, bool invalid) {
  net::Response r = net::ErrorResponse(401, code, message);
  // RFC 6750 §3: no error attribute when the request carried no credentials; invalid_token
  // when it carried bad ones. The description is ours, so it holds no quotes or backslashes.
  r.headers.emplace_back("WWW-Authenticate", invalid ? fmt::format("{}, error=\"invalid_token\", "
                                                                   "error_description=\"{}\"",
                                                                   kRealm, message)
                                                     : std::string(kRealm));
  return r;
}

metrics::Family<metrics::Counter>& Results(metrics::Registry& registry) {
  return registry.AddCounter(
      "megaserve_auth_requests_total",
      "Requests seen by the auth filter, by result: ok, anonymous (no key, allowed), missing, "
      "invalid (malformed, unknown or wrong key), revoked, forbidden (missing scope), "
      "unavailable (key store unreadable)",
      {"result"});
}

}  // namespace

AuthFilter::AuthFilter(KeyCache& cache, AuthFilterOptions options, metrics::Registry& registry)
    : cache_(cache),
      options_(options),
      ok_(Results(registry).WithLabels({"ok"})),
      anonymous_(Results(registry).WithLabels({"anonymous"})),
      missing_(Results(registry).WithLabels({"missing"})),
      invalid_(Results(registry).WithLabels({"invalid"})),
      revoked_(Results(registry).WithLabels({"revoked"})),
      forbidden_(Results(registry).WithLabels({"forbidden"})),
      unavailable_(Results(registry).WithLabels({"unavailable"})) {}

void AuthFilter::OnRequest(Exchange& ex) {
  std::string_view token = PresentedToken(ex.request());
  if (token.empty()) {
    if (!options_.required) {
      anonymous_.Inc();
      ex.Next();
      return;
    }
    missing_.Inc();
    ex.Respond(Unauthorized("missing_api_key",
                            "this endpoint needs an API key: send \"Authorization: Bearer "
                            "ms_...\"",
                            false));
    return;
  }
  // The key this thread accepted last, presented again, needs no parsing.
  if (auto split = SplitToken(token)) {
    if (auto check = cache_.Remembered(split->id, split->secret)) {
      Conclude(ex, split->id, std::move(*check));
      return;
    }
  }
  auto parsed = ParseToken(token);
  if (!parsed.ok()) {
    invalid_.Inc();
    ex.Respond(Unauthorized("invalid_api_key", "the API key is malformed", true));
    return;
  }
  if (auto check = cache_.TryVerify(parsed->id, parsed->secret)) {
    Conclude(ex, parsed->id, std::move(*check));
    return;
  }
  ex.Suspend();
  cache_.Fetch(parsed->id, parsed->secret,
               [this, &ex, id = std::string(parsed->id)](KeyCheck check) {
                 Conclude(ex, id, std::move(check));
               });
}

void AuthFilter::Conclude(Exchange& ex, std::string_view id, KeyCheck check) {
  switch (check.outcome) {
    case KeyCheck::Outcome::kOk:
      break;
    case KeyCheck::Outcome::kUnknown:
    case KeyCheck::Outcome::kWrongSecret:
      invalid_.Inc();
      ex.Respond(Unauthorized("invalid_api_key", "the API key is not valid", true));
      return;
    case KeyCheck::Outcome::kRevoked:
      revoked_.Inc();
      ex.Respond(Unauthorized("invalid_api_key", "the API key has been revoked", true));
      return;
    case KeyCheck::Outcome::kUnavailable: {
      unavailable_.Inc();
      net::Response r = net::ErrorResponse(503, "auth_unavailable",
                                           "API keys cannot be checked right now; retry shortly");
      r.headers.emplace_back("Retry-After", "1");
      ex.Respond(std::move(r));
      return;
    }
  }
  const std::string& scope = ex.policy().scope;
  if (!ScopeAllows(check.scopes, scope)) {
    forbidden_.Inc();
    net::Response r = net::ErrorResponse(
        403, "insufficient_scope",
        fmt::format("this endpoint needs an API key with the \"{}\" scope", scope));
    r.headers.emplace_back(
        "WWW-Authenticate",
        fmt::format("{}, error=\"insufficient_scope\", scope=\"{}\"", kRealm, scope));
    ex.Respond(std::move(r));
    return;
  }
  ok_.Inc();
  Identity& identity = ex.identity();
  identity.key_id.assign(id);
  identity.key_name = std::move(check.name);
  identity.scopes = check.scopes;
  identity.quota = check.quota;
  cache_.TouchLastUsed(id);
  ex.Next();
}

}  // namespace megaserve::gateway
