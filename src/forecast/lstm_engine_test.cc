#include "forecast/lstm_engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "forecast/features.h"
#include "forecast/lstm_kernels.h"

namespace megaserve::forecast {
namespace {

std::filesystem::path SourceDir() {
  const char* dir = std::getenv("MEGASERVE_SOURCE_DIR");
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::current_path();
}

std::filesystem::path TempDir() {
  std::string pattern = std::filesystem::temp_directory_path() / "megaserve-lstm-engine-XXXXXX";
  EXPECT_NE(mkdtemp(pattern.data()), nullptr);
  return pattern;
}

// Weights drawn like a trained quantile LSTM's: gate weights around PyTorch's initial range
// U(-1/sqrt(H), 1/sqrt(H)) widened 1.5x, with one weight in 20 three times larger (trained
// matrices have heavier tails than their initialization), forget-gate biases near 1, and a head
// whose p10/p50/p90 rows share a direction and differ mostly by their biases (about -1.28, 0,
// +1.28 scaled by sqrt(step), the quantiles of a unit normal per one-bar move).
LstmWeights TrainedLookingWeights(const LstmShape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  const float bound = 1.5f / std::sqrt(static_cast<float>(shape.hidden_size));
  std::uniform_real_distribution<float> u(-bound, bound);
  std::uniform_real_distribution<float> unit(0, 1);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng) * (unit(rng) < 0.05f ? 3.0f : 1.0f);
    return v;
  };
  LstmWeights w;
  w.shape = shape;
  const int h = shape.hidden_size, g = 4 * h;
  for (int l = 0; l < shape.num_layers; ++l) {
    const int in = l == 0 ? shape.input_size : h;
    LstmLayerWeights layer{fill(static_cast<std::size_t>(g) * in),
                           fill(static_cast<std::size_t>(g) * h), fill(g), fill(g)};
    for (int j = h; j < 2 * h; ++j) layer.b_ih[j] += 1.0f;
    w.layers.push_back(std::move(layer));
  }
  const int q = shape.num_quantiles;
  w.head_w.resize(static_cast<std::size_t>(shape.outputs()) * h);
  w.head_b.resize(shape.outputs());
  for (int s = 0; s < shape.horizon; ++s) {
    const std::vector<float> common = fill(h), wide = fill(h);
    for (int k = 0; k < q; ++k) {
      const float z = q == 1 ? 0.0f : -1.2816f + 2.5631f * k / (q - 1);
      for (int j = 0; j < h; ++j) {
        w.head_w[(static_cast<std::size_t>(s) * q + k) * h + j] = common[j] + 0.2f * z * wide[j];
      }
      w.head_b[s * q + k] = z * std::sqrt(static_cast<float>(s + 1)) + 0.1f * u(rng);
    }
  }
  return w;
}

std::vector<float> RandomInputs(int batch, const LstmShape& shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> x(static_cast<std::size_t>(batch) * shape.window * shape.input_size);
  for (auto& v : x) v = n(rng);
  return x;
}

std::vector<float> RunEngine(const LstmEngine& engine, const std::vector<float>& inputs,
                             int batch) {
  std::vector<float> out(static_cast<std::size_t>(batch) * engine.shape().outputs());
  engine.Run(inputs, batch, out);
  return out;
}

std::vector<std::string> SupportedKernels() {
  std::vector<std::string> out;
  for (auto k : {kernels::Kernel::kGeneric, kernels::Kernel::kAvx2, kernels::Kernel::kAvx512Vnni}) {
    if (kernels::CpuSupports(k)) out.emplace_back(kernels::Name(k));
  }
  return out;
}

EngineOptions WithKernel(const std::string& kernel) {
  EngineOptions options;
  options.kernel = kernel;
  return options;
}

EngineOptions WithThreads(int threads) {
  EngineOptions options;
  options.threads = threads;
  return options;
}

