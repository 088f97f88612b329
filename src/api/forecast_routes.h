// The forecasting API: POST /v1/forecasts and GET /v1/markets/{symbol}/candles.
//
// POST /v1/forecasts {symbol, interval, horizon?, quantiles?} answers price quantiles for the
// next `horizon` bars of a series (forecast/forecast_service.h). Checking the request may load
// the model and read candles, so it runs on the blocking pool; the request then waits in the
// model's dynamic batcher holding no thread, and the batcher's thread answers. The gateway
// caches the answers (the /v1/forecasts* policy, POST bodies in the key) under a key that
// includes CandleStore::version(), so a new candle makes the next identical request a miss.
//
// GET /v1/markets/{symbol}/candles?interval=4h&limit=100&from=&to= pages through stored candles
// (partial bars included and flagged). With `from`, the oldest `limit` bars from `from` on;
// otherwise the newest `limit` up to `to`. `next` is the query of the following page in the same
// direction, or null when there is none.
//
// Errors are JSON (net::ErrorResponse) and name the allowed values: 400 for a bad field, 404 for
// a symbol without a model or a series without candles, 409 when the series has too few candles
// to forecast from, 429 with Retry-After when the model's queue is full, 503 when a thread or
// the store is not available.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "core/blocking_pool.h"
#include "forecast/candle_store.h"
#include "forecast/forecast_service.h"
#include "net/router.h"

namespace megaserve::api {

struct ForecastsContext {
  forecast::ForecastService* service = nullptr;
  forecast::CandleStore* candles = nullptr;
  core::BlockingPool* pool = nullptr;
};

// The largest `limit` of the candles route.
inline constexpr int kMaxCandlesLimit = 1000;

// Registers the forecast and market routes. The context's pointers must outlive the router.
void RegisterForecastRoutes(net::Router& router, const ForecastsContext& context);

// The gateway's cache-key salt for these routes (gateway::GatewayOptions::cache_key_salt):
// `candles`' version for /v1/forecasts and /v1/markets/..., 0 elsewhere. `candles` must outlive
// the function.
std::function<std::uint64_t(std::string_view route)> ForecastCacheSalt(
    const forecast::CandleStore& candles);

}  // namespace megaserve::api
