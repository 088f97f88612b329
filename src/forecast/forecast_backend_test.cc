// The "forecast" backend: which file and precision it loads, both request encodings, and one
// engine run per batch that gives the same numbers as single requests.
#include "forecast/forecast_backend.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "forecast/forecast_test_util.h"
#include "store/test_util.h"

namespace megaserve::forecast {
namespace {

using ::testing::HasSubstr;
using testing::TinyModel;
using testing::TinyShape;

class ForecastBackendTest : public ::testing::Test {
 protected:
  core::Result<std::unique_ptr<ForecastBackendModel>> Load(const std::string& name) {
    models::ModelSpec spec;
    spec.name = name;
    spec.dir = (dir_.path() / name).string();
    spec.config.backend = "forecast";
    return ForecastBackendModel::Load(spec);
  }

  std::vector<float> RandomWindow(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::vector<float> w(TinyShape().window * kFeatureCount);
    for (float& x : w) x = n(rng);
    return w;
  }

  std::vector<float> Decode(const std::string& answer) {
    std::vector<float> out(TinyShape().outputs());
    auto s = DecodeBinaryOutputs(answer, out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out;
  }

  store::testing::TempDir dir_;
  ForecastModel model_ = TinyModel();
};

TEST_F(ForecastBackendTest, PrefersInt8AndHonoursThePrecisionFile) {
  testing::WriteModelDir(dir_.path().string(), "both", model_, true, true);
  testing::WriteModelDir(dir_.path().string(), "fp32only", model_, true, false);
  testing::WriteModelDir(dir_.path().string(), "int8only", model_, false, true);

  auto both = Load("both");
  ASSERT_TRUE(both.ok()) << both.status().ToString();
  EXPECT_EQ((*both)->precision(), Precision::kInt8);
  EXPECT_THAT((*both)->weights_path(), ::testing::EndsWith("model.int8.safetensors"));
  EXPECT_GT((*both)->memory_bytes(), 0u);
  EXPECT_EQ((*both)->info().symbol, "BTCUSDT");
  EXPECT_EQ((*both)->shape(), TinyShape());

  auto fp32 = Load("fp32only");
  ASSERT_TRUE(fp32.ok()) << fp32.status().ToString();
  EXPECT_EQ((*fp32)->precision(), Precision::kFp32);

  auto int8 = Load("int8only");
  ASSERT_TRUE(int8.ok()) << int8.status().ToString();
  EXPECT_EQ((*int8)->precision(), Precision::kInt8);

  std::ofstream(dir_.path() / "both" / "precision") << "fp32\n";
  auto chosen = Load("both");
  ASSERT_TRUE(chosen.ok()) << chosen.status().ToString();
  EXPECT_EQ((*chosen)->precision(), Precision::kFp32);
  EXPECT_THAT((*chosen)->weights_path(), ::testing::EndsWith("/model.safetensors"));

  // INT8 asked of an FP32-only folder: quantized at load.
  std::ofstream(dir_.path() / "fp32only" / "precision") << "int8";
  auto quantized = Load("fp32only");
  ASSERT_TRUE(quantized.ok()) << quantized.status().ToString();
  EXPECT_EQ((*quantized)->precision(), Precision::kInt8);
}

TEST_F(ForecastBackendTest, LoadErrorsNameTheFiles) {
  std::filesystem::create_directories(dir_.path() / "empty");
  auto empty = Load("empty");
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("model.int8.safetensors"));
  EXPECT_THAT(empty.status().message(), HasSubstr("model.safetensors"));

  testing::WriteModelDir(dir_.path().string(), "bad", model_, true, false);
  std::ofstream(dir_.path() / "bad" / "precision") << "fp16";
  auto bad = Load("bad");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("precision"));
}

TEST_F(ForecastBackendTest, BatchMatchesSingleRunsAndTheEngine) {
  testing::WriteModelDir(dir_.path().string(), "m", model_, true, true);
  auto loaded = Load("m");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ForecastBackendModel& model = **loaded;

  // The reference: the engine alone, on the file the backend read.
  auto stored = ReadModel(model.weights_path());
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  auto engine = LstmEngine::Create(stored->weights, Precision::kInt8);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();

  std::vector<models::Input> inputs;
  std::vector<std::vector<float>> expected;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    std::vector<float> window = RandomWindow(seed);
    inputs.push_back(EncodeBinaryWindow(window));
    std::vector<float> out(TinyShape().outputs());
    (*engine)->Run(window, 1, out);
    expected.push_back(out);
  }
  inputs.insert(inputs.begin() + 2, std::string("\x01short", 6));  // fails alone

