// ForecastService over a real model repository and a SQLite candle store: the numbers match the
// engine on the stored window, timestamps and freshness are right, every bad request names the
// allowed values, and the in-memory window follows new, partial and closing bars.
#include "forecast/forecast_service.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <atomic>
#include <bit>
#include <future>
#include <limits>

#include "core/time_format.h"
#include "forecast/backtest.h"
#include "forecast/features.h"
#include "forecast/forecast_backend.h"
#include "forecast/forecast_test_util.h"
#include "store/test_util.h"

namespace megaserve::forecast {
namespace {

using ::testing::HasSubstr;
using testing::kFourHoursMs;
using testing::SyntheticCandles;
using testing::TinyModel;
using testing::TinyShape;

constexpr int kBars = 100;

class ForecastServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    db_.Open(store::Engine::kSqlite);
    ASSERT_FALSE(HasFatalFailure());
    candles_ = std::make_unique<CandleStore>(db_.db());
    models_dir_ = (dir_.path() / "models").string();
    testing::WriteModelDir(models_dir_, "btcusdt-4h", model_, false, true,
                           "[batching]\nmax_batch_size = 8\nmax_queue_delay = \"1ms\"\n");
    repository_ =
        std::make_unique<models::Repository>(models::RepositoryOptions{.dir = models_dir_});
    repository_->RegisterBackend("forecast", LoadForecastModel);
    bars_ = SyntheticCandles(kBars);
    Upsert(bars_);
    now_ms_ = bars_.back().open_time_ms + kFourHoursMs + 90'000;  // 90 s after the last close
    service_ = std::make_unique<ForecastService>(ForecastServiceOptions{
        .repository = repository_.get(), .candles = candles_.get(), .now_ms = [this] {
          return now_ms_.load();
        }});
  }

  void Upsert(const std::vector<Candle>& bars, const char* symbol = "BTCUSDT") {
    auto counts = candles_->Upsert(symbol, "4h", "test", bars);
    ASSERT_TRUE(counts.ok()) << counts.status().ToString();
  }

  Forecast Ok(const ForecastRequest& request) {
    std::string param;
    auto f = service_->ForecastNow(request, &param);
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f.ok() ? *f : Forecast{};
  }

  // The status and param of a request that must fail.
  std::pair<core::Status, std::string> Fails(const ForecastRequest& request) {
    std::string param;
    auto f = service_->ForecastNow(request, &param);
    EXPECT_FALSE(f.ok());
    return {f.status(), param};
  }

  // What the model predicts from the bars ending with `bars.back()`, as sorted prices.
  std::vector<double> Expected(const std::vector<Candle>& bars) {
    const LstmShape shape = TinyShape();
    const int needed = FirstValidRow() + shape.window;
    std::vector<Candle> tail(bars.end() - needed, bars.end());
    std::vector<float> features = ComputeFeatures(tail);
    Normalize(model_.info.norm, features);
    std::vector<float> window(shape.window * kFeatureCount);
    Window(features, needed - 1, shape.window, window);
    auto stored = ReadModel(models_dir_ + "/btcusdt-4h/model.int8.safetensors");
    EXPECT_TRUE(stored.ok());
    auto engine = LstmEngine::Create(stored->weights, Precision::kInt8);
    EXPECT_TRUE(engine.ok());
    std::vector<float> out(shape.outputs());
    (*engine)->Run(window, 1, out);
    std::vector<double> prices(shape.outputs());
    QuantilesToPrices(tail.back().close, out, shape.horizon, shape.num_quantiles,
                      model_.info.norm.target_scale, prices);
    return prices;
  }

  store::testing::TempDir dir_;
  store::testing::TestDatabase db_;
  std::unique_ptr<CandleStore> candles_;
  std::string models_dir_;
  ForecastModel model_ = TinyModel();
  std::unique_ptr<models::Repository> repository_;
  std::vector<Candle> bars_;
  std::atomic<int64_t> now_ms_{0};
  std::unique_ptr<ForecastService> service_;
};

