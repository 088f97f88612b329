#include "cache/redis_cache.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "cache/redis_test_util.h"

namespace megaserve::cache {
namespace {

using namespace std::chrono_literals;
using testing::LoopThread;
using testing::UniqueName;
using testing::WaitFor;
using GetResult = core::Result<std::shared_ptr<const CachedResponse>>;

std::int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

CacheKey RandomKey() {
  std::hash<std::string> h;
  std::string name = UniqueName("cache");
  return CacheKey{h(name), h(name + "low")};
}

std::shared_ptr<const CachedResponse> Entry(std::int64_t ttl_ms, std::string body = "payload") {
  auto r = std::make_shared<CachedResponse>();
  r->status = 200;
  r->content_type = "application/json";
  r->headers = {{"Cache-Control", "max-age=60"}};
  r->body = std::move(body);
  r->stored_at_ms = NowMs();
  r->ttl_ms = ttl_ms;
  r->compute_ms = 12;
  return r;
}

// A pool of one loop, so commands from the test thread reach Redis in the order issued.
class RedisCacheTest : public ::testing::Test {
 protected:
  void Open(const std::string& url, std::chrono::milliseconds command_timeout = 1000ms) {
    RedisOptions options;
    options.url = url;
    options.command_timeout = command_timeout;
    pool_ = std::make_unique<RedisPool>(std::vector<boost::asio::io_context*>{&loop_.ioc()},
                                        options, nullptr);
    cache_ = std::make_unique<RedisCache>(*pool_);
    pool_->Start();
  }
  void TearDown() override {
    loop_.Stop();
    cache_.reset();
    pool_.reset();
  }

  GetResult Get(const CacheKey& key) {
    std::promise<GetResult> p;
    cache_->Get(key, [&](GetResult r) { p.set_value(std::move(r)); });
    auto f = p.get_future();
    EXPECT_EQ(f.wait_for(5s), std::future_status::ready);
    return f.get();
  }
  core::Result<RedisReply> Call(std::vector<std::string> argv) {
    return pool_->clients()[0]->Command(std::move(argv)).get();
  }

  LoopThread loop_;
  std::unique_ptr<RedisPool> pool_;
  std::unique_ptr<RedisCache> cache_;
};

TEST_F(RedisCacheTest, PutThenGetRoundTrips) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  CacheKey key = RandomKey();
  auto entry = Entry(60000, std::string("binary\0body", 11));
  cache_->Put(key, entry);
  auto got = Get(key);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ((*got)->body, entry->body);
  EXPECT_EQ((*got)->content_type, "application/json");
  EXPECT_EQ((*got)->headers, entry->headers);
  EXPECT_EQ((*got)->stored_at_ms, entry->stored_at_ms);
  EXPECT_EQ((*got)->ttl_ms, 60000);
  EXPECT_EQ((*got)->compute_ms, 12);
  // Stored under the documented key.
  EXPECT_EQ(Call({"EXISTS", "megaserve:cache:" + key.Hex()})->integer, 1);
  Call({"DEL", RedisCache::RedisKey(key)});
}

TEST_F(RedisCacheTest, UnknownKeyIsAMiss) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  auto got = Get(RandomKey());
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, nullptr);
}

TEST_F(RedisCacheTest, EntriesExpireInRedisAtDiscardTime) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  CacheKey key = RandomKey();
  auto entry = Entry(300);
  ASSERT_EQ(entry->DiscardAtMs(), entry->stored_at_ms + 300);
  cache_->Put(key, entry);
  auto pttl = Call({"PTTL", RedisCache::RedisKey(key)});
  ASSERT_TRUE(pttl.ok());
  EXPECT_GT(pttl->integer, 200);
  EXPECT_LE(pttl->integer, 300);
  ASSERT_NE(*Get(key), nullptr);
  std::this_thread::sleep_for(400ms);
  auto got = Get(key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, nullptr);
}

TEST_F(RedisCacheTest, EntriesAlreadyDiscardableAreNotWritten) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  CacheKey key = RandomKey();
  auto old = std::make_shared<CachedResponse>(*Entry(1000));
  old->stored_at_ms -= 5000;
  cache_->Put(key, old);
  EXPECT_EQ(Call({"EXISTS", RedisCache::RedisKey(key)})->integer, 0);
}

TEST_F(RedisCacheTest, UndecodableValueIsAMiss) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  CacheKey key = RandomKey();
  ASSERT_TRUE(Call({"SET", RedisCache::RedisKey(key), "MSC1 garbage", "PX", "10000"}).ok());
  auto got = Get(key);
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, nullptr);
  // A value of the wrong Redis type is a miss too, not an error.
  Call({"DEL", RedisCache::RedisKey(key)});
  ASSERT_TRUE(Call({"RPUSH", RedisCache::RedisKey(key), "x"}).ok());
  got = Get(key);
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, nullptr);
  Call({"DEL", RedisCache::RedisKey(key)});
}

TEST_F(RedisCacheTest, GetCallsBackLaterOnTheCallingLoop) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] { return pool_->connected(); }));
  std::promise<std::thread::id> ran_on;
  bool returned = false, inline_call = false;
  loop_.Run([&] {
    cache_->Get(RandomKey(), [&](GetResult) {
      inline_call = !returned;
      ran_on.set_value(std::this_thread::get_id());
    });
    returned = true;
  });
  EXPECT_EQ(ran_on.get_future().get(), loop_.thread_id());
  EXPECT_FALSE(inline_call);
}

TEST_F(RedisCacheTest, RedisDownIsAnErrorNotAHang) {
  Open("redis://127.0.0.1:" + std::to_string(testing::FreePort()) + "/0");
  CacheKey key = RandomKey();
  cache_->Put(key, Entry(60000));  // dropped, not queued
  auto started = std::chrono::steady_clock::now();
  auto got = Get(key);
  EXPECT_LT(std::chrono::steady_clock::now() - started, 500ms);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), core::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace megaserve::cache
