// Price forecasts for a market series, as the API serves them: finds the series' model in the
// model repository, feeds it the newest window of stored candles through the model's dynamic
// batcher, and turns its quantile outputs into prices with timestamps, the data's freshness and
// the model's backtest skill.
//
// Models. The model of (symbol, interval) is the repository's model named
// "<symbol in lower case>-<interval>" (e.g. "btcusdt-4h", the trainer's default name) whose
// config.toml says backend = "forecast" (forecast_backend.h).
//
// Windows. For each model the service keeps the encoded input of its newest window in memory:
// the last `window` complete bars' features (features.h), normalized with the model's
// normalization, ready for the backend's binary request encoding. A request reuses it while
//   - CandleStore::version() is unchanged (no upsert in this process since),
//   - the model's normalization and window are the ones it was built for,
//   - no bar that was still open when it was built has closed since, and
//   - it is younger than ForecastServiceOptions::recheck (writes by other processes sharing the
//     store, such as a `megaserve data sync` run, are seen within that time),
// and otherwise rebuilds it with one CandleStore::Range query. So an uncached forecast reads the
// store at most once per series per change, and otherwise only runs the model.
//
// Quantile prices. The model predicts quantiles of the scaled cumulative log return of each step;
// they map to prices as close * exp(q * target_scale) and are sorted within each step
// (QuantilesToPrices, backtest.h), so p10 <= p50 <= p90 always holds.
#pragma once

#include <boost/container/small_vector.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "batching/dynamic_batcher.h"
#include "core/status.h"
#include "forecast/candle_store.h"
#include "forecast/lstm_engine.h"
#include "models/repository.h"

namespace megaserve::forecast {

class ForecastBackendModel;
// A series' encoded input window and its freshness (defined in forecast_service.cc).
struct SeriesWindow;

// A forecast's per-step and per-quantile lists, held inside their object up to four values (a
// model has three quantiles by default), so that making a forecast allocates no list per step.
template <typename T>
using FewValues = boost::container::small_vector<T, 4>;

struct ForecastRequest {
  std::string symbol;    // any case: "btcusdt" and "BTCUSDT" name one series
  std::string interval;  // one of IntervalNames()
  int horizon = 0;       // steps, 1..the model's horizon; 0 = the model's horizon
  // A subset of the model's quantiles (e.g. {0.1, 0.9}); empty = all of them.
  std::vector<double> quantiles;
};

// How current the data behind a forecast is.
struct DataFreshness {
  int64_t last_open_ms = 0;      // the last complete bar's open time
  int64_t last_close_ms = 0;     // its close time (open + interval)
  double last_close = 0;         // its close price, the forecasts' origin
  int64_t age_s = 0;             // seconds from last_close_ms to when the forecast was made
  bool partial_bar = false;      // a newer bar is stored that has not closed yet (not used)
  int64_t first_open_ms = 0;     // the first bar the window's features are computed from
  int64_t gap_bars = 0;          // bars missing between first_open_ms and last_open_ms
  uint64_t candles_version = 0;  // CandleStore::version() the window was built at
};

struct ForecastStep {
  int h = 0;                  // 1-based
  int64_t open_time_ms = 0;   // of the forecast bar: last_open_ms + h * interval
  int64_t close_time_ms = 0;  // open_time_ms + interval: when its close is known
  FewValues<double> prices;   // one per Forecast::quantiles, ascending
};

struct Forecast {
  std::string symbol;  // upper case
  std::string interval;
  int64_t interval_ms = 0;
  FewValues<double> quantiles;  // the selected ones, ascending
  std::string model_name;
  int model_version = 0;
  Precision precision = Precision::kInt8;
  std::string kernel;  // the engine's kernel family
  int model_horizon = 0;
  int64_t trained_at_ms = 0;
  int64_t made_at_ms = 0;  // when the forecast was made
  DataFreshness data;
  std::vector<ForecastStep> steps;
  // The model's last backtest summary (ForecastBackendModel::skill_json), null when it was
  // never backtested.
  std::shared_ptr<const std::string> skill_json;
};

// A symbol and interval with a forecast model, for listings and error messages.
struct ForecastSeries {
  std::string symbol;  // upper case
  std::string interval;
  std::string model;  // the model's name
};

struct ForecastServiceOptions {
  models::Repository* repository = nullptr;  // must outlive the service
  CandleStore* candles = nullptr;            // must outlive the service
  // Unix time in milliseconds; null = the system clock.
  std::function<int64_t()> now_ms;
  // A window older than this is rebuilt even when nothing in this process changed (see the top
  // of this file).
  std::chrono::milliseconds recheck{60'000};
};

// A request checked against its model, holding the model and the window's input: what Run()
// needs. Movable.
struct PreparedForecast {
  std::shared_ptr<models::ModelHandle> handle;
  const ForecastBackendModel* model = nullptr;  // owned by `handle`
  std::shared_ptr<const SeriesWindow> window;
  std::string symbol;
  std::string interval;
  int64_t interval_ms = 0;
  int horizon = 0;
  FewValues<int> quantile_index;  // into the model's quantiles, ascending
  int64_t made_at_ms = 0;
};

class ForecastService {
 public:
  explicit ForecastService(ForecastServiceOptions options);
  ForecastService(const ForecastService&) = delete;  // No copying allowed.
  ForecastService& operator=(const ForecastService&) = delete;

