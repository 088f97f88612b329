// The model repository API over real sockets: list, get, load, unload and their errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;

std::string Post(std::string_view path) {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n";
  return r;
}

std::string PostJson(std::string_view path, std::string_view body) {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\n\r\n";
  r += body;
  return r;
}

rapidjson::Document Json(const std::string& body) {
  rapidjson::Document d;
  d.Parse(body.c_str());
  EXPECT_FALSE(d.HasParseError()) << body;
  return d;
}

// A server whose data folder holds an echo model "echo" (version 2) and a model "broken" whose
// backend does not exist.
class ModelsApiTest : public ::testing::Test {
 protected:
  ModelsApiTest() : server_(Config()) {}

  static core::Config Config() {
    core::Config config = TestConfig();
    std::string models = config.data_dir + "/models";
    std::filesystem::create_directories(models + "/echo");
    std::ofstream(models + "/echo/config.toml")
        << "backend = \"echo\"\nversion = 2\n[batching]\nmax_batch_size = 4\n"
           "max_queue_delay = \"5ms\"\n[warmup]\ninputs = [{ text = \"hi\" }]\n";
    std::ofstream(models + "/echo/weights.bin") << std::string(100, 'w');
    std::filesystem::create_directories(models + "/broken");
    std::ofstream(models + "/broken/config.toml") << "backend = \"no_such_backend\"\n";
    // Served by the "gated" backend the inference tests register: one instance, batches of up
    // to 4, and room for two queued requests.
    std::filesystem::create_directories(models + "/gated");
    std::ofstream(models + "/gated/config.toml")
        << "backend = \"gated\"\ninstances = 1\n[batching]\nmax_batch_size = 4\n"
           "max_queue_delay = \"1ms\"\nmax_queue_size = 2\n";
    return config;
  }

  // A backend whose batches wait until Open(); records every batch's size.
  struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    int waiting = 0;  // batches blocked at the gate
    std::vector<std::size_t> batch_sizes;

    void Open() {
      std::lock_guard lock(mu);
      open = true;
      cv.notify_all();
    }
    bool WaitForBlockedBatch() {
      std::unique_lock lock(mu);
      return cv.wait_for(lock, std::chrono::seconds(10), [this] { return waiting > 0; });
    }
  };
  class GatedModel final : public models::Model {
   public:
    explicit GatedModel(Gate& gate) : gate_(gate) {}
    std::size_t memory_bytes() const override { return 1; }
    core::Result<std::string> Infer(std::string_view input) override { return std::string(input); }
    std::vector<core::Result<std::string>> InferBatch(
        const std::vector<models::Input>& inputs) override {
      std::unique_lock lock(gate_.mu);
      gate_.batch_sizes.push_back(inputs.size());
      ++gate_.waiting;
      gate_.cv.notify_all();
      gate_.cv.wait(lock, [this] { return gate_.open; });
      --gate_.waiting;
      return Model::InferBatch(inputs);
    }

   private:
    Gate& gate_;
  };
  void RegisterGate() {
    server_.app().models().RegisterBackend("gated", [this](const models::ModelSpec&) {
      return core::Result<std::unique_ptr<models::Model>>(std::make_unique<GatedModel>(gate_));
    });
  }

  ~ModelsApiTest() override { gate_.Open(); }  // a failed test must not leave a batch blocked

  Gate gate_;  // declared before the server, which may run batches until it stops
  TestServer server_;

  void SetUp() override { server_.Start(); }

  std::optional<RawResponse> Call(const std::string& request) {
    RawClient c(server_.port());
    return c.Roundtrip(request);
  }
};

