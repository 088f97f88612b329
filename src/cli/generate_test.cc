#include "cli/generate.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "media/png.h"

namespace megaserve::cli {
namespace {

TEST(GenerateFlagsTest, ParsesSizes) {
  int w = 0, h = 0;
  EXPECT_TRUE(ParseSize("512x768", w, h));
  EXPECT_EQ(w, 512);
  EXPECT_EQ(h, 768);
  EXPECT_TRUE(ParseSize("64X32", w, h));
  EXPECT_EQ(h, 32);
  for (const char* bad : {"512", "512x", "x512", "512x512x3", "-8x8", "0x8", "axb", "8x8 "}) {
    EXPECT_FALSE(ParseSize(bad, w, h)) << bad;
  }
}

TEST(GenerateFlagsTest, ParsesByteSizes) {
  int64_t b = 0;
  EXPECT_TRUE(ParseBytes("4096", b));
  EXPECT_EQ(b, 4096);
  EXPECT_TRUE(ParseBytes("6GiB", b));
  EXPECT_EQ(b, 6LL << 30);
  EXPECT_TRUE(ParseBytes("1.5G", b));
  EXPECT_EQ(b, 3LL << 29);
  EXPECT_TRUE(ParseBytes("512MiB", b));
  EXPECT_EQ(b, 512LL << 20);
  for (const char* bad : {"", "GiB", "12XB", "-1G", "nan"}) EXPECT_FALSE(ParseBytes(bad, b)) << bad;
}

// Runs the binary with `args` (and `env` assignments before it); returns its output.
std::string RunBinary(const std::string& args, int& status, const std::string& env = "") {
  const char* bin = std::getenv("MEGASERVE_BINARY");
  std::string cmd = env + " " + std::string(bin ? bin : "megaserve") + " " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 512> buf{};
  while (std::fgets(buf.data(), buf.size(), p) != nullptr) out += buf.data();
  status = WEXITSTATUS(pclose(p));
  return out;
}

TEST(GenerateCommandTest, BadArgumentsAreClearErrors) {
  int status = 0;
  auto out = RunBinary("generate --model /nonexistent --prompt cat --size 512", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--size '512' is not WIDTHxHEIGHT"), std::string::npos) << out;
  out = RunBinary("generate --model /nonexistent --prompt cat --seed abc", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--seed 'abc'"), std::string::npos) << out;
  out = RunBinary("generate --prompt cat", status);
  EXPECT_NE(status, 0);
  EXPECT_NE(out.find("--model is required"), std::string::npos) << out;
  out = RunBinary("generate --model /nonexistent/model --prompt cat --seed 1", status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("/nonexistent/model"), std::string::npos) << out;
}

TEST(GenerateCommandTest, AMissingPluginIsAClearError) {
  int status = 0;
  const auto out = RunBinary("generate --model /tmp --prompt cat --seed 1", status,
                             "MEGASERVE_TORCH_PLUGIN=/nonexistent/plugin.so");
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("the libtorch plugin (libmegaserve_torch.so) was not found; looked at: "
                     "/nonexistent/plugin.so"),
            std::string::npos)
      << out;
}

TEST(GenerateCommandTest, ABrokenPluginIsAClearError) {
  int status = 0;
  // A shared library, but not ours.
  auto out = RunBinary("generate --model /tmp --prompt cat --seed 1", status,
                       "MEGASERVE_TORCH_PLUGIN=/lib/x86_64-linux-gnu/libz.so.1");
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("is not a megaserve libtorch plugin"), std::string::npos) << out;
  // Not a shared library at all.
  const auto junk = std::filesystem::temp_directory_path() / "megaserve-not-a-plugin.so";
  { std::ofstream(junk) << "not an ELF file"; }
  out = RunBinary("generate --model /tmp --prompt cat --seed 1", status,
                  "MEGASERVE_TORCH_PLUGIN=" + junk.string());
  std::filesystem::remove(junk);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("cannot load the libtorch plugin " + junk.string()), std::string::npos) << out;
}

// A tiny random-weight model (tests/diffusion/make_tiny_pipeline.py) through the real binary
// and the real plugin.
TEST(GenerateCommandTest, WritesAPngCarryingItsParameters) {
  const char* src = std::getenv("MEGASERVE_SOURCE_DIR");
  ASSERT_NE(src, nullptr);
  std::string tmpl =
      (std::filesystem::temp_directory_path() / "megaserve-generate-XXXXXX").string();
  ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
  const std::filesystem::path dir(tmpl);
  ASSERT_EQ(std::system(("/usr/bin/python3 " + std::string(src) +
                         "/tests/diffusion/make_tiny_pipeline.py " + (dir / "tiny").string())
                            .c_str()),
            0);
  int status = 0;
  const std::string common = "generate --model " + (dir / "tiny").string() +
                             " --prompt 'a red barn' --negative-prompt fog --steps 3 --seed 11 "
                             "--size 32x24 --scheduler dpmpp_2m_karras --guidance 6 ";
  auto out = RunBinary(common + "--out " + (dir / "a.png").string(), status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_NE(
      out.find("wrote " + (dir / "a.png").string() + " (32x24, seed 11, 3 steps DPM++ 2M Karras"),
      std::string::npos)
      << out;
  EXPECT_NE(out.find("denoise ["), std::string::npos) << "no progress shown: " << out;
  auto read = [](const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return media::DecodePng(ss.str());
  };
  auto a = read(dir / "a.png");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->width, 32);
  EXPECT_EQ(a->height, 24);
  ASSERT_EQ(a->texts.size(), 1u);
  EXPECT_EQ(a->texts[0].key, "parameters");
  EXPECT_EQ(a->texts[0].text,
            "a red barn\nNegative prompt: fog\nSteps: 3, Sampler: DPM++ 2M Karras, CFG scale: 6, "
            "Seed: 11, Size: 32x24, Model: tiny");

  out = RunBinary(common + "-q --out " + (dir / "b.png").string(), status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(out.find("denoise ["), std::string::npos) << "--quiet still drew progress: " << out;
  auto b = read(dir / "b.png");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->rgb, b->rgb) << "the same seed must give the same image";

  out = RunBinary("generate --model " + (dir / "tiny").string() +
                      " --prompt x --scheduler heun --seed 1 "
                      "--size 32x24 --out " +
                      (dir / "c.png").string(),
                  status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("heun"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "c.png"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace megaserve::cli
