// The denoising network of Stable Diffusion 1.x / 2.x: diffusers' UNet2DConditionModel
// (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), on ATen.
//
// conv_in -> down blocks (ResNet blocks, optional spatial transformers with cross-attention to
// the text encoding, stride-2 conv) -> mid block (ResNet, transformer, ResNet) -> up blocks
// (each ResNet block takes the matching down-path activation concatenated on channels; nearest
// x2 up-sampling + conv) -> GroupNorm, SiLU, conv_out. A sinusoidal timestep embedding (DDPM,
// Ho et al. 2020) goes through a two-layer MLP and is added inside every ResNet block.
//
// Configuration and weight names are diffusers' (`unet/config.json`,
// `diffusion_pytorch_model.safetensors`), including its naming quirk: for this model
// `attention_head_dim` is the number of attention HEADS per block (SD1: 8 heads everywhere; SD2:
// [5, 10, 20, 20] heads, i.e. 64 channels per head), and the head width is channels / heads.
//
// Speed (see unet.cc): self-attention Q/K/V and cross-attention K/V are each one fused GEMM,
// attention runs block by block in cache (attention.h), residual adds accumulate in place, the
// feed-forward runs on row blocks, and fp32 convolutions keep oneDNN-prepacked weights. With
// ComputeOptions::channels_last the convolutions and the transformers' token views share one
// NHWC layout (no transposing copies), but on AVX2 CPUs oneDNN's NHWC convolutions are slower
// than its blocked ones, so there the default layout is faster overall.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "diffusion/torch/compute_options.h"
#include "diffusion/torch/weights.h"

namespace megaserve::diffusion {

// The fields of diffusers' UNet2DConditionModel config.json that this implementation honours.
// Options it does not implement must have their default value (see FromJson).
struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  int64_t sample_size = 64;  // latent height/width the model was trained at (informational)
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  std::vector<int64_t> layers_per_block = {2, 2, 2, 2};  // per down block
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  int64_t cross_attention_dim = 1280;
  // Attention heads per down block (diffusers' `attention_head_dim`, see the file comment); the
  // mid block uses the last, up block i uses reversed order.
  std::vector<int64_t> attention_heads = {8, 8, 8, 8};
  std::vector<int64_t> transformer_layers_per_block = {1, 1, 1, 1};  // per down block
  bool use_linear_projection = false;
  bool upcast_attention = false;  // accepted; softmax always runs in fp32
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  bool center_input_sample = false;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;
  int64_t time_embedding_dim = 0;  // 0: 4 * block_out_channels[0]

  // Parses config.json text. `source` names the file in messages. Throws std::invalid_argument
  // for malformed JSON, wrongly typed or inconsistent fields, unsupported block types and
  // options that change the architecture in ways not implemented here (class/addition
  // embeddings, attention types other than "default", ...).
  static UNetConfig FromJson(const std::string& text, const std::string& source);
  // Reads and parses a config.json file. Throws std::invalid_argument as FromJson, or when the
  // file cannot be read.
  static UNetConfig FromFile(const std::filesystem::path& path);
};

class UNet {
 public:
  // Loads `dir`/config.json and `dir`/diffusion_pytorch_model.safetensors (or, when that is
  // absent, diffusion_pytorch_model.fp16.safetensors), weights converted to options.dtype.
  // Throws std::invalid_argument for a bad config, WeightError for missing or unreadable
  // weight files and missing or misshapen weights.
  static std::unique_ptr<UNet> Load(const std::filesystem::path& dir,
                                    const ComputeOptions& options);

  // Builds the network from `weights` (diffusers names), checking every weight's shape against
  // `config`. Weights must already be of options.dtype. Throws as Load.
  UNet(UNetConfig config, const Weights& weights, const ComputeOptions& options);
  ~UNet();
  UNet(const UNet&) = delete;
  UNet& operator=(const UNet&) = delete;

  // The model output (noise or v prediction) [B, out_channels, H, W] in options.dtype for
  // latents `sample` [B, in_channels, H, W], `timesteps` [B] (or [1] / a scalar, broadcast;
  // any floating or integer type) and text encodings `encoder_hidden_states`
  // [B, T, cross_attention_dim]. Any H, W >= 1 works (up-sampling follows the skip sizes).
  // Throws std::invalid_argument on mismatched shapes.
  at::Tensor Forward(const at::Tensor& sample, const at::Tensor& timesteps,
                     const at::Tensor& encoder_hidden_states) const;

  // Bytes of the tensors the network holds.
  std::size_t bytes() const;
  const UNetConfig& config() const { return config_; }
  const ComputeOptions& options() const { return options_; }

 private:
  struct Net;
  UNetConfig config_;
  ComputeOptions options_;
  std::unique_ptr<Net> net_;
};

}  // namespace megaserve::diffusion
