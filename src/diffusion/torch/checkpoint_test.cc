#include "diffusion/torch/checkpoint.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include <filesystem>
#include <string>
#include <vector>

#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

// tests/diffusion/ref_checkpoint.py writes every checkpoint these tests read, once per suite.
class CheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::MakeTempDir("checkpoint"));
    ASSERT_EQ(testing::RunPython("ref_checkpoint.py", dir_->string()), 0);
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static std::string File(const std::string& name) { return (*dir_ / name).string(); }

  // Every expected diffusers tensor is present with identical values, and nothing else is.
  static void ExpectSameTensors(const Weights& actual, const std::string& expected_file) {
    const Weights expected = testing::ReadTensors(*dir_ / expected_file);
    EXPECT_EQ(actual.Names(), expected.Names()) << expected_file;
    for (const std::string& name : expected.Names()) {
      if (!actual.Has(name)) continue;  // reported by the name comparison above
      SCOPED_TRACE(name);
      EXPECT_TENSOR_NEAR(actual.Get(name), expected.Get(name), 0.0);
    }
  }

  static rapidjson::Document Json(const std::string& text) {
    rapidjson::Document doc;
    doc.Parse(text.c_str());
    EXPECT_FALSE(doc.HasParseError()) << text;
    EXPECT_TRUE(doc.IsObject()) << text;
    return doc;
  }

  static std::vector<int64_t> Ints(const rapidjson::Value& v) {
    std::vector<int64_t> out;
    for (const auto& x : v.GetArray()) out.push_back(x.GetInt64());
    return out;
  }
  static std::vector<std::string> Strings(const rapidjson::Value& v) {
    std::vector<std::string> out;
    for (const auto& x : v.GetArray()) out.push_back(x.GetString());
    return out;
  }

  static std::filesystem::path* dir_;
};

std::filesystem::path* CheckpointTest::dir_ = nullptr;

template <typename F>
std::string ErrorOf(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

TEST_F(CheckpointTest, Sd1TensorsMapToDiffusersNamesWithIdenticalValues) {
  const CheckpointComponents c = LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{});
  EXPECT_EQ(c.variant, "sd1");
  ExpectSameTensors(c.unet, "sd1_expected_unet.safetensors");
  ExpectSameTensors(c.vae, "sd1_expected_vae.safetensors");
  ExpectSameTensors(c.text_encoder, "sd1_expected_text_encoder.safetensors");
  // Extra keys of the file (EMA, schedule, the CLIP position_ids buffer) went nowhere.
  EXPECT_FALSE(c.unet.Has("alphas_cumprod"));
  EXPECT_FALSE(c.text_encoder.Has("text_model.embeddings.position_ids"));
}

TEST_F(CheckpointTest, Sd2TensorsMapToDiffusersNamesWithIdenticalValues) {
  const CheckpointComponents c = LoadCheckpoint(File("sd2.safetensors"), ComputeOptions{});
  EXPECT_EQ(c.variant, "sd2");
  ExpectSameTensors(c.unet, "sd2_expected_unet.safetensors");
  ExpectSameTensors(c.vae, "sd2_expected_vae.safetensors");
  ExpectSameTensors(c.text_encoder, "sd2_expected_text_encoder.safetensors");
  // The last OpenCLIP block (3 in the file) is not part of SD2's text encoder.
  EXPECT_FALSE(c.text_encoder.Has("text_model.encoder.layers.2.layer_norm1.weight"));
}

