#include "diffusion/torch/vae.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

// Weights of a loaded file without one of them (or with one replaced).
Weights Edited(const Weights& w, const std::string& drop, const at::Tensor& replacement = {}) {
  Weights out;
  for (const std::string& name : w.Names()) {
    if (name != drop) {
      out.Add(name, w.Get(name));
    } else if (replacement.defined()) {
      out.Add(name, replacement);
    }
  }
  out.set_source(w.source());
  return out;
}

// A latent that varies smoothly, over several latent pixels, with the same statistics in every
// region of a few periods (as a real latent of a textured image), so that GroupNorm statistics
// over a tile are close to those over the whole latent.
at::Tensor SmoothLatent(int64_t batch, int64_t size) {
  const at::Tensor y = at::arange(size, at::kFloat).view({1, 1, size, 1});
  const at::Tensor x = at::arange(size, at::kFloat).view({1, 1, 1, size});
  const at::Tensor c = at::arange(4, at::kFloat).view({1, 4, 1, 1});
  const at::Tensor b = at::arange(batch, at::kFloat).view({batch, 1, 1, 1});
  return at::sin(1.0 * y + c + b) * at::cos(0.8 * x - 0.5 * c) * 1.5;
}

// Mean absolute horizontal step |out[..., x + 1] - out[..., x]| per column boundary x.
at::Tensor ColumnSteps(const at::Tensor& image) {
  const at::Tensor f = image.to(at::kFloat);
  const int64_t w = f.size(3);
  return (f.narrow(3, 1, w - 1) - f.narrow(3, 0, w - 1)).abs().mean({0, 1, 2});
}

// The largest step between neighbouring pixels of the tiled image's error against the untiled
// one, over all rows and columns, in units of the untiled image's median step. A seam is a
// jump of the error; blending keeps the error varying smoothly.
double SeamScore(const at::Tensor& tiled, const at::Tensor& whole) {
  double worst = 0;
  for (bool rows : {false, true}) {
    const at::Tensor t = rows ? tiled.transpose(2, 3) : tiled;
    const at::Tensor w = rows ? whole.transpose(2, 3) : whole;
    const double typical = ColumnSteps(w).median().item<double>();
    worst = std::max(worst, ColumnSteps(t - w).max().item<double>() / typical);
  }
  return worst;
}

class VaeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::MakeTempDir("vae"));
    ASSERT_EQ(testing::RunPython("ref_vae.py", dir_->string()), 0);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  static std::unique_ptr<Vae> LoadTiny(const ComputeOptions& options = {},
                                       const char* folder = "vae") {
    return Vae::Load(*dir_ / folder, options);
  }
  static Weights Decode() { return testing::ReadTensors(*dir_ / "decode.safetensors"); }
  static Weights Encode() { return testing::ReadTensors(*dir_ / "encode.safetensors"); }

  static std::filesystem::path* dir_;
};

std::filesystem::path* VaeTest::dir_ = nullptr;

