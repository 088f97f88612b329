#include "forecast/exchange_client.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>

#include "forecast/exchange_test_util.h"

namespace megaserve::forecast {
namespace {

using std::chrono::milliseconds;
using testing::FakeExchange;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kFourHours = 4 * kHour;
constexpr int64_t kJan1 = 1'704'067'200'000;  // 2024-01-01T00:00:00Z

// A fake clock whose sleeps return at once and move it forward, recording each wait.
struct FakeTime {
  std::mutex mu;
  int64_t now = 0;
  std::vector<milliseconds> sleeps;

  ExchangeOptions Options(const std::string& url) {
    ExchangeOptions o;
    o.base_url = url;
    o.timeout = milliseconds(5000);
    o.now_ms = [this] {
      std::lock_guard lock(mu);
      return now;
    };
    o.sleep = [this](milliseconds d) {
      std::lock_guard lock(mu);
      sleeps.push_back(d);
      now += d.count();
      return true;
    };
    return o;
  }
};

class ExchangeClientTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(exchange_.started()); }

  std::unique_ptr<MarketDataClient> Client(std::string_view source, ExchangeOptions o) {
    auto client = MakeMarketDataClient(source, std::move(o));
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return std::move(client).value();
  }

  FakeExchange exchange_;
  FakeTime time_;
};

TEST_F(ExchangeClientTest, BinancePagesForwardAcross2500Bars) {
  exchange_.SetSeries(kJan1, kFourHours, 2500);
  time_.now = kJan1 + 3000 * kFourHours;
  auto client = Client("binance", time_.Options(exchange_.url()));
  std::vector<PageProgress> pages;
  auto bars = client->Fetch("btcusdt", "4h", kJan1, kJan1 + 2600 * kFourHours,
                            [&](const PageProgress& p) { pages.push_back(p); });
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  ASSERT_EQ(bars->size(), 2500u);
  for (std::size_t i = 0; i < bars->size(); ++i) {
    ASSERT_EQ((*bars)[i].open_time_ms, kJan1 + static_cast<int64_t>(i) * kFourHours) << i;
    ASSERT_EQ((*bars)[i], testing::SyntheticBar((*bars)[i].open_time_ms, i)) << i;
  }
  auto seen = exchange_.requests();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_THAT(seen[0].target, HasSubstr("symbol=BTCUSDT&interval=4h&startTime=1704067200000"));
  EXPECT_THAT(seen[0].target, HasSubstr("limit=1000"));
  // The next page starts one interval after the last bar received.
  EXPECT_THAT(seen[1].target,
              HasSubstr("startTime=" + std::to_string(kJan1 + 1000 * kFourHours) + "&"));
  EXPECT_THAT(seen[2].target,
              HasSubstr("startTime=" + std::to_string(kJan1 + 2000 * kFourHours) + "&"));
  EXPECT_THAT(seen[0].user_agent, StartsWith("megaserve/"));
  ASSERT_EQ(pages.size(), 3u);
  EXPECT_EQ(pages[0].bars, 1000);
  EXPECT_EQ(pages[2].bars, 500);
  EXPECT_EQ(pages[2].last_open_ms, kJan1 + 2499 * kFourHours);
  EXPECT_TRUE(time_.sleeps.empty());
}

TEST_F(ExchangeClientTest, BinanceStopsAtTheEndOfTheRangeAndFlagsTheOpenBar) {
  exchange_.SetSeries(kJan1, kFourHours, 2000);
  time_.now = kJan1 + 1000 * kFourHours - kHour;  // bar 999 is still open
  auto client = Client("binance", time_.Options(exchange_.url()));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1 + 10 * kFourHours, kJan1 + 999 * kFourHours);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  ASSERT_EQ(bars->size(), 990u);
  EXPECT_EQ(bars->front().open_time_ms, kJan1 + 10 * kFourHours);
  EXPECT_TRUE(bars->back().partial);
  EXPECT_FALSE((*bars)[bars->size() - 2].partial);
  EXPECT_EQ(exchange_.requests().size(), 1u);
}

