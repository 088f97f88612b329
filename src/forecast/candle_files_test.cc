// Candle file parsing: both layouts from fixtures written from their documented formats, error
// messages, timestamps, interval detection, and the real sample files.
#include "forecast/candle_files.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

namespace megaserve::forecast {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kDay = 24 * kHour;

std::filesystem::path SourceDir() {
  const char* src = std::getenv("MEGASERVE_SOURCE_DIR");
  return src && *src ? src : ".";
}

std::string Fixture(const std::string& name) {
  return (SourceDir() / "tests" / "forecast" / "fixtures" / name).string();
}

TEST(UtcTimestampTest, ParsesBothFormsAndRoundTrips) {
  EXPECT_EQ(*ParseUtcTimestamp("1970-01-01"), 0);
  EXPECT_EQ(*ParseUtcTimestamp("2017-08-17 04:00:00"), 1'502'942'400'000);
  EXPECT_EQ(*ParseUtcTimestamp("2024-02-29"), 1'709'164'800'000);
  EXPECT_EQ(*ParseUtcTimestamp("2000-03-01 23:59:59"), 951'955'199'000);
  EXPECT_EQ(FormatUtcTimestamp(1'502'942'400'000), "2017-08-17 04:00:00");
  EXPECT_EQ(FormatUtcTimestamp(951'955'199'000), "2000-03-01 23:59:59");
  for (int64_t t : {int64_t{0}, int64_t{1'735'689'600'000}, int64_t{4'102'444'799'000}}) {
    EXPECT_EQ(*ParseUtcTimestamp(FormatUtcTimestamp(t)), t);
  }
}

TEST(UtcTimestampTest, RejectsMalformedAndImpossibleTimes) {
  for (const char* bad : {"", "2017-8-17", "2017-08-17T04:00:00", "2017-08-17 04:00", "2023-02-29",
                          "2017-13-01", "2017-00-10", "2017-04-31", "2017-08-17 24:00:00",
                          "2017-08-17 04:60:00", "1502942400000"}) {
    auto t = ParseUtcTimestamp(bad);
    EXPECT_FALSE(t.ok()) << bad;
  }
}

TEST(CandleCsvTest, TimestampLayoutWithHeaderAndGap) {
  auto file = ReadCandleFile(Fixture("timestamp_btcusdt_4h_gap.csv"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->layout, CandleFileLayout::kTimestampCsv);
  ASSERT_EQ(file->candles.size(), 6u);
  const Candle& first = file->candles[0];
  EXPECT_EQ(first.open_time_ms, *ParseUtcTimestamp("2018-02-07 16:00:00"));
  EXPECT_DOUBLE_EQ(first.open, 8165.0);
  EXPECT_DOUBLE_EQ(first.high, 8399.0);
  EXPECT_DOUBLE_EQ(first.low, 7867.0);
  EXPECT_DOUBLE_EQ(first.close, 8130.81);
  EXPECT_DOUBLE_EQ(first.volume, 8745.316193);
  EXPECT_EQ(file->interval_ms, 4 * kHour);
  for (size_t i = 0; i + 1 < file->candles.size(); ++i) EXPECT_FALSE(file->candles[i].partial);
  EXPECT_TRUE(file->candles.back().partial);
  auto gaps = FindGaps(file->candles, file->interval_ms);
  ASSERT_EQ(gaps.size(), 1u);
  EXPECT_EQ(gaps[0].missing_bars, 7);
}

TEST(CandleCsvTest, BinanceMillisecondDumpWithoutHeader) {
  auto file = ReadCandleFile(Fixture("binance_klines_btcusdt_4h.csv"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->layout, CandleFileLayout::kBinanceKlines);
  ASSERT_EQ(file->candles.size(), 5u);
  EXPECT_EQ(file->candles[0], (Candle{.open_time_ms = 1'502'942'400'000,
                                      .open = 4261.48,
                                      .high = 4349.99,
                                      .low = 4261.32,
                                      .close = 4349.99,
                                      .volume = 82.088865}));
  EXPECT_EQ(file->candles[4].open_time_ms, 1'502'942'400'000 + 4 * 4 * kHour);
  EXPECT_TRUE(file->candles[4].partial);
  EXPECT_FALSE(file->candles[3].partial);
  EXPECT_EQ(file->interval_ms, 4 * kHour);
  EXPECT_EQ(IntervalNameForMillis(file->interval_ms), "4h");
}

TEST(CandleCsvTest, BinanceMicrosecondDumpWithHeaderAndCrlf) {
  auto file = ReadCandleFile(Fixture("binance_klines_btcusdt_1d_micros.csv"));
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->layout, CandleFileLayout::kBinanceKlines);
  ASSERT_EQ(file->candles.size(), 3u);
  EXPECT_EQ(file->candles[0].open_time_ms, *ParseUtcTimestamp("2025-01-01"));
  EXPECT_DOUBLE_EQ(file->candles[0].open, 93576.0);
  EXPECT_DOUBLE_EQ(file->candles[2].close, 98174.18);
  EXPECT_EQ(file->interval_ms, kDay);
  EXPECT_EQ(IntervalNameForMillis(file->interval_ms), "1d");
  EXPECT_TRUE(file->candles[2].partial);
}

TEST(CandleCsvTest, ErrorsNameFileLineAndField) {
  struct Case {
    const char* text;
    const char* expected;
  };
  const Case cases[] = {
      {"timestamp,open,high,low,close,volume\n2020-01-01,1,2,0.5,1.5,3\n2020-01-02,x,2,0.5,1.5,3\n",
       "f.csv:3: field \"open\": \"x\" is not a number"},
      {"2020-01-01,1,2,0.5,1.5,3\n2020-01-32,1,2,0.5,1.5,3\n", "f.csv:2: field \"timestamp\""},
      {"2020-01-01,1,2,0.5,1.5,3\n2020-01-02,1,2,0.5,1.5\n", "f.csv:2: 5 fields"},
      {"a,b,c\n", "f.csv:1: 3 fields"},
      {"2020-01-01,1,2,0.5,1.5,3\n2020-01-01,1,2,0.5,1.5,3\n", "f.csv:2: open time"},
      {"2020-01-01,1,2,0.5,3,3\n", "f.csv:1: close 3 is above high 2"},
      {"1577836800000,1,2,0.5,1.5,3,1577923199999,4,5,1,2,0\n"
       "1577923200000,1,2,0.5,1.5,3,-4,4,5,1,2,0\n",
       "f.csv:2: field \"close time\""},
      {"1577836800000,1,2,0.5,1.5,vol,1577923199999,4,5,1,2,0\n", "f.csv:1: field \"volume\""},
      {"timestamp,open,high,low,close,volume\n", "f.csv: no candles"},
      {"", "f.csv: no candles"},
  };
  for (const Case& c : cases) {
    auto file = ParseCandleCsv(c.text, "f.csv");
    ASSERT_FALSE(file.ok()) << c.text;
    EXPECT_EQ(file.status().code(), core::StatusCode::kInvalidArgument);
    EXPECT_THAT(file.status().message(), HasSubstr(c.expected)) << c.text;
  }
  auto missing = ReadCandleFile("/nonexistent/candles.csv");
  EXPECT_EQ(missing.status().code(), core::StatusCode::kNotFound);
}

TEST(DetectIntervalTest, MostCommonSpacingWins) {
  std::vector<Candle> bars;
  for (int64_t t : {0, 1, 2, 3, 5, 6, 9}) bars.push_back({.open_time_ms = t * kHour});
  EXPECT_EQ(DetectIntervalMillis(bars), kHour);
  EXPECT_EQ(DetectIntervalMillis(std::span(bars).first(1)), 0);
  std::vector<Candle> tie = {{.open_time_ms = 0}, {.open_time_ms = 2}, {.open_time_ms = 3}};
  EXPECT_EQ(DetectIntervalMillis(tie), 1);
  EXPECT_EQ(IntervalNameForMillis(12345), "");
}

struct RealFile {
  const char* name;
  size_t rows;
  int64_t interval_ms;
  const char* first;
  const char* last;
};

class RealCandleFileTest : public ::testing::TestWithParam<RealFile> {};

TEST_P(RealCandleFileTest, ParsesEveryRowAndFlagsTheLastPartial) {
  std::filesystem::path path = SourceDir() / ".." / "shared" / "data" / GetParam().name;
  if (!std::getenv("MEGASERVE_SOURCE_DIR") || !std::filesystem::exists(path)) {
    GTEST_SKIP() << "no market data at " << path << " (MEGASERVE_SOURCE_DIR/../shared/data)";
  }
  auto file = ReadCandleFile(path.string());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  EXPECT_EQ(file->layout, CandleFileLayout::kTimestampCsv);
  ASSERT_EQ(file->candles.size(), GetParam().rows);
  EXPECT_EQ(file->interval_ms, GetParam().interval_ms);
  EXPECT_EQ(FormatUtcTimestamp(file->candles.front().open_time_ms), GetParam().first);
  EXPECT_EQ(FormatUtcTimestamp(file->candles.back().open_time_ms), GetParam().last);
  EXPECT_DOUBLE_EQ(file->candles.front().open, 4261.48);
  size_t partial = 0;
  for (const Candle& c : file->candles) partial += c.partial;
  EXPECT_EQ(partial, 1u);
  EXPECT_TRUE(file->candles.back().partial);
}

INSTANTIATE_TEST_SUITE_P(SharedData, RealCandleFileTest,
                         ::testing::Values(RealFile{"btcusdt_spot_4h.csv", 18371, 4 * kHour,
                                                    "2017-08-17 04:00:00", "2026-01-06 12:00:00"},
                                           RealFile{"btcusdt_spot_1d.csv", 3065, kDay,
                                                    "2017-08-17 00:00:00", "2026-01-06 00:00:00"}),
                         [](const ::testing::TestParamInfo<RealFile>& info) {
                           return info.param.interval_ms == kDay ? std::string("Daily")
                                                                 : std::string("FourHour");
                         });

}  // namespace
}  // namespace megaserve::forecast
