// Quantile LSTM training on libtorch (CPU).
//
// Samples. Row t of a series becomes one sample when its whole window [t - W + 1, t] has defined
// features (features.h: from FirstValidRow() on) and its targets t + 1 .. t + H exist; it belongs
// to the training or validation set by the open time of bar t. Windows span gaps in the series
// as they are: the features already carry the larger return across a gap.
//
// Loss. Quantile regression's pinball (check) loss, rho_q(e) = max(q e, (q - 1) e) with
// e = y - y_hat, whose expectation is minimized by the q-quantile of y (Koenker and Bassett,
// "Regression Quantiles", Econometrica 46(1), 1978), averaged over quantiles, horizon steps and
// samples. One network predicts all H x Q outputs, as in the MQ-RNN family (Wen et al., "A
// Multi-Horizon Quantile Recurrent Forecaster", 2017).
//
// Optimization. Adam (Kingma and Ba, 2015) on shuffled minibatches, gradients clipped to a global
// L2 norm, and early stopping (Prechelt, "Early Stopping - But When?", 1998): after each epoch
// the validation loss is measured, the best epoch's weights are kept, and training stops after
// `patience` epochs without improvement.
//
// Reproducibility. The initial weights and every epoch's shuffle come from torch::Generator
// objects seeded from TrainParams::seed, never from the global generator, and the CPU kernels
// used here are deterministic for a fixed intra-op thread count: the same seed, data and thread
// count give bit-identical weights.
#include "forecast/torch/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "core/time_format.h"
#include "forecast/features.h"

namespace megaserve::forecast {
namespace {

// "2023-12-31T20:00:00Z" for a Unix millisecond time.
std::string When(int64_t ms) { return core::Rfc3339(ms * 1000); }

std::vector<float> ToVector(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  return std::vector<float>(p, p + c.numel());
}

void CopyInto(torch::Tensor& dst, const std::vector<float>& src) {
  if (static_cast<int64_t>(src.size()) != dst.numel()) {
    throw std::invalid_argument(
        fmt::format("weights: {} values for a tensor of {}", src.size(), dst.numel()));
  }
  auto from = torch::from_blob(const_cast<float*>(src.data()), dst.sizes(), torch::kFloat);
  dst.copy_(from);
}

torch::Tensor& Param(torch::nn::Module& module, const std::string& name) {
  auto* p = module.named_parameters(/*recurse=*/false).find(name);
  if (p == nullptr) throw std::runtime_error("the LSTM module has no parameter " + name);
  return *p;
}

// The rows [first, last) of `candles` whose open times lie in [from_ms, to_ms].
std::pair<int64_t, int64_t> RowsIn(std::span<const Candle> candles, int64_t from_ms,
                                   int64_t to_ms) {
  auto by_time = [](const Candle& c, int64_t ms) { return c.open_time_ms < ms; };
  const auto lo = std::lower_bound(candles.begin(), candles.end(), from_ms, by_time);
  const auto hi = std::upper_bound(candles.begin(), candles.end(), to_ms,
                                   [](int64_t ms, const Candle& c) { return ms < c.open_time_ms; });
  return {lo - candles.begin(), std::max(lo, hi) - candles.begin()};
}

// Mean loss over a whole set, in chunks of `batch` samples, without gradients.
double Evaluate(QuantileLstm& model, const torch::Tensor& x, const torch::Tensor& y,
                const torch::Tensor& quantiles, int64_t batch) {
  torch::NoGradGuard no_grad;
  const int64_t n = x.size(0);
  double sum = 0;
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t end = std::min(n, start + batch);
    auto loss =
        PinballLoss(model->forward(x.slice(0, start, end)), y.slice(0, start, end), quantiles);
    sum += loss.item<double>() * static_cast<double>(end - start);
  }
  return sum / static_cast<double>(n);
}

std::vector<torch::Tensor> Snapshot(QuantileLstm& model) {
  std::vector<torch::Tensor> copy;
  for (const auto& p : model->parameters()) copy.push_back(p.detach().clone());
  return copy;
}

void Restore(QuantileLstm& model, const std::vector<torch::Tensor>& saved) {
  torch::NoGradGuard no_grad;
  auto params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) params[i].copy_(saved[i]);
}

// Sets libtorch's intra-op threads for one training run and puts the old value back.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : previous_(at::get_num_threads()) {
    if (threads > 0) at::set_num_threads(threads);
  }
  ~ThreadScope() { at::set_num_threads(previous_); }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int previous_;
};

