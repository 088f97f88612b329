#include "forecast/backtest.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "forecast/candle_files.h"
#include "forecast/features.h"

namespace megaserve::forecast {
namespace {

constexpr int64_t kHour = 3'600'000;

std::vector<Candle> Series(const std::vector<double>& closes, int64_t step_ms = kHour) {
  std::vector<Candle> out;
  for (std::size_t i = 0; i < closes.size(); ++i) {
    double c = closes[i];
    double prev = i > 0 ? closes[i - 1] : c;
    out.push_back({static_cast<int64_t>(i) * step_ms, prev, std::max(prev, c) * 1.001,
                   std::min(prev, c) * 0.999, c, 10.0 + static_cast<double>(i % 7), false});
  }
  return out;
}

// p50 = close[t] + 1, band [close[t] - 2, close[t] + 2]: uses bar t only.
Predictor OffsetPredictor() {
  return [](std::span<const Candle> candles, std::span<const int64_t> origins, int horizon,
            std::span<QuantileForecast> out) {
    for (std::size_t i = 0; i < origins.size(); ++i) {
      double c = candles[origins[i]].close;
      for (int h = 0; h < horizon; ++h) out[i * horizon + h] = {c - 2, c + 1, c + 2};
    }
    return core::Status::Ok();
  };
}

// The tiny series: closes 100 102 101 105 104 108, origins t = 1..3, H = 2, drift window 2.
BacktestParams TinyParams() {
  BacktestParams p;
  p.from_ms = 1 * kHour;
  p.to_ms = 3 * kHour;
  p.horizon = 2;
  p.drift_window = 2;
  return p;
}

TEST(BacktestTest, MetricsMatchHandComputedValuesOnATinySeries) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  auto r = RunBacktest(candles, TinyParams(), OffsetPredictor());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->origins, 3);
  EXPECT_EQ(r->first_origin_ms, kHour);
  EXPECT_EQ(r->last_origin_ms, 3 * kHour);
  ASSERT_EQ(r->steps.size(), 2u);

  // Step 1: (origin close -> actual) 102 -> 101, 101 -> 105, 105 -> 104.
  const StepMetrics& s1 = r->steps[0];
  EXPECT_EQ(s1.h, 1);
  EXPECT_EQ(s1.count, 3);
  // p50 103, 102, 106: errors +2, -3, +2.
  EXPECT_DOUBLE_EQ(s1.model.mae, 7.0 / 3);
  EXPECT_DOUBLE_EQ(s1.model.rmse, std::sqrt(17.0 / 3));
  EXPECT_DOUBLE_EQ(s1.model.mape, 100.0 * (2.0 / 101 + 3.0 / 105 + 2.0 / 104) / 3);
  // Predicted up every time; the closes went down, up, down.
  EXPECT_EQ(s1.direction_count, 3);
  EXPECT_DOUBLE_EQ(s1.directional_accuracy, 100.0 / 3);
  // Bands [100, 104], [99, 103], [103, 107] hold 101 and 104, not 105.
  EXPECT_DOUBLE_EQ(s1.coverage_p10_p90, 200.0 / 3);
  // Pinball per origin (q = .1, .5, .9): (0.1 + 1 + 0.3), (0.6 + 1.5 + 1.8), (0.1 + 1 + 0.3).
  EXPECT_NEAR(s1.pinball, (1.4 + 3.9 + 1.4) / 9, 1e-12);
  // Persistence errors 1, 4, 1.
  EXPECT_DOUBLE_EQ(s1.persistence.mae, 2.0);
  EXPECT_DOUBLE_EQ(s1.persistence.rmse, std::sqrt(6.0));
  EXPECT_DOUBLE_EQ(s1.persistence.mape, 100.0 * (1.0 / 101 + 4.0 / 105 + 1.0 / 104) / 3);
  EXPECT_DOUBLE_EQ(s1.skill_vs_persistence, 1 - (7.0 / 3) / 2.0);
  // Drift over the 2 returns ending at t (only 1 exists at t = 1).
  double d1 = 102 * std::exp(std::log(102.0 / 100));
  double d2 = 101 * std::exp(std::log(101.0 / 100) / 2);
  double d3 = 105 * std::exp(std::log(105.0 / 102) / 2);
  double drift_mae = (std::fabs(d1 - 101) + std::fabs(d2 - 105) + std::fabs(d3 - 104)) / 3;
  EXPECT_NEAR(s1.drift.mae, drift_mae, 1e-9);
  EXPECT_NEAR(s1.skill_vs_drift, 1 - (7.0 / 3) / drift_mae, 1e-9);

