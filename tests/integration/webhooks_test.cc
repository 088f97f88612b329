// Job webhooks end to end: the whole server (SQLite store, in-process workers, the webhook
// dispatcher) delivering signed events to a real receiver on 127.0.0.1, and the API's checks of
// the webhook fields.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include "core/time_format.h"
#include "jobs/webhook_signature.h"
#include "jobs/webhook_test_util.h"
#include "test_support.h"

namespace megaserve::testing {
namespace {

using jobs::testing::WebhookReceiver;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr std::string_view kSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

std::string Post(std::string_view path, std::string_view body) {
  std::string r = "POST ";
  r += path;
  r += " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ";
  r += std::to_string(body.size());
  r += "\r\n\r\n";
  r += body;
  return r;
}

rapidjson::Document Json(const std::string& text) {
  rapidjson::Document d;
  d.Parse(text.c_str());
  return d;
}

// Webhooks on, loopback receivers allowed, quick retries.
core::Config WebhookConfig() {
  core::Config c = TestConfig();
  c.webhooks.secret = std::string(kSecret);
  c.webhooks.allowed_cidrs = {"127.0.0.1/32"};
  c.webhooks.retry_schedule = {"50ms"};
  return c;
}

class WebhooksTest : public ::testing::Test {
 protected:
  explicit WebhooksTest(core::Config config = WebhookConfig()) : server_(std::move(config)) {}
  void SetUp() override { server_.Start(); }

  // POST /v1/jobs; checks the status and returns the body.
  rapidjson::Document Create(const std::string& body, int expect = 201) {
    RawClient c(server_.port());
    auto r = c.Roundtrip(Post("/v1/jobs", body));
    EXPECT_TRUE(r);
    if (!r) return {};
    EXPECT_EQ(r->status, expect) << r->body;
    return Json(r->body);
  }

  // The outbox rows of a job, oldest first: event and status.
  std::vector<std::pair<std::string, std::string>> Deliveries(const std::string& job_id) {
    auto rows = server_.app().database().Execute(
        "SELECT event, status FROM webhook_deliveries WHERE job_id = $1 ORDER BY id", {job_id});
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    std::vector<std::pair<std::string, std::string>> out;
    if (rows.ok()) {
      for (size_t r = 0; r < rows->size(); ++r)
        out.emplace_back(rows->GetText(r, 0), rows->GetText(r, 1));
    }
    return out;
  }

  // Waits until the job has `n` outbox rows, all delivered; returns their events.
  std::vector<std::string> WaitDelivered(const std::string& job_id, size_t n) {
    std::vector<std::pair<std::string, std::string>> rows;
    for (int i = 0; i < 1000; ++i) {
      rows = Deliveries(job_id);
      bool all = rows.size() == n;
      for (const auto& row : rows) all = all && row.second == "delivered";
      if (all) break;
      std::this_thread::sleep_for(10ms);
    }
    std::vector<std::string> events;
    for (const auto& row : rows) {
      EXPECT_EQ(row.second, "delivered") << row.first;
      events.push_back(row.first);
    }
    return events;
  }

  // The parsed body of a received request after checking its signature.
  rapidjson::Document Verified(const WebhookReceiver::Request& request) {
    auto secret = jobs::WebhookSecret::Parse(kSecret);
    EXPECT_TRUE(secret.ok());
    EXPECT_TRUE(jobs::VerifyWebhook(*secret, request.Header("webhook-id"),
                                    request.Header("webhook-timestamp"),
                                    request.Header("webhook-signature"), request.body,
                                    core::NowMicros() / 1'000'000)
                    .ok())
        << request.body;
    EXPECT_EQ(request.Header("content-type"), "application/json");
    return Json(request.body);
  }

  TestServer server_;
};

TEST_F(WebhooksTest, StartedThenCompletedAreDeliveredSigned) {
  WebhookReceiver receiver;
  auto job = Create(R"({"type":"sleep","input":{"seconds":0.5},"webhook":")" + receiver.Url() +
                    R"(","webhook_events_filter":["start","completed"]})");
  ASSERT_TRUE(job.IsObject());
  const std::string id = job["id"].GetString();
  EXPECT_EQ(std::string(job["webhook"].GetString()), receiver.Url());
  ASSERT_TRUE(job["webhook_events_filter"].IsArray());
  EXPECT_EQ(job["webhook_events_filter"].Size(), 2u);

  EXPECT_THAT(WaitDelivered(id, 2), ElementsAre("start", "completed"));
  const auto requests = receiver.requests();
  ASSERT_EQ(requests.size(), 2u);
  auto started = Verified(requests[0]);
  auto completed = Verified(requests[1]);
  ASSERT_TRUE(started.IsObject() && completed.IsObject());
  EXPECT_STREQ(started["type"].GetString(), "job.started");
  EXPECT_STREQ(completed["type"].GetString(), "job.completed");
  EXPECT_EQ(std::string(started["data"]["id"].GetString()), id);
  EXPECT_EQ(std::string(completed["data"]["id"].GetString()), id);
  EXPECT_STREQ(completed["data"]["status"].GetString(), "succeeded");
  EXPECT_EQ(std::string(completed["data"]["webhook"].GetString()), receiver.Url());
  EXPECT_NE(requests[0].Header("webhook-id"), requests[1].Header("webhook-id"));
}

TEST_F(WebhooksTest, CompletedFilterSendsOnlyThat) {
  WebhookReceiver receiver;
  auto job = Create(R"({"type":"noop","webhook":")" + receiver.Url() +
                    R"(","webhook_events_filter":["completed"]})");
  ASSERT_TRUE(job.IsObject());
  const std::string id = job["id"].GetString();
  EXPECT_THAT(WaitDelivered(id, 1), ElementsAre("completed"));
  const auto requests = receiver.requests();
  ASSERT_EQ(requests.size(), 1u);
  auto completed = Verified(requests[0]);
  ASSERT_TRUE(completed.IsObject());
  EXPECT_STREQ(completed["type"].GetString(), "job.completed");
  EXPECT_STREQ(completed["data"]["status"].GetString(), "succeeded");
}

