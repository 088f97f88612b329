// Building blocks shared by the diffusion networks (UNet, VAE): dense and convolution layers,
// group normalisation fused with SiLU, the residual block of DDPM/latent diffusion
// (Ho et al. 2020; Rombach et al. 2022, "ResnetBlock2D" in diffusers) and multi-head scaled
// dot-product attention (Vaswani et al. 2017).
//
// Attention never materialises the whole [batch * heads, queries, keys] score tensor: it works
// one head and one block of query rows at a time, so that the block of scores stays in cache
// (softmax over a score tensor of a gigabyte is memory-bound) and memory stays bounded. Each
// query row's softmax is independent of the others, so blocking changes no result beyond
// floating-point summation order. The (batch, head, block) items are spread over the intra-op
// thread pool, each thread with its own score block; dense layers split their products over the
// same pool (parallel.h).
//
// Every layer loads its tensors by their diffusers names from a Weights map, checking shapes, so
// that a wrong file fails at load with the weight's name rather than deep inside a forward pass.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

#include "diffusion/torch/compute_options.h"
#include "diffusion/torch/weights.h"

namespace megaserve::diffusion {

// y = x W^T + b over the last dimension. `weight` is [out, in].
struct Linear {
  at::Tensor weight;
  at::Tensor bias;  // undefined when the layer has none

  // Loads `<prefix>.weight` [out, in] (and `<prefix>.bias` [out] when `with_bias`). Throws
  // WeightError when one is missing or misshapen.
  static Linear Load(const Weights& w, const std::string& prefix, int64_t in, int64_t out,
                     bool with_bias);
  // The layer applied to x [..., in]; returns [..., out]. Throws (c10::Error) on a width mismatch.
  at::Tensor Forward(const at::Tensor& x) const;
  // residual + Forward(x), accumulated into `residual` in place (no new tensor). `residual` must
  // be contiguous with x's leading shape and `out` columns, and owned by the caller.
  void AddTo(const at::Tensor& x, at::Tensor& residual) const;
};

// 2-D convolution with square kernel, zero padding and a bias, optionally in channels-last
// memory format (then inputs are converted too; a no-op when they already are).
//
// fp32 convolutions in the default layout keep their weight pre-reordered into oneDNN's
// blocked layout: at::conv2d would reorder the weight on every call, which costs 20-25% of a
// 640- or 1280-channel 3x3 convolution on an AVX2 CPU.
struct Conv2d {
  at::Tensor weight;  // [out, in, k, k]; undefined when `packed` holds it
  at::Tensor packed;  // oneDNN-layout weight, or undefined
  at::Tensor bias;    // [out]
  int64_t stride = 1;
  int64_t padding = 0;
  bool channels_last = false;

  // Loads `<prefix>.weight` [out, in, kernel, kernel] and `<prefix>.bias` [out]. Throws
  // WeightError when one is missing or misshapen.
  static Conv2d Load(const Weights& w, const std::string& prefix, int64_t in, int64_t out,
                     int64_t kernel, int64_t stride, int64_t padding,
                     const ComputeOptions& options);
  // The convolution of x [B, in, H, W]. Throws (c10::Error) on a channel mismatch.
  at::Tensor Forward(const at::Tensor& x) const;
};

// GroupNorm (Wu & He 2018) with a per-channel affine transform, optionally followed by SiLU.
struct GroupNorm {
  at::Tensor weight;
  at::Tensor bias;
  int64_t groups = 32;
  double eps = 1e-5;

  // Loads `<prefix>.weight` and `<prefix>.bias`, both [channels]. Throws std::invalid_argument
  // when `channels` is not a multiple of `groups`, WeightError for a missing/misshapen weight.
  static GroupNorm Load(const Weights& w, const std::string& prefix, int64_t channels,
                        int64_t groups, double eps);
  // Normalised x [B, C, ...]; with `silu` the SiLU is applied in place on the result.
  at::Tensor Forward(const at::Tensor& x, bool silu) const;
};

// LayerNorm over the last dimension with affine weight and bias.
struct LayerNorm {
  at::Tensor weight;
  at::Tensor bias;
  double eps = 1e-5;

  // Loads `<prefix>.weight` and `<prefix>.bias`, both [dim]. Throws WeightError otherwise.
  static LayerNorm Load(const Weights& w, const std::string& prefix, int64_t dim, double eps);
  at::Tensor Forward(const at::Tensor& x) const;
};

// diffusers' ResnetBlock2D with pre-norm, SiLU and "default" time-embedding handling:
//   h = conv1(silu(norm1(x))) + time_emb_proj(silu(temb))
//   out = (shortcut(x) + conv2(silu(norm2(h)))) / output_scale_factor
// where shortcut is a 1x1 conv_shortcut when the channel count changes, else identity.
struct ResnetBlock2D {
  GroupNorm norm1, norm2;
  Conv2d conv1, conv2;
  std::optional<Linear> time_emb_proj;
  std::optional<Conv2d> conv_shortcut;
  double output_scale_factor = 1.0;

  // Loads the block at `prefix` (e.g. "down_blocks.0.resnets.1"). `temb_channels` 0 means no
  // time embedding (as in the VAE). Throws WeightError / std::invalid_argument as the layers do.
  static ResnetBlock2D Load(const Weights& w, const std::string& prefix, int64_t in, int64_t out,
                            int64_t temb_channels, int64_t groups, double eps,
                            double output_scale_factor, const ComputeOptions& options);
  // x [B, in, H, W]; `temb_silu` = silu(time embedding) [B, temb_channels] (undefined when the
  // block has no time projection). Returns [B, out, H, W].
  at::Tensor Forward(const at::Tensor& x, const at::Tensor& temb_silu) const;
};

// Multi-head attention softmax(scale * Q K^T) V, heads side by side in the last dimension.
//   q: [B, N, heads * d], k: [B, M, heads * d], v: [B, M, heads * dv]. q, k, v may be strided
//   views (e.g. column slices of one fused QKV projection) as long as the last dimension has
//   unit stride.
// Returns [B, N, heads * dv], contiguous. `slice` > 0 computes `slice` query rows per step (the
// score buffer is then slice x M); 0 picks a cache-sized block. Softmax runs in fp32 for
// reduced-precision inputs. Throws std::invalid_argument on inconsistent shapes.
at::Tensor MultiHeadAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              int64_t heads, double scale, int64_t slice);

}  // namespace megaserve::diffusion
