// The candle formats of the exchanges' REST APIs, parsed into Candles.
//
// Binance, GET /api/v3/klines: a JSON array of rows, oldest first, each a 12-element array:
//   [open time (ms, number), open, high, low, close, volume (strings), close time (ms, number),
//    quote asset volume (string), number of trades (number), taker buy base volume,
//    taker buy quote volume (strings), unused]
// Coinbase Exchange, GET /products/{id}/candles: a JSON array of rows, newest first, each
//   [time (Unix seconds), low, high, open, close, volume] (numbers).
// A bar is partial when it has not closed at `now_ms` (candles.h: IsOpenAt): both exchanges
// answer with the bar in progress.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"

namespace megaserve::forecast {

// Parses a klines response body. Rows must be in strictly increasing open time; each is checked
// with ValidateCandle. kInvalidArgument names the row (0-based) and the field at fault, or says
// where the JSON is malformed. Prices given as JSON numbers instead of strings are accepted.
core::Result<std::vector<Candle>> ParseBinanceKlines(std::string_view body, int64_t interval_ms,
                                                     int64_t now_ms);

// Parses a product candles response body and returns its bars oldest first, without duplicate
// open times. Errors as for ParseBinanceKlines; row numbers count in the body's order.
core::Result<std::vector<Candle>> ParseCoinbaseCandles(std::string_view body, int64_t interval_ms,
                                                       int64_t now_ms);

// The message of an exchange's JSON error body: Binance's {"code":-1121,"msg":"Invalid symbol."}
// gives "Invalid symbol. (code -1121)", Coinbase's {"message":"NotFound"} gives "NotFound".
// Anything else gives the body itself, cut to 200 characters ("" for an empty body).
std::string ExchangeErrorMessage(std::string_view body);

}  // namespace megaserve::forecast
