// API keys: token format, scopes, the store on both engines (hash at rest, verification,
// revocation, batched last-used times) and the key cache's freshness rules.
#include "gateway/api_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "core/blocking_pool.h"
#include "core/time_format.h"
#include "store/test_util.h"

namespace megaserve::gateway {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

TEST(ApiKeyTokenTest, NewTokensHaveTheDocumentedShapeAndParseBack) {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    auto parts = NewToken();
    ASSERT_TRUE(parts.ok()) << parts.status().ToString();
    EXPECT_THAT(parts->token, ::testing::MatchesRegex("ms_[a-z0-9]{12}_[0-9A-Za-z]{32}"));
    auto parsed = ParseToken(parts->token);
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    EXPECT_EQ(parsed->id, parts->id);
    EXPECT_EQ(parsed->secret, parts->secret);
    EXPECT_TRUE(seen.insert(parts->secret).second);
    EXPECT_TRUE(seen.insert(parts->id).second);
  }
}

TEST(ApiKeyTokenTest, MalformedTokensAreRefusedWithoutEchoingThem) {
  const std::string secret(32, 'Q');
  const std::vector<std::string> bad = {
      "",
      "ms_",
      "sk_abcdefghijkl_" + secret,            // wrong prefix
      "ms_abcdefghijk_" + secret,             // id too short
      "ms_abcdefghijklm_" + secret,           // id too long
      "ms_ABCDEFGHIJKL_" + secret,            // upper-case id
      "ms_abcdefghijkl" + secret,             // no separator
      "ms_abcdefghijkl_" + secret.substr(1),  // secret too short
      "ms_abcdefghijkl_" + secret + "-",      // not base62
      "ms_abcdefghijkl_" + std::string(129, 'a'),
  };
  for (const std::string& token : bad) {
    auto parsed = ParseToken(token);
    ASSERT_FALSE(parsed.ok()) << token;
    EXPECT_EQ(parsed.status().code(), core::StatusCode::kInvalidArgument);
    if (token.size() > 3) {
      EXPECT_THAT(parsed.status().message(), Not(HasSubstr(token)));
    }
  }
  EXPECT_TRUE(ParseToken("ms_abcdefghij09_" + secret).ok());
  EXPECT_TRUE(ParseToken("ms_abcdefghij09_" + std::string(128, 'z')).ok());
}

TEST(ApiKeyTokenTest, SplitTokenChecksTheShapeOnly) {
  const std::string secret(32, 'Q');
  const std::string token = "ms_abcdefghijkl_" + secret;
  auto split = SplitToken(token);
  ASSERT_TRUE(split.has_value());
  EXPECT_EQ(split->id, "abcdefghijkl");
  EXPECT_EQ(split->secret, secret);
  // Characters are not checked: such a token can only match one already known to be valid.
  EXPECT_TRUE(SplitToken("ms_ABCDEFGHIJKL_" + secret).has_value());
  EXPECT_FALSE(ParseToken("ms_ABCDEFGHIJKL_" + secret).ok());
  for (const std::string& token :
       {std::string("ms_"), "sk_abcdefghijkl_" + secret, "ms_abcdefghijk_" + secret,
        "ms_abcdefghijkl" + secret, "ms_abcdefghijkl_" + secret.substr(1),
        "ms_abcdefghijkl_" + std::string(129, 'a')}) {
    EXPECT_FALSE(SplitToken(token).has_value()) << token;
  }
}

