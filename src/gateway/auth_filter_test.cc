// The auth filter in a chain: missing, malformed, unknown, wrong and revoked keys, scopes, the
// identity it fills, the cache-hit path that never suspends, and revocation by another process.
#include "gateway/auth_filter.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "core/time_format.h"
#include "store/test_util.h"

namespace megaserve::gateway {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

// Captures the Reply of a request that went asynchronous.
class TestDeferrer final : public net::Deferrer {
 public:
  net::Reply Defer() override {
    return [this](net::Response r) {
      std::lock_guard lock(mu_);
      response_ = std::move(r);
      cv_.notify_all();
    };
  }
  std::optional<net::Response> Wait() {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, 5s, [this] { return response_.has_value(); });
    return std::move(response_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<net::Response> response_;
};

// Records the identity the auth filter established, for the origin to be checked against.
class IdentityProbe final : public Filter {
 public:
  std::string_view name() const override { return "probe"; }
  void OnRequest(Exchange& ex) override {
    std::lock_guard lock(mu);
    seen = ex.identity();
    ex.Next();
  }
  std::mutex mu;
  Identity seen;
};

struct Outcome {
  bool sync = false;  // Handle answered without suspending
  net::Response response;
};

std::string_view HeaderOf(const net::Response& r, std::string_view name) {
  return std::string_view(r.HeaderValue(name));
}

class AuthFilterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    test_db_.Open(store::Engine::kSqlite);
    if (HasFatalFailure()) return;
    keys_ = std::make_unique<ApiKeyStore>(test_db_.db());
    pool_ = std::make_unique<core::BlockingPool>("auth-test", 2, 64);
    cache_ = std::make_unique<KeyCache>(*keys_, *pool_);
  }
  void TearDown() override {
    chain_.reset();
    filter_.reset();
    cache_.reset();
    pool_.reset();
  }

  void MakeChain(std::string scope, bool required = true) {
    filter_ =
        std::make_unique<AuthFilter>(*cache_, AuthFilterOptions{.required = required}, registry_);
    RoutePolicy policy;
    policy.pattern = "/v1/test";
    policy.scope = std::move(scope);
    chain_ = std::make_unique<Chain>(
        policy, std::vector<Filter*>{filter_.get(), &probe_},
        [](const net::Request&) { return net::JsonResponse(200, R"({"ok":true})"); }, nullptr);
  }

  std::string MustCreate(std::uint32_t scopes, std::int64_t quota = 0) {
    auto created = keys_->Create("test key", scopes, quota);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? created->token : "";
  }

  // Sends GET /v1/test with these headers through the chain, as the server would.
  Outcome Send(std::vector<std::pair<std::string, std::string>> headers) {
    net::Request req;
    req.method = net::Method::kGet;
    req.method_text = "GET";
    req.target = req.path = "/v1/test";
    req.SetHeaderSource(&headers, [](const void* h, std::string_view name) -> std::string_view {
      for (const auto& [n, v] : *static_cast<const decltype(headers)*>(h)) {
        if (n.size() == name.size() &&
            std::equal(n.begin(), n.end(), name.begin(),
                       [](char a, char b) { return std::tolower(a) == std::tolower(b); })) {
          return v;
        }
      }
      return {};
    });
    TestDeferrer deferrer;
    Outcome out;
    out.sync = chain_->Handle(req, out.response, deferrer);
    if (!out.sync) {
      auto r = deferrer.Wait();
      EXPECT_TRUE(r.has_value()) << "no reply";
      if (r) out.response = std::move(*r);
    }
    return out;
  }
  Outcome SendBearer(const std::string& token) {
    return Send({{"Authorization", "Bearer " + token}});
  }

  uint64_t Count(std::string_view result) {
    return registry_.AddCounter("megaserve_auth_requests_total", "", {"result"})
        .WithLabels({result})
        .Value();
  }

  store::testing::TestDatabase test_db_;
  std::unique_ptr<ApiKeyStore> keys_;
  std::unique_ptr<core::BlockingPool> pool_;
  std::unique_ptr<KeyCache> cache_;
  metrics::Registry registry_;
  IdentityProbe probe_;
  std::unique_ptr<AuthFilter> filter_;
  std::unique_ptr<Chain> chain_;
};

TEST_F(AuthFilterTest, MissingKeyIs401WithTheBearerChallenge) {
  MakeChain("");
  EXPECT_EQ(filter_->name(), "auth");
  Outcome out = Send({});
  EXPECT_TRUE(out.sync);
  EXPECT_EQ(out.response.status, 401);
  EXPECT_THAT(out.response.body, HasSubstr("\"code\":\"missing_api_key\""));
  EXPECT_EQ(HeaderOf(out.response, "WWW-Authenticate"), "Bearer realm=\"megaserve\"");
  // Another scheme is not an API key.
  EXPECT_EQ(Send({{"Authorization", "Basic dXNlcjpwdw=="}}).response.status, 401);
  EXPECT_EQ(Count("missing"), 2u);
}

TEST_F(AuthFilterTest, MalformedUnknownAndWrongKeysAre401InvalidApiKey) {
  MakeChain("");
  std::string token = MustCreate(0);
  std::string wrong = token;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  const std::vector<std::string> bad = {"ms_short", "sk_" + token.substr(3),
                                        "ms_zzzzzzzzzzzz_" + std::string(32, 'A'), wrong};
  for (const std::string& t : bad) {
    Outcome out = SendBearer(t);
    EXPECT_EQ(out.response.status, 401) << t;
    EXPECT_THAT(out.response.body, HasSubstr("\"code\":\"invalid_api_key\"")) << t;
    EXPECT_THAT(HeaderOf(out.response, "WWW-Authenticate"),
                HasSubstr("Bearer realm=\"megaserve\", error=\"invalid_token\""));
    EXPECT_THAT(out.response.body, ::testing::Not(HasSubstr(t)));
  }
  EXPECT_EQ(Count("invalid"), bad.size());
}

