#include "diffusion/torch/clip_text_encoder.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "diffusion/torch/test_support.h"

namespace megaserve::diffusion {
namespace {

namespace fs = std::filesystem;

// tests/diffusion/ref_clip.py writes two tiny text encoders ("quick": SD1-like quick GELU, 2
// layers, 77 tokens; "gelu": SD2-like exact GELU, 3 layers, 16 tokens) and their expected
// hidden states, computed in float64 by an independent implementation. It runs once per suite.
class ClipTextEncoderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new fs::path(testing::MakeTempDir("clip"));
    ASSERT_EQ(testing::RunPython("ref_clip.py", dir_->string()), 0);
    reference_ = new Weights(testing::ReadTensors(*dir_ / "reference.safetensors"));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete reference_;
    delete dir_;
  }

  static fs::path Folder(const std::string& variant) { return *dir_ / variant; }
  static const at::Tensor& Ref(const std::string& name) { return reference_->Get(name); }

  // Asserts that `message` mentions every one of `parts`.
  static void ExpectMentions(const std::string& message, const std::vector<std::string>& parts) {
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
  }

  static void WriteFile(const fs::path& path, const std::string& text) {
    std::ofstream(path) << text;
  }

  void ExpectMatchesReference(const std::string& variant) {
    auto encoder = ClipTextEncoder::Load(Folder(variant), ComputeOptions{});
    const at::Tensor& ids = Ref(variant + ".input_ids");
    ASSERT_EQ(ids.size(0), 2);
    for (int skip : {0, 1}) {
      SCOPED_TRACE(variant + " clip_skip " + std::to_string(skip));
      const at::Tensor out = encoder->Encode(ids, skip);
      EXPECT_EQ(out.scalar_type(), at::kFloat);
      EXPECT_TENSOR_NEAR(out, Ref(variant + ".skip" + std::to_string(skip)), 1e-4);
    }
  }

  at::InferenceMode inference_;
  static inline fs::path* dir_ = nullptr;
  static inline Weights* reference_ = nullptr;
};

TEST_F(ClipTextEncoderTest, MatchesReferenceWithQuickGelu) { ExpectMatchesReference("quick"); }

TEST_F(ClipTextEncoderTest, MatchesReferenceWithGelu) { ExpectMatchesReference("gelu"); }

TEST_F(ClipTextEncoderTest, ReadsTheConfigAndIgnoresExtraFields) {
  auto encoder = ClipTextEncoder::Load(Folder("gelu"), ComputeOptions{});
  const ClipTextConfig& c = encoder->config();
  EXPECT_EQ(c.vocab_size, 1000);
  EXPECT_EQ(c.hidden_size, 32);
  EXPECT_EQ(c.intermediate_size, 37);
  EXPECT_EQ(c.num_hidden_layers, 3);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.max_position_embeddings, 77);
  EXPECT_EQ(c.hidden_act, ClipTextConfig::Activation::kGelu);
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
}

TEST_F(ClipTextEncoderTest, SkippedLayersChangeTheOutput) {
  // Guards against a reference where clip_skip had no effect, which would make the checks above
  // unable to tell the two conventions apart.
  EXPECT_GT(testing::MaxAbsDiff(Ref("quick.skip0"), Ref("quick.skip1")), 0.1);
}

TEST_F(ClipTextEncoderTest, EarlierTokensDoNotSeeLaterOnes) {
  auto encoder = ClipTextEncoder::Load(Folder("quick"), ComputeOptions{});
  const at::Tensor ids = Ref("quick.input_ids");
  at::Tensor changed = ids.clone();
  changed.narrow(1, 40, 37).fill_(7);
  const at::Tensor a = encoder->Encode(ids), b = encoder->Encode(changed);
  EXPECT_TENSOR_NEAR(b.narrow(1, 0, 40), a.narrow(1, 0, 40), 1e-6);
  EXPECT_GT(testing::MaxAbsDiff(b.narrow(1, 40, 37), a.narrow(1, 40, 37)), 0.1);
}

TEST_F(ClipTextEncoderTest, SequencesOfABatchAreIndependent) {
  auto encoder = ClipTextEncoder::Load(Folder("gelu"), ComputeOptions{});
  const at::Tensor ids = Ref("gelu.input_ids");
  const at::Tensor both = encoder->Encode(ids);
  EXPECT_TENSOR_NEAR(encoder->Encode(ids.narrow(0, 1, 1)), both.narrow(0, 1, 1), 1e-5);
}

