// Forecast training as the main binary sees it: an interface implemented in the libtorch
// backend plugin (src/forecast/torch/), opened with dlopen on first use like the diffusion
// engine, so serving forecasts never loads libtorch.
//
// Training: quantile regression with the pinball loss, averaged over quantiles and horizon
// steps (Koenker and Bassett, "Regression Quantiles", Econometrica 1978), Adam, gradient
// clipping, early stopping on the validation loss (the best epoch's weights are kept). A fixed
// seed gives the same model on the same machine and thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "forecast/candles.h"
#include "forecast/lstm_model.h"

namespace megaserve::forecast {

struct TrainParams {
  std::string symbol;
  std::string interval;
  LstmShape shape;  // input_size must be kFeatureCount; num_quantiles = quantiles.size()
  std::vector<double> quantiles = {0.1, 0.5, 0.9};
  // Bars (by open time, inclusive, Unix ms) whose windows end in the training and validation
  // ranges; targets may reach past a range's end only into later bars of the series.
  int64_t train_first_ms = 0;
  int64_t train_last_ms = 0;
  int64_t validation_first_ms = 0;
  int64_t validation_last_ms = 0;
  int max_epochs = 40;
  int patience = 6;  // epochs without a better validation loss before stopping
  int batch_size = 256;
  double learning_rate = 1e-3;
  double grad_clip = 1.0;
  uint64_t seed = 42;
  int threads = 0;  // libtorch intra-op threads; 0 = libtorch's default
};

// Reports one finished epoch.
struct EpochReport {
  int epoch = 0;  // 1-based
  int max_epochs = 0;
  double train_loss = 0;
  double validation_loss = 0;
  bool best = false;  // the best validation loss so far
};
using EpochFn = std::function<void(const EpochReport&)>;

class Trainer {
 public:
  virtual ~Trainer() = default;
  // Trains on `candles` (sorted, complete bars of one symbol and interval). Returns the model
  // with ModelInfo filled (normalization fitted on the training rows, ranges, training_json).
  // kInvalidArgument when a range holds too few bars for the window and horizon.
  virtual core::Result<ForecastModel> Train(std::span<const Candle> candles,
                                            const TrainParams& params, const EpochFn& on_epoch) = 0;
};

// Bumped whenever Trainer or the structs it uses change layout.
inline constexpr int kTrainerAbiVersion = 1;
using TrainerEntryFn = Trainer* (*)(int abi_version);
inline constexpr const char* kTrainerEntrySymbol = "megaserve_torch_forecast_trainer";

// Opens the libtorch plugin (found as diffusion::LoadTorchEngine finds it) and returns its
// trainer, owned by the plugin.
core::Result<Trainer*> LoadTorchTrainer();

}  // namespace megaserve::forecast
