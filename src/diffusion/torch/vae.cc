// AutoencoderKL forward passes (Rombach et al. 2022, the KL-regularised autoencoder of "High-
// Resolution Image Synthesis with Latent Diffusion Models"; layout of diffusers' AutoencoderKL):
//
//   ResNet(x)     = skip(x) + conv2(silu(GN2(conv1(silu(GN1(x))))))   skip: 1x1 conv or identity
//   Attention(x)  = x + out(softmax(q k^T / sqrt(C)) v),  q, k, v = linear(GN(x)) per pixel,
//                   one head spanning all C channels
//   Mid(x)        = ResNet(Attention(ResNet(x)))
//   encoder       = conv_in, levels of ResNets each followed (but the last) by a stride-2 3x3
//                   conv over the input zero-padded by one row/column at the bottom/right only,
//                   Mid, GN, silu, conv_out to 2 * latent channels; then quant_conv (1x1).
//   decoder       = post_quant_conv (1x1), conv_in, Mid, levels (widest first) of
//                   layers_per_block + 1 ResNets each followed (but the last) by nearest 2x
//                   upsampling and a 3x3 conv, GN, silu, conv_out.
// Every GroupNorm uses eps 1e-6.
//
// Memory: activations are passed by value and moved through the layers, so each layer's input
// is freed as soon as its output exists; SiLU and residual additions happen in place.
//
// Tiled decoding cross-fades overlapping tiles, the idea of diffusers' tiled_decode, but with
// weights that form a partition of unity: along each axis tile i gets the weight
//   w_i(p) = min(1, (p + 1/2) / L_prev, (n - p - 1/2) / L_next)
// at pixel p of its n pixels, where L_prev / L_next are its overlaps (in pixels) with the
// previous / next tile (ramps absent at the image border). Two tiles overlapping over L pixels
// then get weights (k + 1/2) / L and 1 - (k + 1/2) / L, which add to one; the weights are still
// divided by their sum per pixel so that three tiles overlapping (large overlaps) stay exact.
// A tile's 2-D weight is the product of its row and column weights, so the 2-D weights also add
// to one and each tile's weighted image is added straight into the output.
#include "diffusion/torch/vae.h"

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <utility>

#include "diffusion/config_json.h"
#include "diffusion/torch/attention.h"
#include "diffusion/torch/parallel.h"

namespace megaserve::diffusion {
namespace {

constexpr double kGroupNormEps = 1e-6;

// ------------------------------------------------------------------------------------- config

const rapidjson::Value* Field(const rapidjson::Value& root, const char* name) {
  auto it = root.FindMember(name);
  if (it == root.MemberEnd() || it->value.IsNull()) return nullptr;
  return &it->value;
}

void ReadInt(const rapidjson::Value& root, const char* name, const std::string& source,
             int64_t* out) {
  const rapidjson::Value* v = Field(root, name);
  if (v == nullptr) return;
  if (!v->IsInt64()) {
    throw std::invalid_argument(fmt::format("{}: field '{}' must be an integer", source, name));
  }
  *out = v->GetInt64();
}

void ReadBool(const rapidjson::Value& root, const char* name, const std::string& source,
              bool* out) {
  const rapidjson::Value* v = Field(root, name);
  if (v == nullptr) return;
  if (!v->IsBool()) {
    throw std::invalid_argument(fmt::format("{}: field '{}' must be true or false", source, name));
  }
  *out = v->GetBool();
}

void ReadString(const rapidjson::Value& root, const char* name, const std::string& source,
                std::string* out) {
  const rapidjson::Value* v = Field(root, name);
  if (v == nullptr) return;
  if (!v->IsString()) {
    throw std::invalid_argument(fmt::format("{}: field '{}' must be a string", source, name));
  }
  *out = v->GetString();
}

void ReadIntList(const rapidjson::Value& root, const char* name, const std::string& source,
                 std::vector<int64_t>* out) {
  const rapidjson::Value* v = Field(root, name);
  if (v == nullptr) return;
  if (!v->IsArray()) {
    throw std::invalid_argument(
        fmt::format("{}: field '{}' must be a list of integers", source, name));
  }
  out->clear();
  for (const rapidjson::Value& e : v->GetArray()) {
    if (!e.IsInt64()) {
      throw std::invalid_argument(
          fmt::format("{}: field '{}' must be a list of integers", source, name));
    }
    out->push_back(e.GetInt64());
  }
}

void ReadStringList(const rapidjson::Value& root, const char* name, const std::string& source,
                    std::vector<std::string>* out) {
  const rapidjson::Value* v = Field(root, name);
  if (v == nullptr) return;
  if (!v->IsArray()) {
    throw std::invalid_argument(
        fmt::format("{}: field '{}' must be a list of strings", source, name));
  }
  out->clear();
  for (const rapidjson::Value& e : v->GetArray()) {
    if (!e.IsString()) {
      throw std::invalid_argument(
          fmt::format("{}: field '{}' must be a list of strings", source, name));
    }
    out->push_back(e.GetString());
  }
}

// ------------------------------------------------------------------------------------- layers

// Reads weights by name, in the compute dtype (and channels-last for convolution kernels when
// asked), and counts their bytes.
class Loader {
 public:
  Loader(const Weights& weights, const ComputeOptions& options)
      : weights_(weights), options_(options) {}