std::unique_ptr<LstmEngine> Make(const LstmWeights& w, Precision p, const EngineOptions& options) {
  auto engine = LstmEngine::Create(w, p, options);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

TEST(LstmEngineTest, Fp32MatchesPyTorch) {
  const LstmShape shape;  // 7 inputs, 2 x 64, horizon 6 x 3 quantiles, window 64
  ForecastModel model;
  model.weights = TrainedLookingWeights(shape, 7);
  model.info.norm.std.fill(1.0f);
  const auto dir = TempDir();
  ASSERT_TRUE(WriteModelFp32(model, dir / "model.safetensors").ok());
  const int batch = 4;
  const auto inputs = RandomInputs(batch, shape, 11);
  {
    std::ofstream f(dir / "inputs.f32", std::ios::binary);
    f.write(reinterpret_cast<const char*>(inputs.data()),
            static_cast<std::streamsize>(inputs.size() * sizeof(float)));
  }
  const std::string cmd =
      "/usr/bin/python3 " + (SourceDir() / "tests/forecast/ref_lstm.py").string() + " " +
      (dir / "model.safetensors").string() + " " + (dir / "inputs.f32").string() + " " +
      std::to_string(batch) + " " + (dir / "expected.f32").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::vector<float> expected(static_cast<std::size_t>(batch) * shape.outputs());
  {
    std::ifstream f(dir / "expected.f32", std::ios::binary);
    f.read(reinterpret_cast<char*>(expected.data()),
           static_cast<std::streamsize>(expected.size() * sizeof(float)));
    ASSERT_TRUE(f.good());
  }
  for (const auto& kernel : SupportedKernels()) {
    auto engine = Make(model.weights, Precision::kFp32, WithKernel(kernel));
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(engine->kernel(), kernel);
    const auto got = RunEngine(*engine, inputs, batch);
    float worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(got[i] - expected[i]));
    EXPECT_LE(worst, 1e-5f) << kernel;
    std::printf("[ fp32 %s vs PyTorch: max |diff| %.3g ]\n", kernel.c_str(), worst);
  }
  std::filesystem::remove_all(dir);
}

TEST(LstmEngineTest, KernelsAgree) {
  LstmShape shape;
  shape.window = 16;
  const auto w = TrainedLookingWeights(shape, 3);
  const auto inputs = RandomInputs(5, shape, 4);
  for (Precision p : {Precision::kFp32, Precision::kInt8}) {
    const auto reference = RunEngine(*Make(w, p, WithKernel("generic")), inputs, 5);
    for (const auto& kernel : SupportedKernels()) {
      const auto got = RunEngine(*Make(w, p, WithKernel(kernel)), inputs, 5);
      for (std::size_t i = 0; i < got.size(); ++i) {
        // Only the cell's exp differs between kernels.
        ASSERT_NEAR(got[i], reference[i], 2e-5) << kernel << " " << PrecisionName(p) << " " << i;
      }
    }
  }
}

TEST(LstmEngineTest, BatchEqualsSingleRuns) {
  const LstmShape shape;
  const auto w = TrainedLookingWeights(shape, 5);
  const int batch = 7;
  const auto inputs = RandomInputs(batch, shape, 6);
  const std::size_t per_in = static_cast<std::size_t>(shape.window) * shape.input_size;
  for (Precision p : {Precision::kFp32, Precision::kInt8}) {
    for (const auto& kernel : SupportedKernels()) {
      auto engine = Make(w, p, WithKernel(kernel));
      const auto all = RunEngine(*engine, inputs, batch);
      for (int b = 0; b < batch; ++b) {
        const std::vector<float> one(inputs.begin() + b * per_in,
                                     inputs.begin() + (b + 1) * per_in);
        const auto single = RunEngine(*engine, one, 1);
        for (int o = 0; o < shape.outputs(); ++o) {
          ASSERT_EQ(single[o], all[b * shape.outputs() + o])
              << PrecisionName(p) << " " << kernel << " b=" << b << " o=" << o;
        }
      }
    }
  }
}

// Scratch space is per thread and shared by every engine: a deeper model's buffers stay behind
// and must not be read by a shallower one (the head once read the last buffer, not the last
// layer's).
TEST(LstmEngineTest, EnginesOfDifferentDepthsShareAThread) {
  LstmShape deep, shallow;
  deep.num_layers = 3;
  deep.window = shallow.window = 12;
  auto three = Make(TrainedLookingWeights(deep, 30), Precision::kFp32, {});
  auto two = Make(TrainedLookingWeights(shallow, 31), Precision::kFp32, {});
  const auto inputs = RandomInputs(2, shallow, 32);
  std::vector<float> fresh;  // on a thread that never ran the deeper engine
  std::thread([&] { fresh = RunEngine(*two, inputs, 2); }).join();
  RunEngine(*three, RandomInputs(2, deep, 33), 2);
  EXPECT_EQ(RunEngine(*two, inputs, 2), fresh);
}

