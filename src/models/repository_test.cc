#include "models/repository.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "metrics/registry.h"

namespace megaserve::models {
namespace {

using ::testing::HasSubstr;

// A model whose output names its version, so tests see which version served them.
class FakeModel final : public Model {
 public:
  FakeModel(int version, std::size_t bytes) : version_(version), bytes_(bytes) {}
  ~FakeModel() override { alive_ = 0; }
  std::size_t memory_bytes() const override { return bytes_; }
  core::Result<std::string> Infer(std::string_view input) override {
    if (alive_ != kAlive) return core::Internal("used after destruction");
    return fmt::format("v{}", version_);
  }

 private:
  static constexpr int kAlive = 0x600d;
  const int version_;
  const std::size_t bytes_;
  volatile int alive_ = kAlive;
};

// The "fake" backend: counts loads, can hold them at a gate until the test opens it, and fails
// or sizes models as the test says.
class FakeBackend {
 public:
  BackendFactory Factory() {
    return [this](const ModelSpec& spec) -> core::Result<std::unique_ptr<Model>> {
      std::unique_lock lock(mu_);
      ++started_;
      cv_.notify_all();
      cv_.wait(lock, [&] { return open_; });
      if (auto it = failures_.find(spec.name); it != failures_.end()) {
        return core::Internal(it->second);
      }
      ++created_;
      std::size_t bytes = sizes_.count(spec.name) ? sizes_[spec.name] : 10;
      return std::unique_ptr<Model>(std::make_unique<FakeModel>(spec.config.version, bytes));
    };
  }

  void Close() {
    std::lock_guard lock(mu_);
    open_ = false;
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Waits until `n` loads in all have entered the factory.
  void WaitStarted(int n) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return started_ >= n; });
  }
  int created() {
    std::lock_guard lock(mu_);
    return created_;
  }
  void SetSize(const std::string& name, std::size_t bytes) {
    std::lock_guard lock(mu_);
    sizes_[name] = bytes;
  }
  void SetFailure(const std::string& name, std::string message) {
    std::lock_guard lock(mu_);
    failures_[name] = std::move(message);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int started_ = 0;
  int created_ = 0;
  std::map<std::string, std::size_t> sizes_;
  std::map<std::string, std::string> failures_;
};

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "/models_repo_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  void WriteModel(const std::string& name, int version, const std::string& backend = "fake",
                  const std::string& extra = "") {
    std::filesystem::create_directories(dir_ + "/" + name);
    std::ofstream(dir_ + "/" + name + "/config.toml")
        << "backend = \"" << backend << "\"\nversion = " << version << "\n"
        << extra;
  }

  std::unique_ptr<Repository> Make(std::size_t cache_bytes = 1000,
                                   metrics::Registry* registry = nullptr) {
    auto repo = std::make_unique<Repository>(
        RepositoryOptions{.dir = dir_, .cache_bytes = cache_bytes, .registry = registry});
    repo->RegisterBackend("fake", backend_.Factory());
    return repo;
  }

  static std::string Run(const ModelHandle& handle) {
    auto out = handle.model().Infer("{}");
    return out.ok() ? *out : out.status().ToString();
  }

  // Polls until the model reaches `state`; the transitions waited for are already under way.
  static void WaitState(Repository& repo, const std::string& name, ModelState state) {
    while (repo.Info(name)->state != state) std::this_thread::yield();
  }

  std::string dir_;
  FakeBackend backend_;
};

TEST_F(RepositoryTest, UnknownModelsAreNotFound) {
  auto repo = Make();
  for (const char* name : {"missing", "", "..", "../etc", "a/b", ".hidden"}) {
    auto handle = repo->Acquire(name);
    ASSERT_FALSE(handle.ok()) << name;
    EXPECT_EQ(handle.status().code(), core::StatusCode::kNotFound) << name;
    EXPECT_EQ(repo->Load(name).status().code(), core::StatusCode::kNotFound);
    EXPECT_EQ(repo->Unload(name).status().code(), core::StatusCode::kNotFound);
    EXPECT_EQ(repo->Info(name).status().code(), core::StatusCode::kNotFound);
  }
}

TEST_F(RepositoryTest, ListsModelsOnDisk) {
  WriteModel("a", 1);
  WriteModel("b", 5);
  std::filesystem::create_directories(dir_ + "/not_a_model");
  auto repo = Make();
  auto models = repo->List();
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].name, "a");
  EXPECT_EQ(models[0].state, ModelState::kUnavailable);
  EXPECT_EQ(models[1].name, "b");
  EXPECT_EQ(models[1].version, 5);
  ASSERT_TRUE(models[1].config);
  EXPECT_EQ(models[1].config->backend, "fake");
}