  // Step 2: 102 -> 105, 101 -> 104, 105 -> 108; p50 103, 102, 106: errors -2, -2, -2.
  const StepMetrics& s2 = r->steps[1];
  EXPECT_EQ(s2.count, 3);
  EXPECT_DOUBLE_EQ(s2.model.mae, 2.0);
  EXPECT_DOUBLE_EQ(s2.model.rmse, 2.0);
  EXPECT_DOUBLE_EQ(s2.persistence.mae, 3.0);
  EXPECT_DOUBLE_EQ(s2.directional_accuracy, 100.0);
  EXPECT_DOUBLE_EQ(s2.coverage_p10_p90, 0.0);  // every actual is 1 above p90
  double e1 = 102 * std::exp(2 * std::log(102.0 / 100)) - 105;
  double e2 = 101 * std::exp(2 * std::log(101.0 / 100) / 2) - 104;
  double e3 = 105 * std::exp(2 * std::log(105.0 / 102) / 2) - 108;
  EXPECT_NEAR(s2.drift.mae, (std::fabs(e1) + std::fabs(e2) + std::fabs(e3)) / 3, 1e-9);
  EXPECT_NEAR(s2.drift.rmse, std::sqrt((e1 * e1 + e2 * e2 + e3 * e3) / 3), 1e-9);
  EXPECT_DOUBLE_EQ(s2.skill_vs_persistence, 1 - 2.0 / 3.0);
}

TEST(BacktestTest, LastOriginsScoreOnlyTheStepsThatHaveActuals) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  BacktestParams p = TinyParams();
  p.from_ms = 3 * kHour;
  p.to_ms = 10 * kHour;  // origins 3 and 4; bar 5 has nothing after it
  auto r = RunBacktest(candles, p, OffsetPredictor());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->origins, 2);
  EXPECT_EQ(r->steps[0].count, 2);  // 3 -> 4, 4 -> 5
  EXPECT_EQ(r->steps[1].count, 1);  // 3 -> 5
  EXPECT_DOUBLE_EQ(r->steps[1].persistence.mae, 3.0);
}

TEST(BacktestTest, UnmovedClosesAreLeftOutOfDirectionAndFlatForecastsCountAsWrong) {
  // Closes 100 100 103: step 1 from bar 0 did not move, from bar 1 it rose.
  auto candles = Series({100, 100, 103});
  BacktestParams p;
  p.from_ms = 0;
  p.to_ms = kHour;
  Predictor flat = [](std::span<const Candle> c, std::span<const int64_t> origins, int horizon,
                      std::span<QuantileForecast> out) {
    for (std::size_t i = 0; i < origins.size(); ++i) {
      double v = c[origins[i]].close;
      for (int h = 0; h < horizon; ++h) out[i * horizon + h] = {v - 1, v, v + 1};
    }
    return core::Status::Ok();
  };
  auto r = RunBacktest(candles, p, flat);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->steps[0].count, 2);
  EXPECT_EQ(r->steps[0].direction_count, 1);
  EXPECT_DOUBLE_EQ(r->steps[0].directional_accuracy, 0.0);
  // A model that is persistence has no skill against it.
  EXPECT_DOUBLE_EQ(r->steps[0].skill_vs_persistence, 0.0);
}

