// Names the kind of a TOML node for error messages ("a string", "an array", ...).
#pragma once

#include <toml++/toml.h>

#include <string_view>

namespace megaserve::core {

// "a string", "an integer", "a float", "a boolean", "a date", "a time", "a date-time",
// "an array", "a table" (or "nothing").
std::string_view DescribeTomlNode(const toml::node& node);

}  // namespace megaserve::core
