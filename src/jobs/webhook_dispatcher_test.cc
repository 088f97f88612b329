// WebhookDispatcher against both engines, delivering to a real HTTP receiver on 127.0.0.1.
#include "jobs/webhook_dispatcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <set>
#include <thread>

#include "core/time_format.h"
#include "jobs/webhook_test_util.h"
#include "metrics/registry.h"
#include "store/test_util.h"

namespace megaserve::jobs {
namespace {

using std::chrono::milliseconds;
using store::Engine;
using ::testing::HasSubstr;
using testing::WebhookReceiver;
using namespace std::chrono_literals;

constexpr std::string_view kSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// A delivery row as the dispatcher left it.
struct Row {
  std::string status;
  int attempts = 0;
  std::string last_error;
  int64_t next_attempt_at = 0;
};

class WebhookDispatcherTest : public ::testing::TestWithParam<Engine> {
 protected:
  void SetUp() override {
    std::string pg_url;
    if (GetParam() == Engine::kPostgres) {
      MEGASERVE_REQUIRE_POSTGRES(base);
      pg_url = base;
    }
    database_.Open(GetParam(), pg_url);
    ASSERT_FALSE(HasFatalFailure());
    db_ = &database_.db();
    queue_ = std::make_unique<JobQueue>(*db_, "test");
  }

  // Options for a fast test: loopback allowed, millisecond retries, a 10 ms poll.
  WebhookDispatcherOptions Options() {
    WebhookDispatcherOptions options;
    auto secret = WebhookSecret::Parse(kSecret);
    EXPECT_TRUE(secret.ok());
    options.secret = *secret;
    options.ssrf.allowed_cidrs = {"127.0.0.1/32"};
    options.timeout = 2s;
    options.retry_schedule = {10ms, 10ms};
    options.poll_interval = 10ms;
    options.seed = 7;
    return options;
  }

  std::unique_ptr<WebhookDispatcher> Make(WebhookDispatcherOptions options) {
    auto dispatcher = WebhookDispatcher::Create(
        *db_, *queue_, std::move(options),
        [](const Job& job) {
          return R"({"id":")" + job.id + R"(","status":")" +
                 std::string(JobStatusName(job.status)) + R"("})";
        },
        registry_);
    EXPECT_TRUE(dispatcher.ok()) << dispatcher.status().ToString();
    return dispatcher.ok() ? std::move(*dispatcher) : nullptr;
  }

  std::string NewJobId(const std::string& url) {
    auto job = queue_->Enqueue({.type = "noop", .webhook_url = url, .webhook_events = "completed"});
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    return job.ok() ? job->id : "";
  }

  // Inserts a pending delivery due at `due` (0 = now) and returns its id.
  int64_t AddDelivery(const std::string& job_id, const std::string& url,
                      const std::string& event = "completed", int64_t due = 0) {
    const int64_t now = core::NowMicros();
    auto rows = db_->Execute(
        "INSERT INTO webhook_deliveries (job_id, event, url, payload, attempts, next_attempt_at, "
        "status, created_at) VALUES ($1, $2, $3, '{}', 0, $4, 'pending', $5) RETURNING id",
        {job_id, event, url, due == 0 ? now : due, now});
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? rows->GetInt(0, 0) : 0;
  }

  Row Get(int64_t id) {
    auto rows = db_->Execute(
        "SELECT status, attempts, last_error, next_attempt_at FROM webhook_deliveries "
        "WHERE id = $1",
        {id});
    EXPECT_TRUE(rows.ok() && rows->size() == 1);
    if (!rows.ok() || rows->size() != 1) return {};
    return {rows->GetText(0, 0), static_cast<int>(rows->GetInt(0, 1)), rows->GetText(0, 2),
            rows->GetInt(0, 3)};
  }

  // Polls the row until its status is `status` or 10 s pass.
  Row WaitStatus(int64_t id, const std::string& status) {
    Row row;
    for (int i = 0; i < 1000; ++i) {
      row = Get(id);
      if (row.status == status) return row;
      std::this_thread::sleep_for(10ms);
    }
    ADD_FAILURE() << "delivery " << id << " is still " << row.status << ", not " << status;
    return row;
  }

  uint64_t Count(std::string_view result) {
    return registry_.AddCounter("megaserve_webhook_deliveries_total", "", {"result"})
        .WithLabels({result})
        .Value();
  }

  // Checks the Standard Webhooks headers and signature of `request`.
  void ExpectSigned(const WebhookReceiver::Request& request) {
    auto secret = WebhookSecret::Parse(kSecret);
    ASSERT_TRUE(secret.ok());
    EXPECT_TRUE(VerifyWebhook(*secret, request.Header("webhook-id"),
                              request.Header("webhook-timestamp"),
                              request.Header("webhook-signature"), request.body,
                              core::NowMicros() / 1'000'000)
                    .ok())
        << request.body;
    EXPECT_EQ(request.method, "POST");
    EXPECT_EQ(request.Header("content-type"), "application/json");
  }

  store::testing::TestDatabase database_;
  store::Database* db_ = nullptr;
  std::unique_ptr<JobQueue> queue_;
  metrics::Registry registry_;
};

