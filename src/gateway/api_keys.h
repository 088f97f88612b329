// API keys: the token format, scopes, the store of keys, and the in-memory cache the auth filter
// consults on every request.
//
// Tokens. A key is presented as "ms_<id>_<secret>": <id> is 12 characters [a-z0-9] that name the
// key (safe to log, stored in clear), <secret> is 32 characters base62, 190 bits from the OpenSSL
// CSPRNG (RAND_bytes), drawn by rejection sampling so that every character is uniform. The token
// is shown once, when the key is created; only SHA-256(secret) is stored.
//
// Why a fast hash. Slow password hashes (bcrypt, scrypt, Argon2) exist to make guessing
// low-entropy human passwords expensive. A secret with 190 bits of entropy cannot be guessed
// whatever the cost per guess, so SHA-256 protects a leaked table just as well, and it costs
// about a microsecond, which matters because every request is checked. Comparisons of hashes use
// CRYPTO_memcmp, whose time does not depend on where the bytes differ.
//
// Freshness (KeyCache). The auth filter must not wait for the store on the hot path, yet a key
// revoked by another process sharing the store must be refused within a second. A cache entry
// is therefore trusted for at most max_age (500 ms) after the store read that filled it began.
// Between fresh (250 ms) and max_age it is still served, and one background read per key
// refreshes it, so a key in steady use rarely waits; past max_age the request waits for a read.
// At most one read per key is in flight; requests arriving meanwhile wait for its result.
// Unknown ids are cached as negative entries for negative_ttl (500 ms), so a flood of one bad
// key costs one read per interval. Revocation is permanent, so once an entry has been seen
// revoked (or revoked through the local ApiKeyStore, which notifies the cache at once) a later
// read that started before the revocation cannot un-revoke it.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/blocking_pool.h"
#include "core/ids.h"
#include "core/status.h"
#include "store/database.h"

namespace megaserve::gateway {

// Scope bits, combined into a std::uint32_t set (Identity::scopes). A key with kAdmin passes
// every scope check.
enum class Scope : std::uint32_t {
  kImages = 1u << 0,
  kVideos = 1u << 1,
  kForecasts = 1u << 2,
  kJobs = 1u << 3,
  kAdmin = 1u << 4,
};

// The bit of one scope.
constexpr std::uint32_t ScopeBit(Scope s) { return static_cast<std::uint32_t>(s); }

// One scope by name ("images"); kInvalidArgument naming the known scopes otherwise.
core::Result<Scope> ParseScope(std::string_view name);

// A comma-separated list ("images,jobs"; spaces around names ignored, "" = no scopes) as a bit
// set. kInvalidArgument naming the first unknown scope.
core::Result<std::uint32_t> ParseScopes(std::string_view list);

// The names of the scopes in `scopes`, in declaration order.
std::vector<std::string_view> ScopeNames(std::uint32_t scopes);

// The scopes as a comma-separated list, in declaration order ("images,jobs"; "" for none).
std::string FormatScopes(std::uint32_t scopes);

// True when a key holding `scopes` may use a route that needs `needed` ("" = any valid key).
// Admin keys pass every check; an unknown scope name is passed by admin keys only.
bool ScopeAllows(std::uint32_t scopes, std::string_view needed);

inline constexpr std::string_view kTokenPrefix = "ms_";
inline constexpr std::size_t kKeyIdLength = 12;
inline constexpr std::size_t kSecretLength = 32;      // what NewToken() makes
inline constexpr std::size_t kMaxSecretLength = 128;  // longest secret ParseToken() accepts

// A token split into its parts; views into the parsed text.
struct ParsedToken {
  std::string_view id;
  std::string_view secret;
};

// Splits "ms_<id>_<secret>". kInvalidArgument when the prefix, the id (12 × [a-z0-9]) or the
// secret (32 to 128 × [0-9A-Za-z]) is malformed. The message never contains the token.
core::Result<ParsedToken> ParseToken(std::string_view token);

// The parts of anything shaped like a token (prefix, lengths, separator), without checking its
// characters; nullopt otherwise. Only for comparing with a token already known to be valid.
std::optional<ParsedToken> SplitToken(std::string_view token);

// True when `id` has the shape of a key id (12 × [a-z0-9]).
bool IsKeyId(std::string_view id);

// A new random key id and secret, and the token made of them. kInternal when the CSPRNG fails.
struct NewTokenParts {
  std::string id;
  std::string secret;
  std::string token;
};
core::Result<NewTokenParts> NewToken();

// SHA-256 of a secret, as stored (in hex) and compared (raw).
using SecretHash = std::array<unsigned char, 32>;
SecretHash HashSecret(std::string_view secret);
// The hash as 64 lower-case hex digits, and back (nullopt when `hex` is not 64 hex digits).
std::string HashToHex(const SecretHash& hash);
std::optional<SecretHash> HashFromHex(std::string_view hex);
// True when SHA-256(secret) equals `hash`, compared in constant time.
bool SecretMatches(std::string_view secret, const SecretHash& hash);

// A key as listed and shown: never its secret or hash.
struct ApiKey {
  std::string id;
  std::string name;
  std::uint32_t scopes = 0;       // bit set of Scope
  std::int64_t quota = 0;         // requests per minute; 0 = the route's limit
  std::int64_t created_at = 0;    // unix microseconds
  std::int64_t last_used_at = 0;  // unix microseconds; 0 = never (as far as the store knows)
  std::int64_t revoked_at = 0;    // unix microseconds; 0 = active

