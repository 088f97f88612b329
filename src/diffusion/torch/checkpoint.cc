// Maps a single-file Stable Diffusion checkpoint to diffusers components.
//
// The original modules (CompVis/stable-diffusion ldm/modules/diffusionmodules/openaimodel.py for
// the UNet, .../diffusionmodules/model.py for the VAE, Stability-AI/stablediffusion's
// FrozenOpenCLIPEmbedder for SD2 text) nest differently from diffusers':
//  - UNet: `input_blocks` is one flat list: conv_in, then per resolution level `layers` blocks of
//    [ResBlock, SpatialTransformer?] and a Downsample (`op`) except after the last level.
//    `output_blocks` holds `layers + 1` blocks per level, lowest resolution first, the last of a
//    level ending in an Upsample (`conv`) except for the last level. diffusers' down/up block i
//    is that level i.
//  - VAE: `encoder.down.i` matches diffusers' `down_blocks.i`, but `decoder.up.i` is indexed by
//    resolution level (up.0 is full resolution), so diffusers' `up_blocks.b` is `up.(n-1-b)`.
//    Its attention projections are 1x1 convolutions; diffusers stores them as linear layers.
//  - SD2 text: OpenCLIP packs q, k, v into one `in_proj_weight` [3D, D]. SD2 conditions on the
//    penultimate block's output (then ln_final), so diffusers' text encoder has one layer fewer
//    and the last resblock is not used.
// Mapping walks the architecture read off the tensors and asks for every tensor it needs, so a
// missing one is reported by name and anything the walk does not visit is ignored.
#include "diffusion/torch/checkpoint.h"

#include <fmt/format.h>
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <stdexcept>
#include <utility>
#include <vector>

#include "diffusion/safetensors.h"

namespace megaserve::diffusion {
namespace {

constexpr std::string_view kUnetPrefix = "model.diffusion_model.";
constexpr std::string_view kVaePrefix = "first_stage_model.";
constexpr std::string_view kClipPrefix = "cond_stage_model.transformer.";
constexpr std::string_view kOpenClipPrefix = "cond_stage_model.model.";

// Above this spread of a late transformer norm bias an SD2 UNet was trained for v-prediction;
// the heuristic ComfyUI uses for SD2 files without a marker.
constexpr double kVPredictionNormBiasStd = 0.09;

// The checkpoint file: tensors by original name, their names, and its metadata.
struct Source {
  std::string path;
  Weights all;
  std::vector<std::string> names;
  std::map<std::string, std::string> metadata;

  bool HasPrefix(std::string_view prefix) const {
    auto it = std::lower_bound(names.begin(), names.end(), prefix);
    return it != names.end() && std::string_view(*it).starts_with(prefix);
  }
};

// One component's view of the file (original names relative to its prefix) and the diffusers
// weights it produces.
class Mapper {
 public:
  Mapper(const Source& source, std::string_view prefix, std::string component)
      : source_(source), prefix_(prefix), component_(std::move(component)) {}

  bool Has(std::string_view name) const { return source_.all.Has(Full(name)); }

  const at::Tensor& Get(std::string_view name) const {
    const std::string full = Full(name);
    if (!source_.all.Has(full)) {
      throw WeightError(
          fmt::format("{} lacks '{}', which its {} needs", source_.path, full, component_));
    }
    return source_.all.Get(full);
  }

  // One more than the largest N among names `<prefix><head>N...`; 0 when there is none.
  int Count(std::string_view head) const {
    const std::string start = Full(head);
    int count = 0;
    auto it = std::lower_bound(source_.names.begin(), source_.names.end(), start);
    for (; it != source_.names.end() && it->starts_with(start); ++it) {
      std::size_t pos = start.size();
      int index = 0;
      bool digits = false;
      while (pos < it->size() && std::isdigit(static_cast<unsigned char>((*it)[pos]))) {
        index = index * 10 + ((*it)[pos++] - '0');
        digits = true;
      }
      if (digits && pos < it->size() && (*it)[pos] == '.') count = std::max(count, index + 1);
    }
    return count;
  }

  void Put(std::string name, at::Tensor tensor) { out_.Add(std::move(name), std::move(tensor)); }
  void Copy(std::string_view from, std::string to) { Put(std::move(to), Get(from)); }
  // A layer's weight and bias.
  void Param(std::string_view from, std::string_view to) {
    Copy(fmt::format("{}.weight", from), fmt::format("{}.weight", to));
    Copy(fmt::format("{}.bias", from), fmt::format("{}.bias", to));
  }

