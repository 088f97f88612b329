#include "forecast/exchange_formats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace megaserve::forecast {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kFourHours = 4 * kHour;
constexpr int64_t kJan1 = 1'704'067'200'000;  // 2024-01-01T00:00:00Z

std::string Fixture(const std::string& name) {
  std::filesystem::path dir;
  if (const char* src = std::getenv("MEGASERVE_SOURCE_DIR"); src && *src) {
    dir = src;
  } else {
    dir = std::filesystem::current_path();  // tests run from the repository root
  }
  std::ifstream in(dir / "tests/forecast/fixtures" / name, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(BinanceKlinesTest, ParsesDocumentedRows) {
  std::string body = Fixture("binance_klines_btcusdt_4h.json");
  ASSERT_FALSE(body.empty());
  auto candles = ParseBinanceKlines(body, kFourHours, kJan1 + 30 * kHour);
  ASSERT_TRUE(candles.ok()) << candles.status().ToString();
  ASSERT_EQ(candles->size(), 3u);
  const Candle& first = (*candles)[0];
  EXPECT_EQ(first.open_time_ms, kJan1);
  EXPECT_DOUBLE_EQ(first.open, 42283.58);
  EXPECT_DOUBLE_EQ(first.high, 42554.57);
  EXPECT_DOUBLE_EQ(first.low, 42261.02);
  EXPECT_DOUBLE_EQ(first.close, 42475.23);
  EXPECT_DOUBLE_EQ(first.volume, 1271.68108);
  EXPECT_EQ((*candles)[2].open_time_ms, kJan1 + 2 * kFourHours);
  for (const Candle& c : *candles) EXPECT_FALSE(c.partial);
}

TEST(BinanceKlinesTest, FlagsTheBarStillOpenAsPartial) {
  std::string body = Fixture("binance_klines_btcusdt_4h.json");
  // 09:00: the 08:00 bar closes at 12:00.
  auto candles = ParseBinanceKlines(body, kFourHours, kJan1 + 9 * kHour);
  ASSERT_TRUE(candles.ok()) << candles.status().ToString();
  EXPECT_FALSE((*candles)[1].partial);
  EXPECT_TRUE((*candles)[2].partial);
  // Exactly at the close the bar is complete.
  candles = ParseBinanceKlines(body, kFourHours, kJan1 + 12 * kHour);
  ASSERT_TRUE(candles.ok());
  EXPECT_FALSE((*candles)[2].partial);
}

TEST(BinanceKlinesTest, ErrorsNameRowAndField) {
  auto bad = ParseBinanceKlines(Fixture("binance_klines_bad_price.json"), kFourHours, kJan1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("row 1: low"));
  EXPECT_THAT(bad.status().message(), HasSubstr("\"n/a\""));

  auto short_row =
      ParseBinanceKlines(R"([[1704067200000, "1", "2", "0.5", "1.5"]])", kFourHours, kJan1);
  ASSERT_FALSE(short_row.ok());
  EXPECT_THAT(short_row.status().message(), HasSubstr("row 0: expected an array of 12 fields"));

  auto bad_time = ParseBinanceKlines(
      R"([["x", "1", "2", "0.5", "1.5", "3", 1, "0", 1, "0", "0", "0"]])", kFourHours, kJan1);
  ASSERT_FALSE(bad_time.ok());
  EXPECT_THAT(bad_time.status().message(), HasSubstr("row 0: open time: expected an integer"));

  // high below close: caught by ValidateCandle, still naming the row.
  auto inverted = ParseBinanceKlines(
      R"([[1704067200000, "1", "1.2", "0.5", "1.5", "3", 1704081599999, "0", 1, "0", "0", "0"]])",
      kFourHours, kJan1);
  ASSERT_FALSE(inverted.ok());
  EXPECT_THAT(inverted.status().message(), HasSubstr("row 0:"));

  auto unordered = ParseBinanceKlines(
      R"([[1704081600000, "1", "2", "0.5", "1.5", "3", 1704095999999, "0", 1, "0", "0", "0"],
          [1704067200000, "1", "2", "0.5", "1.5", "3", 1704081599999, "0", 1, "0", "0", "0"]])",
      kFourHours, kJan1);
  ASSERT_FALSE(unordered.ok());
  EXPECT_THAT(unordered.status().message(), HasSubstr("row 1: open time"));
}

