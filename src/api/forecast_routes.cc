#include "api/forecast_routes.h"

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <charconv>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "api/route_helpers.h"
#include "core/time_format.h"
#include "forecast/candle_files.h"
#include "forecast/candles.h"

namespace megaserve::api {

using net::Method;
using net::Request;
using net::Response;

namespace {

struct ParsedForecast {
  forecast::ForecastRequest request;
  std::optional<Response> error;
};

// The body of POST /v1/forecasts: {"symbol": "BTCUSDT", "interval": "4h", "horizon": 6,
// "quantiles": [0.1, 0.9]}; symbol and interval are required.
ParsedForecast ParseForecastRequest(std::string_view body) {
  ParsedForecast out;
  auto bad = [&out](std::string_view code, std::string message, std::string_view param) {
    out.error = net::ErrorResponse(400, code, message, param);
    return out;
  };
  SmallJsonBody parsed(body);
  auto& d = parsed.doc();
  if (d.HasParseError() || !d.IsObject()) {
    return bad("invalid_json", "the body must be a JSON object", "");
  }
  bool has_symbol = false;
  bool has_interval = false;
  for (auto& m : d.GetObject()) {
    std::string_view name(m.name.GetString(), m.name.GetStringLength());
    if (name == "symbol" || name == "interval") {
      if (!m.value.IsString()) {
        return bad("invalid_" + std::string(name), std::string(name) + " must be a string", name);
      }
      std::string value(m.value.GetString(), m.value.GetStringLength());
      if (name == "symbol") {
        out.request.symbol = std::move(value);
        has_symbol = true;
      } else {
        out.request.interval = std::move(value);
        has_interval = true;
      }
    } else if (name == "horizon") {
      if (!m.value.IsInt() || m.value.GetInt() < 1) {
        return bad("invalid_horizon", "horizon must be an integer >= 1", "horizon");
      }
      out.request.horizon = m.value.GetInt();
    } else if (name == "quantiles") {
      if (!m.value.IsArray() || m.value.Empty()) {
        return bad("invalid_quantiles", "quantiles must be a non-empty array of numbers",
                   "quantiles");
      }
      for (auto& q : m.value.GetArray()) {
        if (!q.IsNumber()) {
          return bad("invalid_quantiles", "quantiles must be a non-empty array of numbers",
                     "quantiles");
        }
        out.request.quantiles.push_back(q.GetDouble());
      }
    } else {
      return bad("unknown_field",
                 "unknown field \"" + std::string(name) +
                     "\" (known: symbol, interval, horizon, quantiles)",
                 name);
    }
  }
  if (!has_symbol) return bad("missing_symbol", "the body needs a \"symbol\"", "symbol");
  if (!has_interval) return bad("missing_interval", "the body needs an \"interval\"", "interval");
  return out;
}

// The response to a forecast that could not be made; `param` is the field at fault.
Response ForecastError(const core::Status& s, const std::string& param) {
  switch (s.code()) {
    case core::StatusCode::kInvalidArgument:
      return net::ErrorResponse(400, "invalid_" + (param.empty() ? "request" : param), s.message(),
                                param);
    case core::StatusCode::kNotFound:
      return net::ErrorResponse(404, "model_not_found", s.message(), param);
    case core::StatusCode::kFailedPrecondition:
      return net::ErrorResponse(409, "no_candles", s.message(), "symbol");
    case core::StatusCode::kResourceExhausted: {
      Response r = net::ErrorResponse(429, "queue_full", s.message());
      r.headers.emplace_back("Retry-After",
                             std::to_string(batching::RetryAfterSeconds(s).value_or(1)));
      return r;
    }
    case core::StatusCode::kDeadlineExceeded:
      return net::ErrorResponse(504, "deadline_exceeded", s.message());
    case core::StatusCode::kUnavailable: {
      Response r = net::ErrorResponse(503, "unavailable", s.message());
      r.headers.emplace_back("Retry-After", "1");
      return r;
    }
    default:
      return net::ErrorResponse(500, "forecast_failed", s.message());
  }
}

// The minimal percent-decoding a time value needs ("%3A" for ':').
std::string PercentDecoded(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      unsigned v = 0;
      auto [p, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
      if (ec == std::errc() && p == s.data() + i + 3) {
        out += static_cast<char>(v);
        i += 2;
        continue;
      }
    }
    out += s[i] == '+' ? ' ' : s[i];
  }
  return out;
}

// A `from`/`to` value: Unix milliseconds, or a UTC date or time ("2025-01-01",
// "2025-01-01T04:00:00Z", "2025-01-01 04:00:00").
std::optional<int64_t> ParseTime(std::string_view raw) {
  std::string text = PercentDecoded(raw);
  int64_t ms = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
  if (ec == std::errc() && p == text.data() + text.size()) return ms;
  if (text.size() == 20 && text[10] == 'T' && text[19] == 'Z') {
    text[10] = ' ';
    text.pop_back();
  }
  auto t = forecast::ParseUtcTimestamp(text);
  if (!t.ok()) return std::nullopt;
  return *t;
}

void WriteCandle(JsonWriter& w, const forecast::Candle& c) {
  w.StartObject();
  WriteString(w, "open_time", core::Rfc3339(c.open_time_ms * 1000));
  w.Key("open_time_ms");
  w.Int64(c.open_time_ms);
  w.Key("open");
  w.Double(c.open);
  w.Key("high");
  w.Double(c.high);
  w.Key("low");
  w.Double(c.low);
  w.Key("close");
  w.Double(c.close);
  w.Key("volume");
  w.Double(c.volume);
  w.Key("partial");
  w.Bool(c.partial);
  w.EndObject();
}

struct CandlesQuery {
  std::string symbol;
  std::string interval;
  int limit = 100;
  std::optional<int64_t> from;
  std::optional<int64_t> to;
};

Response CandlesPage(forecast::CandleStore& store, const CandlesQuery& q) {
  const int64_t from = q.from.value_or(0);
  const int64_t to = q.to.value_or(std::numeric_limits<int64_t>::max());
  const bool forward = q.from.has_value();
  // One more than asked tells whether another page follows.
  auto bars = store.Range(q.symbol, q.interval, from, to, q.limit + 1, /*include_partial=*/true,
                          /*newest=*/!forward);
  if (!bars.ok()) {
    if (bars.status().code() == core::StatusCode::kInvalidArgument) {
      return net::ErrorResponse(400, "invalid_request", bars.status().message());
    }
    return StoreUnavailable(bars.status());
  }
  std::vector<forecast::Candle>& candles = *bars;
  if (candles.empty()) {
    auto latest = store.Latest(q.symbol, q.interval);
    if (!latest.ok()) return StoreUnavailable(latest.status());
    if (!latest->has_value()) {
      std::vector<std::string> names;
      auto series = store.Series();
      if (series.ok()) {
        for (const forecast::SeriesInfo& s : *series) names.push_back(s.symbol + " " + s.interval);
      }
      return net::ErrorResponse(
          404, "series_not_found",
          fmt::format("no candles of {} {} are stored; stored series: {}", q.symbol, q.interval,
                      names.empty() ? "none (load some with `megaserve data import` or "
                                      "`megaserve data sync`)"
                                    : fmt::format("{}", fmt::join(names, ", "))),
          "symbol");
    }
  }
  const bool more = static_cast<int>(candles.size()) > q.limit;
  if (more) {
    // Range returns oldest first: drop the extra bar on the far side of the page.
    if (forward) {
      candles.pop_back();
    } else {
      candles.erase(candles.begin());
    }
  }
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  WriteString(w, "object", "list");
  WriteString(w, "symbol", q.symbol);
  WriteString(w, "interval", q.interval);
  w.Key("data");
  w.StartArray();
  for (const forecast::Candle& c : candles) WriteCandle(w, c);
  w.EndArray();
  w.Key("has_more");
  w.Bool(more);
  w.Key("next");
  if (more) {
    std::string next = fmt::format("interval={}&limit={}", q.interval, q.limit);
    if (forward) {
      next += fmt::format("&from={}", candles.back().open_time_ms + 1);
      if (q.to) next += fmt::format("&to={}", *q.to);
    } else {
      if (q.from) next += fmt::format("&from={}", *q.from);
      next += fmt::format("&to={}", candles.front().open_time_ms - 1);
    }
    w.String(next.c_str(), static_cast<rapidjson::SizeType>(next.size()));
  } else {
    w.Null();
  }
  w.EndObject();
  return net::JsonResponse(200, std::string(sb.GetString(), sb.GetSize()));
}

// Parses the candles route's path and query; a 400 response when something is wrong.
std::optional<Response> ParseCandlesQuery(const Request& req, CandlesQuery& q) {
  auto symbol = forecast::NormalizeSymbol(req.Param("symbol"));
  if (!symbol.ok()) {
    return net::ErrorResponse(400, "invalid_symbol", symbol.status().message(), "symbol");
  }
  q.symbol = std::move(*symbol);
  q.interval = std::string(req.QueryParam("interval"));
  if (q.interval.empty()) {
    return net::ErrorResponse(400, "missing_interval",
                              fmt::format("the query needs an interval, one of: {}",
                                          fmt::join(forecast::IntervalNames(), ", ")),
                              "interval");
  }
  if (auto ms = forecast::IntervalMillis(q.interval); !ms.ok()) {
    return net::ErrorResponse(400, "invalid_interval", ms.status().message(), "interval");
  }
  if (std::string_view l = req.QueryParam("limit"); !l.empty()) {
    auto [p, ec] = std::from_chars(l.data(), l.data() + l.size(), q.limit);
    if (ec != std::errc() || p != l.data() + l.size() || q.limit < 1 ||
        q.limit > kMaxCandlesLimit) {
      return net::ErrorResponse(
          400, "invalid_limit",
          fmt::format("limit must be an integer from 1 to {}", kMaxCandlesLimit), "limit");
    }
  }
  for (const char* name : {"from", "to"}) {
    std::string_view value = req.QueryParam(name);
    if (value.empty()) continue;
    std::optional<int64_t> t = ParseTime(value);
    if (!t) {
      return net::ErrorResponse(
          400, std::string("invalid_") + name,
          fmt::format("{} must be Unix milliseconds or a UTC date or time such as 2025-01-01 or "
                      "2025-01-01T04:00:00Z",
                      name),
          name);
    }
    (std::string_view(name) == "from" ? q.from : q.to) = *t;
  }
  if (q.from && q.to && *q.from > *q.to) {
    return net::ErrorResponse(400, "invalid_range", "from must not be after to", "from");
  }
  return std::nullopt;
}

}  // namespace

