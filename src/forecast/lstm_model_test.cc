#include "forecast/lstm_model.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "diffusion/safetensors.h"
#include "store/test_util.h"

namespace megaserve::forecast {
namespace {

// A file in one folder for this test program, removed when the program ends.
std::filesystem::path TempPath(const std::string& name) {
  static const store::testing::TempDir dir;
  return dir.path() / name;
}

ForecastModel RandomModel(LstmShape shape = {}, uint32_t seed = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.3f, 0.3f);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  ForecastModel m;
  m.weights.shape = shape;
  const std::size_t g = 4 * shape.hidden_size;
  for (int l = 0; l < shape.num_layers; ++l) {
    const int in = l == 0 ? shape.input_size : shape.hidden_size;
    m.weights.layers.push_back({fill(g * in), fill(g * shape.hidden_size), fill(g), fill(g)});
  }
  m.weights.head_w = fill(static_cast<std::size_t>(shape.outputs()) * shape.hidden_size);
  m.weights.head_b = fill(shape.outputs());
  m.info.symbol = "BTCUSDT";
  m.info.interval = "4h";
  m.info.norm.mean = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f};
  m.info.norm.std = {1.5f, 2.5f, 1e-6f, 0.25f, 0.5f, 0.125f, 3.0f};
  m.info.norm.target_scale = 0.0123456789f;
  m.info.seed = 18446744073709551557ull;
  m.info.train_first_ms = 1502942400000;
  m.info.train_last_ms = 1703995200000;
  m.info.validation_first_ms = 1704067200000;
  m.info.validation_last_ms = 1735675200000;
  m.info.trained_at_ms = 1764000000000;
  m.info.training_json = R"({"epochs":12,"best_epoch":9,"train_loss":0.31,"validation_loss":0.33})";
  m.info.backtest_json = R"({"mae":[557.1,800.2]})";
  return m;
}

void ExpectSameInfo(const ModelInfo& a, const ModelInfo& b) {
  EXPECT_EQ(a.symbol, b.symbol);
  EXPECT_EQ(a.interval, b.interval);
  EXPECT_EQ(a.quantiles, b.quantiles);
  EXPECT_EQ(a.norm, b.norm);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.train_first_ms, b.train_first_ms);
  EXPECT_EQ(a.train_last_ms, b.train_last_ms);
  EXPECT_EQ(a.validation_first_ms, b.validation_first_ms);
  EXPECT_EQ(a.validation_last_ms, b.validation_last_ms);
  EXPECT_EQ(a.trained_at_ms, b.trained_at_ms);
  EXPECT_EQ(a.training_json, b.training_json);
  EXPECT_EQ(a.backtest_json, b.backtest_json);
}

TEST(LstmModelTest, InfoJsonRoundTrip) {
  const ForecastModel m = RandomModel();
  LstmShape shape{7, 32, 3, 4, 3, 48};
  const std::string json = ModelInfoToJson(m.info, shape);
  LstmShape parsed;
  auto info = ModelInfoFromJson(json, &parsed);
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  ExpectSameInfo(*info, m.info);
  EXPECT_EQ(parsed, shape);
  EXPECT_FALSE(ModelInfoFromJson("{}", &parsed).ok());
  EXPECT_FALSE(ModelInfoFromJson("[1]", &parsed).ok());
}

TEST(LstmModelTest, Fp32RoundTripIsExact) {
  const ForecastModel m = RandomModel();
  const auto path = TempPath("fp32.safetensors");
  ASSERT_TRUE(WriteModelFp32(m, path).ok());
  auto back = ReadModel(path);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->weights, m.weights);
  ExpectSameInfo(back->info, m.info);
  // No temporary file is left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(path.parent_path())) {
    files += e.path().filename().string().find(".tmp.") != std::string::npos;
  }
  EXPECT_EQ(files, 0);
  // It is a valid safetensors file with the tensor names PyTorch uses.
  auto file = diffusion::SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok());
  ASSERT_NE((*file)->Find("lstm.weight_ih_l0"), nullptr);
  EXPECT_EQ((*file)->Find("lstm.weight_ih_l0")->shape, (std::vector<int64_t>{256, 7}));
  EXPECT_NE((*file)->Find("head.bias"), nullptr);
  EXPECT_EQ(ReadInt8Weights(path).status().code(), core::StatusCode::kFailedPrecondition);
}

