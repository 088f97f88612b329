#include "gateway/cache_filter.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "gateway/filter.h"

namespace megaserve::gateway {
namespace {

using namespace std::chrono_literals;
using Headers = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kPattern = "/v1/items/{id}";

// A request built by hand, with its own storage.
struct TestRequest {
  std::string method_text, target, body;
  Headers headers;
  net::Request request;

  TestRequest(net::Method method, std::string target_in, std::string body_in, Headers headers_in)
      : method_text(net::MethodName(method)),
        target(std::move(target_in)),
        body(std::move(body_in)),
        headers(std::move(headers_in)) {
    request.method = method;
    request.method_text = method_text;
    request.SetTarget(target);
    request.body = body;
    request.request_id = "test";
    request.SetHeaderSource(this, &Find, &Each);
  }
  static std::string_view Find(const void* self, std::string_view name) {
    for (const auto& [n, v] : static_cast<const TestRequest*>(self)->headers) {
      if (n == name) return v;
    }
    return {};
  }
  static void Each(const void* self, net::Request::HeaderVisitor visit, void* fn) {
    for (const auto& [n, v] : static_cast<const TestRequest*>(self)->headers) visit(fn, n, v);
  }
};

// Records the reply of a request that the chain suspended.
class TestDeferrer final : public net::Deferrer {
 public:
  net::Reply Defer() override {
    return [this](net::Response r) {
      std::lock_guard lock(mu_);
      response_ = std::move(r);
      done_ = true;
      cv_.notify_all();
    };
  }
  // The reply, once it has come (fails the test after 5 s).
  net::Response Wait() {
    std::unique_lock lock(mu_);
    EXPECT_TRUE(cv_.wait_for(lock, 5s, [&] { return done_; })) << "no reply";
    return response_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  net::Response response_;
};

// One request's trip through a chain.
struct Call {
  TestRequest req;
  TestDeferrer defer;
  net::Response out;
  bool answered_at_once = false;

  Call(net::Method method, std::string target, std::string body = "", Headers headers = {})
      : req(method, std::move(target), std::move(body), std::move(headers)) {}
  void Start(Chain& chain) { answered_at_once = chain.Handle(req.request, out, defer); }
  net::Response Result() { return answered_at_once ? out : defer.Wait(); }
};

std::string HeaderOf(const net::Response& r, std::string_view name) {
  return std::string(r.HeaderValue(name));
}

// The origin: counts calls and answers from its own thread after a delay.
class Origin {
 public:
  struct Answer {
    int status = 200;
    std::string body;
    Headers headers;
    bool lazy = false;  // the body through make_body
  };

  Origin() : worker_([this] { Run(); }) {}
  ~Origin() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  // What the origin answers; by default 200 with "v<call number>".
  std::function<Answer(const net::Request&, int call)> answer = [](const net::Request&, int n) {
    return Answer{200, "v" + std::to_string(n), {{"Cache-Control", "max-age=60"}}};
  };
  std::function<void()> on_call;  // runs on the caller's thread at each call
  std::chrono::milliseconds delay{0};
  std::atomic<int> calls{0};

  net::AsyncHandler Handler() {
    return [this](const net::Request& request, net::Reply reply) {
      int n = calls.fetch_add(1) + 1;
      if (on_call) on_call();
      Answer a = answer(request, n);
      net::Response r;
      r.status = a.status;
      if (a.lazy) {
        r.make_body = [body = std::move(a.body)](std::string& out) { out += body; };
      } else {
        r.body = std::move(a.body);
      }
      r.headers = std::move(a.headers);
      r.headers.emplace_back("X-Request-Id", "per-request");
      std::lock_guard lock(mu_);
      queue_.push_back({std::chrono::steady_clock::now() + delay, std::move(reply), std::move(r)});
      ++pending_;
      cv_.notify_all();
    };
  }

  // Waits until every call so far has been answered and the answer has been handled.
  void WaitIdle() {
    std::unique_lock lock(mu_);
    ASSERT_TRUE(idle_cv_.wait_for(lock, 5s, [&] { return pending_ == 0; }));
  }

 private:
  struct Pending {
    std::chrono::steady_clock::time_point due;
    net::Reply reply;
    net::Response response;
  };

