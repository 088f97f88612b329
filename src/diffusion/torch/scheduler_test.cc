// Tests of the diffusion samplers against values worked out here with plain double arithmetic
// from the published update equations (not by calling the code under test), plus a run of whole
// sampling loops against tests/diffusion/ref_schedulers.py, an independent numpy/torch
// transcription of diffusers' schedulers.
#include "diffusion/torch/scheduler.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

// Stable Diffusion 1.5's schedule in double: betas = linspace(sqrt(0.00085), sqrt(0.012))^2.
// The code under test works in float32 like diffusers, hence the ~1e-6 relative tolerances.
std::vector<double> Sd15AlphasCumprod() {
  const double lo = std::sqrt(0.00085), hi = std::sqrt(0.012);
  std::vector<double> ac(1000);
  double prod = 1.0;
  for (int i = 0; i < 1000; ++i) {
    const double root = lo + (hi - lo) * i / 999.0;
    prod *= 1.0 - root * root;
    ac[i] = prod;
  }
  return ac;
}

double SigmaOf(double a) { return std::sqrt((1 - a) / a); }

// A tiny 1x2x1x2 latent from four numbers.
at::Tensor Tiny(double a, double b, double c, double d) {
  return at::tensor({a, b, c, d}, at::TensorOptions().dtype(at::kDouble))
      .to(at::kFloat)
      .reshape({1, 2, 1, 2});
}

std::vector<double> Values(const at::Tensor& t) {
  at::Tensor flat = t.to(at::kDouble).contiguous().reshape({-1});
  return std::vector<double>(flat.data_ptr<double>(), flat.data_ptr<double>() + flat.numel());
}

void ExpectValuesNear(const at::Tensor& actual, const std::vector<double>& expected, double tol) {
  const std::vector<double> got = Values(actual);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], tol) << "element " << i;
}

// Applies f elementwise to the values of two tiny tensors.
std::vector<double> Map(const at::Tensor& x, const at::Tensor& y,
                        const std::function<double(double, double)>& f) {
  const std::vector<double> a = Values(x), b = Values(y);
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = f(a[i], b[i]);
  return out;
}

SchedulerConfig WithSpacing(TimestepSpacing spacing) {
  SchedulerConfig c;
  c.timestep_spacing = spacing;
  return c;
}

// ---------------------------------------------------------------------------------------------
// Config

TEST(SchedulerTest, ConfigDefaultsAreStableDiffusion15) {
  const SchedulerConfig c = SchedulerConfig::FromJson("{}");
  EXPECT_EQ(c.num_train_timesteps, 1000);
  EXPECT_DOUBLE_EQ(c.beta_start, 0.00085);
  EXPECT_DOUBLE_EQ(c.beta_end, 0.012);
  EXPECT_EQ(c.beta_schedule, BetaSchedule::kScaledLinear);
  EXPECT_EQ(c.prediction_type, PredictionType::kEpsilon);
  EXPECT_FALSE(c.timestep_spacing.has_value());
  EXPECT_EQ(c.steps_offset, 1);
  EXPECT_FALSE(c.set_alpha_to_one);
  EXPECT_FALSE(c.clip_sample);
  EXPECT_FALSE(c.use_karras_sigmas);
  EXPECT_EQ(c.original_inference_steps, 50);
  EXPECT_DOUBLE_EQ(c.timestep_scaling, 10.0);
}

TEST(SchedulerTest, ConfigParsesDiffusersFields) {
  const SchedulerConfig c = SchedulerConfig::FromJson(R"({
    "_class_name": "SomeUnknownScheduler", "_diffusers_version": "0.30.0",
    "num_train_timesteps": 500, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 0,
    "set_alpha_to_one": true, "clip_sample": true, "clip_sample_range": 2.5,
    "use_karras_sigmas": true, "original_inference_steps": 25, "timestep_scaling": 5,
    "trained_betas": null, "skip_prk_steps": true, "thresholding": false})");
  EXPECT_EQ(c.num_train_timesteps, 500);
  EXPECT_DOUBLE_EQ(c.beta_start, 0.0001);
  EXPECT_DOUBLE_EQ(c.beta_end, 0.02);
  EXPECT_EQ(c.beta_schedule, BetaSchedule::kLinear);
  EXPECT_EQ(c.prediction_type, PredictionType::kVPrediction);
  EXPECT_EQ(c.timestep_spacing, TimestepSpacing::kTrailing);
  EXPECT_EQ(c.steps_offset, 0);
  EXPECT_TRUE(c.set_alpha_to_one);
  EXPECT_TRUE(c.clip_sample);
  EXPECT_DOUBLE_EQ(c.clip_sample_range, 2.5);
  EXPECT_TRUE(c.use_karras_sigmas);
  EXPECT_EQ(c.original_inference_steps, 25);
  EXPECT_DOUBLE_EQ(c.timestep_scaling, 5.0);
  EXPECT_TRUE(c.trained_betas.empty());
}

