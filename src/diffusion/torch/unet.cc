// UNet2DConditionModel on ATen; the architecture is described in unet.h.
//
// Where this is faster than a module-by-module eager port:
// - self-attention's to_q/to_k/to_v are concatenated at load into one [3C, C] GEMM, and
//   cross-attention's to_k/to_v into one [2C, D] GEMM; attention reads per-head column slices
//   of those results in place (no head transposes) and works in cache-sized blocks.
// - the transformer's residual stream [B, HW, C] is owned here, so attention outputs,
//   feed-forward outputs and biases accumulate into it in place (addmm_ with beta = 1).
// - GEGLU is gelu(gate) multiplied in place by the value half, on row blocks of the tokens;
//   GroupNorm + SiLU run in place.
// - fp32 convolutions use weights reordered once into oneDNN's layout (attention.h).
// - in channels-last mode, [B, C, H, W] activations are [B, H, W, C] in memory, so the
//   transformer's token view and its output back in image layout are free views.
#include "diffusion/torch/unet.h"

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "diffusion/config_json.h"
#include "diffusion/torch/attention.h"
#include "diffusion/torch/parallel.h"

namespace megaserve::diffusion {
namespace {

// ---- config.json -------------------------------------------------------------------------

class ConfigReader {
 public:
  ConfigReader(const rapidjson::Value& doc, const std::string& source)
      : doc_(doc), source_(source) {}

  // The member `key`, or nullptr when absent or null.
  const rapidjson::Value* Find(const char* key) const {
    auto it = doc_.FindMember(key);
    if (it == doc_.MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
  }

  [[noreturn]] void Fail(const char* key, const std::string& why) const {
    throw std::invalid_argument(fmt::format("{}: field '{}' {}", source_, key, why));
  }

  int64_t Int(const char* key, int64_t fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    return ToInt(key, *v);
  }
  double Double(const char* key, double fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->IsNumber()) Fail(key, "must be a number");
    return v->GetDouble();
  }
  bool Bool(const char* key, bool fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->IsBool()) Fail(key, "must be true or false");
    return v->GetBool();
  }
  std::string String(const char* key, const std::string& fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->IsString()) Fail(key, "must be a string");
    return v->GetString();
  }
  // An int applying to every block, or a list with one int per block.
  std::vector<int64_t> IntPerBlock(const char* key, int64_t fallback, size_t blocks) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return std::vector<int64_t>(blocks, fallback);
    if (!v->IsArray()) return std::vector<int64_t>(blocks, ToInt(key, *v));
    if (v->Size() != blocks) {
      Fail(key, fmt::format("has {} entries for {} down blocks", v->Size(), blocks));
    }
    std::vector<int64_t> out;
    for (const auto& e : v->GetArray()) out.push_back(ToInt(key, e));
    return out;
  }
  std::vector<int64_t> IntList(const char* key, std::vector<int64_t> fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->IsArray() || v->Empty()) Fail(key, "must be a non-empty list of integers");
    std::vector<int64_t> out;
    for (const auto& e : v->GetArray()) out.push_back(ToInt(key, e));
    return out;
  }
  std::vector<std::string> StringList(const char* key, std::vector<std::string> fallback) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return fallback;
    if (!v->IsArray()) Fail(key, "must be a list of strings");
    std::vector<std::string> out;
    for (const auto& e : v->GetArray()) {
      if (!e.IsString()) Fail(key, "must be a list of strings");
      out.emplace_back(e.GetString());
    }
    return out;
  }

  // Options that change the architecture in ways not implemented: each must be absent, null or
  // its default.
  void RequireNull(const char* key) const {
    if (Find(key) != nullptr) Fail(key, "is not supported (must be null)");
  }
  void RequireFalse(const char* key) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return;
    if (v->IsBool() && !v->GetBool()) return;
    if (v->IsArray()) {
      bool all_false = true;
      for (const auto& e : v->GetArray()) all_false = all_false && e.IsBool() && !e.GetBool();
      if (all_false) return;
    }
    Fail(key, "is not supported (must be false)");
  }
  void RequireString(const char* key, std::initializer_list<const char*> allowed) const {
    const rapidjson::Value* v = Find(key);
    if (v == nullptr) return;
    if (v->IsString()) {
      for (const char* a : allowed) {
        if (std::string(a) == v->GetString()) return;
      }
    }
    Fail(key, fmt::format("value is not supported (supported: {})", fmt::join(allowed, ", ")));
  }

 private:
  int64_t ToInt(const char* key, const rapidjson::Value& v) const {
    if (v.IsInt64()) return v.GetInt64();
    if (v.IsDouble() && v.GetDouble() == std::floor(v.GetDouble())) {
      return static_cast<int64_t>(v.GetDouble());
    }
    Fail(key, "must be an integer");
  }

  const rapidjson::Value& doc_;
  const std::string& source_;
};

