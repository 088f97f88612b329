#include "cache/memory_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::cache {
namespace {

CacheKey Key(std::uint64_t i) { return CacheKey{i * 0x9E3779B97F4A7C15ULL, i}; }

std::shared_ptr<const CachedResponse> Entry(std::size_t body_bytes, std::int64_t ttl_ms = 60'000,
                                            std::int64_t stored_at_ms = 0) {
  auto r = std::make_shared<CachedResponse>();
  r->body.assign(body_bytes, 'x');
  r->stored_at_ms = stored_at_ms;
  r->ttl_ms = ttl_ms;
  return r;
}

std::size_t EntryBytes(std::size_t body_bytes) { return Entry(body_bytes)->Bytes(); }

TEST(MemoryCacheTest, PutGetReplaceErase) {
  MemoryCache cache(1 << 20);
  EXPECT_EQ(cache.Get(Key(1), 0), nullptr);
  auto a = Entry(10);
  cache.Put(Key(1), a);
  EXPECT_EQ(cache.Get(Key(1), 0), a);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), a->Bytes());

  auto b = Entry(20);
  cache.Put(Key(1), b);
  EXPECT_EQ(cache.Get(Key(1), 0), b);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), b->Bytes());

  EXPECT_TRUE(cache.Erase(Key(1)));
  EXPECT_FALSE(cache.Erase(Key(1)));
  EXPECT_EQ(cache.Get(Key(1), 0), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(MemoryCacheTest, ByteBudgetIsRespected) {
  const std::size_t per_entry = EntryBytes(1000);
  MemoryCache cache(per_entry * 40, 4);  // 10 entries per shard
  for (std::uint64_t i = 0; i < 1000; ++i) {
    cache.Put(Key(i), Entry(1000));
    ASSERT_LE(cache.bytes(), per_entry * 40);
  }
  EXPECT_LE(cache.entries(), 40u);
  EXPECT_GE(cache.entries(), 30u);  // shards fill up; the split is by hash
  EXPECT_EQ(cache.evictions(), 1000u - cache.entries());
  EXPECT_EQ(cache.bytes(), cache.entries() * per_entry);
}

TEST(MemoryCacheTest, EntryLargerThanAShardIsNotStoredAndDropsTheOldOne) {
  MemoryCache cache(EntryBytes(100) * 16, 16);
  cache.Put(Key(7), Entry(10));
  ASSERT_NE(cache.Get(Key(7), 0), nullptr);
  cache.Put(Key(7), Entry(10'000));
  EXPECT_EQ(cache.Get(Key(7), 0), nullptr);
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(MemoryCacheTest, SieveKeepsVisitedEntriesOverUnvisitedOnes) {
  // One shard holding four entries, so the eviction order is fully determined.
  MemoryCache cache(EntryBytes(100) * 4, 1);
  for (std::uint64_t i = 1; i <= 4; ++i) cache.Put(Key(i), Entry(100));
  // Visit 1 and 3: the hand starts at the oldest (1), skips it, and evicts 2.
  ASSERT_NE(cache.Get(Key(1), 0), nullptr);
  ASSERT_NE(cache.Get(Key(3), 0), nullptr);
  cache.Put(Key(5), Entry(100));
  EXPECT_EQ(cache.Get(Key(2), 0), nullptr);
  EXPECT_EQ(cache.evictions(), 1u);
  // The hand now rests on 3, the entry after 2: it is visited, so its bit is cleared and it is
  // skipped, and 4, never visited, goes next.
  cache.Put(Key(6), Entry(100));
  EXPECT_EQ(cache.Get(Key(4), 0), nullptr);
  EXPECT_NE(cache.Get(Key(3), 0), nullptr);
  EXPECT_NE(cache.Get(Key(5), 0), nullptr);
  EXPECT_NE(cache.Get(Key(6), 0), nullptr);
  // 3, 5 and 6 were just visited; 1's bit was cleared by the first pass and it was not visited
  // since, so the hand passes 5 and 6 and wraps around to evict 1.
  cache.Put(Key(7), Entry(100));
  EXPECT_EQ(cache.Get(Key(1), 0), nullptr);
  EXPECT_EQ(cache.evictions(), 3u);
  EXPECT_EQ(cache.entries(), 4u);
}

TEST(MemoryCacheTest, RemovingTheNewestOrOldestKeepsTheQueueInOrder) {
  MemoryCache cache(EntryBytes(100) * 3, 1);
  for (std::uint64_t i = 1; i <= 3; ++i) cache.Put(Key(i), Entry(100));
  ASSERT_TRUE(cache.Erase(Key(3)));  // the newest
  cache.Put(Key(4), Entry(100));     // queue, oldest first: 1 2 4
  cache.Put(Key(5), Entry(100));     // evicts 1: 2 4 5
  EXPECT_EQ(cache.Get(Key(1), 0), nullptr);
  ASSERT_TRUE(cache.Erase(Key(2)));  // the oldest: 4 5
  cache.Put(Key(6), Entry(100));     // 4 5 6
  cache.Put(Key(7), Entry(100));     // evicts 4: 5 6 7
  EXPECT_EQ(cache.Get(Key(4), 0), nullptr);
  cache.Put(Key(6), Entry(100));  // a replacement moves to the newest end: 5 7 6
  cache.Put(Key(8), Entry(100));  // evicts 5
  EXPECT_EQ(cache.Get(Key(5), 0), nullptr);
  for (std::uint64_t i : {6, 7, 8}) EXPECT_NE(cache.Get(Key(i), 0), nullptr) << i;
  EXPECT_EQ(cache.entries(), 3u);
  EXPECT_EQ(cache.evictions(), 3u);
}

TEST(MemoryCacheTest, HotEntriesSurviveAScan) {
  MemoryCache cache(EntryBytes(100) * 10, 1);
  for (std::uint64_t i = 0; i < 5; ++i) cache.Put(Key(i), Entry(100));
  for (std::uint64_t scan = 100; scan < 1100; ++scan) {
    for (std::uint64_t i = 0; i < 5; ++i) ASSERT_NE(cache.Get(Key(i), 0), nullptr) << scan;
    cache.Put(Key(scan), Entry(100));
  }
  EXPECT_EQ(cache.entries(), 10u);
}

TEST(MemoryCacheTest, ExpiredEntriesAreDroppedOnLookup) {
  MemoryCache cache(1 << 20);
  auto r = std::make_shared<CachedResponse>();
  r->stored_at_ms = 1000;
  r->ttl_ms = 500;
  r->stale_while_revalidate_ms = 200;
  r->stale_if_error_ms = 1000;
  cache.Put(Key(1), r);
  EXPECT_NE(cache.Get(Key(1), 1400), nullptr);  // fresh
  EXPECT_NE(cache.Get(Key(1), 2400), nullptr);  // stale, still usable if the origin fails
  EXPECT_EQ(cache.Get(Key(1), 2500), nullptr);  // 1000 + 500 + max(200, 1000)
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.evictions(), 0u);
  EXPECT_EQ(cache.Get(Key(1), 0), nullptr);  // gone, not merely hidden
}

TEST(MemoryCacheTest, ConcurrentUseFromSeveralThreads) {
  const std::size_t per_entry = EntryBytes(64);
  MemoryCache cache(per_entry * 200, 16);
  std::atomic<std::uint64_t> hits{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < 20'000; ++i) {
        std::uint64_t k = (i * 7 + static_cast<std::uint64_t>(t)) % 500;
        if (auto e = cache.Get(Key(k), 0)) {
          EXPECT_EQ(e->body.size(), 64u);
          hits.fetch_add(1, std::memory_order_relaxed);
        } else {
          cache.Put(Key(k), Entry(64));
        }
        if (i % 97 == 0) cache.Erase(Key(k + 1));
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(hits.load(), 0u);
  EXPECT_LE(cache.bytes(), per_entry * 200);
  EXPECT_EQ(cache.bytes(), cache.entries() * per_entry);
  std::size_t found = 0;
  for (std::uint64_t k = 0; k < 501; ++k) found += cache.Get(Key(k), 0) != nullptr;
  EXPECT_EQ(found, cache.entries());
}

}  // namespace
}  // namespace megaserve::cache
