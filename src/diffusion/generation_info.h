// The generation parameters as text, in the layout AUTOMATIC1111's web UI writes into a PNG's
// "parameters" chunk (and reads back with "PNG Info"):
//
//   <prompt>
//   Negative prompt: <negative prompt>        (only when there is one)
//   Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15
#pragma once

#include <string>
#include <string_view>

#include "diffusion/engine.h"

namespace megaserve::diffusion {

// The sampler's display name in that layout ("euler_a" -> "Euler a"); unknown names unchanged.
std::string_view SamplerDisplayName(std::string_view scheduler);

// The parameters text for one generation with the model called `model_name`.
std::string ParametersText(const GenerateParams& params, std::string_view model_name);

}  // namespace megaserve::diffusion
