#include "cache/redis_gcra.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <random>
#include <thread>

#include "cache/gcra.h"
#include "cache/redis_test_util.h"

namespace megaserve::cache {
namespace {

using namespace std::chrono_literals;
using testing::LoopThread;
using testing::UniqueName;
using testing::WaitFor;

class RedisGcraTest : public ::testing::Test {
 protected:
  // Two clients on two loops, as two gateway processes would have.
  void Open(const std::string& url) {
    RedisOptions options;
    options.url = url;
    pool_ = std::make_unique<RedisPool>(
        std::vector<boost::asio::io_context*>{&loop_a_.ioc(), &loop_b_.ioc()}, options, nullptr);
    gcra_ = std::make_unique<RedisGcra>(*pool_);
    pool_->Start();
    ASSERT_TRUE(WaitFor(
        [&] { return pool_->clients()[0]->connected() && pool_->clients()[1]->connected(); }));
  }
  void TearDown() override {
    loop_a_.Stop();
    loop_b_.Stop();
    gcra_.reset();
    pool_.reset();
  }

  // One check through client `which` (0 or 1), from that client's loop.
  core::Result<GcraResult> Check(int which, const std::string& key, std::int64_t limit,
                                 std::chrono::milliseconds period) {
    std::promise<core::Result<GcraResult>> p;
    LoopThread& loop = which == 0 ? loop_a_ : loop_b_;
    loop.Run([&] {
      RedisGcraCheck(*pool_->clients()[which], key, limit, period,
                     [&](core::Result<GcraResult> r) { p.set_value(std::move(r)); });
    });
    auto f = p.get_future();
    EXPECT_EQ(f.wait_for(5s), std::future_status::ready);
    return f.get();
  }
  core::Result<RedisReply> Call(std::vector<std::string> argv) {
    return pool_->clients()[0]->Command(std::move(argv)).get();
  }

  LoopThread loop_a_, loop_b_;
  std::unique_ptr<RedisPool> pool_;
  std::unique_ptr<RedisGcra> gcra_;
};

TEST_F(RedisGcraTest, AllowsExactlyLimitAtOnceThenDeniesWithRetryAfter) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  std::string key = UniqueName("burst");
  auto started = std::chrono::steady_clock::now();
  for (int i = 0; i < 5; ++i) {
    auto r = Check(0, key, 5, 1000ms);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_TRUE(r->allowed) << i;
    EXPECT_EQ(r->limit, 5);
    EXPECT_EQ(r->remaining, 4 - i);
  }
  auto denied = Check(0, key, 5, 1000ms);
  auto elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count();
  ASSERT_TRUE(denied.ok());
  EXPECT_FALSE(denied->allowed);
  EXPECT_EQ(denied->remaining, 0);
  // One 200 ms interval, less the time the checks themselves took.
  EXPECT_LE(denied->retry_after_ms, 200);
  EXPECT_GE(denied->retry_after_ms, 200 - elapsed_ms - 1);
  EXPECT_LE(denied->reset_ms, 1000);
  EXPECT_GE(denied->reset_ms, 1000 - elapsed_ms - 1);
  // The state expires when the bucket is full again.
  auto pttl = Call({"PTTL", GcraRedisKey(key)});
  EXPECT_GT(pttl->integer, 0);
  EXPECT_LE(pttl->integer, 1000);
}

TEST_F(RedisGcraTest, AfterRetryAfterExactlyOneMoreIsAllowed) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  std::string key = UniqueName("retry");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Check(0, key, 3, 600ms)->allowed);
  auto denied = Check(0, key, 3, 600ms);
  ASSERT_FALSE(denied->allowed);
  ASSERT_GT(denied->retry_after_ms, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(denied->retry_after_ms));
  auto again = Check(0, key, 3, 600ms);
  EXPECT_TRUE(again->allowed);
  auto next = Check(0, key, 3, 600ms);
  EXPECT_FALSE(next->allowed);
  EXPECT_GT(next->retry_after_ms, 150);  // about one 200 ms interval away again
}

TEST_F(RedisGcraTest, TwoClientsSharingAKeyShareTheLimit) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  std::string key = UniqueName("shared");
  int allowed = 0;
  for (int i = 0; i < 20; ++i) {
    auto r = Check(i % 2, key, 6, 10000ms);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    allowed += r->allowed;
  }
  EXPECT_EQ(allowed, 6);
  // A different key has its own budget.
  EXPECT_TRUE(Check(1, key + ":other", 6, 10000ms)->allowed);
}

