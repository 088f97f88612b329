// Forecast model files: safetensors writing, the ModelInfo JSON and per-row INT8 quantization.
//
// Writing follows the safetensors layout (Hugging Face, github.com/huggingface/safetensors,
// "Format" in its README): an 8-byte little-endian header length N, N bytes of JSON (padded with
// spaces to a multiple of 8 so every tensor stays 8-byte aligned) mapping each tensor name to
// {"dtype","shape","data_offsets"} plus a "__metadata__" map of strings, then the tensors' raw
// little-endian bytes back to back. Reading reuses diffusion::SafetensorsFile, which checks the
// header completely before handing out views.
//
// Quantization is symmetric per output row (as in per-channel weight quantization, e.g. Jacob
// et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
// Inference", without the zero point): scale = max|w| / 127, q = round(w / scale).
#include "forecast/lstm_model.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "diffusion/safetensors.h"

namespace megaserve::forecast {
namespace {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

constexpr const char* kMetadataKey = "megaserve.forecast";

std::string LayerName(const char* what, int layer) {
  return fmt::format("lstm.{}_l{}", what, layer);
}

int LayerInput(const LstmShape& s, int layer) { return layer == 0 ? s.input_size : s.hidden_size; }

// ---------------------------------------------------------------- JSON

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Writes `json` (an object's text) as a raw value, or {} when it is not a JSON object.
void WriteRawObject(JsonWriter& w, const std::string& json) {
  rapidjson::Document doc;
  doc.Parse(json.c_str(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    w.StartObject();
    w.EndObject();
    return;
  }
  rapidjson::StringBuffer buf;
  JsonWriter inner(buf);
  doc.Accept(inner);
  w.RawValue(buf.GetString(), buf.GetSize(), rapidjson::kObjectType);
}

std::string ToText(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  v.Accept(w);
  return std::string(buf.GetString(), buf.GetSize());
}

bool GetInt(const rapidjson::Value& obj, const char* key, int64_t* out) {
  auto it = obj.FindMember(key);
  if (it == obj.MemberEnd() || !it->value.IsInt64()) return false;
  *out = it->value.GetInt64();
  return true;
}

bool GetString(const rapidjson::Value& obj, const char* key, std::string* out) {
  auto it = obj.FindMember(key);
  if (it == obj.MemberEnd() || !it->value.IsString()) return false;
  *out = std::string(it->value.GetString(), it->value.GetStringLength());
  return true;
}

bool GetFloats(const rapidjson::Value& obj, const char* key, float* out, std::size_t n) {
  auto it = obj.FindMember(key);
  if (it == obj.MemberEnd() || !it->value.IsArray() || it->value.Size() != n) return false;
  for (rapidjson::SizeType i = 0; i < n; ++i) {
    if (!it->value[i].IsNumber()) return false;
    out[i] = static_cast<float>(it->value[i].GetDouble());
  }
  return true;
}

// ---------------------------------------------------------------- writing

struct OutTensor {
  std::string name;
  const char* dtype;
  std::vector<int64_t> shape;
  const void* data;
  std::size_t nbytes;
};

OutTensor F32(std::string name, std::vector<int64_t> shape, const std::vector<float>& v) {
  return {std::move(name), "F32", std::move(shape), v.data(), v.size() * sizeof(float)};
}

std::string Header(const std::vector<OutTensor>& tensors, const std::string& info_json) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("__metadata__");
  w.StartObject();
  w.Key("format");
  w.String("pt");
  w.Key(kMetadataKey);
  w.String(info_json.c_str(), static_cast<rapidjson::SizeType>(info_json.size()));
  w.EndObject();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    w.Key(t.name.c_str());
    w.StartObject();
    w.Key("dtype");
    w.String(t.dtype);
    w.Key("shape");
    w.StartArray();
    for (int64_t d : t.shape) w.Int64(d);
    w.EndArray();
    w.Key("data_offsets");
    w.StartArray();
    w.Uint64(offset);
    w.Uint64(offset + t.nbytes);
    w.EndArray();
    w.EndObject();
    offset += t.nbytes;
  }
  w.EndObject();
  std::string header(buf.GetString(), buf.GetSize());
  header.append((8 - header.size() % 8) % 8, ' ');
  return header;
}

core::Status WriteAll(int fd, const void* data, std::size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      return core::Internal(fmt::format("{}: write failed: {}", path, std::strerror(errno)));
    }
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return core::Status::Ok();
}

// Writes the file under a temporary name in the same folder, syncs it and renames it over `path`.
core::Status WriteSafetensors(const std::string& path, const std::vector<OutTensor>& tensors,
                              const std::string& info_json) {
  const std::string header = Header(tensors, info_json);
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return core::Internal(fmt::format("{}: cannot create: {}", tmp, std::strerror(errno)));
  }
  const uint64_t n = header.size();
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  core::Status st = WriteAll(fd, len, sizeof(len), tmp);
  if (st.ok()) st = WriteAll(fd, header.data(), header.size(), tmp);
  for (const auto& t : tensors) {
    if (st.ok()) st = WriteAll(fd, t.data, t.nbytes, tmp);
  }
  if (st.ok() && ::fsync(fd) != 0) {
    st = core::Internal(fmt::format("{}: fsync failed: {}", tmp, std::strerror(errno)));
  }
  ::close(fd);
  if (st.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) {
    st =
        core::Internal(fmt::format("{}: cannot rename to {}: {}", tmp, path, std::strerror(errno)));
  }
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

core::Status CheckModel(const ForecastModel& model) {
  if (auto st = ValidateWeights(model.weights); !st.ok()) return st;
  if (static_cast<int>(model.info.quantiles.size()) != model.weights.shape.num_quantiles) {
    return core::InvalidArgument(fmt::format("{} quantiles but shape.num_quantiles = {}",
                                             model.info.quantiles.size(),
                                             model.weights.shape.num_quantiles));
  }
  for (float sd : model.info.norm.std) {
    if (!(sd > 0)) return core::InvalidArgument("normalization std must be > 0");
  }
  if (!(model.info.norm.target_scale > 0)) {
    return core::InvalidArgument("normalization target_scale must be > 0");
  }
  return core::Status::Ok();
}

// ---------------------------------------------------------------- reading

using diffusion::DType;
using diffusion::SafetensorsFile;
using diffusion::TensorView;

core::Status TensorError(const SafetensorsFile& file, const std::string& name,
                         const std::string& what) {
  return core::InvalidArgument(fmt::format("{}: tensor \"{}\" {}", file.path(), name, what));
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// Finds `name` with the expected shape and one of the allowed dtypes.
core::Result<const TensorView*> FindTensor(const SafetensorsFile& file, const std::string& name,
                                           const std::vector<int64_t>& shape, bool allow_i8) {
  const TensorView* t = file.Find(name);
  if (t == nullptr) return TensorError(file, name, "is missing");
  if (t->dtype != DType::kF32 && !(allow_i8 && t->dtype == DType::kI8)) {
    return TensorError(file, name,
                       fmt::format("has dtype {}, expected F32{}", diffusion::DTypeName(t->dtype),
                                   allow_i8 ? " or I8" : ""));
  }
  if (t->shape != shape) {
    return TensorError(
        file, name,
        fmt::format("has shape {}, expected {}", ShapeText(t->shape), ShapeText(shape)));
  }
  return t;
}

std::vector<float> CopyF32(const TensorView& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  std::memcpy(out.data(), t.data, out.size() * sizeof(float));
  return out;
}

core::Result<QuantizedMatrix> ReadQuantized(const SafetensorsFile& file, const TensorView& t) {
  QuantizedMatrix m;
  m.rows = static_cast<int>(t.shape[0]);
  m.cols = static_cast<int>(t.shape[1]);
  m.q.resize(static_cast<std::size_t>(t.numel()));
  std::memcpy(m.q.data(), t.data, m.q.size());
  const std::string scale_name = t.name + ".scale";
  auto scale = FindTensor(file, scale_name, {m.rows}, false);
  if (!scale.ok()) return scale.status();
  m.scale = CopyF32(**scale);
  for (std::size_t r = 0; r < m.scale.size(); ++r) {
    if (!std::isfinite(m.scale[r]) || m.scale[r] <= 0) {
      return TensorError(file, scale_name, fmt::format("has a bad scale at row {}", r));
    }
  }
  for (int8_t q : m.q) {
    if (q == -128) return TensorError(file, t.name, "holds -128 (outside [-127, 127])");
  }
  return m;
}

std::vector<float> Dequantize(const QuantizedMatrix& m) {
  std::vector<float> w(m.q.size());
  for (int r = 0; r < m.rows; ++r) {
    for (int c = 0; c < m.cols; ++c) {
      const std::size_t i = static_cast<std::size_t>(r) * m.cols + c;
      w[i] = static_cast<float>(m.q[i]) * m.scale[r];
    }
  }
  return w;
}

// Reads one weight matrix (F32, or I8 + scale) into `dense` and, for I8, `quantized`.
core::Status ReadMatrix(const SafetensorsFile& file, const std::string& name, int rows, int cols,
                        std::vector<float>* dense, QuantizedMatrix* quantized, bool* is_int8) {
  auto t = FindTensor(file, name, {rows, cols}, true);
  if (!t.ok()) return t.status();
  if ((*t)->dtype == DType::kF32) {
    *dense = CopyF32(**t);
    *is_int8 = false;
    return core::Status::Ok();
  }
  auto q = ReadQuantized(file, **t);
  if (!q.ok()) return q.status();
  *dense = Dequantize(*q);
  *quantized = std::move(q).value();
  *is_int8 = true;
  return core::Status::Ok();
}

struct Loaded {
  ForecastModel model;
  Int8Matrices int8;
  bool any_int8 = false;
  bool all_int8 = true;
};

core::Result<Loaded> Load(const std::string& path) {
  auto opened = SafetensorsFile::Open(path);
  if (!opened.ok()) return opened.status();
  const SafetensorsFile& file = **opened;
  auto meta = file.metadata().find(kMetadataKey);
  if (meta == file.metadata().end()) {
    return core::InvalidArgument(
        fmt::format("{}: metadata entry \"{}\" is missing", path, kMetadataKey));
  }
  Loaded out;
  LstmShape shape;
  auto info = ModelInfoFromJson(meta->second, &shape);
  if (!info.ok()) {
    return core::InvalidArgument(fmt::format("{}: {}", path, info.status().message()));
  }
  out.model.info = std::move(info).value();
  LstmWeights& w = out.model.weights;
  w.shape = shape;
  const int g = 4 * shape.hidden_size;
  auto matrix = [&](const std::string& name, int rows, int cols, std::vector<float>* dense,
                    QuantizedMatrix* q) {
    bool is_int8 = false;
    core::Status st = ReadMatrix(file, name, rows, cols, dense, q, &is_int8);
    out.any_int8 |= is_int8;
    out.all_int8 &= is_int8;
    return st;
  };
  auto vec = [&](const std::string& name, int n, std::vector<float>* dense) {
    auto t = FindTensor(file, name, {n}, false);
    if (!t.ok()) return t.status();
    *dense = CopyF32(**t);
    return core::Status::Ok();
  };
  w.layers.resize(shape.num_layers);
  out.int8.w_ih.resize(shape.num_layers);
  out.int8.w_hh.resize(shape.num_layers);
  for (int l = 0; l < shape.num_layers; ++l) {
    LstmLayerWeights& layer = w.layers[l];
    core::Status st =
        matrix(LayerName("weight_ih", l), g, LayerInput(shape, l), &layer.w_ih, &out.int8.w_ih[l]);
    if (st.ok()) {
      st = matrix(LayerName("weight_hh", l), g, shape.hidden_size, &layer.w_hh, &out.int8.w_hh[l]);
    }
    if (st.ok()) st = vec(LayerName("bias_ih", l), g, &layer.b_ih);
    if (st.ok()) st = vec(LayerName("bias_hh", l), g, &layer.b_hh);
    if (!st.ok()) return st;
  }
  if (auto st =
          matrix("head.weight", shape.outputs(), shape.hidden_size, &w.head_w, &out.int8.head_w);
      !st.ok()) {
    return st;
  }
  if (auto st = vec("head.bias", shape.outputs(), &w.head_b); !st.ok()) return st;
  if (auto st = CheckModel(out.model); !st.ok()) {
    return core::InvalidArgument(fmt::format("{}: {}", path, st.message()));
  }
  for (const auto& layer : w.layers) {
    for (const auto* v : {&layer.w_ih, &layer.w_hh, &layer.b_ih, &layer.b_hh}) {
      for (float x : *v) {
        if (!std::isfinite(x)) return core::InvalidArgument(path + ": non-finite weight");
      }
    }
  }
  return out;
}

}  // namespace

core::Status ValidateWeights(const LstmWeights& weights) {
  const LstmShape& s = weights.shape;
  if (s.input_size <= 0 || s.hidden_size <= 0 || s.num_layers <= 0 || s.horizon <= 0 ||
      s.num_quantiles <= 0 || s.window <= 0) {
    return core::InvalidArgument(fmt::format(
        "shape has a non-positive size (input {}, hidden {}, layers {}, horizon {}, "
        "quantiles {}, window {})",
        s.input_size, s.hidden_size, s.num_layers, s.horizon, s.num_quantiles, s.window));
  }
  if (static_cast<int>(weights.layers.size()) != s.num_layers) {
    return core::InvalidArgument(
        fmt::format("{} layers given, shape says {}", weights.layers.size(), s.num_layers));
  }
  auto check = [](const std::string& name, const std::vector<float>& v, std::size_t n) {
    if (v.size() == n) return core::Status::Ok();
    return core::InvalidArgument(
        fmt::format("tensor \"{}\" has {} values, expected {}", name, v.size(), n));
  };
  const std::size_t g = 4 * static_cast<std::size_t>(s.hidden_size);
  for (int l = 0; l < s.num_layers; ++l) {
    const LstmLayerWeights& layer = weights.layers[l];
    core::Status st = check(LayerName("weight_ih", l), layer.w_ih, g * LayerInput(s, l));
    if (st.ok()) st = check(LayerName("weight_hh", l), layer.w_hh, g * s.hidden_size);
    if (st.ok()) st = check(LayerName("bias_ih", l), layer.b_ih, g);
    if (st.ok()) st = check(LayerName("bias_hh", l), layer.b_hh, g);
    if (!st.ok()) return st;
  }
  const std::size_t outputs = static_cast<std::size_t>(s.outputs());
  if (auto st = check("head.weight", weights.head_w, outputs * s.hidden_size); !st.ok()) return st;
  return check("head.bias", weights.head_b, outputs);
}

std::string ModelInfoToJson(const ModelInfo& info, const LstmShape& shape) {
  rapidjson::StringBuffer buf;
  JsonWriter w(buf);
  w.StartObject();
  w.Key("symbol");
  w.String(info.symbol.c_str(), static_cast<rapidjson::SizeType>(info.symbol.size()));
  w.Key("interval");
  w.String(info.interval.c_str(), static_cast<rapidjson::SizeType>(info.interval.size()));
  w.Key("quantiles");
  w.StartArray();
  for (double q : info.quantiles) w.Double(q);
  w.EndArray();
  w.Key("shape");
  w.StartObject();
  const std::pair<const char*, int> dims[] = {
      {"input_size", shape.input_size},       {"hidden_size", shape.hidden_size},
      {"num_layers", shape.num_layers},       {"horizon", shape.horizon},
      {"num_quantiles", shape.num_quantiles}, {"window", shape.window}};
  for (const auto& [k, v] : dims) {
    w.Key(k);
    w.Int(v);
  }
  w.EndObject();
  w.Key("normalization");
  w.StartObject();
  w.Key("mean");
  w.StartArray();
  for (float m : info.norm.mean) w.Double(m);
  w.EndArray();
  w.Key("std");
  w.StartArray();
  for (float s : info.norm.std) w.Double(s);
  w.EndArray();
  w.Key("target_scale");
  w.Double(info.norm.target_scale);
  w.EndObject();
  w.Key("seed");
  w.Uint64(info.seed);
  const std::pair<const char*, int64_t> times[] = {
      {"train_first_ms", info.train_first_ms},
      {"train_last_ms", info.train_last_ms},
      {"validation_first_ms", info.validation_first_ms},
      {"validation_last_ms", info.validation_last_ms},
      {"trained_at_ms", info.trained_at_ms}};
  for (const auto& [k, v] : times) {
    w.Key(k);
    w.Int64(v);
  }
  w.Key("training");
  WriteRawObject(w, info.training_json);
  w.Key("backtest");
  WriteRawObject(w, info.backtest_json);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

core::Result<ModelInfo> ModelInfoFromJson(const std::string& json, LstmShape* shape) {
  rapidjson::Document doc;
  doc.Parse(json.c_str(), json.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return core::InvalidArgument("model info is not a JSON object");
  }
  auto bad = [](const char* field) {
    return core::InvalidArgument(fmt::format("model info: \"{}\" is missing or malformed", field));
  };
  ModelInfo info;
  if (!GetString(doc, "symbol", &info.symbol)) return bad("symbol");
  if (!GetString(doc, "interval", &info.interval)) return bad("interval");
  auto q = doc.FindMember("quantiles");
  if (q == doc.MemberEnd() || !q->value.IsArray() || q->value.Empty()) return bad("quantiles");
  info.quantiles.clear();
  for (const auto& v : q->value.GetArray()) {
    if (!v.IsNumber()) return bad("quantiles");
    info.quantiles.push_back(v.GetDouble());
  }
  auto sh = doc.FindMember("shape");
  if (sh == doc.MemberEnd() || !sh->value.IsObject()) return bad("shape");
  LstmShape parsed;
  const std::pair<const char*, int*> dims[] = {
      {"input_size", &parsed.input_size},       {"hidden_size", &parsed.hidden_size},
      {"num_layers", &parsed.num_layers},       {"horizon", &parsed.horizon},
      {"num_quantiles", &parsed.num_quantiles}, {"window", &parsed.window}};
  for (const auto& [k, v] : dims) {
    int64_t x = 0;
    if (!GetInt(sh->value, k, &x) || x <= 0 || x > (1 << 20)) return bad(k);
    *v = static_cast<int>(x);
  }
  auto norm = doc.FindMember("normalization");
  if (norm == doc.MemberEnd() || !norm->value.IsObject()) return bad("normalization");
  if (!GetFloats(norm->value, "mean", info.norm.mean.data(), kFeatureCount)) {
    return bad("normalization.mean");
  }
  if (!GetFloats(norm->value, "std", info.norm.std.data(), kFeatureCount)) {
    return bad("normalization.std");
  }
  for (float sd : info.norm.std) {
    if (!(sd > 0)) return bad("normalization.std");
  }
  auto ts = norm->value.FindMember("target_scale");
  if (ts == norm->value.MemberEnd() || !ts->value.IsNumber() || !(ts->value.GetDouble() > 0)) {
    return bad("normalization.target_scale");
  }
  info.norm.target_scale = static_cast<float>(ts->value.GetDouble());
  auto seed = doc.FindMember("seed");
  if (seed == doc.MemberEnd() || !seed->value.IsUint64()) return bad("seed");
  info.seed = seed->value.GetUint64();
  const std::pair<const char*, int64_t*> times[] = {
      {"train_first_ms", &info.train_first_ms},
      {"train_last_ms", &info.train_last_ms},
      {"validation_first_ms", &info.validation_first_ms},
      {"validation_last_ms", &info.validation_last_ms},
      {"trained_at_ms", &info.trained_at_ms}};
  for (const auto& [k, v] : times) {
    if (!GetInt(doc, k, v)) return bad(k);
  }
  for (const auto& [k, out] :
       {std::pair{"training", &info.training_json}, std::pair{"backtest", &info.backtest_json}}) {
    auto it = doc.FindMember(k);
    if (it == doc.MemberEnd()) continue;
    if (!it->value.IsObject()) return bad(k);
    *out = ToText(it->value);
  }
  if (shape != nullptr) *shape = parsed;
  return info;
}

QuantizedMatrix QuantizeRows(const std::vector<float>& w, int rows, int cols) {
  QuantizedMatrix m;
  m.rows = rows;
  m.cols = cols;
  m.q.resize(static_cast<std::size_t>(rows) * cols);
  m.scale.resize(rows);
  for (int r = 0; r < rows; ++r) {
    const float* row = &w[static_cast<std::size_t>(r) * cols];
    float max_abs = 0;
    for (int c = 0; c < cols; ++c) max_abs = std::max(max_abs, std::fabs(row[c]));
    const float scale = max_abs > 0 ? max_abs / 127.0f : 1.0f;
    m.scale[r] = scale;
    for (int c = 0; c < cols; ++c) {
      const float q = std::nearbyint(row[c] / scale);
      m.q[static_cast<std::size_t>(r) * cols + c] =
          static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f));
    }
  }
  return m;
}

