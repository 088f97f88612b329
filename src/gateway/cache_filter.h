// The gateway's response cache: a filter that answers repeated requests from memory (L1), from a
// tier shared between processes (L2, optional), and otherwise forwards one request per key.
//
// What is cached. GET and HEAD requests (HEAD shares GET's entries) and, on routes with
// cache_post, POST requests, on routes whose cache_ttl is positive. The key (cache/cache_key.h)
// covers the method, the route pattern, the path, the normalized query, the body for POST, and
// the values of the route's `vary` request headers. Everything else passes through untouched.
//
// Freshness (RFC 9111 section 4.2, RFC 5861). An entry stored at t is fresh until t + cache_ttl
// and is then served as is ("hit"). Until t + cache_ttl + stale_while_revalidate it is still
// served at once ("stale"), and one background request (Exchange::SpawnBackground) revalidates
// it. After that the request goes forward; if the origin then fails with a 5xx, an entry younger
// than t + cache_ttl + stale_if_error is served in place of the error (RFC 5861 section 4).
// Entries carry an Age header (RFC 9111 section 5.1).
//
// Early refresh (XFetch: Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache
// Stampede Prevention", VLDB 2015). A fresh hit whose entry took delta ms to compute triggers a
// background refresh when now - delta * beta * ln(rand()) >= expiry, rand() uniform in (0, 1].
// The chance rises towards expiry, and faster for costly entries, so a hot key is usually
// recomputed by one request shortly before it expires instead of by a stampede just after.
//
// Shared tier. On an L1 miss with an L2 configured, the leader suspends and looks the key up in
// L2 first: a fresh L2 entry is copied into L1 and answers the leader and its followers; one that
// is no longer fresh is only kept for stale-if-error; an L2 error counts in
// megaserve_cache_l2_errors_total and reads as a miss. Stored responses go to both tiers.
//
// Single flight. At most one request per key goes forward at a time. The first miss (the
// leader) goes on (to L2, then to the origin); later misses for that key (followers) suspend and
// are answered from the leader's response when it comes back through OnResponse, each with its
// own copy (a response marked private or no-store, or streamed, is not shared: each follower is
// then sent forward on its own). A HEAD miss never leads, because the origin's answer to a HEAD
// cannot fill the GET entry; it follows a GET in flight or goes forward alone. Background
// revalidations are single-flight per key too.
//
// Storing. Responses with status 200, 203, 204, 300, 301, 404 or 410 (RFC 9110 section 15.1's
// heuristically cacheable codes, less 206, 308, 405, 414 and 501) are stored in L1 and L2,
// unless they are streamed, set a cookie, or carry Cache-Control no-store, no-cache or private.
// The entry keeps the response's headers except per-request and hop-by-hop ones.
//
// Cache-Status (RFC 9211), with the cache named "megaserve":
//   megaserve; hit                                       fresh L1 hit
//   megaserve; hit; ttl=-12                              stale hit, being revalidated (ttl < 0)
//   megaserve; hit; detail=l2                            from the shared tier (L2), now in L1
//   megaserve; fwd=miss; fwd-status=200; stored          forwarded, and the response stored
//   megaserve; fwd=stale; fwd-status=200; stored         forwarded: the entry was too stale
//   megaserve; fwd=miss; fwd-status=200; collapsed       a follower answered from the leader
//   megaserve; fwd=miss; fwd-status=200; collapsed=?0    a follower that had to go forward
//   megaserve; fwd=stale; fwd-status=503; ttl=-40        stale served because the origin failed
//
// Metrics: megaserve_cache_requests_total{route,result} (hit, stale, miss, coalesced, bypass,
// l2_hit), megaserve_cache_l2_errors_total, megaserve_cache_bytes and megaserve_cache_entries
// (L1), and megaserve_cache_hit_ratio{route} = (hit + stale + l2_hit) / every request that was
// not a bypass, recomputed from the counters at scrape time so that requests pay nothing for it.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "cache/cache_key.h"
#include "cache/cached_response.h"
#include "cache/memory_cache.h"
#include "cache/remote_cache.h"
#include "core/ids.h"
#include "gateway/filter.h"
#include "metrics/registry.h"