TEST(ApiKeyScopeTest, ParsesFormatsAndChecksScopes) {
  auto scopes = ParseScopes(" jobs, images ");
  ASSERT_TRUE(scopes.ok()) << scopes.status().ToString();
  EXPECT_EQ(*scopes, ScopeBit(Scope::kImages) | ScopeBit(Scope::kJobs));
  EXPECT_EQ(FormatScopes(*scopes), "images,jobs");
  EXPECT_EQ(*ParseScopes(""), 0u);
  EXPECT_EQ(FormatScopes(0), "");
  EXPECT_EQ(*ParseScopes(FormatScopes(0x1f)), 0x1fu);

  auto bad = ParseScopes("images,imagez");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("\"imagez\""));
  EXPECT_FALSE(ParseScopes("images,").ok());

  EXPECT_TRUE(ScopeAllows(*scopes, ""));
  EXPECT_TRUE(ScopeAllows(*scopes, "jobs"));
  EXPECT_FALSE(ScopeAllows(*scopes, "videos"));
  EXPECT_FALSE(ScopeAllows(*scopes, "admin"));
  EXPECT_FALSE(ScopeAllows(*scopes, "no_such_scope"));
  EXPECT_TRUE(ScopeAllows(ScopeBit(Scope::kAdmin), "videos"));
  EXPECT_TRUE(ScopeAllows(ScopeBit(Scope::kAdmin), "no_such_scope"));
  EXPECT_TRUE(ScopeAllows(0, ""));
}

TEST(ApiKeyHashTest, HexRoundTripAndConstantTimeMatch) {
  SecretHash h = HashSecret("abc");
  // SHA-256("abc"), FIPS 180-2 appendix B.1.
  EXPECT_EQ(HashToHex(h), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(HashFromHex(HashToHex(h)), h);
  EXPECT_FALSE(HashFromHex("zz").has_value());
  EXPECT_FALSE(HashFromHex(std::string(64, 'g')).has_value());
  EXPECT_TRUE(SecretMatches("abc", h));
  EXPECT_FALSE(SecretMatches("abd", h));
}

// Counts the statements that reach the store, to show what does not.
class CountingDatabase final : public store::Database {
 public:
  explicit CountingDatabase(store::Database& inner) : inner_(inner) {}
  store::Engine engine() const override { return inner_.engine(); }
  core::Status Transact(const std::function<core::Status(store::Session&)>& fn) override {
    ++statements;
    return inner_.Transact(fn);
  }
  core::Status WithSession(const std::function<core::Status(store::Session&)>& fn) override {
    ++statements;
    return inner_.WithSession(fn);
  }
  store::PoolStats pool_stats() const override { return inner_.pool_stats(); }
  std::atomic<int> statements{0};

 protected:
  core::Result<store::Rows> DoExecute(std::string_view sql, const store::Params& params) override {
    ++statements;
    return inner_.Execute(sql, params);
  }

 private:
  store::Database& inner_;
};

class ApiKeyStoreTest : public ::testing::TestWithParam<store::Engine> {
 protected:
  void SetUp() override {
    MEGASERVE_OPEN_TEST_DATABASE(test_db_, GetParam());
    if (HasFatalFailure()) return;
    counting_ = std::make_unique<CountingDatabase>(test_db_.db());
    keys_ = std::make_unique<ApiKeyStore>(*counting_, ApiKeyStoreOptions{.flush_interval = 1h});
  }

  store::Database& db() { return test_db_.db(); }

  CreatedApiKey MustCreate(const std::string& name, std::uint32_t scopes = 0,
                           std::int64_t quota = 0) {
    auto created = keys_->Create(name, scopes, quota);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return created.ok() ? *created : CreatedApiKey{};
  }

  store::testing::TestDatabase test_db_;
  std::unique_ptr<CountingDatabase> counting_;
  std::unique_ptr<ApiKeyStore> keys_;
};

TEST_P(ApiKeyStoreTest, OnlyAHashOfTheSecretIsStored) {
  CreatedApiKey created = MustCreate("ci runner", ScopeBit(Scope::kJobs), 120);
  auto parsed = ParseToken(created.token);
  ASSERT_TRUE(parsed.ok());
  const std::string secret(parsed->secret);
  EXPECT_EQ(created.key.id, parsed->id);
  EXPECT_EQ(created.key.name, "ci runner");
  EXPECT_GT(created.key.created_at, 0);

  auto rows = db().Execute("SELECT * FROM api_keys");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), 1u);
  for (std::size_t c = 0; c < rows->columns().size(); ++c) {
    std::string cell = rows->GetText(0, c);
    EXPECT_THAT(cell, Not(HasSubstr(secret))) << rows->columns()[c];
    EXPECT_THAT(cell, Not(HasSubstr(created.token))) << rows->columns()[c];
  }
  int hash_col = rows->ColumnIndex("secret_hash");
  ASSERT_GE(hash_col, 0);
  EXPECT_EQ(rows->GetText(0, hash_col), HashToHex(HashSecret(secret)));
  EXPECT_EQ(rows->GetText(0, rows->ColumnIndex("scopes")), "jobs");
  EXPECT_EQ(rows->GetInt(0, rows->ColumnIndex("quota")), 120);
  EXPECT_TRUE(rows->IsNull(0, rows->ColumnIndex("revoked_at")));
  EXPECT_TRUE(rows->IsNull(0, rows->ColumnIndex("last_used_at")));
}