  auto results = model.InferBatch(inputs);
  ASSERT_EQ(results.size(), 6u);
  EXPECT_FALSE(results[2].ok());
  EXPECT_EQ(results[2].status().code(), core::StatusCode::kInvalidArgument);
  int e = 0;
  for (int i = 0; i < 6; ++i) {
    if (i == 2) continue;
    ASSERT_TRUE(results[i].ok()) << results[i].status().ToString();
    std::vector<float> batched = Decode(*results[i]);
    auto single = model.Infer(inputs[i].view());
    ASSERT_TRUE(single.ok());
    std::vector<float> alone = Decode(*single);
    for (int k = 0; k < TinyShape().outputs(); ++k) {
      EXPECT_NEAR(batched[k], expected[e][k], 1e-5) << i << " " << k;
      EXPECT_NEAR(alone[k], expected[e][k], 1e-5) << i << " " << k;
    }
    ++e;
  }
}

TEST_F(ForecastBackendTest, IdenticalInputsInABatchShareOneRowAndKeepTheirOwnAnswers) {
  testing::WriteModelDir(dir_.path().string(), "m", model_, true, false);
  auto loaded = Load("m");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  ForecastBackendModel& model = **loaded;
  const std::string a = EncodeBinaryWindow(RandomWindow(1));
  const std::string b = EncodeBinaryWindow(RandomWindow(2));
  const std::string bad("\x01short", 6);
  // a, b, a, bad, bad, b, a: the repeats get the first copy's answer, the bad ones fail alone.
  // The first two a's share one string (as forecast requests share their window), the last is
  // a copy of it.
  auto shared_a = std::make_shared<const std::string>(a);
  const std::vector<models::Input> inputs = {
      models::Input(shared_a), b, models::Input(shared_a), bad, bad, b, a};
  auto results = model.InferBatch(inputs);
  ASSERT_EQ(results.size(), inputs.size());
  auto alone_a = model.Infer(a);
  auto alone_b = model.Infer(b);
  ASSERT_TRUE(alone_a.ok() && alone_b.ok());
  EXPECT_NE(*alone_a, *alone_b);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].view() == bad) {
      EXPECT_EQ(results[i].status().code(), core::StatusCode::kInvalidArgument) << i;
      continue;
    }
    ASSERT_TRUE(results[i].ok()) << i << results[i].status().ToString();
    EXPECT_EQ(*results[i], inputs[i].view() == a ? *alone_a : *alone_b) << i;
  }
}

TEST_F(ForecastBackendTest, JsonRequestsGiveTheBinaryAnswerAsJson) {
  testing::WriteModelDir(dir_.path().string(), "m", model_, true, false);
  auto loaded = Load("m");
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  std::vector<float> window = RandomWindow(3);
  std::string json = "{\"window\":[";
  for (std::size_t i = 0; i < window.size(); ++i) {
    json += (i ? "," : "") + fmt::format("{:.9g}", window[i]);
  }
  json += "]}";
  auto answer = (*loaded)->Infer(json);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  auto binary = (*loaded)->Infer(EncodeBinaryWindow(window));
  ASSERT_TRUE(binary.ok());
  std::vector<float> expected = Decode(*binary);

  rapidjson::Document d;
  d.Parse(answer->c_str());
  ASSERT_FALSE(d.HasParseError()) << *answer;
  EXPECT_EQ(d["horizon"].GetInt(), TinyShape().horizon);
  ASSERT_EQ(d["quantiles"].Size(), 3u);
  EXPECT_DOUBLE_EQ(d["quantiles"][1].GetDouble(), 0.5);
  ASSERT_EQ(d["outputs"].Size(), static_cast<unsigned>(TinyShape().horizon));
  for (int h = 0; h < TinyShape().horizon; ++h) {
    for (int q = 0; q < 3; ++q) {
      EXPECT_NEAR(d["outputs"][h][q].GetDouble(), expected[h * 3 + q], 1e-6);
    }
  }

  auto wrong = (*loaded)->Infer("{\"window\":[1,2,3]}");
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(wrong.status().message(), HasSubstr("112"));  // 16 bars x 7 features
  EXPECT_FALSE((*loaded)->Infer("{\"input\":1}").ok());
  EXPECT_FALSE((*loaded)->Infer("").ok());
}

}  // namespace
}  // namespace megaserve::forecast