  void Run() {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Pending p = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      std::this_thread::sleep_until(p.due);
      p.reply(std::move(p.response));
      lock.lock();
      --pending_;
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<Pending> queue_;
  int pending_ = 0;
  bool stop_ = false;
  std::thread worker_;  // last: starts after the rest is ready
};

// A shared tier in memory; answers lookups from another thread, as a real one would.
class FakeRemoteCache final : public cache::RemoteCache {
 public:
  ~FakeRemoteCache() override {
    for (auto& t : threads_) t.join();
  }
  void Get(const cache::CacheKey& key, GetCallback done) override {
    gets.fetch_add(1);
    core::Result<std::shared_ptr<const cache::CachedResponse>> result =
        std::shared_ptr<const cache::CachedResponse>();
    if (fail) {
      result = core::Unavailable("redis is down");
    } else {
      std::lock_guard lock(mu_);
      if (auto it = entries_.find(key.Hex()); it != entries_.end()) result = it->second;
    }
    std::lock_guard lock(mu_);
    threads_.emplace_back([done = std::move(done), result = std::move(result)]() mutable {
      done(std::move(result));
    });
  }
  void Put(const cache::CacheKey& key,
           std::shared_ptr<const cache::CachedResponse> entry) override {
    puts.fetch_add(1);
    std::lock_guard lock(mu_);
    entries_[key.Hex()] = std::move(entry);
  }
  void Erase(const cache::CacheKey& key) override {
    std::lock_guard lock(mu_);
    entries_.erase(key.Hex());
  }
  std::size_t size() {
    std::lock_guard lock(mu_);
    return entries_.size();
  }

  std::atomic<bool> fail{false};
  std::atomic<int> gets{0}, puts{0};

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const cache::CachedResponse>> entries_;
  std::vector<std::thread> threads_;
};

class CacheFilterTest : public ::testing::Test {
 protected:
  CacheFilterTest() {
    policy.pattern = std::string(kPattern);
    policy.filters = {"cache"};
    policy.cache_ttl = 10s;
  }

  void Build(CacheFilterOptions options = {}, cache::RemoteCache* l2 = nullptr) {
    options.now_ms = [this] { return now.load(); };
    filter = std::make_unique<CacheFilter>(l1, l2, registry, std::move(options));
    chain = std::make_unique<Chain>(policy, std::vector<Filter*>{filter.get()}, nullptr,
                                    origin.Handler());
  }

  net::Response Send(Chain& c, net::Method method, std::string target, std::string body = "",
                     Headers headers = {}, bool* at_once = nullptr) {
    Call call(method, std::move(target), std::move(body), std::move(headers));
    call.Start(c);
    if (at_once) *at_once = call.answered_at_once;
    return call.Result();
  }
  net::Response Get(std::string target = "/v1/items/7", Headers headers = {},
                    bool* at_once = nullptr) {
    return Send(*chain, net::Method::kGet, std::move(target), "", std::move(headers), at_once);
  }

  double Counter(std::string_view result) {
    std::string needle = "megaserve_cache_requests_total{route=\"" + std::string(kPattern) +
                         "\",result=\"" + std::string(result) + "\"} ";
    return Sample(needle);
  }
  double Sample(const std::string& needle) {
    // A sample line, not the HELP line that also starts with the name.
    std::string text = "\n" + registry.Expose();
    std::size_t at = text.find("\n" + needle);
    if (at == std::string::npos) return -1;
    return std::stod(text.substr(at + 1 + needle.size()));
  }

