// CLIP text transformer forward pass (Radford et al. 2021, section 2.4; see the header for the
// equations): pre-LayerNorm blocks with causal multi-head self-attention, Vaswani et al. 2017.
#include "diffusion/torch/clip_text_encoder.h"

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "diffusion/config_json.h"
#include "diffusion/torch/parallel.h"

namespace megaserve::diffusion {
namespace {

int64_t RequiredPositiveInt(const rapidjson::Value& root, const char* field,
                            const std::string& source) {
  auto it = root.FindMember(field);
  if (it == root.MemberEnd()) {
    throw std::invalid_argument(fmt::format("{}: required field '{}' is missing", source, field));
  }
  if (!it->value.IsInt64() || it->value.GetInt64() <= 0) {
    throw std::invalid_argument(
        fmt::format("{}: field '{}' must be a positive integer", source, field));
  }
  return it->value.GetInt64();
}

ClipTextConfig::Activation ParseActivation(std::string_view name, const std::string& source) {
  using Activation = ClipTextConfig::Activation;
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::kGeluTanh;
  throw std::invalid_argument(
      fmt::format("{}: hidden_act '{}' is not supported (expected quick_gelu, gelu, gelu_new or "
                  "gelu_pytorch_tanh)",
                  source, name));
}

std::string LayerPrefix(int64_t i) { return fmt::format("text_model.encoder.layers.{}.", i); }

}  // namespace

ClipTextConfig ClipTextConfig::FromJson(std::string_view json, const std::string& source) {
  const rapidjson::Document doc = ParseConfigObject(json, source);
  ClipTextConfig c;
  c.vocab_size = RequiredPositiveInt(doc, "vocab_size", source);
  c.hidden_size = RequiredPositiveInt(doc, "hidden_size", source);
  c.intermediate_size = RequiredPositiveInt(doc, "intermediate_size", source);
  c.num_hidden_layers = RequiredPositiveInt(doc, "num_hidden_layers", source);
  c.num_attention_heads = RequiredPositiveInt(doc, "num_attention_heads", source);
  c.max_position_embeddings = RequiredPositiveInt(doc, "max_position_embeddings", source);
  if (c.hidden_size % c.num_attention_heads != 0) {
    throw std::invalid_argument(
        fmt::format("{}: hidden_size {} is not divisible by num_attention_heads {}", source,
                    c.hidden_size, c.num_attention_heads));
  }
  if (auto it = doc.FindMember("hidden_act"); it != doc.MemberEnd()) {
    if (!it->value.IsString()) {
      throw std::invalid_argument(fmt::format("{}: field 'hidden_act' must be a string", source));
    }
    c.hidden_act = ParseActivation(
        std::string_view(it->value.GetString(), it->value.GetStringLength()), source);
  }
  if (auto it = doc.FindMember("layer_norm_eps"); it != doc.MemberEnd()) {
    if (!it->value.IsNumber() || !(it->value.GetDouble() > 0)) {
      throw std::invalid_argument(
          fmt::format("{}: field 'layer_norm_eps' must be a positive number", source));
    }
    c.layer_norm_eps = it->value.GetDouble();
  }
  return c;
}

ClipTextConfig ClipTextConfig::FromFile(const std::filesystem::path& path) {
  return FromJson(ReadConfigFile(path), path.string());
}

std::unique_ptr<ClipTextEncoder> ClipTextEncoder::Load(const std::filesystem::path& dir,
                                                       const ComputeOptions& options) {
  const ClipTextConfig config = ClipTextConfig::FromFile(dir / "config.json");
  std::filesystem::path file = dir / "model.safetensors";
  if (!std::filesystem::exists(file)) file = dir / "model.fp16.safetensors";
  if (!std::filesystem::exists(file)) {
    throw std::invalid_argument(fmt::format(
        "text encoder folder {} has neither model.safetensors nor model.fp16.safetensors",
        dir.string()));
  }
  return std::make_unique<ClipTextEncoder>(config, Weights::FromFile(file.string(), options),
                                           options);
}

ClipTextEncoder::ClipTextEncoder(const ClipTextConfig& config, const Weights& weights,
                                 const ComputeOptions& options)
    : config_(config), options_(options) {
  const int64_t h = config.hidden_size;
  const int64_t m = config.intermediate_size;
  // Every weight is looked up with its expected shape so that a file for another model fails
  // here, naming the weight, rather than deep inside a matrix product.
  auto get = [&](const std::string& name, at::IntArrayRef shape) {
    return weights.Get(name, shape).to(options.dtype).contiguous();
  };
  token_embedding_ = get("text_model.embeddings.token_embedding.weight", {config.vocab_size, h});
  position_embedding_ =
      get("text_model.embeddings.position_embedding.weight", {config.max_position_embeddings, h});
  layers_.reserve(config.num_hidden_layers);
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) {
    const std::string p = LayerPrefix(i);
    Layer layer;
    layer.norm1_weight = get(p + "layer_norm1.weight", {h});
    layer.norm1_bias = get(p + "layer_norm1.bias", {h});
    layer.qkv_weight = at::cat({get(p + "self_attn.q_proj.weight", {h, h}),
                                get(p + "self_attn.k_proj.weight", {h, h}),
                                get(p + "self_attn.v_proj.weight", {h, h})});
    layer.qkv_bias =
        at::cat({get(p + "self_attn.q_proj.bias", {h}), get(p + "self_attn.k_proj.bias", {h}),
                 get(p + "self_attn.v_proj.bias", {h})});
    layer.out_weight = get(p + "self_attn.out_proj.weight", {h, h});
    layer.out_bias = get(p + "self_attn.out_proj.bias", {h});
    layer.norm2_weight = get(p + "layer_norm2.weight", {h});
    layer.norm2_bias = get(p + "layer_norm2.bias", {h});
    layer.fc1_weight = get(p + "mlp.fc1.weight", {m, h});
    layer.fc1_bias = get(p + "mlp.fc1.bias", {m});
    layer.fc2_weight = get(p + "mlp.fc2.weight", {h, m});
    layer.fc2_bias = get(p + "mlp.fc2.bias", {h});
    layers_.push_back(std::move(layer));
  }
  final_norm_weight_ = get("text_model.final_layer_norm.weight", {h});
  final_norm_bias_ = get("text_model.final_layer_norm.bias", {h});
}