TEST_F(RedisGcraTest, ScriptAgreesWithLocalGcraStep) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  // Replays one random sequence through the script (with "now" given as ARGV[3]) and through
  // GcraStep, comparing every result and the stored TAT. The key's PX expiry runs on Redis' real
  // clock while the replay's clock is synthetic, so every interval is kept far longer than the
  // replay takes (an expiry in real time would otherwise reset a state the replay still holds).
  std::mt19937_64 rng(42);
  for (auto [limit, period_us] : {std::pair<std::int64_t, std::int64_t>{5, 1'000'000},
                                  {7, 60'000'000},
                                  {1, 250'000},
                                  {100, 10'000'000},
                                  {3, 1'000'003}}) {
    std::string key = UniqueName("agree");
    std::int64_t tat = 0;
    std::int64_t now = 1'800'000'000'000'000;
    for (int i = 0; i < 60; ++i) {
      now += std::uniform_int_distribution<std::int64_t>(0, 2 * period_us / limit)(rng);
      GcraResult local = GcraStep(tat, now, limit, period_us);
      auto reply = Call({"EVAL", std::string(GcraScript()), "1", GcraRedisKey(key),
                         std::to_string(limit), std::to_string(period_us), std::to_string(now)});
      ASSERT_TRUE(reply.ok()) << reply.status().ToString();
      ASSERT_EQ(reply->elements.size(), 4u);
      GcraResult remote;
      remote.allowed = reply->elements[0].integer == 1;
      remote.limit = limit;
      remote.remaining = reply->elements[1].integer;
      remote.retry_after_ms = reply->elements[2].integer;
      remote.reset_ms = reply->elements[3].integer;
      ASSERT_EQ(remote, local) << "limit " << limit << " step " << i;
      if (local.allowed) {
        EXPECT_EQ(Call({"GET", GcraRedisKey(key)})->str, std::to_string(tat));
      }
    }
    Call({"DEL", GcraRedisKey(key)});
  }
}

TEST_F(RedisGcraTest, ScriptIsLoadedOnConnectAndReloadedAfterAFlush) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  ASSERT_TRUE(WaitFor([&] {
    auto r = Call({"SCRIPT", "EXISTS", GcraScriptSha()});
    return r.ok() && r->elements.size() == 1 && r->elements[0].integer == 1;
  }));
  ASSERT_TRUE(Call({"SCRIPT", "FLUSH"}).ok());
  // EVALSHA now answers NOSCRIPT; the check falls back to EVAL and still works.
  std::string key = UniqueName("flush");
  auto r = Check(1, key, 2, 1000ms);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->allowed);
  EXPECT_EQ(r->remaining, 1);
  EXPECT_EQ(Call({"SCRIPT", "EXISTS", GcraScriptSha()})->elements[0].integer, 1);
}

TEST_F(RedisGcraTest, InvalidLimitsAreRejected) {
  MEGASERVE_REQUIRE_REDIS(url);
  Open(url);
  EXPECT_EQ(Check(0, "k", 0, 1000ms).status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(Check(0, "k", 5, 0ms).status().code(), core::StatusCode::kInvalidArgument);
}

TEST(RedisGcraDownTest, RedisDownIsUnavailable) {
  LoopThread loop;
  RedisOptions options;
  options.url = "redis://127.0.0.1:" + std::to_string(testing::FreePort()) + "/0";
  std::unique_ptr<RedisClient> client;
  loop.Run([&] {
    client = std::make_unique<RedisClient>(loop.ioc(), options, nullptr);
    client->Start();
  });
  std::promise<core::Result<GcraResult>> p;
  loop.Run([&] {
    RedisGcraCheck(*client, "k", 5, 1000ms,
                   [&](core::Result<GcraResult> r) { p.set_value(std::move(r)); });
  });
  auto f = p.get_future();
  ASSERT_EQ(f.wait_for(1s), std::future_status::ready);
  EXPECT_EQ(f.get().status().code(), core::StatusCode::kUnavailable);
  loop.Run([&] { client.reset(); });
}

}  // namespace
}  // namespace megaserve::cache