TEST(SchedulerTest, ConfigErrorsNameSourceAndField) {
  auto message = [](const std::string& json) -> std::string {
    try {
      SchedulerConfig::FromJson(json, "model/scheduler/scheduler_config.json");
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_NE(message(R"({"beta_schedule": "cubic"})").find("beta_schedule"), std::string::npos);
  EXPECT_NE(message(R"({"beta_schedule": "cubic"})").find("model/scheduler/scheduler_config.json"),
            std::string::npos);
  EXPECT_NE(message(R"({"prediction_type": "noise"})").find("prediction_type"), std::string::npos);
  EXPECT_NE(message(R"({"timestep_spacing": "even"})").find("timestep_spacing"), std::string::npos);
  EXPECT_NE(message(R"({"steps_offset": "1"})").find("steps_offset"), std::string::npos);
  EXPECT_NE(message(R"({"num_train_timesteps": 10.5})").find("num_train_timesteps"),
            std::string::npos);
  EXPECT_NE(message(R"({"trained_betas": [0.1, 0.2]})").find("trained_betas"), std::string::npos);
  EXPECT_NE(message(R"({"thresholding": true})").find("thresholding"), std::string::npos);
  EXPECT_NE(message("{not json").find("invalid JSON"), std::string::npos);
  EXPECT_THROW(SchedulerConfig::FromFile("/nonexistent/scheduler_config.json"),
               std::invalid_argument);
}

TEST(SchedulerTest, ConfigFromFile) {
  const std::filesystem::path dir = testing::MakeTempDir("scheduler");
  ASSERT_FALSE(dir.empty());
  const std::filesystem::path file = dir / "scheduler_config.json";
  std::ofstream(file) << R"({"beta_schedule": "squaredcos_cap_v2", "steps_offset": 0})";
  const SchedulerConfig c = SchedulerConfig::FromFile(file.string());
  EXPECT_EQ(c.beta_schedule, BetaSchedule::kSquaredCosCapV2);
  EXPECT_EQ(c.steps_offset, 0);
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Training schedules

TEST(SchedulerTest, ScaledLinearAlphasCumprodMatchFormula) {
  const auto s = MakeScheduler("ddim", SchedulerConfig{});
  const std::vector<double> expected = Sd15AlphasCumprod();
  ASSERT_EQ(s->alphas_cumprod().size(), 1000u);
  for (int t : {0, 1, 250, 500, 801, 901, 999}) {
    EXPECT_NEAR(s->alphas_cumprod()[t], expected[t], 2e-6 * expected[t]) << "t = " << t;
  }
  EXPECT_NEAR(s->alphas_cumprod()[0], 1 - 0.00085, 1e-7);
  // The well-known SD sigma range.
  EXPECT_NEAR(SigmaOf(s->alphas_cumprod()[999]), 14.6146, 1e-3);
  EXPECT_NEAR(SigmaOf(s->alphas_cumprod()[0]), 0.0292, 1e-4);
}

TEST(SchedulerTest, LinearAndCosineAlphasCumprod) {
  SchedulerConfig linear;
  linear.beta_schedule = BetaSchedule::kLinear;
  linear.beta_start = 0.0001;
  linear.beta_end = 0.02;
  const auto l = MakeScheduler("ddim", linear);
  const double b1 = 0.0001 + (0.02 - 0.0001) / 999.0;
  EXPECT_NEAR(l->alphas_cumprod()[1], (1 - 0.0001) * (1 - b1), 1e-7);

  SchedulerConfig cosine;
  cosine.beta_schedule = BetaSchedule::kSquaredCosCapV2;
  const auto c = MakeScheduler("ddim", cosine);
  // With uncapped betas, alphas_cumprod telescopes to alpha_bar(t+1 / T) / alpha_bar(0).
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  EXPECT_NEAR(c->alphas_cumprod()[499], alpha_bar(0.5) / alpha_bar(0.0), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// Timesteps

TEST(SchedulerTest, DdimLeadingTimestepsSd15) {
  const auto s = MakeScheduler("ddim", SchedulerConfig{});
  s->SetTimesteps(10);
  EXPECT_EQ(s->timesteps(), (std::vector<double>{901, 801, 701, 601, 501, 401, 301, 201, 101, 1}));
  EXPECT_DOUBLE_EQ(s->init_noise_sigma(), 1.0);
}

TEST(SchedulerTest, DdimTrailingAndLinspaceTimesteps) {
  auto trailing = MakeScheduler("ddim", WithSpacing(TimestepSpacing::kTrailing));
  trailing->SetTimesteps(10);
  EXPECT_EQ(trailing->timesteps(),
            (std::vector<double>{999, 899, 799, 699, 599, 499, 399, 299, 199, 99}));
  // 16 steps: 1000 - 62.5 i hits .5 ties, which numpy rounds to even (937.5 -> 938, 812.5 -> 812).
  trailing->SetTimesteps(16);
  ASSERT_EQ(trailing->timesteps().size(), 16u);
  EXPECT_EQ(trailing->timesteps()[1], 937);
  EXPECT_EQ(trailing->timesteps()[3], 811);
  EXPECT_EQ(trailing->timesteps()[15], 62 - 1);  // 62.5 -> 62

  auto linspace = MakeScheduler("ddim", WithSpacing(TimestepSpacing::kLinspace));
  linspace->SetTimesteps(10);
  EXPECT_EQ(linspace->timesteps(),
            (std::vector<double>{999, 888, 777, 666, 555, 444, 333, 222, 111, 0}));
  linspace->SetTimesteps(3);  // 0, 499.5, 999 -> 499.5 rounds to the even 500
  EXPECT_EQ(linspace->timesteps(), (std::vector<double>{999, 500, 0}));
}

TEST(SchedulerTest, EulerSigmasAndInitNoiseSigma20Steps) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  // Without timestep_spacing in the config, Euler uses diffusers' default for it: linspace.
  const auto euler = MakeScheduler("euler", SchedulerConfig{});
  euler->SetTimesteps(20);
  ASSERT_EQ(euler->timesteps().size(), 20u);
  EXPECT_DOUBLE_EQ(euler->timesteps()[0], 999.0);
  EXPECT_NEAR(euler->timesteps()[1], 999.0 * 18 / 19, 1e-4);  // 946.42...: fractional
  EXPECT_DOUBLE_EQ(euler->timesteps()[19], 0.0);
  const auto& sigmas = dynamic_cast<EulerScheduler&>(*euler).sigmas();
  ASSERT_EQ(sigmas.size(), 21u);
  EXPECT_NEAR(sigmas[0], SigmaOf(ac[999]), 2e-5);
  // Linear interpolation of sigma between timesteps 946 and 947.
  const double t1 = 999.0 * 18 / 19;
  const double expected1 = SigmaOf(ac[946]) + (t1 - 946) * (SigmaOf(ac[947]) - SigmaOf(ac[946]));
  EXPECT_NEAR(sigmas[1], expected1, 2e-5);
  EXPECT_EQ(sigmas[20], 0.0);
  // linspace/trailing: init_noise_sigma is sigma_max itself (current diffusers).
  EXPECT_NEAR(euler->init_noise_sigma(), SigmaOf(ac[999]), 2e-5);

  const auto leading = MakeScheduler("euler", WithSpacing(TimestepSpacing::kLeading));
  leading->SetTimesteps(20);
  EXPECT_DOUBLE_EQ(leading->timesteps()[0], 951.0);  // 19 * 50 + steps_offset 1
  EXPECT_DOUBLE_EQ(leading->timesteps()[19], 1.0);
  const double s951 = SigmaOf(ac[951]);
  EXPECT_NEAR(leading->init_noise_sigma(), std::sqrt(s951 * s951 + 1), 2e-5);
}

// sigma(t) by linear interpolation of the double schedule, and its inverse by bisection in
// log sigma: an independent version of the Karras timestep lookup.
double LogSigmaAt(const std::vector<double>& ac, double t) {
  const int lo = std::min(static_cast<int>(std::floor(t)), 998);
  const double w = t - lo;
  return (1 - w) * std::log(SigmaOf(ac[lo])) + w * std::log(SigmaOf(ac[lo + 1]));
}
double TimestepOfSigma(const std::vector<double>& ac, double sigma) {
  double lo = 0, hi = 999;
  for (int i = 0; i < 100; ++i) {
    const double mid = (lo + hi) / 2;
    (LogSigmaAt(ac, mid) < std::log(sigma) ? lo : hi) = mid;
  }
  return lo;
}

TEST(SchedulerTest, KarrasSigmasFiveSteps) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const double max = SigmaOf(ac[999]), min = SigmaOf(ac[0]);
  std::vector<double> expected;
  for (int i = 0; i < 5; ++i) {
    const double r = i / 4.0;
    expected.push_back(std::pow(
        std::pow(max, 1 / 7.0) + r * (std::pow(min, 1 / 7.0) - std::pow(max, 1 / 7.0)), 7));
  }
  const auto dpm = MakeScheduler("dpmpp_2m_karras", SchedulerConfig{});
  dpm->SetTimesteps(5);
  const auto& sigmas = dynamic_cast<DpmSolverMultistepScheduler&>(*dpm).sigmas();
  ASSERT_EQ(sigmas.size(), 6u);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(sigmas[i], expected[i], 2e-5 * expected[i]) << i;
  EXPECT_EQ(sigmas[5], 0.0);
  // Integer timesteps: the log-sigma interpolated timestep of each sigma, rounded.
  ASSERT_EQ(dpm->timesteps().size(), 5u);
  EXPECT_EQ(dpm->timesteps()[0], 999);
  EXPECT_EQ(dpm->timesteps()[4], 0);
  for (int i = 1; i < 4; ++i) {
    EXPECT_NEAR(dpm->timesteps()[i], TimestepOfSigma(ac, expected[i]), 0.51) << i;
    EXPECT_EQ(dpm->timesteps()[i], std::round(dpm->timesteps()[i]));
  }

  // The same ramp through the config flag, for dpmpp_2m and euler (whose timesteps stay
  // fractional).
  SchedulerConfig flagged;
  flagged.use_karras_sigmas = true;
  const auto dpm_flag = MakeScheduler("dpmpp_2m", flagged);
  dpm_flag->SetTimesteps(5);
  EXPECT_EQ(dynamic_cast<DpmSolverMultistepScheduler&>(*dpm_flag).sigmas(), sigmas);
  const auto euler = MakeScheduler("euler", flagged);
  euler->SetTimesteps(5);
  const auto& euler_sigmas = dynamic_cast<EulerScheduler&>(*euler).sigmas();
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(euler_sigmas[i], expected[i], 2e-5 * expected[i]) << i;
  EXPECT_NEAR(euler->timesteps()[2], TimestepOfSigma(ac, expected[2]), 1e-2);
  EXPECT_NE(euler->timesteps()[2], std::round(euler->timesteps()[2]));
}

TEST(SchedulerTest, DpmTimestepSpacings) {
  const auto linspace = MakeScheduler("dpmpp_2m", SchedulerConfig{});
  linspace->SetTimesteps(3);  // linspace(0, 999, 4) = 0, 333, 666, 999 without the 0
  EXPECT_EQ(linspace->timesteps(), (std::vector<double>{999, 666, 333}));
  const auto leading = MakeScheduler("dpmpp_2m", WithSpacing(TimestepSpacing::kLeading));
  leading->SetTimesteps(3);  // ratio 1000 // 4 = 250; + steps_offset
  EXPECT_EQ(leading->timesteps(), (std::vector<double>{751, 501, 251}));
  const auto trailing = MakeScheduler("dpmpp_2m", WithSpacing(TimestepSpacing::kTrailing));
  trailing->SetTimesteps(4);
  EXPECT_EQ(trailing->timesteps(), (std::vector<double>{999, 749, 499, 249}));
}

TEST(SchedulerTest, LcmTimestepsFourSteps) {
  const auto lcm = MakeScheduler("lcm", SchedulerConfig{});
  lcm->SetTimesteps(4);
  // Every 20th timestep (k = 1000 / 50), descending: 999, 979, ..., 19; entries 0, 12, 25, 37.
  EXPECT_EQ(lcm->timesteps(), (std::vector<double>{999, 759, 499, 259}));
  lcm->SetTimesteps(1);
  EXPECT_EQ(lcm->timesteps(), (std::vector<double>{999}));
  EXPECT_DOUBLE_EQ(lcm->init_noise_sigma(), 1.0);
}

// ---------------------------------------------------------------------------------------------
// Updates

TEST(SchedulerTest, DdimStepByHand) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const auto s = MakeScheduler("ddim", SchedulerConfig{});
  s->SetTimesteps(10);
  const at::Tensor x = Tiny(1.0, -0.5, 0.25, 2.0);
  const at::Tensor eps = Tiny(0.2, 0.1, -0.3, 0.5);
  // Step 0: t = 901 -> 801. x0 = (x - sqrt(1-a) eps) / sqrt(a); x' = sqrt(a') x0 + sqrt(1-a') eps.
  const double a = ac[901], ap = ac[801];
  ExpectValuesNear(s->Step(eps, 0, x, at::Generator()),
                   Map(x, eps,
                       [&](double xv, double e) {
                         const double x0 = (xv - std::sqrt(1 - a) * e) / std::sqrt(a);
                         return std::sqrt(ap) * x0 + std::sqrt(1 - ap) * e;
                       }),
                   2e-5);
  // Last step: t = 1 -> -99, which takes final_alpha_cumprod = alphas_cumprod[0] (SD's
  // set_alpha_to_one false).
  ExpectValuesNear(s->Step(eps, 9, x, at::Generator()),
                   Map(x, eps,
                       [&](double xv, double e) {
                         const double x0 = (xv - std::sqrt(1 - ac[1]) * e) / std::sqrt(ac[1]);
                         return std::sqrt(ac[0]) * x0 + std::sqrt(1 - ac[0]) * e;
                       }),
                   2e-5);
  // With set_alpha_to_one the last step returns x0 itself.
  SchedulerConfig one;
  one.set_alpha_to_one = true;
  const auto s1 = MakeScheduler("ddim", one);
  s1->SetTimesteps(10);
  ExpectValuesNear(
      s1->Step(eps, 9, x, at::Generator()),
      Map(x, eps,
          [&](double xv, double e) { return (xv - std::sqrt(1 - ac[1]) * e) / std::sqrt(ac[1]); }),
      2e-5);
}

TEST(SchedulerTest, DdimVPredictionAndSamplePrediction) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const at::Tensor x = Tiny(1.0, -0.5, 0.25, 2.0);
  const at::Tensor out = Tiny(0.2, 0.1, -0.3, 0.5);
  const double a = ac[501], ap = ac[401];
  SchedulerConfig v;
  v.prediction_type = PredictionType::kVPrediction;
  const auto sv = MakeScheduler("ddim", v);
  sv->SetTimesteps(10);
  // v = sqrt(a) eps - sqrt(1-a) x0  =>  x0 = sqrt(a) x - sqrt(1-a) v, eps = sqrt(a) v + sqrt(1-a)
  // x.
  ExpectValuesNear(sv->Step(out, 4, x, at::Generator()),
                   Map(x, out,
                       [&](double xv, double vv) {
                         const double x0 = std::sqrt(a) * xv - std::sqrt(1 - a) * vv;
                         const double e = std::sqrt(a) * vv + std::sqrt(1 - a) * xv;
                         return std::sqrt(ap) * x0 + std::sqrt(1 - ap) * e;
                       }),
                   2e-5);
  SchedulerConfig sample;
  sample.prediction_type = PredictionType::kSample;
  const auto ss = MakeScheduler("ddim", sample);
  ss->SetTimesteps(10);
  ExpectValuesNear(ss->Step(out, 4, x, at::Generator()),
                   Map(x, out,
                       [&](double xv, double x0) {
                         const double e = (xv - std::sqrt(a) * x0) / std::sqrt(1 - a);
                         return std::sqrt(ap) * x0 + std::sqrt(1 - ap) * e;
                       }),
                   2e-5);
}

TEST(SchedulerTest, DdimClipSample) {
  SchedulerConfig c;
  c.clip_sample = true;
  c.set_alpha_to_one = true;
  const auto s = MakeScheduler("ddim", c);
  s->SetTimesteps(10);
  // At the last step (alpha' = 1) the result is x0, here clipped to [-1, 1].
  const at::Tensor x = Tiny(3.0, -3.0, 0.5, 0.0);
  const at::Tensor eps = at::zeros_like(x);
  const double a = Sd15AlphasCumprod()[1];
  ExpectValuesNear(s->Step(eps, 9, x, at::Generator()), {1.0, -1.0, 0.5 / std::sqrt(a), 0.0}, 2e-5);
}

TEST(SchedulerTest, EulerStepAndScaleByHand) {
  const auto euler = MakeScheduler("euler", SchedulerConfig{});
  euler->SetTimesteps(20);
  const auto& sigmas = dynamic_cast<EulerScheduler&>(*euler).sigmas();
  const at::Tensor x = Tiny(10.0, -5.0, 2.5, 20.0);
  const at::Tensor eps = Tiny(0.2, 0.1, -0.3, 0.5);
  const double s0 = sigmas[0], s1 = sigmas[1];
  ExpectValuesNear(euler->ScaleModelInput(x, 0),
                   Map(x, x, [&](double xv, double) { return xv / std::sqrt(s0 * s0 + 1); }), 1e-6);
  // epsilon: d = eps, x' = x + eps (sigma_1 - sigma_0).
  ExpectValuesNear(euler->Step(eps, 0, x, at::Generator()),
                   Map(x, eps, [&](double xv, double e) { return xv + e * (s1 - s0); }), 2e-5);
  // Last step goes to sigma 0, i.e. returns x0 = x - sigma eps.
  const double sl = sigmas[19];
  ExpectValuesNear(euler->Step(eps, 19, x, at::Generator()),
                   Map(x, eps, [&](double xv, double e) { return xv - sl * e; }), 2e-5);

  SchedulerConfig v;
  v.prediction_type = PredictionType::kVPrediction;
  const auto ev = MakeScheduler("euler", v);
  ev->SetTimesteps(20);
  // x0 = -sigma/sqrt(sigma^2+1) v + x/(sigma^2+1); x' = x + (x - x0)/sigma (sigma_1 - sigma_0).
  ExpectValuesNear(ev->Step(eps, 0, x, at::Generator()),
                   Map(x, eps,
                       [&](double xv, double vv) {
                         const double x0 = -s0 / std::sqrt(s0 * s0 + 1) * vv + xv / (s0 * s0 + 1);
                         return xv + (xv - x0) / s0 * (s1 - s0);
                       }),
                   2e-5);
}

TEST(SchedulerTest, EulerAncestralByHandAndReproducible) {
  const auto ea = MakeScheduler("euler_a", SchedulerConfig{});
  ea->SetTimesteps(10);
  const auto& sigmas = dynamic_cast<EulerScheduler&>(*ea).sigmas();
  const at::Tensor x = Tiny(10.0, -5.0, 2.5, 20.0);
  const at::Tensor eps = Tiny(0.2, 0.1, -0.3, 0.5);
  const at::Tensor a = ea->Step(eps, 2, x, at::make_generator<at::CPUGeneratorImpl>(7));
  const at::Tensor b = ea->Step(eps, 2, x, at::make_generator<at::CPUGeneratorImpl>(7));
  const at::Tensor c = ea->Step(eps, 2, x, at::make_generator<at::CPUGeneratorImpl>(8));
  EXPECT_TRUE(at::equal(a, b));
  EXPECT_GT((a - c).abs().max().item<double>(), 1e-3);

  // sigma_up = sqrt(to^2 (from^2 - to^2) / from^2), sigma_down = sqrt(to^2 - sigma_up^2),
  // x' = x + eps (sigma_down - from) + noise sigma_up with noise ~ randn(seed 7).
  const double from = sigmas[2], to = sigmas[3];
  const double up = std::sqrt(to * to * (from * from - to * to) / (from * from));
  const double down = std::sqrt(to * to - up * up);
  const at::Tensor noise = at::randn({1, 2, 1, 2}, at::make_generator<at::CPUGeneratorImpl>(7));
  std::vector<double> expected =
      Map(x, eps, [&](double xv, double e) { return xv + e * (down - from); });
  const std::vector<double> n = Values(noise);
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += n[i] * up;
  ExpectValuesNear(a, expected, 2e-5);
}

TEST(SchedulerTest, DpmSolverPlusPlus2MThreeStepsByHand) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const auto dpm = MakeScheduler("dpmpp_2m", SchedulerConfig{});
  dpm->SetTimesteps(3);  // timesteps 999, 666, 333; sigmas s(999), s(666), s(333), 0
  const double sig[4] = {SigmaOf(ac[999]), SigmaOf(ac[666]), SigmaOf(ac[333]), 0.0};
  auto alpha = [](double s) { return 1 / std::sqrt(s * s + 1); };
  auto lambda = [&](double s) { return std::log(alpha(s)) - std::log(s * alpha(s)); };

  const at::Tensor x_init = Tiny(10.0, -5.0, 2.5, 20.0) / std::sqrt(sig[0] * sig[0] + 1);
  const at::Tensor eps[3] = {Tiny(0.2, 0.1, -0.3, 0.5), Tiny(0.4, -0.2, 0.1, 0.3),
                             Tiny(-0.1, 0.3, 0.2, 0.6)};
  std::vector<double> x = Values(x_init), x0_prev;
  std::vector<at::Tensor> outputs;
  at::Tensor sample = x_init;
  for (int i = 0; i < 3; ++i) {
    sample = dpm->Step(eps[i], i, sample, at::Generator());
    outputs.push_back(sample);
    const std::vector<double> e = Values(eps[i]);
    const double as = alpha(sig[i]), ss = sig[i] * as;
    const double h = (i == 2 ? INFINITY : lambda(sig[i + 1])) - lambda(sig[i]);
    const double at_ = alpha(sig[i + 1]), st = sig[i + 1] * at_;
    std::vector<double> x0(4), next(4);
    for (int k = 0; k < 4; ++k) {
      x0[k] = (x[k] - ss * e[k]) / as;
      // First order: x_t = (sigma_t / sigma_s) x - alpha_t (e^-h - 1) x0.
      next[k] = st / ss * x[k] - at_ * (std::exp(-h) - 1) * x0[k];
      if (i == 1) {  // second order in the middle; first order at both ends
        const double r0 = (lambda(sig[1]) - lambda(sig[0])) / h;
        next[k] -= 0.5 * at_ * (std::exp(-h) - 1) * (x0[k] - x0_prev[k]) / r0;
      }
    }
    ExpectValuesNear(sample, next, 5e-5);
    if (i == 2) ExpectValuesNear(sample, x0, 5e-5);  // the final step lands on x0
    x = next;
    x0_prev = x0;
  }

  // Starting again (SetTimesteps) forgets the history: step 1 alone is first order.
  dpm->SetTimesteps(3);
  const at::Tensor fresh = dpm->Step(eps[1], 1, outputs[0], at::Generator());
  EXPECT_GT((fresh - outputs[1]).abs().max().item<double>(), 1e-4);
}