  bool revoked() const { return revoked_at != 0; }
  // The API object: {"object":"api_key","id","name","scopes":[...],"quota","created_at",
  // "last_used_at","revoked_at"} with RFC 3339 times (null when unset). When `token` is given
  // it is added as "key" (only the response that creates a key does that).
  std::string ToJson(std::string_view token = {}) const;
};

// A key with its stored hash, for verification.
struct StoredApiKey {
  ApiKey key;
  SecretHash hash{};
};

// What Create() returns: the record and the token, which cannot be recovered later.
struct CreatedApiKey {
  ApiKey key;
  std::string token;
};

struct ApiKeyStoreOptions {
  // Last-used times are written at most this often (see TouchLastUsed).
  std::chrono::milliseconds flush_interval{5'000};
};

// The api_keys table (migration 3). Every method that touches the store blocks: call them off
// the I/O threads. Thread-safe.
class ApiKeyStore {
 public:
  explicit ApiKeyStore(store::Database& db, ApiKeyStoreOptions options = {});
  // Writes the last-used times still pending.
  ~ApiKeyStore();
  // No copying allowed.
  ApiKeyStore(const ApiKeyStore&) = delete;
  ApiKeyStore& operator=(const ApiKeyStore&) = delete;

  // Creates a key. kInvalidArgument for an empty or over-long name (200 bytes), an unknown scope
  // bit or a negative quota; store errors as they come.
  core::Result<CreatedApiKey> Create(std::string_view name, std::uint32_t scopes,
                                     std::int64_t quota);

  // Every key, revoked ones included, oldest first.
  core::Result<std::vector<ApiKey>> List();

  // One key; kNotFound when there is no such id.
  core::Result<ApiKey> Get(std::string_view id);

  // Marks a key revoked (keeping the first revocation time when it already was) and returns
  // it; kNotFound when there is no such id. Revocation listeners run before this returns.
  core::Result<ApiKey> Revoke(std::string_view id);

  // Checks a token against the store: the key, or kUnauthenticated (malformed token or wrong
  // secret), kNotFound (no such key id) or kPermissionDenied (revoked). Records the use.
  core::Result<ApiKey> Verify(std::string_view token);

  // The key with its hash (for KeyCache); kNotFound when there is no such id.
  core::Result<StoredApiKey> Lookup(std::string_view id);

  // Records, in memory only, that key `id` was used now; never touches the store. Returns true
  // when the caller should arrange a FlushLastUsed() call off the I/O thread: at most one caller
  // per flush interval is told so. Any thread.
  bool TouchLastUsed(std::string_view id);

  // Writes the recorded last-used times (only ever moving them forward). On failure they are
  // kept for the next flush.
  core::Status FlushLastUsed();

  // Gives back the duty TouchLastUsed() handed out, when the caller cannot flush after all
  // (e.g. its pool is full); a later use hands it out again.
  void AbandonFlush();

  // Registers fn(id), called on the revoking thread after each successful Revoke(). Returns a
  // handle for RemoveRevocationListener.
  int AddRevocationListener(std::function<void(const std::string& id)> fn);
  // Unregisters a listener; it is not called once this returns (unless a Revoke() on another
  // thread had already taken it).
  void RemoveRevocationListener(int handle);

 private:
  store::Database& db_;
  const ApiKeyStoreOptions options_;
  const std::uint64_t instance_ = core::NextInstanceId();  // for per-thread memos

  // Uses recorded since the last flush, sharded by id so that I/O threads rarely share a lock.
  struct UseShard {
    std::mutex mu;
    std::unordered_map<std::string, std::int64_t> uses;  // id -> unix micros; guarded by mu
  };
  static constexpr std::size_t kUseShards = 16;
  UseShard use_shards_[kUseShards];
  std::atomic<std::int64_t> next_flush_at_{0};  // steady_clock nanoseconds
  std::atomic<bool> flush_claimed_{false};

