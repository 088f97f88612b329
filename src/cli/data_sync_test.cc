// `megaserve data sync` parsed by CLI11 as main parses it and run against a fake exchange on
// loopback (or a port with nothing listening) and a temporary SQLite store.
#include "cli/data_sync.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "cli/test_util.h"
#include "forecast/exchange_test_util.h"
#include "store/test_util.h"

namespace megaserve::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int64_t kFourHours = 4 * 3'600'000;
constexpr int64_t kJan1 = 1'704'067'200'000;  // 2024-01-01T00:00:00Z

using testing::Outcome;

class DataSyncTest : public ::testing::Test {
 protected:
  // Parses "data sync ARGS --data-dir <temp>" and runs it. The access log stays off: set up
  // again by a second InitLogging in one process, it would leave the fake exchange's server
  // writing to a replaced spdlog thread pool.
  Outcome Run(const std::string& args) {
    CLI::App app;
    DataFlags data_flags;
    DataSyncFlags flags;
    CLI::App* data = AddDataCommand(app, data_flags);
    AddDataSyncCommand(data, data_flags, flags);
    return testing::ParseAndRun(
        app,
        "data sync " + args + " --data-dir " + dir_.path().string() + " --set log.access=false",
        [&](std::FILE* out, std::FILE* err) {
          EXPECT_TRUE(flags.cmd->parsed());
          return RunDataSync(data_flags, flags, out, err);
        });
  }

  store::testing::TempDir dir_;
};

TEST_F(DataSyncTest, FetchesPagesAndSummarises) {
  forecast::testing::FakeExchange exchange;
  ASSERT_TRUE(exchange.started());
  exchange.SetSeries(kJan1, kFourHours, 1500);
  Outcome o =
      Run("--source binance --symbol btcusdt --interval 4h --from 2024-01-01 --to "
          "2024-12-31T00:00:00Z --url " +
          exchange.url());
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("page 1: 1000 bars, up to 2024-06-15 12:00:00 UTC\n"));
  EXPECT_THAT(o.out, HasSubstr("page 2: 500 bars, up to"));
  EXPECT_THAT(o.out, HasSubstr("synced binance BTCUSDT 4h from 2024-01-01 00:00:00 UTC to "
                               "2024-12-31 00:00:00 UTC: 1500 bars fetched, 1500 new, 0 updated, "
                               "0 unchanged"));
  EXPECT_EQ(o.err, "");

  // Again: idempotent.
  Outcome again = Run("--symbol BTCUSDT --interval 4h --from 2024-01-01 --to 2024-12-31 --url " +
                      exchange.url());
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr("0 new, 0 updated, 1500 unchanged"));
}

TEST_F(DataSyncTest, UnreachableExchangeIsOneClearLineAndExitCode1) {
  std::string url;
  {
    forecast::testing::FakeExchange gone;  // a loopback port with nothing listening any more
    url = gone.url();
  }
  Outcome o = Run("--symbol BTCUSDT --interval 4h --url " + url);
  EXPECT_EQ(o.code, 1);
  EXPECT_THAT(o.err, HasSubstr("megaserve data sync: binance: 127.0.0.1:"));
  EXPECT_THAT(o.err, HasSubstr("unreachable after 3 tries"));
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 1) << o.err;
  EXPECT_EQ(o.out, "");
}

TEST_F(DataSyncTest, BadArgumentsExitWith2) {
  Outcome granularity =
      Run("--source coinbase --symbol BTCUSD --interval 4h --url http://127.0.0.1:9");
  EXPECT_EQ(granularity.code, 2);
  EXPECT_THAT(granularity.err, HasSubstr("1m, 5m, 15m, 1h, 6h and 1d"));
  EXPECT_THAT(granularity.err, Not(HasSubstr("market_data.sync")));

  Outcome time = Run("--symbol BTCUSDT --interval 4h --from yesterday");
  EXPECT_EQ(time.code, 2);
  EXPECT_THAT(time.err, HasSubstr("time \"yesterday\""));

  Outcome source = Run("--source kraken --symbol BTCUSDT --interval 4h");
  EXPECT_EQ(source.code, 2);
}

TEST(ParseSyncTimeTest, AcceptedForms) {
  EXPECT_EQ(*ParseSyncTime("2024-01-01"), kJan1);
  EXPECT_EQ(*ParseSyncTime("2024-01-01 04:00:00"), kJan1 + kFourHours);
  EXPECT_EQ(*ParseSyncTime("2024-01-01T04:00:00Z"), kJan1 + kFourHours);
  EXPECT_EQ(*ParseSyncTime("1704067200000"), kJan1);
  EXPECT_FALSE(ParseSyncTime("2024-13-01").ok());
  EXPECT_FALSE(ParseSyncTime("").ok());
}

}  // namespace
}  // namespace megaserve::cli