TEST_F(ForecastServiceTest, ForecastsFromTheNewestWindowWithTimesAndFreshness) {
  Forecast f = Ok({.symbol = "btcusdt", .interval = "4h"});
  EXPECT_EQ(f.symbol, "BTCUSDT");
  EXPECT_EQ(f.model_name, "btcusdt-4h");
  EXPECT_EQ(f.model_version, 1);
  EXPECT_EQ(f.precision, Precision::kInt8);
  EXPECT_EQ(f.model_horizon, 4);
  EXPECT_THAT(f.quantiles, ::testing::ElementsAre(0.1, 0.5, 0.9));
  const Candle& last = bars_.back();
  EXPECT_EQ(f.data.last_open_ms, last.open_time_ms);
  EXPECT_EQ(f.data.last_close_ms, last.open_time_ms + kFourHoursMs);
  EXPECT_DOUBLE_EQ(f.data.last_close, last.close);
  EXPECT_EQ(f.data.age_s, 90);
  EXPECT_FALSE(f.data.partial_bar);
  EXPECT_EQ(f.data.gap_bars, 0);
  EXPECT_EQ(f.data.first_open_ms, bars_[kBars - FirstValidRow() - TinyShape().window].open_time_ms);
  EXPECT_EQ(f.skill_json, nullptr);

  std::vector<double> expected = Expected(bars_);
  ASSERT_EQ(f.steps.size(), 4u);
  for (int h = 1; h <= 4; ++h) {
    const ForecastStep& s = f.steps[h - 1];
    EXPECT_EQ(s.h, h);
    EXPECT_EQ(s.open_time_ms, last.open_time_ms + h * kFourHoursMs);
    EXPECT_EQ(s.close_time_ms, s.open_time_ms + kFourHoursMs);
    ASSERT_EQ(s.prices.size(), 3u);
    for (int q = 0; q < 3; ++q) EXPECT_NEAR(s.prices[q], expected[(h - 1) * 3 + q], 1e-6);
    EXPECT_LE(s.prices[0], s.prices[1]);
    EXPECT_LE(s.prices[1], s.prices[2]);
  }
}

TEST_F(ForecastServiceTest, HorizonAndQuantilesSelectASubset) {
  Forecast all = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  Forecast f = Ok({.symbol = "BTCUSDT", .interval = "4h", .horizon = 2, .quantiles = {0.9, 0.1}});
  EXPECT_THAT(f.quantiles, ::testing::ElementsAre(0.1, 0.9));
  ASSERT_EQ(f.steps.size(), 2u);
  for (int h = 0; h < 2; ++h) {
    ASSERT_EQ(f.steps[h].prices.size(), 2u);
    EXPECT_DOUBLE_EQ(f.steps[h].prices[0], all.steps[h].prices[0]);
    EXPECT_DOUBLE_EQ(f.steps[h].prices[1], all.steps[h].prices[2]);
  }
}