TEST_F(RepositoryTest, AcquireLoadsOnDemand) {
  WriteModel("a", 2);
  backend_.SetSize("a", 123);
  metrics::Registry registry;
  auto repo = Make(1000, &registry);
  auto handle = repo->Acquire("a");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  EXPECT_EQ(Run(*handle), "v2");
  EXPECT_EQ(handle->version(), 2);
  auto info = repo->Info("a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, ModelState::kReady);
  EXPECT_EQ(info->memory_bytes, 123u);
  EXPECT_EQ(repo->cached_bytes(), 123u);
  std::string text = registry.Expose();
  EXPECT_THAT(text, HasSubstr(R"(megaserve_model_loads_total{model="a",result="success"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(megaserve_model_memory_bytes{model="a"} 123)"));
}

TEST_F(RepositoryTest, AcquireLoadedNeverLoads) {
  WriteModel("a", 2);
  auto repo = Make();
  auto cold = repo->AcquireLoaded("a");
  ASSERT_FALSE(cold.ok());
  EXPECT_EQ(cold.status().code(), core::StatusCode::kUnavailable);
  EXPECT_EQ(repo->AcquireLoaded("missing").status().code(), core::StatusCode::kUnavailable);
  auto info = repo->Info("a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, ModelState::kUnavailable);

  ASSERT_TRUE(repo->Acquire("a").ok());
  auto warm = repo->AcquireLoaded("a");
  ASSERT_TRUE(warm.ok()) << warm.status().ToString();
  EXPECT_EQ(Run(*warm), "v2");
  warm->Release();
  ASSERT_TRUE(repo->Unload("a").ok());
  EXPECT_EQ(repo->AcquireLoaded("a").status().code(), core::StatusCode::kUnavailable);
}

TEST_F(RepositoryTest, EchoBackendIsBuiltIn) {
  WriteModel("e", 1, "echo", "[warmup]\ninputs = [{ text = \"warm\" }]\n");
  auto repo = Make();
  auto handle = repo->Acquire("e");
  ASSERT_TRUE(handle.ok()) << handle.status().ToString();
  auto out = handle->model().Infer(R"({"x":1})");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, R"({"x":1})");
  EXPECT_EQ(repo->Info("e")->memory_bytes, std::filesystem::file_size(dir_ + "/e/config.toml"));
}

TEST_F(RepositoryTest, BadConfigAndUnknownBackendFailTheLoad) {
  WriteModel("bad", 1, "fake", "colour = \"blue\"\n");
  WriteModel("nobackend", 1, "tensorrt");
  metrics::Registry registry;
  auto repo = Make(1000, &registry);
  auto handle = repo->Acquire("bad");
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(handle.status().message(), HasSubstr("unknown key \"colour\""));
  EXPECT_THAT(handle.status().message(), HasSubstr("bad/config.toml:3:"));
  auto info = repo->Info("bad");
  EXPECT_EQ(info->state, ModelState::kFailed);
  EXPECT_THAT(info->last_error, HasSubstr("colour"));

  auto loaded = repo->Load("nobackend");
  ASSERT_FALSE(loaded.ok());
  EXPECT_THAT(loaded.status().message(), HasSubstr("unknown backend \"tensorrt\""));
  EXPECT_THAT(registry.Expose(),
              HasSubstr(R"(megaserve_model_loads_total{model="bad",result="failure"} 1)"));
}

TEST_F(RepositoryTest, ConcurrentFirstAcquiresLoadOnce) {
  WriteModel("a", 1);
  auto repo = Make();
  backend_.Close();
  constexpr int kThreads = 16;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      auto handle = repo->Acquire("a");
      if (handle.ok() && Run(*handle) == "v1") ++ok;
    });
  }
  backend_.WaitStarted(1);
  EXPECT_EQ(repo->Info("a")->state, ModelState::kLoading);
  // Give the other threads time to arrive while the load is held; they must join it either way.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  backend_.Open();
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads);
  EXPECT_EQ(backend_.created(), 1);
}

TEST_F(RepositoryTest, ConcurrentFirstAcquiresShareAFailure) {
  WriteModel("a", 1);
  backend_.SetFailure("a", "out of device memory");
  auto repo = Make();
  backend_.Close();
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto handle = repo->Acquire("a");
      if (!handle.ok() && handle.status().message() == "out of device memory") ++failed;
    });
  }
  backend_.WaitStarted(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  backend_.Open();
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 8);
  EXPECT_EQ(repo->Info("a")->state, ModelState::kFailed);
  EXPECT_EQ(repo->Info("a")->last_error, "out of device memory");
}

