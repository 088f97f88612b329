// Diffusion samplers; see scheduler.h for the algorithms and their sources.
//
// Matching diffusers to float precision takes care in two places:
//  * the training schedule: diffusers computes betas, 1 - beta and their cumulative product with
//    float32 torch ops (cumprod accumulating in double); we run the same ATen ops, then read the
//    values back as doubles, and store sigmas rounded to float32 as diffusers does;
//  * timestep placement: diffusers builds it with numpy, so linspace, arange (whose fill repeats
//    start + i * ((start + step) - start)), interp and round (half to even: std::nearbyint in the
//    default rounding mode) are reproduced operation by operation.
#include "diffusion/torch/scheduler.h"

#include <rapidjson/document.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <stdexcept>
#include <utility>

#include "diffusion/config_json.h"

namespace megaserve::diffusion {
namespace {

constexpr double kPi = 3.14159265358979323846;
// LCM's sigma_data (Luo et al. 2023, following Song et al. 2023's consistency models).
constexpr double kLcmSigmaData = 0.5;

double ToFloat32(double x) { return static_cast<double>(static_cast<float>(x)); }

// numpy.linspace(start, stop, num[, endpoint]) in float64.
std::vector<double> Linspace(double start, double stop, int num, bool endpoint = true) {
  std::vector<double> out(num);
  const int div = endpoint ? num - 1 : num;
  if (div <= 0) {  // numpy: a single point is `start`
    if (num == 1) out[0] = start;
    return out;
  }
  const double step = (stop - start) / div;
  for (int i = 0; i < num; ++i) out[i] = i * step + start;
  if (endpoint && num > 1) out[num - 1] = stop;
  return out;
}

// numpy.arange(start, stop, step) in float64, for a negative step.
std::vector<double> ArangeDown(double start, double stop, double step) {
  const double length = std::ceil((stop - start) / step);
  const int n = length > 0 ? static_cast<int>(length) : 0;
  std::vector<double> out(n);
  if (n > 0) out[0] = start;
  if (n > 1) out[1] = start + step;
  const double delta = (start + step) - start;
  for (int i = 2; i < n; ++i) out[i] = start + i * delta;
  return out;
}

double RoundHalfEven(double x) { return std::nearbyint(x); }

// "leading" spacing: i * ratio + steps_offset for i = hi down to lo.
std::vector<double> LeadingTimesteps(int ratio, int hi, int lo, int steps_offset) {
  std::vector<double> t;
  for (int i = hi; i >= lo; --i) t.push_back(i * ratio + steps_offset);
  return t;
}

// "trailing" spacing: numpy.round(numpy.arange(start, 0, -n / steps)) - 1.
std::vector<double> TrailingTimesteps(int start, int n, int steps) {
  std::vector<double> t = ArangeDown(start, 0, -static_cast<double>(n) / steps);
  for (double& x : t) x = RoundHalfEven(x) - 1;
  return t;
}

// numpy.interp(x, [0, 1, ..., n-1], fp): linear interpolation, clamped at both ends.
double Interp(double x, const std::vector<double>& fp) {
  const int n = static_cast<int>(fp.size());
  if (x <= 0) return fp.front();
  if (x >= n - 1) return fp.back();
  const int j = static_cast<int>(std::floor(x));
  return (fp[j + 1] - fp[j]) * (x - j) + fp[j];  // slope * (x - xp[j]) + fp[j], xp spacing 1
}

// Karras et al. 2022, eq. 5: sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho,
// rho = 7, i = 0..n-1.
std::vector<double> KarrasSigmas(double sigma_min, double sigma_max, int n) {
  constexpr double kRho = 7.0;
  const double min_inv_rho = std::pow(sigma_min, 1.0 / kRho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / kRho);
  std::vector<double> ramp = Linspace(0.0, 1.0, n);
  for (double& r : ramp) r = std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), kRho);
  return ramp;
}

