#include "media/png.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace megaserve::media {
namespace {

std::vector<uint8_t> Gradient(int w, int h) {
  std::vector<uint8_t> rgb(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      uint8_t* p = &rgb[(static_cast<std::size_t>(y) * w + x) * 3];
      p[0] = static_cast<uint8_t>(x * 7);
      p[1] = static_cast<uint8_t>(y * 11);
      p[2] = static_cast<uint8_t>(x ^ y);
    }
  }
  return rgb;
}

TEST(PngTest, RoundTripsPixelsAndTextChunks) {
  const auto rgb = Gradient(37, 21);
  const std::string params = "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 7";
  auto png = EncodePng(37, 21, rgb, {{"parameters", params}});
  ASSERT_TRUE(png.ok()) << png.status().ToString();
  EXPECT_EQ(png->substr(1, 3), "PNG");
  auto decoded = DecodePng(*png);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->width, 37);
  EXPECT_EQ(decoded->height, 21);
  EXPECT_EQ(decoded->rgb, rgb);
  ASSERT_EQ(decoded->texts.size(), 1u);
  EXPECT_EQ(decoded->texts[0].key, "parameters");
  EXPECT_EQ(decoded->texts[0].text, params);
}

TEST(PngTest, RefusesWrongSizesKeysAndData) {
  EXPECT_EQ(EncodePng(4, 4, std::vector<uint8_t>(47)).status().code(),
            core::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(0, 4, {}).status().code(), core::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodePng(1, 1, {1, 2, 3}, {{"", "x"}}).status().code(),
            core::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodePng("not a png at all").status().code(), core::StatusCode::kInvalidArgument);
  auto png = EncodePng(8, 8, Gradient(8, 8));
  ASSERT_TRUE(png.ok());
  EXPECT_EQ(DecodePng(png->substr(0, png->size() / 2)).status().code(),
            core::StatusCode::kInvalidArgument);
}

TEST(PngTest, WritePngReplacesTheFile) {
  const auto path = std::filesystem::temp_directory_path() / "megaserve-png-test.png";
  ASSERT_TRUE(WritePng(path.string(), 3, 2, Gradient(3, 2)).ok());
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  auto decoded = DecodePng(ss.str());
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->rgb, Gradient(3, 2));
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
  std::filesystem::remove(path);
  EXPECT_FALSE(WritePng("/nonexistent-dir/x.png", 3, 2, Gradient(3, 2)).ok());
}

}  // namespace
}  // namespace megaserve::media
