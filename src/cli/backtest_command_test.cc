#include "cli/backtest_command.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/lstm_model.h"
#include "store/database.h"
#include "store/migrations.h"

namespace megaserve::cli {
namespace {

namespace fs = std::filesystem;
using forecast::Candle;

constexpr int64_t kHour = 3'600'000;

// 400 hourly bars of a random walk from 2024-01-01 00:00 UTC.
std::vector<Candle> Walk() {
  std::mt19937_64 rng(17);
  std::normal_distribution<double> step(0.0, 0.01);
  std::vector<Candle> out;
  int64_t t0 = *forecast::ParseUtcTimestamp("2024-01-01");
  double close = 40000;
  for (int i = 0; i < 400; ++i) {
    double open = close;
    close = open * std::exp(step(rng));
    out.push_back({t0 + i * kHour, open, std::max(open, close) * 1.002,
                   std::min(open, close) * 0.998, close, 50.0 + i % 13, false});
  }
  return out;
}

// A fixture folder: the series as CSV (timestamp layout) and a tiny random model of it.
class BacktestCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("backtest_cmd_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "model");
    candles_ = Walk();
    std::ofstream csv(dir_ / "candles.csv");
    csv << "timestamp,open,high,low,close,volume\n";
    char line[256];
    for (const Candle& c : candles_) {
      std::snprintf(line, sizeof line, "%s,%.2f,%.2f,%.2f,%.2f,%.4f\n",
                    forecast::FormatUtcTimestamp(c.open_time_ms).c_str(), c.open, c.high, c.low,
                    c.close, c.volume);
      csv << line;
    }
    csv.close();

    forecast::ForecastModel m;
    forecast::LstmShape& s = m.weights.shape;
    s.hidden_size = 8;
    s.num_layers = 1;
    s.horizon = 3;
    s.window = 16;
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    auto fill = [&](std::size_t n) {
      std::vector<float> v(n);
      for (auto& x : v) x = u(rng);
      return v;
    };
    m.weights.layers.push_back(
        {fill(4 * 8 * forecast::kFeatureCount), fill(4 * 8 * 8), fill(32), fill(32)});
    m.weights.head_w = fill(s.outputs() * 8);
    m.weights.head_b = fill(s.outputs());
    m.info.symbol = "TESTUSDT";
    m.info.interval = "1h";
    m.info.norm.std.fill(1.0f);
    m.info.norm.target_scale = 0.01f;
    ASSERT_TRUE(forecast::WriteModelFp32(m, (dir_ / "model" / "model.safetensors").string()).ok());
    ASSERT_TRUE(
        forecast::WriteModelInt8(m, (dir_ / "model" / "model.int8.safetensors").string()).ok());
  }

  BacktestFlags Flags() const {
    BacktestFlags f;
    f.model_dir = (dir_ / "model").string();
    f.data_file = (dir_ / "candles.csv").string();
    f.from = "2024-01-03";
    f.to = "2024-01-10";
    return f;
  }

  // Runs the command, returning its exit code and what it printed to `out`.
  int Run(const BacktestFlags& f, std::string* printed = nullptr) {
    std::FILE* out = std::tmpfile();
    int code = RunBacktestCommand(f, out);
    std::rewind(out);
    std::string text;
    std::array<char, 512> buf{};
    while (std::fgets(buf.data(), buf.size(), out) != nullptr) text += buf.data();
    std::fclose(out);
    if (printed) *printed = text;
    return code;
  }

  std::string Slurp(const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  fs::path dir_;
  std::vector<Candle> candles_;
};

TEST_F(BacktestCommandTest, ParsesTheTestRange) {
  auto r = ParseTestRange("2025-01-01", "2025-12-31");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->first, *forecast::ParseUtcTimestamp("2025-01-01"));
  EXPECT_EQ(r->second, *forecast::ParseUtcTimestamp("2026-01-01") - 1);  // the whole last day
  r = ParseTestRange("2025-01-01 04:00:00", "2025-01-01 08:00:00");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->second - r->first, 4 * kHour);
  EXPECT_NE(ParseTestRange("2025-13-01", "2025-12-31").status().message().find("--from"),
            std::string::npos);
  EXPECT_NE(ParseTestRange("2025-01-01", "soon").status().message().find("--to"),
            std::string::npos);
  EXPECT_NE(ParseTestRange("2025-02-01", "2025-01-01").status().message().find("before"),
            std::string::npos);
  EXPECT_FALSE(ParseTestRange("", "2025-01-01").ok());
}