  std::atomic<std::int64_t> now{1'000'000};
  RoutePolicy policy;
  metrics::Registry registry;
  cache::MemoryCache l1{64 << 20};
  std::unique_ptr<CacheFilter> filter;
  std::unique_ptr<Chain> chain;
  Origin origin;  // last, so that it is drained first
};

TEST_F(CacheFilterTest, NameIsCache) {
  Build();
  EXPECT_EQ(filter->name(), "cache");
}

TEST_F(CacheFilterTest, ThousandConcurrentIdenticalMissesMakeOneOriginCall) {
  origin.delay = 300ms;
  Build();
  constexpr int kThreads = 8, kPerThread = 125;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < kThreads * kPerThread; ++i) {
    calls.push_back(std::make_unique<Call>(net::Method::kGet, "/v1/items/7?b=2&a=1"));
  }
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) calls[t * kPerThread + i]->Start(*chain);
    });
  }
  for (auto& t : threads) t.join();
  int stored = 0, collapsed = 0, hits = 0, with_request_id = 0;
  for (auto& call : calls) {
    net::Response r = call->Result();
    with_request_id += HeaderOf(r, "X-Request-Id") == "per-request";
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.Body(), "v1");
    std::string status = HeaderOf(r, "Cache-Status");
    if (status == "megaserve; fwd=miss; fwd-status=200; stored") ++stored;
    if (status == "megaserve; fwd=miss; fwd-status=200; collapsed") ++collapsed;
    if (status == "megaserve; hit") ++hits;
  }
  EXPECT_EQ(origin.calls.load(), 1);
  EXPECT_EQ(stored, 1);
  EXPECT_EQ(with_request_id, 1) << "only the leader's client gets the origin's per-request headers";
  EXPECT_EQ(stored + collapsed + hits, kThreads * kPerThread);
  EXPECT_GT(collapsed, 0);
  EXPECT_EQ(Counter("miss"), 1);
  EXPECT_EQ(Counter("coalesced"), collapsed);
  EXPECT_EQ(Counter("hit"), hits);
}

TEST_F(CacheFilterTest, FreshHitThenMissAfterTtlWithAgeAndCacheStatus) {
  Build();
  bool at_once = true;
  net::Response miss = Get("/v1/items/7", {}, &at_once);
  EXPECT_FALSE(at_once);
  EXPECT_EQ(miss.Body(), "v1");
  EXPECT_EQ(HeaderOf(miss, "Cache-Status"), "megaserve; fwd=miss; fwd-status=200; stored");
  EXPECT_EQ(HeaderOf(miss, "Age"), "");
  EXPECT_EQ(HeaderOf(miss, "X-Request-Id"), "per-request");

  now += 5'400;
  net::Response hit = Get("/v1/items/7", {}, &at_once);
  EXPECT_TRUE(at_once) << "a fresh hit must not suspend";
  EXPECT_EQ(hit.status, 200);
  EXPECT_EQ(hit.Body(), "v1");
  EXPECT_EQ(HeaderOf(hit, "Cache-Status"), "megaserve; hit");
  EXPECT_EQ(HeaderOf(hit, "Age"), "5");
  EXPECT_EQ(HeaderOf(hit, "Cache-Control"), "max-age=60");
  EXPECT_EQ(HeaderOf(hit, "X-Request-Id"), "") << "per-request headers are not replayed";
  EXPECT_EQ(hit.ContentType(), "application/json");
  EXPECT_EQ(origin.calls.load(), 1);
  EXPECT_EQ(Sample("megaserve_cache_hit_ratio{route=\"/v1/items/{id}\"} "), 0.5);
  EXPECT_EQ(Sample("megaserve_cache_entries "), 1);
  EXPECT_GT(Sample("megaserve_cache_bytes "), 0);

  now += 4'600;  // exactly the TTL: no longer fresh, and with no stale windows, gone
  net::Response again = Get();
  EXPECT_EQ(again.Body(), "v2");
  EXPECT_EQ(HeaderOf(again, "Cache-Status"), "megaserve; fwd=miss; fwd-status=200; stored");
  EXPECT_EQ(origin.calls.load(), 2);
}

// An origin that leaves its body to make_body is stored and served like any other.
TEST_F(CacheFilterTest, BodyMadeLaterIsStored) {
  Build();
  origin.answer = [](const net::Request&, int n) {
    return Origin::Answer{200, "lazy" + std::to_string(n), {{"Cache-Control", "max-age=60"}}, true};
  };
  net::Response first = Get();
  EXPECT_EQ(first.Body(), "lazy1");
  EXPECT_FALSE(first.make_body);
  net::Response second = Get();
  EXPECT_EQ(second.Body(), "lazy1");
  EXPECT_EQ(origin.calls.load(), 1);
  EXPECT_EQ(Counter("hit"), 1);
}

