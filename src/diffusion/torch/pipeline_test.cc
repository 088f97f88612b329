#include "diffusion/torch/pipeline.h"

#include <gtest/gtest.h>

#include "diffusion/torch/scheduler.h"
#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

namespace fs = std::filesystem;

// One tiny random-weight model folder for the whole suite (tests/diffusion/make_tiny_pipeline.py),
// and one whose VAE outputs NaN.
class PipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(testing::MakeTempDir("pipeline"));
    ASSERT_EQ(testing::RunPython("make_tiny_pipeline.py", (*dir_ / "tiny").string()), 0);
    ASSERT_EQ(testing::RunPython("make_tiny_pipeline.py", (*dir_ / "nan").string() + " --nan-vae"),
              0);
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
  }

  static std::unique_ptr<Pipeline> Load(const std::string& name = "tiny", int64_t budget = 0) {
    LoadParams p;
    p.model_path = (*dir_ / name).string();
    p.dtype = "fp32";
    p.memory_budget_bytes = budget;
    return LoadPipeline(p);
  }

  static GenerateParams Params() {
    GenerateParams g;
    g.prompt = "a photo of a cat";
    g.negative_prompt = "blurry";
    g.steps = 4;
    g.scheduler = "ddim";
    g.guidance = 7.5;
    g.seed = 7;
    g.width = 32;
    g.height = 24;
    return g;
  }

  static fs::path* dir_;
};
fs::path* PipelineTest::dir_ = nullptr;

TEST_F(PipelineTest, MatchesThePythonReferenceLoop) {
  auto pipeline = Load();
  auto image = pipeline->Generate(Params(), nullptr);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  ASSERT_EQ(image->width, 32);
  ASSERT_EQ(image->height, 24);
  ASSERT_EQ(image->rgb.size(), 32u * 24 * 3);

  const fs::path ref = *dir_ / "ref.safetensors";
  ASSERT_EQ(testing::RunPython("ref_pipeline.py",
                               (*dir_ / "tiny").string() + " " + ref.string() +
                                   " --prompt 'a photo of a cat' --negative blurry --steps 4 "
                                   "--guidance 7.5 --seed 7 --width 32 --height 24"),
            0);
  const at::Tensor expected = testing::ReadTensors(ref).Get("rgb").to(at::kInt);
  const at::Tensor actual =
      at::tensor(std::vector<int>(image->rgb.begin(), image->rgb.end()), at::kInt)
          .reshape({24, 32, 3});
  // Both sides compute in fp32; an 8-bit level may flip where a value lands on a rounding edge.
  const at::Tensor diff = (actual - expected).abs();
  EXPECT_LE(diff.max().item<int>(), 1);
  EXPECT_LT(diff.to(at::kFloat).mean().item<double>(), 0.02);
  EXPECT_GT(expected.to(at::kFloat).std().item<double>(), 10) << "a flat image proves little";
}

TEST_F(PipelineTest, TheSeedDecidesTheImage) {
  auto pipeline = Load();
  GenerateParams p = Params();
  p.scheduler = "euler_a";  // draws noise at every step too
  auto a = pipeline->Generate(p, nullptr);
  auto b = pipeline->Generate(p, nullptr);
  p.seed = 8;
  auto c = pipeline->Generate(p, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->rgb, b->rgb);
  EXPECT_NE(a->rgb, c->rgb);
}

TEST_F(PipelineTest, EverySchedulerProducesAnImageAndReportsProgress) {
  auto pipeline = Load();
  for (const std::string& name : SchedulerNames()) {
    GenerateParams p = Params();
    p.scheduler = name;
    p.steps = name == "lcm" ? 2 : 3;
    int denoise_reports = 0, last_done = -1;
    auto image = pipeline->Generate(p, [&](const std::string& phase, int done, int total) {
      if (phase == "denoise") {
        ++denoise_reports;
        EXPECT_EQ(total, p.steps);
        EXPECT_GT(done, last_done);
        last_done = done;
      }
    });
    ASSERT_TRUE(image.ok()) << name << ": " << image.status().ToString();
    EXPECT_EQ(denoise_reports, p.steps + 1) << name;
    EXPECT_EQ(last_done, p.steps) << name;
  }
}

TEST_F(PipelineTest, GuidanceUsesTheNegativePromptAndOneDisablesIt) {
  auto pipeline = Load();
  GenerateParams p = Params();
  auto with_negative = pipeline->Generate(p, nullptr);
  p.negative_prompt = "a dog";
  auto other_negative = pipeline->Generate(p, nullptr);
  ASSERT_TRUE(with_negative.ok() && other_negative.ok());
  EXPECT_NE(with_negative->rgb, other_negative->rgb);

  p.guidance = 1;  // the conditional half alone: the negative prompt plays no part
  auto unguided = pipeline->Generate(p, nullptr);
  p.negative_prompt = "blurry";
  auto unguided_other = pipeline->Generate(p, nullptr);
  ASSERT_TRUE(unguided.ok() && unguided_other.ok());
  EXPECT_EQ(unguided->rgb, unguided_other->rgb);
  EXPECT_NE(unguided->rgb, with_negative->rgb);
}

