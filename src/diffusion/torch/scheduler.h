// Diffusion samplers ("schedulers"): turn the UNet's prediction at one noise level into the
// sample at the next, lower noise level.
//
// Every sampler shares the discrete DDPM forward process of the model's training (Ho et al.
// 2020): betas from the config's schedule, alphas_cumprod[t] = prod_{s<=t} (1 - beta_s) and
// x_t = sqrt(alphas_cumprod[t]) x_0 + sqrt(1 - alphas_cumprod[t]) eps. What differs is how
// inference steps are placed and how one step is integrated:
//   ddim             DDIM, eta = 0 (Song et al. 2020, "Denoising Diffusion Implicit Models", eq.
//   12) euler            Euler step of the probability-flow ODE in sigma space, sigma =
//   sqrt((1-a)/a)
//                    (Karras et al. 2022, "Elucidating the Design Space...", Algorithm 2 without
//                    churn); Karras sigmas when the config says use_karras_sigmas
//   euler_a          Euler ancestral: Euler step to sigma_down, then fresh noise of scale sigma_up
//                    (k-diffusion's sample_euler_ancestral)
//   dpmpp_2m         DPM-Solver++(2M), data prediction, multistep midpoint second-order update,
//                    first order for the first and the last step (Lu et al. 2022, "DPM-Solver++",
//                    Algorithm 2)
//   dpmpp_2m_karras  the same on Karras et al.'s sigma ramp (rho = 7)
//   lcm              Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1)
// The numbers follow Hugging Face diffusers (DDIMScheduler, EulerDiscreteScheduler,
// EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler, LCMScheduler), the reference
// users compare against: the training schedule is computed in float32 as diffusers does, and
// timestep placement reproduces numpy's linspace/arange/round (round half to even).
//
// Errors are exceptions: std::invalid_argument for bad configs, names and step counts,
// std::out_of_range for a step index outside the prepared schedule.
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace megaserve::diffusion {

enum class BetaSchedule { kLinear, kScaledLinear, kSquaredCosCapV2 };
enum class PredictionType { kEpsilon, kVPrediction, kSample };
enum class TimestepSpacing { kLeading, kTrailing, kLinspace };

// The noise schedule of a diffusers `scheduler/scheduler_config.json`. Whatever sampler the user
// picks, the config only supplies the schedule, so its _class_name is ignored. A missing field
// takes the value of Stable Diffusion 1.5's config (scaled_linear 0.00085 -> 0.012, steps_offset
// 1, set_alpha_to_one false, clip_sample false), except timestep_spacing, whose absence means
// "the sampler's own diffusers default" (leading for ddim and lcm, linspace for the others), as
// happens when diffusers builds a scheduler with from_config().
struct SchedulerConfig {
  int num_train_timesteps = 1000;
  double beta_start = 0.00085;
  double beta_end = 0.012;
  BetaSchedule beta_schedule = BetaSchedule::kScaledLinear;
  // When non-empty, replaces the beta schedule (diffusers' trained_betas).
  std::vector<double> trained_betas;
  PredictionType prediction_type = PredictionType::kEpsilon;
  std::optional<TimestepSpacing> timestep_spacing;
  int steps_offset = 1;
  bool set_alpha_to_one = false;
  bool clip_sample = false;
  double clip_sample_range = 1.0;
  bool rescale_betas_zero_snr = false;
  bool use_karras_sigmas = false;
  int original_inference_steps = 50;  // LCM
  double timestep_scaling = 10.0;     // LCM

  // Parses a scheduler_config.json text. Unknown fields are ignored; null counts as missing.
  // Throws std::invalid_argument naming `source` and the field for a malformed document, a field
  // of the wrong type, an unknown beta_schedule / prediction_type / timestep_spacing, or an
  // unsupported option (thresholding, a non-"zero" final_sigmas_type, ...).
  static SchedulerConfig FromJson(std::string_view json, std::string_view source = "<json>");
  // Reads and parses a file; throws std::invalid_argument when it cannot be read or parsed.
  static SchedulerConfig FromFile(const std::string& path);
};

// One sampler. Usage: SetTimesteps(n); x = randn * init_noise_sigma(); for i in [0, n):
// out = unet(ScaleModelInput(x, i), timesteps()[i]); x = Step(out, i, x, gen).
// Not thread-safe; multistep samplers keep the previous step's prediction.
class Scheduler {
 public:
  virtual ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Prepares `steps` inference steps and forgets any earlier run. Throws std::invalid_argument
  // for steps < 1 or > num_train_timesteps; for lcm also for steps > original_inference_steps,
  // and for ddim when leading spacing plus steps_offset would reach timestep
  // num_train_timesteps (diffusers fails there with an IndexError at the first step).
  virtual void SetTimesteps(int steps) = 0;
  // The model's timestep input at each step (size = steps; empty before SetTimesteps).
  const std::vector<double>& timesteps() const { return timesteps_; }
  // Scale of the initial Gaussian noise: 1 for ddim, lcm and dpmpp (which work on x_t itself);
  // for euler/euler_a the largest sigma, or sqrt(sigma_max^2 + 1) with leading spacing, as
  // diffusers does. Valid after SetTimesteps.
  virtual double init_noise_sigma() const { return 1.0; }
  // What the UNet is given at step i: the sample itself, or x / sqrt(sigma_i^2 + 1) for the
  // sigma-space samplers (euler, euler_a). Throws std::out_of_range for a bad step index.
  virtual at::Tensor ScaleModelInput(const at::Tensor& sample, int step) const;
  // One update from step `step` to step + 1 (the last step returns the denoised sample).
  // Computes in float32 and returns model_output's dtype. `gen` (may be undefined: the default
  // generator) drives the noise of euler_a and lcm. Throws std::out_of_range for a bad step.
  virtual at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                          at::Generator gen) = 0;
  // Forward-diffuses a clean sample to the noise level of step `step` (img2img):
  // sqrt(a_t) x0 + sqrt(1 - a_t) noise, or x0 + sigma noise for euler/euler_a.
  // Throws std::out_of_range for a bad step.
  virtual at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int step) const;

  // The training schedule's alphas_cumprod (float32 values, as diffusers computes them).
  const std::vector<double>& alphas_cumprod() const { return alphas_cumprod_; }
  const SchedulerConfig& config() const { return config_; }

 protected:
  explicit Scheduler(const SchedulerConfig& config);
  // Throws std::invalid_argument unless 1 <= steps <= num_train_timesteps.
  void CheckStepCount(int steps) const;
  // Throws std::out_of_range unless 0 <= step < timesteps().size().
  void CheckStep(int step) const;
  // The integer training timestep at `step` (for the samplers with integer timesteps).
  int TrainTimestep(int step) const;
  // The spacing of the config, or `fallback` (the sampler's diffusers default) when absent.
  TimestepSpacing Spacing(TimestepSpacing fallback) const;

  SchedulerConfig config_;
  std::vector<double> alphas_cumprod_;
  std::vector<double> timesteps_;
};

