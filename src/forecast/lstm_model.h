// A forecast model as it is stored: an LSTM over feature windows with a linear head that
// predicts quantiles of the scaled cumulative log return for horizon steps 1..H (see
// features.h), plus everything needed to use and judge it (normalization, data range, training
// metrics, backtest skill).
//
// Network (the same as PyTorch's nn.LSTM(batch_first) followed by nn.Linear on the last step):
//   for each layer l and step t, with x the layer's input and (h, c) its state (zeros at t=0):
//     g = W_ih[l] x + b_ih[l] + W_hh[l] h + b_hh[l]       (4 * hidden rows: gates i, f, g, o)
//     c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)
//   out = W_head h_last + b_head   (horizon * quantiles values, step-major: out[s * Q + q])
//
// Files. A model folder in the model repository holds config.toml (backend = "forecast"),
// model.safetensors (FP32) and model.int8.safetensors (INT8). Tensor names follow PyTorch's
// state_dict: "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0", "lstm.bias_hh_l0",
// ..., "head.weight", "head.bias". In the INT8 file every weight matrix is I8 with a per-row
// (per output channel) F32 scale tensor named "<name>.scale" (symmetric: w = q * scale, q in
// [-127, 127]); biases stay F32. Both files carry the model's ModelInfo as JSON in the
// safetensors metadata entry "megaserve.forecast".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "forecast/features.h"

namespace megaserve::forecast {

struct LstmShape {
  int input_size = kFeatureCount;
  int hidden_size = 64;
  int num_layers = 2;
  int horizon = 6;        // steps predicted
  int num_quantiles = 3;  // ModelInfo::quantiles.size()
  int window = 64;        // bars per input sequence

  int outputs() const { return horizon * num_quantiles; }
  bool operator==(const LstmShape&) const = default;
};

struct LstmLayerWeights {
  std::vector<float> w_ih;  // 4H x in, row-major
  std::vector<float> w_hh;  // 4H x H
  std::vector<float> b_ih;  // 4H
  std::vector<float> b_hh;  // 4H

  bool operator==(const LstmLayerWeights&) const = default;
};

struct LstmWeights {
  LstmShape shape;
  std::vector<LstmLayerWeights> layers;  // num_layers
  std::vector<float> head_w;             // outputs x H
  std::vector<float> head_b;             // outputs

  bool operator==(const LstmWeights&) const = default;
};

// What a model knows about itself. Serialized as JSON in the files' metadata.
struct ModelInfo {
  std::string symbol;    // "BTCUSDT"
  std::string interval;  // "4h"
  std::vector<double> quantiles = {0.1, 0.5, 0.9};
  Normalization norm;
  uint64_t seed = 0;
  // The bars the model was fitted on and validated on (open times, inclusive), Unix ms.
  int64_t train_first_ms = 0;
  int64_t train_last_ms = 0;
  int64_t validation_first_ms = 0;
  int64_t validation_last_ms = 0;
  int64_t trained_at_ms = 0;
  // Training metrics as a JSON object ({"epochs":..,"best_epoch":..,"train_loss":..,
  // "validation_loss":..,"seconds":..}); "{}" when unknown.
  std::string training_json = "{}";
  // The last backtest's summary as a JSON object (see backtest.h), "{}" before any.
  std::string backtest_json = "{}";
};

struct ForecastModel {
  LstmWeights weights;
  ModelInfo info;
};

// Checks sizes against the shape (every vector's length, layer count, quantiles). kInvalidArgument
// names the first inconsistent tensor.
core::Status ValidateWeights(const LstmWeights& weights);

// ModelInfo <-> JSON text (with the shape, which the metadata also carries).
std::string ModelInfoToJson(const ModelInfo& info, const LstmShape& shape);
core::Result<ModelInfo> ModelInfoFromJson(const std::string& json, LstmShape* shape);

// Writes model.safetensors-style files. FP32 stores the weights as given; INT8 quantizes every
// weight matrix per row (see the top of this file). The file is written to a temporary name and
// renamed, so readers never see half a file.
core::Status WriteModelFp32(const ForecastModel& model, const std::string& path);
core::Status WriteModelInt8(const ForecastModel& model, const std::string& path);

// Reads either kind of file. An INT8 file is dequantized into `weights` (w = q * scale); callers
// that compute in INT8 re-read the exact integers with ReadInt8Weights. Errors name the file and
// the missing or malformed tensor.
core::Result<ForecastModel> ReadModel(const std::string& path);

// The quantized form of one weight matrix: rows x cols int8 values and one scale per row.
struct QuantizedMatrix {
  int rows = 0;
  int cols = 0;
  std::vector<int8_t> q;     // rows x cols, row-major
  std::vector<float> scale;  // rows

  bool operator==(const QuantizedMatrix&) const = default;
};

// Symmetric per-row quantization: scale = max|w_row| / 127 (1 for an all-zero row), q =
// round(w / scale) clamped to [-127, 127].
QuantizedMatrix QuantizeRows(const std::vector<float>& w, int rows, int cols);

// The quantized weight matrices of a model, as the INT8 file stores them (biases stay float and
// live in LstmWeights).
struct Int8Matrices {
  std::vector<QuantizedMatrix> w_ih;  // per layer, 4H x in
  std::vector<QuantizedMatrix> w_hh;  // per layer, 4H x H
  QuantizedMatrix head_w;             // outputs x H

  bool operator==(const Int8Matrices&) const = default;
};

// QuantizeRows applied to every weight matrix of `weights` (what WriteModelInt8 stores).
Int8Matrices QuantizeWeights(const LstmWeights& weights);

// The exact integers and scales of an INT8 file. kFailedPrecondition for an FP32 file; other
// errors as ReadModel's.
core::Result<Int8Matrices> ReadInt8Weights(const std::string& path);

}  // namespace megaserve::forecast