TEST_P(WebhookDispatcherTest, DeliversSignedEvent) {
  WebhookReceiver receiver;
  const std::string job_id = NewJobId(receiver.Url());
  const int64_t id = AddDelivery(job_id, receiver.Url("/hook?token=abc"), "start");
  auto dispatcher = Make(Options());
  ASSERT_TRUE(dispatcher);
  dispatcher->Start();
  ASSERT_TRUE(receiver.WaitFor(1));
  Row row = WaitStatus(id, "delivered");
  EXPECT_EQ(row.attempts, 1);
  EXPECT_EQ(row.last_error, "");

  const auto request = receiver.requests().at(0);
  ExpectSigned(request);
  EXPECT_EQ(request.target, "/hook?token=abc");
  EXPECT_EQ(request.Header("webhook-id"), "msg_" + std::to_string(id));
  rapidjson::Document body;
  body.Parse(request.body.c_str());
  ASSERT_TRUE(body.IsObject()) << request.body;
  EXPECT_STREQ(body["type"].GetString(), "job.started");
  EXPECT_TRUE(body["timestamp"].IsString());
  EXPECT_EQ(std::string(body["data"]["id"].GetString()), job_id);
  EXPECT_STREQ(body["data"]["status"].GetString(), "queued");
  dispatcher->Stop(1s);
  EXPECT_EQ(Count("delivered"), 1u);
  EXPECT_EQ(receiver.requests().size(), 1u);
}

TEST_P(WebhookDispatcherTest, RetriesWithTheSameIdUntilDelivered) {
  WebhookReceiver receiver(
      [](const WebhookReceiver::Request&, int index) { return index == 0 ? 503 : 200; });
  const int64_t id = AddDelivery(NewJobId(receiver.Url()), receiver.Url(), "progress");
  auto dispatcher = Make(Options());
  ASSERT_TRUE(dispatcher);
  dispatcher->Start();
  ASSERT_TRUE(receiver.WaitFor(2));
  Row row = WaitStatus(id, "delivered");
  EXPECT_EQ(row.attempts, 2);
  const auto requests = receiver.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_EQ(requests[0].Header("webhook-id"), "msg_" + std::to_string(id));
  EXPECT_EQ(requests[1].Header("webhook-id"), requests[0].Header("webhook-id"));
  ExpectSigned(requests[0]);
  ExpectSigned(requests[1]);
  dispatcher->Stop(1s);
  EXPECT_EQ(Count("retry"), 1u);
  EXPECT_EQ(Count("delivered"), 1u);
}

