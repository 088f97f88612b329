// The first cache tier (L1): responses in this process's memory, under a byte budget.
//
// Eviction is SIEVE (Zhang, Yang, Yue, Vigfusson and Rashmi, "SIEVE is Simpler than LRU: an
// Efficient Turn-Key Eviction Algorithm for Web Caches", NSDI 2024). Entries sit in a FIFO queue
// in insertion order, each with a "visited" bit that a hit sets. To make room, a hand walks the
// queue from the oldest end towards the newest: a visited entry has its bit cleared and is
// skipped (it stays where it is, unlike CLOCK's or LRU's reinsertion), the first unvisited one is
// evicted, and the hand stays there for the next eviction, wrapping to the oldest end when it
// passes the newest. A hit only sets a bit, so it never reorders the queue; one-hit wonders are
// evicted quickly while popular entries survive scans.
//
// The cache is split into shards by key, each with its own lock, queue and an equal share of the
// byte budget, so that threads looking up different keys rarely contend. An entry larger than a
// shard's share is not stored. Entries whose CachedResponse::DiscardAtMs() has passed are
// dropped when a lookup finds them (and are evicted like any other entry otherwise).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "cache/cache_key.h"
#include "cache/cached_response.h"

namespace megaserve::cache {

class MemoryCache {
 public:
  static constexpr std::size_t kDefaultShards = 16;

  // A cache holding at most `max_bytes` of entries (by CachedResponse::Bytes()), split evenly
  // over `shards` shards (at least one).
  explicit MemoryCache(std::size_t max_bytes, std::size_t shards = kDefaultShards);
  ~MemoryCache();
  // No copying allowed.
  MemoryCache(const MemoryCache&) = delete;
  MemoryCache& operator=(const MemoryCache&) = delete;

  // The entry under `key`, or null when there is none or it is past its DiscardAtMs() at
  // `now_ms` (it is then removed). Marks the entry visited. Thread-safe.
  std::shared_ptr<const CachedResponse> Get(const CacheKey& key, std::int64_t now_ms);

  // Stores `entry` under `key`, replacing any entry there, and evicts until the shard is within
  // its budget. An entry larger than a shard's budget is not stored (and the old one is removed,
  // so a stale response does not outlive its replacement). Thread-safe.
  void Put(const CacheKey& key, std::shared_ptr<const CachedResponse> entry);

  // Removes the entry under `key`; returns whether there was one. Thread-safe.
  bool Erase(const CacheKey& key);

  // Bytes held by all entries (the sum of their Bytes()).
  std::size_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  // Number of entries held.
  std::size_t entries() const { return entries_.load(std::memory_order_relaxed); }
  // Entries evicted to make room so far (not counting expired or erased ones).
  std::uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }
  // The byte budget of one shard: the largest entry that can be stored.
  std::size_t shard_budget() const { return shard_budget_; }

  // A number that changes whenever the entries of `key`'s shard change (put, erase, eviction,
  // expiry). Read without the shard's lock: a per-thread copy of an entry taken when the
  // generation was G is still current while Generation() returns G.
  std::uint64_t Generation(const CacheKey& key) const {
    return generations_[ShardIndex(key)].value.load(std::memory_order_acquire);
  }

 private:
  struct Node;
  struct Shard;

  Shard& ShardFor(const CacheKey& key) const;
  std::size_t ShardIndex(const CacheKey& key) const { return key.high % shards_.size(); }
  void Bump(const CacheKey& key) {
    generations_[ShardIndex(key)].value.fetch_add(1, std::memory_order_acq_rel);
  }
  // Unlinks and deletes `node` from `shard`. Requires shard.mu held.
  void Remove(Shard& shard, Node* node);

  const std::size_t shard_budget_;
  std::vector<std::unique_ptr<Shard>> shards_;
  // Per shard, each on its own cache line: hits only read them, so they stay shared.
  struct alignas(64) Generation_ {
    std::atomic<std::uint64_t> value{0};
  };
  std::unique_ptr<Generation_[]> generations_;
  std::atomic<std::size_t> bytes_{0};
  std::atomic<std::size_t> entries_{0};
  std::atomic<std::uint64_t> evictions_{0};
};

}  // namespace megaserve::cache
