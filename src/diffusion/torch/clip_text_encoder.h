// CLIP text encoder: turns token ids into the per-token hidden states that condition the
// Stable Diffusion UNet through cross-attention.
//
// The architecture is the text transformer of CLIP (Radford et al. 2021, "Learning Transferable
// Visual Models From Natural Language Supervision", section 2.4), a GPT-2-style pre-LayerNorm
// stack with causal self-attention:
//   h_0 = token_embedding[ids] + position_embedding[0..T)
//   h_i = h_{i-1} + SelfAttention(LN1_i(h_{i-1}))   (query t sees keys 0..t only)
//   h_i = h_i + fc2(act(fc1(LN2_i(h_i))))
//   out = final_layer_norm(h_L)
// with act the "quick GELU" x * sigmoid(1.702 x) for OpenAI's ViT-L/14 (Stable Diffusion 1.x)
// and the exact erf GELU for OpenCLIP's ViT-H/14 (Stable Diffusion 2.x). Weights and config use
// the names of Hugging Face transformers' CLIPTextModel, as found in a diffusers `text_encoder/`
// folder.
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

// The fields of a transformers CLIPTextConfig that shape the computation.
struct ClipTextConfig {
  enum class Activation { kQuickGelu, kGelu, kGeluTanh };

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t max_position_embeddings = 0;
  // "quick_gelu" (SD1), "gelu" (SD2), "gelu_new" / "gelu_pytorch_tanh" (tanh approximation).
  Activation hidden_act = Activation::kQuickGelu;
  double layer_norm_eps = 1e-5;

  // Parses the text of a config.json. The six size fields are required positive integers and
  // hidden_size must divide evenly among the heads; hidden_act and layer_norm_eps are optional
  // (transformers' defaults: "quick_gelu", 1e-5); other fields are ignored. Throws
  // std::invalid_argument naming `source` and the offending field.
  static ClipTextConfig FromJson(std::string_view json, const std::string& source = "config.json");
  // Reads and parses `path`. Throws std::invalid_argument when it cannot be read or is invalid.
  static ClipTextConfig FromFile(const std::filesystem::path& path);
};

class ClipTextEncoder {
 public:
  // Loads a diffusers `text_encoder/` folder: `dir`/config.json and the weights of
  // `dir`/model.safetensors, or `dir`/model.fp16.safetensors when the first is absent. Weights
  // are converted to `options.dtype`. Throws std::invalid_argument for a bad config or a folder
  // without a weights file, WeightError for a missing or misshapen weight.
  static std::unique_ptr<ClipTextEncoder> Load(const std::filesystem::path& dir,
                                               const ComputeOptions& options);

  // Takes the tensors it needs from `weights` (other tensors, such as the position_ids buffer of
  // older checkpoints, are ignored), checking every shape against `config` and converting to
  // `options.dtype`. Throws WeightError naming the first missing or misshapen weight.
  ClipTextEncoder(const ClipTextConfig& config, const Weights& weights,
                  const ComputeOptions& options);

  ClipTextEncoder(const ClipTextEncoder&) = delete;
  ClipTextEncoder& operator=(const ClipTextEncoder&) = delete;

  // Hidden states [B, T, hidden_size] in options.dtype for integer token ids [B, T] (T at most
  // max_position_embeddings). Only the causal mask applies: padding tokens are attended to, as in
  // the Stable Diffusion pipelines.
  //
  // clip_skip = 0 returns the last layer's output through final_layer_norm (transformers'
  // `last_hidden_state`). clip_skip = k > 0 runs only the first num_hidden_layers - k layers and
  // applies final_layer_norm to that output, exactly what diffusers does for `clip_skip=k`
  // (hidden_states[-(k + 1)] then final_layer_norm). k = 1 is the penultimate layer that SD2's
  // original code uses and that the A1111 web UI calls "CLIP skip 2"; A1111's setting N is k = N
  // - 1.
  //
  // Throws std::invalid_argument for ids of the wrong rank or type, out of [0, vocab_size), a
  // sequence longer than max_position_embeddings, or clip_skip outside [0, num_hidden_layers).
  // Inference only: the caller holds at::InferenceMode (or NoGradGuard).
  at::Tensor Encode(const at::Tensor& input_ids, int clip_skip = 0) const;

  // Bytes of the weights held.
  std::size_t bytes() const;
  const ClipTextConfig& config() const { return config_; }

 private:
  struct Layer {
    at::Tensor norm1_weight, norm1_bias;
    at::Tensor qkv_weight, qkv_bias;  // q, k and v projections stacked: one GEMM instead of three
    at::Tensor out_weight, out_bias;
    at::Tensor norm2_weight, norm2_bias;
    at::Tensor fc1_weight, fc1_bias, fc2_weight, fc2_bias;
  };

  at::Tensor RunLayer(const Layer& layer, const at::Tensor& hidden, const at::Tensor& mask) const;
  at::Tensor Activate(const at::Tensor& x) const;

  ClipTextConfig config_;
  ComputeOptions options_;
  at::Tensor token_embedding_, position_embedding_;
  std::vector<Layer> layers_;
  at::Tensor final_norm_weight_, final_norm_bias_;
};

}  // namespace megaserve::diffusion