at::Tensor ClipTextEncoder::Activate(const at::Tensor& x) const {
  switch (config_.hidden_act) {
    case ClipTextConfig::Activation::kQuickGelu:
      return x * at::sigmoid(x * 1.702);
    case ClipTextConfig::Activation::kGelu:
      return at::gelu(x);
    case ClipTextConfig::Activation::kGeluTanh:
      return at::gelu(x, "tanh");
  }
  throw std::logic_error("unknown CLIP activation");
}

at::Tensor ClipTextEncoder::RunLayer(const Layer& layer, const at::Tensor& hidden,
                                     const at::Tensor& mask) const {
  const int64_t batch = hidden.size(0), tokens = hidden.size(1);
  const int64_t h = config_.hidden_size, heads = config_.num_attention_heads;
  const int64_t head_dim = h / heads;

  at::Tensor x =
      at::layer_norm(hidden, {h}, layer.norm1_weight, layer.norm1_bias, config_.layer_norm_eps);
  // [B, T, 3H] -> [3, B, heads, T, head_dim]
  at::Tensor qkv = ParallelLinear(x, layer.qkv_weight, layer.qkv_bias)
                       .view({batch, tokens, 3, heads, head_dim})
                       .permute({2, 0, 3, 1, 4});
  const at::Tensor q = qkv[0] * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  at::Tensor scores = at::matmul(q, qkv[1].transpose(-2, -1)) + mask;
  // With at most 77 keys the [B, heads, T, T] scores are small, so options_.attention_slice is
  // not needed here. Reduced precision softmax loses mass on long rows: sum in fp32.
  at::Tensor probs = options_.dtype == at::kFloat
                         ? at::softmax(scores, -1)
                         : at::softmax(scores, -1, at::kFloat).to(options_.dtype);
  at::Tensor context = at::matmul(probs, qkv[2]).transpose(1, 2).reshape({batch, tokens, h});
  at::Tensor out = hidden + ParallelLinear(context, layer.out_weight, layer.out_bias);

  x = at::layer_norm(out, {h}, layer.norm2_weight, layer.norm2_bias, config_.layer_norm_eps);
  x = ParallelLinear(Activate(ParallelLinear(x, layer.fc1_weight, layer.fc1_bias)),
                     layer.fc2_weight, layer.fc2_bias);
  return out + x;
}

