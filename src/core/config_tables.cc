#include "core/config_tables.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>

#include "core/toml_describe.h"

namespace megaserve::core {
namespace {

using Problems = std::vector<std::pair<toml::source_position, std::string>>;

// Reads the fields of one table; each setter returns the problem with its value, or "".
class TableReader {
 public:
  TableReader(const toml::table& table, std::string context, const std::string& path,
              Problems& problems)
      : table_(table), context_(std::move(context)), path_(path), problems_(problems) {}

  void String(std::string_view key, std::string& out) {
    With(key, [&](const toml::node& n) -> std::string {
      if (auto v = n.value<std::string>()) {
        out = *v;
        return "";
      }
      return "expected a string, got " + std::string(DescribeTomlNode(n));
    });
  }
  void Strings(std::string_view key, std::vector<std::string>& out) {
    With(key, [&](const toml::node& n) -> std::string {
      const toml::array* a = n.as_array();
      if (!a) return "expected an array of strings, got " + std::string(DescribeTomlNode(n));
      out.clear();
      for (const toml::node& e : *a) {
        auto v = e.value<std::string>();
        if (!v)
          return "expected an array of strings, got an element that is " +
                 std::string(DescribeTomlNode(e));
        out.push_back(*v);
      }
      return "";
    });
  }
  void Bool(std::string_view key, bool& out) {
    With(key, [&](const toml::node& n) -> std::string {
      if (auto v = n.value<bool>()) {
        out = *v;
        return "";
      }
      return "expected a boolean, got " + std::string(DescribeTomlNode(n));
    });
  }
  void Int(std::string_view key, int& out, int min, int max) {
    With(key, [&](const toml::node& n) -> std::string {
      auto v = n.value<std::int64_t>();
      if (!v || !n.is_integer())
        return "expected an integer, got " + std::string(DescribeTomlNode(n));
      if (*v < min || *v > max) return fmt::format("must be between {} and {}", min, max);
      out = static_cast<int>(*v);
      return "";
    });
  }
  void Number(std::string_view key, double& out, double min, double max) {
    With(key, [&](const toml::node& n) -> std::string {
      auto v = n.value<double>();
      if (!v) return "expected a number, got " + std::string(DescribeTomlNode(n));
      if (*v < min || *v > max) return fmt::format("must be between {} and {}", min, max);
      out = *v;
      return "";
    });
  }
  void Time(std::string_view key, Duration& out, bool positive) {
    With(key, [&](const toml::node& n) -> std::string {
      Result<Duration> d = InvalidArgument("");
      if (n.is_integer()) {
        d = Duration(*n.value<std::int64_t>() * 1000);
      } else if (auto text = n.value<std::string>()) {
        d = ParseDuration(*text);
      } else {
        return "expected a duration (a string like \"10s\"), got " +
               std::string(DescribeTomlNode(n));
      }
      if (!d.ok()) return d.status().message();
      if (d->count() < 0 || (positive && d->count() == 0)) return "must be positive";
      out = *d;
      return "";
    });
  }
  void Rate(std::string_view key, std::int64_t& limit, Duration& period) {
    With(key, [&](const toml::node& n) -> std::string {
      auto text = n.value<std::string>();
      if (!text) return "expected a rate like \"600/min\", got " + std::string(DescribeTomlNode(n));
      if (text->empty()) {
        limit = 0;
        return "";
      }
      auto rate = ParseRate(*text);
      if (!rate.ok()) return rate.status().message();
      std::tie(limit, period) = *rate;
      return "";
    });
  }
  // Reports keys no setter asked for.
  void Finish(const std::vector<std::string_view>& known) {
    for (const auto& [k, n] : table_) {
      if (std::find(known.begin(), known.end(), k.str()) == known.end()) {
        Report(n, fmt::format("unknown key \"{}\"; known: {}", k.str(), fmt::join(known, ", ")));
      }
    }
  }
  void Report(const toml::node& n, const std::string& message) {
    toml::source_position at = n.source().begin;
    problems_.emplace_back(
        at, fmt::format("{}: {} (from {}:{}:{})", context_, message, path_, at.line, at.column));
  }
  bool ok() const { return ok_; }

 private:
  void With(std::string_view key, const std::function<std::string(const toml::node&)>& set) {
    const toml::node* n = table_.get(key);
    if (!n) return;
    std::string problem = set(*n);
    if (!problem.empty()) {
      ok_ = false;
      Report(*n, fmt::format("{}: {}", key, problem));
    }
  }