TEST_F(ClipTextEncoderTest, LoadsTheFp16FileNameAndCountsItsBytes) {
  const fs::path folder = testing::MakeTempDir("clip-fp16");
  fs::copy_file(Folder("quick") / "config.json", folder / "config.json");
  fs::copy_file(Folder("quick") / "model.safetensors", folder / "model.fp16.safetensors");
  auto encoder = ClipTextEncoder::Load(folder, ComputeOptions{});
  EXPECT_TENSOR_NEAR(encoder->Encode(Ref("quick.input_ids"), 1), Ref("quick.skip1"), 1e-4);

  // Every float weight of the file is held once (q/k/v stacked); the int64 position_ids buffer
  // is not.
  const Weights file = testing::ReadTensors(folder / "model.fp16.safetensors");
  const std::size_t position_ids = file.Get("text_model.embeddings.position_ids").nbytes();
  EXPECT_EQ(encoder->bytes(), file.bytes() - position_ids);
  fs::remove_all(folder);
}

TEST_F(ClipTextEncoderTest, FolderWithoutWeightsIsNamed) {
  const fs::path folder = testing::MakeTempDir("clip-empty");
  fs::copy_file(Folder("quick") / "config.json", folder / "config.json");
  try {
    ClipTextEncoder::Load(folder, ComputeOptions{});
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    ExpectMentions(e.what(), {folder.string(), "model.safetensors", "model.fp16.safetensors"});
  }
  fs::remove_all(folder);
}

TEST_F(ClipTextEncoderTest, MissingWeightIsNamed) {
  const Weights full = testing::ReadTensors(Folder("quick") / "model.safetensors");
  const std::string dropped = "text_model.encoder.layers.1.mlp.fc2.bias";
  Weights partial;
  partial.set_source("partial.safetensors");
  for (const std::string& name : full.Names()) {
    if (name != dropped) partial.Add(name, full.Get(name));
  }
  ClipTextConfig config = ClipTextConfig::FromFile(Folder("quick") / "config.json");
  try {
    ClipTextEncoder encoder(config, partial, ComputeOptions{});
    ADD_FAILURE() << "no error";
  } catch (const WeightError& e) {
    ExpectMentions(e.what(), {"'" + dropped + "'", "partial.safetensors"});
  }
  // A config promising more layers than the file holds fails the same way.
  config.num_hidden_layers = 3;
  EXPECT_THROW(ClipTextEncoder(config, full, ComputeOptions{}), WeightError);
}

TEST_F(ClipTextEncoderTest, MisshapenWeightIsNamed) {
  Weights w = testing::ReadTensors(Folder("quick") / "model.safetensors");
  const std::string name = "text_model.encoder.layers.0.mlp.fc1.weight";
  w.Add(name, at::zeros({36, 32}));
  try {
    ClipTextEncoder encoder(ClipTextConfig::FromFile(Folder("quick") / "config.json"), w,
                            ComputeOptions{});
    ADD_FAILURE() << "no error";
  } catch (const WeightError& e) {
    ExpectMentions(e.what(), {"'" + name + "'", "[36, 32]", "[37, 32]"});
  }
}

// A config.json text: the tiny config with `changes` applied (field -> JSON value text, or ""
// to drop the field).
std::string ConfigJson(const std::map<std::string, std::string>& changes) {
  std::map<std::string, std::string> fields = {{"vocab_size", "1000"},
                                               {"hidden_size", "32"},
                                               {"intermediate_size", "37"},
                                               {"num_hidden_layers", "2"},
                                               {"num_attention_heads", "4"},
                                               {"max_position_embeddings", "77"},
                                               {"model_type", "\"clip_text_model\""}};
  for (const auto& [field, value] : changes) fields[field] = value;
  std::string json = "{";
  for (const auto& [field, value] : fields) {
    if (value.empty()) continue;
    if (json.size() > 1) json += ", ";
    json += "\"" + field + "\": " + value;
  }
  return json + "}";
}

