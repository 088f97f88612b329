// Single-file Stable Diffusion checkpoints (the A1111/ComfyUI ".safetensors" layout) split into
// the three diffusers components with diffusers weight names and config.json texts.
//
// Such a file holds the original CompVis/Stability module names: `model.diffusion_model.*`
// (UNet), `first_stage_model.*` (VAE) and `cond_stage_model.transformer.*` (SD1, Hugging Face
// CLIP names) or `cond_stage_model.model.*` (SD2, OpenCLIP names). The architecture is read off
// the tensors themselves: channels from shapes, layer counts from the key structure, the variant
// from the text encoder's kind. Head counts and group-norm sizes are not visible in shapes; they
// follow the SD1.5/SD2.1 rules unless the file's `__metadata__` overrides them (see
// LoadCheckpoint).
#pragma once

#include <string>
#include <string_view>

#include "diffusion/torch/compute_options.h"
#include "diffusion/torch/weights.h"

namespace megaserve::diffusion {

// The three model components of a single-file checkpoint, with diffusers names and configs.
struct CheckpointComponents {
  std::string variant;          // "sd1" (CLIP ViT-L text encoder) or "sd2" (OpenCLIP ViT-H)
  std::string prediction_type;  // "epsilon" or "v_prediction", as in scheduler_config_json
  // config.json texts in the diffusers layout (UNet2DConditionModel, AutoencoderKL,
  // CLIPTextModel, scheduler).
  std::string unet_config_json, vae_config_json, text_encoder_config_json, scheduler_config_json;
  Weights unet, vae, text_encoder;
};

// Reads the single-file checkpoint `path` (.safetensors) and maps every tensor the three
// components need to its diffusers name. Tensors stay in the file's mapping where
// `options.dtype` allows (see Weights::FromFile); packed OpenCLIP q/k/v projections become three
// views of the packed tensor and the VAE's 1x1-conv attention weights become linear views.
// Tensors no component uses (`model_ema.*`, `alphas_cumprod`, the OpenCLIP visual tower and
// text projection, the last OpenCLIP text block that SD2 skips) are ignored.
//
// `prediction_type` is "epsilon", "v_prediction" or "auto". With "auto", SD1 is epsilon; SD2 is
// decided by the file's `modelspec.prediction_type` metadata, else a `v_pred` marker tensor, else
// the spread of the last up block's first transformer norm bias (large in the 768-v models; the
// test ComfyUI uses), else epsilon.
//
// Configs are derived from the tensors; what the tensors cannot tell follows SD1.5 (8 heads per
// attention, 32 norm groups, 512 px) or SD2.1 (64-channel heads, 32 norm groups, 768 px for
// v-prediction models, 512 otherwise). The metadata keys `megaserve.unet_config`,
// `megaserve.vae_config`, `megaserve.text_encoder_config` and `megaserve.scheduler_config` may
// each hold a JSON object whose members replace or add to the derived config (tiny test
// checkpoints use them for head counts and norm groups).
//
// Throws WeightError when the file cannot be read, is not a Stable Diffusion checkpoint (the
// message lists the expected name prefixes and which are missing), or lacks a tensor the
// derived architecture needs (the message names it). Throws std::invalid_argument for an
// unknown `prediction_type`, malformed override metadata, or a head count that neither the rules
// nor the metadata determine.
CheckpointComponents LoadCheckpoint(const std::string& path, const ComputeOptions& options,
                                    std::string_view prediction_type = "auto");

}  // namespace megaserve::diffusion