TEST_F(BacktestCommandTest, ArgumentErrorsExitWithTwo) {
  BacktestFlags f = Flags();
  f.from_store = true;  // and --data
  EXPECT_EQ(Run(f), 2);
  f = Flags();
  f.data_file.clear();
  EXPECT_EQ(Run(f), 2);  // neither
  f = Flags();
  f.model_dir.clear();
  EXPECT_EQ(Run(f), 2);  // no model and not --baseline-only
  f = Flags();
  f.baseline_only = true;
  EXPECT_EQ(Run(f), 2);  // --baseline-only with a model
  f = Flags();
  f.precision = "fp16";
  EXPECT_EQ(Run(f), 2);
  f = Flags();
  f.to = "2023-01-01";
  EXPECT_EQ(Run(f), 2);
  f = Flags();
  f.interval = "4h";  // the model is hourly
  EXPECT_EQ(Run(f), 2);
  f = Flags();
  f.horizon = 4;  // the model predicts 3 steps
  EXPECT_EQ(Run(f), 2);
  f = Flags();
  f.model_dir = (dir_ / "missing").string();
  EXPECT_EQ(Run(f), 1);
  f = Flags();
  f.from = "2030-01-01";
  f.to = "2030-02-01";
  EXPECT_EQ(Run(f), 1);  // no origin in range
  f = Flags();
  f.from = "2024-01-01";  // the first bars have no full window before them
  EXPECT_EQ(Run(f), 1);
}

TEST_F(BacktestCommandTest, RunsPrintsWritesJsonAndStoresTheSummaryInBothFiles) {
  BacktestFlags f = Flags();
  f.json_out = (dir_ / "out.json").string();
  std::string printed;
  ASSERT_EQ(Run(f, &printed), 0) << printed;
  EXPECT_NE(printed.find("model model (int8"), std::string::npos) << printed;
  EXPECT_NE(printed.find("skill/pers."), std::string::npos) << printed;
  // 8 days of hourly origins.
  EXPECT_NE(printed.find("192 origins (2024-01-03 00:00:00 .. 2024-01-10 23:00:00)"),
            std::string::npos)
      << printed;

  rapidjson::Document doc;
  std::string json = Slurp(f.json_out);
  ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;
  EXPECT_EQ(doc["origins"].GetInt(), 192);
  EXPECT_STREQ(doc["model"]["precision"].GetString(), "int8");
  EXPECT_STREQ(doc["model"]["interval"].GetString(), "1h");
  ASSERT_EQ(doc["steps"].Size(), 3u);
  EXPECT_EQ(doc["steps"][0]["n"].GetInt(), 192);
  EXPECT_GT(doc["steps"][2]["persistence"]["mae"].GetDouble(), 0);
  EXPECT_EQ(doc["drift_window"].GetInt(), 16);  // the model's window

  for (const char* file : {"model.safetensors", "model.int8.safetensors"}) {
    auto m = forecast::ReadModel((dir_ / "model" / file).string());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    rapidjson::Document summary;
    ASSERT_FALSE(summary.Parse(m->info.backtest_json.c_str()).HasParseError())
        << m->info.backtest_json;
    ASSERT_TRUE(summary.HasMember("horizons")) << file;
    EXPECT_EQ(summary["horizons"].Size(), 3u);
    EXPECT_DOUBLE_EQ(summary["horizons"][0]["mae_persistence"].GetDouble(),
                     std::round(doc["steps"][0]["persistence"]["mae"].GetDouble() * 1e4) / 1e4);
    EXPECT_STREQ(summary["test_from"].GetString(), "2024-01-03T00:00:00Z");
    EXPECT_EQ(m->info.symbol, "TESTUSDT");  // the rest of the model is kept
  }
}

TEST_F(BacktestCommandTest, NoSaveLeavesTheModelAlone) {
  BacktestFlags f = Flags();
  f.no_save = true;
  f.precision = "fp32";
  f.horizon = 2;
  std::string printed;
  ASSERT_EQ(Run(f, &printed), 0) << printed;
  EXPECT_NE(printed.find("fp32"), std::string::npos);
  auto m = forecast::ReadModel((dir_ / "model" / "model.safetensors").string());
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->info.backtest_json, "{}");
}