TEST_F(PipelineTest, BadParametersAreInvalidArgument) {
  auto pipeline = Load();
  auto code = [&](auto change) {
    GenerateParams p = Params();
    change(p);
    return pipeline->Generate(p, nullptr).status();
  };
  auto s = code([](GenerateParams& p) { p.width = 30; });
  EXPECT_EQ(s.code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("multiples of 4"), std::string::npos) << s.message();
  EXPECT_EQ(code([](GenerateParams& p) { p.steps = 0; }).code(),
            core::StatusCode::kInvalidArgument);
  s = code([](GenerateParams& p) { p.scheduler = "heun"; });
  EXPECT_EQ(s.code(), core::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("euler_a"), std::string::npos) << s.message();
  EXPECT_EQ(code([](GenerateParams& p) { p.guidance = -1; }).code(),
            core::StatusCode::kInvalidArgument);
}

TEST_F(PipelineTest, TheMemoryBudgetRefusesBeforeAnyWork) {
  auto roomy = Load();
  GenerateParams p = Params();
  const int64_t small = roomy->EstimateBytes(p);
  p.width = p.height = 256;
  const int64_t big = roomy->EstimateBytes(p);
  EXPECT_GT(small, roomy->memory_bytes());
  EXPECT_GT(big, small);

  auto tight = Load("tiny", (small + big) / 2);
  auto refused = tight->Generate(p, [](const std::string&, int, int) {
    ADD_FAILURE() << "work started although the estimate is over budget";
  });
  EXPECT_EQ(refused.status().code(), core::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("memory budget"), std::string::npos);
  EXPECT_TRUE(tight->Generate(Params(), nullptr).ok());
}

TEST_F(PipelineTest, NanOutputIsAFailureNotAnImage) {
  auto pipeline = Load("nan");
  auto image = pipeline->Generate(Params(), nullptr);
  EXPECT_EQ(image.status().code(), core::StatusCode::kInternal);
  EXPECT_NE(image.status().message().find("NaN"), std::string::npos) << image.status().message();
}

TEST_F(PipelineTest, LoadingErrorsNameTheProblem) {
  LoadParams p;
  p.model_path = (*dir_ / "absent").string();
  try {
    LoadPipeline(p);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  p.model_path = dir_->string();  // a folder, but not a model
  EXPECT_THROW(LoadPipeline(p), std::invalid_argument);
  p.model_path = (*dir_ / "tiny").string();
  p.dtype = "fp16";  // CUDA only
  EXPECT_THROW(LoadPipeline(p), std::invalid_argument);
  p.dtype = "fp32";
  auto message = [&p] {
    try {
      LoadPipeline(p);
    } catch (const std::invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  p.device = "tpu";
  EXPECT_NE(message().find("unknown device 'tpu'"), std::string::npos) << message();
  if (!at::hasCUDA()) {
    p.device = "cuda:1";
    EXPECT_NE(message().find("needs a CUDA build of libtorch"), std::string::npos) << message();
  }
  p.device = "cpu";
  EXPECT_NE(LoadPipeline(p)->Describe().find("fp32 on cpu"), std::string::npos);
}

// Single-file checkpoints in the original key names (tests/diffusion/ref_checkpoint.py), SD1
// (CLIP) and SD2 (OpenCLIP, linear projections), with a tokenizer folder beside them.
TEST_F(PipelineTest, SingleFileCheckpointsGenerate) {
  for (const char* variant : {"sd1", "sd2"}) {
    const fs::path dir = *dir_ / (std::string("single-") + variant);
    ASSERT_EQ(
        testing::RunPython("make_tiny_pipeline.py", dir.string() + " --single-file " + variant), 0);
    LoadParams l;
    l.model_path = (dir / "tiny.safetensors").string();
    l.dtype = "fp32";
    auto pipeline = LoadPipeline(l);
    EXPECT_NE(pipeline->Describe().find(variant), std::string::npos) << pipeline->Describe();
    auto image = pipeline->Generate(Params(), nullptr);
    ASSERT_TRUE(image.ok()) << variant << ": " << image.status().ToString();
    EXPECT_EQ(image->rgb.size(), 32u * 24 * 3);

    fs::remove_all(dir / "tokenizer");  // the file alone has no vocabulary
    try {
      LoadPipeline(l);
      ADD_FAILURE() << "loaded without a tokenizer";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("--tokenizer"), std::string::npos) << e.what();
    }
  }
}

TEST_F(PipelineTest, TiledDecodingGivesAnImageOfTheSameSize) {
  LoadParams l;
  l.model_path = (*dir_ / "tiny").string();
  l.dtype = "fp32";
  l.vae_tiling = "on";
  auto pipeline = LoadPipeline(l);
  GenerateParams p = Params();
  p.width = p.height = 136;  // 68x68 latents: more than one 64-latent tile
  p.steps = 1;               // the decode is what this is about
  p.guidance = 1;
  auto image = pipeline->Generate(p, nullptr);
  ASSERT_TRUE(image.ok()) << image.status().ToString();
  EXPECT_EQ(image->width, 136);
  EXPECT_EQ(image->rgb.size(), 136u * 136 * 3);
}

}  // namespace
}  // namespace megaserve::diffusion