void Check(bool ok, const std::string& source, const std::string& what) {
  if (!ok) throw std::invalid_argument(fmt::format("{}: {}", source, what));
}

// ---- the spatial transformer -------------------------------------------------------------

// Tokens per feed-forward step (1024 x 8 x 320 fp32 = 10 MiB at SD1.5's widest level).
constexpr int64_t kFeedForwardRows = 1024;

// diffusers' BasicTransformerBlock: pre-LayerNorm self-attention, cross-attention to the text
// encoding and GEGLU feed-forward (Shazeer 2020), each added to the residual stream.
struct TransformerBlock {
  LayerNorm norm1, norm2, norm3;
  at::Tensor self_qkv;  // to_q, to_k, to_v of attn1 stacked: [3C, C]
  Linear self_out;
  Linear cross_q;
  at::Tensor cross_kv;  // to_k, to_v of attn2 stacked: [2C, context_dim]
  Linear cross_out;
  Linear ff_in;  // ff.net.0.proj: [2F, C], value half then gate half
  Linear ff_out;
  int64_t heads = 1;
  double scale = 1.0;

  static TransformerBlock Load(const Weights& w, const std::string& p, int64_t c, int64_t heads,
                               int64_t context_dim) {
    TransformerBlock b;
    constexpr double kLayerNormEps = 1e-5;  // BasicTransformerBlock's default in diffusers
    b.norm1 = LayerNorm::Load(w, p + ".norm1", c, kLayerNormEps);
    b.norm2 = LayerNorm::Load(w, p + ".norm2", c, kLayerNormEps);
    b.norm3 = LayerNorm::Load(w, p + ".norm3", c, kLayerNormEps);
    b.self_qkv =
        at::cat({w.Get(p + ".attn1.to_q.weight", {c, c}), w.Get(p + ".attn1.to_k.weight", {c, c}),
                 w.Get(p + ".attn1.to_v.weight", {c, c})});
    b.self_out = Linear::Load(w, p + ".attn1.to_out.0", c, c, true);
    b.cross_q = Linear::Load(w, p + ".attn2.to_q", c, c, false);
    b.cross_kv = at::cat({w.Get(p + ".attn2.to_k.weight", {c, context_dim}),
                          w.Get(p + ".attn2.to_v.weight", {c, context_dim})});
    b.cross_out = Linear::Load(w, p + ".attn2.to_out.0", c, c, true);
    b.ff_in = Linear::Load(w, p + ".ff.net.0.proj", c, 8 * c, true);
    b.ff_out = Linear::Load(w, p + ".ff.net.2", 4 * c, c, true);
    b.heads = heads;
    b.scale = 1.0 / std::sqrt(static_cast<double>(c / heads));
    return b;
  }

  // Updates the residual stream x [B, N, C] (contiguous, owned by the caller) in place.
  void Forward(at::Tensor& x, const at::Tensor& context, int64_t slice) const {
    const int64_t c = x.size(2);
    {
      const at::Tensor qkv = ParallelLinear(norm1.Forward(x), self_qkv, {});
      self_out.AddTo(MultiHeadAttention(qkv.narrow(2, 0, c), qkv.narrow(2, c, c),
                                        qkv.narrow(2, 2 * c, c), heads, scale, slice),
                     x);
    }
    {
      const at::Tensor q = cross_q.Forward(norm2.Forward(x));
      const at::Tensor kv = ParallelLinear(context, cross_kv, {});
      cross_out.AddTo(
          MultiHeadAttention(q, kv.narrow(2, 0, c), kv.narrow(2, c, c), heads, scale, slice), x);
    }
    // The feed-forward is row-wise: running it on row blocks keeps its 8C-wide intermediate
    // small enough to be reused from the heap and cache rather than freshly page-faulted.
    const at::Tensor rows = x.view({-1, c});
    for (int64_t r0 = 0; r0 < rows.size(0); r0 += kFeedForwardRows) {
      at::Tensor part = rows.narrow(0, r0, std::min(kFeedForwardRows, rows.size(0) - r0));
      const at::Tensor proj = ff_in.Forward(norm3.Forward(part));
      const int64_t f = proj.size(1) / 2;
      at::Tensor gated = at::gelu(proj.narrow(1, f, f));
      gated.mul_(proj.narrow(1, 0, f));
      ff_out.AddTo(gated, part);
    }
  }
};