at::Tensor ClipTextEncoder::Encode(const at::Tensor& input_ids, int clip_skip) const {
  if (input_ids.dim() != 2 || !at::isIntegralType(input_ids.scalar_type(), /*includeBool=*/false)) {
    throw std::invalid_argument(
        fmt::format("CLIP text encoder: input_ids must be an integer tensor [batch, tokens], got "
                    "{} of {} dimensions",
                    c10::toString(input_ids.scalar_type()), input_ids.dim()));
  }
  const int64_t batch = input_ids.size(0), tokens = input_ids.size(1);
  if (batch < 1 || tokens < 1 || tokens > config_.max_position_embeddings) {
    throw std::invalid_argument(fmt::format(
        "CLIP text encoder: input_ids [{}, {}] must hold at least one sequence of 1 to {} tokens",
        batch, tokens, config_.max_position_embeddings));
  }
  if (clip_skip < 0 || clip_skip >= config_.num_hidden_layers) {
    throw std::invalid_argument(
        fmt::format("CLIP text encoder: clip_skip {} is outside [0, {}) for a model of {} layers",
                    clip_skip, config_.num_hidden_layers, config_.num_hidden_layers));
  }
  const at::Tensor ids = input_ids.to(token_embedding_.device(), at::kLong);
  const int64_t lowest = ids.min().item<int64_t>(), highest = ids.max().item<int64_t>();
  if (lowest < 0 || highest >= config_.vocab_size) {
    throw std::invalid_argument(
        fmt::format("CLIP text encoder: token id {} is outside the vocabulary [0, {})",
                    lowest < 0 ? lowest : highest, config_.vocab_size));
  }

  const int64_t h = config_.hidden_size;
  at::Tensor hidden = token_embedding_.index_select(0, ids.reshape({-1})).view({batch, tokens, h}) +
                      position_embedding_.narrow(0, 0, tokens);
  // Additive causal mask: query t may attend to keys 0..t only.
  const at::Tensor mask =
      at::full({tokens, tokens}, -std::numeric_limits<double>::infinity(), hidden.options())
          .triu(1);
  const int64_t layers_to_run = config_.num_hidden_layers - clip_skip;
  for (int64_t i = 0; i < layers_to_run; ++i) hidden = RunLayer(layers_[i], hidden, mask);
  return at::layer_norm(hidden, {h}, final_norm_weight_, final_norm_bias_, config_.layer_norm_eps);
}

std::size_t ClipTextEncoder::bytes() const {
  auto size = [](const at::Tensor& t) { return static_cast<std::size_t>(t.nbytes()); };
  std::size_t total = size(token_embedding_) + size(position_embedding_) +
                      size(final_norm_weight_) + size(final_norm_bias_);
  for (const Layer& l : layers_) {
    for (const at::Tensor* t :
         {&l.norm1_weight, &l.norm1_bias, &l.qkv_weight, &l.qkv_bias, &l.out_weight, &l.out_bias,
          &l.norm2_weight, &l.norm2_bias, &l.fc1_weight, &l.fc1_bias, &l.fc2_weight, &l.fc2_bias}) {
      total += size(*t);
    }
  }
  return total;
}

}  // namespace megaserve::diffusion
