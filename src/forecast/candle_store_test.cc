// CandleStore on SQLite and PostgreSQL: idempotent upserts with honest counts, partial bars,
// validation that writes nothing, range queries, series listing.
#include "forecast/candle_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>

#include "store/test_util.h"

namespace megaserve::forecast {
namespace {

using store::Engine;
using ::testing::HasSubstr;

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kStart = 1'700'000'000'000 / kHour * kHour;  // on the hour

// Bar i of a synthetic 1h series: prices move with i so that every bar differs.
Candle Bar(int64_t i, bool partial = false) {
  double base = 100 + static_cast<double>(i % 97);
  return {.open_time_ms = kStart + i * kHour,
          .open = base,
          .high = base + 2,
          .low = base - 1,
          .close = base + 1,
          .volume = 10 + static_cast<double>(i) * 0.25,
          .partial = partial};
}

std::vector<Candle> Bars(int64_t from, int64_t to, bool last_partial) {
  std::vector<Candle> out;
  for (int64_t i = from; i < to; ++i) out.push_back(Bar(i, last_partial && i + 1 == to));
  return out;
}

class CandleStoreTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    MEGASERVE_OPEN_TEST_DATABASE(db_, GetParam());
    ASSERT_FALSE(HasFatalFailure());
    store_ = std::make_unique<CandleStore>(db_.db());
  }

  UpsertCounts Upsert(const std::vector<Candle>& bars, const char* symbol = "BTCUSDT",
                      const char* interval = "1h") {
    auto counts = store_->Upsert(symbol, interval, "test", bars);
    EXPECT_TRUE(counts.ok()) << counts.status().ToString();
    return counts.ok() ? *counts : UpsertCounts{-1, -1, -1};
  }

  std::vector<Candle> All(bool include_partial = true) {
    auto bars = store_->Range("BTCUSDT", "1h", 0, INT64_MAX, 0, include_partial);
    EXPECT_TRUE(bars.ok()) << bars.status().ToString();
    return bars.ok() ? *bars : std::vector<Candle>{};
  }

  store::testing::TestDatabase db_;
  std::unique_ptr<CandleStore> store_;
};

TEST_P(CandleStoreTest, ImportingTwiceChangesNothing) {
  constexpr int64_t kRows = 18'000;  // about the size of the 4h sample file
  std::vector<Candle> bars = Bars(0, kRows, /*last_partial=*/true);
  EXPECT_EQ(store_->version(), 1u);
  auto started = std::chrono::steady_clock::now();
  UpsertCounts first = Upsert(bars);
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  EXPECT_EQ(first.inserted, kRows);
  EXPECT_EQ(first.updated, 0);
  EXPECT_EQ(first.unchanged, 0);
  EXPECT_LT(seconds, 20.0) << "batched upsert of " << kRows << " rows is far too slow";
  EXPECT_EQ(store_->version(), 2u);

  UpsertCounts second = Upsert(bars);
  EXPECT_EQ(second.inserted, 0);
  EXPECT_EQ(second.updated, 0);
  EXPECT_EQ(second.unchanged, kRows);
  EXPECT_EQ(store_->version(), 2u);

  std::vector<Candle> stored = All();
  ASSERT_EQ(stored.size(), bars.size());
  EXPECT_EQ(stored.front(), bars.front());
  EXPECT_EQ(stored.back(), bars.back());
  EXPECT_TRUE(stored.back().partial);
  EXPECT_EQ(stored[1234], bars[1234]);
}

TEST_P(CandleStoreTest, ChangedPartialBarIsUpdatedInPlace) {
  Upsert(Bars(0, 3, /*last_partial=*/true));
  Candle closed = Bar(2, /*partial=*/true);
  closed.close += 0.5;
  closed.high += 0.5;
  closed.volume += 3;
  UpsertCounts counts = Upsert({Bar(1), closed});
  EXPECT_EQ(counts.inserted, 0);
  EXPECT_EQ(counts.updated, 1);
  EXPECT_EQ(counts.unchanged, 1);
  auto latest = store_->Latest("BTCUSDT", "1h");
  ASSERT_TRUE(latest.ok()) << latest.status().ToString();
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ(**latest, closed);
  EXPECT_EQ(store_->version(), 3u);
}

