#include "gateway/cache_filter.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <map>
#include <utility>
#include <vector>

#include "core/time_format.h"

namespace megaserve::gateway {
namespace {

using cache::CachedResponse;
using cache::CacheKey;
using Entry = std::shared_ptr<const CachedResponse>;

constexpr std::size_t kInlineVary = 8;

// RFC 9110 section 15.1's heuristically cacheable codes that this cache stores.
bool StorableStatus(int status) {
  switch (status) {
    case 200:
    case 203:
    case 204:
    case 300:
    case 301:
    case 404:
    case 410:
      return true;
    default:
      return false;
  }
}

using net::EqualsIgnoreCase;

bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && EqualsIgnoreCase(s.substr(0, prefix.size()), prefix);
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Whether a Cache-Control value holds one of the directives that forbid sharing the response
// (RFC 9111 sections 5.2.2.4, 5.2.2.5 and 5.2.2.7). "private=..." counts as private.
bool ForbidsSharing(std::string_view cache_control) {
  while (!cache_control.empty()) {
    std::size_t comma = cache_control.find(',');
    std::string_view directive = Trim(cache_control.substr(0, comma));
    directive = Trim(directive.substr(0, directive.find('=')));
    if (EqualsIgnoreCase(directive, "no-store") || EqualsIgnoreCase(directive, "private") ||
        EqualsIgnoreCase(directive, "no-cache")) {
      return true;
    }
    if (comma == std::string_view::npos) break;
    cache_control.remove_prefix(comma + 1);
  }
  return false;
}

// A response that must reach only the client that asked: never stored, never shared.
bool IsPrivate(const net::Response& r) {
  if (r.stream) return true;
  for (const auto& [name, value] : r.headers) {
    if (EqualsIgnoreCase(name, "set-cookie")) return true;
    if (EqualsIgnoreCase(name, "cache-control") && ForbidsSharing(value)) return true;
  }
  return false;
}

// Headers that describe one exchange or one connection, not the resource: not stored.
bool PerRequestHeader(std::string_view name) {
  static constexpr std::string_view kDropped[] = {
      // Per request.
      "x-request-id", "date", "set-cookie", "retry-after", "age", "cache-status", "server-timing",
      // Per connection (RFC 9110 section 7.6.1) or per message.
      "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "transfer-encoding",
      "content-length", "te", "trailer", "upgrade"};
  for (std::string_view dropped : kDropped) {
    if (EqualsIgnoreCase(name, dropped)) return true;
  }
  return StartsWithIgnoreCase(name, "ratelimit");  // RateLimit, RateLimit-Policy, ...
}

// Headers of the leader's response that must not reach its followers.
bool LeaderOnlyHeader(std::string_view name) {
  return EqualsIgnoreCase(name, "x-request-id") || EqualsIgnoreCase(name, "date") ||
         EqualsIgnoreCase(name, "cache-status") || StartsWithIgnoreCase(name, "ratelimit");
}

// Freshness is judged in milliseconds; the coarse clock is a few milliseconds behind at most and
// much cheaper to read on every hit.
std::int64_t SystemNowMs() { return core::CoarseNowMicros() / 1000; }

// RFC 9211's ttl: whole seconds of freshness left, rounded down, so any staleness is negative.
std::int64_t TtlSeconds(const CachedResponse& e, std::int64_t now_ms) {
  std::int64_t left = e.stored_at_ms + e.ttl_ms - now_ms;
  return left >= 0 ? left / 1000 : -((-left + 999) / 1000);
}

// A response replaying `entry`; the body is shared with the entry, not copied.
// The response for a hit. `entry` is taken by value so the hot path can hand its reference over
// instead of touching the shared count again (every I/O thread hits the same hot entries).
net::Response FromEntry(Entry entry, std::int64_t now_ms, std::string_view cache_status) {
  net::Response r;
  r.status = entry->status;
  // The default content type is a literal: reusing it saves copying the most common value.
  if (entry->content_type != r.content_type) r.owned_content_type = entry->content_type;
  if (entry->header_lines.empty()) r.headers = entry->headers;
  // Age and Cache-Status as ready-made lines, with room for the lines later filters add.
  char age[24];
  char* age_end = std::to_chars(age, age + sizeof age, entry->AgeSeconds(now_ms)).ptr;
  r.more_header_lines.reserve(160);
  r.more_header_lines += "\r\nAge: ";
  r.more_header_lines.append(age, age_end);
  r.more_header_lines += "\r\nCache-Status: ";
  r.more_header_lines += cache_status;
  r.shared_body = std::shared_ptr<const std::string>(entry, &entry->body);
  if (!entry->header_lines.empty()) {
    const std::string* lines = &entry->header_lines;
    r.header_lines = std::shared_ptr<const std::string>(std::move(entry), lines);
  }
  return r;
}

std::string StaleHitStatus(const CachedResponse& e, std::int64_t now_ms) {
  return "megaserve; hit; ttl=" + std::to_string(TtlSeconds(e, now_ms));
}

std::string ForwardStatus(std::string_view fwd, int fwd_status) {
  std::string s = "megaserve; fwd=";
  s += fwd;
  s += "; fwd-status=";
  s += std::to_string(fwd_status);
  return s;
}

std::uint64_t SplitMix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

// One route's counters, looked up once per route and then reached without a lock.
struct CacheFilter::RouteStats {
  std::string route;
  metrics::Counter& hit;
  metrics::Counter& stale;
  metrics::Counter& miss;
  metrics::Counter& coalesced;
  metrics::Counter& bypass;
  metrics::Counter& l2_hit;
  metrics::Gauge& hit_ratio;
};

// The filter's metrics. Shared with the registry's collector, which may outlive the filter.
struct CacheFilter::Metrics {
  std::mutex mu;
  metrics::Family<metrics::Counter>* requests = nullptr;
  metrics::Family<metrics::Gauge>* hit_ratio = nullptr;
  metrics::Counter* l2_errors = nullptr;
  metrics::Gauge* bytes = nullptr;
  metrics::Gauge* entries = nullptr;
  const cache::MemoryCache* l1 = nullptr;  // null once the filter is gone
  std::map<std::string, std::unique_ptr<RouteStats>, std::less<>> routes;
  std::vector<std::unique_ptr<RouteSlot>> slots;  // every slot ever published; never freed