namespace megaserve::gateway {

struct CacheFilterOptions {
  // The current Unix time in milliseconds; null means the system clock.
  std::function<std::int64_t()> now_ms;
  // XFetch's beta: above 1 favours earlier refreshes, below 1 later ones; 0 turns them off.
  double xfetch_beta = 1.0;
  // Seeds the default random source.
  std::uint64_t seed = 0x6d65676173657276ULL;
  // Uniform random numbers in (0, 1] for XFetch; null means a sequence derived from `seed`.
  std::function<double()> random;
  // The salt of a route's keys (cache::KeyParts::salt), asked on every cacheable request with
  // the route's pattern; 0 = none. A route whose responses derive from data that changes
  // returns the data's version, so that a change makes the next request a miss without
  // enumerating the entries to drop. Must be cheap and must not allocate. Null = no salt.
  std::function<std::uint64_t(std::string_view route)> key_salt;
};

class CacheFilter final : public Filter {
 public:
  // `l1` must outlive the filter; `l2` may be null (no shared tier) and must outlive the filter
  // otherwise. Registers the cache metrics in `registry`. The filter must outlive the chains
  // that use it and their requests in flight, background revalidations included.
  CacheFilter(cache::MemoryCache& l1, cache::RemoteCache* l2, metrics::Registry& registry,
              CacheFilterOptions options = {});
  ~CacheFilter() override;
  // No copying allowed.
  CacheFilter(const CacheFilter&) = delete;
  CacheFilter& operator=(const CacheFilter&) = delete;

  // "cache".
  std::string_view name() const override { return "cache"; }
  // Answers from L1 (never suspending) or L2, joins a request in flight for the same key, or
  // passes the request on; see the top of this file.
  void OnRequest(Exchange& ex) override;
  // Stores cacheable responses, substitutes a stale entry for an origin error, answers the
  // followers of a leader, and adds Cache-Status.
  void OnResponse(Exchange& ex, net::Response& response) override;

  // Drops the entry for GET `path` on `route` (no query, no vary values) from both tiers, and
  // keeps responses to requests in flight now from being stored: for handlers whose data
  // changed (a model loaded or unloaded). Any thread.
  void Invalidate(std::string_view route, std::string_view path);

 private:
  struct RouteStats;
  struct Metrics;
  struct RouteSlot;
  struct RequestState;
  struct FlightShard;

  static constexpr std::size_t kRouteSlots = 64;
  static constexpr std::size_t kFlightShards = 16;

  RouteStats& StatsFor(const RoutePolicy& policy);
  FlightShard& ShardFor(const cache::CacheKey& key);
  std::int64_t Now() const;
  // L1 lookup through this thread's copies of hot entries.
  std::shared_ptr<const cache::CachedResponse> FrontGet(const cache::CacheKey& key,
                                                        std::int64_t now_ms);
  double Random();
  bool XFetchDue(const cache::CachedResponse& entry, std::int64_t now_ms);
  // Starts one background revalidation of `key` unless one is in flight.
  void StartRefresh(Exchange& ex, const cache::CacheKey& key, RouteStats& stats,
                    std::int64_t now_ms);
  // The miss path: join a flight, or lead one (through L2 when configured), or go alone.
  void Forward(Exchange& ex, const cache::CacheKey& key, RouteStats& stats,
               std::shared_ptr<const cache::CachedResponse> stale, std::int64_t now_ms);
  void OnL2Result(Exchange& ex, std::shared_ptr<RequestState> state,
                  core::Result<std::shared_ptr<const cache::CachedResponse>> result);
  // Ends `key`'s flight: its followers get copies of `response` with `follower_status` as their
  // Cache-Status or, when it is not `shareable`, are each passed on to ask for themselves.
  void FinishFlight(const cache::CacheKey& key, const net::Response& response, bool shareable,
                    std::string_view follower_status, RouteStats& stats);

  cache::MemoryCache& l1_;
  cache::RemoteCache* const l2_;
  const CacheFilterOptions options_;
  std::atomic<std::uint64_t> random_state_;
  std::atomic<std::uint64_t> epoch_{0};                    // Invalidate() calls so far
  const std::uint64_t instance_ = core::NextInstanceId();  // for the per-thread copies
  std::shared_ptr<Metrics> metrics_;                       // shared with the registry's collector
  // Lock-free lookup of a chain's route statistics, keyed by its RoutePolicy's address.
  std::array<std::atomic<const RouteSlot*>, kRouteSlots> route_slots_{};
  std::unique_ptr<FlightShard[]> flights_;
};

}  // namespace megaserve::gateway