  at::Tensor Get(const std::string& name, at::IntArrayRef shape) { return Keep(Peek(name, shape)); }
  // Get without counting the bytes, for a tensor that will only be used to build another.
  at::Tensor Peek(const std::string& name, at::IntArrayRef shape) const {
    return weights_.Get(name, shape).to(options_.dtype);
  }
  // A convolution kernel [out, in, k, k].
  at::Tensor Kernel(const std::string& name, at::IntArrayRef shape) {
    at::Tensor t = weights_.Get(name, shape).to(options_.dtype);
    if (options_.channels_last) t = t.contiguous(at::MemoryFormat::ChannelsLast);
    return Keep(std::move(t));
  }
  bool Has(const std::string& name) const { return weights_.Has(name); }
  // A projection stored either as a linear weight [c, c] or as a 1x1 convolution [c, c, 1, 1].
  at::Tensor Projection(const std::string& name, int64_t c) const {
    const at::Tensor& raw = weights_.Get(name);
    const at::Tensor& t =
        raw.dim() == 4 ? weights_.Get(name, {c, c, 1, 1}) : weights_.Get(name, {c, c});
    return t.reshape({c, c}).to(options_.dtype);
  }
  at::Tensor Keep(at::Tensor t) {
    bytes_ += t.numel() * t.element_size();
    return t;
  }
  std::size_t bytes() const { return bytes_; }
  const ComputeOptions& options() const { return options_; }

 private:
  const Weights& weights_;
  const ComputeOptions& options_;
  std::size_t bytes_ = 0;
};

struct Conv {
  at::Tensor weight, bias;
  int64_t stride = 1;
  int64_t padding = 0;

  static Conv Load(Loader& l, const std::string& name, int64_t in, int64_t out, int64_t k,
                   int64_t stride = 1) {
    return Conv{l.Kernel(name + ".weight", {out, in, k, k}), l.Get(name + ".bias", {out}), stride,
                stride == 1 ? k / 2 : 0};
  }
  at::Tensor operator()(const at::Tensor& x) const {
    return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
  }
};

struct Norm {  // GroupNorm with the VAE's eps
  at::Tensor weight, bias;
  int64_t groups = 1;

  static Norm Load(Loader& l, const std::string& name, int64_t channels, int64_t groups) {
    return Norm{l.Get(name + ".weight", {channels}), l.Get(name + ".bias", {channels}), groups};
  }
  at::Tensor operator()(const at::Tensor& x) const {
    return at::group_norm(x, groups, weight, bias, kGroupNormEps, /*cudnn_enabled=*/false);
  }
  // silu(GroupNorm(x)), the pre-activation every convolution of the VAE but the first sees.
  at::Tensor Activated(const at::Tensor& x) const {
    at::Tensor y = (*this)(x);
    at::silu_(y);
    return y;
  }
};

struct Resnet {
  Norm norm1, norm2;
  Conv conv1, conv2;
  std::optional<Conv> shortcut;