Int8Matrices QuantizeWeights(const LstmWeights& weights) {
  const LstmShape& s = weights.shape;
  Int8Matrices out;
  for (int l = 0; l < s.num_layers; ++l) {
    out.w_ih.push_back(QuantizeRows(weights.layers[l].w_ih, 4 * s.hidden_size, LayerInput(s, l)));
    out.w_hh.push_back(QuantizeRows(weights.layers[l].w_hh, 4 * s.hidden_size, s.hidden_size));
  }
  out.head_w = QuantizeRows(weights.head_w, s.outputs(), s.hidden_size);
  return out;
}

core::Status WriteModelFp32(const ForecastModel& model, const std::string& path) {
  if (auto st = CheckModel(model); !st.ok()) return st;
  const LstmWeights& w = model.weights;
  const LstmShape& s = w.shape;
  const int64_t g = 4 * s.hidden_size;
  std::vector<OutTensor> tensors;
  for (int l = 0; l < s.num_layers; ++l) {
    const LstmLayerWeights& layer = w.layers[l];
    tensors.push_back(F32(LayerName("weight_ih", l), {g, LayerInput(s, l)}, layer.w_ih));
    tensors.push_back(F32(LayerName("weight_hh", l), {g, s.hidden_size}, layer.w_hh));
    tensors.push_back(F32(LayerName("bias_ih", l), {g}, layer.b_ih));
    tensors.push_back(F32(LayerName("bias_hh", l), {g}, layer.b_hh));
  }
  tensors.push_back(F32("head.weight", {s.outputs(), s.hidden_size}, w.head_w));
  tensors.push_back(F32("head.bias", {s.outputs()}, w.head_b));
  return WriteSafetensors(path, tensors, ModelInfoToJson(model.info, s));
}

