#include "cache/memory_cache.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <shared_mutex>
#include <utility>

namespace megaserve::cache {

// One entry in a shard's SIEVE queue. `newer` points towards the head (most recently inserted),
// `older` towards the tail.
struct MemoryCache::Node {
  CacheKey key;
  std::shared_ptr<const CachedResponse> entry;
  std::size_t bytes = 0;
  // Set by readers under the shared lock, hence atomic; cleared by the hand under the exclusive
  // one.
  std::atomic<bool> visited{false};
  Node* newer = nullptr;
  Node* older = nullptr;
};

struct MemoryCache::Shard {
  // Hits take it shared (a hot key is read by every I/O thread at once); changes take it alone.
  std::shared_mutex mu;
  std::unordered_map<CacheKey, Node, CacheKeyHash> index;  // guarded by mu; nodes are stable
  Node* head = nullptr;                                    // newest
  Node* tail = nullptr;                                    // oldest
  Node* hand = nullptr;  // next eviction candidate; null = start from the tail
  std::size_t bytes = 0;
};

MemoryCache::MemoryCache(std::size_t max_bytes, std::size_t shards)
    : shard_budget_(max_bytes / std::max<std::size_t>(shards, 1)) {
  shards_.resize(std::max<std::size_t>(shards, 1));
  for (auto& shard : shards_) shard = std::make_unique<Shard>();
  generations_ = std::make_unique<Generation_[]>(shards_.size());
}

MemoryCache::~MemoryCache() = default;

MemoryCache::Shard& MemoryCache::ShardFor(const CacheKey& key) const {
  // The index hashes `low`; sharding by `high` keeps the two independent.
  return *shards_[ShardIndex(key)];
}

void MemoryCache::Remove(Shard& shard, Node* node) {
  Bump(node->key);
  if (shard.hand == node) shard.hand = node->newer;
  (node->newer ? node->newer->older : shard.head) = node->older;
  (node->older ? node->older->newer : shard.tail) = node->newer;
  shard.bytes -= node->bytes;
  bytes_.fetch_sub(node->bytes, std::memory_order_relaxed);
  entries_.fetch_sub(1, std::memory_order_relaxed);
  const CacheKey key = node->key;  // erase() must not read the key from the node it destroys
  shard.index.erase(key);
}

std::shared_ptr<const CachedResponse> MemoryCache::Get(const CacheKey& key, std::int64_t now_ms) {
  Shard& shard = ShardFor(key);
  {
    std::shared_lock lock(shard.mu);
    auto it = shard.index.find(key);
    if (it == shard.index.end()) return nullptr;
    Node& node = it->second;
    if (now_ms < node.entry->DiscardAtMs()) {
      if (!node.visited.load(std::memory_order_relaxed)) {
        node.visited.store(true, std::memory_order_relaxed);
      }
      return node.entry;
    }
  }
  // Expired: remove it, unless it was replaced meanwhile.
  std::unique_lock lock(shard.mu);
  auto it = shard.index.find(key);
  if (it != shard.index.end() && now_ms >= it->second.entry->DiscardAtMs()) {
    Remove(shard, &it->second);
  }
  return nullptr;
}

void MemoryCache::Put(const CacheKey& key, std::shared_ptr<const CachedResponse> entry) {
  if (!entry) return;
  const std::size_t size = entry->Bytes();
  Shard& shard = ShardFor(key);
  std::unique_lock lock(shard.mu);
  bool visited = false;
  if (auto it = shard.index.find(key); it != shard.index.end()) {
    visited = it->second.visited.load(
        std::memory_order_relaxed);  // a refreshed entry keeps its popularity
    Remove(shard, &it->second);
  }
  if (size > shard_budget_) return;

  // SIEVE eviction: the hand skips (and clears) visited entries, evicts the first unvisited one.
  while (shard.bytes + size > shard_budget_ && shard.tail != nullptr) {
    Node* victim = shard.hand ? shard.hand : shard.tail;
    while (victim->visited.load(std::memory_order_relaxed)) {
      victim->visited.store(false, std::memory_order_relaxed);
      victim = victim->newer ? victim->newer : shard.tail;
    }
    shard.hand = victim->newer;
    Remove(shard, victim);
    evictions_.fetch_add(1, std::memory_order_relaxed);
  }

  auto [it, inserted] = shard.index.try_emplace(key);
  Node& node = it->second;
  node.key = key;
  node.entry = std::move(entry);
  Bump(key);
  node.bytes = size;
  node.visited.store(visited, std::memory_order_relaxed);
  node.older = shard.head;
  node.newer = nullptr;
  (shard.head ? shard.head->newer : shard.tail) = &node;
  shard.head = &node;
  shard.bytes += size;
  bytes_.fetch_add(size, std::memory_order_relaxed);
  entries_.fetch_add(1, std::memory_order_relaxed);
}

bool MemoryCache::Erase(const CacheKey& key) {
  Shard& shard = ShardFor(key);
  std::lock_guard lock(shard.mu);
  auto it = shard.index.find(key);
  if (it == shard.index.end()) return false;
  Remove(shard, &it->second);
  return true;
}

}  // namespace megaserve::cache
