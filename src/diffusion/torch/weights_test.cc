#include "diffusion/torch/weights.h"

#include <gtest/gtest.h>

#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

class WeightsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("weights");
    file_ = dir_ / "w.safetensors";
    ASSERT_EQ(testing::RunPython("write_dtypes.py", file_.string()), 0);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_, file_;
};

TEST_F(WeightsTest, LoadsEveryDtypeIntoTheComputeType) {
  Weights w = Weights::FromFile(file_.string(), ComputeOptions{});
  const at::Tensor expected = at::arange(12, at::kFloat).reshape({3, 4}) / 8 - 0.5;
  for (const char* name : {"f32", "f16", "bf16"}) {
    const at::Tensor& t = w.Get(name, {3, 4});
    EXPECT_EQ(t.scalar_type(), at::kFloat) << name;
    EXPECT_TENSOR_NEAR(t, expected, 0.0);  // these values are exact in every format
  }
  EXPECT_EQ(w.Get("i64").scalar_type(), at::kLong);
  EXPECT_EQ(w.Get("i64")[4].item<int64_t>(), 4);
  EXPECT_EQ(w.Names(), (std::vector<std::string>{"bf16", "f16", "f32", "i64"}));
}

TEST_F(WeightsTest, ConvertsToBfloat16WhenAsked) {
  ComputeOptions o;
  o.dtype = at::kBFloat16;
  Weights w = Weights::FromFile(file_.string(), o);
  EXPECT_EQ(w.Get("f32").scalar_type(), at::kBFloat16);
  EXPECT_EQ(w.Get("i64").scalar_type(), at::kLong);
}

TEST_F(WeightsTest, MissingOrMisshapenWeightsNameThemselvesAndTheFile) {
  Weights w = Weights::FromFile(file_.string(), ComputeOptions{});
  try {
    w.Get("nope");
    FAIL() << "no error";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("w.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(w.Get("f32", {4, 3}), WeightError);
  EXPECT_THROW(Weights::FromFile((dir_ / "absent.safetensors").string(), ComputeOptions{}),
               WeightError);
}

}  // namespace
}  // namespace megaserve::diffusion
