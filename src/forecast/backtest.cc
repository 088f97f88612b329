// Walk-forward backtests; see backtest.h.
//
// Scoring. For an origin t (the bar whose close the forecast starts from) and step h, the actual
// is y = close[t+h], and every forecast is compared with it:
//   point errors   |f - y|, (f - y)^2 and |f - y| / y, averaged into MAE, RMSE and MAPE;
//   direction      sign(p50 - close[t]) == sign(y - close[t]), over origins where y != close[t];
//   coverage       p10 <= y <= p90 (a calibrated p10-p90 band holds 80% of actuals);
//   pinball loss   L_q(y, f) = max(q (y - f), (q - 1)(y - f)), averaged over q = 0.1, 0.5, 0.9
//                  (Koenker and Bassett, "Regression Quantiles", Econometrica 1978), the loss the
//                  model is trained with, here in USD.
// Baselines (Hyndman and Athanasopoulos, "Forecasting: Principles and Practice", 3rd ed.,
// section 5.2 "Some simple forecasting methods"): naive persistence f = close[t], and drift
// f = close[t] * exp(h * mu), mu the mean one-step log return over the drift window ending at t
// (the random walk with drift, on log prices, with its drift estimated from recent bars only so
// it never looks ahead). Skill = 1 - MAE_model / MAE_baseline, the MAE form of the skill score
// (Murphy, "Skill Scores Based on the Mean Square Error", Monthly Weather Review 1988).
//
// Look-ahead check. A forecast that uses bars after its origin scores far too well and is
// worthless live. Before scoring, the Predictor is run at a few origins on the real series and
// on a copy whose later bars are altered (prices and volumes scaled); an honest forecast is
// bit-for-bit the same in both.
//
// The model's Predictor computes features only for the bars a batch needs: a feature row depends
// on its own bar and the kVolumeWindow - 1 bars before it (features.h), so the rows of a slice
// that starts FirstValidRow() bars before the first window are the series' rows.
#include "forecast/backtest.h"

#include <fmt/format.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cmath>

#include "core/time_format.h"
#include "forecast/features.h"

namespace megaserve::forecast {
namespace {

constexpr double kQuantiles[3] = {0.1, 0.5, 0.9};

// Running sums of one forecast's point errors.
struct ErrorSums {
  double abs = 0;
  double sq = 0;
  double pct = 0;