TEST(BacktestTest, BaselinesAloneNeedNoPredictor) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  auto r = RunBacktest(candles, TinyParams(), Predictor{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->baseline_only);
  EXPECT_DOUBLE_EQ(r->steps[0].persistence.mae, 2.0);
  EXPECT_DOUBLE_EQ(r->steps[0].model.mae, 0.0);
  EXPECT_DOUBLE_EQ(r->steps[0].skill_vs_persistence, 0.0);
}

TEST(BacktestTest, TargetsPastAGapAreSkippedWhenTheIntervalIsGiven) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  for (std::size_t i = 3; i < candles.size(); ++i) candles[i].open_time_ms += kHour;  // gap
  BacktestParams p = TinyParams();
  p.to_ms = 4 * kHour;  // bar 3 now opens at 4h
  p.interval_ms = kHour;
  auto r = RunBacktest(candles, p, Predictor{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // Step 1: 1 -> 2 is contiguous, 2 -> 3 crosses the gap, 3 -> 4 is contiguous.
  EXPECT_EQ(r->steps[0].count, 2);
  EXPECT_EQ(r->steps[0].skipped_gaps, 1);
  EXPECT_DOUBLE_EQ(r->steps[0].persistence.mae, 1.0);
  p.interval_ms = 0;
  r = RunBacktest(candles, p, Predictor{});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->steps[0].count, 3);
}

TEST(BacktestTest, APredictorThatPeeksAtLaterBarsIsCaught) {
  auto candles = Series({100, 102, 101, 105, 104, 108, 107, 109, 111, 110});
  // "Forecasts" the actual close: perfect scores, and worthless.
  Predictor peek = [](std::span<const Candle> c, std::span<const int64_t> origins, int horizon,
                      std::span<QuantileForecast> out) {
    for (std::size_t i = 0; i < origins.size(); ++i) {
      for (int h = 1; h <= horizon; ++h) {
        std::size_t t = std::min(c.size() - 1, static_cast<std::size_t>(origins[i] + h));
        double y = c[t].close;
        out[i * horizon + h - 1] = {y - 1, y, y + 1};
      }
    }
    return core::Status::Ok();
  };
  BacktestParams p;
  p.from_ms = 0;
  p.to_ms = 8 * kHour;
  p.horizon = 2;
  auto r = RunBacktest(candles, p, peek);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("look-ahead"), std::string::npos) << r.status().message();

  // With the check off it would have scored a perfect MAE: the check is what stops it.
  p.lookahead_checks = 0;
  r = RunBacktest(candles, p, peek);
  ASSERT_TRUE(r.ok());
  EXPECT_DOUBLE_EQ(r->steps[0].model.mae, 0.0);

  // Peeking at a far bar only (the 5th next) is caught as well.
  Predictor far_peek = [](std::span<const Candle> c, std::span<const int64_t> origins, int horizon,
                          std::span<QuantileForecast> out) {
    for (std::size_t i = 0; i < origins.size(); ++i) {
      std::size_t t = std::min(c.size() - 1, static_cast<std::size_t>(origins[i] + 5));
      double v = c[origins[i]].close + (c[t].close > 105 ? 1 : -1);
      for (int h = 0; h < horizon; ++h) out[i * horizon + h] = {v - 1, v, v + 1};
    }
    return core::Status::Ok();
  };
  p.lookahead_checks = 4;
  r = RunBacktest(candles, p, far_peek);
  EXPECT_EQ(r.status().code(), core::StatusCode::kFailedPrecondition) << r.status().ToString();

  // An honest predictor passes the same check.
  r = RunBacktest(candles, p, OffsetPredictor());
  EXPECT_TRUE(r.ok()) << r.status().ToString();
}

