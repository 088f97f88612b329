// `megaserve data import|gaps|list` parsed by CLI11 as main parses them and run against a
// temporary SQLite store, with the output captured.
#include "cli/data_command.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "cli/test_util.h"
#include "store/test_util.h"

namespace megaserve::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::filesystem::path SourceDir() {
  const char* src = std::getenv("MEGASERVE_SOURCE_DIR");
  return src && *src ? src : ".";
}

std::string Fixture(const std::string& name) {
  return (SourceDir() / "tests" / "forecast" / "fixtures" / name).string();
}

using testing::Outcome;

class DataCommandTest : public ::testing::Test {
 protected:
  // Parses "data ARGS --data-dir <temp>" and runs it.
  Outcome Run(const std::string& args) {
    CLI::App app;
    DataFlags flags;
    AddDataCommand(app, flags);
    return testing::ParseAndRun(
        app, "data " + args + " --data-dir " + dir_.path().string(),
        [&](std::FILE* out, std::FILE* err) { return RunData(flags, out, err); });
  }

  store::testing::TempDir dir_;
};

TEST_F(DataCommandTest, ImportIsIdempotentAndSummarisesGaps) {
  std::string file = Fixture("timestamp_btcusdt_4h_gap.csv");
  Outcome first = Run("import " + file + " --symbol btcusdt");
  ASSERT_EQ(first.code, 0) << first.err;
  EXPECT_THAT(first.out, HasSubstr("imported 6 bars of BTCUSDT 4h from " + file +
                                   " (timestamp csv): 6 new, 0 updated, 0 unchanged; last bar "
                                   "partial (2018-02-09 16:00:00 UTC)"));
  EXPECT_THAT(first.out, HasSubstr("stored: 6 bars from 2018-02-07 16:00:00 to 2018-02-09 "
                                   "16:00:00 UTC; 1 gap, 7 bars missing; the largest 2018-02-08 "
                                   "04:00:00 .. 2018-02-09 04:00:00 UTC (7 bars)"));
  EXPECT_EQ(first.err, "");

  Outcome again = Run("import " + file + " --symbol BTCUSDT --interval 4h");
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_THAT(again.out, HasSubstr(": 0 new, 0 updated, 6 unchanged; last bar partial"));
}

TEST_F(DataCommandTest, GapsListsEachGapAndThePartialLastBar) {
  ASSERT_EQ(Run("import " + Fixture("timestamp_btcusdt_4h_gap.csv") + " --symbol BTCUSDT").code, 0);
  Outcome gaps = Run("gaps --symbol BTCUSDT --interval 4h");
  ASSERT_EQ(gaps.code, 0) << gaps.err;
  EXPECT_EQ(gaps.out,
            "BTCUSDT 4h: 6 bars from 2018-02-07 16:00:00 to 2018-02-09 16:00:00 UTC\n"
            "1 gap, 7 bars missing:\n"
            "  2018-02-08 04:00:00 .. 2018-02-09 04:00:00 UTC  7 bars\n"
            "last bar 2018-02-09 16:00:00 UTC is partial (it may still have been open when "
            "stored)\n");

  Outcome none = Run("gaps --symbol ETHUSDT --interval 4h");
  EXPECT_EQ(none.code, 1);
  EXPECT_THAT(none.err, HasSubstr("no ETHUSDT 4h candles stored"));
}

TEST_F(DataCommandTest, ListShowsEachSeries) {
  Outcome empty = Run("list");
  ASSERT_EQ(empty.code, 0) << empty.err;
  EXPECT_THAT(empty.out, HasSubstr("no candles stored"));

  Outcome binance = Run("import " + Fixture("binance_klines_btcusdt_4h.csv") +
                        " --symbol BTCUSDT --source binance");
  ASSERT_EQ(binance.code, 0) << binance.err;
  EXPECT_THAT(binance.out, HasSubstr("(binance klines): 5 new, 0 updated, 0 unchanged"));
  EXPECT_THAT(binance.out, HasSubstr("no gaps"));
  Outcome daily =
      Run("import " + Fixture("binance_klines_btcusdt_1d_micros.csv") + " --symbol BTCUSDT");
  ASSERT_EQ(daily.code, 0) << daily.err;

  Outcome list = Run("list");
  ASSERT_EQ(list.code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("SYMBOL"));
  EXPECT_THAT(list.out, HasSubstr("BTCUSDT      4h              5  2017-08-17 04:00:00  "
                                  "2017-08-17 20:00:00  binance    partial"));
  EXPECT_THAT(list.out, HasSubstr("BTCUSDT      1d              3  2025-01-01 00:00:00  "
                                  "2025-01-03 00:00:00  csv        partial"));
  EXPECT_LT(list.out.find(" 4h "), list.out.find(" 1d "));
}