TEST_P(WebhookDispatcherTest, GoneDisablesTheEndpoint) {
  WebhookReceiver receiver([](const WebhookReceiver::Request&, int) { return 410; });
  const std::string url = receiver.Url();
  const std::string job_id = NewJobId(url);
  const int64_t first = AddDelivery(job_id, url, "start");
  // Pending but not due yet: failed with the endpoint all the same.
  const int64_t later = AddDelivery(job_id, url, "completed", core::NowMicros() + 3'600'000'000);
  auto dispatcher = Make(Options());
  ASSERT_TRUE(dispatcher);
  dispatcher->Start();
  ASSERT_TRUE(receiver.WaitFor(1));
  Row row = WaitStatus(first, "failed");
  EXPECT_THAT(row.last_error, HasSubstr("410 Gone"));
  EXPECT_EQ(row.attempts, 1);
  EXPECT_THAT(WaitStatus(later, "failed").last_error, HasSubstr("endpoint disabled"));
  auto endpoint = db_->Execute("SELECT reason FROM webhook_endpoints WHERE url = $1", {url});
  ASSERT_TRUE(endpoint.ok());
  ASSERT_EQ(endpoint->size(), 1u);
  EXPECT_THAT(endpoint->GetText(0, 0), HasSubstr("410 Gone"));

  // A new delivery to the disabled endpoint fails without being sent.
  const int64_t next = AddDelivery(job_id, url, "completed");
  dispatcher->Wake();
  row = WaitStatus(next, "failed");
  EXPECT_THAT(row.last_error, HasSubstr("endpoint disabled"));
  EXPECT_EQ(row.attempts, 0);
  dispatcher->Stop(1s);
  EXPECT_EQ(receiver.requests().size(), 1u);
  EXPECT_EQ(Count("disabled"), 3u);
}

TEST_P(WebhookDispatcherTest, LoopbackIsRefusedWithoutConnecting) {
  WebhookReceiver receiver;
  const int64_t id = AddDelivery(NewJobId(receiver.Url()), receiver.Url());
  WebhookDispatcherOptions options = Options();
  options.ssrf.allowed_cidrs.clear();
  auto dispatcher = Make(std::move(options));
  ASSERT_TRUE(dispatcher);
  dispatcher->Start();
  Row row = WaitStatus(id, "failed");
  EXPECT_THAT(row.last_error, HasSubstr("loopback"));
  EXPECT_EQ(row.attempts, 1);
  dispatcher->Stop(1s);
  EXPECT_EQ(Count("refused"), 1u);
  EXPECT_EQ(receiver.connections(), 0);
  EXPECT_EQ(receiver.requests().size(), 0u);
}

TEST_P(WebhookDispatcherTest, FailsOnceTheScheduleIsExhausted) {
  WebhookReceiver receiver([](const WebhookReceiver::Request&, int) { return 500; });
  const int64_t id = AddDelivery(NewJobId(receiver.Url()), receiver.Url());
  auto dispatcher = Make(Options());  // two retries
  ASSERT_TRUE(dispatcher);
  dispatcher->Start();
  ASSERT_TRUE(receiver.WaitFor(3));
  Row row = WaitStatus(id, "failed");
  EXPECT_EQ(row.attempts, 3);
  EXPECT_THAT(row.last_error, HasSubstr("HTTP 500"));
  dispatcher->Stop(1s);
  EXPECT_EQ(receiver.requests().size(), 3u);
  EXPECT_EQ(Count("retry"), 2u);
  EXPECT_EQ(Count("failed"), 1u);
}

TEST_P(WebhookDispatcherTest, RetryWaitsFollowTheSchedule) {
  WebhookReceiver receiver([](const WebhookReceiver::Request&, int) { return 503; });
  const int64_t id = AddDelivery(NewJobId(receiver.Url()), receiver.Url());
  WebhookDispatcherOptions options = Options();
  options.retry_schedule = {1h};
  auto dispatcher = Make(std::move(options));
  ASSERT_TRUE(dispatcher);
  const int64_t before = core::NowMicros();
  dispatcher->Start();
  ASSERT_TRUE(receiver.WaitFor(1));
  Row row;
  for (int i = 0; i < 500 && row.last_error.empty(); ++i) {
    std::this_thread::sleep_for(10ms);
    row = Get(id);
  }
  EXPECT_EQ(row.status, "pending");
  EXPECT_EQ(row.attempts, 1);
  EXPECT_THAT(row.last_error, HasSubstr("HTTP 503"));
  // One hour +-20%.
  EXPECT_GE(row.next_attempt_at, before + 2'880'000'000);
  EXPECT_LE(row.next_attempt_at, core::NowMicros() + 4'320'000'000);
  dispatcher->Stop(1s);
  EXPECT_EQ(receiver.requests().size(), 1u);
}

TEST_P(WebhookDispatcherTest, TwoDispatchersSendEachDeliveryOnce) {
  WebhookReceiver receiver;
  const std::string job_id = NewJobId(receiver.Url());
  std::vector<int64_t> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(AddDelivery(job_id, receiver.Url()));
  auto a = Make(Options());
  auto b = Make(Options());
  ASSERT_TRUE(a && b);
  a->Start();
  b->Start();
  ASSERT_TRUE(receiver.WaitFor(ids.size()));
  for (int64_t id : ids) WaitStatus(id, "delivered");
  a->Stop(1s);
  b->Stop(1s);
  std::set<std::string> seen;
  for (const auto& request : receiver.requests()) seen.insert(request.Header("webhook-id"));
  EXPECT_EQ(receiver.requests().size(), ids.size());
  EXPECT_EQ(seen.size(), ids.size());
}

INSTANTIATE_TEST_SUITE_P(Engines, WebhookDispatcherTest,
                         ::testing::Values(Engine::kSqlite, Engine::kPostgres),
                         [](const auto& info) {
                           return std::string(store::EngineName(info.param));
                         });

TEST(WebhookDispatcherCreateTest, RejectsBadOptions) {
  store::testing::TestDatabase database;
  database.Open(Engine::kSqlite);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  JobQueue queue(database.db(), "test");
  metrics::Registry registry;
  auto render = [](const Job&) { return std::string("{}"); };
  auto secret = WebhookSecret::Parse(kSecret);
  ASSERT_TRUE(secret.ok());

  auto create = [&](auto change) {
    WebhookDispatcherOptions options;
    options.secret = *secret;
    change(options);
    return WebhookDispatcher::Create(database.db(), queue, std::move(options), render, registry)
        .status();
  };
  EXPECT_TRUE(create([](WebhookDispatcherOptions&) {}).ok());
  EXPECT_THAT(create([](WebhookDispatcherOptions& o) { o.secret.reset(); }).message(),
              HasSubstr("secret"));
  EXPECT_FALSE(create([](WebhookDispatcherOptions& o) { o.retry_schedule.clear(); }).ok());
  EXPECT_FALSE(create([](WebhookDispatcherOptions& o) { o.retry_schedule = {0ms}; }).ok());
  EXPECT_FALSE(create([](WebhookDispatcherOptions& o) { o.concurrency = 0; }).ok());
  EXPECT_EQ(
      create([](WebhookDispatcherOptions& o) { o.ssrf.allowed_cidrs = {"10.0.0.1/8"}; }).code(),
      core::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace megaserve::jobs
