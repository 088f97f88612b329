#include "models/repository.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <exception>
#include <filesystem>
#include <system_error>
#include <thread>
#include <utility>

#include "metrics/registry.h"

namespace megaserve::models {

// One loaded version of a model. Shared by the repository (while it serves) and the handles on
// it, so a version swapped out by a reload lives until its last request is done.
struct ModelHandle::Loaded {
  using Batcher = batching::DynamicBatcher<Input, std::string>;

  std::string name;
  ModelConfig config;
  std::unique_ptr<Model> model;
  // Declared after the model, so it stops (finishing its queue) before the model goes.
  std::unique_ptr<Batcher> batcher;
  std::size_t memory = 0;
  int in_flight = 0;  // handles outstanding; guarded by Repository::mu_

  // A replaced version goes when its last handle does, and that can be a request's handle
  // released by the result callback on one of the version's own batcher threads. Stopping the
  // batcher there would join the very thread, so the batcher and the model are then destroyed
  // on a thread of their own.
  ~Loaded() {
    if (batcher && batcher->OnOwnThread()) {
      std::thread([b = std::move(batcher), m = std::move(model)]() mutable {
        b.reset();  // finishes its work, then the model it calls goes
        m.reset();
      }).detach();
    }
  }

  // Starts the batcher the config asks for; the model must be loaded.
  void StartBatcher(metrics::Registry* registry) {
    const BatchingConfig& b = config.batching;
    batching::DynamicBatcherOptions o;
    o.model = name;
    o.max_batch_size = static_cast<std::size_t>(b.max_batch_size);
    o.max_queue_delay = b.max_queue_delay;
    for (int size : b.preferred_batch_sizes) {
      o.preferred_batch_sizes.push_back(static_cast<std::size_t>(size));
    }
    o.max_queue_size = static_cast<std::size_t>(b.max_queue_size);
    o.priority_levels = b.priority_levels;
    o.wait_spin = std::chrono::microseconds(b.wait_spin_us);
    o.instances = config.instances;
    o.registry = registry;
    Model* m = model.get();
    batcher = std::make_unique<Batcher>(
        std::move(o), [m](std::vector<Input>& inputs) { return m->InferBatch(inputs); });
  }
};

// One load of one model: the single flight that concurrent callers wait on.
struct Repository::Attempt {
  bool done = false;    // guarded by mu_
  core::Status status;  // guarded by mu_; valid once done
};

struct Repository::Entry {
  std::string name;
  std::string dir;
  ModelState state = ModelState::kUnavailable;
  std::shared_ptr<ModelHandle::Loaded> current;  // the version serving; null when none
  std::shared_ptr<Attempt> attempt;              // the load running; null when none
  std::optional<ModelConfig> disk_config;        // last config.toml read successfully
  std::string last_error;
  std::uint64_t last_used = 0;  // LRU tick of the last Acquire
};

namespace {

// A model name is one folder name: no separators, nothing hidden, nothing that climbs out.
bool ValidName(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name.front() != '.' &&
         name.find_first_of("/\\") == std::string_view::npos &&
         name.find('\0') == std::string_view::npos;
}

bool HasConfig(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::is_regular_file(dir + "/config.toml", ec);
}

}  // namespace

std::string_view ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kUnavailable:
      return "unavailable";
    case ModelState::kLoading:
      return "loading";
    case ModelState::kReady:
      return "ready";
    case ModelState::kUnloading:
      return "unloading";
    case ModelState::kFailed:
      return "failed";
  }
  return "unknown";
}

ModelHandle::ModelHandle(ModelHandle&& other) noexcept
    : repository_(other.repository_), loaded_(std::move(other.loaded_)) {}

ModelHandle& ModelHandle::operator=(ModelHandle&& other) noexcept {
  if (this != &other) {
    Release();
    repository_ = other.repository_;
    loaded_ = std::move(other.loaded_);
  }
  return *this;
}

Model& ModelHandle::model() const { return *loaded_->model; }
const ModelConfig& ModelHandle::config() const { return loaded_->config; }
int ModelHandle::version() const { return loaded_->config.version; }
const std::string& ModelHandle::name() const { return loaded_->name; }

