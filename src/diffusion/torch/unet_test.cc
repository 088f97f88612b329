// The UNet against tests/diffusion/ref_unet.py (an independent eager PyTorch implementation),
// run once per suite into a temporary folder: an SD1-style tiny model (conv projections, one
// head count), an SD2-style one (linear projections, per-block head counts, two layers per
// block, fp16 weight file) and a latent size that is not a multiple of the up-sampling factor.
#include "diffusion/torch/unet.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "diffusion/torch/attention.h"
#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

class UNetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::MakeTempDir("unet"));
    python_ok_ = testing::RunPython("ref_unet.py", dir_->string()) == 0;
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(python_ok_) << "ref_unet.py failed"; }

  static std::filesystem::path Variant(const std::string& name) { return *dir_ / name; }

  // Runs `unet` on the inputs `<variant>/<prefix>inputs.safetensors`.
  static at::Tensor Run(const UNet& unet, const std::string& variant,
                        const std::string& prefix = "") {
    const Weights in = testing::ReadTensors(Variant(variant) / (prefix + "inputs.safetensors"));
    return unet.Forward(in.Get("sample"), in.Get("timesteps"), in.Get("encoder_hidden_states"));
  }
  static at::Tensor Expected(const std::string& variant, const std::string& prefix = "") {
    return testing::ReadTensors(Variant(variant) / (prefix + "expected.safetensors")).Get("out");
  }
  static Weights Sd1Weights() {
    return testing::ReadTensors(Variant("sd1") / "diffusion_pytorch_model.safetensors");
  }
  static UNetConfig Sd1Config() { return UNetConfig::FromFile(Variant("sd1") / "config.json"); }

  static std::filesystem::path* dir_;
  static bool python_ok_;
};

std::filesystem::path* UNetTest::dir_ = nullptr;
bool UNetTest::python_ok_ = false;

TEST_F(UNetTest, Sd1MatchesReference) {
  const auto unet = UNet::Load(Variant("sd1"), ComputeOptions{});
  EXPECT_EQ(unet->config().attention_heads, (std::vector<int64_t>{8, 8}));
  EXPECT_FALSE(unet->config().use_linear_projection);
  const at::Tensor out = Run(*unet, "sd1");
  EXPECT_EQ(out.scalar_type(), at::kFloat);
  EXPECT_TENSOR_NEAR(out, Expected("sd1"), 1e-4);
  EXPECT_GT(Expected("sd1").abs().max().item<double>(), 0.5);  // a real signal, not zeros
  EXPECT_GT(unet->bytes(), 3'000'000u);
}

TEST_F(UNetTest, Sd2LinearProjectionPerBlockHeadsFromFp16FileMatchesReference) {
  const auto unet = UNet::Load(Variant("sd2"), ComputeOptions{});
  EXPECT_EQ(unet->config().attention_heads, (std::vector<int64_t>{4, 8}));
  EXPECT_TRUE(unet->config().use_linear_projection);
  EXPECT_EQ(unet->config().transformer_layers_per_block, (std::vector<int64_t>{1, 2}));
  EXPECT_TENSOR_NEAR(Run(*unet, "sd2"), Expected("sd2"), 1e-4);
}

TEST_F(UNetTest, LatentSizeNotMultipleOfUpsamplingMatchesReference) {
  const auto unet = UNet::Load(Variant("sd1"), ComputeOptions{});
  const at::Tensor out = Run(*unet, "sd1", "odd_");
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{1, 4, 7, 9}));
  EXPECT_TENSOR_NEAR(out, Expected("sd1", "odd_"), 1e-4);
}

TEST_F(UNetTest, ChannelsLastMatchesReference) {
  ComputeOptions o;
  o.channels_last = true;
  for (const char* variant : {"sd1", "sd2"}) {
    const auto unet = UNet::Load(Variant(variant), o);
    EXPECT_TENSOR_NEAR(Run(*unet, variant), Expected(variant), 1e-4);
  }
  const auto unet = UNet::Load(Variant("sd1"), o);
  EXPECT_TENSOR_NEAR(Run(*unet, "sd1", "odd_"), Expected("sd1", "odd_"), 1e-4);
}

TEST_F(UNetTest, AttentionSlicingGivesSameResult) {
  for (const char* variant : {"sd1", "sd2"}) {
    const at::Tensor whole = Run(*UNet::Load(Variant(variant), ComputeOptions{}), variant);
    for (int64_t slice : {1, 3, 16, 1000}) {
      ComputeOptions o;
      o.attention_slice = slice;
      EXPECT_TENSOR_NEAR(Run(*UNet::Load(Variant(variant), o), variant), whole, 1e-5);
    }
  }
}

