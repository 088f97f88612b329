#include "diffusion/generation_info.h"

#include <gtest/gtest.h>

namespace megaserve::diffusion {
namespace {

TEST(GenerationInfoTest, WritesTheWebUiParametersLayout) {
  GenerateParams p;
  p.prompt = "a lighthouse at dusk";
  p.negative_prompt = "blurry";
  p.steps = 25;
  p.scheduler = "dpmpp_2m_karras";
  p.guidance = 7;
  p.seed = 1234;
  p.width = 640;
  p.height = 384;
  EXPECT_EQ(ParametersText(p, "sd15"),
            "a lighthouse at dusk\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M Karras, "
            "CFG scale: 7, Seed: 1234, Size: 640x384, Model: sd15");
  p.negative_prompt.clear();
  p.guidance = 7.5;
  p.clip_skip = 1;
  p.scheduler = "euler_a";
  EXPECT_EQ(ParametersText(p, ""),
            "a lighthouse at dusk\nSteps: 25, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, "
            "Size: 640x384, Clip skip: 2");
}

TEST(GenerationInfoTest, SamplerNames) {
  EXPECT_EQ(SamplerDisplayName("ddim"), "DDIM");
  EXPECT_EQ(SamplerDisplayName("lcm"), "LCM");
  EXPECT_EQ(SamplerDisplayName("something"), "something");
}

}  // namespace
}  // namespace megaserve::diffusion
