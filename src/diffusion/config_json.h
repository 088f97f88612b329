// Reading the config.json files of a diffusers model folder: the file's text and its top-level
// JSON object, with errors that name the file. Each component parses its own fields.
#pragma once

#include <rapidjson/document.h>

#include <filesystem>
#include <string>
#include <string_view>

namespace megaserve::diffusion {

// The whole text of `path`. Throws std::invalid_argument("cannot read <path>") when it cannot
// be opened.
std::string ReadConfigFile(const std::filesystem::path& path);

// `json` parsed; throws std::invalid_argument "<source>: invalid JSON at offset N: <why>" for a
// syntax error and "<source>: expected a JSON object" for any other top-level value.
rapidjson::Document ParseConfigObject(std::string_view json, std::string_view source);

}  // namespace megaserve::diffusion