TEST_P(ApiKeyStoreTest, VerifyAcceptsTheTokenAndRefusesWrongUnknownAndRevoked) {
  CreatedApiKey created = MustCreate("web", ScopeBit(Scope::kImages) | ScopeBit(Scope::kVideos));
  auto ok = keys_->Verify(created.token);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->id, created.key.id);
  EXPECT_EQ(ok->scopes, ScopeBit(Scope::kImages) | ScopeBit(Scope::kVideos));

  std::string wrong = created.token;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  EXPECT_EQ(keys_->Verify(wrong).status().code(), core::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys_->Verify("ms_nope").status().code(), core::StatusCode::kUnauthenticated);
  EXPECT_EQ(keys_->Verify("ms_000000000000_" + std::string(32, 'x')).status().code(),
            core::StatusCode::kNotFound);

  auto revoked = keys_->Revoke(created.key.id);
  ASSERT_TRUE(revoked.ok()) << revoked.status().ToString();
  EXPECT_TRUE(revoked->revoked());
  auto refused = keys_->Verify(created.token);
  EXPECT_EQ(refused.status().code(), core::StatusCode::kPermissionDenied);
  EXPECT_THAT(refused.status().message(), Not(HasSubstr(created.token)));
}

TEST_P(ApiKeyStoreTest, ListAndGetNeverShowSecretsOrHashes) {
  CreatedApiKey a = MustCreate("a", ScopeBit(Scope::kAdmin));
  CreatedApiKey b = MustCreate("b", 0, 7);
  auto list = keys_->List();
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->size(), 2u);
  std::set<std::string> ids = {(*list)[0].id, (*list)[1].id};
  EXPECT_EQ(ids, (std::set<std::string>{a.key.id, b.key.id}));
  for (const CreatedApiKey* k : {&a, &b}) {
    auto parsed = ParseToken(k->token);
    const std::string hash = HashToHex(HashSecret(parsed->secret));
    for (const ApiKey& listed : *list) {
      std::string json = listed.ToJson();
      EXPECT_THAT(json, Not(HasSubstr(std::string(parsed->secret))));
      EXPECT_THAT(json, Not(HasSubstr(hash)));
      EXPECT_THAT(json, Not(HasSubstr("\"key\"")));
    }
  }
  auto got = keys_->Get(b.key.id);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->name, "b");
  EXPECT_EQ(got->quota, 7);
  EXPECT_THAT(got->ToJson(), HasSubstr("\"scopes\":[]"));
  EXPECT_THAT(got->ToJson(), HasSubstr("\"revoked_at\":null"));
  // Only the creating response carries the token.
  EXPECT_THAT(a.key.ToJson(a.token), HasSubstr("\"key\":\"" + a.token + "\""));
  EXPECT_THAT(a.key.ToJson(), HasSubstr("\"scopes\":[\"admin\"]"));
}

