#include "forecast/forecast_backend.h"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>

namespace megaserve::forecast {
namespace {

namespace fs = std::filesystem;

std::string Trimmed(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, s.find_first_not_of(ws));
  s.erase(s.find_last_not_of(ws) + 1);
  return s;
}

// The precision the folder asks for (see the top of forecast_backend.h).
core::Result<Precision> ChoosePrecision(const fs::path& dir, bool has_int8) {
  const fs::path file = dir / kPrecisionFile;
  std::error_code ec;
  if (!fs::exists(file, ec)) return has_int8 ? Precision::kInt8 : Precision::kFp32;
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  auto precision = ParsePrecision(Trimmed(text.str()));
  if (!precision.ok()) {
    return core::InvalidArgument(
        fmt::format("{}: {} (write int8 or fp32)", file.string(), precision.status().message()));
  }
  return *precision;
}

// Reads one input into `dst` (window * kFeatureCount floats).
core::Status ParseInput(std::string_view input, std::span<float> dst) {
  const std::size_t n = dst.size();
  if (!input.empty() && input.front() == kBinaryTag) {
    if (input.size() != 1 + n * sizeof(float)) {
      return core::InvalidArgument(
          fmt::format("a binary window needs {} floats, got {} bytes", n, input.size() - 1));
    }
    std::memcpy(dst.data(), input.data() + 1, n * sizeof(float));
    return core::Status::Ok();
  }
  rapidjson::Document d;
  d.Parse(input.data(), input.size());
  if (d.HasParseError() || !d.IsObject() || !d.HasMember("window") || !d["window"].IsArray()) {
    return core::InvalidArgument(
        fmt::format("the input must be {{\"window\": [{} normalized features]}}", n));
  }
  const auto& window = d["window"];
  if (window.Size() != n) {
    return core::InvalidArgument(fmt::format("window needs {} numbers (bars x {} features), got {}",
                                             n, kFeatureCount, window.Size()));
  }
  for (rapidjson::SizeType i = 0; i < window.Size(); ++i) {
    if (!window[i].IsNumber() || !std::isfinite(window[i].GetDouble())) {
      return core::InvalidArgument(fmt::format("window[{}] is not a finite number", i));
    }
    dst[i] = static_cast<float>(window[i].GetDouble());
  }
  return core::Status::Ok();
}

std::string JsonAnswer(std::span<const float> out, const LstmShape& shape,
                       const std::vector<double>& quantiles) {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  w.Key("horizon");
  w.Int(shape.horizon);
  w.Key("quantiles");
  w.StartArray();
  for (double q : quantiles) w.Double(q);
  w.EndArray();
  w.Key("outputs");
  w.StartArray();
  for (int h = 0; h < shape.horizon; ++h) {
    w.StartArray();
    for (int q = 0; q < shape.num_quantiles; ++q) w.Double(out[h * shape.num_quantiles + q]);
    w.EndArray();
  }
  w.EndArray();
  w.EndObject();
  return {sb.GetString(), sb.GetSize()};
}

}  // namespace

core::Result<std::unique_ptr<ForecastBackendModel>> ForecastBackendModel::Load(
    const models::ModelSpec& spec) {
  const fs::path dir(spec.dir);
  std::error_code ec;
  const bool has_fp32 = fs::exists(dir / kFp32File, ec);
  const bool has_int8 = fs::exists(dir / kInt8File, ec);
  if (!has_fp32 && !has_int8) {
    return core::NotFound(
        fmt::format("{}: neither {} nor {} exists (train one with: megaserve "
                    "train forecast)",
                    spec.dir, kInt8File, kFp32File));
  }
  auto precision = ChoosePrecision(dir, has_int8);
  if (!precision.ok()) return precision.status();
  const bool int8_file = *precision == Precision::kInt8 ? has_int8 : !has_fp32;
  const std::string path = (dir / (int8_file ? kInt8File : kFp32File)).string();
  auto model = ReadModel(path);
  if (!model.ok()) return model.status();
  // From an INT8 file, the engine takes the stored integers rather than requantizing the
  // dequantized copy.
  std::optional<Int8Matrices> int8;
  if (int8_file && *precision == Precision::kInt8) {
    auto matrices = ReadInt8Weights(path);
    if (!matrices.ok()) return matrices.status();
    int8 = std::move(*matrices);
  }
  auto engine = LstmEngine::Create(model->weights, *precision,
                                   EngineOptions{.int8 = int8 ? &*int8 : nullptr});
  if (!engine.ok()) {
    return core::Status(engine.status().code(),
                        fmt::format("{}: {}", path, engine.status().message()));
  }
  if (static_cast<int>(model->info.quantiles.size()) != (*engine)->shape().num_quantiles) {
    return core::InvalidArgument(fmt::format("{}: {} quantiles in the metadata, {} in the head",
                                             path, model->info.quantiles.size(),
                                             (*engine)->shape().num_quantiles));
  }
  std::unique_ptr<ForecastBackendModel> out(
      new ForecastBackendModel(std::move(*engine), std::move(model->info), path));
  // One run sizes this thread's scratch space and pages the weights in.
  const LstmShape& shape = out->shape();
  std::vector<float> zeros(static_cast<std::size_t>(shape.window) * shape.input_size, 0.0f);
  std::vector<float> outputs(shape.outputs());
  out->engine_->Run(zeros, 1, outputs);
  return out;
}