TEST_P(CandleStoreTest, NewerBarClearsEarlierPartialFlags) {
  Upsert(Bars(0, 3, /*last_partial=*/true));
  EXPECT_EQ(All(/*include_partial=*/false).size(), 2u);

  // Only the newer bar arrives: the stored partial bar 2 has closed meanwhile.
  UpsertCounts counts = Upsert({Bar(3, /*partial=*/true)});
  EXPECT_EQ(counts.inserted, 1);
  EXPECT_EQ(counts.updated, 0);
  std::vector<Candle> complete = All(/*include_partial=*/false);
  ASSERT_EQ(complete.size(), 3u);
  EXPECT_EQ(complete.back(), Bar(2));
  std::vector<Candle> all = All();
  ASSERT_EQ(all.size(), 4u);
  EXPECT_TRUE(all.back().partial);

  // An older bar sent as partial is stored closed: a newer one exists.
  counts = Upsert({Bar(1, /*partial=*/true)});
  EXPECT_EQ(counts.unchanged, 1);
  EXPECT_FALSE(All()[1].partial);

  // A file ending in a closed-over partial bar: updated, since its flag changes.
  Upsert(Bars(4, 6, /*last_partial=*/true));
  counts = Upsert(Bars(0, 7, /*last_partial=*/true));
  EXPECT_EQ(counts.inserted, 1);  // bar 6
  EXPECT_EQ(counts.updated, 1);   // bar 5, no longer the newest, loses its partial flag
  EXPECT_EQ(counts.unchanged, 5);
  EXPECT_EQ(All(/*include_partial=*/false).size(), 6u);
}

TEST_P(CandleStoreTest, InvalidInputWritesNothing) {
  Candle bad = Bar(1);
  bad.low = bad.high + 1;
  auto counts = store_->Upsert("BTCUSDT", "1h", "test", std::vector<Candle>{Bar(0), bad, Bar(2)});
  ASSERT_FALSE(counts.ok());
  EXPECT_EQ(counts.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(counts.status().message(), HasSubstr("bar 2"));
  EXPECT_THAT(counts.status().message(), HasSubstr("low"));
  EXPECT_TRUE(All().empty());
  EXPECT_EQ(store_->version(), 1u);

  std::vector<Candle> good = {Bar(0)};
  auto bad_interval = store_->Upsert("BTCUSDT", "2d", "test", good);
  EXPECT_EQ(bad_interval.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_interval.status().message(), HasSubstr("4h"));
  for (const char* symbol : {"", "BTC-USDT", "BTC/USDT", "ABCDEFGHIJKLMNOPQRSTU"}) {
    auto bad_symbol = store_->Upsert(symbol, "1h", "test", good);
    EXPECT_EQ(bad_symbol.status().code(), core::StatusCode::kInvalidArgument) << symbol;
  }
  EXPECT_TRUE(All().empty());
  auto series = store_->Series();
  ASSERT_TRUE(series.ok());
  EXPECT_TRUE(series->empty());
}

TEST_P(CandleStoreTest, SymbolsAreUpperCasedAndDuplicatesKeepTheLastRow) {
  Candle revised = Bar(1);
  revised.close += 0.25;
  UpsertCounts counts = Upsert({Bar(0), Bar(1), revised}, "btcusdt");
  EXPECT_EQ(counts.inserted, 2);
  std::vector<Candle> stored = All();
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[1], revised);
  EXPECT_EQ(*NormalizeSymbol("ethUsdt1"), "ETHUSDT1");
}