TEST(SchedulerTest, DpmVPrediction) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  SchedulerConfig v;
  v.prediction_type = PredictionType::kVPrediction;
  const auto dpm = MakeScheduler("dpmpp_2m", v);
  dpm->SetTimesteps(3);
  const at::Tensor x = Tiny(1.0, -0.5, 0.25, 2.0);
  const at::Tensor out = Tiny(0.2, 0.1, -0.3, 0.5);
  // At the last step the result is x0 = alpha x - sigma_vp v with alpha = sqrt(a_333).
  const double a = ac[333];
  ExpectValuesNear(
      dpm->Step(out, 2, x, at::Generator()),
      Map(x, out, [&](double xv, double vv) { return std::sqrt(a) * xv - std::sqrt(1 - a) * vv; }),
      2e-5);
}

TEST(SchedulerTest, LcmStepByHand) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const auto lcm = MakeScheduler("lcm", SchedulerConfig{});
  lcm->SetTimesteps(4);
  const at::Tensor x = Tiny(1.0, -0.5, 0.25, 2.0);
  const at::Tensor eps = Tiny(0.2, 0.1, -0.3, 0.5);
  auto denoised = [&](int t, double scaling) {
    const double ts = t * scaling;
    const double c_skip = 0.25 / (ts * ts + 0.25), c_out = ts / std::sqrt(ts * ts + 0.25);
    return Map(x, eps, [&](double xv, double e) {
      const double x0 = (xv - std::sqrt(1 - ac[t]) * e) / std::sqrt(ac[t]);
      return c_out * x0 + c_skip * xv;
    });
  };
  // The last step returns the consistency estimate itself.
  ExpectValuesNear(lcm->Step(eps, 3, x, at::Generator()), denoised(259, 10.0), 2e-5);
  // At the default timestep_scaling c_skip is ~1e-8; a small one makes both scalings matter.
  SchedulerConfig small;
  small.timestep_scaling = 0.01;
  const auto lcm_small = MakeScheduler("lcm", small);
  lcm_small->SetTimesteps(4);
  ExpectValuesNear(lcm_small->Step(eps, 3, x, at::Generator()), denoised(259, 0.01), 2e-5);
  // Earlier steps re-noise it to the next timestep (759 -> 499) with noise from `gen`.
  const at::Tensor out = lcm->Step(eps, 1, x, at::make_generator<at::CPUGeneratorImpl>(3));
  const std::vector<double> noise =
      Values(at::randn({1, 2, 1, 2}, at::make_generator<at::CPUGeneratorImpl>(3)));
  std::vector<double> expected = denoised(759, 10.0);
  for (size_t i = 0; i < expected.size(); ++i) {
    expected[i] = std::sqrt(ac[499]) * expected[i] + std::sqrt(1 - ac[499]) * noise[i];
  }
  ExpectValuesNear(out, expected, 2e-5);
}