// A geometric random walk with N(0, sigma) log steps, and a predictor whose band is the true
// conditional quantiles: close[t] * exp(+-z sigma sqrt(h)).
TEST(BacktestTest, CoverageOfKnownWidthBandsMatchesTheirProbability) {
  const double sigma = 0.01;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> step(0.0, sigma);
  std::vector<double> closes = {100};
  for (int i = 1; i < 20000; ++i) closes.push_back(closes.back() * std::exp(step(rng)));
  auto candles = Series(closes);
  auto band = [sigma](double z) {
    return [sigma, z](std::span<const Candle> c, std::span<const int64_t> origins, int horizon,
                      std::span<QuantileForecast> out) {
      for (std::size_t i = 0; i < origins.size(); ++i) {
        double v = c[origins[i]].close;
        for (int h = 1; h <= horizon; ++h) {
          double w = z * sigma * std::sqrt(static_cast<double>(h));
          out[i * horizon + h - 1] = {v * std::exp(-w), v, v * std::exp(w)};
        }
      }
      return core::Status::Ok();
    };
  };
  BacktestParams p;
  p.from_ms = 0;
  p.to_ms = candles.back().open_time_ms;
  p.horizon = 3;
  // z of the 90% quantile: a central 80% band; of the 75% quantile: a central 50% band.
  auto r80 = RunBacktest(candles, p, band(1.2815516));
  auto r50 = RunBacktest(candles, p, band(0.6744898));
  ASSERT_TRUE(r80.ok() && r50.ok());
  for (int h = 0; h < 3; ++h) {
    // Binomial standard error with 20000 draws: 0.3 points at 80%, 0.35 at 50%.
    EXPECT_NEAR(r80->steps[h].coverage_p10_p90, 80.0, 1.2) << "h=" << h + 1;
    EXPECT_NEAR(r50->steps[h].coverage_p10_p90, 50.0, 1.4) << "h=" << h + 1;
    EXPECT_DOUBLE_EQ(r80->steps[h].model.mae, r80->steps[h].persistence.mae);
  }
}

TEST(BacktestTest, RejectsBadInputs) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  BacktestParams p = TinyParams();
  p.horizon = 0;
  EXPECT_EQ(RunBacktest(candles, p, {}).status().code(), core::StatusCode::kInvalidArgument);
  p = TinyParams();
  p.from_ms = 100 * kHour;
  p.to_ms = 200 * kHour;
  auto r = RunBacktest(candles, p, {});
  EXPECT_EQ(r.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("has bars from"), std::string::npos) << r.status().message();
  p = TinyParams();
  p.from_ms = 5 * kHour;
  p.to_ms = 1 * kHour;
  EXPECT_FALSE(RunBacktest(candles, p, {}).ok());

  auto partial = candles;
  partial.back().partial = true;
  r = RunBacktest(partial, TinyParams(), {});
  EXPECT_NE(r.status().message().find("partial"), std::string::npos) << r.status().message();
  auto unsorted = candles;
  std::swap(unsorted[1], unsorted[2]);
  r = RunBacktest(unsorted, TinyParams(), {});
  EXPECT_NE(r.status().message().find("not sorted"), std::string::npos) << r.status().message();

  Predictor crossing = [](std::span<const Candle>, std::span<const int64_t> origins, int horizon,
                          std::span<QuantileForecast> out) {
    for (std::size_t i = 0; i < origins.size() * horizon; ++i) out[i] = {3, 1, 2};
    return core::Status::Ok();
  };
  r = RunBacktest(candles, TinyParams(), crossing);
  EXPECT_NE(r.status().message().find("not finite and ordered"), std::string::npos)
      << r.status().message();
  Predictor failing = [](std::span<const Candle>, std::span<const int64_t>, int,
                         std::span<QuantileForecast>) { return core::Unavailable("engine gone"); };
  r = RunBacktest(candles, TinyParams(), failing);
  EXPECT_EQ(r.status().code(), core::StatusCode::kUnavailable);
}

