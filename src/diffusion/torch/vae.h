// The Stable Diffusion autoencoder (diffusers AutoencoderKL): encodes images into the latent
// space the UNet denoises in and decodes latents back into images.
//
// Architecture: Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
// Models" (the KL-regularised autoencoder), in the layout and weight names of diffusers'
// AutoencoderKL. Each resolution level has ResNet blocks (GroupNorm, SiLU, 3x3 conv, twice, plus
// a skip); the encoder halves the resolution between levels and the decoder doubles it; both
// have a middle block of ResNet, single-head self-attention and ResNet at the lowest resolution.
//
// Decoding a large image all at once needs activations of block_out_channels[0] channels at
// full resolution; DecodeTiled decodes overlapping latent tiles one at a time instead.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "diffusion/torch/compute_options.h"
#include "diffusion/torch/weights.h"

namespace megaserve::diffusion {

// The fields of a diffusers `vae/config.json` (AutoencoderKL) the model needs; the defaults are
// diffusers' own.
struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;
  double scaling_factor = 0.18215;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};
  std::string act_fn = "silu";
  bool mid_block_add_attention = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;

  // Parses the JSON text of a config.json; `source` names it in messages. Absent fields keep
  // their defaults. Throws std::invalid_argument naming the source and field when the JSON is
  // malformed, a field has the wrong type, or the config describes something this
  // implementation does not compute (see Validate).
  static VaeConfig FromJson(std::string_view json, const std::string& source);
  // Reads and parses `path`. Throws std::invalid_argument when it cannot be read or is invalid.
  static VaeConfig FromFile(const std::filesystem::path& path);

  // Throws std::invalid_argument when the config is inconsistent (block type lists not one per
  // block_out_channels entry, channels not divisible by norm_num_groups, non-positive sizes) or
  // asks for an unsupported block type (only DownEncoderBlock2D / UpDecoderBlock2D) or
  // activation (only silu).
  void Validate(const std::string& source = "VAE config") const;
};

class Vae {
 public:
  // Loads `dir`/config.json and `dir`/diffusion_pytorch_model.safetensors (or, when that is
  // absent, the `.fp16.safetensors` variant). Throws std::invalid_argument for a bad config and
  // WeightError when the weights file is absent or lacks / misshapes a weight.
  static std::unique_ptr<Vae> Load(const std::filesystem::path& dir, const ComputeOptions& options);

  // Takes the weights named as in diffusers' AutoencoderKL. The mid-block attention may also
  // use the older names (query/key/value/proj_attn) and 1x1-convolution shapes [C, C, 1, 1].
  // Throws std::invalid_argument for a bad config and WeightError naming the first missing or
  // misshapen weight.
  Vae(VaeConfig config, const Weights& weights, const ComputeOptions& options);

  ~Vae();

  Vae(const Vae&) = delete;
  Vae& operator=(const Vae&) = delete;

  // Decodes latents z [B, latent_channels, h, w] (any float dtype), in model units (the caller has
  // already divided by scaling_factor()), into images [B, out_channels, h * downscale(), w *
  // downscale()] of roughly [-1, 1], in the compute dtype. Throws std::invalid_argument for a
  // wrongly shaped z.
  at::Tensor Decode(const at::Tensor& z) const;

  // Decode, computed over overlapping tiles of at most `tile_latent` latent pixels a side, at
  // least `overlap_latent` of them shared with each neighbour, so peak memory depends on the
  // tile size rather than the image size. Overlaps are cross-faded with linear ramps (see
  // vae.cc). Equals Decode exactly when one tile covers z; otherwise differs slightly because
  // GroupNorm and attention see one tile at a time. Throws std::invalid_argument when
  // tile_latent < 1 or overlap_latent is outside [0, tile_latent), and as Decode.
  at::Tensor DecodeTiled(const at::Tensor& z, int64_t tile_latent = 64,
                         int64_t overlap_latent = 16) const;

  // Encodes images x [B, in_channels, H, W] in [-1, 1] (H and W multiples of downscale()) into
  // the moments of the latent distribution, [B, 2 * latent_channels, H / downscale(), W /
  // downscale()]: the means, then the log-variances, as diffusers concatenates them. Throws
  // std::invalid_argument for a wrongly shaped x.
  at::Tensor EncodeMoments(const at::Tensor& x) const;
  // The means of EncodeMoments: [B, latent_channels, H / downscale(), W / downscale()], the
  // deterministic encoding (multiply by scaling_factor() for the UNet). Throws as EncodeMoments.
  at::Tensor EncodeMean(const at::Tensor& x) const;

  // Multiply encoded latents by this (and divide latents by it before Decode).
  double scaling_factor() const { return config_.scaling_factor; }
  // Image pixels per latent pixel along each side: 2^(len(block_out_channels) - 1).
  int64_t downscale() const { return int64_t{1} << (config_.block_out_channels.size() - 1); }
  // Bytes held by the weights (the attention's q/k/v projections are kept fused, once).
  std::size_t bytes() const { return bytes_; }
  const VaeConfig& config() const { return config_; }

 private:
  // The layers, defined in vae.cc so this header does not spell out the architecture.
  struct Layers;

  // z or x checked to be [B, channels, H, W] and converted to the compute dtype and layout.
  at::Tensor Prepare(const at::Tensor& t, int64_t channels, const char* what) const;

  VaeConfig config_;
  ComputeOptions options_;
  std::unique_ptr<const Layers> layers_;
  std::size_t bytes_ = 0;
};

}  // namespace megaserve::diffusion