TEST(SchedulerTest, AddNoise) {
  const std::vector<double> ac = Sd15AlphasCumprod();
  const at::Tensor x0 = Tiny(1.0, -0.5, 0.25, 2.0);
  const at::Tensor noise = Tiny(0.2, 0.1, -0.3, 0.5);
  const auto ddim = MakeScheduler("ddim", SchedulerConfig{});
  ddim->SetTimesteps(10);
  ExpectValuesNear(
      ddim->AddNoise(x0, noise, 2),
      Map(x0, noise,
          [&](double a, double n) { return std::sqrt(ac[701]) * a + std::sqrt(1 - ac[701]) * n; }),
      2e-6);
  const auto euler = MakeScheduler("euler", SchedulerConfig{});
  euler->SetTimesteps(10);
  const double s = dynamic_cast<EulerScheduler&>(*euler).sigmas()[2];
  ExpectValuesNear(euler->AddNoise(x0, noise, 2),
                   Map(x0, noise, [&](double a, double n) { return a + s * n; }), 1e-6);
  const auto dpm = MakeScheduler("dpmpp_2m", SchedulerConfig{});
  dpm->SetTimesteps(3);  // step 1 is timestep 666
  ExpectValuesNear(
      dpm->AddNoise(x0, noise, 1),
      Map(x0, noise,
          [&](double a, double n) { return std::sqrt(ac[666]) * a + std::sqrt(1 - ac[666]) * n; }),
      2e-6);
}