  static Resnet Load(Loader& l, const std::string& name, int64_t in, int64_t out, int64_t groups) {
    Resnet r{Norm::Load(l, name + ".norm1", in, groups),
             Norm::Load(l, name + ".norm2", out, groups),
             Conv::Load(l, name + ".conv1", in, out, 3),
             Conv::Load(l, name + ".conv2", out, out, 3), std::nullopt};
    if (in != out) r.shortcut = Conv::Load(l, name + ".conv_shortcut", in, out, 1);
    return r;
  }
  // Consumes x: it is freed (or reused) when the block returns.
  at::Tensor operator()(at::Tensor x) const {
    at::Tensor h = conv1(norm1.Activated(x));
    h = conv2(norm2.Activated(h));
    if (shortcut) return h.add_((*shortcut)(x));
    return h.add_(x);
  }
};

struct Attention {
  Norm norm;
  at::Tensor qkv_weight, qkv_bias;  // [3C, C], [3C]: to_q (pre-scaled by 1/sqrt(C)), to_k, to_v
  at::Tensor out_weight, out_bias;  // [C, C], [C]
  int64_t slice = 0;

  static Attention Load(Loader& l, const std::string& name, int64_t c, int64_t groups) {
    // Checkpoints published before diffusers 0.14 name the projections query/key/value/proj_attn.
    const bool old = !l.Has(name + ".to_q.weight") && l.Has(name + ".query.weight");
    const std::string q = name + (old ? ".query" : ".to_q");
    const std::string k = name + (old ? ".key" : ".to_k");
    const std::string v = name + (old ? ".value" : ".to_v");
    const std::string o = name + (old ? ".proj_attn" : ".to_out.0");
    // Folding the softmax scale into the query projection saves a pass over the scores.
    const double scale = 1.0 / std::sqrt(static_cast<double>(c));
    Attention a;
    a.norm = Norm::Load(l, name + ".group_norm", c, groups);
    a.qkv_weight =
        l.Keep(at::cat({l.Projection(q + ".weight", c) * scale, l.Projection(k + ".weight", c),
                        l.Projection(v + ".weight", c)}));
    a.qkv_bias = l.Keep(at::cat(
        {l.Peek(q + ".bias", {c}) * scale, l.Peek(k + ".bias", {c}), l.Peek(v + ".bias", {c})}));
    a.out_weight = l.Keep(l.Projection(o + ".weight", c).contiguous());
    a.out_bias = l.Get(o + ".bias", {c});
    a.slice = l.options().attention_slice;
    return a;
  }

  // Consumes x and returns it with the attention output added.
  at::Tensor operator()(at::Tensor x) const {
    const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    // Pixels as tokens: [B, H*W, C] (a free view when x is channels-last).
    at::Tensor qkv =
        ParallelLinear(norm(x).permute({0, 2, 3, 1}).reshape({b, h * w, c}), qkv_weight, qkv_bias);
    // One head over all channels; the scale is already in the query projection.
    at::Tensor o = MultiHeadAttention(qkv.narrow(2, 0, c), qkv.narrow(2, c, c),
                                      qkv.narrow(2, 2 * c, c), /*heads=*/1, /*scale=*/1.0, slice);
    qkv.reset();
    o = ParallelLinear(o, out_weight, out_bias);
    return x.add_(o.view({b, h, w, c}).permute({0, 3, 1, 2}));
  }
};

struct MidBlock {
  Resnet first, second;
  std::optional<Attention> attention;

