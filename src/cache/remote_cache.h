// The second cache tier (L2), shared between processes: an interface, so the response cache does
// not depend on how it is stored. RedisCache (cache/redis_cache.h) is the implementation.
#pragma once

#include <functional>
#include <memory>

#include "cache/cache_key.h"
#include "cache/cached_response.h"
#include "core/status.h"

namespace megaserve::cache {

class RemoteCache {
 public:
  virtual ~RemoteCache() = default;

  using GetCallback = std::function<void(core::Result<std::shared_ptr<const CachedResponse>>)>;

  // Looks `key` up and calls `done` exactly once with the entry, with a null pointer on a miss,
  // or with an error (Unavailable while the backend is unreachable; the caller treats it as a
  // miss and counts it). Called on an I/O loop's thread, `done` runs later on that same thread;
  // called elsewhere, `done` runs on some loop thread. Never calls `done` from inside Get.
  virtual void Get(const CacheKey& key, GetCallback done) = 0;

  // Stores `entry` under `key` until entry->DiscardAtMs(). Fire and forget; safe from any thread.
  virtual void Put(const CacheKey& key, std::shared_ptr<const CachedResponse> entry) = 0;

  // Deletes the entry under `key`, if any. Fire and forget; safe from any thread.
  virtual void Erase(const CacheKey& key) = 0;
};

}  // namespace megaserve::cache
