#include "forecast/market_sync.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <sstream>

#include "forecast/exchange_test_util.h"
#include "store/test_util.h"

namespace megaserve::forecast {
namespace {

using std::chrono::milliseconds;
using store::Engine;
using testing::FakeExchange;
using ::testing::HasSubstr;

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kFourHours = 4 * kHour;
constexpr int64_t kDay = 24 * kHour;

int64_t NowMs() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Routes spdlog's default logger into a string for the test's lifetime.
class LogCapture {
 public:
  LogCapture() : old_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    sink->set_pattern("%l %v");
    auto logger = std::make_shared<spdlog::logger>("capture", sink);
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(old_); }
  std::string text() {
    spdlog::default_logger()->flush();
    return out_.str();
  }
  int Count(const std::string& needle) {
    std::string t = text();
    int n = 0;
    for (auto p = t.find(needle); p != std::string::npos; p = t.find(needle, p + 1)) ++n;
    return n;
  }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> old_;
};

TEST(ParseSyncTargetTest, AcceptsAndRefuses) {
  auto t = ParseSyncTarget("binance:BTCUSDT:4h");
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->source, "binance");
  EXPECT_EQ(t->symbol, "BTCUSDT");
  EXPECT_EQ(t->interval, "4h");
  EXPECT_EQ(t->ToString(), "binance:BTCUSDT:4h");
  EXPECT_TRUE(ParseSyncTarget("coinbase:BTC-USD:1h").ok());
  EXPECT_TRUE(ParseSyncTarget("coinbase:ETHUSDT:1d").ok());

  auto coinbase_4h = ParseSyncTarget("coinbase:BTCUSD:4h");
  ASSERT_FALSE(coinbase_4h.ok());
  EXPECT_THAT(coinbase_4h.status().message(), HasSubstr("1m, 5m, 15m, 1h, 6h and 1d"));
  auto interval = ParseSyncTarget("binance:BTCUSDT:2d");
  ASSERT_FALSE(interval.ok());
  EXPECT_THAT(interval.status().message(), HasSubstr("unknown interval \"2d\""));
  EXPECT_THAT(ParseSyncTarget("kraken:BTCUSD:1h").status().message(), HasSubstr("known: binance"));
  EXPECT_FALSE(ParseSyncTarget("binance:BTC-USDT:1h").ok());
  EXPECT_FALSE(ParseSyncTarget("binance:BTCUSDT").ok());
  EXPECT_FALSE(ParseSyncTarget("binance:BTC/USDT:1h").ok());
  EXPECT_EQ(*StoredSymbol("btc-usd"), "BTCUSD");
}

class SyncSeriesTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(exchange_.started());
    MEGASERVE_OPEN_TEST_DATABASE(db_, GetParam());
    ASSERT_FALSE(HasFatalFailure());
    store_ = std::make_unique<CandleStore>(db_.db());
  }

  std::unique_ptr<MarketDataClient> Client(std::string_view source) {
    ExchangeOptions o;
    o.base_url = exchange_.url();
    o.now_ms = [this] { return now_; };
    o.sleep = [](milliseconds) { return true; };
    return std::move(MakeMarketDataClient(source, o)).value();
  }

  FakeExchange exchange_;
  store::testing::TestDatabase db_;
  std::unique_ptr<CandleStore> store_;
  int64_t now_ = 0;
};