TEST(BacktestTest, ReportsProgressPerBatch) {
  auto candles = Series(std::vector<double>(20, 100.0));
  BacktestParams p;
  p.from_ms = 0;
  p.to_ms = 100 * kHour;
  p.batch_size = 8;
  std::vector<std::pair<int64_t, int64_t>> calls;
  auto r = RunBacktest(candles, p, OffsetPredictor(),
                       [&](int64_t done, int64_t total) { calls.emplace_back(done, total); });
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(calls.size(), 3u);  // 19 origins in batches of 8
  EXPECT_EQ(calls[0], std::make_pair(int64_t{8}, int64_t{19}));
  EXPECT_EQ(calls[2], std::make_pair(int64_t{19}, int64_t{19}));
}

TEST(BacktestTest, JsonCarriesEveryNumberAndTheCompactSkill) {
  auto candles = Series({100, 102, 101, 105, 104, 108});
  auto r = RunBacktest(candles, TinyParams(), OffsetPredictor());
  ASSERT_TRUE(r.ok());
  BacktestModelMeta meta{"btc-4h", "3", "int8", "BTCUSDT", "4h"};
  rapidjson::Document doc;
  std::string json = BacktestJson(*r, meta);
  ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;
  EXPECT_STREQ(doc["model"]["precision"].GetString(), "int8");
  EXPECT_STREQ(doc["test_from"].GetString(), "1970-01-01T01:00:00Z");
  EXPECT_EQ(doc["test_to_ms"].GetInt64(), 3 * kHour);
  EXPECT_EQ(doc["origins"].GetInt(), 3);
  ASSERT_EQ(doc["steps"].Size(), 2u);
  const auto& s1 = doc["steps"][0];
  EXPECT_NEAR(s1["model"]["mae"].GetDouble(), 7.0 / 3, 1e-6);
  EXPECT_NEAR(s1["persistence"]["rmse"].GetDouble(), std::sqrt(6.0), 1e-6);
  EXPECT_NEAR(s1["pinball"].GetDouble(), 6.7 / 9, 1e-6);
  EXPECT_TRUE(s1["drift"].HasMember("mape"));
  const auto& skill = doc["skill"];
  EXPECT_STREQ(skill["model"].GetString(), "btc-4h");
  ASSERT_EQ(skill["horizons"].Size(), 2u);
  EXPECT_EQ(skill["horizons"][0]["h"].GetInt(), 1);
  EXPECT_NEAR(skill["horizons"][0]["skill_vs_persistence"].GetDouble(), 1 - 7.0 / 6, 1e-4);
  EXPECT_NEAR(skill["horizons"][0]["coverage_p10_p90"].GetDouble(), 200.0 / 3, 1e-4);

  rapidjson::Document compact;
  std::string text = BacktestSkillJson(*r, meta);
  ASSERT_FALSE(compact.Parse(text.c_str()).HasParseError()) << text;
  EXPECT_EQ(compact["horizons"][1]["mae"].GetDouble(), 2.0);
  EXPECT_EQ(compact["horizons"][1]["mae_persistence"].GetDouble(), 3.0);
  EXPECT_FALSE(compact.HasMember("steps"));

  // Without a model the compact form has only the baselines.
  auto baseline = RunBacktest(candles, TinyParams(), {});
  ASSERT_TRUE(baseline.ok());
  ASSERT_FALSE(compact.Parse(BacktestSkillJson(*baseline, {}).c_str()).HasParseError());
  EXPECT_FALSE(compact["horizons"][0].HasMember("skill_vs_persistence"));
  EXPECT_FALSE(compact.HasMember("model"));
}

TEST(BacktestTest, QuantilesToPricesMapsAndSortsEachStep) {
  // Two steps, three quantiles, the second step's outputs crossing.
  std::vector<float> out = {-1, 0, 2, 1, -0.5f, 0.25f};
  std::vector<double> prices(6);
  QuantilesToPrices(100, out, 2, 3, 0.01f, prices);
  EXPECT_NEAR(prices[0], 100 * std::exp(-0.01), 1e-6);
  EXPECT_NEAR(prices[1], 100, 1e-9);
  EXPECT_NEAR(prices[2], 100 * std::exp(0.02), 1e-6);
  EXPECT_NEAR(prices[3], 100 * std::exp(-0.005), 1e-6);
  EXPECT_NEAR(prices[4], 100 * std::exp(0.0025), 1e-6);
  EXPECT_NEAR(prices[5], 100 * std::exp(0.01), 1e-6);
}

