// The jobs API over real sockets, with the real SQLite job store and in-process workers.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <regex>
#include <set>

#include "test_support.h"

namespace megaserve::testing {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

std::string Post(std::string_view path, std::string_view body, std::string_view extra = "") {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\n";
  r += extra;
  r += "\r\n";
  r += body;
  return r;
}

rapidjson::Document Json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str());
  return d;
}

class JobsApiTest : public ::testing::Test {
 protected:
  void SetUp() override { server_.Start(); }

  rapidjson::Document Create(std::string_view body, int expect = 201) {
    RawClient c(server_.port());
    auto r = c.Roundtrip(Post("/v1/jobs", body));
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, expect) << r->body;
    return Json(r->body);
  }

  // Polls GET /v1/jobs/{id} until the job is finished or 10 s pass.
  rapidjson::Document WaitFinished(const std::string& id) {
    RawClient c(server_.port());
    for (int i = 0; i < 500; ++i) {
      auto r = c.Roundtrip(Get("/v1/jobs/" + id));
      if (!r) break;
      auto d = Json(r->body);
      std::string status = d["status"].GetString();
      if (status == "succeeded" || status == "failed" || status == "canceled") return d;
      std::this_thread::sleep_for(20ms);
    }
    ADD_FAILURE() << "job " << id << " did not finish";
    return {};
  }

  int CountJobs() {
    RawClient c(server_.port());
    auto r = c.Roundtrip(Get("/v1/jobs?limit=1000"));
    if (!r) return -1;
    return static_cast<int>(Json(r->body)["data"].Size());
  }

  TestServer server_;
};

TEST_F(JobsApiTest, NoopJobRunsToCompletion) {
  auto job = Create(R"({"type":"noop","input":{"x":1}})");
  ASSERT_TRUE(job.IsObject());
  std::string id = job["id"].GetString();
  EXPECT_TRUE(std::regex_match(
      id, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));
  EXPECT_STREQ(job["object"].GetString(), "job");
  EXPECT_EQ(job["input"]["x"].GetInt(), 1);
  EXPECT_EQ(std::string(job["urls"]["stream"].GetString()), "/v1/jobs/" + id + "/events");
  auto done = WaitFinished(id);
  ASSERT_TRUE(done.IsObject());
  EXPECT_STREQ(done["status"].GetString(), "succeeded");
  EXPECT_TRUE(done["output"].IsObject());
  EXPECT_TRUE(done["completed_at"].IsString());
  EXPECT_GE(done["metrics"]["predict_time"].GetDouble(), 0.0);
  EXPECT_EQ(done["attempts"].GetInt(), 1);
}

TEST_F(JobsApiTest, FailingJobKeepsItsLastError) {
  auto job = Create(R"({"type":"fail","input":{"message":"boom"},"max_attempts":1})");
  auto done = WaitFinished(job["id"].GetString());
  ASSERT_TRUE(done.IsObject());
  EXPECT_STREQ(done["status"].GetString(), "failed");
  EXPECT_THAT(done["error"].GetString(), HasSubstr("boom"));
}

TEST_F(JobsApiTest, BadInputGetsA4xxAndWritesNothing) {
  struct Case {
    std::string body;
    std::string code;
    std::string param;
  };
  std::vector<Case> cases = {
      {"{not json", "invalid_json", ""},
      {"[1,2]", "invalid_json", ""},
      {R"({"input":{}})", "missing_field", "type"},
      {R"({"type":"no_such_type"})", "unknown_job_type", "type"},
      {R"({"type":"noop","input":[1]})", "invalid_input", "input"},
      {R"({"type":"noop","bogus":1})", "unknown_field", "bogus"},
      {R"({"type":"noop","priority":"high"})", "invalid_priority", "priority"},
      {R"({"type":"noop","max_attempts":0})", "invalid_max_attempts", "max_attempts"},
      {R"({"type":"sleep","input":{"seconds":-1}})", "invalid_input", "input"},
      {R"({"type":"noop","input":{"big":")" + std::string(300 * 1024, 'a') + R"("}})",
       "input_too_large", "input"},
  };
  for (const auto& c : cases) {
    RawClient client(server_.port());
    auto r = client.Roundtrip(Post("/v1/jobs", c.body));
    ASSERT_TRUE(r) << c.code;
    EXPECT_EQ(r->status, 400) << c.body.substr(0, 80) << " -> " << r->body;
    auto d = Json(r->body);
    ASSERT_TRUE(d.IsObject()) << r->body;
    EXPECT_EQ(std::string(d["error"]["code"].GetString()), c.code) << r->body;
    if (!c.param.empty()) {
      EXPECT_EQ(std::string(d["error"]["param"].GetString()), c.param);
    }
  }
  EXPECT_EQ(CountJobs(), 0);
}