core::Result<ForecastModel> TrainOrThrow(std::span<const Candle> candles, const TrainParams& params,
                                         const EpochFn& on_epoch) {
  if (auto s = ValidateTrainParams(params); !s.ok()) return s;
  const auto started = std::chrono::steady_clock::now();
  ThreadScope threads(params.threads);

  auto samples = BuildSamples(candles, params);
  if (!samples.ok()) return samples.status();
  const Samples& data = *samples;

  QuantileLstm model = MakeQuantileLstm(params.shape, params.seed);
  torch::optim::Adam optimizer(model->parameters(),
                               torch::optim::AdamOptions(params.learning_rate));
  // A stream of its own for the shuffles, distinct from the one that drew the initial weights.
  auto shuffle_gen = at::make_generator<at::CPUGeneratorImpl>(params.seed ^ 0x9e3779b97f4a7c15ULL);
  std::vector<float> q(params.quantiles.begin(), params.quantiles.end());
  const auto quantiles = torch::tensor(q, torch::kFloat);

  const int64_t n = data.train_x.size(0);
  const int64_t batch = std::min<int64_t>(params.batch_size, n);
  double best_validation = std::numeric_limits<double>::infinity();
  double best_train = 0;
  int best_epoch = 0;
  int epochs = 0;
  std::vector<torch::Tensor> best_weights = Snapshot(model);

  for (int epoch = 1; epoch <= params.max_epochs; ++epoch) {
    model->train();
    const auto order = torch::randperm(n, shuffle_gen, torch::kLong);
    double sum = 0;
    for (int64_t start = 0; start < n; start += batch) {
      const int64_t end = std::min(n, start + batch);
      const auto idx = order.slice(0, start, end);
      optimizer.zero_grad();
      auto loss = PinballLoss(model->forward(data.train_x.index_select(0, idx)),
                              data.train_y.index_select(0, idx), quantiles);
      loss.backward();
      if (params.grad_clip > 0) {
        torch::nn::utils::clip_grad_norm_(model->parameters(), params.grad_clip);
      }
      optimizer.step();
      sum += loss.item<double>() * static_cast<double>(end - start);
    }
    const double train_loss = sum / static_cast<double>(n);
    model->eval();
    const double validation_loss =
        Evaluate(model, data.valid_x, data.valid_y, quantiles, params.batch_size);
    if (!std::isfinite(train_loss) || !std::isfinite(validation_loss)) {
      return core::Internal(fmt::format(
          "training diverged in epoch {} (train loss {}, validation loss {}); try a lower "
          "learning rate",
          epoch, train_loss, validation_loss));
    }
    epochs = epoch;
    const bool best = validation_loss < best_validation;
    if (best) {
      best_validation = validation_loss;
      best_train = train_loss;
      best_epoch = epoch;
      best_weights = Snapshot(model);
    }
    if (on_epoch) {
      on_epoch(EpochReport{.epoch = epoch,
                           .max_epochs = params.max_epochs,
                           .train_loss = train_loss,
                           .validation_loss = validation_loss,
                           .best = best});
    }
    if (epoch - best_epoch >= params.patience) break;
  }
  Restore(model, best_weights);

  ForecastModel out;
  out.weights = ExportWeights(model);
  ModelInfo& info = out.info;
  info.symbol = params.symbol;
  info.interval = params.interval;
  info.quantiles = params.quantiles;
  info.norm = data.norm;
  info.seed = params.seed;
  info.train_first_ms = candles[data.train_rows.front()].open_time_ms;
  info.train_last_ms = candles[data.train_rows.back()].open_time_ms;
  info.validation_first_ms = candles[data.valid_rows.front()].open_time_ms;
  info.validation_last_ms = candles[data.valid_rows.back()].open_time_ms;
  info.trained_at_ms = core::NowMicros() / 1000;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  info.training_json = fmt::format(
      "{{\"epochs\":{},\"best_epoch\":{},\"train_loss\":{:.6g},\"validation_loss\":{:.6g},"
      "\"seconds\":{:.3f},\"train_samples\":{},\"validation_samples\":{},\"batch_size\":{},"
      "\"learning_rate\":{:g},\"threads\":{}}}",
      epochs, best_epoch, best_train, best_validation, seconds, data.train_rows.size(),
      data.valid_rows.size(), params.batch_size, params.learning_rate, at::get_num_threads());
  return out;
}

}  // namespace

QuantileLstmImpl::QuantileLstmImpl(const LstmShape& shape) : shape_(shape) {
  lstm_ = register_module(
      "lstm", torch::nn::LSTM(torch::nn::LSTMOptions(shape.input_size, shape.hidden_size)
                                  .num_layers(shape.num_layers)
                                  .batch_first(true)));
  head_ = register_module("head", torch::nn::Linear(shape.hidden_size, shape.outputs()));
}