// A small random model over a synthetic series, for the model Predictor.
ForecastModel TinyModel(uint64_t seed) {
  ForecastModel m;
  LstmShape& s = m.weights.shape;
  s.hidden_size = 8;
  s.num_layers = 2;
  s.horizon = 3;
  s.window = 12;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.4f, 0.4f);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  for (int l = 0; l < s.num_layers; ++l) {
    int in = l == 0 ? s.input_size : s.hidden_size;
    m.weights.layers.push_back({fill(4 * s.hidden_size * in),
                                fill(4 * s.hidden_size * s.hidden_size), fill(4 * s.hidden_size),
                                fill(4 * s.hidden_size)});
  }
  m.weights.head_w = fill(static_cast<std::size_t>(s.outputs()) * s.hidden_size);
  m.weights.head_b = fill(s.outputs());
  m.info.symbol = "BTCUSDT";
  m.info.interval = "1h";
  for (int f = 0; f < kFeatureCount; ++f) {
    m.info.norm.mean[f] = 0.01f * f;
    m.info.norm.std[f] = 0.5f + 0.1f * f;
  }
  m.info.norm.target_scale = 0.01f;
  return m;
}

std::vector<Candle> WalkSeries(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> step(0.0, 0.01);
  std::vector<double> closes = {30000};
  for (int i = 1; i < n; ++i) closes.push_back(closes.back() * std::exp(step(rng)));
  return Series(closes);
}

TEST(ModelPredictorTest, MatchesFeaturesEngineAndPriceMappingOnTheWholeSeries) {
  ForecastModel model = TinyModel(3);
  auto candles = WalkSeries(200, 11);
  auto predictor = MakeModelPredictor(model, Precision::kFp32);
  ASSERT_TRUE(predictor.ok()) << predictor.status().ToString();
  const LstmShape& s = model.weights.shape;
  std::vector<int64_t> origins = {FirstModelOrigin(s.window), 100, 150, 199};
  std::vector<QuantileForecast> got(origins.size() * s.horizon);
  ASSERT_TRUE((*predictor)(candles, origins, s.horizon, got).ok());

  // The same forecast computed the plain way, from features of the whole series.
  std::vector<float> features = ComputeFeatures(candles);
  Normalize(model.info.norm, features);
  auto engine = LstmEngine::Create(model.weights, Precision::kFp32);
  ASSERT_TRUE(engine.ok());
  for (std::size_t i = 0; i < origins.size(); ++i) {
    std::vector<float> in(static_cast<std::size_t>(s.window) * kFeatureCount);
    Window(features, origins[i], s.window, in);
    std::vector<float> out(s.outputs());
    (*engine)->Run(in, 1, out);
    std::vector<double> prices(s.outputs());
    QuantilesToPrices(candles[origins[i]].close, out, s.horizon, 3, 0.01f, prices);
    for (int h = 0; h < s.horizon; ++h) {
      const QuantileForecast& f = got[i * s.horizon + h];
      double tol = 1e-5 * prices[h * 3 + 1];
      EXPECT_NEAR(f.p10, prices[h * 3], tol) << "origin " << origins[i] << " h " << h + 1;
      EXPECT_NEAR(f.p50, prices[h * 3 + 1], tol);
      EXPECT_NEAR(f.p90, prices[h * 3 + 2], tol);
      EXPECT_LE(f.p10, f.p50);
      EXPECT_LE(f.p50, f.p90);
    }
  }
}

