#include "diffusion/torch/pipeline.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "diffusion/clip_tokenizer.h"
#include "diffusion/torch/checkpoint.h"
#include "diffusion/torch/clip_text_encoder.h"
#include "diffusion/torch/parallel.h"
#include "diffusion/torch/scheduler.h"
#include "diffusion/torch/unet.h"
#include "diffusion/torch/vae.h"

namespace megaserve::diffusion {
namespace {

namespace fs = std::filesystem;

// Latent tile edge for VAE tiling: 64 latent pixels = 512 image pixels, the size SD1 was
// trained at; 16 of them overlap so the cross-fade hides GroupNorm's per-tile statistics.
constexpr int64_t kVaeTile = 64;
constexpr int64_t kVaeOverlap = 16;

bool CpuHasAvx512Bf16() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) return line.find(" avx512_bf16") != std::string::npos;
  }
  return false;
}

at::Device ResolveDevice(const std::string& name) {
  if (name == "cpu") return at::kCPU;
  if (name == "auto") return at::hasCUDA() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  if (name != "cuda" && name.rfind("cuda:", 0) != 0) {
    throw std::invalid_argument(
        fmt::format("unknown device '{}' (auto, cpu, cuda or cuda:N)", name));
  }
  if (!at::hasCUDA()) {
    throw std::invalid_argument(fmt::format(
        "device {} needs a CUDA build of libtorch and a GPU; this libtorch computes on the CPU "
        "only (use --device cpu)",
        name));
  }
  try {
    const at::Device device(name);
    if (device.has_index() && device.index() >= at::detail::getCUDAHooks().getNumGPUs()) {
      throw std::invalid_argument(fmt::format("device {}: this machine has {} CUDA GPUs", name,
                                              at::detail::getCUDAHooks().getNumGPUs()));
    }
    return device.has_index() ? device : at::Device(at::kCUDA, 0);
  } catch (const c10::Error&) {
    throw std::invalid_argument(fmt::format("unknown device '{}' (cuda:N with N a number)", name));
  }
}

at::ScalarType ResolveDtype(const std::string& name, const at::Device& device) {
  const std::string chosen = name != "auto" ? name : device.is_cuda() ? "fp16" : AutoDtype();
  if (chosen == "fp32") return at::kFloat;
  if (chosen == "bf16") return at::kBFloat16;
  if (chosen == "fp16") {
    if (device.is_cuda()) return at::kHalf;
    throw std::invalid_argument(
        "dtype fp16 is for CUDA devices; on the CPU use fp32 or bf16 (this libtorch " +
        std::string(at::hasCUDA() ? "has CUDA: add --device cuda)" : "has no CUDA)"));
  }
  throw std::invalid_argument(fmt::format("unknown dtype '{}' (auto, fp32, bf16, fp16)", name));
}

std::string DtypeName(at::ScalarType t) {
  return t == at::kBFloat16 ? "bf16" : t == at::kHalf ? "fp16" : "fp32";
}

class TorchPipeline final : public Pipeline {
 public:
  TorchPipeline(const LoadParams& load, ComputeOptions options, ClipTokenizer tokenizer,
                std::unique_ptr<ClipTextEncoder> text_encoder, std::unique_ptr<UNet> unet,
                std::unique_ptr<Vae> vae, SchedulerConfig scheduler, std::string variant)
      : load_(load),
        options_(options),
        tokenizer_(std::move(tokenizer)),
        text_encoder_(std::move(text_encoder)),
        unet_(std::move(unet)),
        vae_(std::move(vae)),
        scheduler_config_(std::move(scheduler)),
        variant_(std::move(variant)) {
    if (text_encoder_->config().hidden_size != unet_->config().cross_attention_dim) {
      throw std::invalid_argument(fmt::format(
          "the text encoder's hidden size {} differs from the UNet's cross_attention_dim {}",
          text_encoder_->config().hidden_size, unet_->config().cross_attention_dim));
    }
  }

  core::Result<Image> Generate(const GenerateParams& params, const ProgressFn& progress) override {
    try {
      return Run(params, progress);
    } catch (const std::invalid_argument& e) {
      return core::InvalidArgument(e.what());
    } catch (const std::out_of_range& e) {
      return core::InvalidArgument(e.what());
    } catch (const std::exception& e) {
      return core::Internal(fmt::format("generation failed: {}", FirstLine(e.what())));
    }
  }