TEST_F(RepositoryTest, EvictsLeastRecentlyUsedIdleModel) {
  for (const char* name : {"a", "b", "c"}) {
    WriteModel(name, 1);
    backend_.SetSize(name, 40);
  }
  auto repo = Make(100);
  ASSERT_TRUE(repo->Acquire("a").ok());  // each handle is released at once
  ASSERT_TRUE(repo->Acquire("b").ok());
  ASSERT_TRUE(repo->Acquire("a").ok());  // b is now the least recently used
  ASSERT_TRUE(repo->Acquire("c").ok());
  EXPECT_EQ(repo->Info("a")->state, ModelState::kReady);
  EXPECT_EQ(repo->Info("b")->state, ModelState::kUnavailable);
  EXPECT_EQ(repo->Info("c")->state, ModelState::kReady);
  EXPECT_EQ(repo->cached_bytes(), 80u);
  EXPECT_EQ(backend_.created(), 3);
}

TEST_F(RepositoryTest, NeverEvictsAModelInUse) {
  for (const char* name : {"a", "b", "c"}) {
    WriteModel(name, 1);
    backend_.SetSize(name, 40);
  }
  auto repo = Make(100);
  auto a = repo->Acquire("a");
  auto b = repo->Acquire("b");
  ASSERT_TRUE(a.ok() && b.ok());
  auto c = repo->Acquire("c");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), core::StatusCode::kResourceExhausted);
  EXPECT_EQ(repo->Info("a")->state, ModelState::kReady);
  EXPECT_EQ(repo->Info("b")->state, ModelState::kReady);
  EXPECT_EQ(Run(*a), "v1");
  // Once one is idle it can make room.
  a->Release();
  c = repo->Acquire("c");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(repo->Info("a")->state, ModelState::kUnavailable);
  EXPECT_EQ(repo->Info("b")->state, ModelState::kReady);
}

TEST_F(RepositoryTest, ModelLargerThanTheCacheFails) {
  WriteModel("huge", 1);
  backend_.SetSize("huge", 5000);
  auto repo = Make(1000);
  auto handle = repo->Acquire("huge");
  ASSERT_FALSE(handle.ok());
  EXPECT_EQ(handle.status().code(), core::StatusCode::kResourceExhausted);
  EXPECT_EQ(repo->cached_bytes(), 0u);
}

TEST_F(RepositoryTest, UnloadWaitsForInFlightHandles) {
  WriteModel("a", 1);
  auto repo = Make();
  auto handle = repo->Acquire("a");
  ASSERT_TRUE(handle.ok());
  std::atomic<bool> unloaded{false};
  std::thread unloader([&] {
    auto info = repo->Unload("a");
    EXPECT_TRUE(info.ok());
    EXPECT_EQ(info->state, ModelState::kUnavailable);
    unloaded = true;
  });
  WaitState(*repo, "a", ModelState::kUnloading);
  EXPECT_FALSE(unloaded.load());
  auto during = repo->Acquire("a");
  ASSERT_FALSE(during.ok());
  EXPECT_EQ(during.status().code(), core::StatusCode::kUnavailable);
  EXPECT_EQ(repo->Load("a").status().code(), core::StatusCode::kFailedPrecondition);
  EXPECT_EQ(Run(*handle), "v1");  // the request in flight still runs
  handle->Release();
  unloader.join();
  EXPECT_TRUE(unloaded.load());
  EXPECT_EQ(repo->cached_bytes(), 0u);
  // Unloading again is a no-op; acquiring loads it afresh.
  EXPECT_TRUE(repo->Unload("a").ok());
  EXPECT_TRUE(repo->Acquire("a").ok());
  EXPECT_EQ(backend_.created(), 2);
}

TEST_F(RepositoryTest, UnloadDuringLoadConflicts) {
  WriteModel("a", 1);
  auto repo = Make();
  backend_.Close();
  std::thread loader([&] { EXPECT_TRUE(repo->Load("a").ok()); });
  backend_.WaitStarted(1);
  auto unload = repo->Unload("a");
  ASSERT_FALSE(unload.ok());
  EXPECT_EQ(unload.status().code(), core::StatusCode::kFailedPrecondition);
  backend_.Open();
  loader.join();
}