TEST_F(CacheFilterTest, QueryOrderAndOtherPathsSelectEntries) {
  Build();
  EXPECT_EQ(Get("/v1/items/7?a=1&b=2").Body(), "v1");
  EXPECT_EQ(Get("/v1/items/7?b=2&a=1").Body(), "v1");
  EXPECT_EQ(Get("/v1/items/8?b=2&a=1").Body(), "v2");
  EXPECT_EQ(Get("/v1/items/7").Body(), "v3");
  EXPECT_EQ(origin.calls.load(), 3);
}

TEST_F(CacheFilterTest, StaleWhileRevalidateServesStaleAndRefreshesOnce) {
  policy.stale_while_revalidate = 30s;
  origin.delay = 200ms;
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  now += 15'000;
  for (int i = 0; i < 5; ++i) {
    bool at_once = false;
    net::Response r = Get("/v1/items/7", {}, &at_once);
    EXPECT_TRUE(at_once) << "stale content is served at once";
    EXPECT_EQ(r.Body(), "v1");
    EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; hit; ttl=-5");
    EXPECT_EQ(HeaderOf(r, "Age"), "15");
  }
  EXPECT_EQ(origin.calls.load(), 2) << "exactly one background refresh";
  origin.WaitIdle();
  net::Response fresh = Get();
  EXPECT_EQ(fresh.Body(), "v2");
  EXPECT_EQ(HeaderOf(fresh, "Cache-Status"), "megaserve; hit");
  EXPECT_EQ(HeaderOf(fresh, "Age"), "0");
  EXPECT_EQ(origin.calls.load(), 2);
  EXPECT_EQ(Counter("stale"), 5);

  // Once the refresh is done, a later stale period refreshes again.
  now += 12'000;
  EXPECT_EQ(Get().Body(), "v2");
  origin.WaitIdle();
  EXPECT_EQ(origin.calls.load(), 3);
  EXPECT_EQ(Get().Body(), "v3");
}

TEST_F(CacheFilterTest, FailedRevalidationKeepsTheStaleEntry) {
  policy.stale_while_revalidate = 30s;
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  origin.answer = [](const net::Request&, int) { return Origin::Answer{500, "boom", {}}; };
  now += 15'000;
  EXPECT_EQ(Get().Body(), "v1");
  origin.WaitIdle();
  EXPECT_EQ(origin.calls.load(), 2);
  EXPECT_EQ(Get().Body(), "v1");
}

TEST_F(CacheFilterTest, StaleIfErrorServesTheStaleEntryWithinItsWindow) {
  policy.stale_if_error = 60s;
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  origin.answer = [](const net::Request&, int) {
    return Origin::Answer{500, R"({"error":"boom"})", {}};
  };
  now += 20'000;
  net::Response r = Get();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.Body(), "v1");
  EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; fwd=stale; fwd-status=500; ttl=-10");
  EXPECT_EQ(HeaderOf(r, "Age"), "20");
  EXPECT_EQ(origin.calls.load(), 2);

  now += 51'000;  // 71 s after storing: past ttl + stale_if_error
  net::Response error = Get();
  EXPECT_EQ(error.status, 500);
  EXPECT_EQ(error.Body(), R"({"error":"boom"})");
  EXPECT_EQ(HeaderOf(error, "Cache-Status"), "megaserve; fwd=miss; fwd-status=500");
  EXPECT_EQ(origin.calls.load(), 3);
}

TEST_F(CacheFilterTest, StaleIfErrorAlsoAnswersCollapsedFollowers) {
  policy.stale_if_error = 60s;
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  origin.answer = [](const net::Request&, int) { return Origin::Answer{503, "down", {}}; };
  origin.delay = 200ms;
  now += 20'000;
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 10; ++i) {
    calls.push_back(std::make_unique<Call>(net::Method::kGet, "/v1/items/7"));
    calls.back()->Start(*chain);
  }
  for (auto& call : calls) {
    net::Response r = call->Result();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.Body(), "v1");
  }
  EXPECT_EQ(HeaderOf(calls[1]->Result(), "Cache-Status"),
            "megaserve; fwd=stale; fwd-status=503; collapsed");
  EXPECT_EQ(origin.calls.load(), 2);
}