// DDIM with eta = 0 (deterministic).
class DdimScheduler : public Scheduler {
 public:
  explicit DdimScheduler(const SchedulerConfig& config);
  void SetTimesteps(int steps) override;
  at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                  at::Generator gen) override;

 private:
  double final_alpha_cumprod_;
};

// Euler (deterministic, s_churn = 0); `karras` replaces the sigmas by Karras et al.'s ramp.
class EulerScheduler : public Scheduler {
 public:
  EulerScheduler(const SchedulerConfig& config, bool karras);
  void SetTimesteps(int steps) override;
  double init_noise_sigma() const override;
  at::Tensor ScaleModelInput(const at::Tensor& sample, int step) const override;
  at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                  at::Generator gen) override;
  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int step) const override;
  // Noise levels, steps + 1 values ending with 0 (float32 values, as diffusers stores them).
  const std::vector<double>& sigmas() const { return sigmas_; }

 protected:
  // The denoised estimate x0 from the model output at noise level `sigma`.
  at::Tensor PredictX0(const at::Tensor& model_output, const at::Tensor& sample,
                       double sigma) const;

  bool karras_;
  std::vector<double> sigmas_;
};

// Euler ancestral; diffusers has no Karras variant of it, so use_karras_sigmas is ignored.
// prediction_type "sample" takes the output as x0 (diffusers raises NotImplementedError there).
class EulerAncestralScheduler : public EulerScheduler {
 public:
  explicit EulerAncestralScheduler(const SchedulerConfig& config);
  at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                  at::Generator gen) override;
};

// DPM-Solver++(2M): solver_order 2, midpoint, lower_order_final, final sigma 0.
class DpmSolverMultistepScheduler : public Scheduler {
 public:
  DpmSolverMultistepScheduler(const SchedulerConfig& config, bool karras);
  void SetTimesteps(int steps) override;
  at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                  at::Generator gen) override;
  at::Tensor AddNoise(const at::Tensor& original, const at::Tensor& noise, int step) const override;
  const std::vector<double>& sigmas() const { return sigmas_; }

 private:
  bool karras_;
  std::vector<double> sigmas_;
  // The x0 prediction of the previous step, usable when `previous_step_` == step - 1.
  at::Tensor previous_x0_;
  int previous_step_ = -1;
};

// Latent Consistency Model sampler.
class LcmScheduler : public Scheduler {
 public:
  explicit LcmScheduler(const SchedulerConfig& config);
  void SetTimesteps(int steps) override;
  at::Tensor Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                  at::Generator gen) override;
};

// The sampler called `name`: one of SchedulerNames(), or an alias (case-insensitive):
//   ddim:            DDIMScheduler
//   euler:           euler_discrete, EulerDiscreteScheduler
//   euler_a:         euler_ancestral, euler_ancestral_discrete, EulerAncestralDiscreteScheduler
//   dpmpp_2m:        dpm++_2m, dpmsolver++, DPMSolverMultistep, DPMSolverMultistepScheduler
//   dpmpp_2m_karras: dpm++_2m_karras, dpmpp_2m_k
//   lcm:             LCMScheduler
// dpmpp_2m (and euler) use Karras sigmas also when the config says use_karras_sigmas.
// Throws std::invalid_argument listing the valid names for an unknown name.
std::unique_ptr<Scheduler> MakeScheduler(std::string_view name, const SchedulerConfig& config);

// The canonical sampler names, in a stable order.
std::vector<std::string> SchedulerNames();

}  // namespace megaserve::diffusion