// The fractional training timestep whose sigma is `sigma`: linear interpolation in log sigma
// between the two neighbouring training timesteps (diffusers' _sigma_to_t). `log_sigmas` is
// increasing with the timestep.
double SigmaToT(double sigma, const std::vector<double>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const int n = static_cast<int>(log_sigmas.size());
  int low = 0;
  for (int i = 0; i < n; ++i) {
    if (log_sigma - log_sigmas[i] >= 0) low = i;
  }
  low = std::min(low, n - 2);
  const double w =
      std::clamp((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0.0, 1.0);
  return (1 - w) * low + w * (low + 1);
}

// Glide's cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas capped at 0.999.
std::vector<double> SquaredCosBetas(int n) {
  auto alpha_bar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * kPi / 2);
    return c * c;
  };
  std::vector<double> betas(n);
  for (int i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n;
    const double t2 = static_cast<double>(i + 1) / n;
    betas[i] = std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999);
  }
  return betas;
}

// alphas_cumprod of the training schedule, computed with the float32 torch ops diffusers uses.
// `zero_snr_floor` is the sigma-space samplers' guard against an infinite first sigma under
// rescale_betas_zero_snr.
std::vector<double> AlphasCumprod(const SchedulerConfig& c, bool zero_snr_floor) {
  const int n = c.num_train_timesteps;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  at::Tensor betas;
  if (!c.trained_betas.empty()) {
    betas = at::tensor(c.trained_betas, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  } else if (c.beta_schedule == BetaSchedule::kLinear) {
    betas = at::linspace(c.beta_start, c.beta_end, n, f32);
  } else if (c.beta_schedule == BetaSchedule::kScaledLinear) {
    betas = at::linspace(std::sqrt(c.beta_start), std::sqrt(c.beta_end), n, f32).pow(2);
  } else {
    betas = at::tensor(SquaredCosBetas(n), at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
  }
  if (c.rescale_betas_zero_snr) {
    // Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
    // shift and scale sqrt(alphas_cumprod) so that the last timestep has zero SNR.
    at::Tensor sqrt_ac = at::cumprod(1.0 - betas, 0).sqrt();
    const at::Tensor first = sqrt_ac[0].clone();
    const at::Tensor last = sqrt_ac[-1].clone();
    sqrt_ac = (sqrt_ac - last) * (first / (first - last));
    const at::Tensor ac = sqrt_ac.pow(2);
    const at::Tensor alphas = at::cat({ac.slice(0, 0, 1), ac.slice(0, 1) / ac.slice(0, 0, n - 1)});
    betas = 1 - alphas;
  }
  at::Tensor ac = at::cumprod(1.0 - betas, 0).contiguous();
  if (c.rescale_betas_zero_snr && zero_snr_floor) ac[-1] = std::ldexp(1.0, -24);
  const float* data = ac.data_ptr<float>();
  return std::vector<double>(data, data + n);
}

// sigma = sqrt((1 - a) / a) for each training timestep, in float32 as diffusers computes it.
std::vector<double> TrainSigmas(const std::vector<double>& alphas_cumprod) {
  std::vector<double> sigmas(alphas_cumprod.size());
  for (size_t i = 0; i < sigmas.size(); ++i) {
    const float a = static_cast<float>(alphas_cumprod[i]);
    sigmas[i] = std::sqrt((1.0f - a) / a);
  }
  return sigmas;
}

// log of the float32 sigmas, itself rounded to float32 (numpy's log of a float32 array).
std::vector<double> LogSigmas(const std::vector<double>& sigmas) {
  std::vector<double> out(sigmas.size());
  for (size_t i = 0; i < sigmas.size(); ++i) out[i] = ToFloat32(std::log(sigmas[i]));
  return out;
}

// Gaussian noise shaped like `like`, drawn as diffusers' randn_tensor does: on the generator's
// device when it differs (a CPU generator for a CUDA sample), then moved.
at::Tensor Randn(const at::Tensor& like, const at::Generator& gen) {
  c10::optional<at::Generator> g;
  at::Device device = like.device();
  if (gen.defined()) {
    g = gen;
    device = gen.device();
  }
  at::ScalarType dtype = like.scalar_type();
  if (device.is_cpu() && dtype != at::kFloat && dtype != at::kDouble) dtype = at::kFloat;
  return at::randn(like.sizes(), g, like.options().device(device).dtype(dtype))
      .to(like.device(), like.scalar_type());
}

// x0 and epsilon from a model output under the VP parameterisation x_t = sqrt(a) x0 +
// sqrt(1 - a) eps, where v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022).
std::pair<at::Tensor, at::Tensor> X0AndEps(PredictionType type, const at::Tensor& out,
                                           const at::Tensor& x, double a) {
  const double sa = std::sqrt(a);
  const double sb = std::sqrt(1 - a);
  switch (type) {
    case PredictionType::kEpsilon:
      return {(x - sb * out) / sa, out};
    case PredictionType::kSample:
      return {out, (x - sa * out) / sb};
    case PredictionType::kVPrediction:
      return {sa * x - sb * out, sa * out + sb * x};
  }
  throw std::invalid_argument("unknown prediction_type");
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SchedulerConfig

namespace {

class ConfigReader {
 public:
  ConfigReader(const rapidjson::Value& root, std::string_view source)
      : root_(root), source_(source) {}

  const rapidjson::Value* Find(const char* field) const {
    auto it = root_.FindMember(field);
    if (it == root_.MemberEnd() || it->value.IsNull()) return nullptr;
    return &it->value;
  }
  [[noreturn]] void Fail(const char* field, const std::string& what) const {
    throw std::invalid_argument(source_ + ": field \"" + field + "\" " + what);
  }
  void Number(const char* field, double* out) const {
    if (const rapidjson::Value* v = Find(field)) {
      if (!v->IsNumber()) Fail(field, "must be a number");
      *out = v->GetDouble();
    }
  }
  void Int(const char* field, int* out) const {
    if (const rapidjson::Value* v = Find(field)) {
      if (!v->IsNumber() || v->GetDouble() != std::floor(v->GetDouble()) ||
          std::abs(v->GetDouble()) > 1e9) {
        Fail(field, "must be an integer");
      }
      *out = static_cast<int>(v->GetDouble());
    }
  }
  void Bool(const char* field, bool* out) const {
    if (const rapidjson::Value* v = Find(field)) {
      if (!v->IsBool()) Fail(field, "must be true or false");
      *out = v->GetBool();
    }
  }
  std::optional<std::string> String(const char* field) const {
    const rapidjson::Value* v = Find(field);
    if (v == nullptr) return std::nullopt;
    if (!v->IsString()) Fail(field, "must be a string");
    return std::string(v->GetString(), v->GetStringLength());
  }

 private:
  const rapidjson::Value& root_;
  std::string source_;
};

}  // namespace

SchedulerConfig SchedulerConfig::FromJson(std::string_view json, std::string_view source) {
  const rapidjson::Document doc = ParseConfigObject(json, source);
  const ConfigReader r(doc, source);
  SchedulerConfig c;
  r.Int("num_train_timesteps", &c.num_train_timesteps);
  if (c.num_train_timesteps < 2) r.Fail("num_train_timesteps", "must be at least 2");
  r.Number("beta_start", &c.beta_start);
  r.Number("beta_end", &c.beta_end);
  if (auto s = r.String("beta_schedule")) {
    if (*s == "linear") {
      c.beta_schedule = BetaSchedule::kLinear;
    } else if (*s == "scaled_linear") {
      c.beta_schedule = BetaSchedule::kScaledLinear;
    } else if (*s == "squaredcos_cap_v2") {
      c.beta_schedule = BetaSchedule::kSquaredCosCapV2;
    } else {
      r.Fail("beta_schedule",
             "is \"" + *s + "\"; expected linear, scaled_linear or squaredcos_cap_v2");
    }
  }
  if (const rapidjson::Value* v = r.Find("trained_betas")) {
    if (!v->IsArray()) r.Fail("trained_betas", "must be an array of numbers or null");
    for (const auto& b : v->GetArray()) {
      if (!b.IsNumber()) r.Fail("trained_betas", "must be an array of numbers or null");
      c.trained_betas.push_back(b.GetDouble());
    }
    if (static_cast<int>(c.trained_betas.size()) != c.num_train_timesteps) {
      r.Fail("trained_betas", "has " + std::to_string(c.trained_betas.size()) +
                                  " values but num_train_timesteps is " +
                                  std::to_string(c.num_train_timesteps));
    }
  }
  if (auto s = r.String("prediction_type")) {
    if (*s == "epsilon") {
      c.prediction_type = PredictionType::kEpsilon;
    } else if (*s == "v_prediction") {
      c.prediction_type = PredictionType::kVPrediction;
    } else if (*s == "sample" || *s == "original_sample") {
      c.prediction_type = PredictionType::kSample;
    } else {
      r.Fail("prediction_type", "is \"" + *s + "\"; expected epsilon, v_prediction or sample");
    }
  }
  if (auto s = r.String("timestep_spacing")) {
    if (*s == "leading") {
      c.timestep_spacing = TimestepSpacing::kLeading;
    } else if (*s == "trailing") {
      c.timestep_spacing = TimestepSpacing::kTrailing;
    } else if (*s == "linspace") {
      c.timestep_spacing = TimestepSpacing::kLinspace;
    } else {
      r.Fail("timestep_spacing", "is \"" + *s + "\"; expected leading, trailing or linspace");
    }
  }
  r.Int("steps_offset", &c.steps_offset);
  r.Bool("set_alpha_to_one", &c.set_alpha_to_one);
  r.Bool("clip_sample", &c.clip_sample);
  r.Number("clip_sample_range", &c.clip_sample_range);
  r.Bool("rescale_betas_zero_snr", &c.rescale_betas_zero_snr);
  r.Bool("use_karras_sigmas", &c.use_karras_sigmas);
  r.Int("original_inference_steps", &c.original_inference_steps);
  if (c.original_inference_steps < 1) r.Fail("original_inference_steps", "must be positive");
  r.Number("timestep_scaling", &c.timestep_scaling);
  bool thresholding = false;
  r.Bool("thresholding", &thresholding);
  if (thresholding) r.Fail("thresholding", "is true; dynamic thresholding is not supported");
  return c;
}

SchedulerConfig SchedulerConfig::FromFile(const std::string& path) {
  return FromJson(ReadConfigFile(path), path);
}

// ---------------------------------------------------------------------------------------------
// Scheduler

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config) {}
Scheduler::~Scheduler() = default;

void Scheduler::CheckStepCount(int steps) const {
  if (steps < 1 || steps > config_.num_train_timesteps) {
    throw std::invalid_argument("number of inference steps must be in [1, " +
                                std::to_string(config_.num_train_timesteps) + "], got " +
                                std::to_string(steps));
  }
}

void Scheduler::CheckStep(int step) const {
  if (timesteps_.empty()) throw std::out_of_range("scheduler: SetTimesteps was not called");
  if (step < 0 || step >= static_cast<int>(timesteps_.size())) {
    throw std::out_of_range("scheduler: step " + std::to_string(step) + " is outside [0, " +
                            std::to_string(timesteps_.size()) + ")");
  }
}

int Scheduler::TrainTimestep(int step) const {
  CheckStep(step);
  return static_cast<int>(std::llround(timesteps_[step]));
}

TimestepSpacing Scheduler::Spacing(TimestepSpacing fallback) const {
  return config_.timestep_spacing.value_or(fallback);
}

at::Tensor Scheduler::ScaleModelInput(const at::Tensor& sample, int step) const {
  CheckStep(step);
  return sample;
}

at::Tensor Scheduler::AddNoise(const at::Tensor& original, const at::Tensor& noise,
                               int step) const {
  const double a = alphas_cumprod_[TrainTimestep(step)];
  return std::sqrt(a) * original + std::sqrt(1 - a) * noise;
}

// ---------------------------------------------------------------------------------------------
// DDIM

DdimScheduler::DdimScheduler(const SchedulerConfig& config) : Scheduler(config) {
  alphas_cumprod_ = AlphasCumprod(config_, /*zero_snr_floor=*/false);
  final_alpha_cumprod_ = config_.set_alpha_to_one ? 1.0 : alphas_cumprod_[0];
}

void DdimScheduler::SetTimesteps(int steps) {
  CheckStepCount(steps);
  const int n = config_.num_train_timesteps;
  std::vector<double> t;
  switch (Spacing(TimestepSpacing::kLeading)) {
    case TimestepSpacing::kLinspace:
      t = Linspace(0, n - 1, steps);
      for (double& x : t) x = RoundHalfEven(x);
      std::reverse(t.begin(), t.end());
      break;
    case TimestepSpacing::kLeading:
      t = LeadingTimesteps(n / steps, steps - 1, 0, config_.steps_offset);
      break;
    case TimestepSpacing::kTrailing:
      t = TrailingTimesteps(n, n, steps);
      break;
  }
  for (double x : t) {
    if (x < 0 || x >= n) {
      throw std::invalid_argument("ddim: " + std::to_string(steps) +
                                  " steps with this timestep_spacing/steps_offset reach timestep " +
                                  std::to_string(static_cast<long>(x)) + ", outside [0, " +
                                  std::to_string(n) + ")");
    }
  }
  timesteps_ = std::move(t);
}

at::Tensor DdimScheduler::Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                               at::Generator gen) {
  const int t = TrainTimestep(step);
  // diffusers steps back by num_train_timesteps / steps whatever the spacing.
  const int prev = t - config_.num_train_timesteps / static_cast<int>(timesteps_.size());
  const double a_t = alphas_cumprod_[t];
  const double a_prev = prev >= 0 ? alphas_cumprod_[prev] : final_alpha_cumprod_;
  auto [x0, eps] =
      X0AndEps(config_.prediction_type, model_output.to(at::kFloat), sample.to(at::kFloat), a_t);
  if (config_.clip_sample) {
    x0 = x0.clamp(-config_.clip_sample_range, config_.clip_sample_range);
    // diffusers keeps the unclipped epsilon (use_clipped_model_output = false).
  }
  // DDIM eq. 12 with sigma_t = 0: x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps.
  return (std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps).to(model_output.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// Euler

EulerScheduler::EulerScheduler(const SchedulerConfig& config, bool karras)
    : Scheduler(config), karras_(karras) {
  alphas_cumprod_ = AlphasCumprod(config_, /*zero_snr_floor=*/true);
}

void EulerScheduler::SetTimesteps(int steps) {
  CheckStepCount(steps);
  const int n = config_.num_train_timesteps;
  std::vector<double> t;
  switch (Spacing(TimestepSpacing::kLinspace)) {
    case TimestepSpacing::kLinspace:
      // Fractional timesteps, as float32 values (numpy linspace with dtype float32).
      t = Linspace(0, n - 1, steps);
      for (double& x : t) x = ToFloat32(x);
      std::reverse(t.begin(), t.end());
      break;
    case TimestepSpacing::kLeading:
      t = LeadingTimesteps(n / steps, steps - 1, 0, config_.steps_offset);
      break;
    case TimestepSpacing::kTrailing:
      t = TrailingTimesteps(n, n, steps);
      break;
  }
  const std::vector<double> train = TrainSigmas(alphas_cumprod_);
  std::vector<double> sigmas(t.size());
  for (size_t i = 0; i < t.size(); ++i) sigmas[i] = Interp(t[i], train);
  if (karras_) {
    // The ramp spans the sigmas of the spaced timesteps; each sigma's timestep is found back by
    // log-sigma interpolation.
    sigmas = KarrasSigmas(sigmas.back(), sigmas.front(), steps);
    const std::vector<double> log_sigmas = LogSigmas(train);
    t.resize(sigmas.size());
    for (size_t i = 0; i < sigmas.size(); ++i) t[i] = SigmaToT(sigmas[i], log_sigmas);
  }
  sigmas_.clear();
  for (double s : sigmas) sigmas_.push_back(ToFloat32(s));
  sigmas_.push_back(0.0);
  for (double& x : t) x = ToFloat32(x);
  timesteps_ = std::move(t);
}

double EulerScheduler::init_noise_sigma() const {
  if (sigmas_.empty()) return 1.0;
  const double max_sigma = *std::max_element(sigmas_.begin(), sigmas_.end());
  // diffusers: sqrt(sigma_max^2 + 1) only for leading spacing.
  if (Spacing(TimestepSpacing::kLinspace) == TimestepSpacing::kLeading) {
    return std::sqrt(max_sigma * max_sigma + 1);
  }
  return max_sigma;
}

at::Tensor EulerScheduler::ScaleModelInput(const at::Tensor& sample, int step) const {
  CheckStep(step);
  // EDM's c_in (Karras et al. 2022, Table 1) for the VP model: x / sqrt(sigma^2 + 1).
  return sample / std::sqrt(sigmas_[step] * sigmas_[step] + 1);
}

at::Tensor EulerScheduler::PredictX0(const at::Tensor& model_output, const at::Tensor& sample,
                                     double sigma) const {
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon:
      return sample - sigma * model_output;
    case PredictionType::kSample:
      return model_output;
    case PredictionType::kVPrediction:
      // c_out * v + c_skip * x with c_out = -sigma / sqrt(sigma^2 + 1), c_skip = 1/(sigma^2 + 1).
      return model_output * (-sigma / std::sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1);
  }
  throw std::invalid_argument("unknown prediction_type");
}

at::Tensor EulerScheduler::Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                                at::Generator gen) {
  CheckStep(step);
  const at::Tensor x = sample.to(at::kFloat);
  const double sigma = sigmas_[step];
  const at::Tensor x0 = PredictX0(model_output.to(at::kFloat), x, sigma);
  // Karras et al. 2022, Algorithm 2 (no churn): d = (x - x0) / sigma, x' = x + d (sigma' - sigma).
  const at::Tensor derivative = (x - x0) / sigma;
  return (x + derivative * (sigmas_[step + 1] - sigma)).to(model_output.scalar_type());
}

at::Tensor EulerScheduler::AddNoise(const at::Tensor& original, const at::Tensor& noise,
                                    int step) const {
  CheckStep(step);
  return original + noise * sigmas_[step];
}

EulerAncestralScheduler::EulerAncestralScheduler(const SchedulerConfig& config)
    : EulerScheduler(config, /*karras=*/false) {}

at::Tensor EulerAncestralScheduler::Step(const at::Tensor& model_output, int step,
                                         const at::Tensor& sample, at::Generator gen) {
  CheckStep(step);
  const at::Tensor x = sample.to(at::kFloat);
  const double from = sigmas_[step];
  const double to = sigmas_[step + 1];
  const at::Tensor x0 = PredictX0(model_output.to(at::kFloat), x, from);
  // Ancestral split of the step (k-diffusion's get_ancestral_step, eta = 1): deterministic move
  // to sigma_down, then fresh noise of scale sigma_up, with sigma_down^2 + sigma_up^2 = to^2.
  const double sigma_up = std::sqrt(to * to * (from * from - to * to) / (from * from));
  const double sigma_down = std::sqrt(to * to - sigma_up * sigma_up);
  const at::Tensor derivative = (x - x0) / from;
  at::Tensor prev = x + derivative * (sigma_down - from);
  // Drawn at every step, the last included, so the generator advances as in diffusers.
  const at::Tensor noise = Randn(model_output, gen).to(at::kFloat);
  return (prev + noise * sigma_up).to(model_output.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// DPM-Solver++(2M)

namespace {

// VP coefficients of sigma-space noise level s: alpha = 1/sqrt(s^2 + 1), sigma_vp = s * alpha,
// and the half log-SNR lambda = log(alpha) - log(sigma_vp) (Lu et al. 2022, section 2).
// In float32 like diffusers' 0-dim tensors: at the huge sigmas of a cosine schedule (2e4) the x0
// estimate divides by alpha ~ 5e-5, so the coefficients' rounding shows in the result.
struct VpLevel {
  float alpha;
  float sigma;
  float lambda;
};
VpLevel Vp(double s) {
  const float sf = static_cast<float>(s);
  const float alpha = 1.0f / std::sqrt(sf * sf + 1.0f);
  const float sigma = sf * alpha;
  return {alpha, sigma, std::log(alpha) - std::log(sigma)};
}

}  // namespace

DpmSolverMultistepScheduler::DpmSolverMultistepScheduler(const SchedulerConfig& config, bool karras)
    : Scheduler(config), karras_(karras) {
  alphas_cumprod_ = AlphasCumprod(config_, /*zero_snr_floor=*/true);
}

void DpmSolverMultistepScheduler::SetTimesteps(int steps) {
  CheckStepCount(steps);
  const int n = config_.num_train_timesteps;
  const int last = n;  // lambda_min_clipped = -inf clips nothing
  std::vector<double> t;
  switch (Spacing(TimestepSpacing::kLinspace)) {
    case TimestepSpacing::kLinspace:
      t = Linspace(0, last - 1, steps + 1);
      for (double& x : t) x = RoundHalfEven(x);
      std::reverse(t.begin(), t.end());
      t.pop_back();
      break;
    case TimestepSpacing::kLeading:
      t = LeadingTimesteps(last / (steps + 1), steps, 1, config_.steps_offset);
      break;
    case TimestepSpacing::kTrailing:
      t = TrailingTimesteps(last, n, steps);
      break;
  }
  const std::vector<double> train = TrainSigmas(alphas_cumprod_);
  std::vector<double> sigmas(t.size());
  if (karras_) {
    // Here the ramp spans the whole training range (unlike Euler's).
    sigmas = KarrasSigmas(train.front(), train.back(), steps);
    const std::vector<double> log_sigmas = LogSigmas(train);
    t.resize(sigmas.size());
    for (size_t i = 0; i < sigmas.size(); ++i) {
      const double tt = SigmaToT(sigmas[i], log_sigmas);
      // Rounded, except for the cosine schedule, where diffusers truncates. The ramp's first
      // sigma is exactly the last training sigma, whose timestep comes out as 999 or as
      // 998.99999 depending on the last bit of numpy's float32 log (which varies with the
      // CPU); a value within float noise below an integer counts as that integer.
      t[i] = config_.beta_schedule == BetaSchedule::kSquaredCosCapV2 ? std::trunc(tt + 1e-4)
                                                                     : RoundHalfEven(tt);
    }
  } else {
    for (size_t i = 0; i < t.size(); ++i) sigmas[i] = Interp(t[i], train);
  }
  sigmas_.clear();
  for (double s : sigmas) sigmas_.push_back(ToFloat32(s));
  sigmas_.push_back(0.0);  // final_sigmas_type "zero"
  timesteps_ = std::move(t);
  previous_x0_ = at::Tensor();
  previous_step_ = -1;
}

at::Tensor DpmSolverMultistepScheduler::Step(const at::Tensor& model_output, int step,
                                             const at::Tensor& sample, at::Generator gen) {
  CheckStep(step);
  const at::Tensor x = sample.to(at::kFloat);
  const VpLevel s0 = Vp(sigmas_[step]);
  const VpLevel t = Vp(sigmas_[step + 1]);  // at the final sigma 0: alpha 1, lambda +inf
  // DPM-Solver++ works with the data prediction x0.
  const at::Tensor out = model_output.to(at::kFloat);
  at::Tensor x0;
  switch (config_.prediction_type) {
    case PredictionType::kEpsilon:
      x0 = (x - s0.sigma * out) / s0.alpha;
      break;
    case PredictionType::kSample:
      x0 = out;
      break;
    case PredictionType::kVPrediction:
      x0 = s0.alpha * x - s0.sigma * out;
      break;
  }
  const float h = t.lambda - s0.lambda;
  const float phi = std::exp(-h) - 1.0f;  // -1 at the final step, where h = inf
  // First order (DPM-Solver++ 1, i.e. DDIM in x0 form, Lu et al. 2022 eq. 9):
  //   x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) x0.
  at::Tensor prev =
      static_cast<double>(t.sigma / s0.sigma) * x - static_cast<double>(t.alpha * phi) * x0;
  const bool last_step = step == static_cast<int>(timesteps_.size()) - 1;
  if (!last_step && previous_step_ == step - 1 && previous_x0_.defined()) {
    // Multistep second order, midpoint form (Lu et al. 2022, Algorithm 2):
    //   r = h_prev / h, D1 = (x0 - x0_prev) / r, x_t += -0.5 alpha_t (e^{-h} - 1) D1.
    const VpLevel s1 = Vp(sigmas_[step - 1]);
    const float r0 = (s0.lambda - s1.lambda) / h;
    const at::Tensor d1 = static_cast<double>(1.0f / r0) * (x0 - previous_x0_);
    prev = prev - static_cast<double>(0.5f * (t.alpha * phi)) * d1;
  }
  previous_x0_ = x0;
  previous_step_ = step;
  return prev.to(model_output.scalar_type());
}

at::Tensor DpmSolverMultistepScheduler::AddNoise(const at::Tensor& original,
                                                 const at::Tensor& noise, int step) const {
  CheckStep(step);
  const VpLevel v = Vp(sigmas_[step]);
  return v.alpha * original + v.sigma * noise;
}

// ---------------------------------------------------------------------------------------------
// LCM

LcmScheduler::LcmScheduler(const SchedulerConfig& config) : Scheduler(config) {
  alphas_cumprod_ = AlphasCumprod(config_, /*zero_snr_floor=*/false);
}

void LcmScheduler::SetTimesteps(int steps) {
  CheckStepCount(steps);
  const int n = config_.num_train_timesteps;
  const int original = config_.original_inference_steps;
  if (original > n) {
    throw std::invalid_argument("lcm: original_inference_steps " + std::to_string(original) +
                                " exceeds num_train_timesteps " + std::to_string(n));
  }
  if (steps > original) {
    throw std::invalid_argument("lcm: " + std::to_string(steps) +
                                " steps exceed original_inference_steps " +
                                std::to_string(original));
  }
  // The distillation schedule: every k-th training timestep, k = n / original (Luo et al. 2023,
  // "skipping-step" sampling), descending; inference takes evenly spaced entries of it.
  const int k = n / original;
  std::vector<double> origin;
  for (int j = original; j >= 1; --j) origin.push_back(j * k - 1);
  const std::vector<double> index = Linspace(0, original, steps, /*endpoint=*/false);
  timesteps_.clear();
  for (double i : index) timesteps_.push_back(origin[static_cast<size_t>(std::floor(i))]);
}

at::Tensor LcmScheduler::Step(const at::Tensor& model_output, int step, const at::Tensor& sample,
                              at::Generator gen) {
  const int t = TrainTimestep(step);
  const bool last_step = step == static_cast<int>(timesteps_.size()) - 1;
  const int prev = last_step ? t : TrainTimestep(step + 1);
  const double a_t = alphas_cumprod_[t];
  const double a_prev = alphas_cumprod_[prev];
  // Consistency-model boundary condition (Song et al. 2023 / LCM eq. 5) on the scaled timestep:
  //   c_skip = sd^2 / (ts^2 + sd^2), c_out = ts / sqrt(ts^2 + sd^2), ts = t * timestep_scaling.
  const double ts = t * config_.timestep_scaling;
  const double sd2 = kLcmSigmaData * kLcmSigmaData;
  const double c_skip = sd2 / (ts * ts + sd2);
  const double c_out = ts / std::sqrt(ts * ts + sd2);
  const at::Tensor x = sample.to(at::kFloat);
  at::Tensor x0 = X0AndEps(config_.prediction_type, model_output.to(at::kFloat), x, a_t).first;
  if (config_.clip_sample) {
    x0 = x0.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }
  const at::Tensor denoised = c_out * x0 + c_skip * x;
  if (last_step) return denoised.to(model_output.scalar_type());
  // LCM Algorithm 1: re-noise the consistency estimate to the next timestep.
  const at::Tensor noise = Randn(model_output, gen).to(at::kFloat);
  return (std::sqrt(a_prev) * denoised + std::sqrt(1 - a_prev) * noise)
      .to(model_output.scalar_type());
}

// ---------------------------------------------------------------------------------------------
// Factory

namespace {

struct NamedScheduler {
  const char* name;
  std::vector<const char*> aliases;
};

const std::vector<NamedScheduler>& Registry() {
  static const std::vector<NamedScheduler> kRegistry = {
      {"ddim", {"ddimscheduler"}},
      {"euler", {"euler_discrete", "eulerdiscretescheduler"}},
      {"euler_a",
       {"euler_ancestral", "euler_ancestral_discrete", "eulerancestraldiscretescheduler"}},
      {"dpmpp_2m",
       {"dpm++_2m", "dpmsolver++", "dpmsolvermultistep", "dpmsolvermultistepscheduler"}},
      {"dpmpp_2m_karras", {"dpm++_2m_karras", "dpmpp_2m_k"}},
      {"lcm", {"lcmscheduler"}},
  };
  return kRegistry;
}

}  // namespace

std::vector<std::string> SchedulerNames() {
  std::vector<std::string> names;
  for (const auto& entry : Registry()) names.emplace_back(entry.name);
  return names;
}

std::unique_ptr<Scheduler> MakeScheduler(std::string_view name, const SchedulerConfig& config) {
  const std::string key = Lower(name);
  std::string canonical;
  for (const auto& entry : Registry()) {
    if (key == entry.name) canonical = entry.name;
    for (const char* alias : entry.aliases) {
      if (key == alias) canonical = entry.name;
    }
  }
  if (canonical == "ddim") return std::make_unique<DdimScheduler>(config);
  if (canonical == "euler")
    return std::make_unique<EulerScheduler>(config, config.use_karras_sigmas);
  if (canonical == "euler_a") return std::make_unique<EulerAncestralScheduler>(config);
  if (canonical == "dpmpp_2m") {
    return std::make_unique<DpmSolverMultistepScheduler>(config, config.use_karras_sigmas);
  }
  if (canonical == "dpmpp_2m_karras") {
    return std::make_unique<DpmSolverMultistepScheduler>(config, /*karras=*/true);
  }
  if (canonical == "lcm") return std::make_unique<LcmScheduler>(config);
  std::string valid;
  for (const std::string& n : SchedulerNames()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown scheduler \"" + std::string(name) +
                              "\"; valid names: " + valid);
}

}  // namespace megaserve::diffusion