// diffusers' Transformer2DModel (continuous input): GroupNorm, projection to tokens, transformer
// blocks, projection back, plus the input.
struct Transformer2D {
  GroupNorm norm;
  Linear proj_in, proj_out;
  std::vector<TransformerBlock> blocks;

  static Transformer2D Load(const Weights& w, const std::string& p, int64_t c, int64_t heads,
                            int64_t layers, const UNetConfig& cfg) {
    Transformer2D t;
    constexpr double kGroupNormEps = 1e-6;  // fixed in diffusers' Transformer2DModel
    t.norm = GroupNorm::Load(w, p + ".norm", c, cfg.norm_num_groups, kGroupNormEps);
    for (Linear* proj : {&t.proj_in, &t.proj_out}) {
      const std::string name = p + (proj == &t.proj_in ? ".proj_in" : ".proj_out");
      if (cfg.use_linear_projection) {
        *proj = Linear::Load(w, name, c, c, true);
      } else {
        // A 1x1 convolution over [B, C, H, W] is a dense layer over the tokens [B, HW, C].
        proj->weight = w.Get(name + ".weight", {c, c, 1, 1}).view({c, c});
        proj->bias = w.Get(name + ".bias", {c});
      }
    }
    for (int64_t i = 0; i < layers; ++i) {
      t.blocks.push_back(TransformerBlock::Load(w, fmt::format("{}.transformer_blocks.{}", p, i), c,
                                                heads, cfg.cross_attention_dim));
    }
    return t;
  }

  at::Tensor Forward(const at::Tensor& x, const at::Tensor& context, int64_t slice) const {
    const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    // In channels-last layout the permute is already contiguous and reshape is a view.
    const at::Tensor tokens = norm.Forward(x, false).permute({0, 2, 3, 1}).reshape({b, h * w, c});
    at::Tensor stream = proj_in.Forward(tokens);
    for (const TransformerBlock& block : blocks) block.Forward(stream, context, slice);
    if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      at::Tensor out = x.permute({0, 2, 3, 1}).reshape({b * h * w, c}).clone();
      proj_out.AddTo(stream, out);
      return out.view({b, h, w, c}).permute({0, 3, 1, 2});
    }
    const at::Tensor projected = proj_out.Forward(stream).view({b, h, w, c}).permute({0, 3, 1, 2});
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    at::add_out(out, x, projected);
    return out;
  }
};

struct DownBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;  // empty for DownBlock2D
  std::optional<Conv2d> downsampler;
};

struct UpBlock {
  std::vector<ResnetBlock2D> resnets;
  std::vector<Transformer2D> attentions;  // empty for UpBlock2D
  std::optional<Conv2d> upsampler;
};

}  // namespace

// ---- UNetConfig ----------------------------------------------------------------------------