TEST_F(BacktestCommandTest, BaselineOnlyNeedsNoModelAndChecksTheInterval) {
  BacktestFlags f = Flags();
  f.model_dir.clear();
  f.baseline_only = true;
  f.horizon = 2;
  f.json_out = (dir_ / "baseline.json").string();
  std::string printed;
  ASSERT_EQ(Run(f, &printed), 0) << printed;
  // No model and no --symbol: the file's series is named by its interval alone.
  EXPECT_NE(printed.find("baselines only, 1h bars from "), std::string::npos) << printed;
  EXPECT_NE(printed.find("MAE drift"), std::string::npos) << printed;
  rapidjson::Document doc;
  std::string json = Slurp(f.json_out);
  ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;
  EXPECT_TRUE(doc["model"]["baseline_only"].GetBool());
  ASSERT_EQ(doc["steps"].Size(), 2u);
  // Persistence's MAE at step 1 by hand, over the same origins.
  int64_t from = *forecast::ParseUtcTimestamp("2024-01-03");
  int64_t to = *forecast::ParseUtcTimestamp("2024-01-11") - 1;
  double sum = 0;
  int n = 0;
  for (std::size_t t = 0; t + 1 < candles_.size(); ++t) {
    if (candles_[t].open_time_ms < from || candles_[t].open_time_ms > to) continue;
    // The CSV holds two decimals.
    sum += std::fabs(std::round(candles_[t + 1].close * 100) / 100 -
                     std::round(candles_[t].close * 100) / 100);
    ++n;
  }
  EXPECT_EQ(n, 192);
  EXPECT_NEAR(doc["steps"][0]["persistence"]["mae"].GetDouble(), sum / n, 1e-6);

  f.interval = "4h";
  EXPECT_EQ(Run(f), 2);
}

TEST_F(BacktestCommandTest, ReadsCandlesFromTheStore) {
  std::string data_dir = (dir_ / "data").string();
  {
    store::StoreOptions options;
    options.url = "sqlite://" + data_dir + "/megaserve.db";
    fs::create_directories(data_dir);
    auto db = store::Database::Open(options);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    ASSERT_TRUE(store::Migrate(**db).ok());
    forecast::CandleStore candles(**db);
    ASSERT_TRUE(candles.Upsert("TESTUSDT", "1h", "test", candles_).ok());
  }
  BacktestFlags f = Flags();
  f.data_file.clear();
  f.from_store = true;
  f.data_dir = data_dir;
  f.no_save = true;
  f.json_out = (dir_ / "store.json").string();
  std::string printed;
  ASSERT_EQ(Run(f, &printed), 0) << printed;
  rapidjson::Document doc;
  std::string json = Slurp(f.json_out);
  ASSERT_FALSE(doc.Parse(json.c_str()).HasParseError()) << json;
  EXPECT_EQ(doc["origins"].GetInt(), 192);
  EXPECT_STREQ(doc["model"]["symbol"].GetString(), "TESTUSDT");

  f.symbol = "OTHERUSDT";
  EXPECT_EQ(Run(f, &printed), 1);
}

// The same through the real binary, as a user runs it.
TEST_F(BacktestCommandTest, BinaryRunsABacktest) {
  const char* bin = std::getenv("MEGASERVE_BINARY");
  if (bin == nullptr) GTEST_SKIP() << "MEGASERVE_BINARY is not set";
  BacktestFlags f = Flags();
  std::string cmd = std::string(bin) + " backtest --model " + f.model_dir + " --data " +
                    f.data_file + " --from 2024-01-03 --to 2024-01-10 --no-save --json " +
                    (dir_ / "bin.json").string() + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  int status = WEXITSTATUS(pclose(p));
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("192 origins"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir_ / "bin.json"));

  cmd = std::string(bin) + " backtest --data " + f.data_file + " --from 2024-01-03 2>&1";
  p = popen(cmd.c_str(), "r");
  out.clear();
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  EXPECT_NE(WEXITSTATUS(pclose(p)), 0) << out;
  EXPECT_NE(out.find("--to"), std::string::npos) << out;
}

}  // namespace
}  // namespace megaserve::cli
