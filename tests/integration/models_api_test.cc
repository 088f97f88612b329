// The model repository API over real sockets: list, get, load, unload and their errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

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
    return config;
  }

  void SetUp() override { server_.Start(); }

  std::optional<RawResponse> Call(const std::string& request) {
    RawClient c(server_.port());
    return c.Roundtrip(request);
  }

  TestServer server_;
};

TEST_F(ModelsApiTest, ListsModels) {
  auto r = Call(Get("/v1/models"));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_THAT(r->Header("content-type"), HasSubstr("application/json"));
  auto d = Json(r->body);
  EXPECT_STREQ(d["object"].GetString(), "list");
  ASSERT_EQ(d["data"].Size(), 2u);
  const auto& broken = d["data"][0];
  EXPECT_STREQ(broken["name"].GetString(), "broken");
  const auto& echo = d["data"][1];
  EXPECT_STREQ(echo["name"].GetString(), "echo");
  EXPECT_EQ(echo["version"].GetInt(), 2);
  EXPECT_STREQ(echo["status"].GetString(), "unavailable");
  EXPECT_EQ(echo["memory_bytes"].GetUint64(), 0u);
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

}  // namespace
}  // namespace megaserve::testing