  static MidBlock Load(Loader& l, const std::string& name, int64_t c, int64_t groups,
                       bool with_attention) {
    MidBlock m{Resnet::Load(l, name + ".resnets.0", c, c, groups),
               Resnet::Load(l, name + ".resnets.1", c, c, groups), std::nullopt};
    if (with_attention) m.attention = Attention::Load(l, name + ".attentions.0", c, groups);
    return m;
  }
  at::Tensor operator()(at::Tensor x) const {
    x = first(std::move(x));
    if (attention) x = (*attention)(std::move(x));
    return second(std::move(x));
  }
};

// One resolution level: ResNets, then an optional change of resolution.
struct Level {
  std::vector<Resnet> resnets;
  std::optional<Conv> resample;  // encoder: stride-2 conv; decoder: conv after 2x upsampling
};

// Encoder downsampling: pad one zero row/column at the bottom/right, then the stride-2 conv.
at::Tensor Downsample(const Conv& conv, at::Tensor x) {
  at::Tensor padded = at::constant_pad_nd(x, {0, 1, 0, 1}, 0);
  x.reset();
  return conv(padded);
}

at::Tensor Upsample(const Conv& conv, at::Tensor x) {
  at::Tensor up = at::upsample_nearest2d(x, {2 * x.size(2), 2 * x.size(3)});
  x.reset();
  return conv(up);
}

// GroupNorm, silu, conv: the output head of the encoder and the decoder.
at::Tensor Head(const Norm& norm, const Conv& conv, at::Tensor x) {
  at::Tensor a = norm.Activated(x);
  x.reset();
  return conv(a);
}

// Throws std::invalid_argument unless t is a non-empty [B, channels, H, W].
void CheckShape(const at::Tensor& t, int64_t channels, const char* what) {
  if (t.dim() != 4 || t.size(1) != channels) {
    throw std::invalid_argument(fmt::format("VAE: {} must be [batch, {}, height, width], got [{}]",
                                            what, channels, fmt::join(t.sizes(), ", ")));
  }
  if (t.numel() == 0) throw std::invalid_argument(fmt::format("VAE: {} is empty", what));
}

// Tiles covering `size` latent pixels along one axis: the fewest tiles of at most `max_tile`
// pixels sharing at least `overlap` pixels with each neighbour, shrunk to the smallest equal size
// that still covers `size` (less work than diffusers' fixed tiles, and no thin last tile whose
// GroupNorm statistics would stray), with starts spread evenly.
struct TileLayout {
  int64_t tile = 0;
  std::vector<int64_t> starts;
};

TileLayout Layout(int64_t size, int64_t max_tile, int64_t overlap) {
  if (size <= max_tile) return {size, {0}};
  const int64_t stride = max_tile - overlap;
  const int64_t n = 1 + (size - max_tile + stride - 1) / stride;
  TileLayout layout;
  layout.tile = (size + (n - 1) * overlap + n - 1) / n;  // n tiles, n - 1 overlaps
  for (int64_t i = 0; i < n; ++i) {
    layout.starts.push_back((i * (size - layout.tile) + (n - 1) / 2) / (n - 1));
  }
  return layout;
}

// Blend weights along one axis: for each tile, a float vector over its `tile * scale` output
// pixels, the linear ramps of the file comment normalised to add to one at every pixel.
std::vector<at::Tensor> BlendWeights(const std::vector<int64_t>& starts, int64_t tile, int64_t size,
                                     int64_t scale) {
  const int64_t n = tile * scale;
  std::vector<at::Tensor> weights;
  at::Tensor total = at::zeros({size * scale}, at::kFloat);
  for (std::size_t i = 0; i < starts.size(); ++i) {
    at::Tensor w = at::ones({n}, at::kFloat);
    const at::Tensor p = at::arange(n, at::kFloat) + 0.5;
    if (i > 0) {
      const int64_t prev = (starts[i - 1] + tile - starts[i]) * scale;
      if (prev > 0) w = at::minimum(w, p / prev);
    }
    if (i + 1 < starts.size()) {
      const int64_t next = (starts[i] + tile - starts[i + 1]) * scale;
      if (next > 0) w = at::minimum(w, (n - p) / next);
    }
    total.narrow(0, starts[i] * scale, n).add_(w);
    weights.push_back(std::move(w));
  }
  for (std::size_t i = 0; i < starts.size(); ++i) {
    weights[i].div_(total.narrow(0, starts[i] * scale, n));
  }
  return weights;
}

}  // namespace

// ------------------------------------------------------------------------------------- config

VaeConfig VaeConfig::FromJson(std::string_view json, const std::string& source) {
  const rapidjson::Document doc = ParseConfigObject(json, source);
  std::string class_name;
  ReadString(doc, "_class_name", source, &class_name);
  if (!class_name.empty() && class_name != "AutoencoderKL") {
    throw std::invalid_argument(fmt::format(
        "{}: _class_name '{}' is not supported (only AutoencoderKL)", source, class_name));
  }
  VaeConfig c;
  ReadInt(doc, "in_channels", source, &c.in_channels);
  ReadInt(doc, "out_channels", source, &c.out_channels);
  ReadIntList(doc, "block_out_channels", source, &c.block_out_channels);
  ReadInt(doc, "layers_per_block", source, &c.layers_per_block);
  ReadInt(doc, "latent_channels", source, &c.latent_channels);
  ReadInt(doc, "norm_num_groups", source, &c.norm_num_groups);
  if (const rapidjson::Value* v = Field(doc, "sample_size"); v != nullptr && v->IsArray()) {
    std::vector<int64_t> sizes;
    ReadIntList(doc, "sample_size", source, &sizes);
    if (!sizes.empty()) c.sample_size = sizes[0];
  } else {
    ReadInt(doc, "sample_size", source, &c.sample_size);
  }
  if (const rapidjson::Value* v = Field(doc, "scaling_factor"); v != nullptr) {
    if (!v->IsNumber()) {
      throw std::invalid_argument(source + ": field 'scaling_factor' must be a number");
    }
    c.scaling_factor = v->GetDouble();
  }
  ReadStringList(doc, "down_block_types", source, &c.down_block_types);
  ReadStringList(doc, "up_block_types", source, &c.up_block_types);
  ReadString(doc, "act_fn", source, &c.act_fn);
  ReadBool(doc, "mid_block_add_attention", source, &c.mid_block_add_attention);
  ReadBool(doc, "use_quant_conv", source, &c.use_quant_conv);
  ReadBool(doc, "use_post_quant_conv", source, &c.use_post_quant_conv);
  c.Validate(source);
  return c;
}

VaeConfig VaeConfig::FromFile(const std::filesystem::path& path) {
  return FromJson(ReadConfigFile(path), path.string());
}

void VaeConfig::Validate(const std::string& source) const {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument(fmt::format("{}: {}", source, what));
  };
  if (block_out_channels.empty()) fail("'block_out_channels' is empty");
  if (block_out_channels.size() > 8) fail("'block_out_channels' has more than 8 levels");
  if (in_channels <= 0 || out_channels <= 0 || latent_channels <= 0) {
    fail("'in_channels', 'out_channels' and 'latent_channels' must be positive");
  }
  if (layers_per_block <= 0) fail("'layers_per_block' must be positive");
  if (norm_num_groups <= 0) fail("'norm_num_groups' must be positive");
  if (!(scaling_factor > 0)) fail("'scaling_factor' must be positive");
  for (int64_t c : block_out_channels) {
    if (c <= 0 || c % norm_num_groups != 0) {
      fail(
          fmt::format("block_out_channels entry {} is not a positive multiple of "
                      "norm_num_groups {}",
                      c, norm_num_groups));
    }
  }
  if (down_block_types.size() != block_out_channels.size() ||
      up_block_types.size() != block_out_channels.size()) {
    fail(
        fmt::format("'down_block_types' ({}) and 'up_block_types' ({}) need one entry per "
                    "'block_out_channels' entry ({})",
                    down_block_types.size(), up_block_types.size(), block_out_channels.size()));
  }
  for (const std::string& t : down_block_types) {
    if (t != "DownEncoderBlock2D") {
      fail(fmt::format("down block type '{}' is not supported (only DownEncoderBlock2D)", t));
    }
  }
  for (const std::string& t : up_block_types) {
    if (t != "UpDecoderBlock2D") {
      fail(fmt::format("up block type '{}' is not supported (only UpDecoderBlock2D)", t));
    }
  }
  // diffusers treats "swish" as another name of silu.
  if (act_fn != "silu" && act_fn != "swish") {
    fail(fmt::format("act_fn '{}' is not supported (only silu)", act_fn));
  }
}

