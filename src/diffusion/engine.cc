#include "diffusion/engine.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

namespace megaserve::diffusion {
namespace {

constexpr const char* kPluginFile = "libmegaserve_torch.so";

std::filesystem::path ExecutableDir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path() : exe.parent_path();
}

std::vector<std::string> Candidates() {
  std::vector<std::string> paths;
  if (const char* env = std::getenv("MEGASERVE_TORCH_PLUGIN"); env != nullptr && *env != '\0') {
    paths.emplace_back(env);
    return paths;  // an explicit choice is the only place looked at
  }
  const auto dir = ExecutableDir();
  if (!dir.empty()) {
    paths.push_back((dir / kPluginFile).string());
    paths.push_back((dir / ".." / "lib" / "megaserve" / kPluginFile).lexically_normal().string());
  }
  return paths;
}

core::Result<TorchPlugin> Open() {
  const auto paths = Candidates();
  for (const auto& path : paths) {
    if (!std::filesystem::exists(path)) continue;
    // RTLD_LOCAL keeps libtorch's symbols out of the main binary's namespace.
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      return core::Status(core::StatusCode::kFailedPrecondition,
                          fmt::format("cannot load the libtorch plugin {}: {}", path, dlerror()));
    }
    return TorchPlugin{handle, path};  // the handle stays open for the life of the process
  }
  return core::NotFound(fmt::format(
      "the libtorch plugin ({}) was not found; looked at: {}. Build it with `make release` "
      "or point MEGASERVE_TORCH_PLUGIN at it",
      kPluginFile,
      paths.empty() ? std::string("(nowhere)") : fmt::format("{}", fmt::join(paths, ", "))));
}

core::Result<Engine*> OpenEngine() {
  auto plugin = OpenTorchPlugin();
  if (!plugin.ok()) return plugin.status();
  const std::string& path = plugin->path;
  auto entry = reinterpret_cast<EngineEntryFn>(dlsym(plugin->handle, kEngineEntrySymbol));
  if (entry == nullptr) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("{} is not a megaserve libtorch plugin (no {} symbol)", path,
                                    kEngineEntrySymbol));
  }
  Engine* engine = entry(kEngineAbiVersion);
  if (engine == nullptr) {
    return core::Status(
        core::StatusCode::kFailedPrecondition,
        fmt::format("{} was built for another megaserve version (engine ABI {} expected); "
                    "rebuild it with this binary (make release)",
                    path, kEngineAbiVersion));
  }
  return engine;
}

}  // namespace

core::Result<TorchPlugin> OpenTorchPlugin() {
  static std::mutex mu;
  static TorchPlugin plugin;
  std::lock_guard lock(mu);
  if (plugin.handle != nullptr) return plugin;
  auto opened = Open();
  if (!opened.ok()) return opened.status();  // not cached: the user may fix it and retry
  plugin = *opened;
  return plugin;
}

core::Result<Engine*> LoadTorchEngine() {
  static std::mutex mu;
  static Engine* engine = nullptr;
  std::lock_guard lock(mu);
  if (engine != nullptr) return engine;
  auto opened = OpenEngine();
  if (!opened.ok()) return opened.status();  // not cached: the user may fix it and retry
  engine = *opened;
  return engine;
}

}  // namespace megaserve::diffusion
