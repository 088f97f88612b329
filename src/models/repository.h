// The model repository: the models found in a folder, loaded on demand into a cache bounded by
// bytes.
//
// Layout: <dir>/<name>/config.toml (see model_config.h) plus the model's files. A model is
// loaded by the factory registered for its backend, then warmed up with its warm-up inputs, and
// only then serves.
//
// Lifecycle of one model:
//   unavailable --Acquire/Load--> loading --ok--> ready --Unload--> unloading --> unavailable
//                                        \--error--> failed (the reason is kept; a later
//                                                            Acquire or Load tries again)
// A reload (Load of a ready model, e.g. after its version changed on disk) loads the new version
// beside the old one, which keeps serving until the new one is warm; the swap is one pointer
// exchange under the lock. If the new version fails, the old one stays and last_error says why.
//
// Single flight: at most one load per model runs at a time; every Acquire or Load that arrives
// while it runs waits for that load and shares its result.
//
// Cache: the bytes of the loaded models (Model::memory_bytes) are bounded by cache_bytes. When a
// freshly loaded model does not fit, idle models (no handle outstanding) are evicted, least
// recently acquired first; a model in use is never evicted. If it still does not fit, the load
// fails with ResourceExhausted. A model's bytes are known only once it has loaded, so memory
// briefly exceeds the bound while the newcomer loads.
//
// Batching: every loaded version serves its requests through its own batching::DynamicBatcher,
// configured by the version's config.toml ([batching] and `instances` worker threads, each
// calling Model::InferBatch). Warm-up inputs run before the batcher starts. When a version is
// replaced or unloaded, its batcher finishes the requests it queued before the version goes.
//
// Thread-safe. One mutex guards the table of models; loads and warm-ups run without it.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "batching/dynamic_batcher.h"
#include "core/status.h"
#include "models/backend.h"
#include "models/model_config.h"

namespace megaserve::metrics {
class Registry;
class Counter;
class Gauge;
template <class M>
class Family;
}  // namespace megaserve::metrics

namespace megaserve::models {

enum class ModelState { kUnavailable, kLoading, kReady, kUnloading, kFailed };

// "unavailable", "loading", "ready", "unloading" or "failed".
std::string_view ModelStateName(ModelState state);

// A snapshot of one model, for listings and status pages.
struct ModelInfo {
  std::string name;
  ModelState state = ModelState::kUnavailable;
  // The version serving now, or the version on disk when none is loaded (0 when its config.toml
  // could not be read).
  int version = 0;
  std::size_t memory_bytes = 0;       // of the version serving now; 0 when none is loaded
  std::optional<ModelConfig> config;  // the serving version's, else the one last read from disk
  std::string last_error;             // why the last load failed; empty after a success
  bool reloading = false;             // a new version is loading while the old one serves
};

struct RepositoryOptions {
  std::string dir;                                                // holds one folder per model
  std::size_t cache_bytes = std::size_t{8} * 1024 * 1024 * 1024;  // bound on loaded bytes
  metrics::Registry* registry = nullptr;  // model metrics go here; null = none
};

class Repository;

// Keeps one loaded model version alive and counted as in flight. Unload waits for every handle
// of the model to be released, and eviction skips models with handles outstanding. Movable, not
// copyable; the Repository must outlive it.
class ModelHandle {
 public:
  ModelHandle() = default;
  ~ModelHandle() { Release(); }
  ModelHandle(ModelHandle&& other) noexcept;
  ModelHandle& operator=(ModelHandle&& other) noexcept;
  ModelHandle(const ModelHandle&) = delete;  // No copying allowed.
  ModelHandle& operator=(const ModelHandle&) = delete;

  explicit operator bool() const { return loaded_ != nullptr; }
  Model& model() const;
  const ModelConfig& config() const;
  int version() const;
  const std::string& name() const;

  // Queues one request on the model's batcher (config.toml's [batching] and `instances`);
  // `done` receives the output JSON, on a batcher thread, or at once on this thread when the
  // request is refused. Errors: kResourceExhausted when the queue is full (its message carries
  // retry_after_s, see batching::RetryAfterSeconds), kDeadlineExceeded past options.deadline,
  // kUnavailable while this version is being replaced or unloaded, or the backend's error. Keep
  // the handle until `done` runs: unload waits for it.
  void Infer(Input input, const batching::SubmitOptions& options,
             std::function<void(core::Result<std::string>)> done) const;

  // Gives the model back early; the handle is empty afterwards.
  void Release();

