#include "models/model_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <exception>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/toml_describe.h"

namespace megaserve::models {
namespace {

// One second: a worker that polls longer than that is a configuration mistake.
constexpr int kMaxWaitSpinUs = 1'000'000;

// Walks the parsed file, collecting every problem so that one load reports them all.
class Parser {
 public:
  explicit Parser(std::string path) : path_(std::move(path)) {}

  core::Result<ModelConfig> Parse(const toml::table& root) && {
    bool have_backend = false;
    for (const auto& [key, node] : root) {
      std::string_view name = key.str();
      if (name == "backend") {
        if (const auto* s = node.as_string(); s && !s->get().empty()) {
          config_.backend = s->get();
          have_backend = true;
        } else {
          Problem(node, "backend",
                  "must be a non-empty string, got " + std::string(core::DescribeTomlNode(node)));
          have_backend = true;  // reported already
        }
      } else if (name == "version") {
        Int(node, "version", 1, &config_.version);
      } else if (name == "instances") {
        Int(node, "instances", 1, &config_.instances);
      } else if (name == "batching") {
        Batching(node);
      } else if (name == "warmup") {
        Warmup(node);
      } else {
        Unknown(key, node, std::string(name));
      }
    }
    if (!have_backend) Add({}, fmt::format("backend: missing (in {})", path_));
    if (errors_.empty()) return std::move(config_);
    // Tables iterate in key order; report problems in file order instead.
    std::stable_sort(errors_.begin(), errors_.end(), [](const auto& a, const auto& b) {
      return std::pair(a.first.line, a.first.column) < std::pair(b.first.line, b.first.column);
    });
    std::vector<std::string> messages;
    for (auto& [at, message] : errors_) messages.push_back(std::move(message));
    return core::InvalidArgument(fmt::format("{}", fmt::join(messages, "\n")));
  }

 private:
  void Add(const toml::source_position& at, std::string message) {
    errors_.emplace_back(at, std::move(message));
  }

  void Batching(const toml::node& node) {
    const toml::table* table = node.as_table();
    if (!table)
      return Problem(node, "batching",
                     "expected a table, got " + std::string(core::DescribeTomlNode(node)));
    BatchingConfig& b = config_.batching;
    for (const auto& [key, value] : *table) {
      std::string name = "batching." + std::string(key.str());
      if (key.str() == "max_batch_size") {
        Int(value, name, 1, &b.max_batch_size);
      } else if (key.str() == "max_queue_size") {
        Int(value, name, 1, &b.max_queue_size);
      } else if (key.str() == "priority_levels") {
        Int(value, name, 1, &b.priority_levels);
      } else if (key.str() == "wait_spin_us") {
        int us = 0;
        if (!Int(value, name, 0, &us)) continue;
        if (us > kMaxWaitSpinUs) {
          Problem(value, name, fmt::format("must be at most {}, got {}", kMaxWaitSpinUs, us));
        } else {
          b.wait_spin_us = us;
        }
      } else if (key.str() == "max_queue_delay") {
        const auto* s = value.as_string();
        if (!s) {
          Problem(value, name,
                  "expected a duration string like \"5ms\" or \"250us\", got " +
                      std::string(core::DescribeTomlNode(value)));
          continue;
        }
        auto d = core::ParseFineDuration(s->get());
        if (!d.ok()) {
          Problem(value, name, d.status().message());
        } else {
          b.max_queue_delay = *d;
        }
      } else if (key.str() == "preferred_batch_sizes") {
        const toml::array* sizes = value.as_array();
        if (!sizes) {
          Problem(
              value, name,
              "expected an array of integers, got " + std::string(core::DescribeTomlNode(value)));
          continue;
        }
        b.preferred_batch_sizes.clear();
        for (const toml::node& size : *sizes) {
          int n = 0;
          if (Int(size, name, 1, &n)) b.preferred_batch_sizes.push_back(n);
        }
      } else {
        Unknown(key, value, name);
      }
    }
  }

  void Warmup(const toml::node& node) {
    const toml::table* table = node.as_table();
    if (!table)
      return Problem(node, "warmup",
                     "expected a table, got " + std::string(core::DescribeTomlNode(node)));
    for (const auto& [key, value] : *table) {
      if (key.str() != "inputs") {
        Unknown(key, value, "warmup." + std::string(key.str()));
        continue;
      }
      if (const toml::array* inputs = value.as_array()) {
        for (const toml::node& input : *inputs) config_.warmup_inputs.push_back(Json(input));
      } else if (value.is_table()) {
        config_.warmup_inputs.push_back(Json(value));
      } else {
        Problem(value, "warmup.inputs",
                "expected a table or an array, got " + std::string(core::DescribeTomlNode(value)));
      }
    }
  }

  // Reads an integer >= `min` that fits an int into *out; reports and returns false otherwise.
  bool Int(const toml::node& node, std::string_view name, int min, int* out) {
    const auto* v = node.as_integer();
    if (!v) {
      Problem(node, name, "expected an integer, got " + std::string(core::DescribeTomlNode(node)));
      return false;
    }
    std::int64_t n = v->get();
    if (n < min || n > std::numeric_limits<int>::max()) {
      Problem(node, name, fmt::format("must be an integer >= {}, got {}", min, n));
      return false;
    }
    *out = static_cast<int>(n);
    return true;
  }

  void Unknown(const toml::key& key, const toml::node& node, const std::string& name) {
    // Point at the key itself; fall back to the value for keys toml++ gives no position.
    toml::source_position at = key.source().begin ? key.source().begin : node.source().begin;
    Add(at, fmt::format("unknown key \"{}\" (from {})", name, Position(at)));
  }

  void Problem(const toml::node& node, std::string_view name, const std::string& message) {
    const toml::source_position& at = node.source().begin;
    Add(at, fmt::format("{}: {} (from {})", name, message, Position(at)));
  }

  std::string Position(const toml::source_position& at) const {
    return fmt::format("{}:{}:{}", path_, at.line, at.column);
  }

  // A warm-up input as compact JSON text.
  static std::string Json(const toml::node& node) {
    std::ostringstream out;
    out << toml::json_formatter{node, toml::format_flags::quote_dates_and_times};
    return out.str();
  }

  const std::string path_;
  ModelConfig config_;
  std::vector<std::pair<toml::source_position, std::string>> errors_;
};

}  // namespace

core::Result<ModelConfig> ParseModelConfig(std::string_view text, const std::string& path) {
  try {
    toml::table root = toml::parse(text, path);
    return Parser(path).Parse(root);
  } catch (const toml::parse_error& e) {
    const toml::source_position& at = e.source().begin;
    return core::InvalidArgument(
        fmt::format("{}:{}:{}: {}", path, at.line, at.column, e.description()));
  } catch (const std::exception& e) {
    return core::Internal(fmt::format("{}: {}", path, e.what()));
  }
}

core::Result<ModelConfig> LoadModelConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return core::NotFound(fmt::format("{}: no such file", path));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return core::Internal(fmt::format("{}: read error", path));
  return ParseModelConfig(text.str(), path);
}

}  // namespace megaserve::models
