// Global rate limits: GCRA (cache/gcra.h) evaluated inside Redis, so that every gateway process
// sharing a Redis server enforces one limit per key.
//
// Each check is one Lua script run (EVALSHA; EVAL when the server answers NOSCRIPT, e.g. after a
// restart or SCRIPT FLUSH). The script reads the time from Redis' TIME, so gateways with skewed
// clocks still share one clock, and performs GcraStep's arithmetic exactly on the key's TAT, which
// it stores with a PX expiry at the instant the bucket is full again (an expired key and a key at
// its initial state behave the same). Scripts run atomically, so concurrent checks on one key
// from many gateways serialize in Redis.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "cache/gcra.h"
#include "cache/redis_client.h"
#include "core/status.h"

namespace megaserve::cache {

// The Lua source of the check; KEYS[1] is the TAT key, ARGV[1] the limit and ARGV[2] the period in
// microseconds; an optional ARGV[3] gives "now" in microseconds instead of TIME (for replaying a
// sequence and for tests). Returns {allowed (0/1), remaining, retry_after_ms, reset_ms}.
std::string_view GcraScript();

// The SHA-1 of GcraScript() in lowercase hex, as EVALSHA and SCRIPT LOAD name it.
const std::string& GcraScriptSha();

// The Redis key holding the state of rate-limit key `key`: "megaserve:ratelimit:" + key.
std::string GcraRedisKey(std::string_view key);

// Checks one request against `limit` requests per `period` for `key` (shared by every client of
// the same server) and calls `done` exactly once on the client's loop with the result, or with
// the client's error (Unavailable while Redis is unreachable: fall back to a local limiter), or
// InvalidArgument when limit < 1 or period < 1 ms. Same threading rules as
// RedisClient::Command: call on the client's loop; `done` is never called from inside.
void RedisGcraCheck(RedisClient& client, std::string_view key, std::int64_t limit,
                    std::chrono::milliseconds period,
                    std::function<void(core::Result<GcraResult>)> done);

// Adds a ready hook to `client` that loads the script (SCRIPT LOAD) each time it connects, so the
// first check after a (re)connect need not send the script. Call before the client starts, or on
// its loop.
void LoadGcraScriptOnConnect(RedisClient& client);

// Rate limits through a RedisPool: checks go to the calling loop's client.
class RedisGcra {
 public:
  // Uses `pool`, which must outlive this, and loads the script on every client as it connects.
  // Construct before pool.Start().
  explicit RedisGcra(RedisPool& pool);
  // No copying allowed.
  RedisGcra(const RedisGcra&) = delete;
  RedisGcra& operator=(const RedisGcra&) = delete;

  // RedisGcraCheck with the calling loop's client; `done` runs later on that loop. From a thread
  // off the loops, the check is posted to one of them and `done` runs there.
  void Check(std::string_view key, std::int64_t limit, std::chrono::milliseconds period,
             std::function<void(core::Result<GcraResult>)> done);

 private:
  RedisPool& pool_;
};

}  // namespace megaserve::cache