TEST_F(RepositoryTest, ReloadSwapsAtomically) {
  WriteModel("a", 1);
  auto repo = Make();
  auto old_handle = repo->Acquire("a");
  ASSERT_TRUE(old_handle.ok());
  WriteModel("a", 2);
  backend_.Close();
  std::thread reloader([&] {
    auto info = repo->Load("a");
    ASSERT_TRUE(info.ok()) << info.status().ToString();
    EXPECT_EQ(info->version, 2);
  });
  backend_.WaitStarted(2);
  // While version 2 loads, version 1 serves.
  auto info = repo->Info("a");
  EXPECT_EQ(info->state, ModelState::kReady);
  EXPECT_TRUE(info->reloading);
  EXPECT_EQ(info->version, 1);
  auto during = repo->Acquire("a");
  ASSERT_TRUE(during.ok());
  EXPECT_EQ(Run(*during), "v1");
  backend_.Open();
  reloader.join();
  auto after = repo->Acquire("a");
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(Run(*after), "v2");
  // Requests that began before the swap finish on the old version.
  EXPECT_EQ(Run(*old_handle), "v1");
  EXPECT_EQ(Run(*during), "v1");
  EXPECT_FALSE(repo->Info("a")->reloading);
  EXPECT_EQ(repo->cached_bytes(), 10u);
}

TEST_F(RepositoryTest, FailedReloadKeepsTheOldVersion) {
  WriteModel("a", 1);
  metrics::Registry registry;
  auto repo = Make(1000, &registry);
  ASSERT_TRUE(repo->Load("a").ok());
  WriteModel("a", 2);
  backend_.SetFailure("a", "weights are corrupt");
  auto reload = repo->Load("a");
  ASSERT_FALSE(reload.ok());
  EXPECT_EQ(reload.status().message(), "weights are corrupt");
  auto handle = repo->Acquire("a");
  ASSERT_TRUE(handle.ok());
  EXPECT_EQ(Run(*handle), "v1");
  auto info = repo->Info("a");
  EXPECT_EQ(info->state, ModelState::kReady);
  EXPECT_EQ(info->version, 1);
  EXPECT_EQ(info->last_error, "weights are corrupt");
  std::string text = registry.Expose();
  EXPECT_THAT(text, HasSubstr(R"(megaserve_model_loads_total{model="a",result="failure"} 1)"));
  EXPECT_THAT(text, HasSubstr(R"(megaserve_model_loads_total{model="a",result="success"} 1)"));
  // A bad config.toml on disk is also a failed reload that keeps version 1.
  WriteModel("a", 0);
  EXPECT_EQ(repo->Load("a").status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(*repo->Acquire("a")), "v1");
}

// Threads acquire, run, release, unload and reload at random over a cache too small for every
// model at once. Errors the API allows under contention are fine; a crash, a use after free
// (FakeModel::Infer checks) or a data race (under ThreadSanitizer) is not.
TEST_F(RepositoryTest, StressConcurrentOperations) {
  const std::vector<std::string> names = {"m0", "m1", "m2", "m3"};
  for (const std::string& name : names) {
    WriteModel(name, 1);
    backend_.SetSize(name, 30);
  }
  auto repo = Make(100);
  constexpr int kThreads = 8;
  constexpr int kOps = 2000;
  std::atomic<int> served{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kOps; ++i) {
        const std::string& name = names[rng() % names.size()];
        int op = static_cast<int>(rng() % 20);
        if (op == 0) {
          auto s = repo->Unload(name).status();
          EXPECT_TRUE(s.ok() || s.code() == core::StatusCode::kFailedPrecondition) << s.ToString();
        } else if (op == 1) {
          auto s = repo->Load(name).status();
          EXPECT_TRUE(s.ok() || s.code() == core::StatusCode::kFailedPrecondition ||
                      s.code() == core::StatusCode::kResourceExhausted)
              << s.ToString();
        } else if (op == 2) {
          EXPECT_TRUE(repo->Info(name).ok());
          EXPECT_EQ(repo->List().size(), names.size());
        } else {
          auto handle = repo->Acquire(name);
          if (handle.ok()) {
            EXPECT_EQ(Run(*handle), "v1");
            ++served;
          } else {
            auto code = handle.status().code();
            EXPECT_TRUE(code == core::StatusCode::kUnavailable ||
                        code == core::StatusCode::kResourceExhausted)
                << handle.status().ToString();
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(served.load(), 0);
  EXPECT_LE(repo->cached_bytes(), 100u);
  std::size_t total = 0;
  for (const ModelInfo& info : repo->List()) {
    EXPECT_TRUE(info.state == ModelState::kReady || info.state == ModelState::kUnavailable)
        << info.name << " " << ModelStateName(info.state);
    total += info.memory_bytes;
  }
  EXPECT_EQ(total, repo->cached_bytes());
}

}  // namespace
}  // namespace megaserve::models