// Nothing runs here (jobs.concurrency 0), so accepted webhooks are never called.
core::Config IdleWebhookConfig() {
  core::Config c = WebhookConfig();
  c.jobs.concurrency = 0;
  return c;
}

class WebhookFieldsTest : public WebhooksTest {
 protected:
  WebhookFieldsTest() : WebhooksTest(IdleWebhookConfig()) {}
};

TEST_F(WebhookFieldsTest, DefaultFilterIsEveryEvent) {
  auto job = Create(R"({"type":"noop","webhook":"https://hooks.example.com/in?k=1"})");
  ASSERT_TRUE(job.IsObject());
  EXPECT_STREQ(job["webhook"].GetString(), "https://hooks.example.com/in?k=1");
  std::vector<std::string> filter;
  for (const auto& v : job["webhook_events_filter"].GetArray()) filter.push_back(v.GetString());
  EXPECT_THAT(filter, ElementsAre("start", "progress", "completed"));

  // Stored in one order whatever order it came in.
  job = Create(
      R"({"type":"noop","webhook":"http://hooks.example.com/","webhook_events_filter":["completed","start"]})");
  filter.clear();
  for (const auto& v : job["webhook_events_filter"].GetArray()) filter.push_back(v.GetString());
  EXPECT_THAT(filter, ElementsAre("start", "completed"));

  // A job without a webhook shows neither field.
  job = Create(R"({"type":"noop"})");
  EXPECT_FALSE(job.HasMember("webhook"));
  EXPECT_FALSE(job.HasMember("webhook_events_filter"));
}

TEST_F(WebhookFieldsTest, BadValuesAre400WithParam) {
  struct Case {
    std::string fields;
    std::string param;
    std::string message;
  };
  const std::string long_url = "https://example.com/" + std::string(2048, 'a');
  const std::vector<Case> cases = {
      {R"("webhook":42)", "webhook", "URL string"},
      {R"("webhook":"ftp://example.com/x")", "webhook", "http or https"},
      {R"("webhook":"/relative")", "webhook", "absolute"},
      {R"("webhook":")" + long_url + R"(")", "webhook", "2048"},
      {R"("webhook":"http://169.254.169.254/latest/meta-data")", "webhook", "link-local"},
      {R"("webhook":"http://10.0.0.1/")", "webhook", "private"},
      {R"("webhook":"http://[::1]:8080/")", "webhook", "loopback"},
      {R"("webhook":"https://example.com/","webhook_events_filter":[])", "webhook_events_filter",
       "non-empty"},
      {R"("webhook":"https://example.com/","webhook_events_filter":"start")",
       "webhook_events_filter", "array"},
      {R"("webhook":"https://example.com/","webhook_events_filter":["start","start"])",
       "webhook_events_filter", "distinct"},
      {R"("webhook":"https://example.com/","webhook_events_filter":["output"])",
       "webhook_events_filter", "completed"},
      {R"("webhook":"https://example.com/","webhook_events_filter":[1])", "webhook_events_filter",
       "start"},
      {R"("webhook_events_filter":["start"])", "webhook_events_filter", "needs"},
  };
  for (const auto& c : cases) {
    auto error = Create(R"({"type":"noop",)" + c.fields + "}", 400);
    ASSERT_TRUE(error.IsObject()) << c.fields;
    EXPECT_STREQ(error["error"]["param"].GetString(), c.param.c_str()) << c.fields;
    EXPECT_THAT(error["error"]["message"].GetString(), HasSubstr(c.message)) << c.fields;
  }
  // Nothing was written.
  RawClient client(server_.port());
  auto list = client.Roundtrip(Get("/v1/jobs"));
  ASSERT_TRUE(list);
  EXPECT_EQ(Json(list->body)["data"].Size(), 0u);
}

class WebhooksOffTest : public WebhooksTest {
 protected:
  WebhooksOffTest()
      : WebhooksTest([] {
          core::Config c = TestConfig();
          c.jobs.concurrency = 0;
          return c;
        }()) {}
};

TEST_F(WebhooksOffTest, WebhookWithoutSecretIsRefused) {
  auto error = Create(R"({"type":"noop","webhook":"https://example.com/hook"})", 400);
  ASSERT_TRUE(error.IsObject());
  EXPECT_STREQ(error["error"]["param"].GetString(), "webhook");
  EXPECT_THAT(error["error"]["message"].GetString(), HasSubstr("webhooks.secret"));
  EXPECT_THAT(error["error"]["message"].GetString(), HasSubstr("megaserve webhooks new-secret"));
  // Jobs without a webhook are fine.
  Create(R"({"type":"noop"})");
}

TEST(WebhookConfigTest, BadSecretOrCidrStopsStartUp) {
  metrics::Registry registry;
  core::Config c = TestConfig();
  c.webhooks.secret = "whsec_dG9vIHNob3J0";  // "too short"
  auto app = api::App::Create(c, registry);
  ASSERT_FALSE(app.ok());
  EXPECT_THAT(app.status().message(), HasSubstr("webhooks.secret"));

  c.webhooks.secret = std::string(kSecret);
  c.webhooks.allowed_cidrs = {"10.0.0.1/8"};
  app = api::App::Create(c, registry);
  ASSERT_FALSE(app.ok());
  EXPECT_THAT(app.status().message(), HasSubstr("webhooks.allowed_cidrs"));
}

}  // namespace
}  // namespace megaserve::testing