TEST_F(ExchangeClientTest, BinanceWaitsForTheMinuteWhenTheWeightBudgetIsUsed) {
  exchange_.SetSeries(kJan1, kFourHours, 2500);
  exchange_.SetUsedWeight(999);
  time_.now = kJan1 + 3000 * kFourHours + 10'000;  // 10 s into a minute
  ExchangeOptions o = time_.Options(exchange_.url());
  o.weight_budget = 1000;
  auto client = Client("binance", std::move(o));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 2600 * kFourHours);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  EXPECT_EQ(bars->size(), 2500u);
  EXPECT_EQ(exchange_.requests().size(), 3u);
  // Before calls 2 and 3: wait out the minute (50 s left, plus the margin).
  ASSERT_EQ(time_.sleeps.size(), 2u);
  EXPECT_EQ(time_.sleeps[0], milliseconds(50'500));
  EXPECT_EQ(time_.sleeps[1], milliseconds(60'000));
}

TEST_F(ExchangeClientTest, BinanceUnderBudgetDoesNotWait) {
  exchange_.SetSeries(kJan1, kFourHours, 2500);
  exchange_.SetUsedWeight(998);
  time_.now = kJan1 + 3000 * kFourHours;
  ExchangeOptions o = time_.Options(exchange_.url());
  o.weight_budget = 1000;
  auto client = Client("binance", std::move(o));
  ASSERT_TRUE(client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 2600 * kFourHours).ok());
  EXPECT_TRUE(time_.sleeps.empty());
}

TEST_F(ExchangeClientTest, RateLimitHonoursRetryAfterThenSucceeds) {
  exchange_.SetSeries(kJan1, kFourHours, 10);
  exchange_.Script(
      {{.status = 429, .headers = {{"Retry-After", "3"}}, .body = R"({"code":-1003})"}});
  time_.now = kJan1 + 100 * kFourHours;
  auto client = Client("binance", time_.Options(exchange_.url()));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  EXPECT_EQ(bars->size(), 10u);
  EXPECT_EQ(exchange_.requests().size(), 2u);
  ASSERT_EQ(time_.sleeps.size(), 1u);
  EXPECT_EQ(time_.sleeps[0], milliseconds(3000));
}

TEST_F(ExchangeClientTest, RateLimitGivesUpAfterBoundedTries) {
  exchange_.SetSeries(kJan1, kFourHours, 10);
  std::vector<FakeExchange::Answer> answers(10, {.status = 429, .headers = {{"Retry-After", "1"}}});
  exchange_.Script(answers);
  ExchangeOptions o = time_.Options(exchange_.url());
  o.rate_limit_tries = 3;
  auto client = Client("binance", std::move(o));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_FALSE(bars.ok());
  EXPECT_EQ(bars.status().code(), core::StatusCode::kUnavailable);
  EXPECT_THAT(bars.status().message(), HasSubstr("rate limited (HTTP 429) 3 times"));
  EXPECT_EQ(exchange_.requests().size(), 3u);
}

TEST_F(ExchangeClientTest, BanLongerThanTheMaximumWaitFailsAtOnce) {
  exchange_.Script({{.status = 418, .headers = {{"Retry-After", "7200"}}}});
  auto client = Client("binance", time_.Options(exchange_.url()));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_FALSE(bars.ok());
  EXPECT_EQ(bars.status().code(), core::StatusCode::kUnavailable);
  EXPECT_THAT(bars.status().message(), HasSubstr("banned this IP (HTTP 418)"));
  EXPECT_THAT(bars.status().message(), HasSubstr("7200 s"));
  EXPECT_EQ(exchange_.requests().size(), 1u);
  EXPECT_TRUE(time_.sleeps.empty());
}

TEST_F(ExchangeClientTest, ShortBanIsWaitedOut) {
  exchange_.SetSeries(kJan1, kFourHours, 5);
  exchange_.Script({{.status = 418, .headers = {{"Retry-After", "2"}}}});
  time_.now = kJan1 + 100 * kFourHours;
  auto client = Client("binance", time_.Options(exchange_.url()));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  EXPECT_EQ(bars->size(), 5u);
  ASSERT_EQ(time_.sleeps.size(), 1u);
  EXPECT_EQ(time_.sleeps[0], milliseconds(2000));
}

TEST_F(ExchangeClientTest, ServerErrorsAreRetriedWithBackoff) {
  exchange_.SetSeries(kJan1, kFourHours, 5);
  exchange_.Script({{.status = 503, .body = "busy"}, {.status = 502, .body = "bad gateway"}});
  time_.now = kJan1 + 100 * kFourHours;
  ExchangeOptions o = time_.Options(exchange_.url());
  o.backoff = milliseconds(400);
  auto client = Client("binance", std::move(o));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  EXPECT_EQ(time_.sleeps, (std::vector<milliseconds>{milliseconds(400), milliseconds(800)}));

  exchange_.Script(std::vector<FakeExchange::Answer>(3, {.status = 500, .body = "oops"}));
  auto failed = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + 20 * kFourHours);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), core::StatusCode::kUnavailable);
  EXPECT_THAT(failed.status().message(), HasSubstr("after 3 tries: HTTP 500: oops"));
}