TEST_F(UNetTest, Bfloat16RunsCloseToFp32) {
  ComputeOptions o;
  o.dtype = at::kBFloat16;
  o.channels_last = true;
  const auto unet = UNet::Load(Variant("sd1"), o);
  const at::Tensor out = Run(*unet, "sd1");
  EXPECT_EQ(out.scalar_type(), at::kBFloat16);
  const at::Tensor expected = Expected("sd1");
  EXPECT_TENSOR_NEAR(out, expected, 0.15);
  const double mean_err = (out.to(at::kFloat) - expected).abs().mean().item<double>();
  EXPECT_LT(mean_err, 0.03);
}

TEST_F(UNetTest, OneTimestepBroadcastsOverTheBatch) {
  const auto unet = UNet::Load(Variant("sd1"), ComputeOptions{});
  const Weights in = testing::ReadTensors(Variant("sd1") / "inputs.safetensors");
  const at::Tensor sample = in.Get("sample"), context = in.Get("encoder_hidden_states");
  const at::Tensor one = unet->Forward(sample, at::scalar_tensor(250.0), context);
  const at::Tensor both = unet->Forward(sample, at::full({2}, 250, at::kLong), context);
  EXPECT_TENSOR_NEAR(one, both, 0.0);
  // ... and the timestep matters.
  EXPECT_GT(testing::MaxAbsDiff(one, unet->Forward(sample, at::scalar_tensor(900.0), context)),
            1e-3);
}

TEST_F(UNetTest, MissingWeightIsNamed) {
  const Weights all = Sd1Weights();
  const std::string dropped = "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v.weight";
  Weights partial;
  partial.set_source("partial.safetensors");
  for (const std::string& name : all.Names()) {
    if (name != dropped) partial.Add(name, all.Get(name));
  }
  try {
    UNet unet(Sd1Config(), partial, ComputeOptions{});
    FAIL() << "no error";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find(dropped), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("partial.safetensors"), std::string::npos) << e.what();
  }
}

TEST_F(UNetTest, MisshapenWeightIsNamed) {
  Weights w = Sd1Weights();
  const std::string name = "down_blocks.1.resnets.0.conv_shortcut.weight";
  w.Add(name, at::zeros({64, 32, 3, 3}));
  try {
    UNet unet(Sd1Config(), w, ComputeOptions{});
    FAIL() << "no error";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[64, 32, 1, 1]"), std::string::npos) << e.what();
  }
  // A config that disagrees with the file (more channels) fails the same way.
  UNetConfig wide = Sd1Config();
  wide.block_out_channels = {32, 128};
  EXPECT_THROW(UNet(wide, Sd1Weights(), ComputeOptions{}), WeightError);
}

TEST_F(UNetTest, FolderWithoutWeightsFails) {
  const std::filesystem::path dir = testing::MakeTempDir("unet-empty");
  std::filesystem::copy_file(Variant("sd1") / "config.json", dir / "config.json");
  try {
    UNet::Load(dir, ComputeOptions{});
    FAIL() << "no error";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find("diffusion_pytorch_model"), std::string::npos);
  }
  std::filesystem::remove_all(dir);
  EXPECT_THROW(UNet::Load(dir, ComputeOptions{}), std::invalid_argument);  // no config either
}

TEST_F(UNetTest, WrongInputShapesAreRejected) {
  const auto unet = UNet::Load(Variant("sd1"), ComputeOptions{});
  const at::Tensor t = at::full({2}, 10.0);
  const at::Tensor ctx = at::zeros({2, 77, 32});
  EXPECT_NO_THROW(unet->Forward(at::zeros({2, 4, 8, 8}), t, ctx));
  EXPECT_THROW(unet->Forward(at::zeros({2, 3, 8, 8}), t, ctx), std::invalid_argument);
  EXPECT_THROW(unet->Forward(at::zeros({2, 4, 8}), t, ctx), std::invalid_argument);
  EXPECT_THROW(unet->Forward(at::zeros({2, 4, 8, 8}), at::full({3}, 1.0), ctx),
               std::invalid_argument);
  EXPECT_THROW(unet->Forward(at::zeros({2, 4, 8, 8}), t, at::zeros({2, 77, 16})),
               std::invalid_argument);
  EXPECT_THROW(unet->Forward(at::zeros({2, 4, 8, 8}), t, at::zeros({1, 77, 32})),
               std::invalid_argument);
}

// Expects FromJson(json) to throw std::invalid_argument whose message contains `needle`.
void ExpectConfigError(const std::string& json, const std::string& needle) {
  try {
    UNetConfig::FromJson(json, "unet/config.json");
    ADD_FAILURE() << "accepted " << json;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("unet/config.json"), std::string::npos) << e.what();
  }
}