  // Recomputes the gauges; runs at every scrape, before the gauges are exposed.
  void Refresh() {
    std::lock_guard lock(mu);
    for (const auto& [route, s] : routes) {
      double hits = static_cast<double>(s->hit.Value() + s->stale.Value() + s->l2_hit.Value());
      double total = hits + static_cast<double>(s->miss.Value() + s->coalesced.Value());
      s->hit_ratio.Set(total > 0 ? hits / total : 0.0);
    }
    if (l1 != nullptr && bytes != nullptr) {
      bytes->Set(static_cast<double>(l1->bytes()));
      entries->Set(static_cast<double>(l1->entries()));
    }
  }
};

struct CacheFilter::RouteSlot {
  const RoutePolicy* policy;
  RouteStats* stats;
};

// What OnResponse needs to know about a request this filter passed on.
struct CacheFilter::RequestState {
  enum class Kind {
    kLeader,   // leads the flight for `key`: stores the response and answers the followers
    kRefresh,  // a background revalidation: stores the response, answers nobody
    kAlone,    // went forward outside any flight (a HEAD miss, a released follower)
  };
  Kind kind;
  CacheKey key;
  RouteStats* stats;
  std::int64_t started_ms;
  Entry stale;                     // a stale entry to fall back on when the origin fails
  bool released_follower = false;  // kAlone: was collapsed, but the response was not shareable
  // Invalidate() calls before this request went forward; a response to a request that was in
  // flight across an invalidation is served but not stored (it may predate the change).
  std::uint64_t epoch = 0;
};

struct CacheFilter::FlightShard {
  struct Flight {
    std::vector<Exchange*> followers;  // suspended; answered when the leader's response is back
  };
  std::mutex mu;
  std::unordered_map<CacheKey, Flight, cache::CacheKeyHash> misses;
  std::unordered_map<CacheKey, std::int64_t, cache::CacheKeyHash> refreshes;  // -> started at
};

CacheFilter::CacheFilter(cache::MemoryCache& l1, cache::RemoteCache* l2,
                         metrics::Registry& registry, CacheFilterOptions options)
    : l1_(l1),
      l2_(l2),
      options_(std::move(options)),
      random_state_(options_.seed),
      metrics_(std::make_shared<Metrics>()),
      flights_(std::make_unique<FlightShard[]>(kFlightShards)) {
  // The collector is registered before the gauges so that a scrape updates them before it
  // exposes them.
  registry.AddCollector([m = metrics_](std::string&) { m->Refresh(); });
  std::lock_guard lock(metrics_->mu);
  metrics_->requests =
      &registry.AddCounter("megaserve_cache_requests_total",
                           "Requests seen by the response cache, by route and result "
                           "(hit, stale, miss, coalesced, bypass, l2_hit).",
                           {"route", "result"});
  metrics_->l2_errors =
      &registry
           .AddCounter("megaserve_cache_l2_errors_total",
                       "Failed lookups in the shared cache tier, served as misses.")
           .WithLabels({});
  metrics_->bytes =
      &registry.AddGauge("megaserve_cache_bytes", "Bytes held by the in-memory cache tier.")
           .WithLabels({});
  metrics_->entries =
      &registry.AddGauge("megaserve_cache_entries", "Entries held by the in-memory cache tier.")
           .WithLabels({});
  metrics_->hit_ratio = &registry.AddGauge(
      "megaserve_cache_hit_ratio",
      "Share of cacheable requests answered from the cache (hit, stale or l2_hit), by route.",
      {"route"});
  metrics_->l1 = &l1_;
}

CacheFilter::~CacheFilter() {
  std::lock_guard lock(metrics_->mu);
  metrics_->l1 = nullptr;
}

std::int64_t CacheFilter::Now() const {
  return options_.now_ms ? options_.now_ms() : SystemNowMs();
}

double CacheFilter::Random() {
  if (options_.random) return options_.random();
  std::uint64_t z =
      SplitMix64(random_state_.fetch_add(0x9e3779b97f4a7c15ULL, std::memory_order_relaxed) +
                 0x9e3779b97f4a7c15ULL);
  return static_cast<double>((z >> 11) + 1) * 0x1.0p-53;  // (0, 1]
}

CacheFilter::RouteStats& CacheFilter::StatsFor(const RoutePolicy& policy) {
  const std::size_t home = (reinterpret_cast<std::uintptr_t>(&policy) >> 4) % kRouteSlots;
  for (std::size_t i = 0; i < kRouteSlots; ++i) {
    const RouteSlot* slot = route_slots_[(home + i) % kRouteSlots].load(std::memory_order_acquire);
    if (slot == nullptr) break;
    // The pattern check guards against a new chain that reuses a destroyed one's address.
    if (slot->policy == &policy && slot->stats->route == policy.RouteLabel()) return *slot->stats;
  }

  std::lock_guard lock(metrics_->mu);
  auto it = metrics_->routes.find(policy.RouteLabel());
  if (it == metrics_->routes.end()) {
    auto& f = *metrics_->requests;
    const std::string& p = policy.RouteLabel();
    auto stats = std::unique_ptr<RouteStats>(new RouteStats{
        p, f.WithLabels({p, "hit"}), f.WithLabels({p, "stale"}), f.WithLabels({p, "miss"}),
        f.WithLabels({p, "coalesced"}), f.WithLabels({p, "bypass"}), f.WithLabels({p, "l2_hit"}),
        metrics_->hit_ratio->WithLabels({p})});
    it = metrics_->routes.emplace(p, std::move(stats)).first;
  }
  RouteStats& stats = *it->second;
  for (std::size_t i = 0; i < kRouteSlots; ++i) {
    auto& cell = route_slots_[(home + i) % kRouteSlots];
    const RouteSlot* slot = cell.load(std::memory_order_relaxed);
    if (slot == nullptr || slot->policy == &policy) {
      metrics_->slots.push_back(std::make_unique<RouteSlot>(RouteSlot{&policy, &stats}));
      cell.store(metrics_->slots.back().get(), std::memory_order_release);
      break;
    }
  }
  return stats;  // with every slot taken, later lookups come here, under the lock
}

CacheFilter::FlightShard& CacheFilter::ShardFor(const CacheKey& key) {
  return flights_[(key.low >> 32) % kFlightShards];
}

bool CacheFilter::XFetchDue(const CachedResponse& entry, std::int64_t now_ms) {
  const double scale = static_cast<double>(entry.compute_ms) * options_.xfetch_beta;
  if (!(scale > 0)) return false;
  const double gap = static_cast<double>(entry.stored_at_ms + entry.ttl_ms - now_ms);
  // -ln(rand()) is exponentially distributed with mean 1: past 40 means, it has a probability
  // below 1e-17, so far from expiry the random draw is skipped.
  if (gap > 40 * scale) return false;
  return -std::log(Random()) * scale >= gap;
}

void CacheFilter::OnRequest(Exchange& ex) {
  const RoutePolicy& policy = ex.policy();
  const net::Request& request = ex.request();
  RouteStats& stats = StatsFor(policy);
  const bool head = request.method == net::Method::kHead;
  const bool post = request.method == net::Method::kPost;
  if (policy.cache_ttl.count() <= 0 ||
      !(request.method == net::Method::kGet || head || (post && policy.cache_post))) {
    stats.bypass.Inc();
    ex.Next();
    return;
  }

  std::array<std::pair<std::string_view, std::string_view>, kInlineVary> inline_vary;
  std::vector<std::pair<std::string_view, std::string_view>> more_vary;
  std::span<const std::pair<std::string_view, std::string_view>> vary;
  if (policy.vary.size() <= kInlineVary) {
    for (std::size_t i = 0; i < policy.vary.size(); ++i) {
      inline_vary[i] = {policy.vary[i], request.Header(policy.vary[i])};
    }
    vary = std::span(inline_vary.data(), policy.vary.size());
  } else {
    for (const std::string& name : policy.vary) more_vary.emplace_back(name, request.Header(name));
    vary = more_vary;
  }
  cache::KeyParts parts;
  parts.method = head ? net::MethodName(net::Method::kGet) : net::MethodName(request.method);
  parts.route = policy.RouteLabel();
  parts.path = request.path;
  parts.query = request.query;
  parts.body = post ? request.body : std::string_view{};
  parts.vary = vary;
  if (options_.key_salt) parts.salt = options_.key_salt(parts.route);
  const CacheKey key = cache::MakeCacheKey(parts);

  const std::int64_t now = Now();
  Entry entry = FrontGet(key, now);
  if (entry != nullptr) {
    if (entry->FreshAt(now)) {
      stats.hit.Inc();
      if (!head && XFetchDue(*entry, now)) StartRefresh(ex, key, stats, now);
      ex.Respond(FromEntry(std::move(entry), now, "megaserve; hit"));
      return;
    }
    if (now < entry->stored_at_ms + entry->ttl_ms + entry->stale_while_revalidate_ms) {
      stats.stale.Inc();
      if (!head) StartRefresh(ex, key, stats, now);
      ex.Respond(FromEntry(entry, now, StaleHitStatus(*entry, now)));
      return;
    }
  }
  Forward(ex, key, stats, std::move(entry), now);
}

// Hot entries are copied once per I/O thread: a hit then touches no lock word or reference count
// that another thread also writes (on two cores those shared cache lines cost more than the
// rest of the hit). A copy is used only while the shard's generation is the one it was taken at,
// so a put, erase or expiry in L1 is seen at once; it is made on a key's second hit on the
// thread (one-off keys are not copied) and only for bodies up to kMaxFrontBody.
std::shared_ptr<const CachedResponse> CacheFilter::FrontGet(const CacheKey& key,
                                                            std::int64_t now_ms) {
  struct Slot {
    std::uint64_t owner = 0;
    CacheKey key;
    std::uint64_t generation = 0;
    Entry copy;  // null until the key's second hit
  };
  static constexpr std::size_t kSlots = 64;
  static constexpr std::size_t kMaxFrontBody = 64 * 1024;
  thread_local std::array<Slot, kSlots> front;
  Slot& slot = front[key.low % kSlots];
  const std::uint64_t generation = l1_.Generation(key);
  if (slot.owner == instance_ && slot.key == key && slot.generation == generation && slot.copy &&
      slot.copy->FreshAt(now_ms)) {
    return slot.copy;
  }
  Entry entry = l1_.Get(key, now_ms);
  const bool seen = slot.owner == instance_ && slot.key == key;
  slot.owner = instance_;
  slot.key = key;
  slot.generation = generation;
  slot.copy = nullptr;
  if (seen && entry != nullptr && entry->FreshAt(now_ms) && entry->body.size() <= kMaxFrontBody) {
    slot.copy = std::make_shared<const CachedResponse>(*entry);
  }
  return entry;
}

void CacheFilter::StartRefresh(Exchange& ex, const CacheKey& key, RouteStats& stats,
                               std::int64_t now_ms) {
  FlightShard& shard = ShardFor(key);
  {
    std::lock_guard lock(shard.mu);
    auto [it, inserted] = shard.refreshes.try_emplace(key, now_ms);
    if (!inserted) {
      // One is in flight, unless it has been gone so long that it must have been lost.
      if (now_ms - it->second < ex.policy().timeout.count()) return;
      it->second = now_ms;
    }
  }
  auto state = std::make_shared<RequestState>(
      RequestState{RequestState::Kind::kRefresh, key, &stats, now_ms, nullptr});
  state->epoch = epoch_.load(std::memory_order_acquire);
  // With a synchronous origin this runs the whole revalidation, OnResponse included, right here.
  ex.SpawnBackground(std::move(state));
}

void CacheFilter::Forward(Exchange& ex, const CacheKey& key, RouteStats& stats, Entry stale,
                          std::int64_t now_ms) {
  const bool head = ex.request().method == net::Method::kHead;
  FlightShard& shard = ShardFor(key);
  {
    std::unique_lock lock(shard.mu);
    if (auto it = shard.misses.find(key); it != shard.misses.end()) {
      // Suspended before the leader can see this follower, so its answer may come at once.
      ex.Suspend();
      it->second.followers.push_back(&ex);
      stats.coalesced.Inc();
      return;
    }
    // A leader stores its response before it ends its flight: look again, under the lock, so
    // that a request arriving in between is not the start of a second flight.
    if (Entry again = l1_.Get(key, now_ms); again != nullptr && again != stale) {
      lock.unlock();
      if (again->FreshAt(now_ms)) {
        stats.hit.Inc();
        ex.Respond(FromEntry(again, now_ms, "megaserve; hit"));
        return;
      }
      stale = std::move(again);
      lock.lock();
      if (shard.misses.contains(key)) {
        lock.unlock();
        return Forward(ex, key, stats, std::move(stale), now_ms);
      }
    }
    if (!head) shard.misses.try_emplace(key);
  }

  auto state = std::make_shared<RequestState>(
      RequestState{head ? RequestState::Kind::kAlone : RequestState::Kind::kLeader, key, &stats,
                   now_ms, std::move(stale)});
  state->epoch = epoch_.load(std::memory_order_acquire);
  ex.state() = state;
  if (head || l2_ == nullptr) {
    stats.miss.Inc();
    ex.Next();
    return;
  }
  ex.Suspend();
  l2_->Get(key, [this, &ex, state](core::Result<Entry> result) {
    OnL2Result(ex, state, std::move(result));
  });
}

void CacheFilter::OnL2Result(Exchange& ex, std::shared_ptr<RequestState> state,
                             core::Result<Entry> result) {
  const std::int64_t now = Now();
  Entry found;
  if (result.ok()) {
    found = std::move(result.value());
  } else {
    metrics_->l2_errors->Inc();
  }
  if (found != nullptr && found->FreshAt(now)) {
    state->stats->l2_hit.Inc();
    l1_.Put(state->key, found);
    net::Response response = FromEntry(found, now, "megaserve; hit; detail=l2");
    FinishFlight(state->key, response, true, "megaserve; hit; detail=l2", *state->stats);
    ex.state().reset();
    ex.Respond(std::move(response));
    return;
  }
  if (found != nullptr && now < found->DiscardAtMs() &&
      (state->stale == nullptr || found->stored_at_ms > state->stale->stored_at_ms)) {
    state->stale = std::move(found);  // too stale to serve, but usable if the origin fails
  }
  state->stats->miss.Inc();
  ex.Next();
}

void CacheFilter::FinishFlight(const CacheKey& key, const net::Response& response, bool shareable,
                               std::string_view follower_status, RouteStats& stats) {
  std::vector<Exchange*> followers;
  {
    FlightShard& shard = ShardFor(key);
    std::lock_guard lock(shard.mu);
    auto it = shard.misses.find(key);
    if (it == shard.misses.end()) return;
    followers = std::move(it->second.followers);
    shard.misses.erase(it);
  }
  for (Exchange* follower : followers) {
    if (!shareable) {
      // Each follower asks for itself; later misses may lead flights of their own.
      follower->state() = std::make_shared<RequestState>(RequestState{
          RequestState::Kind::kAlone, key, &stats, Now(), nullptr, /*released_follower=*/true});
      follower->Next();
      continue;
    }
    // A copy that shares the body (responses passing through OnResponse point at the entry).
    net::Response copy = response;
    std::erase_if(copy.headers, [](const auto& h) { return LeaderOnlyHeader(h.first); });
    copy.headers.emplace_back("Cache-Status", std::string(follower_status));
    follower->Respond(std::move(copy));
  }
}

void CacheFilter::Invalidate(std::string_view route, std::string_view path) {
  epoch_.fetch_add(1, std::memory_order_acq_rel);
  cache::KeyParts parts;
  parts.method = "GET";
  parts.route = route;
  parts.path = path;
  const CacheKey key = cache::MakeCacheKey(parts);
  l1_.Erase(key);
  if (l2_ != nullptr) l2_->Erase(key);
}

void CacheFilter::OnResponse(Exchange& ex, net::Response& response) {
  auto state = std::static_pointer_cast<RequestState>(ex.state());
  if (state == nullptr) return;
  ex.state().reset();
  response.ProduceBody();  // the entry and any collapsed followers need the text
  const RoutePolicy& policy = ex.policy();
  const std::int64_t now = Now();
  const bool shareable = !IsPrivate(response);
  const int origin_status = response.status;

  Entry stored;
  if (state->kind != RequestState::Kind::kAlone && shareable && StorableStatus(response.status) &&
      state->epoch == epoch_.load(std::memory_order_acquire)) {
    auto entry = std::make_shared<CachedResponse>();
    entry->status = response.status;
    entry->content_type = std::string(response.ContentType());
    for (const auto& [name, value] : response.headers) {
      if (!PerRequestHeader(name)) entry->headers.emplace_back(name, value);
    }
    entry->header_lines = entry->HeaderLines();
    if (response.shared_body != nullptr) {
      entry->body = *response.shared_body;
    } else {
      entry->body = std::move(response.body);
      response.body.clear();
    }
    entry->stored_at_ms = now;
    entry->ttl_ms = policy.cache_ttl.count();
    entry->stale_while_revalidate_ms = policy.stale_while_revalidate.count();
    entry->stale_if_error_ms = policy.stale_if_error.count();
    entry->compute_ms = std::max<std::int64_t>(0, now - state->started_ms);
    stored = entry;
    // The client's body now lives in the entry: point at it rather than copy it back.
    response.shared_body = std::shared_ptr<const std::string>(stored, &stored->body);
    l1_.Put(state->key, stored);
    if (l2_ != nullptr) l2_->Put(state->key, stored);
  }

  if (state->kind == RequestState::Kind::kRefresh) {
    FlightShard& shard = ShardFor(state->key);
    std::lock_guard lock(shard.mu);
    shard.refreshes.erase(state->key);
    return;  // no client: the response is dropped
  }

  const std::string_view fwd = state->stale != nullptr ? "stale" : "miss";
  bool served_stale = false;
  if (stored == nullptr && origin_status >= 500 && origin_status <= 599) {
    // stale-if-error (RFC 5861 section 4): prefer the newest usable entry.
    Entry stale = l1_.Get(state->key, now);
    if (stale == nullptr ||
        (state->stale != nullptr && state->stale->stored_at_ms > stale->stored_at_ms)) {
      stale = state->stale;
    }
    if (stale != nullptr && now < stale->stored_at_ms + stale->ttl_ms + stale->stale_if_error_ms) {
      std::string status = ForwardStatus(fwd, origin_status);
      status += "; ttl=";
      status += std::to_string(TtlSeconds(*stale, now));
      response = FromEntry(stale, now, std::move(status));
      served_stale = true;
    }
  }

  if (state->kind == RequestState::Kind::kLeader) {
    FinishFlight(state->key, response, shareable || served_stale,
                 ForwardStatus(fwd, origin_status) + "; collapsed", *state->stats);
  }
  if (served_stale) return;  // FromEntry set Cache-Status
  std::string status = ForwardStatus(fwd, origin_status);
  if (stored != nullptr) status += "; stored";
  if (state->released_follower) status += "; collapsed=?0";
  response.headers.emplace_back("Cache-Status", std::move(status));
}

}  // namespace megaserve::gateway
