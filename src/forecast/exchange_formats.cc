// Parsers for the exchanges' candle responses; see exchange_formats.h.
//
// Sources: Binance Spot API, "Kline/Candlestick data" (GET /api/v3/klines) in
// developers.binance.com/docs/binance-spot-api-docs; Coinbase Exchange API reference, "Get
// product candles" (GET /products/{product_id}/candles) in docs.cdp.coinbase.com. Binance sends
// prices and volumes as decimal strings so that no precision is lost in transit; they are read
// here with std::from_chars, which rounds correctly to the nearest double.
#include "forecast/exchange_formats.h"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>

#include <algorithm>
#include <charconv>
#include <cmath>

namespace megaserve::forecast {
namespace {

constexpr std::size_t kBinanceFields = 12;
constexpr std::size_t kCoinbaseFields = 6;

core::Result<rapidjson::Document> ParseArray(std::string_view body, std::string_view what) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError()) {
    return core::InvalidArgument(fmt::format("{}: malformed JSON at offset {}: {}", what,
                                             doc.GetErrorOffset(),
                                             rapidjson::GetParseError_En(doc.GetParseError())));
  }
  if (!doc.IsArray()) {
    std::string message = ExchangeErrorMessage(body);
    return core::InvalidArgument(
        fmt::format("{}: expected a JSON array of rows, got {}", what,
                    doc.IsObject() ? "an object: " + message : std::string("another value")));
  }
  return doc;
}

core::Status FieldError(std::string_view what, std::size_t row, std::string_view field,
                        std::string_view problem) {
  return core::InvalidArgument(fmt::format("{}: row {}: {}: {}", what, row, field, problem));
}

// A decimal given as a JSON string (Binance's documented form) or a JSON number.
core::Result<double> Decimal(const rapidjson::Value& v, std::string_view what, std::size_t row,
                             std::string_view field) {
  if (v.IsNumber()) return v.GetDouble();
  if (!v.IsString()) return FieldError(what, row, field, "expected a decimal string");
  std::string_view text(v.GetString(), v.GetStringLength());
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) {
    return FieldError(what, row, field, fmt::format("\"{}\" is not a decimal number", text));
  }
  return value;
}

core::Result<double> Number(const rapidjson::Value& v, std::string_view what, std::size_t row,
                            std::string_view field) {
  if (!v.IsNumber()) return FieldError(what, row, field, "expected a number");
  return v.GetDouble();
}

core::Result<int64_t> Integer(const rapidjson::Value& v, std::string_view what, std::size_t row,
                              std::string_view field) {
  if (v.IsInt64()) return v.GetInt64();
  if (v.IsDouble() && std::isfinite(v.GetDouble()) && v.GetDouble() == std::floor(v.GetDouble()) &&
      std::fabs(v.GetDouble()) < 9e15) {
    return static_cast<int64_t>(v.GetDouble());
  }
  return FieldError(what, row, field, "expected an integer");
}

core::Status Validate(const Candle& c, std::string_view what, std::size_t row) {
  core::Status s = ValidateCandle(c);
  if (s.ok()) return s;
  return core::InvalidArgument(fmt::format("{}: row {}: {}", what, row, s.message()));
}

}  // namespace

