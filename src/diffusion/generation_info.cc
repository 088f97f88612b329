#include "diffusion/generation_info.h"

#include <fmt/format.h>

#include <utility>

namespace megaserve::diffusion {

std::string_view SamplerDisplayName(std::string_view scheduler) {
  static constexpr std::pair<std::string_view, std::string_view> kNames[] = {
      {"ddim", "DDIM"},
      {"euler", "Euler"},
      {"euler_a", "Euler a"},
      {"dpmpp_2m", "DPM++ 2M"},
      {"dpmpp_2m_karras", "DPM++ 2M Karras"},
      {"lcm", "LCM"},
  };
  for (const auto& [name, display] : kNames) {
    if (name == scheduler) return display;
  }
  return scheduler;
}

std::string ParametersText(const GenerateParams& p, std::string_view model_name) {
  std::string text = p.prompt;
  if (!p.negative_prompt.empty()) text += "\nNegative prompt: " + p.negative_prompt;
  text += fmt::format("\nSteps: {}, Sampler: {}, CFG scale: {:g}, Seed: {}, Size: {}x{}", p.steps,
                      SamplerDisplayName(p.scheduler), p.guidance, p.seed, p.width, p.height);
  if (!model_name.empty()) text += fmt::format(", Model: {}", model_name);
  // The web UI counts the last layer as "Clip skip: 1".
  if (p.clip_skip > 0) text += fmt::format(", Clip skip: {}", p.clip_skip + 1);
  return text;
}

}  // namespace megaserve::diffusion
