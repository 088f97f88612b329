#include "jobs/jobs_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace megaserve::jobs {
namespace {

using ::testing::HasSubstr;

core::Result<core::LoadedConfig> Load(std::vector<core::ConfigSources::Override> overrides) {
  return core::LoadConfig({.overrides = std::move(overrides)});
}

TEST(JobsConfigTest, JobsSectionBecomesQueueAndWorkerOptions) {
  auto loaded = Load({{"jobs.type_concurrency", "sleep=2,noop=10", "flag --set"},
                      {"jobs.queue", "images", "flag --set"},
                      {"jobs.concurrency", "6", "flag --set"},
                      {"jobs.lease", "45s", "flag --set"},
                      {"jobs.heartbeat", "2s", "flag --set"},
                      {"jobs.poll_interval", "250ms", "flag --set"},
                      {"jobs.rescue_interval", "3s", "flag --set"}});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  WorkersOptions workers = WorkersOptionsFromConfig(loaded->config);
  EXPECT_EQ(workers.queue, "images");
  EXPECT_EQ(workers.concurrency, 6);
  EXPECT_EQ(workers.heartbeat_interval, std::chrono::seconds(2));
  EXPECT_EQ(workers.poll_interval, std::chrono::milliseconds(250));
  EXPECT_EQ(workers.rescue_interval, std::chrono::seconds(3));
  ASSERT_EQ(workers.type_limits.size(), 2u);
  EXPECT_EQ(workers.type_limits.at("sleep"), 2);
  EXPECT_EQ(workers.type_limits.at("noop"), 10);
  EXPECT_EQ(QueueOptionsFromConfig(loaded->config).lease, std::chrono::seconds(45));
}

TEST(JobsConfigTest, BadTypeCapsAreRefusedWithTheKey) {
  for (const char* bad : {"sleep", "sleep=0", "=3", "sleep=2x", "sleep=1,sleep=2"}) {
    auto loaded = Load({{"jobs.type_concurrency", bad, "flag --set"}});
    ASSERT_FALSE(loaded.ok()) << bad;
    EXPECT_THAT(loaded.status().message(), HasSubstr("jobs.type_concurrency")) << bad;
  }
  auto secret = Load({{"webhooks.secret", "plain-text", "flag --set"}});
  ASSERT_FALSE(secret.ok());
  EXPECT_THAT(secret.status().message(), HasSubstr("whsec_"));
  EXPECT_THAT(secret.status().message(), ::testing::Not(HasSubstr("plain-text")));
  auto schedule = Load({{"webhooks.retry_schedule", "5s,soon", "flag --set"}});
  ASSERT_FALSE(schedule.ok());
  EXPECT_THAT(schedule.status().message(), HasSubstr("webhooks.retry_schedule"));
}

}  // namespace
}  // namespace megaserve::jobs
