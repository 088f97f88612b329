#include "cache/redis_cache.h"

#include <utility>

#include "core/time_format.h"

namespace megaserve::cache {

RedisCache::RedisCache(RedisPool& pool) : pool_(pool) {}

std::string RedisCache::RedisKey(const CacheKey& key) { return "megaserve:cache:" + key.Hex(); }

void RedisCache::Get(const CacheKey& key, GetCallback done) {
  pool_.Command({"GET", RedisKey(key)}, [done = std::move(done)](core::Result<RedisReply> r) {
    if (!done) return;
    // A key of another Redis type is not ours to read: a miss, like an undecodable value.
    if (!r.ok() && r.status().message().rfind("WRONGTYPE", 0) == 0) {
      return done(std::shared_ptr<const CachedResponse>());
    }
    if (!r.ok()) return done(r.status());
    if (r->type != RedisReply::Type::kString) {
      return done(std::shared_ptr<const CachedResponse>());
    }
    auto decoded = DecodeCachedResponse(r->str);
    if (!decoded) return done(std::shared_ptr<const CachedResponse>());
    done(std::shared_ptr<const CachedResponse>(
        std::make_shared<CachedResponse>(std::move(*decoded))));
  });
}

void RedisCache::Put(const CacheKey& key, std::shared_ptr<const CachedResponse> entry) {
  if (!entry) return;
  const std::int64_t px = entry->DiscardAtMs() - core::NowMicros() / 1000;
  if (px <= 0) return;
  pool_.Command({"SET", RedisKey(key), EncodeCachedResponse(*entry), "PX", std::to_string(px)},
                nullptr);
}

void RedisCache::Erase(const CacheKey& key) { pool_.Command({"DEL", RedisKey(key)}, nullptr); }

}  // namespace megaserve::cache