TEST(SchedulerTest, ScaleModelInputIsIdentityOutsideSigmaSpace) {
  const at::Tensor x = Tiny(1.0, -0.5, 0.25, 2.0);
  for (const char* name : {"ddim", "dpmpp_2m", "lcm"}) {
    const auto s = MakeScheduler(name, SchedulerConfig{});
    s->SetTimesteps(4);
    EXPECT_TRUE(at::equal(s->ScaleModelInput(x, 1), x)) << name;
    EXPECT_DOUBLE_EQ(s->init_noise_sigma(), 1.0) << name;
  }
}

// ---------------------------------------------------------------------------------------------
// Whole sampling loops against the Python transcription of diffusers

// Cases for ref_schedulers.py: sampler name, steps, generator seed and config overrides on top of
// SD1.5's scheduler_config.json (which has no timestep_spacing: each sampler's default applies).
constexpr const char* kReferenceCases = R"([
  {"name": "ddim", "steps": 10, "seed": 0, "config": {}},
  {"name": "ddim", "steps": 7, "seed": 0, "config": {"timestep_spacing": "trailing",
     "prediction_type": "v_prediction", "set_alpha_to_one": true}},
  {"name": "ddim", "steps": 5, "seed": 0, "config": {"timestep_spacing": "linspace",
     "prediction_type": "sample", "clip_sample": true, "clip_sample_range": 1.5}},
  {"name": "euler", "steps": 12, "seed": 1, "config": {}},
  {"name": "euler", "steps": 16, "seed": 1, "config": {"timestep_spacing": "trailing"}},
  {"name": "euler", "steps": 8, "seed": 1, "config": {"timestep_spacing": "leading",
     "use_karras_sigmas": true, "prediction_type": "v_prediction"}},
  {"name": "euler", "steps": 6, "seed": 1, "config": {"beta_schedule": "linear",
     "beta_start": 0.0001, "beta_end": 0.02, "rescale_betas_zero_snr": true,
     "prediction_type": "v_prediction", "timestep_spacing": "trailing"}},
  {"name": "euler_a", "steps": 8, "seed": 2, "config": {}},
  {"name": "euler_a", "steps": 5, "seed": 3, "config": {"timestep_spacing": "leading",
     "prediction_type": "v_prediction"}},
  {"name": "dpmpp_2m", "steps": 15, "seed": 4, "config": {}},
  {"name": "dpmpp_2m", "steps": 6, "seed": 4, "config": {"timestep_spacing": "trailing",
     "prediction_type": "sample"}},
  {"name": "dpmpp_2m", "steps": 7, "seed": 4, "config": {"timestep_spacing": "leading",
     "prediction_type": "v_prediction"}},
  {"name": "dpmpp_2m_karras", "steps": 9, "seed": 5, "config": {}},
  {"name": "dpmpp_2m_karras", "steps": 6, "seed": 5, "config": {
     "beta_schedule": "squaredcos_cap_v2"}},
  {"name": "lcm", "steps": 4, "seed": 6, "config": {}},
  {"name": "lcm", "steps": 6, "seed": 7, "config": {"original_inference_steps": 40, "timestep_scaling": 0.05,
     "prediction_type": "v_prediction"}}
])";

