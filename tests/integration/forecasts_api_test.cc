// The forecasting API over real sockets: POST /v1/forecasts with its fields, errors, response
// cache keyed to the latest candle and batching under concurrency; GET
// /v1/markets/{symbol}/candles with paging and errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <atomic>
#include <chrono>
#include <regex>
#include <thread>
#include <vector>

#include "forecast/forecast_test_util.h"
#include "test_support.h"

namespace megaserve::testing {
namespace {

using forecast::testing::kFourHoursMs;
using forecast::testing::kJan2024Ms;
using forecast::testing::SyntheticCandles;
using ::testing::HasSubstr;

constexpr int kBars = 100;

std::string PostJson(std::string_view path, std::string_view body) {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\n\r\n";
  r += body;
  return r;
}

rapidjson::Document Json(const std::string& body) {
  rapidjson::Document d;
  d.Parse(body.c_str());
  EXPECT_FALSE(d.HasParseError()) << body;
  return d;
}

// A server with forecast models btcusdt-4h (batches of up to 32) and ethusdt-4h (batching off:
// one request per backend call), 100 bars of BTCUSDT 4h candles, no rate limit.
class ForecastsApiTest : public ::testing::Test {
 protected:
  ForecastsApiTest() : server_(Config()) {}

  static core::Config Config() {
    core::Config config = TestConfig();
    config.gateway.rate_limit = "";
    std::string models = config.data_dir + "/models";
    forecast::ForecastModel model = forecast::testing::TinyModel();
    forecast::testing::WriteModelDir(
        models, "btcusdt-4h", model, true, true,
        "[batching]\nmax_batch_size = 32\nmax_queue_delay = \"1ms\"\nmax_queue_size = 4096\n");
    forecast::testing::WriteModelDir(models, "ethusdt-4h", model, false, true,
                                     "[batching]\nmax_batch_size = 1\nmax_queue_size = 4096\n");
    return config;
  }

  void SetUp() override {
    bars_ = SyntheticCandles(kBars);
    auto counts = server_.app().candles().Upsert("BTCUSDT", "4h", "test", bars_);
    ASSERT_TRUE(counts.ok()) << counts.status().ToString();
    server_.Start();
  }

  RawResponse Forecast(std::string_view body) {
    RawClient c(server_.port());
    auto r = c.Roundtrip(PostJson("/v1/forecasts", body));
    EXPECT_TRUE(r.has_value());
    return r ? *r : RawResponse{};
  }

  RawResponse GetPath(const std::string& path) {
    RawClient c(server_.port());
    auto r = c.Roundtrip(Get(path));
    EXPECT_TRUE(r.has_value());
    return r ? *r : RawResponse{};
  }

  // `clients` connections each sending `per_client` forecasts with distinct bodies (so none is
  // a cache hit), all at once; returns forecasts per second, or -1 when one failed.
  double Burst(const std::string& symbol, int clients, int per_client) {
    std::atomic<int> failures{0};
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t) {
      threads.emplace_back([&, t] {
        RawClient c(server_.port(), std::chrono::seconds(30));
        ++ready;
        while (!go.load()) std::this_thread::yield();
        for (int i = 0; i < per_client; ++i) {
          // Trailing spaces make every body, and so every cache key, different.
          std::string body = "{\"symbol\":\"" + symbol + "\",\"interval\":\"4h\"}" +
                             std::string(static_cast<std::size_t>(t * per_client + i), ' ');
          auto r = c.Roundtrip(PostJson("/v1/forecasts", body));
          if (!r || r->status != 200) ++failures;
        }
      });
    }
    while (ready.load() < clients) std::this_thread::yield();
    auto start = std::chrono::steady_clock::now();
    go = true;
    for (auto& t : threads) t.join();
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return failures.load() == 0 ? clients * per_client / seconds : -1;
  }