torch::Tensor QuantileLstmImpl::forward(const torch::Tensor& x) {
  auto out = std::get<0>(lstm_->forward(x));  // [batch, window, hidden]
  return head_->forward(out.select(1, out.size(1) - 1));
}

QuantileLstm MakeQuantileLstm(const LstmShape& shape, uint64_t seed) {
  QuantileLstm module(shape);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const double bound = 1.0 / std::sqrt(static_cast<double>(shape.hidden_size));
  torch::NoGradGuard no_grad;
  for (auto& p : module->parameters()) p.uniform_(-bound, bound, gen);
  return module;
}

LstmWeights ExportWeights(QuantileLstm& module) {
  LstmWeights w;
  w.shape = module->shape();
  auto& lstm = *module->lstm();
  for (int l = 0; l < w.shape.num_layers; ++l) {
    LstmLayerWeights layer;
    layer.w_ih = ToVector(Param(lstm, fmt::format("weight_ih_l{}", l)));
    layer.w_hh = ToVector(Param(lstm, fmt::format("weight_hh_l{}", l)));
    layer.b_ih = ToVector(Param(lstm, fmt::format("bias_ih_l{}", l)));
    layer.b_hh = ToVector(Param(lstm, fmt::format("bias_hh_l{}", l)));
    w.layers.push_back(std::move(layer));
  }
  w.head_w = ToVector(module->head()->weight);
  w.head_b = ToVector(module->head()->bias);
  return w;
}

void ImportWeights(const LstmWeights& weights, QuantileLstm& module) {
  if (!(weights.shape == module->shape())) {
    throw std::invalid_argument("weights: shape differs from the module's");
  }
  torch::NoGradGuard no_grad;
  auto& lstm = *module->lstm();
  for (int l = 0; l < weights.shape.num_layers; ++l) {
    const auto& layer = weights.layers.at(l);
    CopyInto(Param(lstm, fmt::format("weight_ih_l{}", l)), layer.w_ih);
    CopyInto(Param(lstm, fmt::format("weight_hh_l{}", l)), layer.w_hh);
    CopyInto(Param(lstm, fmt::format("bias_ih_l{}", l)), layer.b_ih);
    CopyInto(Param(lstm, fmt::format("bias_hh_l{}", l)), layer.b_hh);
  }
  CopyInto(module->head()->weight, weights.head_w);
  CopyInto(module->head()->bias, weights.head_b);
}

torch::Tensor PinballLoss(const torch::Tensor& pred, const torch::Tensor& target,
                          const torch::Tensor& quantiles) {
  const int64_t q = quantiles.size(0);
  auto p = pred.view({pred.size(0), -1, q});  // [batch, H, Q]
  auto e = target.unsqueeze(2) - p;           // broadcast over quantiles
  return torch::max(quantiles * e, (quantiles - 1) * e).mean();
}

core::Status ValidateTrainParams(const TrainParams& p) {
  const LstmShape& s = p.shape;
  if (s.input_size != kFeatureCount) {
    return core::InvalidArgument(
        fmt::format("input size {} (the features give {})", s.input_size, kFeatureCount));
  }
  if (s.hidden_size < 1 || s.hidden_size > 4096) {
    return core::InvalidArgument(fmt::format("hidden size {} (1..4096)", s.hidden_size));
  }
  if (s.num_layers < 1 || s.num_layers > 16) {
    return core::InvalidArgument(fmt::format("layers {} (1..16)", s.num_layers));
  }
  if (s.horizon < 1 || s.horizon > 1000) {
    return core::InvalidArgument(fmt::format("horizon {} (1..1000)", s.horizon));
  }
  if (s.window < 1 || s.window > 100000) {
    return core::InvalidArgument(fmt::format("window {} (1..100000)", s.window));
  }
  if (p.quantiles.empty() || s.num_quantiles != static_cast<int>(p.quantiles.size())) {
    return core::InvalidArgument(
        fmt::format("{} quantiles for a shape of {}", p.quantiles.size(), s.num_quantiles));
  }
  for (size_t i = 0; i < p.quantiles.size(); ++i) {
    const double q = p.quantiles[i];
    if (!(q > 0 && q < 1) || (i > 0 && !(q > p.quantiles[i - 1]))) {
      return core::InvalidArgument("quantiles must be increasing, each in (0, 1)");
    }
  }
  if (p.max_epochs < 1) return core::InvalidArgument("epochs must be at least 1");
  if (p.patience < 1) return core::InvalidArgument("patience must be at least 1");
  if (p.batch_size < 1) return core::InvalidArgument("batch size must be at least 1");
  if (!(p.learning_rate > 0) || !std::isfinite(p.learning_rate)) {
    return core::InvalidArgument("learning rate must be positive");
  }
  if (!(p.grad_clip >= 0) || !std::isfinite(p.grad_clip)) {
    return core::InvalidArgument("gradient clip must be >= 0 (0: none)");
  }
  if (p.threads < 0) return core::InvalidArgument("threads must be >= 0");
  if (p.train_first_ms > p.train_last_ms) {
    return core::InvalidArgument(fmt::format("the training range {} .. {} is empty",
                                             When(p.train_first_ms), When(p.train_last_ms)));
  }
  if (p.validation_first_ms > p.validation_last_ms) {
    return core::InvalidArgument(fmt::format("the validation range {} .. {} is empty",
                                             When(p.validation_first_ms),
                                             When(p.validation_last_ms)));
  }
  if (p.validation_first_ms <= p.train_last_ms) {
    return core::InvalidArgument(
        fmt::format("the validation range must start after the training range (validation from {}, "
                    "training until {})",
                    When(p.validation_first_ms), When(p.train_last_ms)));
  }
  return core::Status::Ok();
}

