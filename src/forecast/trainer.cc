#include "forecast/trainer.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <mutex>

#include "diffusion/engine.h"

namespace megaserve::forecast {

core::Result<Trainer*> LoadTorchTrainer() {
  static std::mutex mu;
  static Trainer* trainer = nullptr;
  std::lock_guard lock(mu);
  if (trainer != nullptr) return trainer;
  auto plugin = diffusion::OpenTorchPlugin();
  if (!plugin.ok()) return plugin.status();  // not cached: the user may fix it and retry
  auto entry = reinterpret_cast<TrainerEntryFn>(dlsym(plugin->handle, kTrainerEntrySymbol));
  if (entry == nullptr) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("{} has no forecast trainer (no {} symbol); rebuild it with "
                                    "this binary (make release)",
                                    plugin->path, kTrainerEntrySymbol));
  }
  Trainer* opened = entry(kTrainerAbiVersion);
  if (opened == nullptr) {
    return core::Status(
        core::StatusCode::kFailedPrecondition,
        fmt::format("{} was built for another megaserve version (trainer ABI {} expected); "
                    "rebuild it with this binary (make release)",
                    plugin->path, kTrainerAbiVersion));
  }
  trainer = opened;
  return trainer;
}

}  // namespace megaserve::forecast