TEST_P(ApiKeyStoreTest, UnknownIdsAreNotFoundAndRevocationKeepsTheFirstTime) {
  EXPECT_EQ(keys_->Get("nosuchkey000").status().code(), core::StatusCode::kNotFound);
  EXPECT_EQ(keys_->Revoke("nosuchkey000").status().code(), core::StatusCode::kNotFound);

  CreatedApiKey k = MustCreate("k");
  std::vector<std::string> heard;
  int handle = keys_->AddRevocationListener([&](const std::string& id) { heard.push_back(id); });
  auto first = keys_->Revoke(k.key.id);
  ASSERT_TRUE(first.ok());
  std::this_thread::sleep_for(2ms);
  auto second = keys_->Revoke(k.key.id);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->revoked_at, first->revoked_at);
  EXPECT_EQ(heard, (std::vector<std::string>{k.key.id, k.key.id}));
  keys_->RemoveRevocationListener(handle);
  keys_->Revoke(k.key.id);
  EXPECT_EQ(heard.size(), 2u);
}

TEST_P(ApiKeyStoreTest, CreateValidatesItsInput) {
  EXPECT_EQ(keys_->Create("", 0, 0).status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(keys_->Create(std::string(201, 'n'), 0, 0).status().code(),
            core::StatusCode::kInvalidArgument);
  EXPECT_EQ(keys_->Create("x", 1u << 20, 0).status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(keys_->Create("x", 0, -1).status().code(), core::StatusCode::kInvalidArgument);
  auto rows = db().Execute("SELECT count(*) FROM api_keys");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(rows->GetInt(0, 0), 0);
}

TEST_P(ApiKeyStoreTest, LastUsedTimesAreBatched) {
  CreatedApiKey k = MustCreate("k");
  auto last_used = [&] {
    auto rows = db().Execute("SELECT last_used_at FROM api_keys WHERE id = $1", {k.key.id});
    EXPECT_TRUE(rows.ok());
    return rows.ok() ? rows->GetInt(0, 0) : -1;
  };
  // Within the flush interval, uses stay in memory: no writes.
  int before = counting_->statements;
  for (int i = 0; i < 50; ++i) EXPECT_FALSE(keys_->TouchLastUsed(k.key.id));
  EXPECT_EQ(counting_->statements, before);
  EXPECT_EQ(last_used(), 0);

  int64_t start = core::NowMicros();
  ASSERT_TRUE(keys_->FlushLastUsed().ok());
  int64_t flushed = last_used();
  EXPECT_GT(flushed, 0);
  EXPECT_LE(flushed, start);
  auto got = keys_->Get(k.key.id);
  EXPECT_EQ(got->last_used_at, flushed);

  // With the interval elapsed, exactly one caller is told to flush until someone does.
  ApiKeyStore eager(db(), {.flush_interval = 0ms});
  EXPECT_TRUE(eager.TouchLastUsed(k.key.id));
  EXPECT_FALSE(eager.TouchLastUsed(k.key.id));
  eager.AbandonFlush();
  EXPECT_TRUE(eager.TouchLastUsed(k.key.id));
  ASSERT_TRUE(eager.FlushLastUsed().ok());
  EXPECT_GT(last_used(), flushed);

  // Pending uses are written when the store goes away.
  int64_t now = core::NowMicros();
  keys_->TouchLastUsed(k.key.id);
  keys_.reset();
  EXPECT_GE(last_used(), now);
}

INSTANTIATE_TEST_SUITE_P(Engines, ApiKeyStoreTest,
                         ::testing::Values(store::Engine::kSqlite, store::Engine::kPostgres),
                         [](const auto& info) { return std::string(EngineName(info.param)); });

// The cache over a SQLite store, with short windows so the tests stay fast.
class KeyCacheTest : public ApiKeyStoreTest {
 protected:
  void SetUp() override {
    ApiKeyStoreTest::SetUp();
    if (HasFatalFailure()) return;
    pool_ = std::make_unique<core::BlockingPool>("keys-test", 2, 64);
  }
  void TearDown() override {
    cache_.reset();
    pool_.reset();
  }
  void MakeCache(KeyCacheOptions options = {}) {
    cache_ = std::make_unique<KeyCache>(*keys_, *pool_, options);
  }
  void RevokeElsewhere(const std::string& id) {
    // As another process would: straight in the store, so this process hears nothing.
    auto r =
        db().Execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1", {id, core::NowMicros()});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }

  std::unique_ptr<core::BlockingPool> pool_;
  std::unique_ptr<KeyCache> cache_;
};

TEST_P(KeyCacheTest, MissReadsTheStoreThenHitsStayInMemory) {
  MakeCache({.fresh = 10s, .max_age = 20s, .negative_ttl = 20s});
  CreatedApiKey k = MustCreate("k", ScopeBit(Scope::kForecasts), 60);
  auto parsed = *ParseToken(k.token);
  EXPECT_FALSE(cache_->TryVerify(parsed.id, parsed.secret).has_value());

  KeyCheck first = cache_->Verify(parsed.id, parsed.secret);
  ASSERT_EQ(first.outcome, KeyCheck::Outcome::kOk);
  EXPECT_EQ(first.name, "k");
  EXPECT_EQ(first.scopes, ScopeBit(Scope::kForecasts));
  EXPECT_EQ(first.quota, 60);

  int before = counting_->statements;
  for (int i = 0; i < 100; ++i) {
    auto hit = cache_->TryVerify(parsed.id, parsed.secret);
    ASSERT_TRUE(hit.has_value());
    EXPECT_EQ(hit->outcome, KeyCheck::Outcome::kOk);
  }
  std::string other(parsed.secret);
  other[0] = other[0] == 'x' ? 'y' : 'x';
  auto wrong = cache_->TryVerify(parsed.id, other);
  ASSERT_TRUE(wrong.has_value());
  EXPECT_EQ(wrong->outcome, KeyCheck::Outcome::kWrongSecret);

  // Unknown ids are read once, then remembered.
  EXPECT_EQ(cache_->Verify("zzzzzzzzzzzz", parsed.secret).outcome, KeyCheck::Outcome::kUnknown);
  int after_unknown = counting_->statements;
  EXPECT_EQ(after_unknown, before + 1);
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(cache_->Verify("zzzzzzzzzzzz", parsed.secret).outcome, KeyCheck::Outcome::kUnknown);
  }
  EXPECT_EQ(counting_->statements, after_unknown);
}

TEST_P(KeyCacheTest, ConcurrentMissesShareOneRead) {
  MakeCache({.fresh = 10s, .max_age = 20s, .negative_ttl = 20s});
  CreatedApiKey k = MustCreate("k");
  auto parsed = *ParseToken(k.token);
  int before = counting_->statements;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      if (cache_->Verify(parsed.id, parsed.secret).outcome == KeyCheck::Outcome::kOk) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(counting_->statements, before + 1);
}

TEST_P(KeyCacheTest, AnAgingEntryIsServedAndRefreshedInTheBackground) {
  MakeCache({.fresh = 50ms, .max_age = 10s});
  CreatedApiKey k = MustCreate("k");
  auto parsed = *ParseToken(k.token);
  ASSERT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kOk);
  RevokeElsewhere(k.key.id);
  std::this_thread::sleep_for(80ms);
  // Past `fresh`: still answered from memory at once, while a refresh reads the store.
  auto served = cache_->TryVerify(parsed.id, parsed.secret);
  ASSERT_TRUE(served.has_value());
  EXPECT_EQ(served->outcome, KeyCheck::Outcome::kOk);
  auto deadline = std::chrono::steady_clock::now() + 2s;
  std::optional<KeyCheck> now;
  do {
    std::this_thread::sleep_for(5ms);
    now = cache_->TryVerify(parsed.id, parsed.secret);
    ASSERT_TRUE(now.has_value());  // never falls back to waiting within max_age
  } while (now->outcome == KeyCheck::Outcome::kOk && std::chrono::steady_clock::now() < deadline);
  EXPECT_EQ(now->outcome, KeyCheck::Outcome::kRevoked);
}

TEST_P(KeyCacheTest, RevocationElsewhereIsSeenWithinASecondWithDefaults) {
  MakeCache();
  CreatedApiKey k = MustCreate("k");
  auto parsed = *ParseToken(k.token);
  ASSERT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kOk);
  RevokeElsewhere(k.key.id);
  auto revoked_at = std::chrono::steady_clock::now();
  while (cache_->Verify(parsed.id, parsed.secret).outcome == KeyCheck::Outcome::kOk) {
    ASSERT_LT(std::chrono::steady_clock::now() - revoked_at, 1s);
    std::this_thread::sleep_for(2ms);
  }
  EXPECT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kRevoked);
}