TEST(UNetConfigTest, DefaultsAreStableDiffusion15AndSd2ListsAreHeadCounts) {
  const UNetConfig sd15 = UNetConfig::FromJson("{}", "x");
  EXPECT_EQ(sd15.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(sd15.attention_heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(sd15.layers_per_block, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_EQ(sd15.cross_attention_dim, 1280);
  const UNetConfig sd2 = UNetConfig::FromJson(
      R"({"attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
          "use_linear_projection": true, "upcast_attention": true, "sample_size": 96,
          "dual_cross_attention": false, "only_cross_attention": false,
          "class_embed_type": null, "num_class_embeds": null, "act_fn": "silu",
          "_diffusers_version": "0.8.0"})",
      "x");
  EXPECT_EQ(sd2.attention_heads, (std::vector<int64_t>{5, 10, 20, 20}));
  EXPECT_EQ(sd2.cross_attention_dim, 1024);
  EXPECT_TRUE(sd2.use_linear_projection);
  EXPECT_TRUE(sd2.upcast_attention);
  EXPECT_EQ(sd2.sample_size, 96);
}

TEST(UNetConfigTest, UnsupportedBlockTypesAndOptionsAreRejected) {
  ExpectConfigError(R"({"down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                       "SimpleCrossAttnDownBlock2D", "DownBlock2D"]})",
                    "SimpleCrossAttnDownBlock2D");
  ExpectConfigError(R"({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D",
                       "UpBlock2D"]})",
                    "AttnUpBlock2D");
  ExpectConfigError(R"({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"})",
                    "UNetMidBlock2DSimpleCrossAttn");
  ExpectConfigError(R"({"block_out_channels": [32, 64]})", "down_block_types");
  ExpectConfigError(R"({"class_embed_type": "timestep"})", "class_embed_type");
  ExpectConfigError(R"({"addition_embed_type": "text_time"})", "addition_embed_type");
  ExpectConfigError(R"({"num_attention_heads": 8})", "num_attention_heads");
  ExpectConfigError(R"({"only_cross_attention": true})", "only_cross_attention");
  ExpectConfigError(R"({"attention_type": "gated"})", "attention_type");
  ExpectConfigError(R"({"resnet_time_scale_shift": "scale_shift"})", "resnet_time_scale_shift");
  ExpectConfigError(R"({"act_fn": "gelu"})", "act_fn");
  ExpectConfigError(R"({"transformer_layers_per_block": [[1], [2], [3], [4]]})",
                    "transformer_layers_per_block");
  ExpectConfigError(R"({"attention_head_dim": [8, 8]})", "attention_head_dim");
  ExpectConfigError(R"({"attention_head_dim": 7})", "attention heads");
  ExpectConfigError(R"({"norm_num_groups": 48})", "norm_num_groups");
  ExpectConfigError(R"({"in_channels": "four"})", "in_channels");
  ExpectConfigError("[1, 2", "JSON");
}

// Plain softmax(scale Q K^T) V per head, for comparison.
at::Tensor NaiveAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                          int64_t heads, double scale) {
  auto split = [heads](const at::Tensor& t) {
    return t.reshape({t.size(0), t.size(1), heads, -1}).permute({0, 2, 1, 3});
  };
  const at::Tensor p = at::softmax(at::matmul(split(q), split(k).transpose(-1, -2)) * scale, -1);
  const at::Tensor o = at::matmul(p, split(v)).permute({0, 2, 1, 3});
  return o.reshape({q.size(0), q.size(1), -1});
}

TEST(AttentionTest, BlockedStridedAttentionMatchesNaive) {
  at::manual_seed(0);
  const int64_t heads = 3, d = 5;
  // q, k, v as column slices of one fused projection, as the transformer passes them.
  const at::Tensor qkv = at::randn({2, 37, 3 * heads * d});
  const at::Tensor q = qkv.narrow(2, 0, heads * d), k = qkv.narrow(2, heads * d, heads * d),
                   v = qkv.narrow(2, 2 * heads * d, heads * d);
  const at::Tensor expected = NaiveAttention(q, k, v, heads, 0.4);
  for (int64_t slice : {0, 1, 4, 37, 100}) {
    const at::Tensor out = MultiHeadAttention(q, k, v, heads, 0.4, slice);
    EXPECT_TRUE(out.is_contiguous());
    EXPECT_TENSOR_NEAR(out, expected, 1e-5);
  }
  // Cross-attention: fewer keys than queries, a wider value.
  const at::Tensor kc = at::randn({2, 7, heads * d}), vc = at::randn({2, 7, heads * 4});
  EXPECT_TENSOR_NEAR(MultiHeadAttention(q, kc, vc, heads, 0.5, 0),
                     NaiveAttention(q, kc, vc, heads, 0.5), 1e-5);
  const at::Tensor bf = MultiHeadAttention(q.to(at::kBFloat16), k.to(at::kBFloat16),
                                           v.to(at::kBFloat16), heads, 0.4, 8);
  EXPECT_EQ(bf.scalar_type(), at::kBFloat16);
  EXPECT_TENSOR_NEAR(bf, expected, 0.05);
  EXPECT_THROW(MultiHeadAttention(q, kc.narrow(2, 0, 14), vc, heads, 0.5, 0),
               std::invalid_argument);
}

}  // namespace
}  // namespace megaserve::diffusion