core::Status WriteModelInt8(const ForecastModel& model, const std::string& path) {
  if (auto st = CheckModel(model); !st.ok()) return st;
  const LstmWeights& w = model.weights;
  const LstmShape& s = w.shape;
  const Int8Matrices q = QuantizeWeights(w);
  std::vector<OutTensor> tensors;
  auto add_q = [&](const std::string& name, const QuantizedMatrix& m) {
    tensors.push_back({name, "I8", {m.rows, m.cols}, m.q.data(), m.q.size()});
    tensors.push_back(F32(name + ".scale", {m.rows}, m.scale));
  };
  const int64_t g = 4 * s.hidden_size;
  for (int l = 0; l < s.num_layers; ++l) {
    add_q(LayerName("weight_ih", l), q.w_ih[l]);
    add_q(LayerName("weight_hh", l), q.w_hh[l]);
    tensors.push_back(F32(LayerName("bias_ih", l), {g}, w.layers[l].b_ih));
    tensors.push_back(F32(LayerName("bias_hh", l), {g}, w.layers[l].b_hh));
  }
  add_q("head.weight", q.head_w);
  tensors.push_back(F32("head.bias", {s.outputs()}, w.head_b));
  return WriteSafetensors(path, tensors, ModelInfoToJson(model.info, s));
}

core::Result<ForecastModel> ReadModel(const std::string& path) {
  auto loaded = Load(path);
  if (!loaded.ok()) return loaded.status();
  return std::move(loaded->model);
}

core::Result<Int8Matrices> ReadInt8Weights(const std::string& path) {
  auto loaded = Load(path);
  if (!loaded.ok()) return loaded.status();
  if (!loaded->all_int8) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("{}: not an INT8 model file (a weight matrix is F32)", path));
  }
  return std::move(loaded->int8);
}

}  // namespace megaserve::forecast