  int64_t EstimateBytes(const GenerateParams& p) const override {
    const int64_t elem = at::elementSize(options_.dtype);
    const int64_t down = vae_->downscale();
    const int64_t h = p.height / down, w = p.width / down;
    const int64_t batch = p.guidance > 1 ? 2 : 1;
    const auto& uc = unet_->config();
    // UNet: every skip activation of the down path stays alive until the up path consumes it,
    // plus a few working tensors of the widest level and attention's scores.
    int64_t skips = 0, widest = 0, tokens = h * w;
    for (std::size_t i = 0; i < uc.block_out_channels.size(); ++i) {
      const int64_t level_tokens = tokens >> (2 * i);
      const int64_t act = batch * uc.block_out_channels[i] * level_tokens * elem;
      skips += act * (uc.layers_per_block[std::min(i, uc.layers_per_block.size() - 1)] + 1);
      widest = std::max(widest, act);
    }
    const int64_t rows =
        options_.attention_slice > 0 ? std::min<int64_t>(options_.attention_slice, tokens) : tokens;
    const int64_t scores = batch * uc.attention_heads.front() * rows * tokens * 4;
    const int64_t unet_peak = skips + 6 * widest + scores;
    // VAE decode: at full resolution the widest block holds ~4 live tensors of
    // block_out_channels[0] channels; the mid-block attention is single-head at latent size.
    const bool tiled = UseTiling(p);
    const int64_t th = tiled ? std::min(h, kVaeTile) : h, tw = tiled ? std::min(w, kVaeTile) : w;
    const auto& vc = vae_->config();
    const int64_t vae_peak = 4 * vc.block_out_channels.front() * th * tw * down * down * elem +
                             (th * tw) * (th * tw) * 4 + 3 * p.width * p.height * 4;
    return memory_bytes() + std::max(unet_peak, vae_peak);
  }

  int64_t memory_bytes() const override {
    return static_cast<int64_t>(text_encoder_->bytes() + unet_->bytes() + vae_->bytes());
  }

  std::string Describe() const override {
    return fmt::format(
        "{} ({}), {} on {}, {} threads, UNet {} MiB, text encoder {} MiB, VAE {} MiB", variant_,
        scheduler_config_.prediction_type == PredictionType::kVPrediction ? "v-prediction"
                                                                          : "epsilon",
        DtypeName(options_.dtype), options_.device.str(), at::get_num_threads(),
        unet_->bytes() >> 20, text_encoder_->bytes() >> 20, vae_->bytes() >> 20);
  }

 private:
  static std::string FirstLine(const std::string& s) { return s.substr(0, s.find('\n')); }

  bool UseTiling(const GenerateParams& p) const {
    if (load_.vae_tiling == "on") return true;
    if (load_.vae_tiling == "off") return false;
    const int64_t down = vae_->downscale();
    return p.height / down > kVaeTile || p.width / down > kVaeTile;
  }

  void Validate(const GenerateParams& p) const {
    // The latent must halve evenly at every UNet level.
    const int64_t multiple =
        vae_->downscale() * (int64_t{1} << (unet_->config().block_out_channels.size() - 1));
    if (p.width <= 0 || p.height <= 0 || p.width % multiple != 0 || p.height % multiple != 0) {
      throw std::invalid_argument(
          fmt::format("size {}x{} must be positive multiples of {} for this model", p.width,
                      p.height, multiple));
    }
    if (p.width > 4096 || p.height > 4096) {
      throw std::invalid_argument(
          fmt::format("size {}x{} exceeds the 4096x4096 maximum", p.width, p.height));
    }
    if (p.steps < 1 || p.steps > 1000) {
      throw std::invalid_argument(fmt::format("steps {} is outside [1, 1000]", p.steps));
    }
    if (!(p.guidance >= 0) || p.guidance > 100) {
      throw std::invalid_argument(fmt::format("guidance {} is outside [0, 100]", p.guidance));
    }
  }

