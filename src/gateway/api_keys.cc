// API keys over store::Database, and the key cache; see api_keys.h for the token format and the
// cache's freshness rules.
#include "gateway/api_keys.h"

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <utility>

#include "core/ids.h"
#include "core/time_format.h"

namespace megaserve::gateway {
namespace {

using core::Result;
using core::Status;
using core::StatusCode;

struct ScopeName {
  Scope scope;
  std::string_view name;
};
constexpr ScopeName kScopes[] = {
    {Scope::kImages, "images"}, {Scope::kVideos, "videos"}, {Scope::kForecasts, "forecasts"},
    {Scope::kJobs, "jobs"},     {Scope::kAdmin, "admin"},
};
constexpr std::uint32_t kAllScopes = (1u << 5) - 1;

constexpr std::string_view kBase62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kIdAlphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
constexpr std::size_t kMaxNameBytes = 200;

// Character classes as lookup tables: every request's token is checked character by character.
constexpr std::uint8_t kIdClass = 1;      // [0-9a-z]
constexpr std::uint8_t kBase62Class = 2;  // [0-9A-Za-z]
constexpr std::array<std::uint8_t, 256> kCharClass = [] {
  std::array<std::uint8_t, 256> t{};
  for (char c : kIdAlphabet) t[static_cast<unsigned char>(c)] |= kIdClass;
  for (char c : kBase62) t[static_cast<unsigned char>(c)] |= kBase62Class;
  return t;
}();

// True when every character of `s` is in `cls`.
bool AllIn(std::string_view s, std::uint8_t cls) {
  std::uint8_t all = cls;
  for (char c : s) all &= kCharClass[static_cast<unsigned char>(c)];
  return all == cls;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// `n` characters drawn uniformly from `alphabet`. Bytes at or above the largest multiple of the
// alphabet's size are rejected, so that the modulo does not favour the first characters.
Result<std::string> RandomString(std::string_view alphabet, std::size_t n) {
  const unsigned limit = 256 - 256 % alphabet.size();
  std::string out;
  out.reserve(n);
  unsigned char buf[64];
  while (out.size() < n) {
    if (RAND_bytes(buf, sizeof buf) != 1) return core::Internal("the random generator failed");
    for (unsigned char b : buf) {
      if (b >= limit) continue;
      out += alphabet[b % alphabet.size()];
      if (out.size() == n) break;
    }
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return out;
}

// The flush schedule runs on the coarse monotonic clock: it is read on every request, and a
// flush is due within a few milliseconds of its time.
int64_t SteadyNanos() {
  return core::CoarseSteadyNow().time_since_epoch() / std::chrono::nanoseconds(1);
}

// The columns ReadKey expects, in order.
constexpr std::string_view kColumns =
    "id, name, scopes, quota, created_at, last_used_at, revoked_at, secret_hash";

StoredApiKey ReadKey(const store::Rows& rows, std::size_t r) {
  StoredApiKey out;
  out.key.id = rows.GetText(r, 0);
  out.key.name = rows.GetText(r, 1);
  // Stored scope lists were written by FormatScopes; a name unknown to this binary (written by
  // a newer release) grants nothing here.
  const std::string scopes = rows.GetText(r, 2);
  for (std::string_view rest = scopes, part; !rest.empty();) {
    std::size_t comma = rest.find(',');
    part = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    if (auto s = ParseScope(Trim(part)); s.ok()) out.key.scopes |= ScopeBit(*s);
  }
  out.key.quota = rows.GetInt(r, 3);
  out.key.created_at = rows.GetInt(r, 4);
  out.key.last_used_at = rows.GetInt(r, 5);
  out.key.revoked_at = rows.GetInt(r, 6);
  if (auto hash = HashFromHex(rows.GetText(r, 7))) out.hash = *hash;
  return out;
}

void WriteTime(rapidjson::Writer<rapidjson::StringBuffer>& w, const char* key, int64_t micros) {
  w.Key(key);
  if (micros == 0) {
    w.Null();
  } else {
    std::string text = core::Rfc3339(micros);
    w.String(text.data(), static_cast<rapidjson::SizeType>(text.size()));
  }
}

void WriteStr(rapidjson::Writer<rapidjson::StringBuffer>& w, const char* key,
              std::string_view value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Scopes and tokens.

Result<Scope> ParseScope(std::string_view name) {
  for (const ScopeName& s : kScopes) {
    if (s.name == name) return s.scope;
  }
  return core::InvalidArgument(
      fmt::format("unknown scope \"{}\" (known: images, videos, forecasts, jobs, admin)", name));
}

Result<std::uint32_t> ParseScopes(std::string_view list) {
  std::uint32_t out = 0;
  if (Trim(list).empty()) return out;
  while (true) {
    std::size_t comma = list.find(',');
    auto scope = ParseScope(Trim(list.substr(0, comma)));
    if (!scope.ok()) return scope.status();
    out |= ScopeBit(*scope);
    if (comma == std::string_view::npos) return out;
    list.remove_prefix(comma + 1);
  }
}

std::vector<std::string_view> ScopeNames(std::uint32_t scopes) {
  std::vector<std::string_view> out;
  for (const ScopeName& s : kScopes) {
    if (scopes & ScopeBit(s.scope)) out.push_back(s.name);
  }
  return out;
}

std::string FormatScopes(std::uint32_t scopes) {
  std::string out;
  for (std::string_view name : ScopeNames(scopes)) {
    if (!out.empty()) out += ',';
    out += name;
  }
  return out;
}

bool ScopeAllows(std::uint32_t scopes, std::string_view needed) {
  if (scopes & ScopeBit(Scope::kAdmin)) return true;
  if (needed.empty()) return true;
  for (const ScopeName& s : kScopes) {
    if (s.name == needed) return (scopes & ScopeBit(s.scope)) != 0;
  }
  return false;
}

bool IsKeyId(std::string_view id) { return id.size() == kKeyIdLength && AllIn(id, kIdClass); }

std::optional<ParsedToken> SplitToken(std::string_view token) {
  if (!token.starts_with(kTokenPrefix)) return std::nullopt;
  std::string_view rest = token.substr(kTokenPrefix.size());
  if (rest.size() < kKeyIdLength + 1 + kSecretLength ||
      rest.size() > kKeyIdLength + 1 + kMaxSecretLength || rest[kKeyIdLength] != '_') {
    return std::nullopt;
  }
  return ParsedToken{rest.substr(0, kKeyIdLength), rest.substr(kKeyIdLength + 1)};
}

Result<ParsedToken> ParseToken(std::string_view token) {
  if (!token.starts_with(kTokenPrefix)) {
    return core::InvalidArgument("an API key starts with \"ms_\"");
  }
  std::string_view rest = token.substr(kTokenPrefix.size());
  if (rest.size() < kKeyIdLength + 1 || !IsKeyId(rest.substr(0, kKeyIdLength)) ||
      rest[kKeyIdLength] != '_') {
    return core::InvalidArgument("malformed API key: bad key id");
  }
  std::string_view secret = rest.substr(kKeyIdLength + 1);
  if (secret.size() < kSecretLength || secret.size() > kMaxSecretLength ||
      !AllIn(secret, kBase62Class)) {
    return core::InvalidArgument("malformed API key: bad secret");
  }
  return ParsedToken{rest.substr(0, kKeyIdLength), secret};
}

Result<NewTokenParts> NewToken() {
  auto id = RandomString(kIdAlphabet, kKeyIdLength);
  if (!id.ok()) return id.status();
  auto secret = RandomString(kBase62, kSecretLength);
  if (!secret.ok()) return secret.status();
  NewTokenParts out;
  out.id = std::move(*id);
  out.secret = std::move(*secret);
  out.token = std::string(kTokenPrefix) + out.id + "_" + out.secret;
  return out;
}

SecretHash HashSecret(std::string_view secret) {
  SecretHash out;
  SHA256(reinterpret_cast<const unsigned char*>(secret.data()), secret.size(), out.data());
  return out;
}

namespace {

// The SHA-256 of a secret, remembered per thread for the last few secrets seen: a busy key is
// hashed once rather than on every request (OpenSSL's one-shot digest showed up in profiles of
// the hit path). A slot is used only when the secret matches it byte for byte, so the memo can
// never make a wrong secret pass; it holds secrets only in this process's memory, as the request
// buffers do.
SecretHash HashSecretMemo(std::string_view secret) {
  struct Slot {
    std::string secret;
    SecretHash hash{};
  };
  static constexpr std::size_t kSlots = 64;
  thread_local std::array<Slot, kSlots> memo;
  Slot& slot = memo[XXH3_64bits(secret.data(), secret.size()) % kSlots];
  if (!slot.secret.empty() && slot.secret.size() == secret.size() &&
      CRYPTO_memcmp(slot.secret.data(), secret.data(), secret.size()) == 0) {
    return slot.hash;
  }
  slot.hash = HashSecret(secret);
  slot.secret.assign(secret);
  return slot.hash;
}

}  // namespace

std::string HashToHex(const SecretHash& hash) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(hash.size() * 2, '0');
  for (std::size_t i = 0; i < hash.size(); ++i) {
    out[2 * i] = kHex[hash[i] >> 4];
    out[2 * i + 1] = kHex[hash[i] & 15];
  }
  return out;
}

std::optional<SecretHash> HashFromHex(std::string_view hex) {
  SecretHash out;
  if (hex.size() != out.size() * 2) return std::nullopt;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (std::size_t i = 0; i < out.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out[i] = static_cast<unsigned char>(hi << 4 | lo);
  }
  return out;
}

bool SecretMatches(std::string_view secret, const SecretHash& hash) {
  SecretHash actual = HashSecret(secret);
  return CRYPTO_memcmp(actual.data(), hash.data(), hash.size()) == 0;
}

std::string ApiKey::ToJson(std::string_view token) const {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  WriteStr(w, "object", "api_key");
  WriteStr(w, "id", id);
  WriteStr(w, "name", name);
  w.Key("scopes");
  w.StartArray();
  for (std::string_view s : ScopeNames(scopes)) {
    w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
  }
  w.EndArray();
  w.Key("quota");
  w.Int64(quota);
  WriteTime(w, "created_at", created_at);
  WriteTime(w, "last_used_at", last_used_at);
  WriteTime(w, "revoked_at", revoked_at);
  if (!token.empty()) WriteStr(w, "key", token);
  w.EndObject();
  return {sb.GetString(), sb.GetSize()};
}

// ---------------------------------------------------------------------------------------------
// ApiKeyStore.

ApiKeyStore::ApiKeyStore(store::Database& db, ApiKeyStoreOptions options)
    : db_(db),
      options_(options),
      next_flush_at_(SteadyNanos() + options.flush_interval / std::chrono::nanoseconds(1)) {}

ApiKeyStore::~ApiKeyStore() {
  Status s = FlushLastUsed();
  if (!s.ok()) spdlog::warn("api keys: last-used times not saved: {}", s.ToString());
}

Result<CreatedApiKey> ApiKeyStore::Create(std::string_view name, std::uint32_t scopes,
                                          std::int64_t quota) {
  if (name.empty()) return core::InvalidArgument("a key needs a name");
  if (name.size() > kMaxNameBytes) {
    return core::InvalidArgument(fmt::format("a key name is at most {} bytes", kMaxNameBytes));
  }
  if (scopes & ~kAllScopes) return core::InvalidArgument("unknown scope bits");
  if (quota < 0) return core::InvalidArgument("quota must be 0 (the route's limit) or more");
  // Ids are 62 random bits, so a collision is all but impossible; retry anyway rather than fail.
  for (int attempt = 0;; ++attempt) {
    auto parts = NewToken();
    if (!parts.ok()) return parts.status();
    CreatedApiKey out;
    out.key.id = parts->id;
    out.key.name = std::string(name);
    out.key.scopes = scopes;
    out.key.quota = quota;
    out.key.created_at = core::NowMicros();
    auto inserted = db_.Execute(
        "INSERT INTO api_keys (id, name, secret_hash, scopes, quota, created_at) VALUES ($1, $2, "
        "$3, $4, $5, $6)",
        {out.key.id, out.key.name, HashToHex(HashSecret(parts->secret)), FormatScopes(scopes),
         quota, out.key.created_at});
    if (inserted.ok()) {
      out.token = std::move(parts->token);
      return out;
    }
    if (inserted.status().code() != StatusCode::kAlreadyExists || attempt == 3) {
      return inserted.status();
    }
  }
}

Result<std::vector<ApiKey>> ApiKeyStore::List() {
  auto rows = db_.Execute(fmt::format("SELECT {} FROM api_keys ORDER BY created_at, id", kColumns));
  if (!rows.ok()) return rows.status();
  std::vector<ApiKey> out;
  out.reserve(rows->size());
  for (std::size_t r = 0; r < rows->size(); ++r) out.push_back(ReadKey(*rows, r).key);
  return out;
}

Result<StoredApiKey> ApiKeyStore::Lookup(std::string_view id) {
  auto rows = db_.Execute(fmt::format("SELECT {} FROM api_keys WHERE id = $1", kColumns),
                          {std::string(id)});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return core::NotFound(fmt::format("no API key with id \"{}\"", id));
  return ReadKey(*rows, 0);
}

Result<ApiKey> ApiKeyStore::Get(std::string_view id) {
  auto stored = Lookup(id);
  if (!stored.ok()) return stored.status();
  return std::move(stored->key);
}

Result<ApiKey> ApiKeyStore::Revoke(std::string_view id) {
  auto updated =
      db_.Execute("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                  {std::string(id), core::NowMicros()});
  if (!updated.ok()) return updated.status();
  auto key = Get(id);
  if (!key.ok()) return key.status();
  std::vector<std::function<void(const std::string&)>> listeners;
  {
    std::lock_guard lock(listeners_mu_);
    for (const auto& [handle, fn] : listeners_) listeners.push_back(fn);
  }
  for (const auto& fn : listeners) fn(key->id);
  return key;
}

Result<ApiKey> ApiKeyStore::Verify(std::string_view token) {
  auto parsed = ParseToken(token);
  if (!parsed.ok()) return Status(StatusCode::kUnauthenticated, parsed.status().message());
  auto stored = Lookup(parsed->id);
  if (!stored.ok()) return stored.status();
  if (!SecretMatches(parsed->secret, stored->hash)) {
    return Status(StatusCode::kUnauthenticated,
                  fmt::format("wrong secret for API key \"{}\"", parsed->id));
  }
  if (stored->key.revoked()) {
    return Status(StatusCode::kPermissionDenied,
                  fmt::format("API key \"{}\" was revoked", parsed->id));
  }
  if (TouchLastUsed(parsed->id)) FlushLastUsed();  // this call blocks anyway
  return std::move(stored->key);
}

bool ApiKeyStore::TouchLastUsed(std::string_view id) {
  const int64_t now = core::CoarseNowMicros();
  // A busy key is recorded at most once a second per thread: last-used times are that coarse
  // anyway, and the shared table is then touched once a second instead of once a request.
  thread_local std::uint64_t last_store = 0;
  thread_local std::string last_id;
  thread_local int64_t last_at = 0;
  if (last_store != instance_ || last_id != id || now - last_at >= 1'000'000) {
    last_store = instance_;
    last_id.assign(id);
    last_at = now;
    const int64_t at = core::NowMicros();  // recorded precisely, once a second at most
    UseShard& shard = use_shards_[std::hash<std::string_view>{}(id) % kUseShards];
    std::lock_guard lock(shard.mu);
    auto it = shard.uses.find(std::string(id));
    if (it == shard.uses.end()) {
      shard.uses.emplace(std::string(id), at);
    } else {
      it->second = std::max(it->second, at);
    }
  }
  if (flush_claimed_.load(std::memory_order_relaxed) ||
      SteadyNanos() < next_flush_at_.load(std::memory_order_relaxed)) {
    return false;
  }
  return !flush_claimed_.exchange(true);
}

Status ApiKeyStore::FlushLastUsed() {
  next_flush_at_.store(SteadyNanos() + options_.flush_interval / std::chrono::nanoseconds(1));
  flush_claimed_.store(false);
  std::unordered_map<std::string, int64_t> uses;
  for (UseShard& shard : use_shards_) {
    std::lock_guard lock(shard.mu);
    if (uses.empty()) {
      uses.swap(shard.uses);
    } else {
      uses.merge(shard.uses);
      shard.uses.clear();
    }
  }
  if (uses.empty()) return Status::Ok();
  Status s = db_.Transact([&](store::Session& session) -> Status {
    for (const auto& [id, at] : uses) {
      auto r = session.Execute(
          "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR "
          "last_used_at < $2)",
          {id, at});
      if (!r.ok()) return r.status();
    }
    return Status::Ok();
  });
  if (!s.ok()) {
    // Keep them for the next flush, unless newer uses were recorded meanwhile.
    for (auto& [id, at] : uses) {
      UseShard& shard = use_shards_[std::hash<std::string_view>{}(id) % kUseShards];
      std::lock_guard lock(shard.mu);
      auto [it, inserted] = shard.uses.emplace(id, at);
      if (!inserted) it->second = std::max(it->second, at);
    }
  }
  return s;
}

void ApiKeyStore::AbandonFlush() { flush_claimed_.store(false); }

int ApiKeyStore::AddRevocationListener(std::function<void(const std::string& id)> fn) {
  std::lock_guard lock(listeners_mu_);
  int handle = next_listener_++;
  listeners_.emplace(handle, std::move(fn));
  return handle;
}

void ApiKeyStore::RemoveRevocationListener(int handle) {
  std::lock_guard lock(listeners_mu_);
  listeners_.erase(handle);
}

// ---------------------------------------------------------------------------------------------
// KeyCache.

KeyCache::KeyCache(ApiKeyStore& store, core::BlockingPool& pool, KeyCacheOptions options)
    : store_(store), pool_(pool), options_(options) {
  listener_ = store_.AddRevocationListener([this](const std::string& id) { MarkRevoked(id); });
}

KeyCache::~KeyCache() {
  store_.RemoveRevocationListener(listener_);
  std::unique_lock lock(tasks_mu_);
  tasks_cv_.wait(lock, [this] { return tasks_ == 0; });
}

KeyCache::Shard& KeyCache::ShardFor(std::string_view id) {
  return shards_[std::hash<std::string_view>{}(id) % kShards];
}

bool KeyCache::Submit(std::function<void()> fn) {
  {
    std::lock_guard lock(tasks_mu_);
    ++tasks_;
  }
  bool queued = pool_.Submit([this, fn = std::move(fn)] {
    fn();
    std::lock_guard lock(tasks_mu_);
    if (--tasks_ == 0) tasks_cv_.notify_all();
  });
  if (!queued) {
    std::lock_guard lock(tasks_mu_);
    if (--tasks_ == 0) tasks_cv_.notify_all();
  }
  return queued;
}

std::optional<KeyCheck> KeyCache::Answer(const Entry& e, const SecretHash& hash,
                                         Clock::time_point now, bool* stale) const {
  if (!e.loaded) return std::nullopt;
  const auto age = now - e.fetched_at;
  KeyCheck check;
  if (!e.exists) {
    if (age >= options_.negative_ttl) return std::nullopt;
    check.outcome = KeyCheck::Outcome::kUnknown;
    return check;
  }
  if (age >= options_.max_age) return std::nullopt;
  *stale = age >= options_.fresh && !e.fetching && !e.revoked;
  if (CRYPTO_memcmp(hash.data(), e.hash.data(), hash.size()) != 0) {
    check.outcome = KeyCheck::Outcome::kWrongSecret;
  } else if (e.revoked) {
    check.outcome = KeyCheck::Outcome::kRevoked;
  } else {
    check.outcome = KeyCheck::Outcome::kOk;
    check.name = e.name;
    check.scopes = e.scopes;
    check.quota = e.quota;
  }
  return check;
}

namespace {

// The last valid key a thread saw, reused while nothing in the cache changed (epoch) and the
// entry is still fresh: a busy key's checks then parse and hash nothing and share no lock word
// between I/O threads. The presented secret must equal the remembered one (compared in constant
// time), so the memo can never make a wrong secret pass.
struct VerifyMemo {
  std::uint64_t owner = 0;
  std::string id;
  std::string secret;
  KeyCheck check;
  std::uint64_t epoch = 0;
  std::chrono::steady_clock::time_point until{};
};
thread_local VerifyMemo verify_memo;

}  // namespace

std::optional<KeyCheck> KeyCache::Remembered(std::string_view id, std::string_view secret) {
  const VerifyMemo& memo = verify_memo;
  if (memo.owner == instance_ && memo.epoch == epoch_.load(std::memory_order_acquire) &&
      core::CoarseSteadyNow() < memo.until && memo.id == id &&
      memo.secret.size() == secret.size() &&
      CRYPTO_memcmp(memo.secret.data(), secret.data(), secret.size()) == 0) {
    return memo.check;
  }
  return std::nullopt;
}

std::optional<KeyCheck> KeyCache::TryVerify(std::string_view id, std::string_view secret) {
  if (auto check = Remembered(id, secret)) return check;
  const Clock::time_point now = core::CoarseSteadyNow();
  const std::uint64_t epoch = epoch_.load(std::memory_order_acquire);
  const SecretHash hash = HashSecretMemo(secret);
  Shard& shard = ShardFor(id);
  bool stale = false;
  std::optional<KeyCheck> check;
  Clock::time_point fresh_until{};
  {
    std::shared_lock lock(shard.mu);
    auto it = shard.entries.find(id);
    if (it == shard.entries.end()) return std::nullopt;
    check = Answer(it->second, hash, now, &stale);
    fresh_until = it->second.fetched_at + options_.fresh;
  }
  if (check && check->outcome == KeyCheck::Outcome::kOk && !stale) {
    VerifyMemo& memo = verify_memo;
    memo.owner = instance_;
    memo.id.assign(id);
    memo.secret.assign(secret);
    memo.check = *check;
    memo.epoch = epoch;
    memo.until = fresh_until;
  }
  if (stale) {
    bool start = false;
    {
      std::lock_guard lock(shard.mu);
      auto it = shard.entries.find(id);
      if (it != shard.entries.end() && !it->second.fetching) {
        it->second.fetching = true;
        start = true;
      }
    }
    if (start) StartRead(std::string(id));
  }
  return check;
}

void KeyCache::Fetch(std::string_view id, std::string_view secret,
                     std::function<void(KeyCheck)> done) {
  const SecretHash hash = HashSecret(secret);
  const Clock::time_point now = core::CoarseSteadyNow();
  Shard& shard = ShardFor(id);
  bool refresh = false;
  bool start = false;
  std::optional<KeyCheck> check;
  {
    std::lock_guard lock(shard.mu);
    auto it = shard.entries.find(id);
    if (it == shard.entries.end()) {
      Prune(shard, now);
      it = shard.entries.emplace(std::string(id), Entry{}).first;
    }
    Entry& e = it->second;
    check = Answer(e, hash, now, &refresh);
    if (refresh) e.fetching = true;
    if (!check) {
      e.waiters.push_back({std::string(secret), std::move(done)});
      if (!e.fetching) {
        e.fetching = true;
        start = true;
      }
    }
  }
  if (check) {
    if (refresh) StartRead(std::string(id));
    done(std::move(*check));
    return;
  }
  if (start) StartRead(std::string(id));
}

KeyCheck KeyCache::Verify(std::string_view id, std::string_view secret) {
  if (auto check = TryVerify(id, secret)) return *check;
  std::mutex mu;
  std::condition_variable cv;
  std::optional<KeyCheck> result;
  Fetch(id, secret, [&](KeyCheck c) {
    std::lock_guard lock(mu);
    result = std::move(c);
    cv.notify_all();
  });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return result.has_value(); });
  return *result;
}

void KeyCache::StartRead(std::string id) {
  if (Submit([this, id] { RunRead(id); })) return;
  // The pool is full: nobody reads for these waiters, so tell them.
  std::vector<Waiter> waiters;
  {
    Shard& shard = ShardFor(id);
    std::lock_guard lock(shard.mu);
    auto it = shard.entries.find(id);
    if (it == shard.entries.end()) return;
    it->second.fetching = false;
    waiters.swap(it->second.waiters);
  }
  for (Waiter& w : waiters) w.done(KeyCheck{});
}

void KeyCache::RunRead(const std::string& id) {
  const Clock::time_point started = Clock::now();
  auto stored = store_.Lookup(id);
  if (!stored.ok() && stored.status().code() != StatusCode::kNotFound) {
    spdlog::warn("auth: reading API key {}: {}", id, stored.status().ToString());
  }
  std::vector<Waiter> waiters;
  Entry snapshot;
  bool answered = false;
  {
    Shard& shard = ShardFor(id);
    std::lock_guard lock(shard.mu);
    auto it = shard.entries.find(id);
    if (it == shard.entries.end()) return;  // pruned meanwhile; it had no waiters then
    Entry& e = it->second;
    e.fetching = false;
    waiters.swap(e.waiters);
    epoch_.fetch_add(1, std::memory_order_acq_rel);
    if (stored.ok()) {
      e.loaded = e.exists = true;
      e.revoked = e.revoked || stored->key.revoked();
      e.hash = stored->hash;
      e.scopes = stored->key.scopes;
      e.quota = stored->key.quota;
      e.name = stored->key.name;
      e.fetched_at = started;
      answered = true;
    } else if (stored.status().code() == StatusCode::kNotFound) {
      e.loaded = true;
      e.exists = false;
      e.fetched_at = started;
      answered = true;
    }
    if (answered && !waiters.empty()) {
      snapshot.loaded = e.loaded;
      snapshot.exists = e.exists;
      snapshot.revoked = e.revoked;
      snapshot.hash = e.hash;
      snapshot.scopes = e.scopes;
      snapshot.quota = e.quota;
      snapshot.name = e.name;
      snapshot.fetched_at = started;
      snapshot.fetching = true;  // so Answer never asks for another refresh
    }
  }
  for (Waiter& w : waiters) {
    // Judged as of the read's start, so that a slow read still yields an answer.
    bool ignored = false;
    std::optional<KeyCheck> check =
        answered ? Answer(snapshot, HashSecret(w.secret), started, &ignored) : std::nullopt;
    w.done(check ? std::move(*check) : KeyCheck{});
  }
}

void KeyCache::MarkRevoked(std::string_view id) {
  Shard& shard = ShardFor(id);
  std::lock_guard lock(shard.mu);
  auto it = shard.entries.find(id);
  if (it != shard.entries.end()) it->second.revoked = true;
  epoch_.fetch_add(1, std::memory_order_acq_rel);
}

void KeyCache::TouchLastUsed(std::string_view id) {
  if (!store_.TouchLastUsed(id)) return;
  if (!Submit([this] {
        Status s = store_.FlushLastUsed();
        if (!s.ok()) spdlog::warn("auth: saving API key last-used times: {}", s.ToString());
      })) {
    store_.AbandonFlush();  // pool full: a later use schedules the flush again
  }
}

void KeyCache::Prune(Shard& shard, Clock::time_point now) {
  if (shard.entries.size() < options_.max_entries / kShards + 1) return;
  const auto horizon = std::max(options_.max_age, options_.negative_ttl);
  std::erase_if(shard.entries, [&](const auto& item) {
    const Entry& e = item.second;
    return !e.fetching && e.waiters.empty() && now - e.fetched_at >= horizon;
  });
}

std::size_t KeyCache::size() const {
  std::size_t n = 0;
  for (const Shard& shard : shards_) {
    std::lock_guard lock(shard.mu);
    n += shard.entries.size();
  }
  return n;
}

}  // namespace megaserve::gateway
