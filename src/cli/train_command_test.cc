#include "cli/train_command.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "core/config.h"
#include "forecast/candle_files.h"
#include "forecast/candle_store.h"
#include "forecast/lstm_model.h"
#include "models/model_config.h"
#include "store/migrations.h"

namespace megaserve::cli {
namespace {

namespace fs = std::filesystem;

constexpr int64_t k4h = 4 * 3'600'000;
constexpr int64_t kStartMs = 1'704'067'200'000;  // 2024-01-01 00:00 UTC

TEST(TrainCommandTest, DatesCoverTheWholeDayOrTheGivenBar) {
  auto day = ParseInclusiveDate("2023-12-31", "--train-until");
  ASSERT_TRUE(day.ok()) << day.status().message();
  EXPECT_EQ(*day, kStartMs - 1);
  auto bar = ParseInclusiveDate("2023-12-31 20:00:00", "--train-until");
  ASSERT_TRUE(bar.ok());
  EXPECT_EQ(*bar, kStartMs - k4h);
  for (const char* bad : {"31/12/2023", "2023-13-01", "2023-12-31T20:00:00Z", "yesterday"}) {
    auto r = ParseInclusiveDate(bad, "--validate-until");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.status().message().find("--validate-until"), std::string::npos);
  }
  EXPECT_NE(ParseInclusiveDate("", "--train-until").status().message().find("required"),
            std::string::npos);
}

TEST(TrainCommandTest, WritesAConfigTheRepositoryAccepts) {
  auto config = models::ParseModelConfig(ForecastModelConfig(3), "config.toml");
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_EQ(config->backend, "forecast");
  EXPECT_EQ(config->version, 3);
  EXPECT_EQ(config->batching.max_batch_size, 32);
  EXPECT_EQ(config->batching.max_queue_delay, std::chrono::microseconds(250));
  EXPECT_EQ(config->batching.preferred_batch_sizes, (std::vector<int>{16}));
}

TEST(TrainCommandTest, ParsesItsFlags) {
  CLI::App app;
  TrainFlags flags;
  AddTrainCommand(app, flags);
  app.parse(
      "train forecast --data x.csv --symbol btcusdt --interval 4h --train-until 2023-12-31 "
      "--validate-until 2024-12-31 --lr 0.01 --epochs 3",
      false);
  EXPECT_EQ(flags.data, "x.csv");
  EXPECT_EQ(flags.epochs, 3);
  EXPECT_EQ(flags.lr, 0.01);
  EXPECT_EQ(flags.window, 64);
  EXPECT_EQ(flags.hidden, 64);
  EXPECT_EQ(flags.seed, 42u);

  CLI::App strict;
  TrainFlags other;
  AddTrainCommand(strict, other);
  EXPECT_THROW(strict.parse("train forecast --symbol X --interval 4h --train-until 2023-12-31 "
                            "--validate-until 2024-12-31 --epochs 0",
                            false),
               CLI::ValidationError);
}

// Runs the binary with `args`; returns its output (stdout and stderr) and sets `status`.
std::string RunBinary(const std::string& args, int& status) {
  const char* bin = std::getenv("MEGASERVE_BINARY");
  const std::string cmd = std::string(bin ? bin : "megaserve") + " " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  status = WEXITSTATUS(pclose(p));
  return out;
}

class TrainCommandRunTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::getenv("MEGASERVE_BINARY") == nullptr) {
      GTEST_SKIP() << "MEGASERVE_BINARY is not set (run through ctest)";
    }
    char pattern[] = "/tmp/megaserve-train-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    if (!dir_.empty() && !HasFailure()) fs::remove_all(dir_);
  }

  // 4h bars from 2024-01-01 to 2024-04-09 (a noisy daily cycle with drift), bars 100 and 101
  // missing. Read from a file, the last bar counts as partial.
  std::vector<forecast::Candle> Series() const {
    std::vector<forecast::Candle> out;
    double prev = 40000;
    for (int t = 0; t < 600; ++t) {
      if (t == 100 || t == 101) continue;
      forecast::Candle c;
      c.open_time_ms = kStartMs + t * k4h;
      c.open = prev;
      c.close = 40000 * std::exp(0.0004 * t + 0.01 * std::sin(2 * M_PI * t / 6.0) +
                                 0.003 * std::sin(t * 12.9898));
      c.high = std::max(c.open, c.close) * 1.002;
      c.low = std::min(c.open, c.close) * 0.998;
      c.volume = 100 + 30 * std::cos(t * 0.7);
      prev = c.close;
      out.push_back(c);
    }
    return out;
  }

  fs::path WriteCsv() const {
    const fs::path path = dir_ / "candles.csv";
    std::ofstream out(path);
    out << "timestamp,open,high,low,close,volume\n";
    for (const auto& c : Series()) {
      out << forecast::FormatUtcTimestamp(c.open_time_ms) << ',' << c.open << ',' << c.high << ','
          << c.low << ',' << c.close << ',' << c.volume << '\n';
    }
    return path;
  }

  // Flags of a tiny, fast training run: training January and February 2024, validating March.
  // `changes` replaces flags by name ({"--interval", "5h"}) or adds them.
  std::string Tiny(const std::map<std::string, std::string>& changes = {}) const {
    std::map<std::string, std::string> flags = {{"--symbol", "TESTUSDT"},
                                                {"--interval", "4h"},
                                                {"--train-until", "2024-02-29"},
                                                {"--validate-until", "2024-03-31"},
                                                {"--window", "12"},
                                                {"--horizon", "2"},
                                                {"--hidden", "8"},
                                                {"--layers", "1"},
                                                {"--epochs", "3"},
                                                {"--batch", "32"},
                                                {"--lr", "0.01"},
                                                {"--threads", "1"},
                                                {"--models-dir", (dir_ / "models").string()},
                                                {"--data-dir", (dir_ / "data").string()}};
    for (const auto& [flag, value] : changes) flags[flag] = value;
    std::string out;
    for (const auto& [flag, value] : flags) out += " " + flag + " '" + value + "'";
    return out;
  }

  fs::path dir_;
};