  const std::string& path() const { return source_.path; }
  const std::string& component() const { return component_; }

  Weights Take() {
    out_.set_source(source_.path);
    return std::move(out_);
  }

 private:
  std::string Full(std::string_view name) const { return prefix_ + std::string(name); }

  const Source& source_;
  std::string prefix_;
  std::string component_;
  Weights out_;
};

// ---- config.json texts ----

// A JSON object built field by field, then amended from the file's metadata.
class JsonConfig {
 public:
  JsonConfig() { doc_.SetObject(); }

  void SetInt(std::string_view key, int64_t v) { Set(key, rapidjson::Value(v)); }
  void SetDouble(std::string_view key, double v) { Set(key, rapidjson::Value(v)); }
  void SetBool(std::string_view key, bool v) { Set(key, rapidjson::Value(v)); }
  void SetNull(std::string_view key) { Set(key, rapidjson::Value()); }
  void SetString(std::string_view key, std::string_view v) {
    Set(key, rapidjson::Value(v.data(), static_cast<rapidjson::SizeType>(v.size()), Alloc()));
  }
  void SetInts(std::string_view key, const std::vector<int64_t>& v) {
    rapidjson::Value array(rapidjson::kArrayType);
    for (int64_t x : v) array.PushBack(rapidjson::Value(x), Alloc());
    Set(key, std::move(array));
  }
  void SetStrings(std::string_view key, const std::vector<std::string>& v) {
    rapidjson::Value array(rapidjson::kArrayType);
    for (const std::string& s : v) array.PushBack(rapidjson::Value(s.c_str(), Alloc()), Alloc());
    Set(key, std::move(array));
  }

  bool Has(std::string_view key) const { return Find(key) != doc_.MemberEnd(); }
  std::string GetString(std::string_view key) const {
    auto it = Find(key);
    return it != doc_.MemberEnd() && it->value.IsString() ? it->value.GetString() : "";
  }

  // Replaces or adds the members of the JSON object in metadata entry `key`, if the file has
  // one. Throws std::invalid_argument when it is not a JSON object.
  void Merge(const Source& source, const std::string& key) {
    auto entry = source.metadata.find(key);
    if (entry == source.metadata.end()) return;
    rapidjson::Document patch;
    patch.Parse(entry->second.c_str());
    if (patch.HasParseError() || !patch.IsObject()) {
      throw std::invalid_argument(
          fmt::format("{}: metadata entry '{}' must be a JSON object{}", source.path, key,
                      patch.HasParseError()
                          ? fmt::format(" ({})", rapidjson::GetParseError_En(patch.GetParseError()))
                          : ""));
    }
    for (auto& member : patch.GetObject()) {
      rapidjson::Value value(member.value, Alloc());
      Set(std::string_view(member.name.GetString(), member.name.GetStringLength()),
          std::move(value));
    }
  }

  std::string Text() const {
    rapidjson::StringBuffer buffer;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> writer(buffer);
    writer.SetIndent(' ', 2);
    doc_.Accept(writer);
    return std::string(buffer.GetString(), buffer.GetSize()) + "\n";
  }

 private:
  rapidjson::Document::AllocatorType& Alloc() { return doc_.GetAllocator(); }

  rapidjson::Value::ConstMemberIterator Find(std::string_view key) const {
    return doc_.FindMember(rapidjson::Value(
        rapidjson::StringRef(key.data(), static_cast<rapidjson::SizeType>(key.size()))));
  }

  void Set(std::string_view key, rapidjson::Value value) {
    rapidjson::Value name(key.data(), static_cast<rapidjson::SizeType>(key.size()), Alloc());
    auto it = doc_.FindMember(name);
    if (it != doc_.MemberEnd()) {
      it->value = std::move(value);
    } else {
      doc_.AddMember(std::move(name), std::move(value), Alloc());
    }
  }