TEST(ModelPredictorTest, RunsAWalkForwardBacktestWithoutLookAhead) {
  ForecastModel model = TinyModel(5);
  auto candles = WalkSeries(400, 13);
  for (Precision precision : {Precision::kFp32, Precision::kInt8}) {
    auto predictor = MakeModelPredictor(model, precision);
    ASSERT_TRUE(predictor.ok()) << predictor.status().ToString();
    BacktestParams p;
    p.from_ms = candles[FirstModelOrigin(model.weights.shape.window)].open_time_ms;
    p.to_ms = candles.back().open_time_ms;
    p.horizon = 3;
    p.batch_size = 64;
    p.lookahead_checks = 8;
    auto r = RunBacktest(candles, p, *predictor);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->steps[0].count, 400 - FirstModelOrigin(12) - 1);
    EXPECT_GT(r->steps[2].model.mae, 0);
  }
}

TEST(ModelPredictorTest, RejectsOriginsWithoutAFullWindowAndModelsWithoutTheQuantiles) {
  ForecastModel model = TinyModel(3);
  auto candles = WalkSeries(100, 11);
  auto predictor = MakeModelPredictor(model, Precision::kFp32);
  ASSERT_TRUE(predictor.ok());
  int64_t early = FirstModelOrigin(model.weights.shape.window) - 1;
  std::vector<QuantileForecast> out(3);
  auto s = (*predictor)(candles, std::span<const int64_t>(&early, 1), 3, out);
  EXPECT_EQ(s.code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("fewer than"), std::string::npos) << s.message();
  int64_t ok_origin = early + 1;
  std::vector<QuantileForecast> too_long(4);
  EXPECT_FALSE((*predictor)(candles, std::span<const int64_t>(&ok_origin, 1), 4, too_long).ok());

  model.info.quantiles = {0.05, 0.5, 0.95};
  auto bad = MakeModelPredictor(model, Precision::kFp32);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("0.1"), std::string::npos) << bad.status().message();
}

// The honest baseline on the real data: naive persistence at one 4-hour step, origins in
// 2024-01-01 .. 2025-12-31. The data's README rounds the same figures to 557 USD and 0.69 %.
TEST(BacktestRealDataTest, PersistenceOnTheFourHourFileMatchesTheReadme) {
  const char* src = std::getenv("MEGASERVE_SOURCE_DIR");
  std::filesystem::path dir = std::filesystem::path(src ? src : ".") / ".." / "shared" / "data";
  std::filesystem::path file = dir / "btcusdt_spot_4h.csv";
  if (!std::filesystem::exists(file)) {
    GTEST_SKIP() << "no market data at " << file << " (set MEGASERVE_SOURCE_DIR)";
  }
  auto parsed = ReadCandleFile(file.string());
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  std::vector<Candle> candles = parsed->candles;
  ASSERT_TRUE(candles.back().partial);
  candles.pop_back();
  BacktestParams p;
  p.from_ms = *ParseUtcTimestamp("2024-01-01");
  p.to_ms = *ParseUtcTimestamp("2025-12-31 23:59:59") + 999;
  p.horizon = 6;
  p.interval_ms = 4 * kHour;
  auto r = RunBacktest(candles, p, {});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->origins, 731 * 6);  // 2024 and 2025 have no gaps
  const StepMetrics& s1 = r->steps[0];
  EXPECT_EQ(s1.count, 4386);
  EXPECT_EQ(s1.skipped_gaps, 0);
  EXPECT_NEAR(s1.persistence.mae, 557.24, 0.01);
  EXPECT_NEAR(s1.persistence.mape, 0.6855, 0.0001);
  EXPECT_EQ(std::lround(s1.persistence.mae), 557);          // README: 557 USD
  EXPECT_EQ(std::lround(s1.persistence.mape * 100), 69);    // README: 0.69 %
  EXPECT_NEAR(r->steps[5].persistence.mae, 1428.21, 0.01);  // one day ahead
  EXPECT_GT(r->steps[5].persistence.mae, r->steps[0].persistence.mae);
}

}  // namespace
}  // namespace megaserve::forecast
