#include "models/model_config.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>

namespace megaserve::models {
namespace {

using ::testing::HasSubstr;

TEST(ModelConfigTest, ParsesEveryKey) {
  auto config = ParseModelConfig(R"(backend = "echo"
version = 3
instances = 2

[batching]
max_batch_size = 8
max_queue_delay = "5ms"
preferred_batch_sizes = [4, 8]
max_queue_size = 64
priority_levels = 2
wait_spin_us = 0

[warmup]
inputs = [{ text = "hello" }, { text = "world" }]
)",
                                 "m/config.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->backend, "echo");
  EXPECT_EQ(config->version, 3);
  EXPECT_EQ(config->instances, 2);
  EXPECT_EQ(config->batching.max_batch_size, 8);
  EXPECT_EQ(config->batching.max_queue_delay, std::chrono::milliseconds(5));
  EXPECT_EQ(config->batching.preferred_batch_sizes, (std::vector<int>{4, 8}));
  EXPECT_EQ(config->batching.max_queue_size, 64);
  EXPECT_EQ(config->batching.priority_levels, 2);
  EXPECT_EQ(config->batching.wait_spin_us, 0);
  ASSERT_EQ(config->warmup_inputs.size(), 2u);
  EXPECT_THAT(config->warmup_inputs[0], HasSubstr(R"("text")"));
  EXPECT_THAT(config->warmup_inputs[1], HasSubstr(R"("world")"));
}

TEST(ModelConfigTest, QueueDelayTakesMicrosecondsOrADuration) {
  using std::chrono::microseconds;
  for (const auto& [text, us] : {std::pair{"300us", 300}, {"2ms", 2000}}) {
    auto config = ParseModelConfig(
        fmt::format("backend = \"echo\"\n[batching]\nmax_queue_delay = \"{}\"\n", text), "m");
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    EXPECT_EQ(config->batching.max_queue_delay, microseconds(us)) << text;
  }
  auto bad = ParseModelConfig("backend = \"echo\"\n[batching]\nmax_queue_delay = \"1.5us\"\n", "m");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("invalid duration"));
}

TEST(ModelConfigTest, DefaultsNeedOnlyTheBackend) {
  auto config = ParseModelConfig("backend = \"echo\"\n", "m/config.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ModelConfig expected;
  expected.backend = "echo";
  EXPECT_EQ(*config, expected);
}

TEST(ModelConfigTest, WarmupTableIsOneInput) {
  auto config =
      ParseModelConfig("backend = \"echo\"\n[warmup.inputs]\nprompt = \"hi\"\n", "m/config.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  ASSERT_EQ(config->warmup_inputs.size(), 1u);
  EXPECT_THAT(config->warmup_inputs[0], HasSubstr(R"("prompt")"));
}

TEST(ModelConfigTest, UnknownKeysNameFileAndLine) {
  auto config = ParseModelConfig("backend = \"echo\"\nbatch_size = 4\n[batching]\nmax_delay = 1\n",
                                 "models/m/config.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(),
              HasSubstr("unknown key \"batch_size\" (from models/m/config.toml:2:"));
  EXPECT_THAT(config.status().message(),
              HasSubstr("unknown key \"batching.max_delay\" (from models/m/config.toml:4:"));
}

TEST(ModelConfigTest, BadValuesAreAllReported) {
  auto config = ParseModelConfig(R"(backend = "echo"
version = 0
instances = "two"
[batching]
max_queue_delay = "5 parsecs"
preferred_batch_sizes = [4, -1]
wait_spin_us = 2000000
)",
                                 "c.toml");
  ASSERT_FALSE(config.ok());
  const std::string m = config.status().message();
  EXPECT_THAT(m, HasSubstr("version: must be an integer >= 1, got 0 (from c.toml:2:"));
  EXPECT_THAT(m, HasSubstr("instances: expected an integer, got a string (from c.toml:3:"));
  EXPECT_THAT(m, HasSubstr("batching.max_queue_delay: invalid duration \"5 parsecs\""));
  EXPECT_THAT(m, HasSubstr("batching.preferred_batch_sizes: must be an integer >= 1, got -1"));
  EXPECT_THAT(m, HasSubstr("batching.wait_spin_us: must be at most 1000000, got 2000000"));
}

TEST(ModelConfigTest, BackendIsRequired) {
  auto config = ParseModelConfig("version = 2\n", "c.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("backend: missing (in c.toml)"));
  config = ParseModelConfig("backend = 7\n", "c.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("backend: must be a non-empty string"));
}

TEST(ModelConfigTest, SyntaxErrorsHavePosition) {
  auto config = ParseModelConfig("backend = \"echo\"\nversion = = 2\n", "c.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("c.toml:2:"));
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  auto config = LoadModelConfig(::testing::TempDir() + "/no_such_model/config.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), core::StatusCode::kNotFound);
}

TEST(ModelConfigTest, LoadsFromFile) {
  std::string path = ::testing::TempDir() + "/model_config_test.toml";
  std::ofstream(path) << "backend = \"echo\"\nversion = 4\n";
  auto config = LoadModelConfig(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->version, 4);
}

}  // namespace
}  // namespace megaserve::models
