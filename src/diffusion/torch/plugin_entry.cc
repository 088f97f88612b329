// The libtorch plugin's entry point: the one symbol LoadTorchEngine() looks up with dlsym.
// Exceptions stop here: every failure leaves the plugin as a core::Status.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <fmt/format.h>
#include <torch/version.h>

#include <stdexcept>

#include "diffusion/engine.h"
#include "diffusion/torch/pipeline.h"
#include "diffusion/torch/scheduler.h"
#include "diffusion/torch/weights.h"

namespace megaserve::diffusion {
namespace {

class TorchEngine final : public Engine {
 public:
  core::Result<std::unique_ptr<Pipeline>> Load(const LoadParams& params) override {
    try {
      return LoadPipeline(params);
    } catch (const WeightError& e) {
      return core::InvalidArgument(e.what());
    } catch (const std::invalid_argument& e) {
      return core::InvalidArgument(e.what());
    } catch (const std::bad_alloc&) {
      return core::Status(core::StatusCode::kResourceExhausted,
                          fmt::format("out of memory loading {}", params.model_path));
    } catch (const std::exception& e) {
      const std::string what = e.what();
      return core::Internal(
          fmt::format("loading {} failed: {}", params.model_path, what.substr(0, what.find('\n'))));
    }
  }

  std::string Describe() const override {
    const std::string cuda =
        at::hasCUDA() ? fmt::format("{} CUDA GPUs", at::detail::getCUDAHooks().getNumGPUs())
                      : std::string("no CUDA in this build");
    return fmt::format("libtorch {}.{}.{}, CPU ({} threads, default precision {}), {}",
                       TORCH_VERSION_MAJOR, TORCH_VERSION_MINOR, TORCH_VERSION_PATCH,
                       at::get_num_threads(), AutoDtype(), cuda);
  }

  std::vector<std::string> SchedulerNames() const override { return diffusion::SchedulerNames(); }
};

}  // namespace
}  // namespace megaserve::diffusion

extern "C" __attribute__((visibility("default"))) megaserve::diffusion::Engine*
megaserve_torch_engine(int abi_version) {
  if (abi_version != megaserve::diffusion::kEngineAbiVersion) return nullptr;
  static megaserve::diffusion::TorchEngine engine;
  return &engine;
}