TEST_P(SyncSeriesTest, BackfillsAnEmptySeriesThenResumesFromTheNewestBar) {
  const int64_t t0 = 1'704'067'200'000;  // 2024-01-01
  exchange_.SetSeries(t0, kFourHours, 400);
  now_ = t0 + 200 * kFourHours + kHour;  // bar 200 is open
  auto client = Client("binance");

  auto first = SyncSeries(*client, *store_, "BTCUSDT", "4h", now_, {.backfill_days = 10});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  // Ten days of 4h bars back from bar 200, on the grid: bars 140..200.
  EXPECT_EQ(first->from_ms, t0 + 140 * kFourHours);
  EXPECT_EQ(first->fetched, 61);
  EXPECT_EQ(first->counts.inserted, 61);
  auto latest = store_->Latest("BTCUSDT", "4h");
  ASSERT_TRUE(latest.ok() && *latest);
  EXPECT_EQ((*latest)->open_time_ms, t0 + 200 * kFourHours);
  EXPECT_TRUE((*latest)->partial);

  // Two bars later: the partial bar is fetched again and closes; two new bars arrive.
  now_ += 2 * kFourHours;
  auto second = SyncSeries(*client, *store_, "BTCUSDT", "4h", now_);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->from_ms, t0 + 200 * kFourHours);
  EXPECT_EQ(second->fetched, 3);
  EXPECT_EQ(second->counts.inserted, 2);
  EXPECT_EQ(second->counts.updated, 1);
  auto bars = store_->Range("BTCUSDT", "4h", 0, INT64_MAX, 0, /*include_partial=*/true);
  ASSERT_TRUE(bars.ok());
  ASSERT_EQ(bars->size(), 63u);
  EXPECT_FALSE((*bars)[60].partial);
  EXPECT_TRUE(bars->back().partial);
  auto seen = exchange_.requests();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_THAT(seen[1].target, HasSubstr("startTime=" + std::to_string(t0 + 200 * kFourHours)));

  auto series = store_->Series();
  ASSERT_TRUE(series.ok());
  ASSERT_EQ(series->size(), 1u);
  EXPECT_EQ((*series)[0].source, "binance");
}

TEST_P(SyncSeriesTest, ExplicitRangeAndCoinbaseProducts) {
  const int64_t t0 = 1'704'067'200'000;
  exchange_.SetSeries(t0, kHour, 100);
  now_ = t0 + 1000 * kHour;
  auto client = Client("coinbase");
  std::vector<PageProgress> pages;
  auto report = SyncSeries(*client, *store_, "BTC-USD", "1h", now_,
                           {.from_ms = t0 + 10 * kHour,
                            .to_ms = t0 + 19 * kHour,
                            .on_page = [&](const PageProgress& p) { pages.push_back(p); }});
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->counts.inserted, 10);
  ASSERT_EQ(pages.size(), 1u);
  EXPECT_EQ(pages[0].bars, 10);
  auto bars = store_->Range("BTCUSD", "1h", 0, INT64_MAX, 0, true);
  ASSERT_TRUE(bars.ok());
  ASSERT_EQ(bars->size(), 10u);
  EXPECT_EQ(bars->front(), testing::SyntheticBar(t0 + 10 * kHour, 10));
  auto series = store_->Series();
  ASSERT_TRUE(series.ok());
  EXPECT_EQ((*series)[0].source, "coinbase");

  auto again = SyncSeries(*client, *store_, "BTCUSD", "1h", now_,
                          {.from_ms = t0 + 10 * kHour, .to_ms = t0 + 19 * kHour});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->counts.unchanged, 10);  // idempotent

  auto backwards =
      SyncSeries(*client, *store_, "BTCUSD", "1h", now_, {.from_ms = t0 + 10 * kHour, .to_ms = t0});
  EXPECT_FALSE(backwards.ok());
}

TEST_P(SyncSeriesTest, FetchErrorsStoreNothing) {
  exchange_.Script({{.status = 400, .body = R"({"code":-1121,"msg":"Invalid symbol."})"}});
  now_ = 1'704'067'200'000;
  auto client = Client("binance");
  auto report = SyncSeries(*client, *store_, "NOPEUSDT", "4h", now_);
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(report.status().message(), HasSubstr("Invalid symbol."));
  auto series = store_->Series();
  ASSERT_TRUE(series.ok());
  EXPECT_TRUE(series->empty());
}

INSTANTIATE_TEST_SUITE_P(Engines, SyncSeriesTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const auto& info) {
                           return info.param == Engine::kSqlite ? "Sqlite" : "Postgres";
                         });

class PeriodicSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(exchange_.started());
    db_.Open(Engine::kSqlite);
    ASSERT_FALSE(HasFatalFailure());
    store_ = std::make_unique<CandleStore>(db_.db());
  }

  PeriodicSync::Options Options(const std::string& url) {
    PeriodicSync::Options o;
    o.targets = {*ParseSyncTarget("binance:BTCUSDT:4h")};
    o.interval = milliseconds(10);
    o.backfill_days = 5;
    o.binance.base_url = url;
    o.binance.server_error_tries = 1;
    o.binance.timeout = milliseconds(2000);
    return o;
  }

  FakeExchange exchange_;
  store::testing::TestDatabase db_;
  std::unique_ptr<CandleStore> store_;
};