void ModelHandle::Infer(Input input, const batching::SubmitOptions& options,
                        std::function<void(core::Result<std::string>)> done) const {
  loaded_->batcher->Submit(std::move(input), options, std::move(done));
}

void ModelHandle::Release() {
  if (!loaded_) return;
  repository_->ReleaseHandle(*loaded_);
  loaded_.reset();  // may destroy a version a reload swapped out, outside the repository's lock
}

Repository::Repository(RepositoryOptions options) : options_(std::move(options)) {
  backends_["echo"] = LoadEchoModel;
  if (options_.registry) {
    loads_total_ = &options_.registry->AddCounter(
        "megaserve_model_loads_total", "Model loads by model and result (success or failure)",
        {"model", "result"});
    memory_bytes_ =
        &options_.registry->AddGauge("megaserve_model_memory_bytes",
                                     "Bytes held by the loaded version of each model", {"model"});
  }
}

Repository::~Repository() = default;

void Repository::RegisterBackend(std::string backend, BackendFactory factory) {
  std::lock_guard lock(mu_);
  backends_[std::move(backend)] = std::move(factory);
}

Repository::Entry* Repository::FindLocked(std::string_view name) {
  if (auto it = entries_.find(name); it != entries_.end()) return it->second.get();
  if (!ValidName(name)) return nullptr;
  std::string dir = options_.dir + "/" + std::string(name);
  if (!HasConfig(dir)) return nullptr;
  auto entry = std::make_unique<Entry>();
  entry->name = std::string(name);
  entry->dir = std::move(dir);
  Entry* raw = entry.get();
  entries_.emplace(raw->name, std::move(entry));
  return raw;
}

core::Result<ModelHandle> Repository::Acquire(std::string_view name) {
  std::unique_lock lock(mu_);
  Entry* entry = FindLocked(name);
  if (!entry) return core::NotFound(fmt::format("model \"{}\" not found", name));
  // Loops because the model may be evicted or unloaded between its load and this thread waking.
  while (true) {
    if (entry->state == ModelState::kUnloading) {
      return core::Unavailable(fmt::format("model \"{}\" is unloading", name));
    }
    if (entry->current) {
      ++entry->current->in_flight;
      entry->last_used = ++clock_;
      return ModelHandle(this, entry->current);
    }
    if (core::Status s = LoadLocked(lock, *entry); !s.ok()) return s;
  }
}

core::Result<ModelHandle> Repository::AcquireLoaded(std::string_view name) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end() || !it->second->current || it->second->state == ModelState::kUnloading) {
    return core::Unavailable(fmt::format("model \"{}\" is not loaded", name));
  }
  Entry& entry = *it->second;
  ++entry.current->in_flight;
  entry.last_used = ++clock_;
  return ModelHandle(this, entry.current);
}

core::Result<ModelInfo> Repository::Load(std::string_view name) {
  std::unique_lock lock(mu_);
  Entry* entry = FindLocked(name);
  if (!entry) return core::NotFound(fmt::format("model \"{}\" not found", name));
  if (entry->state == ModelState::kUnloading) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("model \"{}\" is unloading", name));
  }
  if (core::Status s = LoadLocked(lock, *entry); !s.ok()) return s;
  return InfoLocked(*entry);
}

core::Status Repository::LoadLocked(std::unique_lock<std::mutex>& lock, Entry& entry) {
  std::shared_ptr<Attempt> attempt = entry.attempt;
  if (attempt) {
    cv_.wait(lock, [&] { return attempt->done; });
    return attempt->status;
  }
  attempt = std::make_shared<Attempt>();
  entry.attempt = attempt;
  if (!entry.current) entry.state = ModelState::kLoading;
  Changed(entry.name);
  lock.unlock();
  RunLoad(entry, attempt);
  lock.lock();
  return attempt->status;
}