TEST_F(JobsApiTest, UnknownIdsAndBadQueriesAreClientErrors) {
  RawClient c(server_.port());
  for (std::string path :
       {"/v1/jobs/0190b5b8-0000-7000-8000-000000000000", "/v1/jobs/nope", "/v1/jobs/nope/events"}) {
    auto r = c.Roundtrip(Get(path));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 404) << path;
  }
  auto r = c.Roundtrip(Post("/v1/jobs/0190b5b8-0000-7000-8000-000000000000/cancel", ""));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  for (std::string q : {"status=done", "limit=0", "limit=abc", "cursor=garbage"}) {
    r = c.Roundtrip(Get("/v1/jobs?" + q));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 400) << q << " " << r->body;
  }
}

TEST_F(JobsApiTest, IdempotencyKeyReturnsTheSameJobOr409) {
  RawClient c(server_.port());
  std::string body = R"({"type":"noop","input":{"n":1}})";
  auto first = c.Roundtrip(Post("/v1/jobs", body, "Idempotency-Key: order-42\r\n"));
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status, 201);
  auto again = c.Roundtrip(Post("/v1/jobs", body, "Idempotency-Key: order-42\r\n"));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status, 200);
  EXPECT_STREQ(Json(first->body)["id"].GetString(), Json(again->body)["id"].GetString());
  auto other = c.Roundtrip(
      Post("/v1/jobs", R"({"type":"noop","input":{"n":2}})", "Idempotency-Key: order-42\r\n"));
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 409);
  EXPECT_EQ(CountJobs(), 1);
}

TEST_F(JobsApiTest, ListPagesCoverEveryJobOnce) {
  std::set<std::string> created;
  for (int i = 0; i < 7; ++i) created.insert(Create(R"({"type":"noop"})")["id"].GetString());
  std::set<std::string> seen;
  std::string cursor;
  RawClient c(server_.port());
  for (int page = 0; page < 10; ++page) {
    auto r = c.Roundtrip(Get("/v1/jobs?limit=3" + (cursor.empty() ? "" : "&cursor=" + cursor)));
    ASSERT_TRUE(r);
    ASSERT_EQ(r->status, 200) << r->body;
    auto d = Json(r->body);
    for (auto& j : d["data"].GetArray()) EXPECT_TRUE(seen.insert(j["id"].GetString()).second);
    if (d["next_cursor"].IsNull()) break;
    cursor = d["next_cursor"].GetString();
  }
  EXPECT_EQ(seen, created);
}

TEST_F(JobsApiTest, CancelStopsARunningJob) {
  auto job = Create(R"({"type":"sleep","input":{"seconds":30}})");
  std::string id = job["id"].GetString();
  RawClient c(server_.port());
  for (int i = 0; i < 200; ++i) {  // wait until it runs
    auto r = c.Roundtrip(Get("/v1/jobs/" + id));
    if (r && std::string(Json(r->body)["status"].GetString()) == "running") break;
    std::this_thread::sleep_for(10ms);
  }
  auto start = std::chrono::steady_clock::now();
  auto r = c.Roundtrip(Post("/v1/jobs/" + id + "/cancel", ""));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  auto done = WaitFinished(id);
  EXPECT_STREQ(done["status"].GetString(), "canceled");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
  r = c.Roundtrip(Post("/v1/jobs/" + id + "/cancel", ""));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 409);  // already finished
}

TEST_F(JobsApiTest, EventStreamShowsProgressAndEndsWithTheTerminalEvent) {
  auto job = Create(R"({"type":"sleep","input":{"seconds":1.5}})");
  std::string id = job["id"].GetString();
  RawClient c(server_.port(), 10s);
  auto head = c.Roundtrip(Get("/v1/jobs/" + id + "/events"));
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
  EXPECT_EQ(head->Header("content-type"), "text/event-stream");
  std::string stream;
  while (true) {
    auto chunk = c.ReadChunk();
    ASSERT_TRUE(chunk) << stream;
    if (chunk->empty()) break;
    stream += *chunk;
  }
  EXPECT_THAT(stream, HasSubstr("event: started"));
  EXPECT_THAT(stream, HasSubstr("event: succeeded"));
  std::regex progress("event: progress");
  auto n = std::distance(std::sregex_iterator(stream.begin(), stream.end(), progress),
                         std::sregex_iterator());
  EXPECT_GE(n, 1);
  EXPECT_LE(n, 5);  // 1.5 s at no more than 2 a second (plus one at the start)
  // Ids increase; replaying after the first one skips it.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(stream, m, std::regex("id: (\\d+)")));
  std::string first_id = m[1];
  RawClient again(server_.port(), 10s);
  ASSERT_TRUE(
      again.Roundtrip(Get("/v1/jobs/" + id + "/events", "Last-Event-ID: " + first_id + "\r\n")));
  std::string replay;
  while (true) {
    auto chunk = again.ReadChunk();
    ASSERT_TRUE(chunk);
    if (chunk->empty()) break;
    replay += *chunk;
  }
  EXPECT_THAT(replay, ::testing::Not(HasSubstr("id: " + first_id + "\n")));
  EXPECT_THAT(replay, HasSubstr("event: succeeded"));
}

}  // namespace
}  // namespace megaserve::testing