TEST_F(ModelsApiTest, ListsModels) {
  auto r = Call(Get("/v1/models"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->Header("content-type"), HasSubstr("application/json"));
  auto d = Json(r->body);
  EXPECT_STREQ(d["object"].GetString(), "list");
  ASSERT_EQ(d["data"].Size(), 3u);  // by name: broken, echo, gated
  const auto& broken = d["data"][0];
  EXPECT_STREQ(broken["name"].GetString(), "broken");
  const auto& echo = d["data"][1];
  EXPECT_STREQ(echo["name"].GetString(), "echo");
  EXPECT_EQ(echo["version"].GetInt(), 2);
  EXPECT_STREQ(echo["status"].GetString(), "unavailable");
  EXPECT_EQ(echo["memory_bytes"].GetUint64(), 0u);
  EXPECT_STREQ(d["data"][2]["name"].GetString(), "gated");
}

TEST_F(ModelsApiTest, LoadGetUnload) {
  auto r = Call(Post("/v1/models/echo/load"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto d = Json(r->body);
  EXPECT_STREQ(d["status"].GetString(), "ready");
  std::uintmax_t bytes = 0;
  for (const auto& f :
       std::filesystem::directory_iterator(server_.config().data_dir + "/models/echo")) {
    bytes += f.file_size();
  }
  EXPECT_EQ(d["memory_bytes"].GetUint64(), bytes);

  r = Call(Get("/v1/models/echo"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  d = Json(r->body);
  EXPECT_STREQ(d["name"].GetString(), "echo");
  EXPECT_STREQ(d["status"].GetString(), "ready");
  EXPECT_TRUE(d["last_error"].IsNull());
  EXPECT_STREQ(d["config"]["backend"].GetString(), "echo");
  EXPECT_EQ(d["config"]["batching"]["max_batch_size"].GetInt(), 4);
  EXPECT_STREQ(d["config"]["batching"]["max_queue_delay"].GetString(), "5ms");
  EXPECT_EQ(d["config"]["batching"]["wait_spin_us"].GetInt(), 50);  // the default
  EXPECT_STREQ(d["config"]["warmup"]["inputs"][0]["text"].GetString(), "hi");

  r = Call(Get("/metrics"));
  ASSERT_TRUE(r);
  EXPECT_THAT(r->body,
              HasSubstr(R"(megaserve_model_loads_total{model="echo",result="success"} 1)"));
  EXPECT_THAT(r->body,
              HasSubstr(R"(megaserve_model_memory_bytes{model="echo"} )" + std::to_string(bytes)));

  r = Call(Post("/v1/models/echo/unload"));
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200);
  d = Json(r->body);
  EXPECT_STREQ(d["status"].GetString(), "unavailable");
  EXPECT_EQ(d["memory_bytes"].GetUint64(), 0u);
}

TEST_F(ModelsApiTest, UnknownModelIs404) {
  for (const std::string& request :
       {Get("/v1/models/nope"), Post("/v1/models/nope/load"), Post("/v1/models/nope/unload")}) {
    auto r = Call(request);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << request;
    auto d = Json(r->body);
    EXPECT_STREQ(d["error"]["code"].GetString(), "model_not_found");
  }
}

TEST_F(ModelsApiTest, FailedLoadIs500WithTheReason) {
  auto r = Call(Post("/v1/models/broken/load"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 500);
  auto d = Json(r->body);
  EXPECT_STREQ(d["error"]["code"].GetString(), "model_load_failed");
  EXPECT_THAT(d["error"]["message"].GetString(), HasSubstr("unknown backend \"no_such_backend\""));
  r = Call(Get("/v1/models/broken"));
  ASSERT_TRUE(r);
  d = Json(r->body);
  EXPECT_STREQ(d["status"].GetString(), "failed");
  EXPECT_THAT(d["last_error"].GetString(), HasSubstr("no_such_backend"));
}

TEST_F(ModelsApiTest, UnloadWhileInUseWaitsAndLoadConflicts) {
  auto handle = server_.app().models().Acquire("echo");
  ASSERT_TRUE(handle.ok());
  RawClient unloader(server_.port());
  ASSERT_TRUE(unloader.Send(Post("/v1/models/echo/unload")));
  // The unload waits for the handle. Once it is under way (status "unloading"), a load is a
  // conflict.
  std::string status;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (status != "unloading" && std::chrono::steady_clock::now() < deadline) {
    auto info = Call(Get("/v1/models/echo"));
    ASSERT_TRUE(info);
    auto doc = Json(info->body);
    status = doc.HasMember("status") && doc["status"].IsString() ? doc["status"].GetString() : "";
    if (status != "unloading") std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(status, "unloading");
  auto r = Call(Post("/v1/models/echo/load"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409) << r->body;
  EXPECT_STREQ(Json(r->body)["error"]["code"].GetString(), "model_conflict");
  handle->Release();
  auto done = unloader.Read();
  ASSERT_TRUE(done);
  EXPECT_EQ(done->status, 200);
}

TEST_F(ModelsApiTest, InferenceAnswersEachRequestWithItsOwnOutput) {
  std::vector<std::thread> clients;
  std::vector<std::string> outputs(12);
  for (int i = 0; i < 12; ++i) {
    clients.emplace_back([&, i] {
      RawClient c(server_.port());
      auto r = c.Roundtrip(
          PostJson("/v1/models/echo/infer", R"({"input":{"n":)" + std::to_string(i) + "}}"));
      if (r && r->status == 200) outputs[i] = r->body;
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(outputs[i], R"({"object":"inference","model":"echo","version":2,"output":{"n":)" +
                              std::to_string(i) + "}}");
  }
  auto metrics = Call(Get("/metrics"));
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("megaserve_inference_request_success_total{model=\"echo\"} 12"));
}

TEST_F(ModelsApiTest, InferenceRefusesBadRequestsWithJsonErrors) {
  struct Case {
    std::string path, body, code;
    int status;
  };
  const std::vector<Case> cases = {
      {"/v1/models/echo/infer", "not json", "invalid_json", 400},
      {"/v1/models/echo/infer", R"({"priority":1})", "missing_input", 400},
      {"/v1/models/echo/infer", R"({"input":1,"priority":0})", "invalid_priority", 400},
      {"/v1/models/echo/infer", R"({"input":1,"timeout_ms":-5})", "invalid_timeout", 400},
      {"/v1/models/echo/infer", R"({"input":1,"extra":true})", "unknown_field", 400},
      {"/v1/models/nope/infer", R"({"input":1})", "model_not_found", 404},
      {"/v1/models/broken/infer", R"({"input":1})", "model_load_failed", 500},
  };
  for (const Case& c : cases) {
    auto r = Call(PostJson(c.path, c.body));
    ASSERT_TRUE(r) << c.body;
    EXPECT_EQ(r->status, c.status) << c.body << " -> " << r->body;
    EXPECT_STREQ(Json(r->body)["error"]["code"].GetString(), c.code.c_str()) << r->body;
  }
}

TEST_F(ModelsApiTest, InferenceBatchesQueuedRequestsAndAFullQueueIs429) {
  RegisterGate();
  // The first request executes alone and blocks at the gate.
  RawClient first(server_.port());
  ASSERT_TRUE(first.Send(PostJson("/v1/models/gated/infer", R"({"input":0})")));
  ASSERT_TRUE(gate_.WaitForBlockedBatch());
  // Two more fill the queue (max_queue_size = 2); wait until the batcher counts both.
  RawClient second(server_.port()), third(server_.port());
  ASSERT_TRUE(second.Send(PostJson("/v1/models/gated/infer", R"({"input":1})")));
  ASSERT_TRUE(third.Send(PostJson("/v1/models/gated/infer", R"({"input":2})")));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    auto m = Call(Get("/metrics"));
    if (m && m->body.find("megaserve_inference_pending_requests{model=\"gated\"} 2") !=
                 std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  // A fourth finds the queue full: 429 at once, with Retry-After, and it never runs.
  auto full = Call(PostJson("/v1/models/gated/infer", R"({"input":3})"));
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 429) << full->body;
  EXPECT_STREQ(Json(full->body)["error"]["code"].GetString(), "queue_full");
  EXPECT_GE(std::atoi(full->Header("retry-after").c_str()), 1);
  gate_.Open();
  for (RawClient* c : {&first, &second, &third}) {
    auto r = c->Read();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
  std::lock_guard lock(gate_.mu);
  // The two queued requests ran together, in one batch after the first.
  EXPECT_EQ(gate_.batch_sizes, (std::vector<std::size_t>{1, 2}));
}

TEST_F(ModelsApiTest, InferencePastItsDeadlineIs504AndNeverRuns) {
  RegisterGate();
  RawClient first(server_.port());
  ASSERT_TRUE(first.Send(PostJson("/v1/models/gated/infer", R"({"input":0})")));
  ASSERT_TRUE(gate_.WaitForBlockedBatch());
  // Queued behind the blocked batch, this one's 50 ms run out while it waits.
  auto late = Call(PostJson("/v1/models/gated/infer", R"({"input":1,"timeout_ms":50})"));
  ASSERT_TRUE(late);
  EXPECT_EQ(late->status, 504) << late->body;
  EXPECT_STREQ(Json(late->body)["error"]["code"].GetString(), "deadline_exceeded");
  gate_.Open();
  auto r = first.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  std::lock_guard lock(gate_.mu);
  EXPECT_EQ(gate_.batch_sizes, (std::vector<std::size_t>{1}));
}

TEST_F(ModelsApiTest, AReloadWhileARequestRunsLetsItFinishOnTheOldVersion) {
  RegisterGate();
  RawClient running(server_.port());
  ASSERT_TRUE(running.Send(PostJson("/v1/models/gated/infer", R"({"input":"old"})")));
  ASSERT_TRUE(gate_.WaitForBlockedBatch());
  // The reload swaps in a new version; the running request's handle is now the old version's
  // last one, and it is released on the old version's own batcher thread.
  auto reload = Call(Post("/v1/models/gated/load"));
  ASSERT_TRUE(reload);
  ASSERT_EQ(reload->status, 200) << reload->body;
  gate_.Open();
  auto r = running.Read();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_THAT(r->body, HasSubstr(R"("output":"old")"));
  auto after = Call(PostJson("/v1/models/gated/infer", R"({"input":"new"})"));
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200) << after->body;
}

}  // namespace
}  // namespace megaserve::testing