TEST_F(DataCommandTest, MistakesAreClearErrors) {
  std::string file = Fixture("timestamp_btcusdt_4h_gap.csv");
  Outcome mismatch = Run("import " + file + " --symbol BTCUSDT --interval 1d");
  EXPECT_EQ(mismatch.code, 1);
  EXPECT_THAT(mismatch.err, HasSubstr("its bars are mostly 4h apart, not 1d as --interval says"));

  Outcome interval = Run("import " + file + " --symbol BTCUSDT --interval 2d");
  EXPECT_EQ(interval.code, 2);
  EXPECT_THAT(interval.err, HasSubstr("--interval: unknown interval \"2d\"; allowed: 1m, 3m"));

  Outcome symbol = Run("import " + file + " --symbol BTC/USDT");
  EXPECT_EQ(symbol.code, 2);
  EXPECT_THAT(symbol.err, HasSubstr("--symbol"));

  Outcome missing = Run("import /nonexistent/candles.csv --symbol BTCUSDT");
  EXPECT_EQ(missing.code, 1);
  EXPECT_THAT(missing.err, HasSubstr("/nonexistent/candles.csv: cannot open the file"));

  Outcome set = Run("list --set nonsense");
  EXPECT_EQ(set.code, 2);
  EXPECT_THAT(set.err, HasSubstr("expected KEY=VALUE"));

  Outcome no_symbol = Run("import " + file);
  EXPECT_EQ(no_symbol.code, 2);
  EXPECT_THAT(no_symbol.err, HasSubstr("--symbol is required"));

  // Nothing was written by the failed imports.
  Outcome list = Run("list");
  EXPECT_THAT(list.out, HasSubstr("no candles stored"));
  EXPECT_THAT(list.out, Not(HasSubstr("BTCUSDT")));
}

TEST_F(DataCommandTest, ImportsTheRealFourHourFile) {
  std::filesystem::path data = SourceDir() / ".." / "shared" / "data" / "btcusdt_spot_4h.csv";
  if (!std::getenv("MEGASERVE_SOURCE_DIR") || !std::filesystem::exists(data)) {
    GTEST_SKIP() << "no market data at " << data << " (MEGASERVE_SOURCE_DIR/../shared/data)";
  }
  Outcome o = Run("import " + data.string() + " --symbol BTCUSDT");
  ASSERT_EQ(o.code, 0) << o.err;
  EXPECT_THAT(o.out, HasSubstr("imported 18371 bars of BTCUSDT 4h from " + data.string() +
                               " (timestamp csv): 18371 new, 0 updated, 0 unchanged; last bar "
                               "partial (2026-01-06 12:00:00 UTC)"));
  EXPECT_THAT(o.out, HasSubstr("8 gaps, 16 bars missing; the largest 2018-02-08 04:00:00 .. "
                               "2018-02-09 04:00:00 UTC (7 bars)"));
}

// The subcommand as registered in the real binary: output on stdout, errors on stderr, exit codes.
TEST(DataBinaryTest, ImportAndGapsThroughTheBinary) {
  const char* bin = std::getenv("MEGASERVE_BINARY");
  if (!bin || !std::filesystem::exists(bin)) {
    GTEST_SKIP() << "MEGASERVE_BINARY is not set (ctest sets it)";
  }
  store::testing::TempDir dir;
  auto run = [&](const std::string& args, std::string& out, std::string& err) {
    std::string out_file = (dir.path() / "out.txt").string();
    std::string err_file = (dir.path() / "err.txt").string();
    std::string cmd = std::string(bin) + " data " + args + " --data-dir " + dir.path().string() +
                      " >" + out_file + " 2>" + err_file;
    int status = std::system(cmd.c_str());
    auto slurp = [](const std::string& path) {
      std::string text;
      if (std::FILE* f = std::fopen(path.c_str(), "r")) {
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
        std::fclose(f);
      }
      return text;
    };
    out = slurp(out_file);
    err = slurp(err_file);
    return WEXITSTATUS(status);
  };
  std::string out, err;
  std::string file = Fixture("timestamp_btcusdt_4h_gap.csv");
  ASSERT_EQ(run("import " + file + " --symbol BTCUSDT", out, err), 0) << err;
  EXPECT_THAT(out, HasSubstr("imported 6 bars of BTCUSDT 4h"));
  EXPECT_THAT(out, HasSubstr("1 gap, 7 bars missing"));
  EXPECT_EQ(err, "");
  ASSERT_EQ(run("gaps --symbol BTCUSDT --interval 4h", out, err), 0) << err;
  EXPECT_THAT(out, HasSubstr("2018-02-08 04:00:00 .. 2018-02-09 04:00:00 UTC  7 bars"));
  EXPECT_EQ(run("gaps --symbol BTCUSDT --interval 9h", out, err), 2);
  EXPECT_THAT(err, HasSubstr("allowed: 1m"));
  EXPECT_EQ(out, "");
}

}  // namespace
}  // namespace megaserve::cli