void Repository::RunLoad(Entry& entry, const std::shared_ptr<Attempt>& attempt) {
  // entry.name and entry.dir never change, so they are read here without the lock.
  core::Status status;
  std::shared_ptr<ModelHandle::Loaded> loaded;
  core::Result<ModelConfig> config = LoadModelConfig(entry.dir + "/config.toml");
  if (!config.ok()) {
    status = config.status();
  } else {
    BackendFactory factory;
    std::vector<std::string> known;
    {
      std::lock_guard lock(mu_);
      if (auto it = backends_.find(config->backend); it != backends_.end()) factory = it->second;
      for (const auto& [backend, unused] : backends_) known.push_back(backend);
    }
    if (!factory) {
      status = core::InvalidArgument(fmt::format("unknown backend \"{}\" (known: {})",
                                                 config->backend, fmt::join(known, ", ")));
    } else {
      loaded = std::make_shared<ModelHandle::Loaded>();
      loaded->name = entry.name;
      loaded->config = *config;
      // A factory or warm-up that throws must still end the single flight, or waiters hang.
      try {
        auto model = factory(ModelSpec{.name = entry.name, .dir = entry.dir, .config = *config});
        if (!model.ok()) {
          status = model.status();
        } else {
          loaded->model = std::move(*model);
          loaded->memory = loaded->model->memory_bytes();
          for (std::size_t i = 0; i < config->warmup_inputs.size() && status.ok(); ++i) {
            auto out = loaded->model->Infer(config->warmup_inputs[i]);
            if (!out.ok()) {
              status = core::Status(out.status().code(), fmt::format("warm-up input {}: {}", i + 1,
                                                                     out.status().message()));
            }
          }
          if (status.ok()) loaded->StartBatcher(options_.registry);
        }
      } catch (const std::exception& e) {
        status = core::Internal(fmt::format("backend \"{}\" threw: {}", config->backend, e.what()));
      }
    }
  }

  std::vector<std::shared_ptr<ModelHandle::Loaded>> released;  // destroyed after the lock
  {
    std::lock_guard lock(mu_);
    if (config.ok()) entry.disk_config = *config;
    if (status.ok() && !MakeRoomLocked(entry, loaded->memory, released)) {
      status = core::Status(
          core::StatusCode::kResourceExhausted,
          fmt::format("model needs {} bytes but the cache (models.cache_bytes = {}) has {} in "
                      "models that are in use or loading",
                      loaded->memory, options_.cache_bytes, cached_bytes_));
    }
    if (status.ok()) {
      std::size_t old_bytes = entry.current ? entry.current->memory : 0;
      cached_bytes_ = cached_bytes_ - old_bytes + loaded->memory;
      released.push_back(std::exchange(entry.current, loaded));  // the atomic swap of a reload
      entry.state = ModelState::kReady;
      entry.last_error.clear();
      entry.last_used = ++clock_;
      SetMemoryGauge(entry.name, loaded->memory);
    } else {
      released.push_back(std::move(loaded));
      entry.last_error = status.message();
      entry.state = entry.current ? ModelState::kReady : ModelState::kFailed;
    }
    attempt->status = status;
    attempt->done = true;
    entry.attempt.reset();
    Changed(entry.name);
    cv_.notify_all();
  }
  CountLoad(entry.name, status.ok());
}

bool Repository::MakeRoomLocked(const Entry& loading, std::size_t bytes,
                                std::vector<std::shared_ptr<ModelHandle::Loaded>>& evicted) {
  if (bytes > options_.cache_bytes) return false;
  // The version being replaced frees its bytes at the swap, so it counts as room.
  const std::size_t replaced = loading.current ? loading.current->memory : 0;
  while (cached_bytes_ - replaced + bytes > options_.cache_bytes) {
    Entry* victim = nullptr;
    for (auto& [name, entry] : entries_) {
      bool idle = entry.get() != &loading && entry->state == ModelState::kReady && entry->current &&
                  entry->current->in_flight == 0 && !entry->attempt;
      if (idle && (!victim || entry->last_used < victim->last_used)) victim = entry.get();
    }
    if (!victim) return false;
    cached_bytes_ -= victim->current->memory;
    evicted.push_back(std::move(victim->current));
    victim->state = ModelState::kUnavailable;
    SetMemoryGauge(victim->name, 0);
    Changed(victim->name);
  }
  return true;
}

