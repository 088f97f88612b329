#include "diffusion/config_json.h"

#include <fmt/format.h>
#include <rapidjson/error/en.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace megaserve::diffusion {

std::string ReadConfigFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(fmt::format("cannot read {}", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

rapidjson::Document ParseConfigObject(std::string_view json, std::string_view source) {
  rapidjson::Document doc;
  doc.Parse(json.data(), json.size());
  if (doc.HasParseError()) {
    throw std::invalid_argument(fmt::format("{}: invalid JSON at offset {}: {}", source,
                                            doc.GetErrorOffset(),
                                            rapidjson::GetParseError_En(doc.GetParseError())));
  }
  if (!doc.IsObject())
    throw std::invalid_argument(fmt::format("{}: expected a JSON object", source));
  return doc;
}

}  // namespace megaserve::diffusion