std::function<std::uint64_t(std::string_view route)> ForecastCacheSalt(
    const forecast::CandleStore& candles) {
  return [&candles](std::string_view route) -> std::uint64_t {
    const bool derived = route.starts_with("/v1/forecasts") || route.starts_with("/v1/markets/");
    return derived ? candles.version() : 0;
  };
}

void RegisterForecastRoutes(net::Router& router, const ForecastsContext& ctx) {
  // With the model loaded and the series' window fresh, the request goes from the I/O thread
  // straight to the model's batcher. Otherwise Prepare() may load the model and read candles
  // (blocking), so it runs on the pool. Either way the request then waits in the batcher,
  // holding no thread; the batcher's thread makes the Forecast and the connection's I/O thread
  // writes its JSON.
  router.AddAsync(Method::kPost, "/v1/forecasts", [ctx](const Request& req, net::Reply reply) {
    ParsedForecast parsed = ParseForecastRequest(req.body);
    if (parsed.error) return reply(std::move(*parsed.error));
    // The warm path hands `reply` to the batcher as it is; only the pool's path shares it.
    auto answer = [](net::Reply& to, core::Result<forecast::Forecast> result) {
      if (!result.ok()) return to(ForecastError(result.status(), ""));
      // Written out by the I/O thread that sends it, not by the batcher's thread, which answers
      // a whole batch one request after another before it can take the next batch.
      net::Response r;
      r.make_body = [f = std::make_shared<const forecast::Forecast>(std::move(*result))](
                        std::string& out) { forecast::AppendForecastJson(*f, out); };
      to(std::move(r));
    };
    if (auto warm = ctx.service->PrepareIfWarm(parsed.request); warm.ok()) {
      return ctx.service->Run(std::move(*warm), {},
                              [answer, reply = std::move(reply)](auto result) mutable {
                                answer(reply, std::move(result));
                              });
    }
    auto shared_reply = std::make_shared<net::Reply>(std::move(reply));
    bool queued =
        ctx.pool->Submit([ctx, shared_reply, request = std::move(parsed.request), answer] {
          std::string param;
          auto prepared = ctx.service->Prepare(request, &param);
          if (!prepared.ok()) return (*shared_reply)(ForecastError(prepared.status(), param));
          ctx.service->Run(std::move(*prepared), {}, [answer, shared_reply](auto result) {
            answer(*shared_reply, std::move(result));
          });
        });
    if (!queued) {
      Response r = net::ErrorResponse(503, "overloaded", "too many requests waiting for a thread");
      r.headers.emplace_back("Retry-After", "1");
      (*shared_reply)(std::move(r));
    }
  });

  router.AddAsync(
      Method::kGet, "/v1/markets/{symbol}/candles", [ctx](const Request& req, net::Reply reply) {
        CandlesQuery q;
        if (auto error = ParseCandlesQuery(req, q)) return reply(std::move(*error));
        OffLoop(
            *ctx.pool, std::move(reply),
            [ctx, q = std::move(q)] { return CandlesPage(*ctx.candles, q); }, "the store");
      });
}

}  // namespace megaserve::api