  // The mean of megaserve_inference_batch_size for `model`, from GET /metrics.
  double MeanBatchSize(const std::string& model) {
    std::string text = GetPath("/metrics").body;
    auto value = [&](const std::string& suffix) {
      std::regex re("megaserve_inference_batch_size_" + suffix + "\\{model=\"" + model +
                    "\"\\} ([0-9.e+]+)");
      std::smatch m;
      return std::regex_search(text, m, re) ? std::stod(m[1]) : 0.0;
    };
    double count = value("count");
    return count > 0 ? value("sum") / count : 0;
  }

  TestServer server_;
  std::vector<forecast::Candle> bars_;
};

TEST_F(ForecastsApiTest, ForecastHasTheDocumentedFields) {
  auto r = Forecast(R"({"symbol":"btcusdt","interval":"4h","horizon":3})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto d = Json(r.body);
  EXPECT_STREQ(d["object"].GetString(), "forecast");
  EXPECT_STREQ(d["symbol"].GetString(), "BTCUSDT");
  EXPECT_STREQ(d["interval"].GetString(), "4h");
  EXPECT_EQ(d["horizon"].GetInt(), 3);
  EXPECT_STREQ(d["model"]["name"].GetString(), "btcusdt-4h");
  EXPECT_EQ(d["model"]["version"].GetInt(), 1);
  EXPECT_STREQ(d["model"]["precision"].GetString(), "int8");
  EXPECT_EQ(d["data"]["last_bar_open_time_ms"].GetInt64(), bars_.back().open_time_ms);
  EXPECT_STREQ(d["data"]["last_bar_open_time"].GetString(), "2024-01-17T12:00:00Z");
  EXPECT_TRUE(d["data"]["age_seconds"].IsInt64());
  EXPECT_FALSE(d["data"]["partial_bar"].GetBool());
  EXPECT_FALSE(d["data"]["gaps"].GetBool());
  EXPECT_DOUBLE_EQ(d["data"]["last_close"].GetDouble(), bars_.back().close);
  EXPECT_TRUE(d["skill"].IsNull());
  EXPECT_TRUE(d["skill_note"].IsString());
  ASSERT_EQ(d["steps"].Size(), 3u);
  for (unsigned h = 0; h < 3; ++h) {
    const auto& step = d["steps"][h];
    EXPECT_EQ(step["h"].GetInt(), static_cast<int>(h + 1));
    EXPECT_EQ(step["open_time_ms"].GetInt64(), bars_.back().open_time_ms + (h + 1) * kFourHoursMs);
    const auto& p = step["prices"];
    EXPECT_LE(p["p10"].GetDouble(), p["p50"].GetDouble());
    EXPECT_LE(p["p50"].GetDouble(), p["p90"].GetDouble());
    EXPECT_GT(p["p10"].GetDouble(), 0);
  }

  auto subset = Forecast(R"({"symbol":"BTCUSDT","interval":"4h","quantiles":[0.9,0.1]})");
  ASSERT_EQ(subset.status, 200) << subset.body;
  auto s = Json(subset.body);
  EXPECT_EQ(s["steps"].Size(), 4u);  // the model's horizon
  EXPECT_EQ(s["steps"][0]["prices"].MemberCount(), 2u);
  EXPECT_FALSE(s["steps"][0]["prices"].HasMember("p50"));
}

TEST_F(ForecastsApiTest, BadRequestsNameTheAllowedValues) {
  auto unknown = Forecast(R"({"symbol":"DOGEUSDT","interval":"4h"})");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(unknown.body, HasSubstr("BTCUSDT, ETHUSDT"));
  EXPECT_THAT(unknown.body, HasSubstr("\"param\":\"symbol\""));

  auto malformed = Forecast(R"({"symbol":"BTC/USDT","interval":"4h"})");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_THAT(malformed.body, HasSubstr("BTCUSDT"));

  auto interval = Forecast(R"({"symbol":"BTCUSDT","interval":"1d"})");
  EXPECT_EQ(interval.status, 400);
  EXPECT_THAT(interval.body, HasSubstr("intervals with a model for BTCUSDT: 4h"));
  EXPECT_THAT(interval.body, HasSubstr("\"param\":\"interval\""));

  auto horizon = Forecast(R"({"symbol":"BTCUSDT","interval":"4h","horizon":9})");
  EXPECT_EQ(horizon.status, 400);
  EXPECT_THAT(horizon.body, HasSubstr("horizon must be 1..4"));

  auto quantiles = Forecast(R"({"symbol":"BTCUSDT","interval":"4h","quantiles":[0.3]})");
  EXPECT_EQ(quantiles.status, 400);
  EXPECT_THAT(quantiles.body, HasSubstr("0.1, 0.5, 0.9"));

  // A body larger than the parser's in-object buffers (about 5 KiB of values) parses whole: the
  // answer is the check of its values, not invalid_json.
  std::string many = R"({"symbol":"BTCUSDT","interval":"4h","quantiles":[)";
  for (int i = 0; i < 300; ++i) many += "0.1,";
  many += "0.7]}";
  auto long_body = Forecast(many);
  EXPECT_EQ(long_body.status, 400);
  EXPECT_THAT(long_body.body, HasSubstr("quantile 0.1 is listed twice"));

  auto field = Forecast(R"({"symbol":"BTCUSDT","interval":"4h","steps":3})");
  EXPECT_EQ(field.status, 400);
  EXPECT_THAT(field.body, HasSubstr("known: symbol, interval, horizon, quantiles"));

  EXPECT_EQ(Forecast(R"({"interval":"4h"})").status, 400);
  EXPECT_EQ(Forecast("not json").status, 400);

  // ETHUSDT has a model but no candles.
  auto no_candles = Forecast(R"({"symbol":"ETHUSDT","interval":"4h"})");
  EXPECT_EQ(no_candles.status, 409);
  EXPECT_THAT(no_candles.body, HasSubstr("megaserve data import"));
}

TEST_F(ForecastsApiTest, CachedUntilANewCandleArrives) {
  const std::string body = R"({"symbol":"BTCUSDT","interval":"4h","horizon":2})";
  // The model's first load changes the repository's state, which invalidates cached model
  // metadata; load it beforehand so that only candles are in play here.
  ASSERT_EQ(Forecast(R"({"symbol":"BTCUSDT","interval":"4h","horizon":1})").status, 200);
  auto first = Forecast(body);
  ASSERT_EQ(first.status, 200) << first.body;
  EXPECT_THAT(first.Header("cache-status"), HasSubstr("fwd=miss"));
  auto second = Forecast(body);
  ASSERT_EQ(second.status, 200);
  EXPECT_EQ(second.Header("cache-status"), "megaserve; hit");
  EXPECT_EQ(second.body, first.body);

  std::vector<forecast::Candle> more = SyntheticCandles(kBars + 1);
  auto counts = server_.app().candles().Upsert("BTCUSDT", "4h", "test",
                                               std::span<const forecast::Candle>(&more.back(), 1));
  ASSERT_TRUE(counts.ok()) << counts.status().ToString();
  auto third = Forecast(body);
  ASSERT_EQ(third.status, 200) << third.body;
  EXPECT_THAT(third.Header("cache-status"), HasSubstr("fwd=miss"));
  EXPECT_EQ(Json(third.body)["data"]["last_bar_open_time_ms"].GetInt64(), more.back().open_time_ms);
  auto fourth = Forecast(body);
  EXPECT_EQ(fourth.Header("cache-status"), "megaserve; hit");
  EXPECT_EQ(fourth.body, third.body);
}

TEST_F(ForecastsApiTest, CandlesPageBackwardsAndForwards) {
  auto page1 = GetPath("/v1/markets/btcusdt/candles?interval=4h&limit=40");
  ASSERT_EQ(page1.status, 200) << page1.body;
  auto d1 = Json(page1.body);
  ASSERT_EQ(d1["data"].Size(), 40u);
  EXPECT_EQ(d1["data"][39]["open_time_ms"].GetInt64(), bars_.back().open_time_ms);
  EXPECT_EQ(d1["data"][0]["open_time_ms"].GetInt64(), bars_[60].open_time_ms);
  EXPECT_DOUBLE_EQ(d1["data"][0]["close"].GetDouble(), bars_[60].close);
  EXPECT_FALSE(d1["data"][0]["partial"].GetBool());
  EXPECT_STREQ(d1["data"][0]["open_time"].GetString(), "2024-01-11T00:00:00Z");
  EXPECT_TRUE(d1["has_more"].GetBool());

  auto page2 = GetPath(std::string("/v1/markets/BTCUSDT/candles?") + d1["next"].GetString());
  auto d2 = Json(page2.body);
  ASSERT_EQ(d2["data"].Size(), 40u);
  EXPECT_EQ(d2["data"][39]["open_time_ms"].GetInt64(), bars_[59].open_time_ms);
  auto page3 = GetPath(std::string("/v1/markets/BTCUSDT/candles?") + d2["next"].GetString());
  auto d3 = Json(page3.body);
  ASSERT_EQ(d3["data"].Size(), 20u);
  EXPECT_FALSE(d3["has_more"].GetBool());
  EXPECT_TRUE(d3["next"].IsNull());

  auto forward = GetPath("/v1/markets/BTCUSDT/candles?interval=4h&limit=10&from=2024-01-01");
  auto f = Json(forward.body);
  ASSERT_EQ(f["data"].Size(), 10u);
  EXPECT_EQ(f["data"][0]["open_time_ms"].GetInt64(), kJan2024Ms);
  auto ranged = GetPath("/v1/markets/BTCUSDT/candles?interval=4h&from=" +
                        std::to_string(kJan2024Ms + 4 * kFourHoursMs) + "&to=2024-01-02T00:00:00Z");
  auto r = Json(ranged.body);
  ASSERT_EQ(r["data"].Size(), 3u);  // 16:00, 20:00 and 00:00
  EXPECT_FALSE(r["has_more"].GetBool());
}

TEST_F(ForecastsApiTest, CandlesRefuseBadParameters) {
  auto missing = GetPath("/v1/markets/BTCUSDT/candles");
  EXPECT_EQ(missing.status, 400);
  EXPECT_THAT(missing.body, HasSubstr("1m"));
  EXPECT_EQ(GetPath("/v1/markets/BTCUSDT/candles?interval=5x").status, 400);
  EXPECT_EQ(GetPath("/v1/markets/BTCUSDT/candles?interval=4h&limit=0").status, 400);
  auto big = GetPath("/v1/markets/BTCUSDT/candles?interval=4h&limit=1001");
  EXPECT_EQ(big.status, 400);
  EXPECT_THAT(big.body, HasSubstr("1 to 1000"));
  EXPECT_EQ(GetPath("/v1/markets/BTCUSDT/candles?interval=4h&from=yesterday").status, 400);
  EXPECT_EQ(GetPath("/v1/markets/BTC-USDT/candles?interval=4h").status, 400);
  auto unknown = GetPath("/v1/markets/ETHUSDT/candles?interval=4h");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_THAT(unknown.body, HasSubstr("BTCUSDT 4h"));
}

TEST_F(ForecastsApiTest, ConcurrentForecastsAreBatched) {
  constexpr int kClients = 64;
  constexpr int kPerClient = 8;
  ASSERT_TRUE(server_.app().candles().Upsert("ETHUSDT", "4h", "test", bars_).ok());
  double batched = Burst("BTCUSDT", kClients, kPerClient);
  double unbatched = Burst("ETHUSDT", kClients, kPerClient);
  ASSERT_GT(batched, 0) << "a batched forecast failed";
  ASSERT_GT(unbatched, 0) << "an unbatched forecast failed";
  EXPECT_GT(MeanBatchSize("btcusdt-4h"), 1.0);
  EXPECT_DOUBLE_EQ(MeanBatchSize("ethusdt-4h"), 1.0);
  std::printf("uncached forecasts/s with %d clients: max_batch_size 32 %.0f, 1 %.0f\n", kClients,
              batched, unbatched);
}

}  // namespace
}  // namespace megaserve::testing