  at::Tensor Tokens(const std::string& text) const {
    const int64_t length = text_encoder_->config().max_position_embeddings;
    const std::vector<int32_t> ids = tokenizer_.Encode(text, static_cast<int>(length));
    return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0);
  }

  core::Result<Image> Run(const GenerateParams& p, const ProgressFn& progress) {
    Validate(p);
    if (load_.memory_budget_bytes > 0) {
      const int64_t estimate = EstimateBytes(p);
      if (estimate > load_.memory_budget_bytes) {
        return core::Status(
            core::StatusCode::kResourceExhausted,
            fmt::format("a {}x{} generation needs about {} MiB, over the {} MiB memory budget; "
                        "use a smaller size, --attention-slice or VAE tiling",
                        p.width, p.height, estimate >> 20, load_.memory_budget_bytes >> 20));
      }
    }
    std::unique_ptr<Scheduler> scheduler = MakeScheduler(p.scheduler, scheduler_config_);
    scheduler->SetTimesteps(p.steps);
    auto report = [&](const char* phase, int done, int total) {
      if (progress) progress(phase, done, total);
    };

    at::InferenceMode inference;
    const bool guided = p.guidance > 1;
    report("encode", 0, 1);
    at::Tensor context = text_encoder_->Encode(Tokens(p.prompt), p.clip_skip);
    if (guided) {
      at::Tensor uncond = text_encoder_->Encode(Tokens(p.negative_prompt), p.clip_skip);
      context = at::cat({uncond, context});  // one batch: [uncond, cond]
    }
    report("encode", 1, 1);

    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(p.seed);
    const int64_t down = vae_->downscale();
    // Drawn on the CPU generator whatever the device, so a seed means the same image everywhere.
    at::Tensor latents =
        at::randn({1, unet_->config().in_channels, p.height / down, p.width / down}, gen,
                  at::TensorOptions().dtype(at::kFloat))
            .to(options_.device) *
        scheduler->init_noise_sigma();
    const auto& timesteps = scheduler->timesteps();
    for (int i = 0; i < p.steps; ++i) {
      report("denoise", i, p.steps);
      at::Tensor input = scheduler->ScaleModelInput(latents, i).to(options_.dtype);
      if (guided) input = at::cat({input, input});
      const at::Tensor t = at::full({input.size(0)}, timesteps[i], at::kFloat);
      at::Tensor out = unet_->Forward(input, t, context).to(at::kFloat);
      if (guided) {
        auto halves = out.chunk(2);
        out = halves[0] + p.guidance * (halves[1] - halves[0]);
      }
      latents = scheduler->Step(out, i, latents, gen);
    }
    report("denoise", p.steps, p.steps);

    report("decode", 0, 1);
    at::Tensor z = (latents / vae_->scaling_factor()).to(options_.dtype);
    at::Tensor pixels =
        UseTiling(p) ? vae_->DecodeTiled(z, kVaeTile, kVaeOverlap) : vae_->Decode(z);
    pixels = pixels.to(at::kCPU, at::kFloat);
    report("decode", 1, 1);
    if (!at::isfinite(pixels).all().item<bool>()) {
      return core::Internal(
          "the model produced NaN or infinite values (try --dtype fp32, or check the weights)");
    }
    // [-1, 1] -> [0, 255], HWC.
    at::Tensor rgb = ((pixels[0] + 1) * 127.5).round_().clamp_(0, 255).to(at::kByte);
    rgb = rgb.permute({1, 2, 0}).contiguous();
    if (rgb.max().item<int>() == 0) {
      return core::Internal("the model produced an entirely black image");
    }
    Image image;
    image.height = static_cast<int>(rgb.size(0));
    image.width = static_cast<int>(rgb.size(1));
    image.rgb.assign(rgb.data_ptr<uint8_t>(), rgb.data_ptr<uint8_t>() + rgb.numel());
    return image;
  }

  LoadParams load_;
  ComputeOptions options_;
  ClipTokenizer tokenizer_;
  std::unique_ptr<ClipTextEncoder> text_encoder_;
  std::unique_ptr<UNet> unet_;
  std::unique_ptr<Vae> vae_;
  SchedulerConfig scheduler_config_;
  std::string variant_;
};

ClipTokenizer LoadTokenizer(const fs::path& dir) {
  auto tokenizer = ClipTokenizer::Load(dir.string());
  if (!tokenizer.ok()) throw std::invalid_argument(tokenizer.status().message());
  return std::move(tokenizer).value();
}

