// RedisCache: the L2 response cache (RemoteCache) in Redis, shared by every gateway process.
//
// Entries live under "megaserve:cache:" + CacheKey::Hex() as EncodeCachedResponse bytes, written
// with SET ... PX so that Redis itself evicts them at CachedResponse::DiscardAtMs(). A value that
// does not decode (another format version, garbage, a key of another Redis type) reads as a miss.
// Requests go through a RedisPool: the calling loop's client, or one posted to when called off the
// loops.
#pragma once

#include <memory>
#include <string>

#include "cache/redis_client.h"
#include "cache/remote_cache.h"

namespace megaserve::cache {

class RedisCache final : public RemoteCache {
 public:
  // Uses `pool`, which must outlive this; the pool is started by its owner.
  explicit RedisCache(RedisPool& pool);
  // No copying allowed.
  RedisCache(const RedisCache&) = delete;
  RedisCache& operator=(const RedisCache&) = delete;

  // See RemoteCache::Get. Errors are the client's (Unavailable while Redis is down,
  // DeadlineExceeded when it does not answer in time).
  void Get(const CacheKey& key, GetCallback done) override;
  // See RemoteCache::Put. Entries already past DiscardAtMs() are not written.
  void Put(const CacheKey& key, std::shared_ptr<const CachedResponse> entry) override;
  // DEL; errors are counted by the client and otherwise ignored.
  void Erase(const CacheKey& key) override;

  // The Redis key of `key`.
  static std::string RedisKey(const CacheKey& key);

 private:
  RedisPool& pool_;
};

}  // namespace megaserve::cache