TEST(BinanceKlinesTest, MalformedJsonAndErrorObjects) {
  auto truncated = ParseBinanceKlines(R"([[1704067200000, "1",)", kFourHours, kJan1);
  ASSERT_FALSE(truncated.ok());
  EXPECT_THAT(truncated.status().message(), HasSubstr("malformed JSON at offset"));

  auto error = ParseBinanceKlines(Fixture("binance_error_invalid_symbol.json"), kFourHours, kJan1);
  ASSERT_FALSE(error.ok());
  EXPECT_THAT(error.status().message(), HasSubstr("Invalid symbol. (code -1121)"));

  auto empty = ParseBinanceKlines("[]", kFourHours, kJan1);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(CoinbaseCandlesTest, ParsesAndOrdersOldestFirst) {
  std::string body = Fixture("coinbase_candles_btcusd_1h.json");
  ASSERT_FALSE(body.empty());
  auto candles = ParseCoinbaseCandles(body, kHour, kJan1 + 2 * kHour + 1);
  ASSERT_TRUE(candles.ok()) << candles.status().ToString();
  ASSERT_EQ(candles->size(), 3u);
  EXPECT_EQ((*candles)[0].open_time_ms, kJan1);
  EXPECT_EQ((*candles)[1].open_time_ms, kJan1 + kHour);
  EXPECT_EQ((*candles)[2].open_time_ms, kJan1 + 2 * kHour);
  // Row order in the body is time, low, high, open, close, volume.
  const Candle& first = (*candles)[0];
  EXPECT_DOUBLE_EQ(first.low, 42050.00);
  EXPECT_DOUBLE_EQ(first.high, 42588.28);
  EXPECT_DOUBLE_EQ(first.open, 42288.58);
  EXPECT_DOUBLE_EQ(first.close, 42455.11);
  EXPECT_DOUBLE_EQ(first.volume, 305.84215662);
  EXPECT_FALSE((*candles)[1].partial);
  EXPECT_TRUE((*candles)[2].partial);
}

TEST(CoinbaseCandlesTest, DropsDuplicateTimes) {
  auto candles = ParseCoinbaseCandles(
      "[[1704070800, 1, 3, 2, 2, 5], [1704067200, 1, 3, 2, 2, 5], [1704070800, 1, 3, 2, 2, 5]]",
      kHour, kJan1 + 10 * kHour);
  ASSERT_TRUE(candles.ok()) << candles.status().ToString();
  ASSERT_EQ(candles->size(), 2u);
  EXPECT_EQ((*candles)[0].open_time_ms, kJan1);
}

TEST(CoinbaseCandlesTest, ErrorsNameRowAndField) {
  auto bad = ParseCoinbaseCandles("[[1704070800, 1, 3, 2, 2, 5], [1704067200, 1, \"3\", 2, 2, 5]]",
                                  kHour, kJan1);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("row 1: high: expected a number"));

  auto error = ParseCoinbaseCandles(Fixture("coinbase_error_not_found.json"), kHour, kJan1);
  ASSERT_FALSE(error.ok());
  EXPECT_THAT(error.status().message(), HasSubstr("NotFound"));

  auto garbage = ParseCoinbaseCandles("<html>", kHour, kJan1);
  ASSERT_FALSE(garbage.ok());
  EXPECT_THAT(garbage.status().message(), HasSubstr("coinbase candles: malformed JSON"));
}

TEST(ExchangeErrorMessageTest, ReadsBothExchangesShapes) {
  EXPECT_EQ(ExchangeErrorMessage(R"({"code":-1121,"msg":"Invalid symbol."})"),
            "Invalid symbol. (code -1121)");
  EXPECT_EQ(ExchangeErrorMessage(R"({"message":"NotFound"})"), "NotFound");
  EXPECT_EQ(ExchangeErrorMessage("Bad Gateway\n"), "Bad Gateway ");
  EXPECT_EQ(ExchangeErrorMessage(std::string(300, 'x')).size(), 200u);
}

}  // namespace
}  // namespace megaserve::forecast