TEST_F(CheckpointTest, Sd1ConfigsFollowTheTensorShapes) {
  const CheckpointComponents c = LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{});
  const auto unet = Json(c.unet_config_json);
  EXPECT_STREQ(unet["_class_name"].GetString(), "UNet2DConditionModel");
  EXPECT_EQ(Ints(unet["block_out_channels"]), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(unet["layers_per_block"].GetInt(), 1);
  EXPECT_EQ(unet["cross_attention_dim"].GetInt(), 32);
  EXPECT_EQ(unet["attention_head_dim"].GetInt(), 8);  // SD1 rule, not metadata
  EXPECT_EQ(unet["norm_num_groups"].GetInt(), 8);     // metadata override
  EXPECT_EQ(unet["sample_size"].GetInt(), 8);
  EXPECT_EQ(unet["in_channels"].GetInt(), 4);
  EXPECT_EQ(unet["out_channels"].GetInt(), 4);
  EXPECT_FALSE(unet["use_linear_projection"].GetBool());
  EXPECT_EQ(Strings(unet["down_block_types"]),
            (std::vector<std::string>{"CrossAttnDownBlock2D", "DownBlock2D"}));
  EXPECT_EQ(Strings(unet["up_block_types"]),
            (std::vector<std::string>{"UpBlock2D", "CrossAttnUpBlock2D"}));

  const auto vae = Json(c.vae_config_json);
  EXPECT_EQ(Ints(vae["block_out_channels"]), (std::vector<int64_t>{16, 32}));
  EXPECT_EQ(vae["layers_per_block"].GetInt(), 1);
  EXPECT_EQ(vae["latent_channels"].GetInt(), 4);
  EXPECT_EQ(vae["norm_num_groups"].GetInt(), 8);
  EXPECT_EQ(vae["sample_size"].GetInt(), 16);
  EXPECT_DOUBLE_EQ(vae["scaling_factor"].GetDouble(), 0.18215);

  const auto text = Json(c.text_encoder_config_json);
  EXPECT_EQ(text["hidden_size"].GetInt(), 32);
  EXPECT_EQ(text["num_hidden_layers"].GetInt(), 2);
  EXPECT_EQ(text["num_attention_heads"].GetInt(), 4);
  EXPECT_EQ(text["intermediate_size"].GetInt(), 37);
  EXPECT_EQ(text["vocab_size"].GetInt(), 1000);
  EXPECT_EQ(text["max_position_embeddings"].GetInt(), 77);
  EXPECT_STREQ(text["hidden_act"].GetString(), "quick_gelu");

  const auto scheduler = Json(c.scheduler_config_json);
  EXPECT_STREQ(scheduler["prediction_type"].GetString(), "epsilon");
  EXPECT_STREQ(scheduler["beta_schedule"].GetString(), "scaled_linear");
  EXPECT_EQ(c.prediction_type, "epsilon");
}

TEST_F(CheckpointTest, Sd2ConfigsFollowTheTensorShapesAndMetadata) {
  const CheckpointComponents c = LoadCheckpoint(File("sd2.safetensors"), ComputeOptions{});
  const auto unet = Json(c.unet_config_json);
  EXPECT_EQ(Ints(unet["block_out_channels"]), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(unet["cross_attention_dim"].GetInt(), 32);
  EXPECT_EQ(unet["attention_head_dim"].GetInt(), 8);  // from metadata: 32 channels / 64 fails
  EXPECT_TRUE(unet["use_linear_projection"].GetBool());
  const auto text = Json(c.text_encoder_config_json);
  EXPECT_EQ(text["num_hidden_layers"].GetInt(), 2);  // 3 OpenCLIP blocks, the last unused
  EXPECT_EQ(text["hidden_size"].GetInt(), 32);
  EXPECT_EQ(text["intermediate_size"].GetInt(), 37);
  EXPECT_STREQ(text["hidden_act"].GetString(), "gelu");
  // The file's modelspec says v-prediction; an explicit hint wins over it.
  EXPECT_EQ(c.prediction_type, "v_prediction");
  EXPECT_STREQ(Json(c.scheduler_config_json)["prediction_type"].GetString(), "v_prediction");
  const CheckpointComponents eps =
      LoadCheckpoint(File("sd2.safetensors"), ComputeOptions{}, "epsilon");
  EXPECT_EQ(eps.prediction_type, "epsilon");
  EXPECT_STREQ(Json(eps.scheduler_config_json)["prediction_type"].GetString(), "epsilon");
}

TEST_F(CheckpointTest, PredictionTypeFollowsHintMarkerOrNormBiasSpread) {
  EXPECT_EQ(LoadCheckpoint(File("sd2_heuristic.safetensors"), ComputeOptions{}).prediction_type,
            "v_prediction");
  EXPECT_EQ(LoadCheckpoint(File("sd2_plain.safetensors"), ComputeOptions{}).prediction_type,
            "epsilon");
  EXPECT_EQ(LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{}, "auto").prediction_type,
            "epsilon");
  EXPECT_EQ(
      LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{}, "v_prediction").prediction_type,
      "v_prediction");
  const std::string error =
      ErrorOf([&] { LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{}, "sample"); });
  EXPECT_NE(error.find("'sample'"), std::string::npos) << error;
}