// ------------------------------------------------------------------------------------- model

struct Vae::Layers {
  Conv encoder_in;
  std::vector<Level> down;
  MidBlock encoder_mid;
  Norm encoder_norm;
  Conv encoder_out;
  std::optional<Conv> quant;

  std::optional<Conv> post_quant;
  Conv decoder_in;
  MidBlock decoder_mid;
  std::vector<Level> up;
  Norm decoder_norm;
  Conv decoder_out;
};

Vae::~Vae() = default;

std::unique_ptr<Vae> Vae::Load(const std::filesystem::path& dir, const ComputeOptions& options) {
  VaeConfig config = VaeConfig::FromFile(dir / "config.json");
  std::filesystem::path file = dir / "diffusion_pytorch_model.safetensors";
  if (!std::filesystem::exists(file)) {
    const std::filesystem::path fp16 = dir / "diffusion_pytorch_model.fp16.safetensors";
    if (!std::filesystem::exists(fp16)) {
      throw WeightError(fmt::format("no VAE weights in {}: neither {} nor {} exists", dir.string(),
                                    file.filename().string(), fp16.filename().string()));
    }
    file = fp16;
  }
  return std::make_unique<Vae>(std::move(config), Weights::FromFile(file.string(), options),
                               options);
}

Vae::Vae(VaeConfig config, const Weights& weights, const ComputeOptions& options)
    : config_(std::move(config)), options_(options) {
  config_.Validate();
  Loader l(weights, options_);
  const VaeConfig& c = config_;
  const std::vector<int64_t>& ch = c.block_out_channels;
  const int64_t g = c.norm_num_groups;
  const int64_t levels = static_cast<int64_t>(ch.size());
  auto layers = std::make_unique<Layers>();

  layers->encoder_in = Conv::Load(l, "encoder.conv_in", c.in_channels, ch[0], 3);
  int64_t width = ch[0];
  for (int64_t i = 0; i < levels; ++i) {
    const std::string name = fmt::format("encoder.down_blocks.{}", i);
    Level level;
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      level.resnets.push_back(
          Resnet::Load(l, fmt::format("{}.resnets.{}", name, j), width, ch[i], g));
      width = ch[i];
    }
    if (i + 1 < levels) {
      level.resample = Conv::Load(l, name + ".downsamplers.0.conv", width, width, 3, 2);
    }
    layers->down.push_back(std::move(level));
  }
  layers->encoder_mid =
      MidBlock::Load(l, "encoder.mid_block", ch.back(), g, c.mid_block_add_attention);
  layers->encoder_norm = Norm::Load(l, "encoder.conv_norm_out", ch.back(), g);
  layers->encoder_out = Conv::Load(l, "encoder.conv_out", ch.back(), 2 * c.latent_channels, 3);
  if (c.use_quant_conv) {
    layers->quant = Conv::Load(l, "quant_conv", 2 * c.latent_channels, 2 * c.latent_channels, 1);
  }

  if (c.use_post_quant_conv) {
    layers->post_quant = Conv::Load(l, "post_quant_conv", c.latent_channels, c.latent_channels, 1);
  }
  layers->decoder_in = Conv::Load(l, "decoder.conv_in", c.latent_channels, ch.back(), 3);
  layers->decoder_mid =
      MidBlock::Load(l, "decoder.mid_block", ch.back(), g, c.mid_block_add_attention);
  width = ch.back();
  for (int64_t i = 0; i < levels; ++i) {
    const std::string name = fmt::format("decoder.up_blocks.{}", i);
    const int64_t out = ch[levels - 1 - i];
    Level level;
    for (int64_t j = 0; j <= c.layers_per_block; ++j) {
      level.resnets.push_back(
          Resnet::Load(l, fmt::format("{}.resnets.{}", name, j), width, out, g));
      width = out;
    }
    if (i + 1 < levels) level.resample = Conv::Load(l, name + ".upsamplers.0.conv", out, out, 3);
    layers->up.push_back(std::move(level));
  }
  layers->decoder_norm = Norm::Load(l, "decoder.conv_norm_out", ch[0], g);
  layers->decoder_out = Conv::Load(l, "decoder.conv_out", ch[0], c.out_channels, 3);

  bytes_ = l.bytes();
  layers_ = std::move(layers);
}