core::Result<std::vector<Candle>> ParseBinanceKlines(std::string_view body, int64_t interval_ms,
                                                     int64_t now_ms) {
  constexpr std::string_view kWhat = "binance klines";
  auto doc = ParseArray(body, kWhat);
  if (!doc.ok()) return doc.status();
  static constexpr std::string_view kNames[] = {"open", "high", "low", "close", "volume"};
  std::vector<Candle> out;
  out.reserve(doc->Size());
  for (rapidjson::SizeType i = 0; i < doc->Size(); ++i) {
    const rapidjson::Value& row = (*doc)[i];
    if (!row.IsArray() || row.Size() < kBinanceFields) {
      return core::InvalidArgument(
          fmt::format("{}: row {}: expected an array of {} fields", kWhat, i, kBinanceFields));
    }
    Candle c;
    auto open_time = Integer(row[0], kWhat, i, "open time");
    if (!open_time.ok()) return open_time.status();
    c.open_time_ms = *open_time;
    double* targets[] = {&c.open, &c.high, &c.low, &c.close, &c.volume};
    for (int f = 0; f < 5; ++f) {
      auto v = Decimal(row[f + 1], kWhat, i, kNames[f]);
      if (!v.ok()) return v.status();
      *targets[f] = *v;
    }
    auto close_time = Integer(row[6], kWhat, i, "close time");
    if (!close_time.ok()) return close_time.status();
    if (*close_time < c.open_time_ms) {
      return FieldError(kWhat, i, "close time", "before the open time");
    }
    if (!out.empty() && c.open_time_ms <= out.back().open_time_ms) {
      return FieldError(kWhat, i, "open time", "not after the previous row's");
    }
    if (auto s = Validate(c, kWhat, i); !s.ok()) return s;
    c.partial = IsOpenAt(c.open_time_ms, interval_ms, now_ms);
    out.push_back(c);
  }
  return out;
}

core::Result<std::vector<Candle>> ParseCoinbaseCandles(std::string_view body, int64_t interval_ms,
                                                       int64_t now_ms) {
  constexpr std::string_view kWhat = "coinbase candles";
  auto doc = ParseArray(body, kWhat);
  if (!doc.ok()) return doc.status();
  // Field order of a row: time, low, high, open, close, volume.
  static constexpr std::string_view kNames[] = {"low", "high", "open", "close", "volume"};
  std::vector<Candle> out;
  out.reserve(doc->Size());
  for (rapidjson::SizeType i = 0; i < doc->Size(); ++i) {
    const rapidjson::Value& row = (*doc)[i];
    if (!row.IsArray() || row.Size() < kCoinbaseFields) {
      return core::InvalidArgument(
          fmt::format("{}: row {}: expected an array of {} fields", kWhat, i, kCoinbaseFields));
    }
    Candle c;
    auto time = Integer(row[0], kWhat, i, "time");
    if (!time.ok()) return time.status();
    c.open_time_ms = *time * 1000;
    double* targets[] = {&c.low, &c.high, &c.open, &c.close, &c.volume};
    for (int f = 0; f < 5; ++f) {
      auto v = Number(row[f + 1], kWhat, i, kNames[f]);
      if (!v.ok()) return v.status();
      *targets[f] = *v;
    }
    if (auto s = Validate(c, kWhat, i); !s.ok()) return s;
    c.partial = IsOpenAt(c.open_time_ms, interval_ms, now_ms);
    out.push_back(c);
  }
  std::stable_sort(out.begin(), out.end(), [](const Candle& a, const Candle& b) {
    return a.open_time_ms < b.open_time_ms;
  });
  out.erase(std::unique(
                out.begin(), out.end(),
                [](const Candle& a, const Candle& b) { return a.open_time_ms == b.open_time_ms; }),
            out.end());
  return out;
}

std::string ExchangeErrorMessage(std::string_view body) {
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (!doc.HasParseError() && doc.IsObject()) {
    auto msg = doc.FindMember("msg");
    if (msg != doc.MemberEnd() && msg->value.IsString()) {
      auto code = doc.FindMember("code");
      if (code != doc.MemberEnd() && code->value.IsInt64()) {
        return fmt::format("{} (code {})", msg->value.GetString(), code->value.GetInt64());
      }
      return msg->value.GetString();
    }
    auto message = doc.FindMember("message");
    if (message != doc.MemberEnd() && message->value.IsString()) return message->value.GetString();
  }
  std::string text(body.substr(0, 200));
  std::replace(text.begin(), text.end(), '\n', ' ');
  return text;
}

}  // namespace megaserve::forecast