TEST_P(CandleStoreTest, RangeHonoursBoundsLimitAndPartial) {
  Upsert(Bars(0, 10, /*last_partial=*/true));
  auto newest = store_->Range("BTCUSDT", "1h", 0, INT64_MAX, 3, /*include_partial=*/true);
  ASSERT_TRUE(newest.ok()) << newest.status().ToString();
  ASSERT_EQ(newest->size(), 3u);
  EXPECT_EQ((*newest)[0], Bar(7));  // oldest first
  EXPECT_EQ((*newest)[2], Bar(9, true));

  auto complete = store_->Range("BTCUSDT", "1h", 0, INT64_MAX, 3, /*include_partial=*/false);
  ASSERT_TRUE(complete.ok());
  ASSERT_EQ(complete->size(), 3u);
  EXPECT_EQ((*complete)[0], Bar(6));
  EXPECT_EQ((*complete)[2], Bar(8));

  auto oldest = store_->Range("btcusdt", "1h", 0, INT64_MAX, 3, true, /*newest=*/false);
  ASSERT_TRUE(oldest.ok());
  ASSERT_EQ(oldest->size(), 3u);
  EXPECT_EQ((*oldest)[0], Bar(0));
  EXPECT_EQ((*oldest)[2], Bar(2));

  // Bounds are inclusive.
  auto window = store_->Range("BTCUSDT", "1h", Bar(2).open_time_ms, Bar(5).open_time_ms, 0, true);
  ASSERT_TRUE(window.ok());
  ASSERT_EQ(window->size(), 4u);
  EXPECT_EQ(window->front(), Bar(2));
  EXPECT_EQ(window->back(), Bar(5));

  auto other_interval = store_->Range("BTCUSDT", "4h", 0, INT64_MAX, 0, true);
  ASSERT_TRUE(other_interval.ok());
  EXPECT_TRUE(other_interval->empty());
  auto none = store_->Latest("ETHUSDT", "1h");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());
  EXPECT_EQ(store_->Range("BTCUSDT", "9h", 0, 1, 0, true).status().code(),
            core::StatusCode::kInvalidArgument);
}

TEST_P(CandleStoreTest, SeriesListsEachSeriesBySymbolThenIntervalLength) {
  Upsert(Bars(0, 5, /*last_partial=*/true), "ETHUSDT", "1h");
  std::vector<Candle> daily = {Bar(0), Bar(24)};
  ASSERT_TRUE(store_->Upsert("BTCUSDT", "1d", "binance", daily).ok());
  Upsert(Bars(0, 3, /*last_partial=*/false), "BTCUSDT", "4h");
  auto series = store_->Series();
  ASSERT_TRUE(series.ok()) << series.status().ToString();
  ASSERT_EQ(series->size(), 3u);
  const SeriesInfo& btc4h = (*series)[0];
  EXPECT_EQ(btc4h.symbol, "BTCUSDT");
  EXPECT_EQ(btc4h.interval, "4h");
  EXPECT_EQ(btc4h.count, 3);
  EXPECT_FALSE(btc4h.last_partial);
  const SeriesInfo& btc1d = (*series)[1];
  EXPECT_EQ(btc1d.interval, "1d");
  EXPECT_EQ(btc1d.source, "binance");
  EXPECT_EQ(btc1d.count, 2);
  EXPECT_EQ(btc1d.first_open_ms, Bar(0).open_time_ms);
  EXPECT_EQ(btc1d.last_open_ms, Bar(24).open_time_ms);
  const SeriesInfo& eth = (*series)[2];
  EXPECT_EQ(eth.symbol, "ETHUSDT");
  EXPECT_EQ(eth.source, "test");
  EXPECT_EQ(eth.count, 5);
  EXPECT_TRUE(eth.last_partial);
}

INSTANTIATE_TEST_SUITE_P(Engines, CandleStoreTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const ::testing::TestParamInfo<Engine>& info) {
                           return std::string(store::EngineName(info.param));
                         });

}  // namespace
}  // namespace megaserve::forecast
