#include "forecast/torch/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "forecast/features.h"
#include "forecast/lstm_engine.h"

namespace megaserve::forecast {
namespace {

constexpr int64_t kHour = 3'600'000;
constexpr int64_t kStart = 1'700'000'000'000 / kHour * kHour;  // on the hour

// A noisy daily sine with drift on hourly bars: the time-of-day features make it predictable.
std::vector<Candle> SineSeries(int bars, double noise, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> gauss(0, 1);
  std::vector<Candle> out;
  double prev = 100;
  for (int t = 0; t < bars; ++t) {
    const double log_price =
        std::log(100.0) + 0.0005 * t + 0.02 * std::sin(2 * M_PI * t / 24.0) + noise * gauss(rng);
    Candle c;
    c.open_time_ms = kStart + t * kHour;
    c.open = prev;
    c.close = std::exp(log_price);
    c.high = std::max(c.open, c.close) * 1.001;
    c.low = std::min(c.open, c.close) * 0.999;
    c.volume = 10 + 5 * std::sin(2 * M_PI * t / 24.0) + std::abs(gauss(rng));
    prev = c.close;
    out.push_back(c);
  }
  return out;
}

// Training on bars [0, 300), validation on [300, end).
TrainParams SmallParams(int epochs = 4) {
  TrainParams p;
  p.symbol = "TESTUSD";
  p.interval = "1h";
  p.shape = LstmShape{.hidden_size = 8, .num_layers = 1, .horizon = 2, .window = 16};
  p.train_first_ms = kStart;
  p.train_last_ms = kStart + 299 * kHour;
  p.validation_first_ms = kStart + 300 * kHour;
  p.validation_last_ms = kStart + 10'000 * kHour;
  p.max_epochs = epochs;
  p.patience = epochs;
  p.batch_size = 32;
  p.learning_rate = 1e-2;
  p.seed = 42;
  p.threads = 1;
  return p;
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// lstm_model.h's equations in plain loops: one sequence ([window][input]) -> outputs().
std::vector<float> ReferenceForward(const LstmWeights& w, const float* seq) {
  const LstmShape& s = w.shape;
  const int hid = s.hidden_size;
  std::vector<float> x(seq, seq + static_cast<size_t>(s.window) * s.input_size);
  int in = s.input_size;
  std::vector<float> h;
  for (const auto& layer : w.layers) {
    h.assign(hid, 0);
    std::vector<float> c(hid, 0), out;
    for (int t = 0; t < s.window; ++t) {
      std::vector<float> g(4 * hid);
      for (int r = 0; r < 4 * hid; ++r) {
        double acc = layer.b_ih[r] + layer.b_hh[r];
        for (int k = 0; k < in; ++k) acc += layer.w_ih[r * in + k] * x[t * in + k];
        for (int k = 0; k < hid; ++k) acc += layer.w_hh[r * hid + k] * h[k];
        g[r] = static_cast<float>(acc);
      }
      for (int j = 0; j < hid; ++j) {
        c[j] = Sigmoid(g[hid + j]) * c[j] + Sigmoid(g[j]) * std::tanh(g[2 * hid + j]);
        h[j] = Sigmoid(g[3 * hid + j]) * std::tanh(c[j]);
      }
      out.insert(out.end(), h.begin(), h.end());
    }
    x = std::move(out);
    in = hid;
  }
  std::vector<float> y(s.outputs());
  for (int o = 0; o < s.outputs(); ++o) {
    double acc = w.head_b[o];
    for (int k = 0; k < hid; ++k) acc += w.head_w[o * hid + k] * h[k];
    y[o] = static_cast<float>(acc);
  }
  return y;
}

TEST(TrainerTest, PinballLossMatchesHandComputedValues) {
  // One sample, one step, quantiles 0.1 and 0.9; target 1.
  auto quantiles = torch::tensor({0.1f, 0.9f});
  auto target = torch::tensor({{1.0f}});
  // pred 0 (under by 1): 0.1 * 1 and 0.9 * 1; pred 3 (over by 2): 0.9 * 2 and 0.1 * 2.
  EXPECT_NEAR(PinballLoss(torch::tensor({{0.0f, 0.0f}}), target, quantiles).item<float>(),
              (0.1 + 0.9) / 2, 1e-6);
  EXPECT_NEAR(PinballLoss(torch::tensor({{3.0f, 3.0f}}), target, quantiles).item<float>(),
              (1.8 + 0.2) / 2, 1e-6);
  // Two steps, step-major outputs: step 0 exact, step 1 under by 2 for both quantiles.
  auto two = PinballLoss(torch::tensor({{1.0f, 1.0f, 0.0f, 0.0f}}), torch::tensor({{1.0f, 2.0f}}),
                         quantiles);
  EXPECT_NEAR(two.item<float>(), (0 + 0 + 0.2 + 1.8) / 4, 1e-6);
}

TEST(TrainerTest, ExportedWeightsFollowPyTorchsLayout) {
  const LstmShape shape{.hidden_size = 5, .num_layers = 2, .horizon = 2, .window = 6};
  QuantileLstm module = MakeQuantileLstm(shape, 3);
  const LstmWeights w = ExportWeights(module);
  ASSERT_TRUE(ValidateWeights(w).ok()) << ValidateWeights(w).message();

  auto x = torch::randn({4, shape.window, shape.input_size},
                        at::make_generator<at::CPUGeneratorImpl>(11));
  torch::NoGradGuard no_grad;
  const auto y = module->forward(x).contiguous();
  for (int b = 0; b < 4; ++b) {
    const auto ref = ReferenceForward(w, x[b].contiguous().data_ptr<float>());
    for (int o = 0; o < shape.outputs(); ++o) {
      EXPECT_NEAR(y[b][o].item<float>(), ref[o], 1e-5) << "sample " << b << " output " << o;
    }
  }

  QuantileLstm copy = MakeQuantileLstm(shape, 4);
  ASSERT_FALSE(torch::equal(copy->forward(x), y));
  ImportWeights(w, copy);
  EXPECT_TRUE(torch::equal(copy->forward(x), y));
  EXPECT_EQ(ExportWeights(copy), w);
}

TEST(TrainerTest, BuildSamplesCutsWindowsAndTargetsInsideTheRanges) {
  const auto candles = SineSeries(400, 0.002);
  const TrainParams p = SmallParams();
  auto samples = BuildSamples(candles, p);
  ASSERT_TRUE(samples.ok()) << samples.status().message();
  const int first = FirstValidRow() + p.shape.window - 1;
  ASSERT_EQ(samples->train_rows.front(), first);
  ASSERT_EQ(samples->train_rows.back(), 299);
  ASSERT_EQ(samples->valid_rows.front(), 300);
  ASSERT_EQ(samples->valid_rows.back(), 400 - 1 - p.shape.horizon);
  ASSERT_EQ(samples->train_x.size(0), 300 - first);
  ASSERT_EQ(samples->valid_y.size(1), p.shape.horizon);

  std::vector<float> features = ComputeFeatures(candles);
  const Normalization norm =
      FitNormalization(features, candles, FirstValidRow(), 300);  // the training bars
  EXPECT_EQ(samples->norm, norm);
  Normalize(norm, features);
  std::vector<float> window(p.shape.window * kFeatureCount);
  const int64_t i = 17;
  const int64_t t = samples->valid_rows[i];
  Window(features, t, p.shape.window, window);
  const auto x = samples->valid_x[i].contiguous();
  EXPECT_EQ(std::vector<float>(x.data_ptr<float>(), x.data_ptr<float>() + x.numel()), window);
  EXPECT_EQ(samples->valid_y[i][1].item<float>(), Target(candles, t, 2, norm.target_scale));
}

TEST(TrainerTest, RefusesRangesTooShortForTheWindowAndHorizon) {
  const auto candles = SineSeries(400, 0.002);
  TorchTrainer trainer;

  TrainParams p = SmallParams();
  p.validation_first_ms = kStart + 398 * kHour;  // 2 bars, but their targets lie past the end
  auto r = trainer.Train(candles, p, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("validation range"), std::string::npos)
      << r.status().message();

  p = SmallParams();
  p.train_last_ms = kStart + 40 * kHour;  // ends before the first full window
  p.validation_first_ms = kStart + 41 * kHour;
  r = trainer.Train(candles, p, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("training range"), std::string::npos);

  p = SmallParams();
  p.validation_first_ms = p.train_last_ms;  // overlapping
  EXPECT_EQ(trainer.Train(candles, p, nullptr).status().code(), core::StatusCode::kInvalidArgument);

  p = SmallParams();
  p.quantiles = {0.5, 0.1, 0.9};  // not increasing
  EXPECT_EQ(trainer.Train(candles, p, nullptr).status().code(), core::StatusCode::kInvalidArgument);

  auto unsorted = candles;
  std::swap(unsorted[10], unsorted[11]);
  EXPECT_EQ(trainer.Train(unsorted, SmallParams(), nullptr).status().code(),
            core::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, LossGoesDownAndTheModelDescribesItself) {
  const auto candles = SineSeries(400, 0.002);
  TorchTrainer trainer;
  std::vector<EpochReport> reports;
  const TrainParams p = SmallParams(5);
  auto model = trainer.Train(candles, p, [&](const EpochReport& r) { reports.push_back(r); });
  ASSERT_TRUE(model.ok()) << model.status().message();
  ASSERT_EQ(reports.size(), 5u);
  EXPECT_EQ(reports.front().epoch, 1);
  EXPECT_EQ(reports.back().max_epochs, 5);
  EXPECT_TRUE(reports.front().best);
  EXPECT_LT(reports.back().train_loss, reports.front().train_loss);
  double best = reports.front().validation_loss;
  for (const auto& r : reports) best = std::min(best, r.validation_loss);
  EXPECT_LT(best, reports.front().validation_loss);

  const ModelInfo& info = model->info;
  EXPECT_EQ(info.symbol, "TESTUSD");
  EXPECT_EQ(info.interval, "1h");
  EXPECT_EQ(info.seed, 42u);
  EXPECT_EQ(info.train_first_ms, candles[FirstValidRow() + p.shape.window - 1].open_time_ms);
  EXPECT_EQ(info.train_last_ms, candles[299].open_time_ms);
  EXPECT_EQ(info.validation_first_ms, candles[300].open_time_ms);
  EXPECT_EQ(info.validation_last_ms, candles[397].open_time_ms);
  EXPECT_GT(info.trained_at_ms, kStart);
  EXPECT_NE(info.training_json.find("\"epochs\":5"), std::string::npos) << info.training_json;
  EXPECT_NE(info.training_json.find("\"best_epoch\":"), std::string::npos);
  EXPECT_NE(info.training_json.find("\"validation_loss\":"), std::string::npos);
  EXPECT_GT(info.norm.target_scale, 0);
  EXPECT_TRUE(ValidateWeights(model->weights).ok());
  EXPECT_EQ(model->weights.shape, p.shape);
}

TEST(TrainerTest, EarlyStoppingKeepsTheBestEpoch) {
  const auto candles = SineSeries(400, 0.002);
  TorchTrainer trainer;
  TrainParams p = SmallParams(30);
  p.patience = 1;
  p.learning_rate = 0.2;  // large enough that the validation loss soon stops improving
  std::vector<EpochReport> reports;
  auto model = trainer.Train(candles, p, [&](const EpochReport& r) { reports.push_back(r); });
  ASSERT_TRUE(model.ok()) << model.status().message();
  ASSERT_LT(reports.size(), 30u);
  ASSERT_GE(reports.size(), 2u);
  EXPECT_FALSE(reports.back().best);  // stopped one epoch after the best

  // The returned weights score the best epoch's validation loss, not the last one's.
  auto samples = BuildSamples(candles, p);
  ASSERT_TRUE(samples.ok());
  QuantileLstm module = MakeQuantileLstm(p.shape, 0);
  ImportWeights(model->weights, module);
  torch::NoGradGuard no_grad;
  const double loss = PinballLoss(module->forward(samples->valid_x), samples->valid_y,
                                  torch::tensor({0.1f, 0.5f, 0.9f}))
                          .item<double>();
  EXPECT_NEAR(loss, reports[reports.size() - 2].validation_loss, 1e-5);
}

TEST(TrainerTest, TheSeedReproducesTheModelExactly) {
  const auto candles = SineSeries(300, 0.002);
  TrainParams p = SmallParams(2);
  p.train_last_ms = kStart + 199 * kHour;
  p.validation_first_ms = kStart + 200 * kHour;
  TorchTrainer trainer;
  auto a = trainer.Train(candles, p, nullptr);
  auto b = trainer.Train(candles, p, nullptr);
  p.seed = 43;
  auto c = trainer.Train(candles, p, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->weights, b->weights);
  EXPECT_EQ(a->info.norm, b->info.norm);
  EXPECT_NE(a->weights.layers[0].w_ih, c->weights.layers[0].w_ih);
  EXPECT_NE(a->weights.head_w, c->weights.head_w);
}

TEST(TrainerTest, QuantilesComeOutOrderedOnAnEasySeries) {
  const auto candles = SineSeries(400, 0.004);
  TrainParams p = SmallParams(12);
  TorchTrainer trainer;
  auto model = trainer.Train(candles, p, nullptr);
  ASSERT_TRUE(model.ok()) << model.status().message();

  auto samples = BuildSamples(candles, p);
  ASSERT_TRUE(samples.ok());
  QuantileLstm module = MakeQuantileLstm(p.shape, 0);
  ImportWeights(model->weights, module);
  torch::NoGradGuard no_grad;
  const auto out = module->forward(samples->valid_x).view({-1, p.shape.horizon, 3});
  const auto ordered =
      (out.select(2, 0) <= out.select(2, 1)) & (out.select(2, 1) <= out.select(2, 2));
  const double share = ordered.to(torch::kFloat).mean().item<double>();
  EXPECT_GE(share, 0.9);

  // The native engine reads the exported weights as the trained module computes with them.
  auto engine = LstmEngine::Create(model->weights, Precision::kFp32);
  ASSERT_TRUE(engine.ok()) << engine.status().message();
  const int batch = static_cast<int>(samples->valid_x.size(0));
  std::vector<float> native(static_cast<size_t>(batch) * p.shape.outputs());
  (*engine)->Run(
      std::span<const float>(samples->valid_x.data_ptr<float>(), samples->valid_x.numel()), batch,
      native);
  const auto flat = out.reshape({batch, -1}).contiguous();
  const auto from_engine = torch::from_blob(native.data(), {batch, p.shape.outputs()});
  EXPECT_LT((flat - from_engine).abs().max().item<float>(), 1e-4);
  // And the p10..p90 band holds a good share of the outcomes (80% would be perfect).
  const auto y = samples->valid_y;
  const auto inside = (y >= out.select(2, 0)) & (y <= out.select(2, 2));
  EXPECT_GE(inside.to(torch::kFloat).mean().item<double>(), 0.5);
}

}  // namespace
}  // namespace megaserve::forecast