TEST_F(VaeTest, DecodeMatchesReference) {
  auto vae = LoadTiny();
  EXPECT_EQ(vae->downscale(), 2);
  EXPECT_DOUBLE_EQ(vae->scaling_factor(), 0.18215);
  EXPECT_EQ(vae->config().block_out_channels, (std::vector<int64_t>{16, 32}));
  EXPECT_GT(vae->bytes(), 100'000u);
  Weights ref = Decode();
  const at::Tensor image = vae->Decode(ref.Get("z"));
  ASSERT_EQ(image.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_EQ(image.scalar_type(), at::kFloat);
  EXPECT_TENSOR_NEAR(image, ref.Get("image"), 1e-4);
}

TEST_F(VaeTest, DecodeWithoutMidBlockAttentionMatchesReference) {
  auto vae = LoadTiny({}, "vae_noattn");
  EXPECT_FALSE(vae->config().mid_block_add_attention);
  Weights ref = Decode();
  EXPECT_TENSOR_NEAR(vae->Decode(ref.Get("z")), ref.Get("image_noattn"), 1e-4);
}

TEST_F(VaeTest, EncodeMatchesReference) {
  auto vae = LoadTiny();
  Weights ref = Encode();
  const at::Tensor moments = vae->EncodeMoments(ref.Get("x"));
  ASSERT_EQ(moments.sizes(), (std::vector<int64_t>{1, 8, 16, 16}));
  EXPECT_TENSOR_NEAR(moments, ref.Get("moments"), 1e-4);
  EXPECT_TENSOR_NEAR(vae->EncodeMean(ref.Get("x")), ref.Get("moments").narrow(1, 0, 4), 1e-4);
}

TEST_F(VaeTest, OldAttentionNamesAndConvShapesGiveTheSameOutput) {
  auto vae = LoadTiny();
  auto old = LoadTiny({}, "vae_old");
  Weights dec = Decode(), enc = Encode();
  EXPECT_TENSOR_NEAR(old->Decode(dec.Get("z")), vae->Decode(dec.Get("z")), 0.0);
  EXPECT_TENSOR_NEAR(old->EncodeMoments(enc.Get("x")), vae->EncodeMoments(enc.Get("x")), 0.0);
  EXPECT_EQ(old->bytes(), vae->bytes());
}

TEST_F(VaeTest, ChannelsLastAndAttentionSlicingGiveTheSameOutput) {
  ComputeOptions o;
  o.channels_last = true;
  o.attention_slice = 5;  // does not divide the 16 / 64 tokens: exercises the last short slice
  auto vae = LoadTiny(o);
  Weights dec = Decode(), enc = Encode();
  const at::Tensor image = vae->Decode(dec.Get("z"));
  EXPECT_TRUE(image.is_contiguous());
  EXPECT_TENSOR_NEAR(image, dec.Get("image"), 1e-4);
  EXPECT_TENSOR_NEAR(vae->EncodeMoments(enc.Get("x")), enc.Get("moments"), 1e-4);
}

TEST_F(VaeTest, LoadsTheFp16FileVariant) {
  const std::filesystem::path dir = *dir_ / "variant";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(*dir_ / "vae" / "config.json", dir / "config.json");
  // The variant is found by name; its dtype is whatever the file holds (here fp32).
  std::filesystem::copy_file(*dir_ / "vae" / "diffusion_pytorch_model.safetensors",
                             dir / "diffusion_pytorch_model.fp16.safetensors");
  auto vae = Vae::Load(dir, ComputeOptions{});
  Weights ref = Decode();
  EXPECT_TENSOR_NEAR(vae->Decode(ref.Get("z")), ref.Get("image"), 1e-4);
  std::filesystem::remove(dir / "diffusion_pytorch_model.fp16.safetensors");
  try {
    Vae::Load(dir, ComputeOptions{});
    FAIL() << "no error";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find("diffusion_pytorch_model.safetensors"), std::string::npos)
        << e.what();
  }
}

TEST_F(VaeTest, TiledDecodeEqualsDecodeWhenOneTileCoversTheLatent) {
  auto vae = LoadTiny();
  const at::Tensor z = Decode().Get("z");  // 8x8
  const at::Tensor whole = vae->Decode(z);
  EXPECT_TENSOR_NEAR(vae->DecodeTiled(z), whole, 0.0);
  EXPECT_TENSOR_NEAR(vae->DecodeTiled(z, 8, 4), whole, 0.0);
}

TEST_F(VaeTest, TiledDecodeIsCloseToDecodeAndSeamless) {
  auto vae = LoadTiny();
  const at::Tensor z = SmoothLatent(2, 32);
  const at::Tensor whole = vae->Decode(z);
  const double magnitude = whole.abs().mean().item<double>();
  // Tiles at latent 0, 8, 16 (16 wide, 8 shared), then two 28 wide at latent 0 and 4.
  for (auto [tile, overlap] : {std::pair<int64_t, int64_t>{16, 8}, {28, 24}}) {
    const at::Tensor tiled = vae->DecodeTiled(z, tile, overlap);
    ASSERT_EQ(tiled.sizes(), whole.sizes());
    const double max_diff = testing::MaxAbsDiff(tiled, whole);
    const double mean_diff = (tiled - whole).abs().mean().item<double>();
    const double seam = SeamScore(tiled, whole);
    std::printf(
        "tile %ld overlap %ld: max diff %.3f, mean diff %.3f (mean |image| %.3f), seam %.2f\n",
        tile, overlap, max_diff, mean_diff, magnitude, seam);
    // GroupNorm statistics and attention over one tile differ from those over the whole latent,
    // and tile edges are zero-padded, so tiling is not exact. Found with this tiny VAE (whose
    // receptive field is ~9 latent pixels, large for such tiles): tile 16 / overlap 8: max 0.36,
    // mean 0.055 (12% of the mean |image|); tile 28: max 0.10, mean 0.014 (3%). Seam scores
    // 0.22 and 0.07. The bounds leave 1.6x margin or more.
    EXPECT_LT(mean_diff, (tile == 16 ? 0.2 : 0.05) * magnitude);
    EXPECT_LT(max_diff, tile == 16 ? 0.6 : 0.2);
    EXPECT_LT(seam, 0.5);
  }
  // The seam score does see seams: butted tiles without overlap (at latent 0 and 16) make the
  // error jump at pixel 32 (found: 1.19, 5x the blended tiles' score).
  const double hard = SeamScore(vae->DecodeTiled(z, 16, 0), whole);
  std::printf("no overlap: seam %.2f\n", hard);
  EXPECT_GT(hard, 0.8);
}

TEST_F(VaeTest, Bfloat16Runs) {
  ComputeOptions o;
  o.dtype = at::kBFloat16;
  o.channels_last = true;
  auto vae = LoadTiny(o);
  Weights dec = Decode(), enc = Encode();
  const at::Tensor image = vae->Decode(dec.Get("z"));
  EXPECT_EQ(image.scalar_type(), at::kBFloat16);
  const at::Tensor moments = vae->EncodeMoments(enc.Get("x"));
  EXPECT_EQ(moments.scalar_type(), at::kBFloat16);
  // bf16 keeps 8 significant bits; over ~20 layers the error stays a few percent of the
  // outputs' O(1) scale (found: max 0.13 decode, 0.15 encode).
  EXPECT_TENSOR_NEAR(image, dec.Get("image"), 0.3);
  EXPECT_TENSOR_NEAR(moments, enc.Get("moments"), 0.3);
  const at::Tensor tiled = vae->DecodeTiled(SmoothLatent(1, 12), 8, 4);
  EXPECT_EQ(tiled.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::isfinite(tiled).all().item<bool>());
}

TEST_F(VaeTest, MissingOrMisshapenWeightIsNamed) {
  const VaeConfig config = VaeConfig::FromFile(*dir_ / "vae" / "config.json");
  const Weights w = Weights::FromFile(
      (*dir_ / "vae" / "diffusion_pytorch_model.safetensors").string(), ComputeOptions{});
  for (const char* name : {"decoder.up_blocks.1.resnets.1.conv2.weight",
                           "encoder.mid_block.attentions.0.to_k.bias", "post_quant_conv.bias"}) {
    try {
      Vae vae(config, Edited(w, name), ComputeOptions{});
      FAIL() << "no error without " << name;
    } catch (const WeightError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("diffusion_pytorch_model.safetensors"),
                std::string::npos)
          << e.what();
    }
  }
  try {
    Vae vae(config, Edited(w, "encoder.conv_in.weight", at::zeros({16, 3, 5, 5})),
            ComputeOptions{});
    FAIL() << "no error for a misshapen weight";
  } catch (const WeightError& e) {
    EXPECT_NE(std::string(e.what()).find("encoder.conv_in.weight"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[16, 3, 3, 3]"), std::string::npos) << e.what();
  }
  // Without the post-quant conv the config must say so.
  VaeConfig no_post = config;
  no_post.use_post_quant_conv = false;
  Vae vae(no_post, Edited(w, "post_quant_conv.weight"), ComputeOptions{});
  EXPECT_EQ(vae.Decode(at::zeros({1, 4, 4, 4})).sizes(), (std::vector<int64_t>{1, 3, 8, 8}));
}

TEST_F(VaeTest, BadConfigsAreRejectedWithTheField) {
  auto message = [](const std::string& json) -> std::string {
    try {
      VaeConfig::FromJson(json, "vae/config.json");
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "no error";
  };
  auto contains = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  EXPECT_PRED2(contains, message(R"({"block_out_channels": [16, 32], "norm_num_groups": 8,
      "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]})"),
               "AttnDownEncoderBlock2D");
  EXPECT_PRED2(contains, message(R"({"block_out_channels": [16, 32], "norm_num_groups": 8,
      "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
      "up_block_types": ["UpDecoderBlock2D", "CrossAttnUpBlock2D"]})"),
               "CrossAttnUpBlock2D");
  EXPECT_PRED2(contains, message(R"({"block_out_channels": [16, 32], "norm_num_groups": 8})"),
               "down_block_types");
  EXPECT_PRED2(contains, message(R"({"block_out_channels": [12], "norm_num_groups": 8})"),
               "norm_num_groups");
  EXPECT_PRED2(contains, message(R"({"layers_per_block": "2"})"), "'layers_per_block'");
  EXPECT_PRED2(contains, message(R"({"act_fn": "gelu"})"), "gelu");
  EXPECT_PRED2(contains, message(R"({"_class_name": "AutoencoderTiny"})"), "AutoencoderTiny");
  EXPECT_PRED2(contains, message("{\"in_channels\": 3,"), "vae/config.json: invalid JSON");
  EXPECT_THROW(Vae::Load(*dir_ / "absent", ComputeOptions{}), std::invalid_argument);

  // Defaults are diffusers'; sample_size may be a list; null means the default.
  const VaeConfig c = VaeConfig::FromJson(
      R"({"sample_size": [1024, 1024], "scaling_factor": 0.13025, "latent_channels": null})", "x");
  EXPECT_EQ(c.sample_size, 1024);
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.13025);
  EXPECT_EQ(c.latent_channels, 4);
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{64}));
  EXPECT_TRUE(c.mid_block_add_attention);
}

TEST_F(VaeTest, WrongInputsAreRejected) {
  auto vae = LoadTiny();
  EXPECT_THROW(vae->Decode(at::zeros({1, 3, 8, 8})), std::invalid_argument);
  EXPECT_THROW(vae->Decode(at::zeros({4, 8, 8})), std::invalid_argument);
  EXPECT_THROW(vae->EncodeMoments(at::zeros({1, 3, 31, 32})), std::invalid_argument);
  EXPECT_THROW(vae->EncodeMoments(at::zeros({1, 4, 32, 32})), std::invalid_argument);
  EXPECT_THROW(vae->DecodeTiled(at::zeros({1, 4, 8, 8}), 8, 8), std::invalid_argument);
  EXPECT_THROW(vae->DecodeTiled(at::zeros({1, 4, 8, 8}), 0, 0), std::invalid_argument);
  EXPECT_THROW(vae->DecodeTiled(at::zeros({1, 3, 20, 20}), 8, 2), std::invalid_argument);
}

}  // namespace
}  // namespace megaserve::diffusion