core::Result<Samples> BuildSamples(std::span<const Candle> candles, const TrainParams& params) {
  for (size_t i = 1; i < candles.size(); ++i) {
    if (candles[i].open_time_ms <= candles[i - 1].open_time_ms) {
      return core::InvalidArgument(
          fmt::format("candles must be sorted by open time without duplicates (bar {} at {} "
                      "follows {})",
                      i, When(candles[i].open_time_ms), When(candles[i - 1].open_time_ms)));
    }
  }
  const int64_t n = static_cast<int64_t>(candles.size());
  const int window = params.shape.window;
  const int horizon = params.shape.horizon;
  // A sample's row t needs its window's first row at or after FirstValidRow() and t + H < n.
  const int64_t first_sample = FirstValidRow() + window - 1;
  const int64_t end_sample = n - horizon;

  struct Range {
    const char* name;
    int64_t from_ms, to_ms;
    int64_t first = 0, end = 0;  // bars in range
    std::vector<int64_t> rows = {};
  };
  Range train{"training", params.train_first_ms, params.train_last_ms};
  Range valid{"validation", params.validation_first_ms, params.validation_last_ms};
  for (Range* r : {&train, &valid}) {
    std::tie(r->first, r->end) = RowsIn(candles, r->from_ms, r->to_ms);
    for (int64_t t = std::max(r->first, first_sample); t < std::min(r->end, end_sample); ++t) {
      r->rows.push_back(t);
    }
    if (r->rows.size() < 2) {
      return core::InvalidArgument(fmt::format(
          "the {} range {} .. {} yields {} samples from its {} bars; at least 2 are needed, and a "
          "sample needs {} earlier bars (features and a window of {}) and {} later bars (the "
          "horizon)",
          r->name, When(r->from_ms), When(r->to_ms), r->rows.size(), r->end - r->first,
          first_sample, window, horizon));
    }
  }

  std::vector<float> features = ComputeFeatures(candles);
  Samples out;
  out.norm = FitNormalization(features, candles, std::max<int64_t>(train.first, FirstValidRow()),
                              train.end);
  Normalize(out.norm, features);

  auto cut = [&](const std::vector<int64_t>& rows, torch::Tensor& x, torch::Tensor& y) {
    const int64_t m = static_cast<int64_t>(rows.size());
    x = torch::empty({m, window, kFeatureCount}, torch::kFloat);
    y = torch::empty({m, horizon}, torch::kFloat);
    float* xp = x.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const size_t per = static_cast<size_t>(window) * kFeatureCount;
    for (int64_t i = 0; i < m; ++i) {
      Window(features, rows[i], window, std::span<float>(xp + i * per, per));
      for (int h = 1; h <= horizon; ++h) {
        yp[i * horizon + h - 1] = Target(candles, rows[i], h, out.norm.target_scale);
      }
    }
  };
  cut(train.rows, out.train_x, out.train_y);
  cut(valid.rows, out.valid_x, out.valid_y);
  out.train_rows = std::move(train.rows);
  out.valid_rows = std::move(valid.rows);
  return out;
}

core::Result<ForecastModel> TorchTrainer::Train(std::span<const Candle> candles,
                                                const TrainParams& params,
                                                const EpochFn& on_epoch) {
  try {
    return TrainOrThrow(candles, params, on_epoch);
  } catch (const std::invalid_argument& e) {
    return core::InvalidArgument(e.what());
  } catch (const std::bad_alloc&) {
    return core::Status(core::StatusCode::kResourceExhausted, "out of memory while training");
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return core::Internal("training failed: " + what.substr(0, what.find('\n')));
  }
}

}  // namespace megaserve::forecast