void Repository::OnChange(std::function<void(std::string_view name)> listener) {
  std::lock_guard lock(mu_);
  on_change_ = std::move(listener);
}

void Repository::Changed(std::string_view name) {
  if (on_change_) on_change_(name);
}

core::Result<ModelInfo> Repository::Unload(std::string_view name) {
  std::unique_lock lock(mu_);
  Entry* entry = FindLocked(name);
  if (!entry) return core::NotFound(fmt::format("model \"{}\" not found", name));
  if (entry->attempt) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("model \"{}\" is loading", name));
  }
  if (entry->state == ModelState::kUnloading) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("model \"{}\" is already unloading", name));
  }
  if (!entry->current) return InfoLocked(*entry);
  entry->state = ModelState::kUnloading;
  Changed(entry->name);
  std::shared_ptr<ModelHandle::Loaded> target = entry->current;
  // Versions swapped out earlier hold no cache bytes; only the serving one is waited for.
  cv_.wait(lock, [&] { return target->in_flight == 0; });
  cached_bytes_ -= target->memory;
  entry->current.reset();
  entry->state = ModelState::kUnavailable;
  SetMemoryGauge(entry->name, 0);
  Changed(entry->name);
  ModelInfo info = InfoLocked(*entry);
  lock.unlock();
  target.reset();  // the model is destroyed here, outside the lock
  return info;
}

std::vector<ModelInfo> Repository::List() {
  // Read the folder without the lock: it is I/O.
  std::vector<std::pair<std::string, core::Result<ModelConfig>>> found;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(options_.dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    std::string name = it->path().filename().string();
    std::string dir = it->path().string();
    if (!ValidName(name) || !HasConfig(dir)) continue;
    found.emplace_back(name, LoadModelConfig(dir + "/config.toml"));
  }
  std::lock_guard lock(mu_);
  for (auto& [name, config] : found) {
    Entry* entry = FindLocked(name);
    if (entry && config.ok()) entry->disk_config = std::move(*config);
  }
  std::vector<ModelInfo> out;
  for (const auto& [name, entry] : entries_) {
    bool on_disk = false;
    for (const auto& f : found) on_disk = on_disk || f.first == name;
    if (on_disk || entry->current) out.push_back(InfoLocked(*entry));
  }
  return out;
}

core::Result<ModelInfo> Repository::Info(std::string_view name) {
  std::string dir;
  {
    std::lock_guard lock(mu_);
    Entry* entry = FindLocked(name);
    if (!entry) return core::NotFound(fmt::format("model \"{}\" not found", name));
    if (entry->current) return InfoLocked(*entry);
    dir = entry->dir;
  }
  // Not loaded: show what is on disk now.
  core::Result<ModelConfig> config = LoadModelConfig(dir + "/config.toml");
  std::lock_guard lock(mu_);
  Entry* entry = FindLocked(name);
  if (config.ok() && !entry->current) entry->disk_config = std::move(*config);
  return InfoLocked(*entry);
}

std::size_t Repository::cached_bytes() const {
  std::lock_guard lock(mu_);
  return cached_bytes_;
}

ModelInfo Repository::InfoLocked(const Entry& entry) const {
  ModelInfo info;
  info.name = entry.name;
  info.state = entry.state;
  info.last_error = entry.last_error;
  info.reloading = entry.attempt && entry.current;
  if (entry.current) {
    info.version = entry.current->config.version;
    info.memory_bytes = entry.current->memory;
    info.config = entry.current->config;
  } else if (entry.disk_config) {
    info.version = entry.disk_config->version;
    info.config = entry.disk_config;
  }
  return info;
}

void Repository::ReleaseHandle(ModelHandle::Loaded& loaded) {
  std::lock_guard lock(mu_);
  if (--loaded.in_flight == 0) cv_.notify_all();
}

void Repository::CountLoad(const std::string& name, bool ok) {
  if (loads_total_) loads_total_->WithLabels({name, ok ? "success" : "failure"}).Inc();
}

void Repository::SetMemoryGauge(const std::string& name, std::size_t bytes) {
  if (memory_bytes_) memory_bytes_->WithLabels({name}).Set(static_cast<double>(bytes));
}

}  // namespace megaserve::models
