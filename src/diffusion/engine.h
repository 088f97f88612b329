// The diffusion engine as the main binary sees it: an interface implemented by the libtorch
// backend plugin (libmegaserve_torch.so), which LoadTorchEngine() opens with dlopen on first
// use. Nothing here includes a torch header, so `megaserve serve` neither links nor loads
// libtorch until a diffusion model is used.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace megaserve::diffusion {

// How to load a model.
struct LoadParams {
  // A diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)
  // or a single-file checkpoint (.safetensors with the original key names).
  std::string model_path;
  // For single-file checkpoints, which carry no vocabulary: a diffusers `tokenizer/` folder.
  // Empty: `tokenizer/` beside the file.
  std::string tokenizer_dir;
  // "auto" (bf16 on CPUs with AVX512-BF16, fp16 on CUDA, else fp32), "fp32", "bf16", "fp16".
  std::string dtype = "auto";
  // Where to compute: "auto" (the first CUDA GPU when libtorch was built with CUDA and sees one,
  // else the CPU), "cpu", "cuda" or "cuda:N".
  std::string device = "auto";
  // Intra-op threads for libtorch; 0 keeps libtorch's default.
  int threads = 0;
  // Query rows per attention chunk; 0 picks cache-sized chunks (the fastest here).
  int64_t attention_slice = 0;
  // VAE tiling: "auto" (when the image is larger than one tile), "on", "off".
  std::string vae_tiling = "auto";
  // Refuse a generation whose estimated peak memory exceeds this many bytes (0: no limit).
  int64_t memory_budget_bytes = 0;
  // Single-file checkpoints: "auto", "epsilon" or "v_prediction".
  std::string prediction_type = "auto";
  // Convolutions in channels-last memory layout.
  bool channels_last = false;
};

// One text-to-image request.
struct GenerateParams {
  std::string prompt;
  std::string negative_prompt;
  int steps = 20;
  std::string scheduler = "euler_a";
  // Classifier-free guidance scale; <= 1 runs the conditional half alone.
  double guidance = 7.5;
  uint64_t seed = 0;
  int width = 512;
  int height = 512;
  // 0: the text encoder's last layer; k: k layers before it.
  int clip_skip = 0;
};

// An 8-bit RGB image, rows top to bottom.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
};

// Reports progress: `done` of `total` units of the named phase ("encode", "denoise", "decode").
using ProgressFn = std::function<void(const std::string& phase, int done, int total)>;

// A loaded text-to-image model. Generate() may be called from one thread at a time.
class Pipeline {
 public:
  virtual ~Pipeline() = default;

  // Generates an image. Errors: kInvalidArgument for bad parameters (size not a multiple of the
  // latent scale, unknown scheduler, ...), kResourceExhausted when the memory estimate exceeds
  // the budget, kInternal when the output is NaN or entirely black.
  virtual core::Result<Image> Generate(const GenerateParams& params,
                                       const ProgressFn& progress) = 0;

  // Estimated peak bytes (weights plus activations) of a generation with these parameters.
  virtual int64_t EstimateBytes(const GenerateParams& params) const = 0;

  // Bytes held by the loaded weights.
  virtual int64_t memory_bytes() const = 0;

  // One line: variant, precision, device, schedulers available.
  virtual std::string Describe() const = 0;
};

// The engine a plugin provides.
class Engine {
 public:
  virtual ~Engine() = default;
  // Loads a model; kNotFound / kInvalidArgument name the file and what is wrong.
  virtual core::Result<std::unique_ptr<Pipeline>> Load(const LoadParams& params) = 0;
  // libtorch's version and the compute devices it sees.
  virtual std::string Describe() const = 0;
  // The sampler names Generate() accepts.
  virtual std::vector<std::string> SchedulerNames() const = 0;
};

// Bumped whenever Engine, Pipeline or the structs above change layout.
inline constexpr int kEngineAbiVersion = 2;

// The plugin's one exported symbol: returns its engine (owned by the plugin, alive until the
// process ends), or nullptr when `abi_version` differs from the plugin's kEngineAbiVersion.
using EngineEntryFn = Engine* (*)(int abi_version);
inline constexpr const char* kEngineEntrySymbol = "megaserve_torch_engine";

// The libtorch plugin as dlopen opened it: the handle (open until the process ends) and the file.
struct TorchPlugin {
  void* handle = nullptr;
  std::string path;
};

// Opens the libtorch plugin once per process (diffusion and forecast training share it), looking
// where LoadTorchEngine says. Errors (kNotFound, kFailedPrecondition) say where it looked and
// what dlopen reported; a failure is not remembered, so a later call looks again.
core::Result<TorchPlugin> OpenTorchPlugin();

// Opens the libtorch plugin once per process and returns its engine. The plugin is looked for
// at $MEGASERVE_TORCH_PLUGIN, then beside the running binary, then in ../lib/megaserve/ from it.
// Errors (kNotFound, kFailedPrecondition) say where it looked and what dlopen reported.
core::Result<Engine*> LoadTorchEngine();

}  // namespace megaserve::diffusion