 private:
  friend class Repository;
  struct Loaded;
  ModelHandle(Repository* repository, std::shared_ptr<Loaded> loaded)
      : repository_(repository), loaded_(std::move(loaded)) {}

  Repository* repository_ = nullptr;
  std::shared_ptr<Loaded> loaded_;
};

class Repository {
 public:
  // Nothing is read until the first call; the "echo" backend is registered.
  explicit Repository(RepositoryOptions options);
  // Every ModelHandle must have been released.
  ~Repository();
  Repository(const Repository&) = delete;  // No copying allowed.
  Repository& operator=(const Repository&) = delete;

  // Makes `factory` load models whose config names `backend`, replacing any earlier one.
  void RegisterBackend(std::string backend, BackendFactory factory);

  // A handle on the model, loading it first if needed (single flight). Errors: NotFound for a
  // name with no <dir>/<name>/config.toml; Unavailable while the model is unloading; the load's
  // error when it fails (InvalidArgument for a bad config.toml, ResourceExhausted when the cache
  // has no room, or whatever the backend reported).
  core::Result<ModelHandle> Acquire(std::string_view name);

  // A handle on the version serving now, without loading or reading the folder: for callers on
  // an I/O thread, which fall back to Acquire elsewhere. kUnavailable when the model is not
  // loaded (or unknown, or unloading).
  core::Result<ModelHandle> AcquireLoaded(std::string_view name);

  // Loads the model, or reloads it from disk if it is loaded (see the top of this file); joins a
  // load already running. Returns the model's state afterwards. Errors: as Acquire, and
  // FailedPrecondition while the model is unloading.
  core::Result<ModelInfo> Load(std::string_view name);

  // Waits until every handle on the model is released, then unloads it. New Acquires fail with
  // Unavailable meanwhile. Unloading a model that is not loaded succeeds. Errors: NotFound;
  // FailedPrecondition while the model is loading or already unloading.
  // Sets fn(name), called whenever a model's state changes (loading, ready, failed, evicted,
  // unloading, unloaded): caches of model metadata drop their entries. Runs with the
  // repository's lock held, so it must not call back into the repository.
  void OnChange(std::function<void(std::string_view name)> listener);

  core::Result<ModelInfo> Unload(std::string_view name);

  // Every model in the folder, by name; reads the folder.
  std::vector<ModelInfo> List();

  // One model's state. Errors: NotFound.
  core::Result<ModelInfo> Info(std::string_view name);

  // Bytes of the models loaded now.
  std::size_t cached_bytes() const;

 private:
  friend class ModelHandle;
  struct Entry;
  struct Attempt;

  // The entry for `name`, discovering it on disk when it is new. Null when there is no such
  // model. Requires mu_.
  Entry* FindLocked(std::string_view name);
  // Runs one load of `entry` as the single flight's leader, then publishes its result.
  void RunLoad(Entry& entry, const std::shared_ptr<Attempt>& attempt);
  // Starts a load (or joins the one running) and waits for its result. Requires `lock` on mu_.
  core::Status LoadLocked(std::unique_lock<std::mutex>& lock, Entry& entry);
  // Evicts idle models, least recently used first, until `bytes` more fit; false if they cannot.
  // The evicted models are moved to `evicted` so that they are destroyed without mu_. Requires
  // mu_.
  bool MakeRoomLocked(const Entry& loading, std::size_t bytes,
                      std::vector<std::shared_ptr<ModelHandle::Loaded>>& evicted);
  ModelInfo InfoLocked(const Entry& entry) const;
  void ReleaseHandle(ModelHandle::Loaded& loaded);
  void CountLoad(const std::string& name, bool ok);
  void SetMemoryGauge(const std::string& name, std::size_t bytes);

  const RepositoryOptions options_;
  metrics::Family<metrics::Counter>* loads_total_ = nullptr;
  metrics::Family<metrics::Gauge>* memory_bytes_ = nullptr;

  mutable std::mutex mu_;
  std::function<void(std::string_view)> on_change_;  // guarded by mu_
  void Changed(std::string_view name);               // with mu_ held
  std::condition_variable cv_;                       // a load finished, or a handle was released
  std::map<std::string, BackendFactory, std::less<>> backends_;         // guarded by mu_
  std::map<std::string, std::unique_ptr<Entry>, std::less<>> entries_;  // guarded by mu_
  std::size_t cached_bytes_ = 0;                                        // guarded by mu_
  std::uint64_t clock_ = 0;                                             // LRU ticks, guarded by mu_
};

}  // namespace megaserve::models
