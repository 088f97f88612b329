// PNG encoding and decoding (libpng) of 8-bit RGB images, with tEXt chunks for metadata such
// as the generation parameters AUTOMATIC1111-compatible tools read from the "parameters" key.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace megaserve::media {

struct PngText {
  std::string key;  // 1-79 Latin-1 characters, as the PNG specification requires
  std::string text;
};

// Encodes `rgb` (width * height * 3 bytes, rows top to bottom) as a PNG with the given text
// chunks. kInvalidArgument for a size mismatch or an invalid key.
core::Result<std::string> EncodePng(int width, int height, const std::vector<uint8_t>& rgb,
                                    const std::vector<PngText>& texts = {});

// Writes EncodePng's result to `path` (replacing it atomically through a temporary file).
core::Status WritePng(const std::string& path, int width, int height,
                      const std::vector<uint8_t>& rgb, const std::vector<PngText>& texts = {});

// A decoded PNG: RGB pixels (palette, grey and alpha converted) and its text chunks.
struct DecodedPng {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;
  std::vector<PngText> texts;
};

// Decodes a PNG held in memory. kInvalidArgument for data that is not a valid PNG.
core::Result<DecodedPng> DecodePng(const std::string& data);

}  // namespace megaserve::media