  std::mutex listeners_mu_;
  std::map<int, std::function<void(const std::string&)>> listeners_;  // guarded by listeners_mu_
  int next_listener_ = 0;                                             // guarded by listeners_mu_
};

// The result of checking a token against the cache (or the store through it).
struct KeyCheck {
  enum class Outcome {
    kOk,           // a valid, active key: the fields below are set
    kUnknown,      // no key has this id
    kWrongSecret,  // the id exists but the secret is wrong
    kRevoked,      // the key was revoked
    kUnavailable,  // the store could not be read (or the pool was full)
  };
  Outcome outcome = Outcome::kUnavailable;
  std::string name;
  std::uint32_t scopes = 0;
  std::int64_t quota = 0;
};

struct KeyCacheOptions {
  std::chrono::milliseconds fresh{250};         // served without a background refresh
  std::chrono::milliseconds max_age{500};       // never trusted longer than this
  std::chrono::milliseconds negative_ttl{500};  // how long "no such key" is remembered
  std::size_t max_entries = 100'000;            // beyond this, stale entries are dropped
};

// Verified keys in memory; see the top of this file for the freshness rules. Store reads run on
// `pool`. Thread-safe. The store and the pool must outlive the cache; the destructor waits for
// the cache's own pool tasks.
class KeyCache {
 public:
  KeyCache(ApiKeyStore& store, core::BlockingPool& pool, KeyCacheOptions options = {});
  ~KeyCache();
  // No copying allowed.
  KeyCache(const KeyCache&) = delete;
  KeyCache& operator=(const KeyCache&) = delete;

  // Answers from memory when the key's entry may still be trusted, without blocking or touching
  // the store (it may queue a background refresh); nullopt when the store must be read first,
  // which Fetch() does. Any thread.
  std::optional<KeyCheck> TryVerify(std::string_view id, std::string_view secret);

  // TryVerify's answer when it is this thread's last valid key, presented again (the secret is
  // compared in constant time) while its entry is fresh and nothing in the cache has changed;
  // nullopt otherwise. A match implies a well-formed token, so the parts may come from
  // SplitToken. Any thread.
  std::optional<KeyCheck> Remembered(std::string_view id, std::string_view secret);

  // Answers through `done`, which runs exactly once: at once on this thread when the cache can
  // answer now, otherwise on a pool thread after the store read (with kUnavailable when the read
  // failed or the pool was full). Never blocks. Any thread.
  void Fetch(std::string_view id, std::string_view secret, std::function<void(KeyCheck)> done);

  // Blocking convenience for tests and tools: TryVerify, else Fetch and wait.
  KeyCheck Verify(std::string_view id, std::string_view secret);

  // Marks a key revoked at once (ApiKeyStore::Revoke calls this through its listener).
  void MarkRevoked(std::string_view id);

  // Records a use of a key (see ApiKeyStore::TouchLastUsed), flushing on the pool when due.
  void TouchLastUsed(std::string_view id);

  // Entries held, for tests.
  std::size_t size() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Waiter {
    std::string secret;
    std::function<void(KeyCheck)> done;
  };
  struct Entry {
    bool loaded = false;  // a store read has completed
    bool exists = false;
    bool revoked = false;  // sticky: revocation is permanent
    SecretHash hash{};
    std::uint32_t scopes = 0;
    std::int64_t quota = 0;
    std::string name;
    Clock::time_point fetched_at{};  // when the read that filled the entry began
    bool fetching = false;           // a read is in flight (at most one)
    std::vector<Waiter> waiters;     // requests waiting for that read
  };
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Shard {
    // Hits (TryVerify) take it shared: a busy key is checked by every I/O thread at once.
    mutable std::shared_mutex mu;
    std::unordered_map<std::string, Entry, Hash, std::equal_to<>> entries;  // guarded by mu
  };
  // Bumped whenever an entry's answer may change (a read completes, a revocation).
  std::atomic<std::uint64_t> epoch_{0};
  const std::uint64_t instance_ = core::NextInstanceId();  // for per-thread memos
  static constexpr std::size_t kShards = 16;

  Shard& ShardFor(std::string_view id);
  // The answer an entry gives now, or nullopt when it is too old. Sets *stale when a background
  // read should start (none is in flight and the entry is past `fresh`). Caller holds the
  // shard's lock, shared or exclusive.
  std::optional<KeyCheck> Answer(const Entry& e, const SecretHash& hash, Clock::time_point now,
                                 bool* stale) const;
  // Queues the store read for `id` on the pool; on failure answers its waiters kUnavailable.
  void StartRead(std::string id);
  void RunRead(const std::string& id);
  void Prune(Shard& shard, Clock::time_point now);
  bool Submit(std::function<void()> fn);

  ApiKeyStore& store_;
  core::BlockingPool& pool_;
  const KeyCacheOptions options_;
  int listener_ = -1;
  Shard shards_[kShards];

  std::mutex tasks_mu_;
  std::condition_variable tasks_cv_;
  int tasks_ = 0;  // pool tasks queued or running; guarded by tasks_mu_
};

}  // namespace megaserve::gateway