TEST(LstmEngineTest, ConcurrentRunsGiveTheSameResults) {
  const LstmShape shape;
  const auto w = TrainedLookingWeights(shape, 8);
  auto engine = Make(w, Precision::kInt8, {});
  const auto a = RandomInputs(3, shape, 1), b = RandomInputs(5, shape, 2);
  const auto expect_a = RunEngine(*engine, a, 3), expect_b = RunEngine(*engine, b, 5);
  std::vector<float> got_a, got_b;
  bool same_a = true, same_b = true;
  std::thread ta([&] {
    for (int i = 0; i < 20; ++i) same_a &= RunEngine(*engine, a, 3) == expect_a;
  });
  std::thread tb([&] {
    for (int i = 0; i < 20; ++i) same_b &= RunEngine(*engine, b, 5) == expect_b;
  });
  ta.join();
  tb.join();
  EXPECT_TRUE(same_a);
  EXPECT_TRUE(same_b);
}

TEST(LstmEngineTest, ThreadsGiveIdenticalBits) {
  LstmShape shape;
  shape.window = 24;
  const auto w = TrainedLookingWeights(shape, 12);
  for (Precision p : {Precision::kFp32, Precision::kInt8}) {
    auto one = Make(w, p, WithThreads(1));
    ASSERT_NE(one, nullptr);
    for (int threads : {2, 3}) {
      auto many = Make(w, p, WithThreads(threads));
      ASSERT_NE(many, nullptr);
      EXPECT_EQ(many->threads(), threads);
      for (int batch : {1, 7, 32, 33}) {
        const auto inputs = RandomInputs(batch, shape, 100 + batch);
        const auto expected = RunEngine(*one, inputs, batch);
        // Twice: the second run reuses the workers' grown scratch space.
        for (int rep = 0; rep < 2; ++rep) {
          const auto got = RunEngine(*many, inputs, batch);
          for (std::size_t i = 0; i < got.size(); ++i) {
            ASSERT_EQ(got[i], expected[i]) << PrecisionName(p) << " threads " << threads
                                           << " batch " << batch << " rep " << rep << " i " << i;
          }
        }
      }
    }
  }
}

// Batches too small to cut run as a two-stage pipeline over the layers on two or more threads
// (lstm_engine.cc): one layer (no pipeline), two, three (the second stage runs the third too);
// hidden sizes whose projection halves are both used, or (H = 4: 16 gate rows) only the second;
// windows of one partial chunk, whole chunks and a partial last chunk.
TEST(LstmEngineTest, PipelinedSmallBatchesGiveIdenticalBits) {
  for (int layers : {1, 2, 3}) {
    for (int hidden : {4, 8, 64}) {
      for (int window : {3, 8, 9}) {
        LstmShape shape;
        shape.num_layers = layers;
        shape.hidden_size = hidden;
        shape.window = window;
        const auto w = TrainedLookingWeights(shape, 40 + layers * 7 + hidden + window);
        for (Precision p : {Precision::kFp32, Precision::kInt8}) {
          auto one = Make(w, p, WithThreads(1));
          auto two = Make(w, p, WithThreads(2));
          ASSERT_NE(one, nullptr);
          ASSERT_NE(two, nullptr);
          for (int batch : {1, 2, 15}) {
            const auto inputs = RandomInputs(batch, shape, 300 + batch);
            const auto expected = RunEngine(*one, inputs, batch);
            for (int rep = 0; rep < 2; ++rep) {
              ASSERT_EQ(RunEngine(*two, inputs, batch), expected)
                  << PrecisionName(p) << " layers " << layers << " hidden " << hidden << " window "
                  << window << " batch " << batch << " rep " << rep;
            }
          }
        }
      }
    }
  }
}

// Callers of one two-thread engine at once, with batches that run pipelined (1, 4), split (16 and
// more) or on the caller alone when another call holds the workers: every answer is the
// one-thread engine's.
TEST(LstmEngineTest, ConcurrentThreadedRunsGiveTheSameResults) {
  LstmShape shape;
  shape.window = 24;
  const auto w = TrainedLookingWeights(shape, 13);
  auto one = Make(w, Precision::kInt8, WithThreads(1));
  auto two = Make(w, Precision::kInt8, WithThreads(2));
  ASSERT_NE(one, nullptr);
  ASSERT_NE(two, nullptr);
  const int batches[] = {1, 4, 16, 24, 32, 1};
  std::vector<std::vector<float>> inputs, expected;
  for (int batch : batches) {
    inputs.push_back(RandomInputs(batch, shape, 200 + static_cast<uint32_t>(inputs.size())));
    expected.push_back(RunEngine(*one, inputs.back(), batch));
  }
  std::vector<int> mismatches(std::size(batches), 0);
  std::vector<std::thread> callers;
  for (std::size_t c = 0; c < std::size(batches); ++c) {
    callers.emplace_back([&, c] {
      for (int i = 0; i < 25; ++i)
        mismatches[c] += RunEngine(*two, inputs[c], batches[c]) != expected[c];
    });
  }
  for (auto& t : callers) t.join();
  for (std::size_t c = 0; c < std::size(batches); ++c) {
    EXPECT_EQ(mismatches[c], 0) << "caller " << c << " batch " << batches[c];
  }
}