at::Tensor Vae::Prepare(const at::Tensor& t, int64_t channels, const char* what) const {
  CheckShape(t, channels, what);
  at::Tensor x = t.to(options_.device, options_.dtype);
  if (options_.channels_last) x = x.contiguous(at::MemoryFormat::ChannelsLast);
  return x;
}

at::Tensor Vae::Decode(const at::Tensor& z) const {
  const Layers& m = *layers_;
  at::Tensor h = Prepare(z, config_.latent_channels, "latent z");
  if (m.post_quant) h = (*m.post_quant)(h);
  h = m.decoder_in(h);
  h = m.decoder_mid(std::move(h));
  for (const Level& level : m.up) {
    for (const Resnet& r : level.resnets) h = r(std::move(h));
    if (level.resample) h = Upsample(*level.resample, std::move(h));
  }
  return Head(m.decoder_norm, m.decoder_out, std::move(h)).contiguous();
}

at::Tensor Vae::EncodeMoments(const at::Tensor& x) const {
  const Layers& m = *layers_;
  at::Tensor h = Prepare(x, config_.in_channels, "image x");
  if (h.size(2) % downscale() != 0 || h.size(3) % downscale() != 0) {
    throw std::invalid_argument(
        fmt::format("VAE: image height and width must be multiples of {}, got {}x{}", downscale(),
                    h.size(2), h.size(3)));
  }
  h = m.encoder_in(h);
  for (const Level& level : m.down) {
    for (const Resnet& r : level.resnets) h = r(std::move(h));
    if (level.resample) h = Downsample(*level.resample, std::move(h));
  }
  h = m.encoder_mid(std::move(h));
  h = Head(m.encoder_norm, m.encoder_out, std::move(h));
  if (m.quant) h = (*m.quant)(h);
  return h.contiguous();
}

