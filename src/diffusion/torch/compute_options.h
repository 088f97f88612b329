// How the libtorch components compute: precision, memory layout, attention memory.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace megaserve::diffusion {

struct ComputeOptions {
  // Weights and activations are converted to this type on load (kFloat, kBFloat16, kHalf).
  at::ScalarType dtype = at::kFloat;
  // Convolution activations in channels-last memory format.
  bool channels_last = false;
  // Attention computed this many query rows at a time (0: all at once). Bounds the memory of
  // the [heads, queries, keys] score matrix to heads * slice * keys elements.
  int64_t attention_slice = 0;
};

}  // namespace megaserve::diffusion
