// How the libtorch components compute: precision, memory layout, attention memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace megaserve::diffusion {

struct ComputeOptions {
  // Weights and activations are converted to this type on load (kFloat, kBFloat16, kHalf).
  at::ScalarType dtype = at::kFloat;
  // Weights are moved here on load; inputs follow them.
  at::Device device = at::kCPU;
  // Convolution activations in channels-last memory format.
  bool channels_last = false;
  // Attention computed this many query rows of one head at a time; 0 picks blocks of about
  // 2M scores that stay in cache. Bounds the score memory to slice * keys elements.
  int64_t attention_slice = 0;
};

}  // namespace megaserve::diffusion
