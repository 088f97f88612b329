// Engine-independent parts of the store: Rows, option resolution and engine selection by URL.
#include "store/database.h"

#include <fmt/format.h>

#include <charconv>
#include <filesystem>

#include "store/postgres_database.h"
#include "store/sqlite_database.h"

namespace megaserve::store {

std::string_view EngineName(Engine engine) {
  return engine == Engine::kSqlite ? "sqlite" : "postgresql";
}

StoreOptions StoreOptionsFromConfig(const core::Config& config) {
  StoreOptions options;
  options.url = config.store.url;
  if (options.url.empty()) {
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::absolute(config.data_dir, ec);
    if (ec) dir = config.data_dir;
    // An absolute path starts with '/', giving sqlite:///abs/path.
    options.url = "sqlite://" + (dir.lexically_normal() / "megaserve.db").string();
  }
  options.pool_size = config.store.pool_size;
  options.max_overflow = config.store.max_overflow;
  options.pool_timeout = config.store.pool_timeout;
  options.pre_ping = config.store.pre_ping;
  options.recycle = config.store.recycle;
  return options;
}

std::string SqlState(const core::Status& status) {
  constexpr std::string_view kTag = "[SQLSTATE ";
  const std::string& m = status.message();
  std::size_t at = m.rfind(kTag);
  if (at == std::string::npos || at + kTag.size() + 6 > m.size()) return "";
  if (m[at + kTag.size() + 5] != ']') return "";
  return m.substr(at + kTag.size(), 5);
}

Rows::Rows(std::vector<std::string> columns, std::vector<Value> cells, int64_t affected_rows)
    : columns_(std::move(columns)), cells_(std::move(cells)), affected_rows_(affected_rows) {}

int Rows::ColumnIndex(std::string_view name) const {
  for (size_t i = 0; i < columns_.size(); ++i) {
    if (columns_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

int64_t Rows::GetInt(size_t row, size_t col) const {
  const Value& v = Get(row, col);
  if (const auto* i = std::get_if<int64_t>(&v)) return *i;
  if (const auto* d = std::get_if<double>(&v)) return static_cast<int64_t>(*d);
  if (const auto* s = std::get_if<std::string>(&v)) {
    int64_t out = 0;
    std::from_chars(s->data(), s->data() + s->size(), out);
    return out;
  }
  return 0;
}

double Rows::GetDouble(size_t row, size_t col) const {
  const Value& v = Get(row, col);
  if (const auto* d = std::get_if<double>(&v)) return *d;
  if (const auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (const auto* s = std::get_if<std::string>(&v)) {
    double out = 0;
    std::from_chars(s->data(), s->data() + s->size(), out);
    return out;
  }
  return 0;
}

std::string Rows::GetText(size_t row, size_t col) const {
  const Value& v = Get(row, col);
  if (const auto* s = std::get_if<std::string>(&v)) return *s;
  if (const auto* i = std::get_if<int64_t>(&v)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&v)) return fmt::format("{}", *d);
  return "";
}

core::Result<std::unique_ptr<Database>> Database::Open(const StoreOptions& options) {
  const std::string& url = options.url;
  if (url == "sqlite::memory:") return OpenSqlite(":memory:", options);
  if (url.starts_with("sqlite://")) {
    // sqlite:///abs/path -> /abs/path; sqlite://rel/path -> rel/path.
    std::string path = url.substr(9);
    if (path.empty() || path == "/") {
      return core::InvalidArgument("store.url: missing file path in \"" + url + "\"");
    }
    return OpenSqlite(path, options);
  }
  if (url.starts_with("postgresql://") || url.starts_with("postgres://")) {
    return OpenPostgres(options);
  }
  return core::InvalidArgument(
      "store.url: unsupported URL \"" + core::RedactUrlPassword(url) +
      "\"; expected sqlite:///PATH, sqlite://RELATIVE_PATH, sqlite::memory: or postgresql://...");
}

}  // namespace megaserve::store