UNetConfig UNetConfig::FromJson(const std::string& text, const std::string& source) {
  const rapidjson::Document doc = ParseConfigObject(text, source);
  const ConfigReader r(doc, source);
  const std::string cls = r.String("_class_name", "UNet2DConditionModel");
  Check(cls == "UNet2DConditionModel", source,
        fmt::format("_class_name '{}' is not UNet2DConditionModel", cls));

  UNetConfig c;
  c.in_channels = r.Int("in_channels", c.in_channels);
  c.out_channels = r.Int("out_channels", c.out_channels);
  c.sample_size = r.Int("sample_size", c.sample_size);
  c.block_out_channels = r.IntList("block_out_channels", c.block_out_channels);
  const size_t n = c.block_out_channels.size();
  c.down_block_types = r.StringList("down_block_types", c.down_block_types);
  c.up_block_types = r.StringList("up_block_types", c.up_block_types);
  Check(c.down_block_types.size() == n && c.up_block_types.size() == n, source,
        fmt::format("down_block_types ({}) and up_block_types ({}) must have one entry per "
                    "block_out_channels ({})",
                    c.down_block_types.size(), c.up_block_types.size(), n));
  for (const std::string& t : c.down_block_types) {
    Check(t == "CrossAttnDownBlock2D" || t == "DownBlock2D", source,
          fmt::format("down block type '{}' is not supported (supported: CrossAttnDownBlock2D, "
                      "DownBlock2D)",
                      t));
  }
  for (const std::string& t : c.up_block_types) {
    Check(t == "CrossAttnUpBlock2D" || t == "UpBlock2D", source,
          fmt::format("up block type '{}' is not supported (supported: CrossAttnUpBlock2D, "
                      "UpBlock2D)",
                      t));
  }
  const std::string mid = r.String("mid_block_type", "UNetMidBlock2DCrossAttn");
  Check(mid == "UNetMidBlock2DCrossAttn", source,
        fmt::format("mid block type '{}' is not supported (supported: UNetMidBlock2DCrossAttn)",
                    mid));
  c.layers_per_block = r.IntPerBlock("layers_per_block", 2, n);
  const rapidjson::Value* cross = r.Find("cross_attention_dim");
  if (cross != nullptr && cross->IsArray()) r.Fail("cross_attention_dim", "must be one integer");
  c.cross_attention_dim = r.Int("cross_attention_dim", c.cross_attention_dim);
  // diffusers refuses num_attention_heads for this model and reads attention_head_dim as the
  // number of heads; do the same.
  r.RequireNull("num_attention_heads");
  c.attention_heads = r.IntPerBlock("attention_head_dim", 8, n);
  const rapidjson::Value* tl = r.Find("transformer_layers_per_block");
  if (tl != nullptr && tl->IsArray()) {
    for (const auto& e : tl->GetArray()) {
      if (e.IsArray()) r.Fail("transformer_layers_per_block", "nested lists are not supported");
    }
  }
  c.transformer_layers_per_block = r.IntPerBlock("transformer_layers_per_block", 1, n);
  c.use_linear_projection = r.Bool("use_linear_projection", c.use_linear_projection);
  c.upcast_attention = r.Bool("upcast_attention", c.upcast_attention);
  c.flip_sin_to_cos = r.Bool("flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = r.Double("freq_shift", c.freq_shift);
  c.center_input_sample = r.Bool("center_input_sample", c.center_input_sample);
  c.norm_num_groups = r.Int("norm_num_groups", c.norm_num_groups);
  c.norm_eps = r.Double("norm_eps", c.norm_eps);
  c.downsample_padding = r.Int("downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = r.Double("mid_block_scale_factor", c.mid_block_scale_factor);
  c.conv_in_kernel = r.Int("conv_in_kernel", c.conv_in_kernel);
  c.conv_out_kernel = r.Int("conv_out_kernel", c.conv_out_kernel);
  c.time_embedding_dim = r.Int("time_embedding_dim", 0);

  r.RequireString("act_fn", {"silu", "swish"});
  r.RequireString("time_embedding_type", {"positional"});
  r.RequireString("resnet_time_scale_shift", {"default"});
  r.RequireString("attention_type", {"default"});
  for (const char* key :
       {"class_embed_type", "addition_embed_type", "num_class_embeds", "encoder_hid_dim",
        "encoder_hid_dim_type", "time_cond_proj_dim", "timestep_post_act", "time_embedding_act_fn",
        "projection_class_embeddings_input_dim", "addition_time_embed_dim",
        "reverse_transformer_layers_per_block", "cross_attention_norm"}) {
    r.RequireNull(key);
  }
  for (const char* key : {"only_cross_attention", "dual_cross_attention", "class_embeddings_concat",
                          "mid_block_only_cross_attention", "resnet_skip_time_act"}) {
    r.RequireFalse(key);
  }
  Check(r.Double("resnet_out_scale_factor", 1.0) == 1.0, source,
        "resnet_out_scale_factor other than 1 is not supported");

  Check(c.in_channels > 0 && c.out_channels > 0 && c.cross_attention_dim > 0, source,
        "in_channels, out_channels and cross_attention_dim must be positive");
  Check(c.conv_in_kernel > 0 && c.conv_in_kernel % 2 == 1 && c.conv_out_kernel > 0 &&
            c.conv_out_kernel % 2 == 1,
        source, "conv_in_kernel and conv_out_kernel must be odd");
  Check(c.norm_num_groups > 0, source, "norm_num_groups must be positive");
  for (size_t i = 0; i < n; ++i) {
    const int64_t ch = c.block_out_channels[i];
    Check(ch > 0 && ch % c.norm_num_groups == 0, source,
          fmt::format("block_out_channels[{}] = {} is not a multiple of norm_num_groups {}", i, ch,
                      c.norm_num_groups));
    Check(c.layers_per_block[i] > 0 && c.transformer_layers_per_block[i] > 0, source,
          "layers_per_block and transformer_layers_per_block must be positive");
    Check(c.attention_heads[i] > 0, source, "attention_head_dim entries must be positive");
  }
  // Channels of every spatial transformer must split evenly into its heads.
  for (size_t i = 0; i < n; ++i) {
    const bool used = c.down_block_types[i] == "CrossAttnDownBlock2D" ||
                      c.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D" || i == n - 1;
    Check(!used || c.block_out_channels[i] % c.attention_heads[i] == 0, source,
          fmt::format("block_out_channels[{}] = {} does not split into {} attention heads", i,
                      c.block_out_channels[i], c.attention_heads[i]));
  }
  Check(c.time_embedding_dim >= 0, source, "time_embedding_dim must be positive");
  return c;
}

UNetConfig UNetConfig::FromFile(const std::filesystem::path& path) {
  return FromJson(ReadConfigFile(path), path.string());
}

// ---- UNet ----------------------------------------------------------------------------------

struct UNet::Net {
  Conv2d conv_in;
  Linear time_linear_1, time_linear_2;
  std::vector<DownBlock> down;
  ResnetBlock2D mid_resnet_0, mid_resnet_1;
  Transformer2D mid_attention;
  std::vector<UpBlock> up;
  GroupNorm norm_out;
  Conv2d conv_out;
  std::size_t bytes = 0;
};

namespace {

std::size_t TensorBytes(const at::Tensor& t) {
  return t.defined() ? t.numel() * t.element_size() : 0;
}

}  // namespace

UNet::UNet(UNetConfig config, const Weights& w, const ComputeOptions& options)
    : config_(std::move(config)), options_(options), net_(std::make_unique<Net>()) {
  const UNetConfig& c = config_;
  Net& net = *net_;
  const std::vector<int64_t>& boc = c.block_out_channels;
  const size_t n = boc.size();
  const int64_t groups = c.norm_num_groups;
  const int64_t temb = c.time_embedding_dim > 0 ? c.time_embedding_dim : 4 * boc[0];
  auto resnet = [&](const std::string& prefix, int64_t in, int64_t out, double scale = 1.0) {
    return ResnetBlock2D::Load(w, prefix, in, out, temb, groups, c.norm_eps, scale, options);
  };

  net.conv_in = Conv2d::Load(w, "conv_in", c.in_channels, boc[0], c.conv_in_kernel, 1,
                             (c.conv_in_kernel - 1) / 2, options);
  net.time_linear_1 = Linear::Load(w, "time_embedding.linear_1", boc[0], temb, true);
  net.time_linear_2 = Linear::Load(w, "time_embedding.linear_2", temb, temb, true);

  int64_t out_ch = boc[0];
  for (size_t i = 0; i < n; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = boc[i];
    const std::string p = fmt::format("down_blocks.{}", i);
    DownBlock& block = net.down.emplace_back();
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      block.resnets.push_back(
          resnet(fmt::format("{}.resnets.{}", p, j), j == 0 ? in_ch : out_ch, out_ch));
      if (c.down_block_types[i] == "CrossAttnDownBlock2D") {
        block.attentions.push_back(Transformer2D::Load(w, fmt::format("{}.attentions.{}", p, j),
                                                       out_ch, c.attention_heads[i],
                                                       c.transformer_layers_per_block[i], c));
      }
    }
    if (i + 1 < n) {
      block.downsampler = Conv2d::Load(w, p + ".downsamplers.0.conv", out_ch, out_ch, 3, 2,
                                       c.downsample_padding, options);
    }
  }

  net.mid_resnet_0 =
      resnet("mid_block.resnets.0", boc[n - 1], boc[n - 1], c.mid_block_scale_factor);
  net.mid_attention =
      Transformer2D::Load(w, "mid_block.attentions.0", boc[n - 1], c.attention_heads[n - 1],
                          c.transformer_layers_per_block[n - 1], c);
  net.mid_resnet_1 =
      resnet("mid_block.resnets.1", boc[n - 1], boc[n - 1], c.mid_block_scale_factor);

  out_ch = boc[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const size_t r = n - 1 - i;  // the down block this up block mirrors
    const int64_t prev_ch = out_ch;
    out_ch = boc[r];
    const int64_t skip_in_ch = boc[r == 0 ? 0 : r - 1];
    const int64_t layers = c.layers_per_block[r] + 1;
    const std::string p = fmt::format("up_blocks.{}", i);
    UpBlock& block = net.up.emplace_back();
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip_ch = j == layers - 1 ? skip_in_ch : out_ch;
      const int64_t in_ch = j == 0 ? prev_ch : out_ch;
      block.resnets.push_back(resnet(fmt::format("{}.resnets.{}", p, j), in_ch + skip_ch, out_ch));
      if (c.up_block_types[i] == "CrossAttnUpBlock2D") {
        block.attentions.push_back(Transformer2D::Load(w, fmt::format("{}.attentions.{}", p, j),
                                                       out_ch, c.attention_heads[r],
                                                       c.transformer_layers_per_block[r], c));
      }
    }
    if (i + 1 < n) {
      block.upsampler = Conv2d::Load(w, p + ".upsamplers.0.conv", out_ch, out_ch, 3, 1, 1, options);
    }
  }

  net.norm_out = GroupNorm::Load(w, "conv_norm_out", boc[0], groups, c.norm_eps);
  net.conv_out = Conv2d::Load(w, "conv_out", boc[0], c.out_channels, c.conv_out_kernel, 1,
                              (c.conv_out_kernel - 1) / 2, options);

  // Count each storage once: fused projections are new tensors, the rest share the file's.
  std::size_t total = 0;
  for (const std::string& name : w.Names()) {
    const bool fused = name.find(".attn1.to_q.") != std::string::npos ||
                       name.find(".attn1.to_k.") != std::string::npos ||
                       name.find(".attn1.to_v.") != std::string::npos ||
                       name.find(".attn2.to_k.") != std::string::npos ||
                       name.find(".attn2.to_v.") != std::string::npos;
    if (!fused) total += TensorBytes(w.Get(name));
  }
  auto add_blocks = [&](const std::vector<Transformer2D>& ts) {
    for (const Transformer2D& t : ts) {
      for (const TransformerBlock& b : t.blocks) {
        total += TensorBytes(b.self_qkv) + TensorBytes(b.cross_kv);
      }
    }
  };
  for (const DownBlock& b : net.down) add_blocks(b.attentions);
  for (const UpBlock& b : net.up) add_blocks(b.attentions);
  add_blocks({net.mid_attention});
  net.bytes = total;
}