TEST(LstmEngineTest, ThreadOptionAndPromptShutdown) {
  LstmShape shape;
  shape.window = 8;
  const auto w = TrainedLookingWeights(shape, 14);
  EngineOptions bad;
  bad.threads = -1;
  EXPECT_EQ(LstmEngine::Create(w, Precision::kInt8, bad).status().code(),
            core::StatusCode::kInvalidArgument);
  auto all_cores = Make(w, Precision::kInt8, WithThreads(0));
  ASSERT_NE(all_cores, nullptr);
  EXPECT_EQ(all_cores->threads(),
            std::max(1, static_cast<int>(std::thread::hardware_concurrency())));
  // Workers idle on their condition variable, fresh or after a split Run, must notice the
  // shutdown at once: no polling interval stands between the destructor and the join.
  for (bool ran : {false, true}) {
    auto engine = Make(w, Precision::kInt8, WithThreads(4));
    ASSERT_NE(engine, nullptr);
    if (ran) RunEngine(*engine, RandomInputs(32, shape, 15), 32);
    const auto start = std::chrono::steady_clock::now();
    engine.reset();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2)) << ran;
  }
}

TEST(LstmEngineTest, UsesTheFileIntegers) {
  const LstmShape shape;
  ForecastModel model;
  model.weights = TrainedLookingWeights(shape, 9);
  model.info.norm.std.fill(1.0f);
  const auto dir = TempDir();
  const auto path = (dir / "model.int8.safetensors").string();
  ASSERT_TRUE(WriteModelInt8(model, path).ok());
  auto stored = ReadModel(path);
  ASSERT_TRUE(stored.ok());
  auto ints = ReadInt8Weights(path);
  ASSERT_TRUE(ints.ok());
  EngineOptions options;
  options.int8 = &*ints;
  auto from_file = LstmEngine::Create(stored->weights, Precision::kInt8, options);
  ASSERT_TRUE(from_file.ok());
  auto direct = LstmEngine::Create(model.weights, Precision::kInt8);
  ASSERT_TRUE(direct.ok());
  const auto inputs = RandomInputs(2, shape, 3);
  // Same integers and scales either way, so the same outputs.
  EXPECT_EQ(RunEngine(**from_file, inputs, 2), RunEngine(**direct, inputs, 2));
  EXPECT_LT((*from_file)->memory_bytes(),
            (*LstmEngine::Create(model.weights, Precision::kFp32))->memory_bytes());
  Int8Matrices wrong = *ints;
  wrong.w_hh[1].rows = 3;
  options.int8 = &wrong;
  EXPECT_FALSE(LstmEngine::Create(stored->weights, Precision::kInt8, options).ok());
  // -128 has no negation in int8, which the kernels rely on.
  Int8Matrices out_of_range = *ints;
  out_of_range.w_ih[0].q[5] = -128;
  options.int8 = &out_of_range;
  auto refused = LstmEngine::Create(stored->weights, Precision::kInt8, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("-128"), std::string::npos)
      << refused.status().message();
  std::filesystem::remove_all(dir);
}

