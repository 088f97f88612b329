#include "core/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <fstream>

namespace megaserve::core {
namespace {

TEST(LoggingTest, AccessLinesReachTheConfiguredFile) {
  LogConfig config;
  config.access_file = ::testing::TempDir() + "/access.log";
  std::remove(config.access_file.c_str());
  ASSERT_TRUE(InitLogging(config).ok());
  ASSERT_NE(AccessLogger(), nullptr);
  AccessLogger()->info(std::string_view(R"({"status":200})"));
  ShutdownLogging();
  std::ifstream f(config.access_file);
  std::string line;
  std::getline(f, line);
  EXPECT_EQ(line, R"({"status":200})");
}

TEST(LoggingTest, AccessLogOffMeansNoLogger) {
  LogConfig config;
  config.access = false;
  ASSERT_TRUE(InitLogging(config).ok());
  EXPECT_EQ(AccessLogger(), nullptr);
  ShutdownLogging();
}

TEST(LoggingTest, UnwritableAccessFileIsAnError) {
  LogConfig config;
  config.access_file = "/dev/null/access.log";
  Status s = InitLogging(config);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("log.access_file"), std::string::npos);
  ShutdownLogging();
}

}  // namespace
}  // namespace megaserve::core
