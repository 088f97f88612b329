#include "forecast/trainer.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

namespace megaserve::forecast {
namespace {

// The plugin is looked for once per process and a failure is not remembered, so this test first
// points MEGASERVE_TORCH_PLUGIN at nothing, then at the plugin built beside the binary.
TEST(LoadTorchTrainerTest, ReportsAMissingPluginThenLoadsTheBuiltOne) {
  ASSERT_EQ(setenv("MEGASERVE_TORCH_PLUGIN", "/nonexistent/libmegaserve_torch.so", 1), 0);
  auto missing = LoadTorchTrainer();
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), core::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/libmegaserve_torch.so"),
            std::string::npos);

  const char* binary = std::getenv("MEGASERVE_BINARY");
  if (binary == nullptr) GTEST_SKIP() << "MEGASERVE_BINARY is not set (run through ctest)";
  const auto plugin = std::filesystem::path(binary).parent_path() / "libmegaserve_torch.so";
  if (!std::filesystem::exists(plugin)) GTEST_SKIP() << plugin << " is not built";
  ASSERT_EQ(setenv("MEGASERVE_TORCH_PLUGIN", plugin.c_str(), 1), 0);
  auto loaded = LoadTorchTrainer();
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_NE(*loaded, nullptr);
  auto again = LoadTorchTrainer();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *loaded);
  unsetenv("MEGASERVE_TORCH_PLUGIN");
}

}  // namespace
}  // namespace megaserve::forecast