UNet::~UNet() = default;

std::unique_ptr<UNet> UNet::Load(const std::filesystem::path& dir, const ComputeOptions& options) {
  UNetConfig config = UNetConfig::FromFile(dir / "config.json");
  std::filesystem::path file = dir / "diffusion_pytorch_model.safetensors";
  if (!std::filesystem::exists(file)) {
    const std::filesystem::path fp16 = dir / "diffusion_pytorch_model.fp16.safetensors";
    if (!std::filesystem::exists(fp16)) {
      throw WeightError(
          fmt::format("no diffusion_pytorch_model.safetensors or "
                      "diffusion_pytorch_model.fp16.safetensors in {}",
                      dir.string()));
    }
    file = fp16;
  }
  const Weights weights = Weights::FromFile(file.string(), options);
  return std::make_unique<UNet>(std::move(config), weights, options);
}

std::size_t UNet::bytes() const { return net_->bytes; }

at::Tensor UNet::Forward(const at::Tensor& sample, const at::Tensor& timesteps,
                         const at::Tensor& encoder_hidden_states) const {
  const UNetConfig& c = config_;
  const Net& net = *net_;
  if (sample.dim() != 4 || sample.size(1) != c.in_channels || sample.size(0) == 0) {
    throw std::invalid_argument(fmt::format("UNet: sample must be [B, {}, H, W], got [{}]",
                                            c.in_channels, fmt::join(sample.sizes(), ", ")));
  }
  const int64_t batch = sample.size(0);
  at::Tensor t = timesteps.to(options_.device, at::kFloat).reshape({-1});
  if (t.size(0) == 1) t = t.expand({batch});
  if (t.size(0) != batch) {
    throw std::invalid_argument(
        fmt::format("UNet: {} timesteps for a batch of {}", t.size(0), batch));
  }
  if (encoder_hidden_states.dim() != 3 || encoder_hidden_states.size(0) != batch ||
      encoder_hidden_states.size(2) != c.cross_attention_dim) {
    throw std::invalid_argument(
        fmt::format("UNet: encoder_hidden_states must be [{}, T, {}], got [{}]", batch,
                    c.cross_attention_dim, fmt::join(encoder_hidden_states.sizes(), ", ")));
  }
  const at::ScalarType dtype = options_.dtype;
  const at::Tensor context = encoder_hidden_states.to(options_.device, dtype).contiguous();
  const int64_t slice = options_.attention_slice;

  // Sinusoidal timestep features in fp32 (as diffusers computes them), then the MLP.
  const int64_t dim = c.block_out_channels[0], half = dim / 2;
  const at::Tensor freqs =
      at::exp(at::arange(half, t.options().dtype(at::kFloat)) *
              static_cast<float>(-std::log(10000.0)) / static_cast<float>(half - c.freq_shift));
  const at::Tensor args = t.unsqueeze(1) * freqs.unsqueeze(0);
  at::Tensor features = c.flip_sin_to_cos ? at::cat({at::cos(args), at::sin(args)}, 1)
                                          : at::cat({at::sin(args), at::cos(args)}, 1);
  if (dim % 2 == 1) features = at::constant_pad_nd(features, {0, 1});
  at::Tensor temb = net.time_linear_1.Forward(features.to(dtype));
  at::silu_(temb);
  temb = net.time_linear_2.Forward(temb);
  at::silu_(temb);  // every ResNet block projects silu(temb)

  at::Tensor x = sample.to(options_.device, dtype);
  if (c.center_input_sample) x = x * 2 - 1;
  x = net.conv_in.Forward(x);

  std::vector<at::Tensor> skips{x};
  for (const DownBlock& block : net.down) {
    for (size_t j = 0; j < block.resnets.size(); ++j) {
      x = block.resnets[j].Forward(x, temb);
      if (!block.attentions.empty()) x = block.attentions[j].Forward(x, context, slice);
      skips.push_back(x);
    }
    if (block.downsampler) {
      x = block.downsampler->Forward(x);
      skips.push_back(x);
    }
  }

  x = net.mid_resnet_0.Forward(x, temb);
  x = net.mid_attention.Forward(x, context, slice);
  x = net.mid_resnet_1.Forward(x, temb);

  for (const UpBlock& block : net.up) {
    for (size_t j = 0; j < block.resnets.size(); ++j) {
      x = block.resnets[j].Forward(at::cat({x, skips.back()}, 1), temb);
      skips.pop_back();
      if (!block.attentions.empty()) x = block.attentions[j].Forward(x, context, slice);
    }
    if (block.upsampler) {
      // Nearest up-sampling to the size of the next skip connection: x2 for even sizes, and
      // what diffusers' forward_upsample_size does for sizes that are not.
      const at::Tensor& next = skips.back();
      x = at::upsample_nearest2d(x, {next.size(2), next.size(3)});
      x = block.upsampler->Forward(x);
    }
  }

  x = net.conv_out.Forward(net.norm_out.Forward(x, /*silu=*/true));
  return x.contiguous();
}

}  // namespace megaserve::diffusion