TEST(LstmModelTest, Int8RoundTripAndSize) {
  const ForecastModel m = RandomModel();
  const auto fp32 = TempPath("a.safetensors"), int8 = TempPath("a.int8.safetensors");
  ASSERT_TRUE(WriteModelFp32(m, fp32).ok());
  ASSERT_TRUE(WriteModelInt8(m, int8).ok());
  const double ratio = static_cast<double>(std::filesystem::file_size(int8)) /
                       static_cast<double>(std::filesystem::file_size(fp32));
  EXPECT_LE(ratio, 0.30) << "INT8 file / FP32 file";

  auto back = ReadModel(int8);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ExpectSameInfo(back->info, m.info);
  // Dequantized weights are within half a step of the originals; biases are exact.
  const auto& a = back->weights.layers[1].w_hh;
  const auto& b = m.weights.layers[1].w_hh;
  const QuantizedMatrix q = QuantizeRows(b, 256, 64);
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_NEAR(a[i], b[i], 0.5 * q.scale[i / 64] + 1e-7) << i;
  }
  EXPECT_EQ(back->weights.layers[0].b_ih, m.weights.layers[0].b_ih);
  EXPECT_EQ(back->weights.head_b, m.weights.head_b);

  auto ints = ReadInt8Weights(int8);
  ASSERT_TRUE(ints.ok()) << ints.status().ToString();
  EXPECT_EQ(*ints, QuantizeWeights(m.weights));
}

TEST(LstmModelTest, QuantizeRowsIsSymmetricPerRow) {
  const std::vector<float> w = {0.5f, -1.0f, 0.25f, 0, 0, 0, 2.54f, 0.01f, -0.02f};
  const QuantizedMatrix q = QuantizeRows(w, 3, 3);
  EXPECT_FLOAT_EQ(q.scale[0], 1.0f / 127);
  EXPECT_EQ(q.q[0], 64);  // 63.5 rounds to even
  EXPECT_EQ(q.q[1], -127);
  EXPECT_EQ(q.q[2], 32);        // 31.75
  EXPECT_EQ(q.scale[1], 1.0f);  // all-zero row
  EXPECT_EQ(q.q[3], 0);
  EXPECT_FLOAT_EQ(q.scale[2], 2.54f / 127);
  EXPECT_EQ(q.q[6], 127);
  EXPECT_EQ(q.q[7], 0);  // 0.5 rounds to even
  EXPECT_EQ(q.q[8], -1);
}

TEST(LstmModelTest, ValidateWeightsNamesTheTensor) {
  ForecastModel m = RandomModel();
  EXPECT_TRUE(ValidateWeights(m.weights).ok());
  m.weights.layers[1].b_hh.pop_back();
  auto st = ValidateWeights(m.weights);
  EXPECT_EQ(st.code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("lstm.bias_hh_l1"), std::string::npos) << st.message();
  m = RandomModel();
  m.weights.head_w.resize(3);
  EXPECT_NE(ValidateWeights(m.weights).message().find("head.weight"), std::string::npos);
  m = RandomModel();
  m.weights.layers.pop_back();
  EXPECT_FALSE(ValidateWeights(m.weights).ok());
  m = RandomModel();
  m.info.quantiles = {0.5};
  EXPECT_FALSE(WriteModelFp32(m, TempPath("bad.safetensors")).ok());
  m = RandomModel();
  m.info.norm.std[4] = 0;
  EXPECT_FALSE(WriteModelInt8(m, TempPath("bad.safetensors")).ok());
}

// Rewrites a file's header so that `from` is renamed `to`, keeping the length.
void RenameTensor(const std::filesystem::path& path, const std::string& from,
                  const std::string& to) {
  ASSERT_EQ(from.size(), to.size());
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto pos = bytes.find("\"" + from + "\"");
  ASSERT_NE(pos, std::string::npos);
  f.seekp(static_cast<std::streamoff>(pos + 1));
  f.write(to.data(), static_cast<std::streamsize>(to.size()));
}

TEST(LstmModelTest, MissingAndCorruptTensorsAreNamed) {
  const ForecastModel m = RandomModel();
  const auto path = TempPath("broken.safetensors");
  ASSERT_TRUE(WriteModelFp32(m, path).ok());
  RenameTensor(path, "lstm.weight_hh_l1", "lstm.weight_xx_l1");
  auto r = ReadModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lstm.weight_hh_l1"), std::string::npos)
      << r.status().message();
  EXPECT_NE(r.status().message().find(path.string()), std::string::npos);

  const auto int8 = TempPath("broken.int8.safetensors");
  ASSERT_TRUE(WriteModelInt8(m, int8).ok());
  RenameTensor(int8, "head.weight.scale", "head.weight.scalf");
  r = ReadModel(int8);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("head.weight.scale"), std::string::npos)
      << r.status().message();

  // Truncated file.
  ASSERT_TRUE(WriteModelFp32(m, path).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  EXPECT_FALSE(ReadModel(path).ok());
  EXPECT_EQ(ReadModel(TempPath("absent.safetensors")).status().code(), core::StatusCode::kNotFound);
}

TEST(LstmModelTest, WrongShapeInMetadataIsRejected) {
  ForecastModel m = RandomModel();
  const auto path = TempPath("shape.safetensors");
  ASSERT_TRUE(WriteModelFp32(m, path).ok());
  // hidden_size 64 -> 46 in the metadata: every tensor's shape disagrees.
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto pos = bytes.find("hidden_size\\\":64");
  ASSERT_NE(pos, std::string::npos);
  f.seekp(static_cast<std::streamoff>(pos + 14));
  f.write("46", 2);
  f.close();
  auto r = ReadModel(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("lstm.weight_ih_l0"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace megaserve::forecast
