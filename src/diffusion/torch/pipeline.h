// Text-to-image with latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
// with Latent Diffusion Models"): the prompt and the negative prompt are encoded by CLIP, Gaussian
// latent noise drawn from a seeded generator is denoised by the UNet under the chosen sampler with
// classifier-free guidance (Ho & Salimans 2022: eps = eps_uncond + g * (eps_cond - eps_uncond),
// both halves computed as one batch of two), and the VAE decodes the latent to pixels.
//
// Noise: at::randn on a CPU generator seeded with the request's seed (PyTorch's CPU generator,
// a Mersenne Twister), shape [1, 4, H/8, W/8]; `torch.randn(shape, generator=torch.Generator()
// .manual_seed(seed))` in Python draws the same numbers. Ancestral and LCM samplers draw their
// per-step noise from the same generator, after the initial latent.
#pragma once

#include <memory>
#include <string>

#include "diffusion/engine.h"

namespace megaserve::diffusion {

// Loads a diffusers folder or a single-file checkpoint into a Pipeline. Throws (WeightError,
// std::invalid_argument, c10::Error) with a message naming the file and the problem.
std::unique_ptr<Pipeline> LoadPipeline(const LoadParams& params);

// The compute precision "auto" resolves to on this machine: "bf16" when the CPU has
// AVX512-BF16, else "fp32". (fp16 needs a CUDA build of libtorch.)
std::string AutoDtype();

}  // namespace megaserve::diffusion
