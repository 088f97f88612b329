// Walk-forward backtests of price forecasts: every origin in a test range is forecast from the
// bars up to and including itself only, and the forecasts for horizon steps 1..H are scored
// against the closes that followed, next to two baselines (naive persistence and drift).
//
// The scoring core takes any Predictor (a callback), so it is independent of the model; the
// model's own Predictor (features, normalization, the native engine) is MakeModelPredictor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"
#include "forecast/lstm_engine.h"
#include "forecast/lstm_model.h"

namespace megaserve::forecast {

// A forecast for one horizon step, as prices: the 10%, 50% and 90% quantiles.
struct QuantileForecast {
  double p10 = 0;
  double p50 = 0;
  double p90 = 0;
};

// Forecasts from each origin in `origins` (indices into `candles`, ascending) for steps
// 1..`horizon`, written into `out` (origins.size() * horizon entries, origin-major: out[i * H +
// h - 1]). The forecast from origin t must depend on candles[0..t] only (RunBacktest checks this
// on sampled origins). Returns an error to abort the backtest.
using Predictor =
    std::function<core::Status(std::span<const Candle> candles, std::span<const int64_t> origins,
                               int horizon, std::span<QuantileForecast> out)>;

// Called after each batch with the origins done so far and the total.
using BacktestProgressFn = std::function<void(int64_t done, int64_t total)>;

struct BacktestParams {
  // Origins are the bars whose open time lies in [from_ms, to_ms] (inclusive, Unix ms).
  int64_t from_ms = 0;
  int64_t to_ms = 0;
  int horizon = 1;  // H >= 1
  // Bars over which the drift baseline averages one-step log returns (those ending at the
  // origin; fewer when the series starts later). >= 1.
  int drift_window = 64;
  // When > 0, a target counts only if its bar opens exactly h intervals after the origin's, so
  // a gap in the series never pairs an origin with a later bar than it claims; such pairs are
  // counted in StepMetrics::skipped_gaps. 0 scores the h-th following bar whatever its time.
  int64_t interval_ms = 0;
  // Origins per Predictor call.
  int batch_size = 256;
  // Origins, spread over the range, at which the Predictor is run again on a copy of the series
  // whose later bars are altered; any change in its forecast fails the backtest with
  // kFailedPrecondition (look-ahead). 0 disables the check.
  int lookahead_checks = 4;
};

// Errors of a point forecast against the actual closes.
struct PointErrors {
  double mae = 0;   // mean |forecast - actual|, USD
  double rmse = 0;  // sqrt(mean (forecast - actual)^2), USD
  double mape = 0;  // mean |forecast - actual| / actual, percent
};

// The scores of one horizon step.
struct StepMetrics {
  int h = 0;
  int64_t count = 0;         // origins scored at this step
  int64_t skipped_gaps = 0;  // origins whose h-th next bar lies past a gap (see interval_ms)
  PointErrors model;         // of the p50
  // Percent of origins whose p50 moved the same way from close[t] as close[t+h] did. Origins
  // where the close did not move (close[t+h] == close[t]) are left out (direction_count); a p50
  // equal to close[t] when the close moved counts as wrong.
  double directional_accuracy = 0;
  int64_t direction_count = 0;
  double coverage_p10_p90 = 0;      // percent of actuals with p10 <= actual <= p90
  double pinball = 0;               // mean pinball loss over the 0.1, 0.5, 0.9 quantiles, USD
  PointErrors persistence;          // forecast close[t+h] = close[t]
  PointErrors drift;                // close[t] * exp(h * mean one-step log return over the window)
  double skill_vs_persistence = 0;  // 1 - MAE_model / MAE_persistence (> 0: better)
  double skill_vs_drift = 0;        // 1 - MAE_model / MAE_drift
};

struct BacktestResult {
  int64_t from_ms = 0;  // the requested range
  int64_t to_ms = 0;
  int64_t origins = 0;  // bars in the range with at least one target after them
  int64_t first_origin_ms = 0;
  int64_t last_origin_ms = 0;
  int horizon = 0;
  int drift_window = 0;
  bool baseline_only = false;      // no Predictor: the model columns are zeros
  std::vector<StepMetrics> steps;  // h = 1..horizon
};

// Runs a walk-forward backtest over `candles` (sorted by open time, unique, no partial bars).
// `predictor` may be empty for the baselines alone. kInvalidArgument for bad parameters, unsorted
// or partial bars, or a range with no origin; the Predictor's errors are passed on;
// kFailedPrecondition when the look-ahead check catches the Predictor using later bars.
core::Result<BacktestResult> RunBacktest(std::span<const Candle> candles,
                                         const BacktestParams& params, const Predictor& predictor,
                                         const BacktestProgressFn& progress = {});

// Describes the model a backtest scored, for the JSON summaries. Empty fields are left out.
struct BacktestModelMeta {
  std::string name;
  std::string version;
  std::string precision;  // "int8" / "fp32"
  std::string symbol;
  std::string interval;
};

// The compact summary served next to every forecast, a JSON object:
// {"test_from":"2025-01-01T00:00:00Z","test_to":..,"origins":..,"horizons":[{"h":1,"n":..,
// "mae":..,"mae_persistence":..,"mae_drift":..,"skill_vs_persistence":..,"skill_vs_drift":..,
// "coverage_p10_p90":..,"directional_accuracy":..},..]} plus "model", "precision" when known.
std::string BacktestSkillJson(const BacktestResult& result, const BacktestModelMeta& meta);

// Every number of the backtest as a JSON object: the range, the model, the parameters, one entry
// per step with all metrics of the model and both baselines, and the compact summary as "skill".
std::string BacktestJson(const BacktestResult& result, const BacktestModelMeta& meta);

// Maps one origin's model outputs (horizon * num_quantiles scaled log-return quantiles,
// step-major, see features.h) to prices close * exp(q * target_scale), sorted ascending within
// each step so quantiles never cross. `prices` receives horizon * num_quantiles values.
void QuantilesToPrices(double close, std::span<const float> outputs, int horizon, int num_quantiles,
                       float target_scale, std::span<double> prices);

// The Predictor of a stored model: computes and normalizes the features of the series it is
// given (with the model's normalization), runs the native engine on the `window` rows ending at
// each origin, and maps the 0.1/0.5/0.9 quantiles to prices. kInvalidArgument when the model
// lacks one of those quantiles; at run time, when an origin has fewer than window valid rows
// before it. The returned Predictor shares ownership of the engine and is thread-compatible
// (one call at a time). `options` go to LstmEngine::Create (pass an INT8 file's exact integers
// there; they are only read during this call).
core::Result<Predictor> MakeModelPredictor(const ForecastModel& model, Precision precision,
                                           const EngineOptions& options = {});

// The first origin index MakeModelPredictor's Predictor accepts for a model of `window` bars.
inline int64_t FirstModelOrigin(int window) { return FirstValidRow() + window - 1; }

}  // namespace megaserve::forecast