  void Add(double forecast, double actual) {
    double e = forecast - actual;
    abs += std::fabs(e);
    sq += e * e;
    pct += std::fabs(e) / std::fabs(actual);
  }
  PointErrors Mean(int64_t n) const {
    if (n == 0) return {};
    return {abs / n, std::sqrt(sq / n), 100.0 * pct / n};
  }
};

struct StepSums {
  int64_t count = 0;
  int64_t skipped_gaps = 0;
  ErrorSums model, persistence, drift;
  int64_t direction_right = 0;
  int64_t direction_count = 0;
  int64_t covered = 0;
  double pinball = 0;
};

double Pinball(double q, double actual, double forecast) {
  double d = actual - forecast;
  return std::max(q * d, (q - 1) * d);
}

int Sign(double x) { return (x > 0) - (x < 0); }

double Skill(double mae, double baseline_mae) {
  return baseline_mae > 0 ? 1.0 - mae / baseline_mae : 0.0;
}

core::Status CheckCandles(std::span<const Candle> candles) {
  for (std::size_t i = 0; i < candles.size(); ++i) {
    if (candles[i].partial) {
      return core::InvalidArgument(
          fmt::format("backtest: bar {} (open time {} ms) is partial; only closed bars can be "
                      "scored",
                      i, candles[i].open_time_ms));
    }
    if (!(candles[i].close > 0) || !std::isfinite(candles[i].close)) {
      return core::InvalidArgument(
          fmt::format("backtest: bar {} has close {}, not a positive price", i, candles[i].close));
    }
    if (i > 0 && candles[i].open_time_ms <= candles[i - 1].open_time_ms) {
      return core::InvalidArgument(
          fmt::format("backtest: bars are not sorted by open time without duplicates (bar {} "
                      "opens at {} ms, bar {} at {} ms)",
                      i - 1, candles[i - 1].open_time_ms, i, candles[i].open_time_ms));
    }
  }
  return core::Status::Ok();
}

// A copy of `candles` whose bars after `origin` are changed (still valid bars).
std::vector<Candle> AlterFuture(std::span<const Candle> candles, int64_t origin) {
  std::vector<Candle> copy(candles.begin(), candles.end());
  for (std::size_t i = origin + 1; i < copy.size(); ++i) {
    Candle& c = copy[i];
    double f = (i % 2 == 0) ? 1.37 : 0.71;
    c.open *= f;
    c.high *= f;
    c.low *= f;
    c.close *= f;
    c.volume = c.volume * 3 + 1;
  }
  return copy;
}

core::Status CheckNoLookAhead(std::span<const Candle> candles, const std::vector<int64_t>& origins,
                              const BacktestParams& params, const Predictor& predictor) {
  int checks = static_cast<int>(std::min<int64_t>(params.lookahead_checks, origins.size()));
  const int h = params.horizon;
  std::vector<QuantileForecast> real(h), altered(h);
  for (int k = 0; k < checks; ++k) {
    // Spread over the range, the first and the last origin included.
    int64_t t = origins[checks == 1 ? 0 : (origins.size() - 1) * k / (checks - 1)];
    std::span<const int64_t> one(&t, 1);
    if (auto s = predictor(candles, one, h, real); !s.ok()) return s;
    std::vector<Candle> changed = AlterFuture(candles, t);
    if (auto s = predictor(changed, one, h, altered); !s.ok()) return s;
    for (int i = 0; i < h; ++i) {
      if (real[i].p10 != altered[i].p10 || real[i].p50 != altered[i].p50 ||
          real[i].p90 != altered[i].p90) {
        return core::Status(
            core::StatusCode::kFailedPrecondition,
            fmt::format("backtest: look-ahead: the forecast from bar {} (open time {} ms) for step "
                        "{} changes when only bars after it change (p50 {} vs {})",
                        t, candles[t].open_time_ms, i + 1, real[i].p50, altered[i].p50));
      }
    }
  }
  return core::Status::Ok();
}

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Writes `value` rounded to `digits` decimals (RapidJSON's SetMaxDecimalPlaces truncates).
void Number(JsonWriter& w, double value, int digits) {
  double scale = std::pow(10.0, digits);
  w.Double(std::round(value * scale) / scale);
}

void WritePoint(JsonWriter& w, const char* name, const PointErrors& e) {
  w.Key(name);
  w.StartObject();
  w.Key("mae");
  Number(w, e.mae, 6);
  w.Key("rmse");
  Number(w, e.rmse, 6);
  w.Key("mape");
  Number(w, e.mape, 6);
  w.EndObject();
}

void WriteString(JsonWriter& w, const char* key, const std::string& value) {
  if (value.empty()) return;
  w.Key(key);
  w.String(value.c_str(), static_cast<rapidjson::SizeType>(value.size()));
}

std::string TimeText(int64_t ms) { return core::Rfc3339(ms * 1000); }

void WriteSkill(JsonWriter& w, const BacktestResult& r, const BacktestModelMeta& meta) {
  w.StartObject();
  WriteString(w, "model", meta.name);
  WriteString(w, "version", meta.version);
  WriteString(w, "precision", meta.precision);
  WriteString(w, "test_from", TimeText(r.from_ms));
  WriteString(w, "test_to", TimeText(r.to_ms));
  w.Key("origins");
  w.Int64(r.origins);
  w.Key("horizons");
  w.StartArray();
  for (const StepMetrics& s : r.steps) {
    w.StartObject();
    w.Key("h");
    w.Int(s.h);
    w.Key("n");
    w.Int64(s.count);
    if (!r.baseline_only) {
      w.Key("mae");
      Number(w, s.model.mae, 4);
    }
    w.Key("mae_persistence");
    Number(w, s.persistence.mae, 4);
    w.Key("mae_drift");
    Number(w, s.drift.mae, 4);
    if (!r.baseline_only) {
      w.Key("skill_vs_persistence");
      Number(w, s.skill_vs_persistence, 4);
      w.Key("skill_vs_drift");
      Number(w, s.skill_vs_drift, 4);
      w.Key("coverage_p10_p90");
      Number(w, s.coverage_p10_p90, 4);
      w.Key("directional_accuracy");
      Number(w, s.directional_accuracy, 4);
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

}  // namespace

core::Result<BacktestResult> RunBacktest(std::span<const Candle> candles,
                                         const BacktestParams& params, const Predictor& predictor,
                                         const BacktestProgressFn& progress) {
  if (params.horizon < 1) {
    return core::InvalidArgument(fmt::format("backtest: horizon {} < 1", params.horizon));
  }
  if (params.drift_window < 1) {
    return core::InvalidArgument(fmt::format("backtest: drift window {} < 1", params.drift_window));
  }
  if (params.batch_size < 1 || params.lookahead_checks < 0 || params.interval_ms < 0) {
    return core::InvalidArgument(
        "backtest: batch size must be >= 1, look-ahead checks and "
        "interval >= 0");
  }
  if (params.from_ms > params.to_ms) {
    return core::InvalidArgument(fmt::format("backtest: test range starts ({}) after it ends ({})",
                                             TimeText(params.from_ms), TimeText(params.to_ms)));
  }
  if (auto s = CheckCandles(candles); !s.ok()) return s;

  const int64_t n = static_cast<int64_t>(candles.size());
  const int H = params.horizon;
  auto first = std::lower_bound(candles.begin(), candles.end(), params.from_ms,
                                [](const Candle& c, int64_t ms) { return c.open_time_ms < ms; });
  std::vector<int64_t> origins;
  for (auto it = first; it != candles.end() && it->open_time_ms <= params.to_ms; ++it) {
    int64_t t = it - candles.begin();
    if (t + 1 < n) origins.push_back(t);  // at least step 1 has an actual
  }
  if (origins.empty()) {
    std::string extent =
        candles.empty() ? std::string("no bars")
                        : fmt::format("bars from {} to {}", TimeText(candles.front().open_time_ms),
                                      TimeText(candles.back().open_time_ms));
    return core::InvalidArgument(
        fmt::format("backtest: no bar in {} .. {} has a later bar to score against (the series "
                    "has {})",
                    TimeText(params.from_ms), TimeText(params.to_ms), extent));
  }

  if (predictor && params.lookahead_checks > 0) {
    if (auto s = CheckNoLookAhead(candles, origins, params, predictor); !s.ok()) return s;
  }

  // log_sum[i] = sum of ln(close[k] / close[k-1]) for k = 1..i, for the drift's O(1) means.
  std::vector<double> log_sum(n, 0.0);
  for (int64_t i = 1; i < n; ++i) {
    log_sum[i] = log_sum[i - 1] + std::log(candles[i].close / candles[i - 1].close);
  }

  std::vector<StepSums> sums(H);
  std::vector<QuantileForecast> forecasts;
  const int64_t total = static_cast<int64_t>(origins.size());
  for (int64_t begin = 0; begin < total; begin += params.batch_size) {
    int64_t end = std::min<int64_t>(total, begin + params.batch_size);
    std::span<const int64_t> batch(origins.data() + begin, end - begin);
    if (predictor) {
      forecasts.assign(batch.size() * H, QuantileForecast{});
      if (auto s = predictor(candles, batch, H, forecasts); !s.ok()) return s;
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const int64_t t = batch[i];
      const double base = candles[t].close;
      const int64_t first_return = std::max<int64_t>(1, t - params.drift_window + 1);
      const double mu = t >= first_return
                            ? (log_sum[t] - log_sum[first_return - 1]) / (t - first_return + 1)
                            : 0.0;
      for (int h = 1; h <= H && t + h < n; ++h) {
        StepSums& s = sums[h - 1];
        if (params.interval_ms > 0 &&
            candles[t + h].open_time_ms - candles[t].open_time_ms != h * params.interval_ms) {
          ++s.skipped_gaps;
          continue;
        }
        const double y = candles[t + h].close;
        ++s.count;
        s.persistence.Add(base, y);
        s.drift.Add(base * std::exp(h * mu), y);
        if (!predictor) continue;
        const QuantileForecast& f = forecasts[i * H + (h - 1)];
        if (!std::isfinite(f.p10) || !std::isfinite(f.p50) || !std::isfinite(f.p90) ||
            f.p10 > f.p50 || f.p50 > f.p90) {
          return core::InvalidArgument(fmt::format(
              "backtest: the forecast from bar {} for step {} is not finite and ordered "
              "(p10 {}, p50 {}, p90 {})",
              t, h, f.p10, f.p50, f.p90));
        }
        s.model.Add(f.p50, y);
        if (int actual = Sign(y - base); actual != 0) {
          ++s.direction_count;
          if (Sign(f.p50 - base) == actual) ++s.direction_right;
        }
        if (f.p10 <= y && y <= f.p90) ++s.covered;
        s.pinball += (Pinball(kQuantiles[0], y, f.p10) + Pinball(kQuantiles[1], y, f.p50) +
                      Pinball(kQuantiles[2], y, f.p90)) /
                     3.0;
      }
    }
    if (progress) progress(end, total);
  }

  BacktestResult r;
  r.from_ms = params.from_ms;
  r.to_ms = params.to_ms;
  r.origins = total;
  r.first_origin_ms = candles[origins.front()].open_time_ms;
  r.last_origin_ms = candles[origins.back()].open_time_ms;
  r.horizon = H;
  r.drift_window = params.drift_window;
  r.baseline_only = !predictor;
  for (int h = 1; h <= H; ++h) {
    const StepSums& s = sums[h - 1];
    StepMetrics m;
    m.h = h;
    m.count = s.count;
    m.skipped_gaps = s.skipped_gaps;
    m.persistence = s.persistence.Mean(s.count);
    m.drift = s.drift.Mean(s.count);
    if (predictor && s.count > 0) {
      m.model = s.model.Mean(s.count);
      m.direction_count = s.direction_count;
      m.directional_accuracy =
          s.direction_count > 0 ? 100.0 * s.direction_right / s.direction_count : 0.0;
      m.coverage_p10_p90 = 100.0 * s.covered / s.count;
      m.pinball = s.pinball / s.count;
      m.skill_vs_persistence = Skill(m.model.mae, m.persistence.mae);
      m.skill_vs_drift = Skill(m.model.mae, m.drift.mae);
    }
    r.steps.push_back(m);
  }
  return r;
}

std::string BacktestSkillJson(const BacktestResult& result, const BacktestModelMeta& meta) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  WriteSkill(w, result, meta);
  return buf.GetString();
}

std::string BacktestJson(const BacktestResult& r, const BacktestModelMeta& meta) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("model");
  w.StartObject();
  WriteString(w, "name", meta.name);
  WriteString(w, "version", meta.version);
  WriteString(w, "precision", meta.precision);
  WriteString(w, "symbol", meta.symbol);
  WriteString(w, "interval", meta.interval);
  w.Key("baseline_only");
  w.Bool(r.baseline_only);
  w.EndObject();
  WriteString(w, "test_from", TimeText(r.from_ms));
  WriteString(w, "test_to", TimeText(r.to_ms));
  w.Key("test_from_ms");
  w.Int64(r.from_ms);
  w.Key("test_to_ms");
  w.Int64(r.to_ms);
  WriteString(w, "first_origin", TimeText(r.first_origin_ms));
  WriteString(w, "last_origin", TimeText(r.last_origin_ms));
  w.Key("origins");
  w.Int64(r.origins);
  w.Key("horizon");
  w.Int(r.horizon);
  w.Key("drift_window");
  w.Int(r.drift_window);
  w.Key("steps");
  w.StartArray();
  for (const StepMetrics& s : r.steps) {
    w.StartObject();
    w.Key("h");
    w.Int(s.h);
    w.Key("n");
    w.Int64(s.count);
    w.Key("skipped_gaps");
    w.Int64(s.skipped_gaps);
    if (!r.baseline_only) {
      WritePoint(w, "model", s.model);
      w.Key("directional_accuracy");
      Number(w, s.directional_accuracy, 6);
      w.Key("direction_count");
      w.Int64(s.direction_count);
      w.Key("coverage_p10_p90");
      Number(w, s.coverage_p10_p90, 6);
      w.Key("pinball");
      Number(w, s.pinball, 6);
      w.Key("skill_vs_persistence");
      Number(w, s.skill_vs_persistence, 6);
      w.Key("skill_vs_drift");
      Number(w, s.skill_vs_drift, 6);
    }
    WritePoint(w, "persistence", s.persistence);
    WritePoint(w, "drift", s.drift);
    w.EndObject();
  }
  w.EndArray();
  w.Key("skill");
  WriteSkill(w, r, meta);
  w.EndObject();
  return buf.GetString();
}

void QuantilesToPrices(double close, std::span<const float> outputs, int horizon, int num_quantiles,
                       float target_scale, std::span<double> prices) {
  for (int s = 0; s < horizon; ++s) {
    double* step = prices.data() + static_cast<std::size_t>(s) * num_quantiles;
    for (int q = 0; q < num_quantiles; ++q) {
      step[q] = close * std::exp(static_cast<double>(outputs[s * num_quantiles + q]) *
                                 static_cast<double>(target_scale));
    }
    std::sort(step, step + num_quantiles);
  }
}

namespace {

// The state of a model's Predictor, shared by copies of the std::function.
struct ModelPredictorState {
  std::unique_ptr<LstmEngine> engine;
  Normalization norm;
  LstmShape shape;
  int rank10 = 0, rank50 = 0, rank90 = 0;  // positions among the sorted quantile prices
  std::vector<float> features, inputs, outputs;
  std::vector<double> prices;

  core::Status Predict(std::span<const Candle> candles, std::span<const int64_t> origins,
                       int horizon, std::span<QuantileForecast> out) {
    if (origins.empty()) return core::Status::Ok();
    if (horizon < 1 || horizon > shape.horizon) {
      return core::InvalidArgument(
          fmt::format("model: horizon {} outside 1..{}", horizon, shape.horizon));
    }
    const int window = shape.window;
    const int64_t first = origins.front(), last = origins.back();
    if (first < FirstModelOrigin(window) || last >= static_cast<int64_t>(candles.size())) {
      return core::InvalidArgument(fmt::format(
          "model: origin bar {} has fewer than {} bars before it (the model's window of {} and "
          "{} for the features)",
          first, FirstModelOrigin(window), window, FirstValidRow()));
    }
    // Rows of the slice [begin, last] equal the series' rows from begin + FirstValidRow() on.
    const int64_t begin = first - window + 1 - FirstValidRow();
    std::span<const Candle> slice = candles.subspan(begin, last - begin + 1);
    features = ComputeFeatures(slice);
    Normalize(norm, features);
    const int batch = static_cast<int>(origins.size());
    const std::size_t in_row = static_cast<std::size_t>(window) * kFeatureCount;
    inputs.resize(batch * in_row);
    outputs.resize(static_cast<std::size_t>(batch) * shape.outputs());
    for (int i = 0; i < batch; ++i) {
      Window(features, origins[i] - begin, window,
             std::span<float>(inputs.data() + i * in_row, in_row));
    }
    engine->Run(inputs, batch, outputs);
    const int q = shape.num_quantiles;
    prices.resize(static_cast<std::size_t>(shape.horizon) * q);
    for (int i = 0; i < batch; ++i) {
      QuantilesToPrices(
          candles[origins[i]].close,
          std::span<const float>(outputs.data() + i * shape.outputs(), shape.outputs()),
          shape.horizon, q, norm.target_scale, prices);
      for (int h = 0; h < horizon; ++h) {
        out[static_cast<std::size_t>(i) * horizon + h] = {
            prices[h * q + rank10], prices[h * q + rank50], prices[h * q + rank90]};
      }
    }
    return core::Status::Ok();
  }
};

}  // namespace

core::Result<Predictor> MakeModelPredictor(const ForecastModel& model, Precision precision,
                                           const EngineOptions& options) {
  if (auto s = ValidateWeights(model.weights); !s.ok()) return s;
  const std::vector<double>& levels = model.info.quantiles;
  if (!std::is_sorted(levels.begin(), levels.end())) {
    return core::InvalidArgument("model: quantiles are not in ascending order");
  }
  auto state = std::make_shared<ModelPredictorState>();
  int* ranks[3] = {&state->rank10, &state->rank50, &state->rank90};
  for (int k = 0; k < 3; ++k) {
    auto it = std::find_if(levels.begin(), levels.end(),
                           [&](double l) { return std::fabs(l - kQuantiles[k]) < 1e-9; });
    if (it == levels.end()) {
      return core::InvalidArgument(fmt::format(
          "model: has no {} quantile; a backtest needs 0.1, 0.5 and 0.9", kQuantiles[k]));
    }
    *ranks[k] = static_cast<int>(it - levels.begin());
  }
  if (!(model.info.norm.target_scale > 0)) {
    return core::InvalidArgument("model: normalization has no positive target_scale");
  }
  auto engine = LstmEngine::Create(model.weights, precision, options);
  if (!engine.ok()) return engine.status();
  state->engine = std::move(*engine);
  state->norm = model.info.norm;
  state->shape = model.weights.shape;
  return Predictor([state](std::span<const Candle> candles, std::span<const int64_t> origins,
                           int horizon, std::span<QuantileForecast> out) {
    return state->Predict(candles, origins, horizon, out);
  });
}

}  // namespace megaserve::forecast
