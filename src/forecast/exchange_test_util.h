// For the forecast tests: a fake exchange on a loopback port that answers Binance's
// GET /api/v3/klines and Coinbase's GET /products/{id}/candles in their documented formats from
// a synthetic series, with scripted answers (429, 418, 5xx, bad JSON) served first.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <ctime>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/config.h"
#include "forecast/candles.h"
#include "metrics/registry.h"
#include "net/router.h"
#include "net/server.h"

namespace megaserve::forecast::testing {

// The synthetic bar at index k: prices rising by 1 per bar.
inline Candle SyntheticBar(int64_t open_time_ms, int64_t k) {
  Candle c;
  c.open_time_ms = open_time_ms;
  c.open = 100.0 + static_cast<double>(k);
  c.close = c.open + 0.5;
  c.high = c.close + 1;
  c.low = c.open - 1;
  c.volume = 10.0 + static_cast<double>(k % 7);
  return c;
}

class FakeExchange {
 public:
  struct Answer {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
  };
  struct Seen {
    std::string target;  // path and query
    std::string user_agent;
  };

  FakeExchange() {
    config_.server.listen = "127.0.0.1:0";
    config_.server.threads = 1;
    config_.server.drain_timeout = std::chrono::seconds(1);
    config_.log.access = false;
    router_.Add(net::Method::kGet, "/api/v3/klines",
                [this](const net::Request& req) { return Binance(req); });
    router_.Add(net::Method::kGet, "/products/{product}/candles",
                [this](const net::Request& req) { return Coinbase(req); });
    server_ = std::make_unique<net::Server>(config_, router_, registry_);
    started_ = server_->Start().ok();
  }
  ~FakeExchange() { server_->Shutdown(); }
  FakeExchange(const FakeExchange&) = delete;
  FakeExchange& operator=(const FakeExchange&) = delete;

  bool started() const { return started_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server_->port()); }

  // Bars first_open_ms + k * interval_ms for k in [0, count).
  void SetSeries(int64_t first_open_ms, int64_t interval_ms, int64_t count) {
    std::lock_guard lock(mu_);
    first_ = first_open_ms;
    interval_ = interval_ms;
    count_ = count;
  }
  // Answers served, in order, before the series is.
  void Script(std::vector<Answer> answers) {
    std::lock_guard lock(mu_);
    for (auto& a : answers) script_.push_back(std::move(a));
  }
  // X-MBX-USED-WEIGHT-1M on series answers; < 0 = none.
  void SetUsedWeight(int weight) {
    std::lock_guard lock(mu_);
    used_weight_ = weight;
  }
  // The product id Coinbase answers for; others get 404 {"message":"NotFound"}.
  void SetProduct(std::string product) {
    std::lock_guard lock(mu_);
    product_ = std::move(product);
  }
  std::vector<Seen> requests() const {
    std::lock_guard lock(mu_);
    return seen_;
  }

  // "2024-01-01T00:00:00Z" -> Unix ms; -1 when malformed.
  static int64_t ParseIso(std::string_view text) {
    std::tm tm{};
    char z = 0;
    std::string s(text);
    if (std::sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                    &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &z) != 7 ||
        z != 'Z') {
      return -1;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return static_cast<int64_t>(timegm(&tm)) * 1000;
  }

 private:
  static int64_t Int(std::string_view v, int64_t fallback) {
    if (v.empty()) return fallback;
    return std::stoll(std::string(v));
  }

  // A scripted answer if one is left (caller holds mu_).
  bool Scripted(net::Response& res) {
    if (script_.empty()) return false;
    Answer a = std::move(script_.front());
    script_.pop_front();
    res.status = a.status;
    res.headers = std::move(a.headers);
    res.body = std::move(a.body);
    return true;
  }

  void Record(const net::Request& req) {
    seen_.push_back({std::string(req.target), std::string(req.Header("User-Agent"))});
  }

  net::Response Binance(const net::Request& req) {
    std::lock_guard lock(mu_);
    Record(req);
    net::Response res;
    if (Scripted(res)) return res;
    const int64_t start = Int(req.QueryParam("startTime"), first_);
    const int64_t end = Int(req.QueryParam("endTime"), INT64_MAX);
    const int64_t limit = Int(req.QueryParam("limit"), 500);
    std::string body = "[";
    int64_t n = 0;
    for (int64_t k = 0; k < count_ && n < limit; ++k) {
      const int64_t t = first_ + k * interval_;
      if (t < start || t > end) continue;
      Candle c = SyntheticBar(t, k);
      body += fmt::format(
          R"({}[{},"{:.8f}","{:.8f}","{:.8f}","{:.8f}","{:.8f}",{},"0.0",1,"0.0","0.0","0"])",
          n ? "," : "", t, c.open, c.high, c.low, c.close, c.volume, t + interval_ - 1);
      ++n;
    }
    body += "]";
    res.body = std::move(body);
    if (used_weight_ >= 0)
      res.headers.emplace_back("X-MBX-USED-WEIGHT-1M", std::to_string(used_weight_));
    return res;
  }

  net::Response Coinbase(const net::Request& req) {
    std::lock_guard lock(mu_);
    Record(req);
    net::Response res;
    if (Scripted(res)) return res;
    if (req.Param("product") != product_) {
      res.status = 404;
      res.body = R"({"message":"NotFound"})";
      return res;
    }
    const int64_t start = ParseIso(req.QueryParam("start"));
    const int64_t end = ParseIso(req.QueryParam("end"));
    if (start < 0 || end < 0 || (end - start) / interval_ >= 300) {
      res.status = 400;
      res.body = R"({"message":"granularity too small for the requested time range"})";
      return res;
    }
    // Newest first, and, as the documentation allows, one bar before `start` too.
    std::string body = "[";
    int64_t n = 0;
    for (int64_t k = count_ - 1; k >= 0; --k) {
      const int64_t t = first_ + k * interval_;
      if (t < start - interval_ || t > end) continue;
      Candle c = SyntheticBar(t, k);
      body += fmt::format("{}[{},{},{},{},{},{}]", n ? "," : "", t / 1000, c.low, c.high, c.open,
                          c.close, c.volume);
      ++n;
    }
    body += "]";
    res.body = std::move(body);
    return res;
  }

  core::Config config_;
  net::Router router_;
  metrics::Registry registry_;
  std::unique_ptr<net::Server> server_;
  bool started_ = false;

  mutable std::mutex mu_;
  int64_t first_ = 0;
  int64_t interval_ = 3'600'000;
  int64_t count_ = 0;
  int used_weight_ = -1;
  std::string product_ = "BTC-USD";
  std::deque<Answer> script_;
  std::vector<Seen> seen_;
};

}  // namespace megaserve::forecast::testing
