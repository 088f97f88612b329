// The "forecast" model backend: a stored forecast LSTM (lstm_model.h) served by the native engine
// (lstm_engine.h) behind the model repository and its dynamic batcher.
//
// Files and precision. A model folder holds config.toml (backend = "forecast"),
// model.safetensors (FP32) and/or model.int8.safetensors (INT8). The engine's precision is:
//   - the one named in an optional file `precision` in the folder ("int8" or "fp32", surrounding
//     whitespace ignored), else
//   - INT8 when model.int8.safetensors exists, else FP32.
// The weights come from the file of that precision when it exists, else from the other one (an
// FP32 file is quantized at load for INT8; an INT8 file is run dequantized for FP32). A folder
// with neither file fails to load, naming both.
//
// Requests. Infer()/InferBatch() take one of two encodings per input, told apart by the first
// byte:
//   - JSON (for POST /v1/models/{name}/infer): {"window": [window * 7 normalized features, oldest
//     bar first]}; the answer is JSON {"horizon": H, "quantiles": [...], "outputs": [[Q values]
//     per step]}, the raw outputs in units of target_scale (features.h).
//   - Binary (the forecast service's hot path, no text conversion of the window): the byte 0x01,
//     which cannot begin a JSON text (RFC 8259 section 2), followed by window * 7 floats as raw
//     host-order IEEE 754 binary32; the answer is 0x01 followed by horizon * quantiles floats
//     the same way (step-major).
// InferBatch runs one LstmEngine::Run over every well-formed input of the batch; a malformed
// input fails alone with kInvalidArgument. Byte-identical inputs (the same series' window asked
// for by many clients at once) share one row of that run.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/lstm_engine.h"
#include "forecast/lstm_model.h"
#include "models/backend.h"

namespace megaserve::forecast {

// The backend's name in config.toml.
inline constexpr std::string_view kForecastBackend = "forecast";
// The first byte of a binary request or answer.
inline constexpr char kBinaryTag = '\x01';

// File names inside a model folder.
inline constexpr std::string_view kFp32File = "model.safetensors";
inline constexpr std::string_view kInt8File = "model.int8.safetensors";
inline constexpr std::string_view kPrecisionFile = "precision";

class ForecastBackendModel final : public models::Model {
 public:
  // Loads the model in `spec.dir` as described at the top of this file and runs one warm-up
  // batch. Errors name the file at fault.
  static core::Result<std::unique_ptr<ForecastBackendModel>> Load(const models::ModelSpec& spec);

  // The engine's prepared weights plus the model's metadata.
  std::size_t memory_bytes() const override;
  // One request; see the top of this file for the encodings.
  core::Result<std::string> Infer(std::string_view input) override;
  // One engine run over the whole batch.
  std::vector<core::Result<std::string>> InferBatch(
      const std::vector<models::Input>& inputs) override;

  const LstmShape& shape() const { return engine_->shape(); }
  const ModelInfo& info() const { return info_; }
  // info().backtest_json when the model has been backtested, else null; shared by every
  // Forecast that carries it.
  const std::shared_ptr<const std::string>& skill_json() const { return skill_json_; }
  Precision precision() const { return engine_->precision(); }
  // The engine's kernel family ("avx512-vnni", "avx2", "generic").
  std::string_view kernel() const { return engine_->kernel(); }
  // The file the weights were read from (a full path).
  const std::string& weights_path() const { return weights_path_; }

 private:
  ForecastBackendModel(std::unique_ptr<LstmEngine> engine, ModelInfo info, std::string path);

  std::unique_ptr<LstmEngine> engine_;
  ModelInfo info_;
  std::shared_ptr<const std::string> skill_json_;
  std::string weights_path_;
};

// The factory to register with models::Repository::RegisterBackend(kForecastBackend, ...).
core::Result<std::unique_ptr<models::Model>> LoadForecastModel(const models::ModelSpec& spec);

// A binary request for `window` (window * kFeatureCount floats).
std::string EncodeBinaryWindow(std::span<const float> window);

// Reads a binary answer into `outputs` (its size must match). kInternal when it does not.
core::Status DecodeBinaryOutputs(std::string_view answer, std::span<float> outputs);

}  // namespace megaserve::forecast
