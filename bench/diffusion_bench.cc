// Diffusion engine benchmarks (driven by bench/diffusion.sh).
//
//   diffusion_bench unet --model UNET_DIR [--steps 3] [--threads 2] [--dtype fp32|bf16]
//                        [--batch 2] [--latent 64] [--slice 0] [--out OUT.safetensors]
//       Times UNet forward passes on the inputs bench/diffusion_torch.py draws (same seeds,
//       same generator): sample [batch, 4, latent, latent], timesteps 999, text context
//       [batch, 77, cross_attention_dim]. Prints `result unet_step_ms=...` (median of the steps
//       after one warm-up) and writes the last output for the comparison with PyTorch.
//   diffusion_bench vae-decode --model VAE_DIR [--size 1024] [--tiled on|off] [--threads 2]
//       Decodes one random latent for a size x size image and prints the time and the process's
//       peak resident memory (getrusage), so tiled and untiled runs are compared in separate
//       processes.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "diffusion/torch/parallel.h"
#include "diffusion/torch/unet.h"
#include "diffusion/torch/vae.h"
#include "diffusion/torch/weights.h"

namespace {

using namespace megaserve::diffusion;
using Clock = std::chrono::steady_clock;

double PeakRssMiB() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

ComputeOptions Options(const std::string& dtype, int64_t slice) {
  ComputeOptions o;
  o.dtype = dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  o.attention_slice = slice;
  o.channels_last = false;  // slower on CPUs without AVX-512 (oneDNN 2.6)
  return o;
}

int RunUNet(const std::string& dir, int steps, const std::string& dtype, int batch, int latent,
            int64_t slice, const std::string& out) {
  at::InferenceMode guard;
  const auto t0 = Clock::now();
  auto unet = UNet::Load(dir, Options(dtype, slice));
  std::printf("loaded %s in %.1f s (%zu MiB of weights), %d threads\n", dir.c_str(),
              std::chrono::duration<double>(Clock::now() - t0).count(), unet->bytes() >> 20,
              at::get_num_threads());
  // The same draws as bench/diffusion_torch.py: one generator, sample then context.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1234);
  const int64_t c = unet->config().in_channels;
  at::Tensor sample = at::randn({batch, c, latent, latent}, gen, at::kFloat);
  at::Tensor context = at::randn({batch, 77, unet->config().cross_attention_dim}, gen, at::kFloat);
  at::Tensor t = at::full({batch}, 999.0, at::kFloat);
  const auto dt = unet->options().dtype;
  sample = sample.to(dt);
  context = context.to(dt);
  std::vector<double> ms;
  at::Tensor result;
  for (int i = 0; i <= steps; ++i) {
    const auto s = Clock::now();
    result = unet->Forward(sample, t, context);
    const double took = std::chrono::duration<double, std::milli>(Clock::now() - s).count();
    std::printf("step %d: %.0f ms%s\n", i, took, i == 0 ? " (warm-up)" : "");
    if (i > 0) ms.push_back(took);
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  std::printf("result unet_step_ms=%.1f dtype=%s batch=%d latent=%d threads=%d peak_rss_mib=%.0f\n",
              median, dtype.c_str(), batch, latent, at::get_num_threads(), PeakRssMiB());
  if (!out.empty()) {
    // Written with the Python side's reader in mind: a one-tensor safetensors file.
    at::Tensor f = result.to(at::kFloat).contiguous();
    const std::string header = "{\"out\":{\"dtype\":\"F32\",\"shape\":[" +
                               std::to_string(f.size(0)) + "," + std::to_string(f.size(1)) + "," +
                               std::to_string(f.size(2)) + "," + std::to_string(f.size(3)) +
                               "],\"data_offsets\":[0," + std::to_string(f.numel() * 4) + "]}}";
    std::FILE* file = std::fopen(out.c_str(), "wb");
    if (file == nullptr) return 1;
    const uint64_t n = header.size();
    std::fwrite(&n, 8, 1, file);
    std::fwrite(header.data(), 1, header.size(), file);
    std::fwrite(f.data_ptr<float>(), 4, f.numel(), file);
    std::fclose(file);
  }
  return 0;
}

int RunVaeDecode(const std::string& dir, int size, bool tiled) {
  at::InferenceMode guard;
  auto vae = Vae::Load(dir, Options("fp32", 0));
  const double before = PeakRssMiB();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(99);
  const int64_t latent = size / vae->downscale();
  at::Tensor z = at::randn({1, vae->config().latent_channels, latent, latent}, gen, at::kFloat);
  const auto s = Clock::now();
  at::Tensor image = tiled ? vae->DecodeTiled(z) : vae->Decode(z);
  const double took = std::chrono::duration<double>(Clock::now() - s).count();
  std::printf(
      "result vae_decode size=%d tiled=%d seconds=%.1f peak_rss_mib=%.0f "
      "rss_after_load_mib=%.0f finite=%d\n",
      size, tiled ? 1 : 0, took, PeakRssMiB(), before,
      at::isfinite(image).all().item<bool>() ? 1 : 0);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Diffusion engine benchmarks: `unet` step time, `vae-decode` peak memory"};
  app.require_subcommand(1);
  std::string model, dtype = "fp32", out, tiled = "off";
  int steps = 3, threads = 2, batch = 2, latent = 64, size = 1024;
  int64_t slice = 0;
  auto* unet = app.add_subcommand("unet", "UNet forward time");
  unet->add_option("--model", model, "diffusers unet/ folder")->required();
  unet->add_option("--steps", steps, "timed steps after one warm-up")->check(CLI::Range(1, 100));
  unet->add_option("--dtype", dtype)->check(CLI::IsMember({"fp32", "bf16"}));
  unet->add_option("--batch", batch)->check(CLI::Range(1, 64));
  unet->add_option("--latent", latent)->check(CLI::Range(8, 256));
  unet->add_option("--slice", slice, "attention query rows per chunk, 0 = automatic");
  unet->add_option("--out", out, "write the last output here (safetensors)");
  auto* vae = app.add_subcommand("vae-decode", "VAE decode time and peak memory");
  vae->add_option("--model", model, "diffusers vae/ folder")->required();
  vae->add_option("--size", size, "image edge in pixels")->check(CLI::Range(64, 4096));
  vae->add_option("--tiled", tiled)->check(CLI::IsMember({"on", "off"}));
  for (auto* cmd : {unet, vae}) {
    cmd->add_option("--threads", threads, "intra-op threads")->check(CLI::Range(1, 256));
  }
  CLI11_PARSE(app, argc, argv);
  ConfigureComputeThreads(threads);
  if (*unet) return RunUNet(model, steps, dtype, batch, latent, slice, out);
  return RunVaeDecode(model, size, tiled == "on");
}
