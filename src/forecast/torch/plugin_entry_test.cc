#include <gtest/gtest.h>

#include "forecast/trainer.h"

extern "C" megaserve::forecast::Trainer* megaserve_torch_forecast_trainer(int abi_version);

namespace megaserve::forecast {
namespace {

TEST(ForecastPluginEntryTest, ReturnsOneTrainerForTheCurrentAbiOnly) {
  Trainer* trainer = megaserve_torch_forecast_trainer(kTrainerAbiVersion);
  ASSERT_NE(trainer, nullptr);
  EXPECT_EQ(megaserve_torch_forecast_trainer(kTrainerAbiVersion), trainer);
  EXPECT_EQ(megaserve_torch_forecast_trainer(kTrainerAbiVersion + 1), nullptr);
}

}  // namespace
}  // namespace megaserve::forecast
