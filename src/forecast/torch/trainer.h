// Forecast training inside the libtorch plugin: the quantile LSTM as a torch module, the
// training samples cut from a candle series, the pinball loss, and the Trainer that ties them
// together (exported by plugin_entry.cc). See forecast/trainer.h for the contract and
// forecast/lstm_model.h for the network and its stored layout.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"
#include "forecast/lstm_model.h"
#include "forecast/trainer.h"

namespace megaserve::forecast {

// nn.LSTM(input_size, hidden, layers, batch_first) followed by nn.Linear(hidden, H * Q) on the
// last step's output: the network of lstm_model.h.
class QuantileLstmImpl : public torch::nn::Module {
 public:
  explicit QuantileLstmImpl(const LstmShape& shape);
  // x: [batch, window, input_size] -> [batch, horizon * quantiles] (step-major).
  torch::Tensor forward(const torch::Tensor& x);

  const LstmShape& shape() const { return shape_; }
  torch::nn::LSTM& lstm() { return lstm_; }
  torch::nn::Linear& head() { return head_; }

 private:
  LstmShape shape_;
  torch::nn::LSTM lstm_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(QuantileLstm);

// A module with PyTorch's default initialization (every LSTM and Linear tensor uniform in
// +-1/sqrt(hidden)), drawn from a generator seeded with `seed` rather than the global one.
QuantileLstm MakeQuantileLstm(const LstmShape& shape, uint64_t seed);

// The module's weights in lstm_model.h's layout (PyTorch's state_dict order: gates i, f, g, o).
LstmWeights ExportWeights(QuantileLstm& module);

// Copies `weights` (ValidateWeights-clean, same shape) into `module`.
void ImportWeights(const LstmWeights& weights, QuantileLstm& module);

// The pinball loss of `pred` ([batch, H * Q], step-major) against `target` ([batch, H]),
// averaged over batch, steps and quantiles: mean(max(q * e, (q - 1) * e)), e = target - pred.
torch::Tensor PinballLoss(const torch::Tensor& pred, const torch::Tensor& target,
                          const torch::Tensor& quantiles);

// Training and validation samples cut from a series.
struct Samples {
  Normalization norm;
  torch::Tensor train_x;  // [n, window, kFeatureCount], normalized features
  torch::Tensor train_y;  // [n, horizon], scaled targets (features.h)
  torch::Tensor valid_x;
  torch::Tensor valid_y;
  std::vector<int64_t> train_rows;  // the row t each sample's window ends at
  std::vector<int64_t> valid_rows;
};

// Every row t whose window [t - window + 1, t] starts at or after FirstValidRow(), whose targets
// t + 1 .. t + horizon exist, and whose open time lies in the training (or validation) range.
// The normalization is fitted on the bars of the training range. kInvalidArgument when the
// candles are unsorted or a range yields fewer than two samples (the message names the range,
// its bars and what a sample needs).
core::Result<Samples> BuildSamples(std::span<const Candle> candles, const TrainParams& params);

// Checks parameters before any work: shapes, quantiles in (0, 1) and increasing, positive
// epochs, batch and learning rate, ordered and non-overlapping ranges.
core::Status ValidateTrainParams(const TrainParams& params);

// The Trainer of forecast/trainer.h on libtorch (CPU).
class TorchTrainer final : public Trainer {
 public:
  core::Result<ForecastModel> Train(std::span<const Candle> candles, const TrainParams& params,
                                    const EpochFn& on_epoch) override;
};

}  // namespace megaserve::forecast
