// The configuration's arrays of tables, [[routes]] and [[upstreams]]: each table is one route
// policy or one upstream group, so they are parsed here rather than through the flat key table
// of config.cc. They are set in the file only (not by environment variables or flags).
#pragma once

#include <toml++/toml.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/config.h"

namespace megaserve::core {

// Parses the top-level `name` ("routes" or "upstreams") of the file `path` into `config`,
// appending to config.routes / config.upstreams. Returns the problems found, each with where
// it is; tables with problems are skipped.
std::vector<std::pair<toml::source_position, std::string>> ParseConfigTables(
    std::string_view name, const toml::node& node, const std::string& path, Config& config);

}  // namespace megaserve::core
