#include "models/backend.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>

namespace megaserve::models {
namespace {

TEST(EchoBackendTest, EchoesAndCountsFileBytes) {
  std::string pattern = ::testing::TempDir() + "/echo_backend_XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string dir = pattern;
  std::ofstream(dir + "/config.toml") << "backend = \"echo\"\n";  // 17 bytes
  std::filesystem::create_directory(dir + "/weights");
  std::ofstream(dir + "/weights/w.bin") << std::string(1000, 'x');
  ModelSpec spec;
  spec.name = "e";
  spec.dir = dir;
  spec.config.backend = "echo";
  auto model = LoadEchoModel(spec);
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  EXPECT_EQ((*model)->memory_bytes(), 1017u);
  auto out = (*model)->Infer(R"({"text":"hi"})");
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(*out, R"({"text":"hi"})");
  std::filesystem::remove_all(dir);
}

TEST(EchoBackendTest, MissingFolderFails) {
  ModelSpec spec;
  spec.dir = ::testing::TempDir() + "/no_such_echo_model";
  auto model = LoadEchoModel(spec);
  EXPECT_FALSE(model.ok());
}

}  // namespace
}  // namespace megaserve::models