  rapidjson::Document doc_;
};

// ---- UNet ----

struct UnetLayout {
  int64_t in_channels = 0, out_channels = 0, cross_attention_dim = 0;
  std::vector<int64_t> channels;                   // per resolution level
  int layers = 0;                                  // ResBlocks per down level
  std::vector<bool> down_attention, up_attention;  // diffusers' block order
  int transformer_depth = 0;
  bool linear_projection = false;
  int output_blocks = 0;
};

UnetLayout ReadUnetLayout(const Mapper& m) {
  UnetLayout u;
  const int inputs = m.Count("input_blocks.");
  u.output_blocks = m.Count("output_blocks.");
  int downsamples = 0;
  for (int k = 0; k < inputs; ++k)
    downsamples += m.Has(fmt::format("input_blocks.{}.0.op.weight", k));
  const int levels = downsamples + 1;
  // inputs = 1 (conv_in) + levels * layers + (levels - 1) downsamples.
  if (inputs <= levels || (inputs - levels) % levels != 0) {
    throw WeightError(fmt::format(
        "{}: the UNet's {} input blocks with {} downsamplers do not form equal resolution levels",
        m.path(), inputs, downsamples));
  }
  u.layers = (inputs - levels) / levels;
  if (u.output_blocks != levels * (u.layers + 1)) {
    throw WeightError(
        fmt::format("{}: the UNet has {} output blocks, {} levels of {} layers need {}", m.path(),
                    u.output_blocks, levels, u.layers, levels * (u.layers + 1)));
  }
  for (int i = 0; i < levels; ++i) {
    const int first = 1 + i * (u.layers + 1);
    u.channels.push_back(
        m.Get(fmt::format("input_blocks.{}.0.out_layers.3.weight", first)).size(0));
    u.down_attention.push_back(m.Has(fmt::format("input_blocks.{}.1.proj_in.weight", first)));
    u.up_attention.push_back(
        m.Has(fmt::format("output_blocks.{}.1.proj_in.weight", i * (u.layers + 1))));
  }
  u.in_channels = m.Get("input_blocks.0.0.weight").size(1);
  u.out_channels = m.Get("out.2.weight").size(0);
  u.cross_attention_dim = m.Get("middle_block.1.transformer_blocks.0.attn2.to_k.weight").size(1);
  u.linear_projection = m.Get("middle_block.1.proj_in.weight").dim() == 2;
  u.transformer_depth = m.Count("middle_block.1.transformer_blocks.");
  return u;
}

void MapResBlock(Mapper& m, const std::string& from, const std::string& to) {
  m.Param(from + ".in_layers.0", to + ".norm1");
  m.Param(from + ".in_layers.2", to + ".conv1");
  m.Param(from + ".emb_layers.1", to + ".time_emb_proj");
  m.Param(from + ".out_layers.0", to + ".norm2");
  m.Param(from + ".out_layers.3", to + ".conv2");
  // The 1x1 shortcut exists exactly when the block changes the channel count.
  const bool reshapes =
      m.Get(from + ".in_layers.2.weight").size(1) != m.Get(from + ".out_layers.3.weight").size(0);
  if (reshapes || m.Has(from + ".skip_connection.weight")) {
    m.Param(from + ".skip_connection", to + ".conv_shortcut");
  }
}

void MapSpatialTransformer(Mapper& m, const std::string& from, const std::string& to) {
  m.Param(from + ".norm", to + ".norm");
  m.Param(from + ".proj_in", to + ".proj_in");
  m.Param(from + ".proj_out", to + ".proj_out");
  const int depth = std::max(1, m.Count(from + ".transformer_blocks."));
  for (int t = 0; t < depth; ++t) {
    const std::string a = fmt::format("{}.transformer_blocks.{}", from, t);
    const std::string b = fmt::format("{}.transformer_blocks.{}", to, t);
    for (const char* attn : {".attn1", ".attn2"}) {
      for (const char* proj : {".to_q.weight", ".to_k.weight", ".to_v.weight"}) {
        m.Copy(a + attn + proj, b + attn + proj);
      }
      m.Param(a + attn + ".to_out.0", b + attn + ".to_out.0");
    }
    for (const char* part : {".norm1", ".norm2", ".norm3", ".ff.net.0.proj", ".ff.net.2"}) {
      m.Param(a + part, b + part);
    }
  }
}

void MapUnet(Mapper& m, const UnetLayout& u) {
  const int levels = static_cast<int>(u.channels.size());
  const int per_level = u.layers + 1;
  m.Param("input_blocks.0.0", "conv_in");
  m.Param("time_embed.0", "time_embedding.linear_1");
  m.Param("time_embed.2", "time_embedding.linear_2");
  for (int i = 0; i < levels; ++i) {
    for (int j = 0; j < u.layers; ++j) {
      const int k = 1 + i * per_level + j;
      MapResBlock(m, fmt::format("input_blocks.{}.0", k),
                  fmt::format("down_blocks.{}.resnets.{}", i, j));
      if (u.down_attention[i]) {
        MapSpatialTransformer(m, fmt::format("input_blocks.{}.1", k),
                              fmt::format("down_blocks.{}.attentions.{}", i, j));
      }
    }
    if (i + 1 < levels) {
      m.Param(fmt::format("input_blocks.{}.0.op", (i + 1) * per_level),
              fmt::format("down_blocks.{}.downsamplers.0.conv", i));
    }
  }
  MapResBlock(m, "middle_block.0", "mid_block.resnets.0");
  MapSpatialTransformer(m, "middle_block.1", "mid_block.attentions.0");
  MapResBlock(m, "middle_block.2", "mid_block.resnets.1");
  for (int i = 0; i < levels; ++i) {
    for (int j = 0; j < per_level; ++j) {
      const int k = i * per_level + j;
      MapResBlock(m, fmt::format("output_blocks.{}.0", k),
                  fmt::format("up_blocks.{}.resnets.{}", i, j));
      int next = 1;  // the Upsample follows the attention when there is one
      if (u.up_attention[i]) {
        MapSpatialTransformer(m, fmt::format("output_blocks.{}.1", k),
                              fmt::format("up_blocks.{}.attentions.{}", i, j));
        next = 2;
      }
      if (j == u.layers && i + 1 < levels) {
        m.Param(fmt::format("output_blocks.{}.{}.conv", k, next),
                fmt::format("up_blocks.{}.upsamplers.0.conv", i));
      }
    }
  }
  m.Param("out.0", "conv_norm_out");
  m.Param("out.2", "conv_out");
}

// ---- VAE ----

struct VaeLayout {
  int64_t in_channels = 0, out_channels = 0, latent_channels = 0;
  std::vector<int64_t> channels;
  int layers = 0;
};

VaeLayout ReadVaeLayout(const Mapper& m) {
  VaeLayout v;
  const int levels = m.Count("encoder.down.");
  v.layers = m.Count("encoder.down.0.block.");
  if (levels == 0 || v.layers == 0) m.Get("encoder.down.0.block.0.conv1.weight");  // throws
  if (m.Count("decoder.up.") != levels) {
    throw WeightError(fmt::format("{}: the VAE encoder has {} levels but its decoder {}", m.path(),
                                  levels, m.Count("decoder.up.")));
  }
  for (int i = 0; i < levels; ++i) {
    v.channels.push_back(m.Get(fmt::format("encoder.down.{}.block.0.conv1.weight", i)).size(0));
  }
  v.in_channels = m.Get("encoder.conv_in.weight").size(1);
  v.out_channels = m.Get("decoder.conv_out.weight").size(0);
  v.latent_channels = m.Get("decoder.conv_in.weight").size(1);
  return v;
}

void MapVaeResBlock(Mapper& m, const std::string& from, const std::string& to) {
  for (const char* part : {".norm1", ".conv1", ".norm2", ".conv2"}) m.Param(from + part, to + part);
  const bool reshapes =
      m.Get(from + ".conv1.weight").size(1) != m.Get(from + ".conv2.weight").size(0);
  if (reshapes || m.Has(from + ".nin_shortcut.weight")) {
    m.Param(from + ".nin_shortcut", to + ".conv_shortcut");
  }
}

void MapVaeAttention(Mapper& m, const std::string& from, const std::string& to) {
  m.Param(from + ".norm", to + ".group_norm");
  const std::pair<const char*, const char*> projections[] = {
      {".q", ".to_q"}, {".k", ".to_k"}, {".v", ".to_v"}, {".proj_out", ".to_out.0"}};
  for (const auto& [a, b] : projections) {
    const at::Tensor& w = m.Get(from + a + ".weight");
    // [out, in, 1, 1] convolution weights act as [out, in] linear ones; reshape is a view here.
    m.Put(to + b + ".weight", w.dim() == 4 ? w.reshape({w.size(0), w.size(1)}) : w);
    m.Copy(from + a + ".bias", to + b + ".bias");
  }
}

void MapVaeMid(Mapper& m, const std::string& from, const std::string& to) {
  MapVaeResBlock(m, from + ".block_1", to + ".resnets.0");
  MapVaeAttention(m, from + ".attn_1", to + ".attentions.0");
  MapVaeResBlock(m, from + ".block_2", to + ".resnets.1");
}

void MapVae(Mapper& m, const VaeLayout& v) {
  const int levels = static_cast<int>(v.channels.size());
  m.Param("encoder.conv_in", "encoder.conv_in");
  for (int i = 0; i < levels; ++i) {
    for (int j = 0; j < v.layers; ++j) {
      MapVaeResBlock(m, fmt::format("encoder.down.{}.block.{}", i, j),
                     fmt::format("encoder.down_blocks.{}.resnets.{}", i, j));
    }
    if (i + 1 < levels) {
      m.Param(fmt::format("encoder.down.{}.downsample.conv", i),
              fmt::format("encoder.down_blocks.{}.downsamplers.0.conv", i));
    }
  }
  MapVaeMid(m, "encoder.mid", "encoder.mid_block");
  m.Param("encoder.norm_out", "encoder.conv_norm_out");
  m.Param("encoder.conv_out", "encoder.conv_out");
  m.Param("quant_conv", "quant_conv");
  m.Param("post_quant_conv", "post_quant_conv");
  m.Param("decoder.conv_in", "decoder.conv_in");
  MapVaeMid(m, "decoder.mid", "decoder.mid_block");
  for (int i = 0; i < levels; ++i) {
    const int b = levels - 1 - i;  // decoder.up is indexed by resolution, up_blocks by order
    for (int j = 0; j <= v.layers; ++j) {
      MapVaeResBlock(m, fmt::format("decoder.up.{}.block.{}", i, j),
                     fmt::format("decoder.up_blocks.{}.resnets.{}", b, j));
    }
    if (i > 0) {
      m.Param(fmt::format("decoder.up.{}.upsample.conv", i),
              fmt::format("decoder.up_blocks.{}.upsamplers.0.conv", b));
    }
  }
  m.Param("decoder.norm_out", "decoder.conv_norm_out");
  m.Param("decoder.conv_out", "decoder.conv_out");
}

// ---- text encoders ----

struct TextLayout {
  int64_t hidden = 0, intermediate = 0, vocab = 0, positions = 0;
  int layers = 0;
};

void MapClipLayer(Mapper& m, const std::string& from, const std::string& to) {
  for (const char* part :
       {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj", ".self_attn.out_proj",
        ".layer_norm1", ".layer_norm2", ".mlp.fc1", ".mlp.fc2"}) {
    m.Param(from + part, to + part);
  }
}

// SD1: Hugging Face CLIPTextModel names below the prefix (older files lack "text_model.").
TextLayout MapClipText(Mapper& m) {
  const std::string base =
      m.Has("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
  TextLayout t;
  t.layers = m.Count(base + "encoder.layers.");
  const at::Tensor& tokens = m.Get(base + "embeddings.token_embedding.weight");
  const at::Tensor& positions = m.Get(base + "embeddings.position_embedding.weight");
  t.vocab = tokens.size(0);
  t.hidden = tokens.size(1);
  t.positions = positions.size(0);
  t.intermediate = m.Get(base + "encoder.layers.0.mlp.fc1.weight").size(0);
  m.Put("text_model.embeddings.token_embedding.weight", tokens);
  m.Put("text_model.embeddings.position_embedding.weight", positions);
  for (int l = 0; l < t.layers; ++l) {
    MapClipLayer(m, fmt::format("{}encoder.layers.{}", base, l),
                 fmt::format("text_model.encoder.layers.{}", l));
  }
  m.Param(base + "final_layer_norm", "text_model.final_layer_norm");
  return t;
}

// SD2: OpenCLIP names; the last resblock is skipped (SD2 reads the penultimate layer).
TextLayout MapOpenClipText(Mapper& m) {
  TextLayout t;
  const int blocks = m.Count("transformer.resblocks.");
  if (blocks < 2) {
    throw WeightError(fmt::format(
        "{}: the OpenCLIP text encoder has {} blocks; SD2 needs 2 or more", m.path(), blocks));
  }
  t.layers = blocks - 1;
  const at::Tensor& tokens = m.Get("token_embedding.weight");
  const at::Tensor& positions = m.Get("positional_embedding");
  t.vocab = tokens.size(0);
  t.hidden = tokens.size(1);
  t.positions = positions.size(0);
  t.intermediate = m.Get("transformer.resblocks.0.mlp.c_fc.weight").size(0);
  m.Put("text_model.embeddings.token_embedding.weight", tokens);
  m.Put("text_model.embeddings.position_embedding.weight", positions);
  const int64_t d = t.hidden;
  for (int l = 0; l < t.layers; ++l) {
    const std::string a = fmt::format("transformer.resblocks.{}", l);
    const std::string b = fmt::format("text_model.encoder.layers.{}", l);
    const at::Tensor& w = m.Get(a + ".attn.in_proj_weight");
    const at::Tensor& bias = m.Get(a + ".attn.in_proj_bias");
    if (w.sizes() != at::IntArrayRef({3 * d, d}) || bias.sizes() != at::IntArrayRef({3 * d})) {
      throw WeightError(fmt::format("{}: '{}{}.attn.in_proj_weight/bias' are not packed [3*{}, {}]",
                                    m.path(), kOpenClipPrefix, a, d, d));
    }
    const char* names[] = {".self_attn.q_proj", ".self_attn.k_proj", ".self_attn.v_proj"};
    for (int p = 0; p < 3; ++p) {
      // narrow() is a view: the split costs no copy of the packed tensor.
      m.Put(b + names[p] + ".weight", w.narrow(0, p * d, d));
      m.Put(b + names[p] + ".bias", bias.narrow(0, p * d, d));
    }
    m.Param(a + ".attn.out_proj", b + ".self_attn.out_proj");
    m.Param(a + ".ln_1", b + ".layer_norm1");
    m.Param(a + ".ln_2", b + ".layer_norm2");
    m.Param(a + ".mlp.c_fc", b + ".mlp.fc1");
    m.Param(a + ".mlp.c_proj", b + ".mlp.fc2");
  }
  m.Param("ln_final", "text_model.final_layer_norm");
  return t;
}

// ---- file and variant ----

[[noreturn]] void ThrowNotACheckpoint(const Source& s) {
  std::vector<std::string> missing;
  if (!s.HasPrefix(kUnetPrefix)) missing.push_back(fmt::format("{}* (UNet)", kUnetPrefix));
  if (!s.HasPrefix(kVaePrefix)) missing.push_back(fmt::format("{}* (VAE)", kVaePrefix));
  if (!s.HasPrefix(kClipPrefix) && !s.HasPrefix(kOpenClipPrefix)) {
    missing.push_back(fmt::format("{}* (SD1 CLIP text encoder) or {}* (SD2 OpenCLIP)", kClipPrefix,
                                  kOpenClipPrefix));
  }
  std::vector<std::string> sample(s.names.begin(),
                                  s.names.begin() + std::min<std::size_t>(s.names.size(), 3));
  throw WeightError(fmt::format(
      "{} is not a single-file Stable Diffusion 1/2 checkpoint: it has no tensors named {}{} "
      "(its first tensors: {})",
      s.path, fmt::join(missing, ", "),
      s.HasPrefix("conditioner.embedders.") ? "; it looks like SDXL, which is not supported" : "",
      sample.empty() ? std::string("none") : fmt::format("'{}'", fmt::join(sample, "', '"))));
}

std::string DecidePrediction(const Source& s, const Mapper& unet, const UnetLayout& u,
                             std::string_view variant, std::string_view hint) {
  if (hint == "epsilon" || hint == "v_prediction") return std::string(hint);
  if (hint != "auto") {
    throw std::invalid_argument(
        fmt::format("prediction_type '{}' is not one of auto, epsilon, v_prediction", hint));
  }
  if (auto it = s.metadata.find("modelspec.prediction_type"); it != s.metadata.end()) {
    if (it->second == "v" || it->second == "v_prediction" || it->second == "v-prediction") {
      return "v_prediction";
    }
    if (it->second == "epsilon" || it->second == "eps") return "epsilon";
  }
  if (s.all.Has("v_pred")) return "v_prediction";  // ComfyUI's marker tensor
  if (variant == "sd2" && u.in_channels == 4) {    // SD2 inpainting is epsilon
    const std::string key =
        fmt::format("output_blocks.{}.1.transformer_blocks.0.norm1.bias", u.output_blocks - 1);
    if (unet.Has(key) && unet.Get(key).to(at::kFloat).std(/*unbiased=*/false).item<double>() >
                             kVPredictionNormBiasStd) {
      return "v_prediction";
    }
  }
  return "epsilon";
}

// Adds the metadata override `key` and reports a field that must be known but is not.
void MergeAndRequire(JsonConfig& config, const Source& s, const std::string& key,
                     std::string_view field, std::string_view why) {
  config.Merge(s, key);
  if (!config.Has(field)) {
    throw std::invalid_argument(fmt::format(
        "{}: cannot tell '{}' from the tensors ({}); give it in the metadata entry '{}' as a JSON "
        "object member",
        s.path, field, why, key));
  }
}

std::vector<std::string> Repeat(std::string_view text, std::size_t n) {
  return std::vector<std::string>(n, std::string(text));
}

std::string UnetConfig(const Source& s, const UnetLayout& u, std::string_view variant,
                       std::string_view prediction) {
  JsonConfig c;
  const bool sd2 = variant == "sd2";
  std::vector<std::string> down, up;
  for (bool a : u.down_attention) down.push_back(a ? "CrossAttnDownBlock2D" : "DownBlock2D");
  for (bool a : u.up_attention) up.push_back(a ? "CrossAttnUpBlock2D" : "UpBlock2D");
  c.SetString("_class_name", "UNet2DConditionModel");
  c.SetString("act_fn", "silu");
  // diffusers reads attention_head_dim as the number of heads: SD1 has 8 everywhere, SD2 heads
  // of 64 channels.
  if (!sd2) {
    c.SetInt("attention_head_dim", 8);
  } else if (std::all_of(u.channels.begin(), u.channels.end(),
                         [](int64_t x) { return x % 64 == 0; })) {
    std::vector<int64_t> heads;
    for (int64_t x : u.channels) heads.push_back(x / 64);
    c.SetInts("attention_head_dim", heads);
  }
  c.SetInts("block_out_channels", u.channels);
  c.SetBool("center_input_sample", false);
  c.SetInt("cross_attention_dim", u.cross_attention_dim);
  c.SetStrings("down_block_types", down);
  c.SetInt("downsample_padding", 1);
  c.SetBool("flip_sin_to_cos", true);
  c.SetInt("freq_shift", 0);
  c.SetInt("in_channels", u.in_channels);
  c.SetInt("layers_per_block", u.layers);
  c.SetString("mid_block_type", "UNetMidBlock2DCrossAttn");
  c.SetInt("mid_block_scale_factor", 1);
  c.SetDouble("norm_eps", 1e-5);
  c.SetInt("norm_num_groups", 32);
  c.SetInt("out_channels", u.out_channels);
  c.SetInt("sample_size", sd2 && prediction == "v_prediction" ? 96 : 64);
  c.SetInt("transformer_layers_per_block", u.transformer_depth);
  c.SetStrings("up_block_types", up);
  // SD2 attention overflows in fp16 without fp32 scores (what Stability and ComfyUI do).
  c.SetBool("upcast_attention", sd2);
  c.SetBool("use_linear_projection", u.linear_projection);
  MergeAndRequire(c, s, "megaserve.unet_config", "attention_head_dim",
                  "SD2 rule: 64 channels per head, but the block channels are not multiples of 64");
  return c.Text();
}

std::string VaeConfig(const Source& s, const VaeLayout& v, std::string_view variant,
                      std::string_view prediction) {
  JsonConfig c;
  c.SetString("_class_name", "AutoencoderKL");
  c.SetString("act_fn", "silu");
  c.SetInts("block_out_channels", v.channels);
  c.SetStrings("down_block_types", Repeat("DownEncoderBlock2D", v.channels.size()));
  c.SetInt("in_channels", v.in_channels);
  c.SetInt("latent_channels", v.latent_channels);
  c.SetInt("layers_per_block", v.layers);
  c.SetInt("norm_num_groups", 32);
  c.SetInt("out_channels", v.out_channels);
  c.SetInt("sample_size", variant == "sd2" && prediction == "v_prediction" ? 768 : 512);
  c.SetDouble("scaling_factor", 0.18215);
  c.SetStrings("up_block_types", Repeat("UpDecoderBlock2D", v.channels.size()));
  c.Merge(s, "megaserve.vae_config");
  return c.Text();
}

std::string TextConfig(const Source& s, const TextLayout& t, std::string_view variant) {
  JsonConfig c;
  const bool sd2 = variant == "sd2";
  c.SetStrings("architectures", {"CLIPTextModel"});
  c.SetDouble("attention_dropout", 0.0);
  c.SetInt("bos_token_id", 0);
  c.SetDouble("dropout", 0.0);
  c.SetInt("eos_token_id", 2);
  // OpenCLIP ViT-H uses exact GELU; OpenAI's CLIP ViT-L the sigmoid approximation.
  c.SetString("hidden_act", sd2 ? "gelu" : "quick_gelu");
  c.SetInt("hidden_size", t.hidden);
  c.SetDouble("initializer_factor", 1.0);
  c.SetDouble("initializer_range", 0.02);
  c.SetInt("intermediate_size", t.intermediate);
  c.SetDouble("layer_norm_eps", 1e-5);
  c.SetInt("max_position_embeddings", t.positions);
  c.SetString("model_type", "clip_text_model");
  // Both text encoders use 64-channel heads (ViT-L: 12 x 64, ViT-H: 16 x 64).
  if (t.hidden % 64 == 0) c.SetInt("num_attention_heads", t.hidden / 64);
  c.SetInt("num_hidden_layers", t.layers);
  c.SetInt("pad_token_id", 1);
  c.SetInt("projection_dim", sd2 ? 512 : 768);
  c.SetString("torch_dtype", "float32");
  c.SetInt("vocab_size", t.vocab);
  MergeAndRequire(c, s, "megaserve.text_encoder_config", "num_attention_heads",
                  "rule: 64 channels per head, but the width is not a multiple of 64");
  return c.Text();
}

JsonConfig SchedulerConfig(const Source& s, std::string_view variant, std::string_view prediction,
                           std::string_view hint) {
  JsonConfig c;
  // The schedules both variants were trained with (ldm configs: linear_start 0.00085,
  // linear_end 0.012, 1000 steps, sqrt-linear betas).
  c.SetString("_class_name", variant == "sd2" ? "DDIMScheduler" : "PNDMScheduler");
  c.SetDouble("beta_end", 0.012);
  c.SetString("beta_schedule", "scaled_linear");
  c.SetDouble("beta_start", 0.00085);
  c.SetBool("clip_sample", false);
  c.SetInt("num_train_timesteps", 1000);
  c.SetString("prediction_type", prediction);
  c.SetBool("set_alpha_to_one", false);
  c.SetBool("skip_prk_steps", true);
  c.SetInt("steps_offset", 1);
  c.SetString("timestep_spacing", "leading");
  c.SetNull("trained_betas");
  c.Merge(s, "megaserve.scheduler_config");
  // A caller's explicit choice beats the file's.
  if (hint != "auto") c.SetString("prediction_type", hint);
  return c;
}

}  // namespace

CheckpointComponents LoadCheckpoint(const std::string& path, const ComputeOptions& options,
                                    std::string_view prediction_type) {
  if (prediction_type != "auto" && prediction_type != "epsilon" &&
      prediction_type != "v_prediction") {
    throw std::invalid_argument(fmt::format(
        "prediction_type '{}' is not one of auto, epsilon, v_prediction", prediction_type));
  }
  Source s;
  s.path = path;
  {
    auto opened = SafetensorsFile::Open(path);
    if (!opened.ok()) throw WeightError(opened.status().message());
    s.metadata = (*opened)->metadata();
  }
  s.all = Weights::FromFile(path, options);
  s.names = s.all.Names();

  const bool sd1_text = s.HasPrefix(kClipPrefix);
  const bool sd2_text = s.HasPrefix(kOpenClipPrefix);
  if (!s.HasPrefix(kUnetPrefix) || !s.HasPrefix(kVaePrefix) || !(sd1_text || sd2_text)) {
    ThrowNotACheckpoint(s);
  }

  CheckpointComponents c;
  c.variant = sd2_text && !sd1_text ? "sd2" : "sd1";

  Mapper unet(s, kUnetPrefix, "UNet");
  const UnetLayout u = ReadUnetLayout(unet);
  MapUnet(unet, u);

  Mapper vae(s, kVaePrefix, "VAE");
  const VaeLayout v = ReadVaeLayout(vae);
  MapVae(vae, v);

  Mapper text(s, c.variant == "sd2" ? kOpenClipPrefix : kClipPrefix, "text encoder");
  const TextLayout t = c.variant == "sd2" ? MapOpenClipText(text) : MapClipText(text);
  if (t.hidden != u.cross_attention_dim) {
    throw WeightError(
        fmt::format("{}: the UNet attends to {}-wide text features but the text encoder is {} wide",
                    path, u.cross_attention_dim, t.hidden));
  }

  const std::string decided = DecidePrediction(s, unet, u, c.variant, prediction_type);
  JsonConfig scheduler = SchedulerConfig(s, c.variant, decided, prediction_type);
  c.prediction_type = scheduler.GetString("prediction_type");
  if (c.prediction_type != "epsilon" && c.prediction_type != "v_prediction") {
    throw std::invalid_argument(fmt::format("{}: scheduler prediction_type '{}' is not supported",
                                            path, c.prediction_type));
  }
  c.scheduler_config_json = scheduler.Text();
  c.unet_config_json = UnetConfig(s, u, c.variant, c.prediction_type);
  c.vae_config_json = VaeConfig(s, v, c.variant, c.prediction_type);
  c.text_encoder_config_json = TextConfig(s, t, c.variant);
  c.unet = unet.Take();
  c.vae = vae.Take();
  c.text_encoder = text.Take();
  return c;
}

}  // namespace megaserve::diffusion