  const toml::table& table_;
  std::string context_;
  const std::string& path_;
  Problems& problems_;
  bool ok_ = true;
};

constexpr std::string_view kFilters[] = {"auth", "rate_limit", "cache", "proxy"};
constexpr std::string_view kScopes[] = {"images", "videos", "forecasts", "jobs", "admin"};

void ReadRoute(const toml::table& t, std::size_t index, const std::string& path, Config& config,
               Problems& problems) {
  TableReader r(t, fmt::format("routes[{}]", index), path, problems);
  RouteConfig route;
  route.pattern.clear();
  r.String("pattern", route.pattern);
  r.Strings("filters", route.filters);
  r.String("scope", route.scope);
  r.Rate("rate_limit", route.rate_limit, route.rate_period);
  r.Time("cache_ttl", route.cache_ttl, false);
  r.Time("stale_while_revalidate", route.stale_while_revalidate, false);
  r.Time("stale_if_error", route.stale_if_error, false);
  r.Bool("cache_post", route.cache_post);
  r.Strings("vary", route.vary);
  r.String("upstream", route.upstream);
  r.Time("timeout", route.timeout, true);
  r.Finish({"pattern", "filters", "scope", "rate_limit", "cache_ttl", "stale_while_revalidate",
            "stale_if_error", "cache_post", "vary", "upstream", "timeout"});
  if (route.pattern.empty() || (route.pattern != "*" && route.pattern[0] != '/')) {
    r.Report(t, "pattern: needs a route pattern starting with '/', or \"*\"");
    return;
  }
  if (route.filters.size() > 8) {
    r.Report(t, "filters: at most 8 per route");
    return;
  }
  for (const std::string& f : route.filters) {
    if (std::find(std::begin(kFilters), std::end(kFilters), f) == std::end(kFilters)) {
      r.Report(t, fmt::format("filters: unknown filter \"{}\"; known: {}", f,
                              fmt::join(kFilters, ", ")));
      return;
    }
  }
  if (!route.scope.empty() &&
      std::find(std::begin(kScopes), std::end(kScopes), route.scope) == std::end(kScopes)) {
    r.Report(t, fmt::format("scope: unknown scope \"{}\"; known: {}", route.scope,
                            fmt::join(kScopes, ", ")));
    return;
  }
  for (std::string& h : route.vary) {
    for (char& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (!r.ok()) return;
  route.origin = fmt::format("{}:{}", path, t.source().begin.line);
  config.routes.push_back(std::move(route));
}

void ReadUpstream(const toml::table& t, std::size_t index, const std::string& path, Config& config,
                  Problems& problems) {
  TableReader r(t, fmt::format("upstreams[{}]", index), path, problems);
  UpstreamConfig u;
  r.String("name", u.name);
  r.Strings("targets", u.targets);
  r.String("balance", u.balance);
  r.String("health_path", u.health_path);
  r.Time("health_interval", u.health_interval, true);
  r.Time("health_timeout", u.health_timeout, true);
  r.Int("eject_after_5xx", u.eject_after_5xx, 1, 1000);
  r.Time("base_ejection", u.base_ejection, true);
  r.Number("retry_budget", u.retry_budget, 0, 1);
  r.Int("min_retries", u.min_retries, 0, 1000);
  r.Finish({"name", "targets", "balance", "health_path", "health_interval", "health_timeout",
            "eject_after_5xx", "base_ejection", "retry_budget", "min_retries"});
  if (u.name.empty()) return r.Report(t, "name: every upstream needs a name");
  if (u.targets.empty()) return r.Report(t, "targets: needs at least one \"http://host:port\"");
  for (const std::string& target : u.targets) {
    if (!target.starts_with("http://") && !target.starts_with("https://")) {
      return r.Report(t, fmt::format("targets: \"{}\" is not an http:// URL", target));
    }
  }
  if (u.balance != "least_request" && u.balance != "round_robin") {
    return r.Report(t, "balance: expected \"least_request\" or \"round_robin\"");
  }
  for (const UpstreamConfig& other : config.upstreams) {
    if (other.name == u.name) return r.Report(t, fmt::format("name: \"{}\" is used twice", u.name));
  }
  if (r.ok()) config.upstreams.push_back(std::move(u));
}

}  // namespace

std::vector<std::pair<toml::source_position, std::string>> ParseConfigTables(
    std::string_view name, const toml::node& node, const std::string& path, Config& config) {
  Problems problems;
  const toml::array* array = node.as_array();
  if (!array || !array->is_array_of_tables()) {
    toml::source_position at = node.source().begin;
    problems.emplace_back(
        at, fmt::format("{}: expected [[{}]] tables, got {} (from {}:{}:{})", name, name,
                        DescribeTomlNode(node), path, at.line, at.column));
    return problems;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::table& t = *array->get(i)->as_table();
    if (name == "routes") {
      ReadRoute(t, i, path, config, problems);
    } else {
      ReadUpstream(t, i, path, config, problems);
    }
  }
  // A route's upstream may be declared after it; the gateway checks the names at start-up.
  return problems;
}

}  // namespace megaserve::core