TEST_P(KeyCacheTest, LocalRevocationIsImmediate) {
  MakeCache({.fresh = 10s, .max_age = 20s});
  CreatedApiKey k = MustCreate("k");
  auto parsed = *ParseToken(k.token);
  ASSERT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kOk);
  ASSERT_TRUE(keys_->Revoke(k.key.id).ok());
  auto check = cache_->TryVerify(parsed.id, parsed.secret);
  ASSERT_TRUE(check.has_value());
  EXPECT_EQ(check->outcome, KeyCheck::Outcome::kRevoked);
}

TEST_P(KeyCacheTest, RememberedAnswersOnlyTheSameValidKeyWhileNothingChanged) {
  MakeCache({.fresh = 10s, .max_age = 20s});
  CreatedApiKey k = MustCreate("k", ScopeBit(Scope::kJobs), 7);
  CreatedApiKey other = MustCreate("other");
  auto parsed = *ParseToken(k.token);
  auto other_parsed = *ParseToken(other.token);
  EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret).has_value());  // never verified
  ASSERT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kOk);
  EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret).has_value());  // read, not checked
  ASSERT_EQ(cache_->TryVerify(parsed.id, parsed.secret)->outcome, KeyCheck::Outcome::kOk);

  auto again = cache_->Remembered(parsed.id, parsed.secret);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->outcome, KeyCheck::Outcome::kOk);
  EXPECT_EQ(again->name, "k");
  EXPECT_EQ(again->quota, 7);
  std::string wrong(parsed.secret);
  wrong.back() = wrong.back() == 'x' ? 'y' : 'x';
  EXPECT_FALSE(cache_->Remembered(parsed.id, wrong).has_value());
  EXPECT_FALSE(cache_->Remembered(other_parsed.id, parsed.secret).has_value());
  EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret.substr(1)).has_value());
  // Another thread has its own memory.
  std::thread([&] {
    EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret).has_value());
  }).join();

  // Any change to the cache (here a revocation) forgets it at once.
  ASSERT_TRUE(keys_->Revoke(other.key.id).ok());
  EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret).has_value());
  ASSERT_EQ(cache_->TryVerify(parsed.id, parsed.secret)->outcome, KeyCheck::Outcome::kOk);
  EXPECT_TRUE(cache_->Remembered(parsed.id, parsed.secret).has_value());
  ASSERT_TRUE(keys_->Revoke(k.key.id).ok());
  EXPECT_FALSE(cache_->Remembered(parsed.id, parsed.secret).has_value());
  EXPECT_EQ(cache_->Verify(parsed.id, parsed.secret).outcome, KeyCheck::Outcome::kRevoked);
}

TEST_P(KeyCacheTest, UsesAreFlushedOffTheCallerOncePerInterval) {
  keys_ = std::make_unique<ApiKeyStore>(*counting_, ApiKeyStoreOptions{.flush_interval = 0ms});
  MakeCache();
  CreatedApiKey k = MustCreate("k");
  cache_->TouchLastUsed(k.key.id);
  auto deadline = std::chrono::steady_clock::now() + 2s;
  int64_t last_used = 0;
  while (last_used == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(5ms);
    last_used = keys_->Get(k.key.id)->last_used_at;
  }
  EXPECT_GT(last_used, 0);
}

INSTANTIATE_TEST_SUITE_P(Engines, KeyCacheTest,
                         ::testing::Values(store::Engine::kSqlite, store::Engine::kPostgres),
                         [](const auto& info) { return std::string(EngineName(info.param)); });

}  // namespace
}  // namespace megaserve::gateway