struct ReferenceCase {
  std::string name;
  int steps;
  int seed;
  std::string config;  // the overrides alone: SchedulerConfig's defaults are SD1.5's config
};

std::vector<ReferenceCase> ParseCases() {
  rapidjson::Document doc;
  doc.Parse(kReferenceCases);
  std::vector<ReferenceCase> cases;
  for (const auto& c : doc.GetArray()) {
    rapidjson::StringBuffer config;
    rapidjson::Writer<rapidjson::StringBuffer> writer(config);
    c["config"].Accept(writer);
    cases.push_back(
        {c["name"].GetString(), c["steps"].GetInt(), c["seed"].GetInt(), config.GetString()});
  }
  return cases;
}

at::Tensor FakeModel(const at::Tensor& x, double t) {
  return 0.8 * at::tanh(x) + 0.1 * (static_cast<float>(t) / 1000.0);
}

TEST(SchedulerTest, MatchesPythonReferenceLoops) {
  const std::filesystem::path dir = testing::MakeTempDir("scheduler-ref");
  ASSERT_FALSE(dir.empty());
  std::ofstream(dir / "cases.json") << kReferenceCases;
  ASSERT_EQ(testing::RunPython("ref_schedulers.py",
                               "run " + (dir / "cases.json").string() + " " + dir.string()),
            0);
  const std::vector<ReferenceCase> cases = ParseCases();
  ASSERT_EQ(cases.size(), 16u);
  for (size_t k = 0; k < cases.size(); ++k) {
    const ReferenceCase& c = cases[k];
    SCOPED_TRACE("case " + std::to_string(k) + ": " + c.name + " " + c.config);
    const Weights ref = testing::ReadTensors(dir / ("case_" + std::to_string(k) + ".safetensors"));
    const auto s = MakeScheduler(c.name, SchedulerConfig::FromJson(c.config));
    s->SetTimesteps(c.steps);
    const std::vector<double> timesteps = Values(ref.Get("timesteps"));
    ASSERT_EQ(s->timesteps().size(), timesteps.size());
    for (size_t i = 0; i < timesteps.size(); ++i) {
      EXPECT_NEAR(s->timesteps()[i], timesteps[i], 1e-3 + 1e-5 * timesteps[i]) << "timestep " << i;
    }
    if (ref.Has("sigmas")) {
      const std::vector<double> sigmas = Values(ref.Get("sigmas"));
      std::vector<double> ours;
      if (auto* e = dynamic_cast<EulerScheduler*>(s.get())) ours = e->sigmas();
      if (auto* d = dynamic_cast<DpmSolverMultistepScheduler*>(s.get())) ours = d->sigmas();
      ASSERT_EQ(ours.size(), sigmas.size());
      for (size_t i = 0; i < sigmas.size(); ++i) {
        EXPECT_NEAR(ours[i], sigmas[i], 1e-6 * (1 + sigmas[i])) << "sigma " << i;
      }
    }
    const double init_sigma = Values(ref.Get("init_noise_sigma"))[0];
    EXPECT_NEAR(s->init_noise_sigma(), init_sigma, 1e-6 * init_sigma);

    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(c.seed);
    const at::Tensor noise = at::randn({1, 4, 2, 3}, gen);
    EXPECT_TENSOR_NEAR(noise, ref.Get("noise"), 0.0);
    at::Tensor x = noise * s->init_noise_sigma();
    for (int i = 0; i < c.steps; ++i) {
      const at::Tensor out = FakeModel(s->ScaleModelInput(x, i), s->timesteps()[i]);
      x = s->Step(out, i, x, gen);
      const at::Tensor& expected = ref.Get("step_" + std::to_string(i));
      const double scale = std::max(1.0, expected.abs().max().item<double>());
      EXPECT_TENSOR_NEAR(x, expected, 1e-5 * scale);
    }
  }
  std::filesystem::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Names and errors

TEST(SchedulerTest, NamesAndAliases) {
  EXPECT_EQ(SchedulerNames(), (std::vector<std::string>{"ddim", "euler", "euler_a", "dpmpp_2m",
                                                        "dpmpp_2m_karras", "lcm"}));
  const SchedulerConfig c;
  EXPECT_NE(dynamic_cast<DdimScheduler*>(MakeScheduler("DDIMScheduler", c).get()), nullptr);
  EXPECT_NE(dynamic_cast<EulerAncestralScheduler*>(MakeScheduler("euler_ancestral", c).get()),
            nullptr);
  EXPECT_EQ(dynamic_cast<EulerAncestralScheduler*>(MakeScheduler("euler", c).get()), nullptr);
  EXPECT_NE(dynamic_cast<DpmSolverMultistepScheduler*>(MakeScheduler("dpm++_2m", c).get()),
            nullptr);
  EXPECT_NE(
      dynamic_cast<DpmSolverMultistepScheduler*>(MakeScheduler("DPMSolverMultistep", c).get()),
      nullptr);
  EXPECT_NE(dynamic_cast<LcmScheduler*>(MakeScheduler("LCMScheduler", c).get()), nullptr);
  // dpm++_2m_karras really switches to Karras sigmas.
  auto plain = MakeScheduler("dpm++_2m", c), karras = MakeScheduler("dpm++_2m_karras", c);
  plain->SetTimesteps(5);
  karras->SetTimesteps(5);
  EXPECT_NE(plain->timesteps(), karras->timesteps());
}

TEST(SchedulerTest, InvalidNamesAndStepsThrow) {
  try {
    MakeScheduler("heun", SchedulerConfig{});
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("heun"), std::string::npos);
    for (const std::string& name : SchedulerNames()) EXPECT_NE(what.find(name), std::string::npos);
  }
  for (const std::string& name : SchedulerNames()) {
    const auto s = MakeScheduler(name, SchedulerConfig{});
    const at::Tensor x = Tiny(1, 2, 3, 4);
    EXPECT_THROW(s->Step(x, 0, x, at::Generator()), std::out_of_range) << name;
    EXPECT_THROW(s->SetTimesteps(0), std::invalid_argument) << name;
    EXPECT_THROW(s->SetTimesteps(1001), std::invalid_argument) << name;
    s->SetTimesteps(4);
    EXPECT_THROW(s->Step(x, 4, x, at::Generator()), std::out_of_range) << name;
    EXPECT_THROW(s->Step(x, -1, x, at::Generator()), std::out_of_range) << name;
    EXPECT_THROW(s->ScaleModelInput(x, 4), std::out_of_range) << name;
    EXPECT_THROW(s->AddNoise(x, x, 4), std::out_of_range) << name;
  }
  // LCM cannot take more steps than its distillation schedule has.
  EXPECT_THROW(MakeScheduler("lcm", SchedulerConfig{})->SetTimesteps(51), std::invalid_argument);
  // Leading spacing plus steps_offset would reach timestep 1000 with 1000 DDIM steps.
  EXPECT_THROW(MakeScheduler("ddim", SchedulerConfig{})->SetTimesteps(1000), std::invalid_argument);
}

}  // namespace
}  // namespace megaserve::diffusion