TEST_F(PeriodicSyncTest, NoNetworkLogsOneWarningPerStreakAndStopsPromptly) {
  std::string url;
  {
    FakeExchange gone;  // a loopback port with nothing listening any more
    url = gone.url();
  }
  LogCapture log;
  PeriodicSync sync(Options(url), *store_);
  sync.Start();
  ASSERT_TRUE(sync.WaitForRounds(3, std::chrono::seconds(20)));
  auto t0 = std::chrono::steady_clock::now();
  sync.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
  PeriodicSync::Stats stats = sync.stats();
  EXPECT_GE(stats.failures, 3u);
  EXPECT_EQ(stats.warnings, 1u);
  EXPECT_EQ(log.Count("syncing binance:BTCUSDT:4h failed"), 1) << log.text();
  EXPECT_THAT(log.text(), HasSubstr("unreachable"));
  EXPECT_EQ(log.Count("warn"), 1) << log.text();
}

TEST_F(PeriodicSyncTest, RecoversAfterAStreakAndSaysSoOnce) {
  const int64_t now = NowMs();
  const int64_t first = (now - 10 * kDay) / kFourHours * kFourHours;
  exchange_.SetSeries(first, kFourHours, 100);  // up to well past now
  exchange_.Script(
      {{.status = 503, .body = "maintenance"}, {.status = 503, .body = "maintenance"}});
  LogCapture log;
  PeriodicSync sync(Options(exchange_.url()), *store_);
  sync.RunOnce();
  sync.RunOnce();
  EXPECT_EQ(sync.stats().failures, 2u);
  EXPECT_EQ(log.Count("failed"), 1) << log.text();
  EXPECT_THAT(log.text(), HasSubstr("HTTP 503: maintenance"));
  sync.RunOnce();
  EXPECT_EQ(log.Count("syncs again"), 1) << log.text();
  auto latest = store_->Latest("BTCUSDT", "4h");
  ASSERT_TRUE(latest.ok() && *latest);
  EXPECT_TRUE((*latest)->partial);
  EXPECT_LE((*latest)->open_time_ms, now);
  EXPECT_GT((*latest)->open_time_ms + kFourHours, now);
  sync.RunOnce();  // still fine: nothing more logged
  EXPECT_EQ(log.Count("syncs again"), 1);
  EXPECT_EQ(log.Count("failed"), 1);
  EXPECT_EQ(sync.stats().rounds, 4u);
}

TEST_F(PeriodicSyncTest, StopInterruptsTheWaitBetweenRounds) {
  const int64_t now = NowMs();
  exchange_.SetSeries((now - 10 * kDay) / kFourHours * kFourHours, kFourHours, 100);
  PeriodicSync::Options o = Options(exchange_.url());
  o.interval = std::chrono::hours(1);
  PeriodicSync sync(std::move(o), *store_);
  sync.Start();
  ASSERT_TRUE(sync.WaitForRounds(1, std::chrono::seconds(20)));
  auto t0 = std::chrono::steady_clock::now();
  sync.Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
  EXPECT_EQ(sync.stats().rounds, 1u);
  EXPECT_EQ(sync.stats().failures, 0u);
}

TEST(PeriodicSyncCreateTest, FromConfig) {
  store::testing::TestDatabase db;
  db.Open(Engine::kSqlite);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  CandleStore store(db.db());
  core::MarketDataConfig config;
  auto off = PeriodicSync::Create(config, store);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(*off, nullptr);  // off by default

  config.sync = {"binance:BTCUSDT:4h", "coinbase:BTC-USD:1h"};
  auto on = PeriodicSync::Create(config, store);
  ASSERT_TRUE(on.ok()) << on.status().ToString();
  EXPECT_NE(*on, nullptr);

  config.sync = {"coinbase:BTCUSD:4h"};
  auto bad = PeriodicSync::Create(config, store);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("market_data.sync: \"coinbase:BTCUSD:4h\""));
}

}  // namespace
}  // namespace megaserve::forecast