TEST_F(ExchangeClientTest, BadJsonAndRefusedRequestsAreClearErrors) {
  exchange_.Script({{.status = 200, .body = "[[1704067200000,"}});
  auto client = Client("binance", time_.Options(exchange_.url()));
  auto bad = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + kFourHours);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("binance klines: malformed JSON"));

  exchange_.Script({{.status = 400, .body = R"({"code":-1121,"msg":"Invalid symbol."})"}});
  auto refused = client->Fetch("NOPE", "4h", kJan1, kJan1 + kFourHours);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("HTTP 400"));
  EXPECT_THAT(refused.status().message(), HasSubstr("Invalid symbol. (code -1121)"));

  auto interval = client->Fetch("BTCUSDT", "7m", kJan1, kJan1 + kFourHours);
  ASSERT_FALSE(interval.ok());
  EXPECT_THAT(interval.status().message(), HasSubstr("unknown interval \"7m\""));
}

TEST_F(ExchangeClientTest, NothingListeningIsUnavailable) {
  std::string url;
  {
    FakeExchange gone;  // a port that was just free
    url = gone.url();
  }
  ExchangeOptions o = time_.Options(url);
  o.server_error_tries = 2;
  auto client = Client("binance", std::move(o));
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + kFourHours);
  ASSERT_FALSE(bars.ok());
  EXPECT_EQ(bars.status().code(), core::StatusCode::kUnavailable);
  EXPECT_THAT(bars.status().message(), HasSubstr("binance: 127.0.0.1:"));
  EXPECT_THAT(bars.status().message(), HasSubstr("unreachable after 2 tries"));
}

TEST_F(ExchangeClientTest, StopEndsAWaitEarly) {
  std::atomic<bool> stop{false};
  exchange_.Script({{.status = 429, .headers = {{"Retry-After", "60"}}}});
  ExchangeOptions o;
  o.base_url = exchange_.url();
  o.stop = &stop;
  o.now_ms = [] { return kJan1; };
  // The real, interruptible sleep: the stop comes while it waits out the Retry-After.
  auto client = Client("binance", std::move(o));
  std::thread stopper([&] {
    while (exchange_.requests().empty()) std::this_thread::yield();
    stop.store(true);
  });
  auto t0 = std::chrono::steady_clock::now();
  auto bars = client->Fetch("BTCUSDT", "4h", kJan1, kJan1 + kFourHours);
  stopper.join();
  ASSERT_FALSE(bars.ok());
  EXPECT_EQ(bars.status().code(), core::StatusCode::kCanceled);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
}