at::Tensor Vae::EncodeMean(const at::Tensor& x) const {
  return EncodeMoments(x).narrow(1, 0, config_.latent_channels).contiguous();
}

at::Tensor Vae::DecodeTiled(const at::Tensor& z, int64_t tile_latent,
                            int64_t overlap_latent) const {
  if (tile_latent < 1 || overlap_latent < 0 || overlap_latent >= tile_latent) {
    throw std::invalid_argument(fmt::format(
        "VAE: tiled decoding needs tile_latent >= 1 and 0 <= overlap_latent < tile_latent, got "
        "tile {} overlap {}",
        tile_latent, overlap_latent));
  }
  CheckShape(z, config_.latent_channels, "latent z");
  const int64_t height = z.size(2), width = z.size(3);
  if (height <= tile_latent && width <= tile_latent) return Decode(z);

  const int64_t scale = downscale();
  const TileLayout row_layout = Layout(height, tile_latent, overlap_latent);
  const TileLayout col_layout = Layout(width, tile_latent, overlap_latent);
  const std::vector<int64_t>& rows = row_layout.starts;
  const std::vector<int64_t>& cols = col_layout.starts;
  const int64_t tile_h = row_layout.tile, tile_w = col_layout.tile;
  const std::vector<at::Tensor> row_weights = BlendWeights(rows, tile_h, height, scale);
  const std::vector<at::Tensor> col_weights = BlendWeights(cols, tile_w, width, scale);

  // Accumulated in fp32 so bf16 tiles do not lose precision where they are summed, and in host
  // memory, so that on a GPU only one tile is resident at a time.
  at::Tensor out =
      at::zeros({z.size(0), config_.out_channels, height * scale, width * scale}, at::kFloat);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < cols.size(); ++j) {
      const at::Tensor image = Decode(z.narrow(2, rows[i], tile_h).narrow(3, cols[j], tile_w));
      const at::Tensor weight = row_weights[i].unsqueeze(1) * col_weights[j].unsqueeze(0);
      out.narrow(2, rows[i] * scale, tile_h * scale)
          .narrow(3, cols[j] * scale, tile_w * scale)
          .addcmul_(image.to(at::kCPU, at::kFloat), weight);
    }
  }
  return out.to(options_.device, options_.dtype);
}

}  // namespace megaserve::diffusion
