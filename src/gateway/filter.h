// The gateway's middleware chain: filters behind one interface, run in a per-route order.
//
// A request walks the route's filters in order. Each filter's OnRequest either passes it on
// (Exchange::Next), answers it (Exchange::Respond), or suspends it (Exchange::Suspend) to do one
// of those later, from any thread. After the last filter the route's own handler (the origin)
// answers. The response then walks back through OnResponse of every filter that passed the
// request on, in reverse order, before it is sent: a filter sees every response that comes back
// through it, whoever produced it.
//
// The common case (an L1 cache hit, a local rate-limit check, a cached key) completes without
// suspending, on the I/O thread, and costs no extra hop through the event loop.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/route_policy.h"
#include "net/http.h"

namespace megaserve::gateway {

class Chain;
class Exchange;

// Most filters a route may have.
inline constexpr std::size_t kMaxFilters = 8;

// Who is calling, as the auth filter established it.
struct Identity {
  std::string key_id;        // "" = anonymous
  std::string key_name;      // the key's label, for logs
  std::uint32_t scopes = 0;  // bit set of Scope (gateway/api_keys.h)
  std::int64_t quota = 0;    // the key's own requests per minute; 0 = the route's limit
};

class Filter {
 public:
  virtual ~Filter() = default;
  // The name used in the route configuration ("auth", "rate_limit", "cache", "proxy").
  virtual std::string_view name() const = 0;
  // Must end in exactly one of: ex.Next(), ex.Respond(...), or ex.Suspend() followed (now or
  // later, on any thread) by ex.Next() or ex.Respond(...).
  virtual void OnRequest(Exchange& ex) = 0;
  // Sees (and may change) the response on its way out. Runs on whichever thread produced it.
  virtual void OnResponse(Exchange& ex, net::Response& response) {}
};

// One request's trip through a chain. Owned by the chain; valid until its response has gone out
// through every OnResponse (filters must not keep pointers to it past that).
class Exchange {
 public:
  const net::Request& request() const { return *request_; }
  const RoutePolicy& policy() const;
  Identity& identity() { return identity_; }
  // False for a background revalidation: there is no client waiting.
  bool has_client() const { return !background_; }

  // Adds header lines, written as "\r\nName: value" each, to whatever response this request
  // gets: the cheap form for headers added to every response (RateLimit).
  void AppendResponseHeaderLines(std::string_view lines) { extra_lines_ += lines; }
  // Adds a header to whatever response this request gets.
  void AddResponseHeader(std::string name, std::string value) {
    if (extra_headers_.empty()) extra_headers_.reserve(4);
    extra_headers_.emplace_back(std::move(name), std::move(value));
  }

  // Passes the request to the next filter, or to the origin after the last one.
  void Next();
  // Answers the request from the filter now running; the response goes back through the
  // OnResponse of the filters before it.
  void Respond(net::Response response);
  // Called inside OnRequest, on the thread that called it, by a filter that will call Next() or
  // Respond() later (possibly on another thread, possibly before OnRequest returns).
  void Suspend();

  // State the current filter keeps between its OnRequest and OnResponse for this request.
  std::shared_ptr<void>& state() { return states_[position_]; }

  // Starts a background copy of this request (headers and body copied) that runs the filters
  // after the current one and the origin. Its response goes back through their OnResponse and
  // then through the current filter's, with `state` as the current filter's state; it is then
  // dropped, reaching no client. Identity is copied. Used for stale-while-revalidate.
  void SpawnBackground(std::shared_ptr<void> state);

 private:
  friend class Chain;
  friend struct ExchangeRecycler;
  Exchange() = default;
  ~Exchange();
  void Reset();  // back to a fresh state, for reuse
  void Unwind(net::Response& response, std::size_t from);
  void Finish(net::Response response);
  void Release();

  Chain* chain_ = nullptr;
  const net::Request* request_ = nullptr;
  std::unique_ptr<struct OwnedRequest> owned_;  // background copies own their request
  Identity identity_;
  std::vector<std::pair<std::string, std::string>> extra_headers_;
  std::string extra_lines_;
  std::array<std::shared_ptr<void>, kMaxFilters> states_;  // one per filter
  std::size_t position_ = 0;  // filter running now (filters().size() = the origin)
  std::size_t stop_at_ = 0;   // OnResponse runs for positions >= stop_at_
  // Synchronous path: the response goes to *out_; after Suspend, to reply_.
  net::Response* out_ = nullptr;
  net::Deferrer* defer_ = nullptr;
  net::Reply reply_;
  std::atomic<int> refs_{1};
  bool background_ = false;
  bool answered_ = false;
  bool suspended_ = false;
};

// A route's filters and its origin handler. Immutable once built; shared by all I/O threads.
class Chain {
 public:
  // The origin is the route's own handler: exactly one of sync/async is set, or neither when
  // the last filter always answers (a proxied route).
  Chain(RoutePolicy policy, std::vector<Filter*> filters, net::SyncHandler sync,
        net::AsyncHandler async);
  Chain(const Chain&) = delete;  // No copying allowed.
  Chain& operator=(const Chain&) = delete;

  // The route handler the server calls (net::HybridHandler).
  bool Handle(const net::Request& request, net::Response& out, net::Deferrer& defer);

  const RoutePolicy& policy() const { return policy_; }
  std::span<Filter* const> filters() const { return filters_; }

 private:
  friend class Exchange;
  void RunOrigin(Exchange& ex);

  RoutePolicy policy_;
  std::vector<Filter*> filters_;
  net::SyncHandler sync_;
  net::AsyncHandler async_;
};

}  // namespace megaserve::gateway