TEST_F(ExchangeClientTest, CoinbasePagesBy300AndOrdersOldestFirst) {
  exchange_.SetSeries(kJan1, kHour, 700);
  time_.now = kJan1 + 699 * kHour + 1;  // the last bar is open
  auto client = Client("coinbase", time_.Options(exchange_.url()));
  EXPECT_EQ(client->source(), "coinbase");
  auto bars = client->Fetch("BTCUSD", "1h", kJan1, kJan1 + 699 * kHour);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  ASSERT_EQ(bars->size(), 700u);
  for (std::size_t i = 0; i < bars->size(); ++i) {
    ASSERT_EQ((*bars)[i], [&] {
      Candle c = testing::SyntheticBar(kJan1 + static_cast<int64_t>(i) * kHour, i);
      c.partial = i == 699;
      return c;
    }()) << i;
  }
  auto seen = exchange_.requests();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].target,
            "/products/BTC-USD/candles?granularity=3600&start=2024-01-01T00:00:00Z&end=2024-01-13T"
            "11:00:00Z");
  EXPECT_THAT(seen[1].target, HasSubstr("start=2024-01-13T12:00:00Z"));
  EXPECT_THAT(seen[0].user_agent, StartsWith("megaserve/"));
  // 100 ms between calls, the documented 10 per second.
  EXPECT_EQ(time_.sleeps, (std::vector<milliseconds>{milliseconds(100), milliseconds(100)}));
}

TEST_F(ExchangeClientTest, CoinbaseRefusesGranularitiesItLacks) {
  auto client = Client("coinbase", time_.Options(exchange_.url()));
  auto bars = client->Fetch("BTCUSD", "4h", kJan1, kJan1 + kFourHours);
  ASSERT_FALSE(bars.ok());
  EXPECT_EQ(bars.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bars.status().message(), HasSubstr("\"4h\""));
  EXPECT_THAT(bars.status().message(), HasSubstr("1m, 5m, 15m, 1h, 6h and 1d"));
  EXPECT_TRUE(exchange_.requests().empty());
}

TEST_F(ExchangeClientTest, CoinbaseBacksOffOn429AndReportsUnknownProducts) {
  exchange_.SetSeries(kJan1, kHour, 3);
  exchange_.Script({{.status = 429, .body = R"({"message":"Slow down"})"}});
  time_.now = kJan1 + 10 * kHour;
  ExchangeOptions o = time_.Options(exchange_.url());
  o.min_spacing = milliseconds(0);
  o.backoff = milliseconds(250);
  auto client = Client("coinbase", std::move(o));
  auto bars = client->Fetch("BTC-USD", "1h", kJan1, kJan1 + 2 * kHour);
  ASSERT_TRUE(bars.ok()) << bars.status().ToString();
  EXPECT_EQ(bars->size(), 3u);
  EXPECT_EQ(time_.sleeps, (std::vector<milliseconds>{milliseconds(250)}));

  auto unknown = client->Fetch("ETHEUR", "1h", kJan1, kJan1 + 2 * kHour);
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("HTTP 404"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("NotFound"));
}

TEST(CoinbaseNamesTest, ProductIdsAndGranularities) {
  EXPECT_EQ(*CoinbaseProductId("BTCUSDT"), "BTC-USDT");
  EXPECT_EQ(*CoinbaseProductId("BTCUSD"), "BTC-USD");
  EXPECT_EQ(*CoinbaseProductId("ethusdc"), "ETH-USDC");
  EXPECT_EQ(*CoinbaseProductId("eth-eur"), "ETH-EUR");
  EXPECT_FALSE(CoinbaseProductId("BTC").ok());
  EXPECT_FALSE(CoinbaseProductId("USD").ok());
  EXPECT_FALSE(CoinbaseProductId("BTC-").ok());
  EXPECT_EQ(*CoinbaseGranularity("1m"), 60);
  EXPECT_EQ(*CoinbaseGranularity("6h"), 21600);
  EXPECT_EQ(*CoinbaseGranularity("1d"), 86400);
  EXPECT_FALSE(CoinbaseGranularity("4h").ok());
  EXPECT_FALSE(CoinbaseGranularity("1w").ok());
}

TEST(MakeMarketDataClientTest, RejectsUnknownSourcesAndBadUrls) {
  auto unknown = MakeMarketDataClient("kraken", {});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("known: binance, coinbase"));
  ExchangeOptions o;
  o.base_url = "ftp://example.com";
  auto bad = MakeMarketDataClient("binance", o);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("binance URL"));
}

}  // namespace
}  // namespace megaserve::forecast