std::unique_ptr<Pipeline> LoadFolder(const LoadParams& params, const ComputeOptions& options) {
  const fs::path root(params.model_path);
  for (const char* part : {"unet", "vae", "text_encoder", "tokenizer"}) {
    if (!fs::is_directory(root / part)) {
      throw std::invalid_argument(
          fmt::format("{} is not a diffusers Stable Diffusion folder: it has no {}/ (expected "
                      "model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)",
                      root.string(), part));
    }
  }
  const fs::path scheduler_file = root / "scheduler" / "scheduler_config.json";
  SchedulerConfig scheduler = fs::exists(scheduler_file)
                                  ? SchedulerConfig::FromFile(scheduler_file.string())
                                  : SchedulerConfig{};
  auto text_encoder = ClipTextEncoder::Load(root / "text_encoder", options);
  const std::string variant = text_encoder->config().hidden_size >= 1024 ? "sd2" : "sd1";
  return std::make_unique<TorchPipeline>(
      params, options,
      LoadTokenizer(params.tokenizer_dir.empty() ? root / "tokenizer"
                                                 : fs::path(params.tokenizer_dir)),
      std::move(text_encoder), UNet::Load(root / "unet", options), Vae::Load(root / "vae", options),
      std::move(scheduler), variant);
}

std::unique_ptr<Pipeline> LoadSingleFile(const LoadParams& params, const ComputeOptions& options) {
  const fs::path file(params.model_path);
  const fs::path tokenizer_dir = params.tokenizer_dir.empty() ? file.parent_path() / "tokenizer"
                                                              : fs::path(params.tokenizer_dir);
  if (!fs::is_directory(tokenizer_dir)) {
    throw std::invalid_argument(fmt::format(
        "a single-file checkpoint carries no tokenizer vocabulary: put a diffusers tokenizer/ "
        "folder (vocab.json, merges.txt) beside {} or pass --tokenizer DIR (looked for {})",
        file.string(), tokenizer_dir.string()));
  }
  CheckpointComponents parts = LoadCheckpoint(file.string(), options, params.prediction_type);
  const std::string source = file.string();
  auto text_encoder = std::make_unique<ClipTextEncoder>(
      ClipTextConfig::FromJson(parts.text_encoder_config_json, source + " (text encoder)"),
      parts.text_encoder, options);
  auto unet = std::make_unique<UNet>(
      UNetConfig::FromJson(parts.unet_config_json, source + " (UNet)"), parts.unet, options);
  auto vae = std::make_unique<Vae>(VaeConfig::FromJson(parts.vae_config_json, source + " (VAE)"),
                                   parts.vae, options);
  return std::make_unique<TorchPipeline>(
      params, options, LoadTokenizer(tokenizer_dir), std::move(text_encoder), std::move(unet),
      std::move(vae), SchedulerConfig::FromJson(parts.scheduler_config_json, source),
      parts.variant);
}

}  // namespace

std::string AutoDtype() { return CpuHasAvx512Bf16() ? "bf16" : "fp32"; }

std::unique_ptr<Pipeline> LoadPipeline(const LoadParams& params) {
  ComputeOptions options;
  options.device = ResolveDevice(params.device);
  options.dtype = ResolveDtype(params.dtype, options.device);
  options.channels_last = params.channels_last;
  options.attention_slice = params.attention_slice;
  if (params.attention_slice < 0) throw std::invalid_argument("attention_slice must be >= 0");
  if (params.vae_tiling != "auto" && params.vae_tiling != "on" && params.vae_tiling != "off") {
    throw std::invalid_argument(
        fmt::format("vae_tiling '{}' is not auto, on or off", params.vae_tiling));
  }
  ConfigureComputeThreads(params.threads);
  at::InferenceMode inference;
  const fs::path path(params.model_path);
  if (fs::is_directory(path)) return LoadFolder(params, options);
  if (fs::is_regular_file(path)) return LoadSingleFile(params, options);
  throw std::invalid_argument(
      fmt::format("model {} does not exist (give a diffusers folder or a .safetensors checkpoint)",
                  params.model_path));
}

}  // namespace megaserve::diffusion