TEST_F(ClipTextEncoderTest, BadConfigsAreClearErrors) {
  const ClipTextConfig defaults = ClipTextConfig::FromJson(ConfigJson({}));
  EXPECT_EQ(defaults.hidden_size, 32);
  // transformers' defaults for the optional fields
  EXPECT_EQ(defaults.hidden_act, ClipTextConfig::Activation::kQuickGelu);
  EXPECT_DOUBLE_EQ(defaults.layer_norm_eps, 1e-5);
  EXPECT_EQ(
      ClipTextConfig::FromJson(ConfigJson({{"hidden_act", "\"gelu_pytorch_tanh\""}})).hidden_act,
      ClipTextConfig::Activation::kGeluTanh);

  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {ConfigJson({{"hidden_size", ""}}), {"c.json", "'hidden_size'", "missing"}},
      {ConfigJson({{"hidden_size", "30"}}), {"c.json", "30", "divisible"}},
      {ConfigJson({{"hidden_act", "\"relu\""}}), {"c.json", "'relu'"}},
      {ConfigJson({{"hidden_act", "3"}}), {"c.json", "'hidden_act'"}},
      {ConfigJson({{"num_hidden_layers", "\"2\""}}), {"c.json", "'num_hidden_layers'"}},
      {ConfigJson({{"num_attention_heads", "0"}}), {"c.json", "'num_attention_heads'"}},
      {ConfigJson({{"vocab_size", "1e3"}}), {"c.json", "'vocab_size'"}},
      {ConfigJson({{"layer_norm_eps", "-1"}}), {"c.json", "'layer_norm_eps'"}},
      {"{\"vocab_size\": 1000", {"c.json", "invalid JSON"}},
      {"[1, 2]", {"c.json", "object"}},
  };
  for (const auto& [json, parts] : cases) {
    SCOPED_TRACE(json);
    try {
      ClipTextConfig::FromJson(json, "c.json");
      ADD_FAILURE() << "no error";
    } catch (const std::invalid_argument& e) {
      ExpectMentions(e.what(), parts);
    }
  }
  // Read from a folder, the error names the config file.
  const fs::path folder = testing::MakeTempDir("clip-badcfg");
  WriteFile(folder / "config.json", R"({"vocab_size": 1000})");
  fs::copy_file(Folder("quick") / "model.safetensors", folder / "model.safetensors");
  try {
    ClipTextEncoder::Load(folder, ComputeOptions{});
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    ExpectMentions(e.what(), {(folder / "config.json").string(), "'hidden_size'"});
  }
  EXPECT_THROW(ClipTextConfig::FromFile(folder / "absent.json"), std::invalid_argument);
  fs::remove_all(folder);
}

TEST_F(ClipTextEncoderTest, RejectsBadInputs) {
  auto encoder = ClipTextEncoder::Load(Folder("quick"), ComputeOptions{});
  const at::Tensor ids = Ref("quick.input_ids");
  EXPECT_THROW(encoder->Encode(ids, 2), std::invalid_argument);  // only 2 layers
  EXPECT_THROW(encoder->Encode(ids, -1), std::invalid_argument);
  EXPECT_THROW(encoder->Encode(ids[0]), std::invalid_argument);  // rank 1
  EXPECT_THROW(encoder->Encode(ids.to(at::kFloat)), std::invalid_argument);
  EXPECT_THROW(encoder->Encode(at::cat({ids, ids.narrow(1, 0, 1)}, 1)),
               std::invalid_argument);  // 78 tokens
  at::Tensor bad = ids.clone();
  bad[1][5] = 1000;
  EXPECT_THROW(encoder->Encode(bad), std::invalid_argument);
  bad[1][5] = -1;
  EXPECT_THROW(encoder->Encode(bad), std::invalid_argument);
  // int32 ids are accepted as well as int64.
  EXPECT_TENSOR_NEAR(encoder->Encode(ids.to(at::kInt)), Ref("quick.skip0"), 1e-4);
}

TEST_F(ClipTextEncoderTest, Bfloat16RunsNearFp32) {
  ComputeOptions options;
  options.dtype = at::kBFloat16;
  for (const std::string variant : {"quick", "gelu"}) {
    auto encoder = ClipTextEncoder::Load(Folder(variant), options);
    for (int skip : {0, 1}) {
      SCOPED_TRACE(variant + " clip_skip " + std::to_string(skip));
      const at::Tensor out = encoder->Encode(Ref(variant + ".input_ids"), skip);
      EXPECT_EQ(out.scalar_type(), at::kBFloat16);
      // bf16 keeps 8 significant bits (relative step 2^-8 = 0.004) and the weights themselves
      // are rounded: on these O(1) LayerNorm outputs the largest error seen is 0.065.
      EXPECT_TENSOR_NEAR(out, Ref(variant + ".skip" + std::to_string(skip)), 0.15);
    }
  }
}

}  // namespace
}  // namespace megaserve::diffusion