TEST_F(CacheFilterTest, XFetchRefreshesEarlyWhenTheRandomDrawSaysSo) {
  std::atomic<double> draw{0.5};
  std::atomic<int> draws{0};
  CacheFilterOptions options;
  options.random = [&] {
    draws.fetch_add(1);
    return draw.load();
  };
  origin.on_call = [this] { now += 1'000; };  // each computation takes 1 s
  Build(std::move(options));
  EXPECT_EQ(Get().Body(), "v1");  // stored at 1'001'000, expires at 1'011'000, delta 1000
  EXPECT_EQ(draws.load(), 0);

  now = 1'009'000;  // 2 s before expiry: refresh when -ln(r) * 1000 >= 2000, r <= e^-2
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(draws.load(), 1);
  origin.WaitIdle();
  EXPECT_EQ(origin.calls.load(), 1) << "-ln(0.5) < 2: no early refresh";

  draw = 0.1;  // -ln(0.1) = 2.3
  bool at_once = false;
  net::Response r = Get("/v1/items/7", {}, &at_once);
  EXPECT_TRUE(at_once);
  EXPECT_EQ(r.Body(), "v1") << "the hit is served while the refresh runs";
  EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; hit");
  origin.WaitIdle();
  EXPECT_EQ(origin.calls.load(), 2);
  EXPECT_EQ(Get().Body(), "v2");
}

TEST_F(CacheFilterTest, XFetchDrawsNothingFarFromExpiry) {
  std::atomic<int> draws{0};
  CacheFilterOptions options;
  options.random = [&] {
    draws.fetch_add(1);
    return 1e-300;  // would always refresh if it were drawn
  };
  origin.on_call = [this] { now += 10; };  // 10 ms to compute, 10 s to live
  Build(std::move(options));
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(draws.load(), 0);
  EXPECT_EQ(origin.calls.load(), 1);
}

TEST_F(CacheFilterTest, PostIsCachedByBodyWhenTheRouteSaysSo) {
  policy.cache_post = true;
  origin.answer = [](const net::Request& r, int) {
    return Origin::Answer{200, "echo:" + std::string(r.body), {}};
  };
  Build();
  EXPECT_EQ(Send(*chain, net::Method::kPost, "/v1/items/7", "a").Body(), "echo:a");
  EXPECT_EQ(Send(*chain, net::Method::kPost, "/v1/items/7", "b").Body(), "echo:b");
  net::Response r = Send(*chain, net::Method::kPost, "/v1/items/7", "a");
  EXPECT_EQ(r.Body(), "echo:a");
  EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; hit");
  EXPECT_EQ(origin.calls.load(), 2);
  // A GET is a different entry from any POST.
  EXPECT_EQ(Get().Body(), "echo:");
  EXPECT_EQ(origin.calls.load(), 3);
}

TEST_F(CacheFilterTest, KeySaltChangeMakesTheNextRequestAMiss) {
  std::atomic<std::uint64_t> version{1};
  std::string salted_route;
  Build({.key_salt = [&](std::string_view route) -> std::uint64_t {
    salted_route = std::string(route);
    return version.load();
  }});
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(salted_route, kPattern);
  EXPECT_EQ(Get().Body(), "v1");  // the same salt: a hit
  version = 2;                    // the data changed
  net::Response r = Get();
  EXPECT_EQ(r.Body(), "v2");
  EXPECT_NE(HeaderOf(r, "Cache-Status").find("fwd=miss"), std::string::npos);
  EXPECT_EQ(Get().Body(), "v2");
  EXPECT_EQ(origin.calls.load(), 2);
}

TEST_F(CacheFilterTest, PostBypassesTheCacheByDefault) {
  Build();
  EXPECT_EQ(Send(*chain, net::Method::kPost, "/v1/items/7", "a").Body(), "v1");
  net::Response r = Send(*chain, net::Method::kPost, "/v1/items/7", "a");
  EXPECT_EQ(r.Body(), "v2");
  EXPECT_EQ(HeaderOf(r, "Cache-Status"), "");
  EXPECT_EQ(Send(*chain, net::Method::kDelete, "/v1/items/7").Body(), "v3");
  EXPECT_EQ(Counter("bypass"), 3);
}

TEST_F(CacheFilterTest, RoutesWithoutTtlBypass) {
  policy.cache_ttl = 0s;
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(Get().Body(), "v2");
  EXPECT_EQ(Counter("bypass"), 2);
  EXPECT_EQ(l1.entries(), 0u);
}

TEST_F(CacheFilterTest, HeadIsServedFromTheGetEntry) {
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  bool at_once = false;
  net::Response head = Send(*chain, net::Method::kHead, "/v1/items/7", "", {}, &at_once);
  EXPECT_TRUE(at_once);
  EXPECT_EQ(HeaderOf(head, "Cache-Status"), "megaserve; hit");
  // A HEAD miss goes forward alone and does not fill the entry.
  net::Response head_miss = Send(*chain, net::Method::kHead, "/v1/items/8");
  EXPECT_EQ(HeaderOf(head_miss, "Cache-Status"), "megaserve; fwd=miss; fwd-status=200");
  EXPECT_EQ(Get("/v1/items/8").Body(), "v3");
  EXPECT_EQ(origin.calls.load(), 3);
}

TEST_F(CacheFilterTest, VaryHeadersSelectVariants) {
  policy.vary = {"accept-language"};
  origin.answer = [](const net::Request& r, int) {
    return Origin::Answer{200, "lang:" + std::string(r.Header("accept-language")), {}};
  };
  Build();
  EXPECT_EQ(Get("/v1/items/7", {{"accept-language", "en"}}).Body(), "lang:en");
  EXPECT_EQ(Get("/v1/items/7", {{"accept-language", "fr"}}).Body(), "lang:fr");
  EXPECT_EQ(Get("/v1/items/7", {{"accept-language", "en"}}).Body(), "lang:en");
  EXPECT_EQ(Get("/v1/items/7", {{"accept-language", "fr"}}).Body(), "lang:fr");
  EXPECT_EQ(Get("/v1/items/7", {{"x-other", "1"}}).Body(), "lang:");
  EXPECT_EQ(Get("/v1/items/7").Body(), "lang:");
  EXPECT_EQ(origin.calls.load(), 3);
}

TEST_F(CacheFilterTest, ErrorStatusesAreNotStored) {
  origin.answer = [](const net::Request&, int n) {
    return Origin::Answer{500, "e" + std::to_string(n), {}};
  };
  Build();
  net::Response first = Get();
  EXPECT_EQ(first.status, 500);
  EXPECT_EQ(HeaderOf(first, "Cache-Status"), "megaserve; fwd=miss; fwd-status=500");
  EXPECT_EQ(Get().Body(), "e2");
  EXPECT_EQ(origin.calls.load(), 2);
  EXPECT_EQ(l1.entries(), 0u);
}

TEST_F(CacheFilterTest, NotFoundIsStored) {
  origin.answer = [](const net::Request&, int n) { return Origin::Answer{404, "gone", {}}; };
  Build();
  EXPECT_EQ(Get().status, 404);
  net::Response r = Get();
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; hit");
  EXPECT_EQ(origin.calls.load(), 1);
}

TEST_F(CacheFilterTest, NoStorePrivateAndSetCookieAreNotStored) {
  const Headers cases[] = {{{"Cache-Control", "no-store"}},
                           {{"cache-control", "max-age=60, Private"}},
                           {{"Set-Cookie", "session=abc"}}};
  for (const Headers& headers : cases) {
    origin.answer = [headers](const net::Request&, int n) {
      return Origin::Answer{200, "v" + std::to_string(n), headers};
    };
    Build();
    int before = origin.calls.load();
    net::Response r = Get();
    EXPECT_EQ(HeaderOf(r, "Cache-Status"), "megaserve; fwd=miss; fwd-status=200");
    Get();
    EXPECT_EQ(origin.calls.load(), before + 2) << headers[0].first;
    EXPECT_EQ(l1.entries(), 0u);
  }
}

TEST_F(CacheFilterTest, PrivateResponsesAreNotSharedWithFollowers) {
  origin.answer = [](const net::Request&, int n) {
    return Origin::Answer{
        200, "mine" + std::to_string(n), {{"Set-Cookie", "s=" + std::to_string(n)}}};
  };
  origin.delay = 100ms;
  Build();
  std::vector<std::unique_ptr<Call>> calls;
  for (int i = 0; i < 3; ++i) {
    calls.push_back(std::make_unique<Call>(net::Method::kGet, "/v1/items/7"));
    calls.back()->Start(*chain);
  }
  std::set<std::string> bodies;
  for (auto& call : calls) bodies.insert(std::string(call->Result().Body()));
  EXPECT_EQ(bodies.size(), 3u) << "every client got its own response";
  EXPECT_EQ(origin.calls.load(), 3);
  EXPECT_EQ(HeaderOf(calls[2]->Result(), "Cache-Status"),
            "megaserve; fwd=miss; fwd-status=200; collapsed=?0");
}

TEST_F(CacheFilterTest, SharedTierIsFilledOnMissAndServesAnotherProcess) {
  FakeRemoteCache l2;
  Build({}, &l2);
  net::Response miss = Get();
  EXPECT_EQ(miss.Body(), "v1");
  EXPECT_EQ(HeaderOf(miss, "Cache-Status"), "megaserve; fwd=miss; fwd-status=200; stored");
  EXPECT_EQ(l2.gets.load(), 1);
  EXPECT_EQ(l2.puts.load(), 1);
  EXPECT_EQ(l2.size(), 1u);

  // Another process: its own memory tier, the same shared tier and origin.
  cache::MemoryCache other_l1(1 << 20);
  metrics::Registry other_registry;
  CacheFilterOptions options;
  options.now_ms = [this] { return now.load(); };
  CacheFilter other(other_l1, &l2, other_registry, options);
  Chain other_chain(policy, {&other}, nullptr, origin.Handler());
  now += 2'000;
  net::Response shared = Send(other_chain, net::Method::kGet, "/v1/items/7");
  EXPECT_EQ(shared.Body(), "v1");
  EXPECT_EQ(HeaderOf(shared, "Cache-Status"), "megaserve; hit; detail=l2");
  EXPECT_EQ(HeaderOf(shared, "Age"), "2");
  EXPECT_EQ(origin.calls.load(), 1);
  bool at_once = false;
  net::Response local = Send(other_chain, net::Method::kGet, "/v1/items/7", "", {}, &at_once);
  EXPECT_TRUE(at_once);
  EXPECT_EQ(HeaderOf(local, "Cache-Status"), "megaserve; hit");
  EXPECT_EQ(l2.gets.load(), 2);
  std::string text = other_registry.Expose();
  EXPECT_NE(
      text.find("megaserve_cache_requests_total{route=\"/v1/items/{id}\",result=\"l2_hit\"} 1"),
      std::string::npos)
      << text;
}

TEST_F(CacheFilterTest, SharedTierErrorsCountAndReadAsMisses) {
  FakeRemoteCache l2;
  l2.fail = true;
  Build({}, &l2);
  EXPECT_EQ(Get().Body(), "v1");
  EXPECT_EQ(origin.calls.load(), 1);
  EXPECT_EQ(Sample("megaserve_cache_l2_errors_total "), 1);
  EXPECT_EQ(Counter("miss"), 1);
  EXPECT_EQ(Get().Body(), "v1");  // now in L1
}

}  // namespace
}  // namespace megaserve::gateway

namespace megaserve::gateway {
namespace {

// Hot entries are served from per-thread copies; a change in L1 (here an invalidation) must
// still be seen by the very next request.
TEST_F(CacheFilterTest, InvalidateIsSeenAtOnceEvenByCopiedHotEntries) {
  Build();
  EXPECT_EQ(Get().Body(), "v1");
  for (int i = 0; i < 3; ++i) {
    bool at_once = false;
    EXPECT_EQ(Get("/v1/items/7", {}, &at_once).Body(), "v1");
    EXPECT_TRUE(at_once);
  }
  EXPECT_EQ(origin.calls.load(), 1);
  filter->Invalidate("/v1/items/{id}", "/v1/items/7");
  EXPECT_EQ(Get().Body(), "v2");
  EXPECT_EQ(origin.calls.load(), 2);
  EXPECT_EQ(Get().Body(), "v2");  // and cached again
  EXPECT_EQ(origin.calls.load(), 2);
}

}  // namespace
}  // namespace megaserve::gateway