TEST_F(TrainCommandRunTest, BadArgumentsAreClearErrors) {
  const std::string csv = WriteCsv().string();
  int status = 0;
  auto out = RunBinary("train forecast" + Tiny(), status);  // no source
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("exactly one of --data FILE.csv and --from-store"), std::string::npos) << out;

  out = RunBinary("train forecast --from-store --data " + csv + Tiny(), status);
  EXPECT_EQ(status, 2) << out;

  out = RunBinary("train forecast --data /nonexistent/candles.csv" + Tiny(), status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("/nonexistent/candles.csv"), std::string::npos) << out;

  out = RunBinary("train forecast --data " + csv + Tiny({{"--interval", "5h"}}), status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--interval"), std::string::npos) << out;
  EXPECT_NE(out.find("4h"), std::string::npos) << out;  // names the allowed values

  out = RunBinary("train forecast --data " + csv + Tiny({{"--interval", "1h"}}), status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("not --interval 1h"), std::string::npos) << out;

  out = RunBinary("train forecast --data " + csv + Tiny({{"--train-until", "2024-02-30"}}), status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--train-until '2024-02-30' is not a UTC date"), std::string::npos) << out;

  out = RunBinary("train forecast --data " + csv + Tiny({{"--validate-until", "2024-02-01"}}),
                  status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("must be after --train-until"), std::string::npos) << out;

  // Validation ends before a whole window plus horizon fits: the trainer refuses the range.
  out = RunBinary(
      "train forecast --data " + csv + Tiny({{"--validate-until", "2024-03-01 00:00:00"}}), status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("the validation range"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir_ / "models" / "testusdt-4h"));
}

TEST_F(TrainCommandRunTest, TrainsFromACsvAndWritesALoadableModel) {
  const std::string csv = WriteCsv().string();
  int status = 0;
  auto out = RunBinary("train forecast --data " + csv + Tiny(), status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(out.find("warning: 1 gap in the series (2 missing bars"), std::string::npos) << out;
  EXPECT_NE(out.find("epoch   3/3"), std::string::npos) << out;
  EXPECT_NE(out.find("trained TESTUSDT 4h"), std::string::npos) << out;

  const fs::path model_dir = dir_ / "models" / "testusdt-4h";
  auto config = models::LoadModelConfig((model_dir / "config.toml").string());
  ASSERT_TRUE(config.ok()) << config.status().message();
  EXPECT_EQ(config->backend, "forecast");
  EXPECT_EQ(config->version, 1);
  auto fp32 = forecast::ReadModel((model_dir / "model.safetensors").string());
  ASSERT_TRUE(fp32.ok()) << fp32.status().message();
  auto int8 = forecast::ReadModel((model_dir / "model.int8.safetensors").string());
  ASSERT_TRUE(int8.ok()) << int8.status().message();
  EXPECT_EQ(fp32->info.symbol, "TESTUSDT");
  EXPECT_EQ(fp32->info.interval, "4h");
  EXPECT_EQ(fp32->weights.shape.window, 12);
  EXPECT_EQ(fp32->weights.shape.hidden_size, 8);
  EXPECT_EQ(fp32->info.train_last_ms, kStartMs + 359 * k4h);        // 2024-02-29 20:00
  EXPECT_EQ(fp32->info.validation_first_ms, kStartMs + 360 * k4h);  // 2024-03-01 00:00
  EXPECT_EQ(fp32->info.validation_last_ms, kStartMs + 545 * k4h);   // 2024-03-31 20:00
  EXPECT_EQ(int8->info.norm, fp32->info.norm);
  EXPECT_LT(fs::file_size(model_dir / "model.int8.safetensors"),
            fs::file_size(model_dir / "model.safetensors"));

  // Training again into the same folder bumps the version; --quiet prints only the summary.
  out = RunBinary("train forecast -q --seed 7 --data " + csv + Tiny(), status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(out.find("epoch "), std::string::npos) << out;
  config = models::LoadModelConfig((model_dir / "config.toml").string());
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->version, 2);
}

TEST_F(TrainCommandRunTest, TrainsFromTheJobStore) {
  core::Config config;
  config.data_dir = (dir_ / "data").string();
  fs::create_directories(config.data_dir);
  {
    auto db = store::OpenConfiguredStore(config);
    ASSERT_TRUE(db.ok()) << db.status().message();
    forecast::CandleStore candles(**db);
    auto stored = candles.Upsert("TESTUSDT", "4h", "csv", Series());
    ASSERT_TRUE(stored.ok()) << stored.status().message();
  }
  int status = 0;
  auto out = RunBinary("train forecast --from-store --name from-store" + Tiny(), status);
  ASSERT_EQ(status, 0) << out;
  auto model = forecast::ReadModel((dir_ / "models" / "from-store" / "model.safetensors").string());
  ASSERT_TRUE(model.ok()) << model.status().message();
  EXPECT_EQ(model->info.symbol, "TESTUSDT");

  out = RunBinary("train forecast --from-store" + Tiny({{"--symbol", "OTHERUSDT"}}), status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("no complete OTHERUSDT 4h bars in the job store"), std::string::npos) << out;
}

}  // namespace
}  // namespace megaserve::cli