ForecastBackendModel::ForecastBackendModel(std::unique_ptr<LstmEngine> engine, ModelInfo info,
                                           std::string path)
    : engine_(std::move(engine)), info_(std::move(info)), weights_path_(std::move(path)) {
  // ReadModel keeps only a JSON object here, in compact text: "{}" is empty.
  if (!info_.backtest_json.empty() && info_.backtest_json != "{}") {
    skill_json_ = std::make_shared<const std::string>(info_.backtest_json);
  }
}

std::size_t ForecastBackendModel::memory_bytes() const {
  return engine_->memory_bytes() + sizeof(*this) + info_.training_json.size() +
         info_.backtest_json.size();
}

core::Result<std::string> ForecastBackendModel::Infer(std::string_view input) {
  std::vector<models::Input> one{models::Input(std::string(input))};
  return std::move(InferBatch(one).front());
}

std::vector<core::Result<std::string>> ForecastBackendModel::InferBatch(
    const std::vector<models::Input>& inputs) {
  const LstmShape& shape = engine_->shape();
  const std::size_t in_size = static_cast<std::size_t>(shape.window) * shape.input_size;
  const std::size_t out_size = static_cast<std::size_t>(shape.outputs());
  // Reused across batches on each batcher thread.
  thread_local std::vector<float> in_buf;
  thread_local std::vector<float> out_buf;
  thread_local std::vector<int> rows;  // input index -> row of the engine's batch, -1 = bad
  in_buf.resize(inputs.size() * in_size);
  out_buf.resize(inputs.size() * out_size);
  rows.assign(inputs.size(), -1);

  // Identical inputs (clients asking for the same series at the same moment send the same
  // window, usually one shared copy of it) share one row of the engine's batch. Each input is
  // compared with the first input of every row so far: a batch holds few distinct windows, a
  // shared window compares equal by its address, and two windows of different series or times
  // differ in their first bytes, so a comparison costs less than hashing the input.
  thread_local std::vector<std::size_t> firsts;  // row -> the input that made it
  firsts.clear();
  std::vector<core::Result<std::string>> results;
  results.reserve(inputs.size());
  int batch = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const std::string_view input = inputs[i].view();
    auto same = std::find_if(firsts.begin(), firsts.end(), [&](std::size_t j) {
      const std::string_view first = inputs[j].view();
      return first.size() == input.size() && (first.data() == input.data() || first == input);
    });
    if (same != firsts.end()) {
      rows[i] = rows[*same];
      results.emplace_back(std::string());
      continue;
    }
    std::span<float> dst(in_buf.data() + batch * in_size, in_size);
    core::Status s = ParseInput(input, dst);
    if (s.ok()) {
      rows[i] = batch++;
      firsts.push_back(i);
      results.emplace_back(std::string());
    } else {
      results.emplace_back(std::move(s));
    }
  }
  if (batch > 0) {
    engine_->Run(std::span<const float>(in_buf.data(), batch * in_size), batch,
                 std::span<float>(out_buf.data(), batch * out_size));
  }
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (rows[i] < 0) continue;
    std::span<const float> out(out_buf.data() + rows[i] * out_size, out_size);
    if (inputs[i].view().front() == kBinaryTag) {
      std::string answer(1 + out_size * sizeof(float), kBinaryTag);
      std::memcpy(answer.data() + 1, out.data(), out_size * sizeof(float));
      *results[i] = std::move(answer);
    } else {
      *results[i] = JsonAnswer(out, shape, info_.quantiles);
    }
  }
  return results;
}

core::Result<std::unique_ptr<models::Model>> LoadForecastModel(const models::ModelSpec& spec) {
  auto model = ForecastBackendModel::Load(spec);
  if (!model.ok()) return model.status();
  return std::unique_ptr<models::Model>(std::move(*model));
}

std::string EncodeBinaryWindow(std::span<const float> window) {
  std::string out(1 + window.size() * sizeof(float), kBinaryTag);
  std::memcpy(out.data() + 1, window.data(), window.size() * sizeof(float));
  return out;
}

core::Status DecodeBinaryOutputs(std::string_view answer, std::span<float> outputs) {
  if (answer.size() != 1 + outputs.size() * sizeof(float) || answer.front() != kBinaryTag) {
    return core::Internal(fmt::format("the forecast backend answered {} bytes, expected {}",
                                      answer.size(), 1 + outputs.size() * sizeof(float)));
  }
  std::memcpy(outputs.data(), answer.data() + 1, outputs.size() * sizeof(float));
  return core::Status::Ok();
}

}  // namespace megaserve::forecast