TEST_F(CheckpointTest, PackedQkvIsSplitIntoViewsOfThePackedTensor) {
  const CheckpointComponents c = LoadCheckpoint(File("sd2.safetensors"), ComputeOptions{});
  const Weights file = testing::ReadTensors(File("sd2.safetensors"));
  const at::Tensor& packed =
      file.Get("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight", {96, 32});
  const at::Tensor& packed_bias =
      file.Get("cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias", {96});
  const char* names[] = {"q_proj", "k_proj", "v_proj"};
  for (int p = 0; p < 3; ++p) {
    const std::string base = std::string("text_model.encoder.layers.1.self_attn.") + names[p];
    const at::Tensor& w = c.text_encoder.Get(base + ".weight", {32, 32});
    EXPECT_TENSOR_NEAR(w, packed.narrow(0, 32 * p, 32), 0.0);
    EXPECT_TENSOR_NEAR(c.text_encoder.Get(base + ".bias", {32}), packed_bias.narrow(0, 32 * p, 32),
                       0.0);
    // Zero-copy: the three weights sit back to back in one storage.
    const at::Tensor& q = c.text_encoder.Get("text_model.encoder.layers.1.self_attn.q_proj.weight");
    EXPECT_EQ(static_cast<const float*>(w.data_ptr()),
              static_cast<const float*>(q.data_ptr()) + 32 * 32 * p);
  }
}

TEST_F(CheckpointTest, VaeAttentionConvolutionsBecomeLinearViews) {
  const CheckpointComponents c = LoadCheckpoint(File("sd1.safetensors"), ComputeOptions{});
  const Weights file = testing::ReadTensors(File("sd1.safetensors"));
  const at::Tensor& conv =
      file.Get("first_stage_model.decoder.mid.attn_1.v.weight", {32, 32, 1, 1});
  const at::Tensor& linear = c.vae.Get("decoder.mid_block.attentions.0.to_v.weight", {32, 32});
  EXPECT_TENSOR_NEAR(linear, conv.select(3, 0).select(2, 0), 0.0);
  EXPECT_EQ(c.vae.Get("encoder.mid_block.attentions.0.to_out.0.weight").dim(), 2);
  EXPECT_EQ(c.vae.Get("encoder.mid_block.attentions.0.group_norm.weight").sizes(),
            at::IntArrayRef({32}));
}

TEST_F(CheckpointTest, ConvertsToTheComputeType) {
  ComputeOptions o;
  o.dtype = at::kBFloat16;
  const CheckpointComponents c = LoadCheckpoint(File("sd2.safetensors"), o);
  EXPECT_EQ(c.unet.Get("conv_in.weight").scalar_type(), at::kBFloat16);
  EXPECT_EQ(c.text_encoder.Get("text_model.encoder.layers.0.self_attn.k_proj.weight").scalar_type(),
            at::kBFloat16);
}

TEST_F(CheckpointTest, AnotherKindOfFileIsRejectedNamingWhatIsMissing) {
  const std::string error =
      ErrorOf([&] { LoadCheckpoint(File("not_a_checkpoint.safetensors"), ComputeOptions{}); });
  EXPECT_NE(error.find("not a single-file Stable Diffusion"), std::string::npos) << error;
  EXPECT_NE(error.find("model.diffusion_model."), std::string::npos) << error;
  EXPECT_NE(error.find("first_stage_model."), std::string::npos) << error;
  EXPECT_NE(error.find("cond_stage_model.model."), std::string::npos) << error;
  EXPECT_NE(error.find("not_a_checkpoint.safetensors"), std::string::npos) << error;
  EXPECT_THROW(LoadCheckpoint(File("not_a_checkpoint.safetensors"), ComputeOptions{}), WeightError);
  EXPECT_THROW(LoadCheckpoint(File("absent.safetensors"), ComputeOptions{}), WeightError);
}

TEST_F(CheckpointTest, AMissingRequiredTensorIsNamed) {
  const std::string error =
      ErrorOf([&] { LoadCheckpoint(File("sd1_broken.safetensors"), ComputeOptions{}); });
  EXPECT_NE(error.find("'first_stage_model.decoder.up.0.block.1.conv2.weight'"), std::string::npos)
      << error;
  EXPECT_NE(error.find("VAE"), std::string::npos) << error;
  EXPECT_THROW(LoadCheckpoint(File("sd1_broken.safetensors"), ComputeOptions{}), WeightError);
}

TEST_F(CheckpointTest, UnderivableHeadCountAsksForMetadata) {
  const std::string error =
      ErrorOf([&] { LoadCheckpoint(File("sd2_no_heads.safetensors"), ComputeOptions{}); });
  EXPECT_NE(error.find("attention_head_dim"), std::string::npos) << error;
  EXPECT_NE(error.find("megaserve.unet_config"), std::string::npos) << error;
  EXPECT_THROW(LoadCheckpoint(File("sd2_no_heads.safetensors"), ComputeOptions{}),
               std::invalid_argument);
}

}  // namespace
}  // namespace megaserve::diffusion