TEST_F(ForecastServiceTest, BadRequestsNameTheAllowedValues) {
  auto [symbol, symbol_param] = Fails({.symbol = "BTC/USDT", .interval = "4h"});
  EXPECT_EQ(symbol.code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(symbol_param, "symbol");
  EXPECT_THAT(symbol.message(), HasSubstr("BTCUSDT"));

  auto [unknown, unknown_param] = Fails({.symbol = "ETHUSDT", .interval = "4h"});
  EXPECT_EQ(unknown.code(), core::StatusCode::kNotFound);
  EXPECT_EQ(unknown_param, "symbol");
  EXPECT_THAT(unknown.message(), HasSubstr("symbols with a forecast model: BTCUSDT"));

  auto [interval, interval_param] = Fails({.symbol = "BTCUSDT", .interval = "1h"});
  EXPECT_EQ(interval.code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(interval_param, "interval");
  EXPECT_THAT(interval.message(), HasSubstr("intervals with a model for BTCUSDT: 4h"));

  auto [bogus, bogus_param] = Fails({.symbol = "BTCUSDT", .interval = "7h"});
  EXPECT_EQ(bogus_param, "interval");
  EXPECT_THAT(bogus.message(), HasSubstr("4h"));

  auto [horizon, horizon_param] = Fails({.symbol = "BTCUSDT", .interval = "4h", .horizon = 5});
  EXPECT_EQ(horizon.code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(horizon_param, "horizon");
  EXPECT_THAT(horizon.message(), HasSubstr("1..4"));

  auto [quantile, quantile_param] =
      Fails({.symbol = "BTCUSDT", .interval = "4h", .quantiles = {0.25}});
  EXPECT_EQ(quantile_param, "quantiles");
  EXPECT_THAT(quantile.message(), HasSubstr("0.1, 0.5, 0.9"));
}

TEST_F(ForecastServiceTest, TooFewCandlesSayHowToLoadThem) {
  testing::WriteModelDir(models_dir_, "ethusdt-4h", model_, false, true);
  auto [none, none_param] = Fails({.symbol = "ETHUSDT", .interval = "4h"});
  EXPECT_EQ(none.code(), core::StatusCode::kFailedPrecondition);
  EXPECT_THAT(none.message(), HasSubstr("megaserve data import"));
  EXPECT_THAT(none.message(), HasSubstr("megaserve data sync"));

  Upsert(SyntheticCandles(20), "ETHUSDT");
  auto [few, few_param] = Fails({.symbol = "ETHUSDT", .interval = "4h"});
  EXPECT_EQ(few.code(), core::StatusCode::kFailedPrecondition);
  EXPECT_THAT(few.message(), HasSubstr("20 complete candles"));
  EXPECT_THAT(few.message(), HasSubstr("at least 45"));
}

TEST_F(ForecastServiceTest, WindowFollowsNewPartialAndClosingBars) {
  Forecast first = Ok({.symbol = "BTCUSDT", .interval = "4h"});

  // A newer closed bar: the next forecast starts from it.
  std::vector<Candle> more = SyntheticCandles(kBars + 1);
  more.back().close = bars_.back().close * 1.05;
  more.back().high = std::max(more.back().high, more.back().close);
  Upsert({more.back()});
  now_ms_ = more.back().open_time_ms + kFourHoursMs + 1000;
  Forecast second = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  EXPECT_EQ(second.data.last_open_ms, first.data.last_open_ms + kFourHoursMs);
  EXPECT_GT(second.data.candles_version, first.data.candles_version);
  std::vector<double> expected = Expected(more);
  EXPECT_NEAR(second.steps[0].prices[1], expected[1], 1e-6);

  // A bar still open (by the clock) is not used, and is reported.
  Candle open = SyntheticCandles(kBars + 2).back();
  Upsert({open});
  now_ms_ = open.open_time_ms + 1000;
  Forecast third = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  EXPECT_TRUE(third.data.partial_bar);
  EXPECT_EQ(third.data.last_open_ms, second.data.last_open_ms);

  // Once it closes it is used, though nothing was written since.
  now_ms_ = open.open_time_ms + kFourHoursMs;
  Forecast fourth = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  EXPECT_FALSE(fourth.data.partial_bar);
  EXPECT_EQ(fourth.data.last_open_ms, open.open_time_ms);
  EXPECT_EQ(fourth.data.age_s, 0);
}

TEST_F(ForecastServiceTest, AStoredPartialBarWhoseIntervalPassedDoesNotForceRebuilds) {
  // A file's last row is stored as partial; read long after its interval, it stays partial
  // until a newer bar arrives, so the window built without it is reused meanwhile.
  Candle last = SyntheticCandles(kBars + 1).back();
  last.partial = true;
  Upsert({last});
  now_ms_ = last.open_time_ms + 100 * kFourHoursMs;
  std::string param;
  auto a = service_->Prepare({.symbol = "BTCUSDT", .interval = "4h"}, &param);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  now_ms_ = now_ms_ + 1000;
  auto b = service_->Prepare({.symbol = "BTCUSDT", .interval = "4h"}, &param);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->window.get(), b->window.get()) << "the window was rebuilt";
  Forecast f = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  EXPECT_TRUE(f.data.partial_bar);
  EXPECT_EQ(f.data.last_open_ms, bars_.back().open_time_ms);
}

TEST_F(ForecastServiceTest, PrepareIfWarmOnlyServesALoadedModelsFreshWindow) {
  const ForecastRequest request{.symbol = "BTCUSDT", .interval = "4h"};
  auto cold = service_->PrepareIfWarm(request);
  ASSERT_FALSE(cold.ok());
  EXPECT_EQ(cold.status().code(), core::StatusCode::kUnavailable);
  EXPECT_EQ(repository_->Info("btcusdt-4h")->state, models::ModelState::kUnavailable);

  std::string param;
  auto prepared = service_->Prepare(request, &param);
  ASSERT_TRUE(prepared.ok()) << prepared.status().ToString();
  auto warm = service_->PrepareIfWarm(request);
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_EQ(warm->window.get(), prepared->window.get());

  // A new candle makes the window stale: the warm path steps aside until Prepare rebuilds it.
  Upsert({SyntheticCandles(kBars + 1).back()});
  now_ms_ = SyntheticCandles(kBars + 1).back().open_time_ms + kFourHoursMs + 1000;
  EXPECT_EQ(service_->PrepareIfWarm(request).status().code(), core::StatusCode::kUnavailable);
  ASSERT_TRUE(service_->Prepare(request, &param).ok());
  EXPECT_TRUE(service_->PrepareIfWarm(request).ok());
  EXPECT_FALSE(service_->PrepareIfWarm({.symbol = "BTCUSDT", .interval = "5h"}).ok());
}

TEST_F(ForecastServiceTest, ReportsGapsInTheWindow) {
  std::vector<Candle> gappy = SyntheticCandles(30, testing::kJan2024Ms + 200 * kFourHoursMs);
  // 30 bars, then 3 missing, then 30 more: the window's 45 bars span the gap.
  std::vector<Candle> later = SyntheticCandles(30, gappy.back().open_time_ms + 4 * kFourHoursMs);
  Upsert(gappy);
  Upsert(later);
  now_ms_ = later.back().open_time_ms + kFourHoursMs;
  Forecast f = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  EXPECT_EQ(f.data.gap_bars, 3);
}

TEST_F(ForecastServiceTest, JsonCarriesSkillOrANote) {
  Forecast f = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  rapidjson::Document d;
  std::string json = ForecastJson(f);
  d.Parse(json.c_str());
  ASSERT_FALSE(d.HasParseError()) << json;
  EXPECT_STREQ(d["object"].GetString(), "forecast");
  EXPECT_STREQ(d["model"]["precision"].GetString(), "int8");
  EXPECT_TRUE(d["skill"].IsNull());
  EXPECT_THAT(d["skill_note"].GetString(), HasSubstr("megaserve backtest"));
  ASSERT_EQ(d["steps"].Size(), 4u);
  EXPECT_TRUE(d["steps"][0]["prices"].HasMember("p10"));
  EXPECT_TRUE(d["steps"][0]["prices"].HasMember("p90"));
  EXPECT_EQ(d["data"]["last_bar_open_time_ms"].GetInt64(), bars_.back().open_time_ms);

  ForecastModel empty_backtest = model_;  // an empty summary counts as none
  empty_backtest.info.backtest_json = "{}";
  testing::WriteModelDir(models_dir_, "btcusdt-4h", empty_backtest, false, true);
  ASSERT_TRUE(repository_->Load("btcusdt-4h").ok());
  EXPECT_EQ(Ok({.symbol = "BTCUSDT", .interval = "4h"}).skill_json, nullptr);

  ForecastModel tested = model_;
  tested.info.backtest_json = R"({"origins":12,"horizons":[{"h":1,"skill_vs_persistence":-0.02}]})";
  testing::WriteModelDir(models_dir_, "btcusdt-4h", tested, false, true);
  ASSERT_TRUE(repository_->Load("btcusdt-4h").ok());
  Forecast with_skill = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  ASSERT_NE(with_skill.skill_json, nullptr);
  EXPECT_EQ(*with_skill.skill_json, tested.info.backtest_json);
  json = ForecastJson(with_skill);
  d.Parse(json.c_str());
  ASSERT_FALSE(d.HasParseError()) << json;
  EXPECT_EQ(d["skill"]["origins"].GetInt(), 12);
  EXPECT_FALSE(d.HasMember("skill_note"));
}

TEST_F(ForecastServiceTest, ConcurrentRunsAllAnswer) {
  constexpr int kRequests = 24;
  std::vector<std::promise<core::Result<Forecast>>> promises(kRequests);
  std::vector<PreparedForecast> prepared;
  for (int i = 0; i < kRequests; ++i) {
    auto p = service_->Prepare({.symbol = "BTCUSDT", .interval = "4h"}, nullptr);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    prepared.push_back(std::move(*p));
  }
  for (int i = 0; i < kRequests; ++i) {
    service_->Run(std::move(prepared[i]), {}, [&promises, i](core::Result<Forecast> r) {
      promises[i].set_value(std::move(r));
    });
  }
  Forecast reference = Ok({.symbol = "BTCUSDT", .interval = "4h"});
  for (auto& promise : promises) {
    auto r = promise.get_future().get();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_DOUBLE_EQ(r->steps[3].prices[2], reference.steps[3].prices[2]);
  }
}

TEST_F(ForecastServiceTest, AvailableListsForecastModelsOnly) {
  testing::WriteModelDir(models_dir_, "ethusdt-1d", model_, true, false);
  std::filesystem::create_directories(models_dir_ + "/echo-4h");
  std::ofstream(models_dir_ + "/echo-4h/config.toml") << "backend = \"echo\"\n";
  auto series = service_->Available();
  ASSERT_EQ(series.size(), 2u);
  EXPECT_EQ(series[0].symbol, "BTCUSDT");
  EXPECT_EQ(series[0].interval, "4h");
  EXPECT_EQ(series[1].symbol, "ETHUSDT");
  EXPECT_EQ(series[1].model, "ethusdt-1d");
}

// Every field of a hand-made forecast reads back exactly: strings that need escaping, doubles
// (whole, tiny, huge, shortest-digit) bit for bit, timestamps, and null for what JSON cannot
// hold.
TEST(ForecastJsonTest, EveryFieldReadsBack) {
  Forecast f;
  f.symbol = "BTCUSDT";
  f.interval = "4h";
  f.quantiles = {0.025, 0.5, 0.975};
  f.model_name = "odd \"name\" \\ with\ttab\x01";
  f.model_version = 7;
  f.precision = Precision::kFp32;
  f.kernel = "avx2";
  f.model_horizon = 6;
  f.trained_at_ms = 0;  // unknown: null
  f.made_at_ms = 1'767'700'800'123;
  f.data = {.last_open_ms = 1'767'686'400'000,
            .last_close_ms = 1'767'700'800'000,
            .last_close = 93840.0,
            .age_s = 42,
            .partial_bar = true,
            .first_open_ms = -14'400'000,
            .gap_bars = 3,
            .candles_version = 1};
  const std::vector<std::vector<double>> prices = {
      {0.1 + 0.2, 1e-7, 93890.78170658028}, {1e21, 5e-324, -0.0}, {2.0, 1.0 / 3, 123456789.0}};
  for (int h = 1; h <= 3; ++h) {
    f.steps.push_back({h, 1'767'700'800'000 + h * kFourHoursMs,
                       1'767'700'800'000 + (h + 1) * kFourHoursMs,
                       FewValues<double>(prices[h - 1].begin(), prices[h - 1].end())});
  }
  const std::string json = ForecastJson(f);
  rapidjson::Document d;
  d.Parse<rapidjson::kParseFullPrecisionFlag>(json.c_str());
  ASSERT_FALSE(d.HasParseError()) << json;
  EXPECT_STREQ(d["symbol"].GetString(), "BTCUSDT");
  EXPECT_EQ(d["horizon"].GetInt(), 3);
  ASSERT_EQ(d["quantiles"].Size(), 3u);
  EXPECT_EQ(d["quantiles"][0].GetDouble(), 0.025);
  EXPECT_STREQ(d["created_at"].GetString(), "2026-01-06T12:00:00Z");
  EXPECT_EQ(std::string(d["model"]["name"].GetString(), d["model"]["name"].GetStringLength()),
            f.model_name);
  EXPECT_EQ(d["model"]["version"].GetInt(), 7);
  EXPECT_STREQ(d["model"]["precision"].GetString(), "fp32");
  EXPECT_TRUE(d["model"]["trained_at"].IsNull());
  const auto& data = d["data"];
  EXPECT_STREQ(data["last_bar_open_time"].GetString(), "2026-01-06T08:00:00Z");
  EXPECT_EQ(data["last_bar_open_time_ms"].GetInt64(), f.data.last_open_ms);
  EXPECT_STREQ(data["last_bar_close_time"].GetString(), "2026-01-06T12:00:00Z");
  EXPECT_TRUE(data["last_close"].IsDouble());  // a whole number stays a float: "93840.0"
  EXPECT_THAT(json, HasSubstr(R"("last_close":93840.0,)"));
  EXPECT_EQ(data["age_seconds"].GetInt64(), 42);
  EXPECT_TRUE(data["partial_bar"].GetBool());
  EXPECT_STREQ(data["window_start"].GetString(), "1969-12-31T20:00:00Z");
  EXPECT_EQ(data["gap_bars"].GetInt64(), 3);
  EXPECT_TRUE(data["gaps"].GetBool());
  ASSERT_EQ(d["steps"].Size(), 3u);
  for (int h = 1; h <= 3; ++h) {
    const auto& step = d["steps"][h - 1];
    EXPECT_EQ(step["h"].GetInt(), h);
    EXPECT_EQ(step["open_time_ms"].GetInt64(), f.steps[h - 1].open_time_ms);
    EXPECT_EQ(step["close_time"].GetString(), core::Rfc3339(f.steps[h - 1].close_time_ms * 1000));
    int i = 0;
    for (const char* key : {"p2.5", "p50", "p97.5"}) {
      ASSERT_TRUE(step["prices"].HasMember(key)) << json;
      const double v = step["prices"][key].GetDouble();
      EXPECT_EQ(std::bit_cast<uint64_t>(v), std::bit_cast<uint64_t>(prices[h - 1][i]))
          << key << " " << v << " in " << json;
      ++i;
    }
  }
  EXPECT_TRUE(d["skill"].IsNull());

  f.steps[0].prices[1] = std::numeric_limits<double>::quiet_NaN();
  f.skill_json = std::make_shared<const std::string>(R"({"origins":12})");
  d.Parse<rapidjson::kParseFullPrecisionFlag>(ForecastJson(f).c_str());
  ASSERT_FALSE(d.HasParseError());
  EXPECT_TRUE(d["steps"][0]["prices"]["p50"].IsNull());
  EXPECT_EQ(d["skill"]["origins"].GetInt(), 12);
}

// AppendForecastJson keeps what the string held and writes the same text after it, also when
// the text outgrows the room it first makes (here 99 quantiles a step).
TEST(ForecastJsonTest, AppendsAfterTextAndGrowsPastItsEstimate) {
  Forecast f;
  f.symbol = "BTCUSDT";
  f.interval = "1h";
  f.model_name = "many";
  f.kernel = "generic";
  for (int q = 1; q <= 99; ++q) f.quantiles.push_back(q / 100.0);
  for (int h = 1; h <= 2; ++h) {
    FewValues<double> prices;
    for (int q = 1; q <= 99; ++q) prices.push_back(90000.0 + h * 1000 + q / 7.0);
    f.steps.push_back({h, h * 3'600'000LL, (h + 1) * 3'600'000LL, prices});
  }
  const std::string alone = ForecastJson(f);
  EXPECT_GT(alone.size(), 1024u + 256 * 2 + 256);  // past AppendForecastJson's first estimate
  std::string out = "prefix:";
  AppendForecastJson(f, out);
  EXPECT_EQ(out, "prefix:" + alone);
  rapidjson::Document d;
  d.Parse<rapidjson::kParseFullPrecisionFlag>(alone.c_str());
  ASSERT_FALSE(d.HasParseError()) << alone;
  ASSERT_EQ(d["steps"].Size(), 2u);
  EXPECT_EQ(d["steps"][1]["prices"]["p99"].GetDouble(), f.steps[1].prices[98]);
  EXPECT_EQ(d["steps"][1]["prices"].MemberCount(), 99u);
}

TEST(QuantileKeyTest, NamesPercentiles) {
  EXPECT_EQ(QuantileKey(0.1), "p10");
  EXPECT_EQ(QuantileKey(0.5), "p50");
  EXPECT_EQ(QuantileKey(0.025), "p2.5");
  EXPECT_EQ(QuantileKey(0.975), "p97.5");
  EXPECT_EQ(QuantileKey(0.123456789), "p12.3457");
  EXPECT_EQ(QuantileKey(1e-9), "p0");
  EXPECT_EQ(QuantileKey(1), "p100");
}

}  // namespace
}  // namespace megaserve::forecast
