#include "jobs/builtin_handlers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "store/migrations.h"
#include "store/test_util.h"

namespace megaserve::jobs {
namespace {

using namespace std::chrono_literals;
using core::StatusCode;
using ::testing::HasSubstr;

TEST(BuiltinInputTest, AcceptsDocumentedInputs) {
  EXPECT_TRUE(ValidateBuiltinInput("noop", "{}").ok());
  EXPECT_TRUE(ValidateBuiltinInput("sleep", "{}").ok());
  EXPECT_TRUE(ValidateBuiltinInput("sleep", R"({"seconds":0})").ok());
  EXPECT_TRUE(ValidateBuiltinInput("sleep", R"({"seconds":0.25})").ok());
  EXPECT_TRUE(ValidateBuiltinInput("sleep", R"({"seconds":3600})").ok());
  EXPECT_TRUE(ValidateBuiltinInput("fail", "{}").ok());
  EXPECT_TRUE(ValidateBuiltinInput("fail", R"({"message":"boom"})").ok());
}

TEST(BuiltinInputTest, RejectsOutOfRangeOrMistypedInputs) {
  for (const char* input : {R"({"seconds":-1})", R"({"seconds":3600.5})", R"({"seconds":"5"})",
                            R"({"seconds":null})", "[]", "{", "5"}) {
    auto status = ValidateBuiltinInput("sleep", input);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << input;
    EXPECT_THAT(status.message(), HasSubstr("sleep")) << input;
  }
  EXPECT_EQ(ValidateBuiltinInput("fail", R"({"message":3})").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateBuiltinInput("noop", "not json").code(), StatusCode::kInvalidArgument);
}

TEST(BuiltinInputTest, OtherTypesAreNotChecked) {
  EXPECT_TRUE(ValidateBuiltinInput("forecast", R"({"seconds":-1})").ok());
  EXPECT_TRUE(ValidateBuiltinInput("forecast", "not json").ok());
}

// The handlers themselves, run by Workers against SQLite (workers_test covers both engines).
class BuiltinHandlersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::StoreOptions options;
    options.url = dir_.SqliteUrl();
    auto db = store::Database::Open(options);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    ASSERT_TRUE(store::Migrate(*db_).ok());
    queue_ = std::make_unique<JobQueue>(*db_, "builtin");
    WorkersOptions options_w;
    options_w.poll_interval = 20ms;
    workers_ = std::make_unique<Workers>(*queue_, options_w);
    RegisterBuiltinHandlers(*workers_);
    workers_->Start();
  }

  // Runs one job of `type` with `input` (a single attempt) and returns it once it has ended.
  Job Run(const std::string& type, const std::string& input) {
    auto job = queue_->Enqueue({.type = type, .input_json = input, .max_attempts = 1});
    EXPECT_TRUE(job.ok()) << job.status().ToString();
    if (!job.ok()) return {};
    workers_->Wake();
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    for (;;) {
      auto got = queue_->Get(job->id);
      EXPECT_TRUE(got.ok());
      if (!got.ok()) return {};
      if (got->status != JobStatus::kQueued && got->status != JobStatus::kRunning) return *got;
      if (std::chrono::steady_clock::now() > deadline) {
        ADD_FAILURE() << "job did not end";
        return *got;
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  store::testing::TempDir dir_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<JobQueue> queue_;
  std::unique_ptr<Workers> workers_;
};

TEST_F(BuiltinHandlersTest, NoopReturnsEmptyObject) {
  Job job = Run("noop", "{}");
  EXPECT_EQ(job.status, JobStatus::kSucceeded);
  EXPECT_EQ(job.output_json, "{}");
}

TEST_F(BuiltinHandlersTest, SleepZeroSucceedsAtOnce) {
  Job job = Run("sleep", R"({"seconds":0})");
  EXPECT_EQ(job.status, JobStatus::kSucceeded);
  EXPECT_EQ(job.output_json, R"({"slept_ms":0})");
}

TEST_F(BuiltinHandlersTest, SleepWithBadInputFails) {
  Job job = Run("sleep", R"({"seconds":"x"})");
  EXPECT_EQ(job.status, JobStatus::kFailed);
  EXPECT_THAT(job.error, HasSubstr("seconds must be a number"));
}

TEST_F(BuiltinHandlersTest, FailUsesItsMessageOrADefault) {
  EXPECT_EQ(Run("fail", R"({"message":"nope"})").error, "nope");
  Job job = Run("fail", "{}");
  EXPECT_EQ(job.status, JobStatus::kFailed);
  EXPECT_EQ(job.error, "failed on purpose");
}

}  // namespace
}  // namespace megaserve::jobs
