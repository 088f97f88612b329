// Intervals, gap detection (synthetic series and the real 4h file) and candle validation.
#include "forecast/candles.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "forecast/candle_files.h"

namespace megaserve::forecast {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr int64_t kHour = 3'600'000;

Candle Bar(int64_t open_time_ms) {
  return {.open_time_ms = open_time_ms, .open = 10, .high = 12, .low = 9, .close = 11, .volume = 1};
}

TEST(IntervalsTest, NamesAreShortestFirstWithTheirLengths) {
  EXPECT_THAT(IntervalNames(), ElementsAre("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h",
                                           "8h", "12h", "1d", "1w"));
  int64_t previous = 0;
  for (const std::string& name : IntervalNames()) {
    auto ms = IntervalMillis(name);
    ASSERT_TRUE(ms.ok()) << name;
    EXPECT_GT(*ms, previous) << name;
    previous = *ms;
  }
  EXPECT_EQ(*IntervalMillis("1m"), 60'000);
  EXPECT_EQ(*IntervalMillis("4h"), 4 * kHour);
  EXPECT_EQ(*IntervalMillis("1d"), 24 * kHour);
  EXPECT_EQ(*IntervalMillis("1w"), 7 * 24 * kHour);
}

TEST(IntervalsTest, UnknownNameListsTheAllowedValues) {
  for (const char* bad : {"", "4H", "1M", "2d", "60m"}) {
    auto ms = IntervalMillis(bad);
    ASSERT_FALSE(ms.ok()) << bad;
    EXPECT_EQ(ms.status().code(), core::StatusCode::kInvalidArgument);
    EXPECT_THAT(ms.status().message(), HasSubstr("1m, 3m, 5m, 15m, 30m, 1h, 2h, 4h, 6h, 8h, 12h"));
  }
}

TEST(FindGapsTest, ContiguousAndTinySeriesHaveNone) {
  EXPECT_TRUE(FindGaps({}, kHour).empty());
  std::vector<Candle> one = {Bar(0)};
  EXPECT_TRUE(FindGaps(one, kHour).empty());
  std::vector<Candle> run = {Bar(0), Bar(kHour), Bar(2 * kHour), Bar(3 * kHour)};
  EXPECT_TRUE(FindGaps(run, kHour).empty());
}

TEST(FindGapsTest, ReportsEachRunOfMissingBars) {
  // Present: 0, 1, 4, 5, 7 (hours) -> missing 2..3 and 6.
  std::vector<Candle> bars = {Bar(0), Bar(kHour), Bar(4 * kHour), Bar(5 * kHour), Bar(7 * kHour)};
  auto gaps = FindGaps(bars, kHour);
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_EQ(gaps[0].first_missing_ms, 2 * kHour);
  EXPECT_EQ(gaps[0].last_missing_ms, 3 * kHour);
  EXPECT_EQ(gaps[0].missing_bars, 2);
  EXPECT_EQ(gaps[1].first_missing_ms, 6 * kHour);
  EXPECT_EQ(gaps[1].last_missing_ms, 6 * kHour);
  EXPECT_EQ(gaps[1].missing_bars, 1);
}

TEST(FindGapsTest, IgnoresBarsOffTheGrid) {
  // A bar at 1.5 h is off the grid of the first bar; the gap 1..2 (no bar at 2 or 3) stays.
  std::vector<Candle> bars = {Bar(0), Bar(kHour), Bar(kHour + kHour / 2), Bar(4 * kHour)};
  auto gaps = FindGaps(bars, kHour);
  ASSERT_EQ(gaps.size(), 1u);
  EXPECT_EQ(gaps[0].first_missing_ms, 2 * kHour);
  EXPECT_EQ(gaps[0].last_missing_ms, 3 * kHour);
  EXPECT_EQ(gaps[0].missing_bars, 2);
}

TEST(FindGapsTest, RealFourHourFileHasEightGaps) {
  const char* src = std::getenv("MEGASERVE_SOURCE_DIR");
  std::filesystem::path data =
      std::filesystem::path(src ? src : ".") / ".." / "shared" / "data" / "btcusdt_spot_4h.csv";
  if (!src || !std::filesystem::exists(data)) {
    GTEST_SKIP() << "no market data at " << data << " (MEGASERVE_SOURCE_DIR/../shared/data)";
  }
  auto file = ReadCandleFile(data.string());
  ASSERT_TRUE(file.ok()) << file.status().ToString();
  auto gaps = FindGaps(file->candles, 4 * kHour);
  ASSERT_EQ(gaps.size(), 8u);
  int64_t missing = 0;
  const Gap* largest = &gaps[0];
  for (const Gap& g : gaps) {
    missing += g.missing_bars;
    EXPECT_EQ(g.missing_bars, (g.last_missing_ms - g.first_missing_ms) / (4 * kHour) + 1);
    if (g.missing_bars > largest->missing_bars) largest = &g;
  }
  // Bars are present at 2018-02-08 00:00 and 2018-02-09 08:00; the 7 between them are missing.
  EXPECT_EQ(FormatUtcTimestamp(largest->first_missing_ms), "2018-02-08 04:00:00");
  EXPECT_EQ(FormatUtcTimestamp(largest->last_missing_ms), "2018-02-09 04:00:00");
  EXPECT_EQ(largest->missing_bars, 7);
  // Every 4h step from the first bar to the last is either a row or a missing bar.
  int64_t span = file->candles.back().open_time_ms - file->candles.front().open_time_ms;
  EXPECT_EQ(static_cast<int64_t>(file->candles.size()) + missing, span / (4 * kHour) + 1);
  EXPECT_EQ(missing, 16);
}

TEST(ValidateCandleTest, AcceptsAConsistentBar) {
  EXPECT_TRUE(ValidateCandle(Bar(0)).ok());
  Candle flat = {.open = 5, .high = 5, .low = 5, .close = 5, .volume = 0};
  EXPECT_TRUE(ValidateCandle(flat).ok());
}

TEST(ValidateCandleTest, NamesTheBadField) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    Candle candle;
    const char* field;
  };
  auto with = [](auto set) {
    Candle c = Bar(0);
    set(c);
    return c;
  };
  const Case cases[] = {
      {with([&](Candle& c) { c.open = nan; }), "open"},
      {with([&](Candle& c) { c.high = inf; }), "high"},
      {with([&](Candle& c) { c.volume = nan; }), "volume"},
      {with([](Candle& c) { c.low = 0; }), "low"},
      {with([](Candle& c) { c.close = -1; }), "close"},
      {with([](Candle& c) { c.volume = -0.5; }), "volume"},
      {with([](Candle& c) { c.low = 13; }), "low"},       // above high
      {with([](Candle& c) { c.open = 8; }), "open"},      // below low
      {with([](Candle& c) { c.close = 12.5; }), "close"}  // above high
  };
  for (const Case& c : cases) {
    core::Status s = ValidateCandle(c.candle);
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_EQ(s.code(), core::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr(c.field));
  }
}

TEST(IsOpenAtTest, BarIsOpenUntilItsIntervalEnds) {
  EXPECT_TRUE(IsOpenAt(0, kHour, kHour - 1));
  EXPECT_FALSE(IsOpenAt(0, kHour, kHour));
}

}  // namespace
}  // namespace megaserve::forecast
