#include "cache/redis_gcra.h"

#include <openssl/sha.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <memory>
#include <utility>
#include <vector>

namespace megaserve::cache {
namespace {

// Mirrors GcraStep (gcra.cc) line for line. Lua numbers are doubles: microsecond timestamps
// (~2^51) and every intermediate value stay below 2^53, so the arithmetic is exact, and
// math.floor of a quotient of such integers equals integer division. TIME-then-write scripts
// need effect replication, the default from Redis 5 on; replicate_commands asks older servers.
constexpr std::string_view kScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local interval = math.max(1, math.floor(period / limit))
local tolerance = interval * (limit - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or 0) or 0
if tat < now then tat = now end
local function ceil_ms(us) return math.floor((us + 999) / 1000) end
if tat - now > tolerance then
  return {0, 0, ceil_ms(tat - tolerance - now), ceil_ms(tat - now)}
end
tat = tat + interval
local ahead = tat - now
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', ceil_ms(ahead)))
return {1, math.floor((limit * interval - ahead) / interval), 0, ceil_ms(ahead)}
)lua";

using Done = std::function<void(core::Result<GcraResult>)>;

core::Result<GcraResult> ParseReply(const RedisReply& reply, std::int64_t limit) {
  if (reply.type != RedisReply::Type::kArray || reply.elements.size() != 4) {
    return core::Internal("unexpected reply from the rate-limit script");
  }
  for (const auto& e : reply.elements) {
    if (e.type != RedisReply::Type::kInteger) {
      return core::Internal("unexpected reply from the rate-limit script");
    }
  }
  GcraResult r;
  r.allowed = reply.elements[0].integer == 1;
  r.limit = limit;
  r.remaining = reply.elements[1].integer;
  r.retry_after_ms = reply.elements[2].integer;
  r.reset_ms = reply.elements[3].integer;
  return r;
}

}  // namespace

std::string_view GcraScript() { return kScript; }

const std::string& GcraScriptSha() {
  static const std::string sha = [] {
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(kScript.data()), kScript.size(), digest);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char b : digest) {
      hex.push_back(kHex[b >> 4]);
      hex.push_back(kHex[b & 15]);
    }
    return hex;
  }();
  return sha;
}

std::string GcraRedisKey(std::string_view key) { return "megaserve:ratelimit:" + std::string(key); }

void RedisGcraCheck(RedisClient& client, std::string_view key, std::int64_t limit,
                    std::chrono::milliseconds period, Done done) {
  if (limit < 1 || period.count() < 1) {
    boost::asio::post(client.io_context(), [done = std::move(done)] {
      if (done) done(core::InvalidArgument("rate limit needs limit >= 1 and period >= 1 ms"));
    });
    return;
  }
  std::vector<std::string> args = {
      "EVALSHA",         GcraScriptSha(),       "1",
      GcraRedisKey(key), std::to_string(limit), std::to_string(period.count() * 1000)};
  client.Command(args, [&client, args, limit,
                        done = std::move(done)](core::Result<RedisReply> r) mutable {
    if (!r.ok() && r.status().message().rfind("NOSCRIPT", 0) == 0) {
      args[0] = "EVAL";
      args[1] = std::string(kScript);
      client.Command(std::move(args), [limit, done = std::move(done)](core::Result<RedisReply> r) {
        if (!done) return;
        if (!r.ok()) return done(r.status());
        done(ParseReply(*r, limit));
      });
      return;
    }
    if (!done) return;
    if (!r.ok()) return done(r.status());
    done(ParseReply(*r, limit));
  });
}

void LoadGcraScriptOnConnect(RedisClient& client) {
  client.AddReadyHook([](RedisClient& c) {
    c.Command({"SCRIPT", "LOAD", std::string(kScript)}, nullptr);
  });
}

RedisGcra::RedisGcra(RedisPool& pool) : pool_(pool) {
  for (const auto& c : pool_.clients()) LoadGcraScriptOnConnect(*c);
}

void RedisGcra::Check(std::string_view key, std::int64_t limit, std::chrono::milliseconds period,
                      Done done) {
  pool_.Run(
      [key = std::string(key), limit, period, done = std::move(done)](RedisClient& c) mutable {
        RedisGcraCheck(c, key, limit, period, std::move(done));
      });
}

}  // namespace megaserve::cache