TEST_F(AuthFilterTest, ValidKeyFillsTheIdentityAndCacheHitsDoNotSuspend) {
  MakeChain("images");
  std::string token = MustCreate(ScopeBit(Scope::kImages) | ScopeBit(Scope::kJobs), 90);
  auto parsed = *ParseToken(token);

  Outcome first = SendBearer(token);  // cache miss: read on the pool
  EXPECT_FALSE(first.sync);
  EXPECT_EQ(first.response.status, 200) << first.response.body;
  {
    std::lock_guard lock(probe_.mu);
    EXPECT_EQ(probe_.seen.key_id, parsed.id);
    EXPECT_EQ(probe_.seen.key_name, "test key");
    EXPECT_EQ(probe_.seen.scopes, ScopeBit(Scope::kImages) | ScopeBit(Scope::kJobs));
    EXPECT_EQ(probe_.seen.quota, 90);
  }
  Outcome second = SendBearer(token);
  EXPECT_TRUE(second.sync);
  EXPECT_EQ(second.response.status, 200);
  // X-API-Key works too, and a lower-case scheme is still Bearer.
  Outcome header = Send({{"X-API-Key", token}});
  EXPECT_TRUE(header.sync);
  EXPECT_EQ(header.response.status, 200);
  EXPECT_EQ(Send({{"authorization", "bearer " + token}}).response.status, 200);
  EXPECT_EQ(Count("ok"), 4u);
}

TEST_F(AuthFilterTest, MissingScopeIs403AndAdminPassesEverything) {
  MakeChain("videos");
  std::string images = MustCreate(ScopeBit(Scope::kImages));
  Outcome out = SendBearer(images);
  EXPECT_EQ(out.response.status, 403);
  EXPECT_THAT(out.response.body, HasSubstr("\"code\":\"insufficient_scope\""));
  EXPECT_THAT(out.response.body, HasSubstr("videos"));
  EXPECT_THAT(HeaderOf(out.response, "WWW-Authenticate"), HasSubstr("scope=\"videos\""));
  EXPECT_EQ(Count("forbidden"), 1u);

  std::string admin = MustCreate(ScopeBit(Scope::kAdmin));
  EXPECT_EQ(SendBearer(admin).response.status, 200);

  MakeChain("");  // any valid key, even one without scopes
  EXPECT_EQ(SendBearer(MustCreate(0)).response.status, 200);
}

TEST_F(AuthFilterTest, OptionalAuthLetsAnonymousThroughButNotBadKeys) {
  MakeChain("", /*required=*/false);
  Outcome anonymous = Send({});
  EXPECT_TRUE(anonymous.sync);
  EXPECT_EQ(anonymous.response.status, 200);
  {
    std::lock_guard lock(probe_.mu);
    EXPECT_EQ(probe_.seen.key_id, "");
    EXPECT_EQ(probe_.seen.scopes, 0u);
  }
  EXPECT_EQ(Count("anonymous"), 1u);
  EXPECT_EQ(SendBearer("ms_zzzzzzzzzzzz_" + std::string(32, 'A')).response.status, 401);
  EXPECT_EQ(SendBearer("garbage").response.status, 401);
}

TEST_F(AuthFilterTest, LocalRevocationIsRefusedAtOnce) {
  MakeChain("");
  std::string token = MustCreate(0);
  ASSERT_EQ(SendBearer(token).response.status, 200);
  ASSERT_TRUE(keys_->Revoke(std::string(ParseToken(token)->id)).ok());
  Outcome out = SendBearer(token);
  EXPECT_TRUE(out.sync);
  EXPECT_EQ(out.response.status, 401);
  EXPECT_THAT(out.response.body, HasSubstr("revoked"));
  EXPECT_EQ(Count("revoked"), 1u);
}

TEST_F(AuthFilterTest, RevocationByAnotherProcessIsRefusedWithinASecond) {
  MakeChain("");
  std::string token = MustCreate(0);
  ASSERT_EQ(SendBearer(token).response.status, 200);
  // Straight in the store, as another process sharing it would: nothing here is told.
  auto revoked = test_db_.db().Execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1",
                                       {std::string(ParseToken(token)->id), core::NowMicros()});
  ASSERT_TRUE(revoked.ok()) << revoked.status().ToString();
  auto start = std::chrono::steady_clock::now();
  int status = 200;
  while (status == 200) {
    ASSERT_LT(std::chrono::steady_clock::now() - start, 1s) << "still accepted after 1 s";
    status = SendBearer(token).response.status;
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(status, 401);
}

TEST_F(AuthFilterTest, UnreadableStoreIs503) {
  MakeChain("");
  std::string token = MustCreate(0);
  ASSERT_TRUE(test_db_.db().Execute("DROP TABLE api_keys").ok());
  Outcome out = SendBearer(token);
  EXPECT_EQ(out.response.status, 503);
  EXPECT_EQ(HeaderOf(out.response, "Retry-After"), "1");
  EXPECT_EQ(Count("unavailable"), 1u);
}

}  // namespace
}  // namespace megaserve::gateway