  // Checks `request` and gets everything its forecast needs: the model (loading it if needed)
  // and the series' window (from memory or the store). Blocks; call it off the I/O threads.
  // Errors, with `*param` set to the request field at fault ("" when none):
  //   kInvalidArgument  a malformed symbol, an interval that does not exist or has no model for
  //                     the symbol, a horizon or quantile the model does not have; the message
  //                     names the allowed values
  //   kNotFound         no forecast model for the symbol; the message names the symbols that
  //                     have one
  //   kFailedPrecondition  the series has too few complete bars (none, or fewer than the
  //                     model's window needs); the message says how to import or sync candles
  //   the repository's and the store's errors otherwise.
  core::Result<PreparedForecast> Prepare(const ForecastRequest& request, std::string* param);

  // Prepare() without blocking, for an I/O thread: succeeds only when the model is loaded and
  // the series' window is fresh in memory (no load, no store query, no folder read). Otherwise
  // it fails (kUnavailable when it would have to block; a bad request may fail with its own
  // error), and the caller runs Prepare() off the loop, which gives the full answer.
  core::Result<PreparedForecast> PrepareIfWarm(const ForecastRequest& request);

  // Runs a prepared forecast through its model's batcher without blocking; `done` receives the
  // result on a batcher thread (or at once on this thread when the request is refused, e.g.
  // kResourceExhausted for a full queue, see ModelHandle::Infer).
  void Run(PreparedForecast prepared, const batching::SubmitOptions& options,
           std::function<void(core::Result<Forecast>)> done);

  // Prepare() and Run(), waiting for the result. For tools and tests.
  core::Result<Forecast> ForecastNow(const ForecastRequest& request, std::string* param = nullptr);

  // The series with a forecast model, by symbol then interval length. Reads the model folder.
  std::vector<ForecastSeries> Available();

 private:
  // Prepare() and PrepareIfWarm(); `warm_only` refuses anything that would block.
  core::Result<PreparedForecast> DoPrepare(const ForecastRequest& request, std::string* param,
                                           bool warm_only);
  // The series' window when it is fresh in memory, else null.
  std::shared_ptr<const SeriesWindow> FreshWindow(const std::string& name,
                                                  const ForecastBackendModel& model,
                                                  int64_t now_ms);
  // The window of `model` for its series, rebuilt when stale (see the top of this file).
  core::Result<std::shared_ptr<const SeriesWindow>> WindowFor(const std::string& name,
                                                              const ForecastBackendModel& model,
                                                              const std::string& symbol,
                                                              const std::string& interval,
                                                              int64_t interval_ms, int64_t now_ms);
  core::Result<std::shared_ptr<const SeriesWindow>> BuildWindow(const ForecastBackendModel& model,
                                                                const std::string& symbol,
                                                                const std::string& interval,
                                                                int64_t interval_ms,
                                                                int64_t now_ms);
  int64_t NowMs() const;

  ForecastServiceOptions options_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const SeriesWindow>, std::less<>> windows_;  // by model
};

// The forecast as its JSON API object (see api/openapi.json, Forecast).
std::string ForecastJson(const Forecast& forecast);
// The same text appended to `out`.
void AppendForecastJson(const Forecast& forecast, std::string& out);

// "p10" for 0.1, "p2.5" for 0.025: the key of a quantile in ForecastJson.
std::string QuantileKey(double q);

}  // namespace megaserve::forecast