TEST(LstmEngineTest, KernelChoice) {
  const LstmShape shape;
  const auto w = TrainedLookingWeights(shape, 1);
  EngineOptions options;
  options.kernel = "sse9";
  EXPECT_EQ(LstmEngine::Create(w, Precision::kInt8, options).status().code(),
            core::StatusCode::kInvalidArgument);
  for (auto k : {kernels::Kernel::kAvx2, kernels::Kernel::kAvx512Vnni}) {
    options.kernel = std::string(kernels::Name(k));
    EXPECT_EQ(LstmEngine::Create(w, Precision::kInt8, options).ok(), kernels::CpuSupports(k));
  }
  const char* saved = std::getenv("MEGASERVE_FORECAST_KERNEL");
  const std::string restore = saved != nullptr ? saved : "";
  setenv("MEGASERVE_FORECAST_KERNEL", "generic", 1);
  EXPECT_EQ(KernelName(), "generic");
  auto engine = LstmEngine::Create(w, Precision::kInt8);
  ASSERT_TRUE(engine.ok());
  EXPECT_EQ((*engine)->kernel(), "generic");
  setenv("MEGASERVE_FORECAST_KERNEL", "bogus", 1);
  EXPECT_FALSE(LstmEngine::Create(w, Precision::kInt8).ok());
  if (!kernels::CpuSupports(kernels::Kernel::kAvx512Vnni)) {
    setenv("MEGASERVE_FORECAST_KERNEL", "avx512-vnni", 1);
    EXPECT_EQ(LstmEngine::Create(w, Precision::kInt8).status().code(),
              core::StatusCode::kFailedPrecondition);
  }
  if (restore.empty()) {
    unsetenv("MEGASERVE_FORECAST_KERNEL");
  } else {
    setenv("MEGASERVE_FORECAST_KERNEL", restore.c_str(), 1);
  }
  EXPECT_EQ(PrecisionName(*ParsePrecision("int8")), "int8");
  EXPECT_FALSE(ParsePrecision("fp16").ok());
}

// The 4h BTCUSDT candles beside the repository (timestamp,open,high,low,close,volume), without
// the partial last bar.
std::vector<Candle> ReadCandles(const std::filesystem::path& file) {
  std::vector<Candle> out;
  std::ifstream f(file);
  std::string line;
  std::getline(f, line);
  while (std::getline(f, line)) {
    std::tm tm{};
    Candle c;
    if (std::sscanf(line.c_str(), "%d-%d-%d %d:%d:%d,%lf,%lf,%lf,%lf,%lf", &tm.tm_year, &tm.tm_mon,
                    &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &c.open, &c.high, &c.low,
                    &c.close, &c.volume) != 11) {
      continue;
    }
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    c.open_time_ms = static_cast<int64_t>(timegm(&tm)) * 1000;
    out.push_back(c);
  }
  if (!out.empty()) out.pop_back();
  return out;
}

TEST(LstmEngineTest, Int8AgreesWithFp32OnRealData) {
  const auto file = SourceDir() / "../shared/data/btcusdt_spot_4h.csv";
  if (!std::filesystem::exists(file)) GTEST_SKIP() << "no market data at " << file;
  const auto candles = ReadCandles(file);
  ASSERT_GT(candles.size(), 10000u);
  auto features = ComputeFeatures(candles);
  // Train on bars before 2024, as the models do.
  constexpr int64_t k2024 = 1'704'067'200'000;
  int64_t end = 0;
  while (end < static_cast<int64_t>(candles.size()) && candles[end].open_time_ms < k2024) ++end;
  const Normalization norm = FitNormalization(features, candles, FirstValidRow(), end);
  Normalize(norm, features);

  const LstmShape shape;
  const int batch = 32, windows = 256;
  const std::size_t per_in = static_cast<std::size_t>(shape.window) * kFeatureCount;
  // 256 windows spread over 2024-2025.
  std::vector<float> inputs(windows * per_in);
  const int64_t stride = (static_cast<int64_t>(candles.size()) - end) / windows;
  for (int i = 0; i < windows; ++i) {
    Window(features, end + i * stride, shape.window, std::span(inputs).subspan(i * per_in, per_in));
  }
  double worst = 0;
  for (uint32_t seed : {21u, 22u, 23u}) {
    const auto w = TrainedLookingWeights(shape, seed);
    auto fp32 = Make(w, Precision::kFp32, {});
    auto int8 = Make(w, Precision::kInt8, {});
    for (int b0 = 0; b0 < windows; b0 += batch) {
      const std::vector<float> chunk(inputs.begin() + b0 * per_in,
                                     inputs.begin() + (b0 + batch) * per_in);
      const auto f = RunEngine(*fp32, chunk, batch), q = RunEngine(*int8, chunk, batch);
      for (int b = 0; b < batch; ++b) {
        for (int s = 0; s < shape.horizon; ++s) {
          const float* fs = &f[b * shape.outputs() + s * 3];
          const float* qs = &q[b * shape.outputs() + s * 3];
          const double spread = fs[2] - fs[0];
          ASSERT_GT(spread, 0) << "p10 above p90";
          for (int k = 0; k < 3; ++k) worst = std::max(worst, std::fabs(qs[k] - fs[k]) / spread);
        }
      }
    }
  }
  std::printf("[ int8 vs fp32: worst |diff| / (p90 - p10) = %.5f ]\n", worst);
  EXPECT_LE(worst, 0.01);
}

}  // namespace
}  // namespace megaserve::forecast
