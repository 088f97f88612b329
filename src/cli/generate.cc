#include "cli/generate.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>

#include "core/progress_bar.h"
#include "diffusion/generation_info.h"
#include "media/png.h"

namespace megaserve::cli {

bool ParseSize(const std::string& text, int& width, int& height) {
  int w = 0, h = 0;
  char x = 0, extra = 0;
  if (std::sscanf(text.c_str(), "%d%c%d%c", &w, &x, &h, &extra) != 3 || (x != 'x' && x != 'X') ||
      w <= 0 || h <= 0) {
    return false;
  }
  width = w;
  height = h;
  return true;
}

bool ParseBytes(const std::string& text, int64_t& bytes) {
  double value = 0;
  std::size_t used = 0;
  try {
    value = std::stod(text, &used);
  } catch (...) {
    return false;
  }
  std::string unit = text.substr(used);
  double scale = 1;
  if (unit.empty() || unit == "B")
    scale = 1;
  else if (unit == "K" || unit == "KiB" || unit == "KB")
    scale = 1024.0;
  else if (unit == "M" || unit == "MiB" || unit == "MB")
    scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB" || unit == "GB")
    scale = 1024.0 * 1024 * 1024;
  else
    return false;
  if (!(value >= 0) || !std::isfinite(value)) return false;
  bytes = static_cast<int64_t>(value * scale);
  return true;
}

CLI::App* AddGenerateCommand(CLI::App& app, GenerateFlags& f) {
  auto* cmd = app.add_subcommand(
      "generate",
      "Generate one image from a prompt with a Stable Diffusion model (diffusers folder or "
      "single-file .safetensors) and write it as a PNG carrying its parameters.");
  cmd->add_option("-m,--model", f.load.model_path,
                  "diffusers folder or single-file .safetensors checkpoint")
      ->required();
  cmd->add_option("-p,--prompt", f.params.prompt, "what to draw")->required();
  cmd->add_option("-n,--negative-prompt", f.params.negative_prompt, "what to avoid");
  cmd->add_option("--steps", f.params.steps, "denoising steps (default 20)")
      ->check(CLI::Range(1, 1000));
  cmd->add_option("--scheduler", f.params.scheduler,
                  "sampler: ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm (default "
                  "euler_a)");
  cmd->add_option("-g,--guidance", f.params.guidance,
                  "classifier-free guidance scale; <= 1 disables it (default 7.5)")
      ->check(CLI::Range(0.0, 100.0));
  cmd->add_option("-s,--seed", f.seed, "noise seed, or \"random\" (default; printed)");
  cmd->add_option("--size", f.size, "WIDTHxHEIGHT, multiples of 8 (default 512x512)");
  cmd->add_option("--clip-skip", f.params.clip_skip,
                  "use the text encoder's output this many layers before its last (default 0)")
      ->check(CLI::Range(0, 11));
  cmd->add_option("-o,--out", f.out, "PNG file to write (default image.png)");
  cmd->add_option("--tokenizer", f.load.tokenizer_dir,
                  "tokenizer folder for a single-file checkpoint (default: tokenizer/ beside it)");
  cmd->add_option("--dtype", f.load.dtype,
                  "auto (fp16 on CUDA, bf16 on CPUs with AVX512-BF16, else fp32), fp32, bf16 or "
                  "fp16 (CUDA only)")
      ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp16"}));
  cmd->add_option("--device", f.load.device,
                  "auto (a CUDA GPU when libtorch has CUDA, else the CPU), cpu, cuda or cuda:N");
  cmd->add_option("--threads", f.load.threads, "libtorch intra-op threads (default: libtorch's)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--attention-slice", f.load.attention_slice,
                  "query rows per attention chunk, 0 = automatic (cache-sized)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--vae-tiling", f.load.vae_tiling, "auto, on or off (default auto)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  cmd->add_option("--memory-budget", f.memory_budget,
                  "refuse to start when the estimated peak exceeds this (e.g. 6GiB)");
  cmd->add_option("--prediction-type", f.load.prediction_type,
                  "single-file checkpoints: auto, epsilon or v_prediction")
      ->check(CLI::IsMember({"auto", "epsilon", "v_prediction"}));
  cmd->add_flag("-q,--quiet", f.quiet, "no progress bar");
  return cmd;
}

int RunGenerate(GenerateFlags& f) {
  auto fail = [](int code, const std::string& message) {
    std::fprintf(stderr, "megaserve generate: %s\n", message.c_str());
    return code;
  };
  if (!ParseSize(f.size, f.params.width, f.params.height)) {
    return fail(2, fmt::format("--size '{}' is not WIDTHxHEIGHT (e.g. 512x512)", f.size));
  }
  if (f.seed == "random") {
    f.params.seed = std::random_device{}() % 4294967296u;
  } else {
    try {
      std::size_t used = 0;
      f.params.seed = std::stoull(f.seed, &used);
      if (used != f.seed.size()) throw std::invalid_argument("trailing");
    } catch (...) {
      return fail(2,
                  fmt::format("--seed '{}' is not a non-negative integer or \"random\"", f.seed));
    }
  }
  if (!f.memory_budget.empty() && !ParseBytes(f.memory_budget, f.load.memory_budget_bytes)) {
    return fail(
        2, fmt::format("--memory-budget '{}' is not a size (e.g. 6GiB, 512MiB)", f.memory_budget));
  }
  auto engine = diffusion::LoadTorchEngine();
  if (!engine.ok()) return fail(1, engine.status().message());

  const auto t0 = std::chrono::steady_clock::now();
  auto pipeline = (*engine)->Load(f.load);
  if (!pipeline.ok()) return fail(1, pipeline.status().message());
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!f.quiet) {
    std::fprintf(stderr, "loaded %s in %.1f s: %s\n", f.load.model_path.c_str(), load_s,
                 (*pipeline)->Describe().c_str());
  }

  core::ProgressBar bar;
  const auto t1 = std::chrono::steady_clock::now();
  auto image = (*pipeline)->Generate(f.params, [&](const std::string& phase, int done, int total) {
    if (!f.quiet) bar.Update(phase, done, total);
  });
  bar.Finish();
  if (!image.ok()) return fail(1, image.status().message());
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();

  std::filesystem::path model(f.load.model_path);
  const std::string model_name =
      (model.has_filename() ? model : model.parent_path()).stem().string();
  const auto written =
      media::WritePng(f.out, image->width, image->height, image->rgb,
                      {{"parameters", diffusion::ParametersText(f.params, model_name)}});
  if (!written.ok()) return fail(1, written.message());
  std::printf("wrote %s (%dx%d, seed %llu, %d steps %s, %.1f s)\n", f.out.c_str(), image->width,
              image->height, static_cast<unsigned long long>(f.params.seed), f.params.steps,
              std::string(diffusion::SamplerDisplayName(f.params.scheduler)).c_str(), gen_s);
  return 0;
}

}  // namespace megaserve::cli
