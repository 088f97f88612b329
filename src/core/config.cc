// Configuration loading: one descriptor table drives every layer.
//
// Keys() lists each key once: its dotted name, help text, the Config member it lives in, its
// bounds and any extra check. The TOML walker, the environment and flag parsers, validation,
// PrintConfig and ConfigKeys all iterate that table, so a new key is one new row.
//
// Each layer turns its input into a Value (the alternative matching the key's type), validates
// it, and only then stores it, recording where it came from. Values are validated where they
// enter, so an error names the layer that supplied the bad value even if a later layer would
// have replaced it.
#include "core/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <limits>
#include <map>
#include <optional>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <variant>

#include "core/config_tables.h"
#include "core/toml_describe.h"

namespace megaserve::core {
namespace {

constexpr std::string_view kEnvPrefix = "MEGASERVE_";

// MEGASERVE_* variables that are not configuration keys, so the environment layer must not reject
// them: MEGASERVE_CONFIG names the config file (the caller reads it and fills
// ConfigSources::file); MEGASERVE_TORCH_PLUGIN locates the libtorch plugin and
// MEGASERVE_FORECAST_KERNEL picks the forecast engine's kernel (both read where they are used);
// MEGASERVE_BINARY and MEGASERVE_SOURCE_DIR are set by ctest for tests and tools that need the
// built server or the source tree.
constexpr std::string_view kAllowedEnvironment[] = {"MEGASERVE_CONFIG", "MEGASERVE_TORCH_PLUGIN",
                                                    "MEGASERVE_FORECAST_KERNEL", "MEGASERVE_BINARY",
                                                    "MEGASERVE_SOURCE_DIR"};

// Durations above this are rejected so that converting them to nanoseconds cannot overflow.
constexpr std::int64_t kMaxDurationMs = std::int64_t{1'000'000} * 3'600'000;  // 1,000,000h

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;
constexpr std::size_t kGiB = 1024 * kMiB;

// A key's type. The alternatives of Value and Field are in this order.
enum class Type { kString, kInt, kFloat, kBool, kDuration, kSize, kStringList, kFloatList };

// A value read from one layer, before it is stored. Integers are held wide so that a value too
// large for its int field is reported as out of range rather than truncated.
using Value = std::variant<std::string, std::int64_t, double, bool, Duration, std::size_t,
                           std::vector<std::string>, std::vector<double>>;

// The Config member a key is stored in.
using Field = std::variant<std::string*, int*, double*, bool*, Duration*, std::size_t*,
                           std::vector<std::string>*, std::vector<double>*>;

static_assert(std::variant_size_v<Value> == std::variant_size_v<Field>);

// One configuration key. Bounds are in the key's unit: milliseconds for durations, bytes for
// sizes. `check` does validation that bounds and choices cannot express; it returns the problem,
// or an empty string when the value is fine.
struct KeyDef {
  std::string_view name;
  std::string_view help;
  Field (*field)(Config&);
  bool secret = false;
  std::optional<double> min = std::nullopt;
  std::optional<double> max = std::nullopt;
  bool min_exclusive = false;
  std::vector<std::string_view> choices = {};
  std::string (*check)(const Value&) = nullptr;
  // For a secret string key whose value is partly public: shows the value with only its secret
  // part masked. Without it a secret is printed as "********".
  std::string (*redact)(std::string_view) = nullptr;

  // Derived from the member's type, so the two cannot disagree.
  Type type() const {
    Config probe;
    return static_cast<Type>(field(probe).index());
  }
  std::string EnvName() const {
    std::string env(kEnvPrefix);
    for (char c : name)
      env += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return env;
  }
};

std::string CheckNotEmpty(const Value& v) {
  return std::get<std::string>(v).empty() ? "must not be empty" : "";
}

std::string CheckListen(const Value& v) {
  auto parsed = ParseListen(std::get<std::string>(v));
  return parsed.ok() ? "" : parsed.status().message();
}

// A port of 1 to 5 digits, at most 65535.
bool ValidPort(std::string_view port) {
  if (port.empty() || port.size() > 5) return false;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  return ec == std::errc() && end == port.data() + port.size() && value <= 65535;
}

// An origin is "*" or scheme://host[:port] (RFC 6454), with nothing after the authority.
std::string CheckOrigins(const Value& v) {
  for (const std::string& origin : std::get<std::vector<std::string>>(v)) {
    if (origin == "*") continue;
    std::string bad = fmt::format("invalid origin \"{}\": ", origin);
    std::size_t sep = origin.find("://");
    if (sep == std::string::npos || sep == 0) {
      return bad + "expected \"*\" or scheme://host[:port]";
    }
    for (std::size_t i = 0; i < sep; ++i) {
      char c = origin[i];
      bool ok = std::isalpha(static_cast<unsigned char>(c)) ||
                (i > 0 &&
                 (std::isdigit(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.'));
      if (!ok) return bad + "invalid scheme";
    }
    std::string_view authority = std::string_view(origin).substr(sep + 3);
    if (authority.find_first_of("/?#") != std::string_view::npos) {
      return bad + "an origin has no path, query or fragment";
    }
    std::string_view host = authority;
    std::size_t colon = authority.rfind(':');
    std::size_t bracket = authority.rfind(']');
    if (colon != std::string_view::npos && (bracket == std::string_view::npos || colon > bracket)) {
      if (!ValidPort(authority.substr(colon + 1))) return bad + "invalid port";
      host = authority.substr(0, colon);
    }
    if (host.empty()) return bad + "missing host";
  }
  return "";
}

// HTTP header names are RFC 9110 tokens.
std::string CheckHeaderNames(const Value& v) {
  for (const std::string& name : std::get<std::vector<std::string>>(v)) {
    bool ok = !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) ||
             std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    });
    if (!ok) return fmt::format("invalid header name \"{}\"", name);
  }
  return "";
}

std::string CheckBuckets(const Value& v) {
  const auto& buckets = std::get<std::vector<double>>(v);
  if (buckets.empty()) return "must not be empty";
  for (std::size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i])) return "buckets must be finite numbers";
    if (i > 0 && buckets[i] <= buckets[i - 1]) {
      return fmt::format("buckets must be strictly increasing, got {} after {}", buckets[i],
                         buckets[i - 1]);
    }
  }
  return "";
}

// "TYPE=N" entries with a non-empty type and N >= 1, each type once.
std::string CheckTypeLimits(const Value& v) {
  std::vector<std::string_view> seen;
  for (const std::string& entry : std::get<std::vector<std::string>>(v)) {
    const std::size_t eq = entry.find('=');
    int n = 0;
    std::string_view count =
        eq == std::string::npos ? std::string_view() : std::string_view(entry).substr(eq + 1);
    auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), n);
    if (eq == std::string::npos || eq == 0 || ec != std::errc() ||
        end != count.data() + count.size() || n < 1) {
      return fmt::format("invalid entry \"{}\": expected TYPE=N with N >= 1", entry);
    }
    std::string_view type = std::string_view(entry).substr(0, eq);
    if (std::find(seen.begin(), seen.end(), type) != seen.end()) {
      return fmt::format("type \"{}\" is listed twice", type);
    }
    seen.push_back(type);
  }
  return "";
}

// Empty, or "whsec_" followed by base64 (the key itself is checked when serve starts).
std::string CheckWebhookSecret(const Value& v) {
  const std::string& secret = std::get<std::string>(v);
  if (secret.empty() || secret.starts_with("whsec_")) return "";
  return "expected \"whsec_<base64 key>\" (generate one with: megaserve webhooks new-secret)";
}

// A non-empty list of durations.
std::string CheckRetrySchedule(const Value& v) {
  const auto& list = std::get<std::vector<std::string>>(v);
  if (list.empty()) return "must not be empty";
  for (const std::string& item : list) {
    auto d = ParseDuration(item);
    if (!d.ok()) return d.status().message();
    if (d->count() <= 0) return fmt::format("\"{}\": each wait must be greater than 0", item);
  }
  return "";
}

// Empty (the default SQLite file), or a URL whose scheme names a supported engine.
std::string CheckRate(const Value& v) {
  const auto& text = std::get<std::string>(v);
  if (text.empty()) return "";
  auto rate = ParseRate(text);
  return rate.ok() ? "" : rate.status().message();
}

std::string CheckRedisUrl(const Value& v) {
  const auto& url = std::get<std::string>(v);
  if (url.empty() || url.starts_with("redis://")) return "";
  return "expected a redis://[:password@]host:port[/db] URL";
}

// Each entry "SOURCE:SYMBOL:INTERVAL" with a known source; the symbol and interval are checked
// when serve starts the sync.
std::string CheckSyncTargets(const Value& v) {
  for (const std::string& item : std::get<std::vector<std::string>>(v)) {
    auto first = item.find(':');
    auto second = first == std::string::npos ? first : item.find(':', first + 1);
    if (second == std::string::npos || first == 0 || second == first + 1 ||
        second + 1 == item.size() || item.find(':', second + 1) != std::string::npos) {
      return fmt::format("\"{}\": expected SOURCE:SYMBOL:INTERVAL, e.g. \"binance:BTCUSDT:4h\"",
                         item);
    }
    std::string_view source = std::string_view(item).substr(0, first);
    if (source != "binance" && source != "coinbase") {
      return fmt::format("\"{}\": unknown source \"{}\"; known: binance, coinbase", item, source);
    }
  }
  return "";
}

std::string CheckHttpUrl(const Value& v) {
  const auto& url = std::get<std::string>(v);
  if (url.starts_with("http://") || url.starts_with("https://")) return "";
  return "expected an http:// or https:// URL";
}

std::string CheckStoreUrl(const Value& v) {
  const std::string& url = std::get<std::string>(v);
  if (url.empty() || url == "sqlite::memory:" || url.starts_with("sqlite://") ||
      url.starts_with("postgresql://") || url.starts_with("postgres://")) {
    return "";
  }
  return "expected sqlite:///PATH, sqlite://RELATIVE_PATH, sqlite::memory:, postgresql://... or "
         "postgres://...";
}

// The descriptor table. Defaults are not repeated here: they are whatever Config{} holds.
const std::vector<KeyDef>& Keys() {
  static const std::vector<KeyDef> keys = {
      {.name = "data_dir",
       .help = "Directory for the jobs database, artifacts and models",
       .field = [](Config& c) -> Field { return &c.data_dir; },
       .check = CheckNotEmpty},

      {.name = "server.listen",
       .help = "Address to listen on: HOST:PORT, or [V6]:PORT; port 0 picks a free port",
       .field = [](Config& c) -> Field { return &c.server.listen; },
       .check = CheckListen},
      {.name = "server.threads",
       .help = "I/O threads; 0 = one per CPU core",
       .field = [](Config& c) -> Field { return &c.server.threads; },
       .min = 0,
       .max = 1024},
      {.name = "server.backlog",
       .help = "Listen backlog: connections the kernel queues before accept",
       .field = [](Config& c) -> Field { return &c.server.backlog; },
       .min = 1,
       .max = 65535},
      {.name = "server.max_connections",
       .help = "Open connections across all threads; more are refused",
       .field = [](Config& c) -> Field { return &c.server.max_connections; },
       .min = 1,
       .max = 1'000'000},
      {.name = "server.max_header_bytes",
       .help = "Largest request line plus headers; larger requests get 431",
       .field = [](Config& c) -> Field { return &c.server.max_header_bytes; },
       .min = static_cast<double>(kKiB),
       .max = static_cast<double>(kMiB)},
      {.name = "server.max_body_bytes",
       .help = "Largest request body; larger requests get 413",
       .field = [](Config& c) -> Field { return &c.server.max_body_bytes; },
       .min = 0,
       .max = static_cast<double>(16 * kGiB)},
      {.name = "server.header_timeout",
       .help = "Time to receive a whole request head; else 408",
       .field = [](Config& c) -> Field { return &c.server.header_timeout; },
       .min = 0,
       .min_exclusive = true},
      {.name = "server.body_timeout",
       .help = "Time to receive the body once the head is in; else 408",
       .field = [](Config& c) -> Field { return &c.server.body_timeout; },
       .min = 0,
       .min_exclusive = true},
      {.name = "server.idle_timeout",
       .help = "Keep-alive wait for the next request on a connection",
       .field = [](Config& c) -> Field { return &c.server.idle_timeout; },
       .min = 0,
       .min_exclusive = true},
      {.name = "server.write_timeout",
       .help = "A client that stops reading for this long is dropped",
       .field = [](Config& c) -> Field { return &c.server.write_timeout; },
       .min = 0,
       .min_exclusive = true},
      {.name = "server.shutdown_delay",
       .help = "On shutdown, report not-ready this long before closing listeners",
       .field = [](Config& c) -> Field { return &c.server.shutdown_delay; },
       .min = 0},
      {.name = "server.drain_timeout",
       .help = "On shutdown, time in-flight requests get to finish",
       .field = [](Config& c) -> Field { return &c.server.drain_timeout; },
       .min = 0},

      {.name = "cors.allowed_origins",
       .help = "Origins allowed by CORS: exact scheme://host[:port] values or \"*\"; empty = off",
       .field = [](Config& c) -> Field { return &c.cors.allowed_origins; },
       .check = CheckOrigins},
      {.name = "cors.allowed_headers",
       .help = "Request headers allowed in CORS requests",
       .field = [](Config& c) -> Field { return &c.cors.allowed_headers; },
       .check = CheckHeaderNames},
      {.name = "cors.max_age",
       .help = "How long browsers may cache a preflight response (Access-Control-Max-Age)",
       .field = [](Config& c) -> Field { return &c.cors.max_age; },
       .min = 0},

      {.name = "log.level",
       .help = "Application log level: trace, debug, info, warn, error or off",
       .field = [](Config& c) -> Field { return &c.log.level; },
       .choices = {"trace", "debug", "info", "warn", "error", "off"}},
      {.name = "log.format",
       .help = "Application log format on stderr: text or json",
       .field = [](Config& c) -> Field { return &c.log.format; },
       .choices = {"text", "json"}},
      {.name = "log.access",
       .help = "Write a JSON access log line per request",
       .field = [](Config& c) -> Field { return &c.log.access; }},
      {.name = "log.access_sample",
       .help = "Fraction of requests written to the access log, 0 to 1; errors always are",
       .field = [](Config& c) -> Field { return &c.log.access_sample; },
       .min = 0,
       .max = 1},
      {.name = "log.access_file",
       .help = "Access log file; \"-\" = stdout",
       .field = [](Config& c) -> Field { return &c.log.access_file; },
       .check = CheckNotEmpty},

      {.name = "metrics.enabled",
       .help = "Serve Prometheus metrics at GET /metrics",
       .field = [](Config& c) -> Field { return &c.metrics.enabled; }},
      {.name = "metrics.bearer_token",
       .help = "When set, GET /metrics requires this bearer token",
       .field = [](Config& c) -> Field { return &c.metrics.bearer_token; },
       .secret = true},
      {.name = "metrics.duration_buckets",
       .help = "Upper bounds in seconds of the request duration histogram buckets",
       .field = [](Config& c) -> Field { return &c.metrics.duration_buckets; },
       .check = CheckBuckets},

      {.name = "store.url",
       .help = "Job store: sqlite:///ABS/PATH.db, sqlite://REL/PATH.db, sqlite::memory: or "
               "postgresql://USER:PASSWORD@HOST:PORT/DB; empty = sqlite:///<data_dir>/megaserve.db",
       .field = [](Config& c) -> Field { return &c.store.url; },
       .secret = true,
       .check = CheckStoreUrl,
       .redact = [](std::string_view url) { return RedactUrlPassword(url); }},
      {.name = "store.pool_size",
       .help = "PostgreSQL connections kept open in the pool",
       .field = [](Config& c) -> Field { return &c.store.pool_size; },
       .min = 1,
       .max = 1000},
      {.name = "store.max_overflow",
       .help = "Extra PostgreSQL connections opened under load beyond pool_size",
       .field = [](Config& c) -> Field { return &c.store.max_overflow; },
       .min = 0,
       .max = 1000},
      {.name = "store.pool_timeout",
       .help = "Longest wait for a free PostgreSQL connection before failing",
       .field = [](Config& c) -> Field { return &c.store.pool_timeout; },
       .min = 0,
       .min_exclusive = true},
      {.name = "store.pre_ping",
       .help = "Check that a pooled PostgreSQL connection is alive before handing it out",
       .field = [](Config& c) -> Field { return &c.store.pre_ping; }},
      {.name = "store.recycle",
       .help = "PostgreSQL connections older than this are replaced on checkout",
       .field = [](Config& c) -> Field { return &c.store.recycle; },
       .min = 0,
       .min_exclusive = true},
      {.name = "store.migrate_on_start",
       .help = "Apply pending database migrations when serve starts",
       .field = [](Config& c) -> Field { return &c.store.migrate_on_start; }},
      {.name = "jobs.queue",
       .help = "Queue the in-process workers of serve claim from",
       .field = [](Config& c) -> Field { return &c.jobs.queue; },
       .check = CheckNotEmpty},
      {.name = "jobs.concurrency",
       .help = "Jobs serve runs at once in-process; 0 = none (leave them to megaserve worker)",
       .field = [](Config& c) -> Field { return &c.jobs.concurrency; },
       .min = 0,
       .max = 4096},
      {.name = "jobs.type_concurrency",
       .help = "Per-type caps on running jobs in one process, \"TYPE=N\" each",
       .field = [](Config& c) -> Field { return &c.jobs.type_concurrency; },
       .check = CheckTypeLimits},
      {.name = "jobs.lease",
       .help = "How long a claim holds a job without a heartbeat before it is rescued",
       .field = [](Config& c) -> Field { return &c.jobs.lease; },
       .min = 100},
      {.name = "jobs.heartbeat",
       .help = "Lease renewal and cancel check interval per running job; below jobs.lease",
       .field = [](Config& c) -> Field { return &c.jobs.heartbeat; },
       .min = 10},
      {.name = "jobs.poll_interval",
       .help = "Idle claim poll interval; LISTEN/NOTIFY and local enqueues wake workers sooner",
       .field = [](Config& c) -> Field { return &c.jobs.poll_interval; },
       .min = 1},
      {.name = "jobs.rescue_interval",
       .help = "How often expired leases are looked for and their jobs requeued",
       .field = [](Config& c) -> Field { return &c.jobs.rescue_interval; },
       .min = 10},

      {.name = "webhooks.secret",
       .help = "Webhook signing key \"whsec_<base64>\" shared with receivers; empty = webhooks "
               "refused",
       .field = [](Config& c) -> Field { return &c.webhooks.secret; },
       .secret = true,
       .check = CheckWebhookSecret},
      {.name = "webhooks.allow_private",
       .help = "Allow webhook deliveries to private (RFC 1918, CGNAT, ULA) addresses",
       .field = [](Config& c) -> Field { return &c.webhooks.allow_private; }},
      {.name = "webhooks.allowed_cidrs",
       .help = "Destinations always allowed for webhooks, e.g. \"127.0.0.1/32\"",
       .field = [](Config& c) -> Field { return &c.webhooks.allowed_cidrs; }},
      {.name = "webhooks.timeout",
       .help = "Time one webhook delivery attempt may take, connect included",
       .field = [](Config& c) -> Field { return &c.webhooks.timeout; },
       .min = 1},
      {.name = "webhooks.retry_schedule",
       .help = "Waits before each retry of a failed delivery (+-20% jitter); then it is dropped",
       .field = [](Config& c) -> Field { return &c.webhooks.retry_schedule; },
       .check = CheckRetrySchedule},
      {.name = "webhooks.concurrency",
       .help = "Webhook deliveries in flight at once",
       .field = [](Config& c) -> Field { return &c.webhooks.concurrency; },
       .min = 1,
       .max = 1024},

      {.name = "models.dir",
       .help = "Model repository: one folder per model holding config.toml and its files; "
               "empty = <data_dir>/models",
       .field = [](Config& c) -> Field { return &c.models.dir; }},
      {.name = "models.cache_bytes",
       .help = "Bytes the loaded models may hold together; idle models are evicted, least "
               "recently used first",
       .field = [](Config& c) -> Field { return &c.models.cache_bytes; },
       .min = 1},

      {.name = "gateway.auth",
       .help = "API keys: auto (optional on loopback, required elsewhere), required or optional",
       .field = [](Config& c) -> Field { return &c.gateway.auth; },
       .choices = {"auto", "required", "optional"}},
      {.name = "gateway.allow_unauthenticated",
       .help = "Allow listening on a non-loopback address while keys are optional or none exist",
       .field = [](Config& c) -> Field { return &c.gateway.allow_unauthenticated; }},
      {.name = "gateway.rate_limit",
       .help = "Default rate limit per API key (per client IP when anonymous), \"N/s\", "
               "\"N/min\", \"N/h\"; \"\" = none",
       .field = [](Config& c) -> Field { return &c.gateway.rate_limit; },
       .check = CheckRate},
      {.name = "gateway.rate_limit_store",
       .help = "Where rate-limit state lives: local (per process) or redis (shared by every "
               "gateway; falls back to local while Redis is down)",
       .field = [](Config& c) -> Field { return &c.gateway.rate_limit_store; },
       .choices = {"local", "redis"}},
      {.name = "gateway.key_cache_ttl",
       .help = "How long a verified API key is trusted before the store is asked again "
               "(bounds how late a revocation takes effect)",
       .field = [](Config& c) -> Field { return &c.gateway.key_cache_ttl; },
       .min = 10,
       .max = 60'000},

      {.name = "cache.memory_bytes",
       .help = "Bytes the in-memory response cache (L1) may hold",
       .field = [](Config& c) -> Field { return &c.cache.memory_bytes; },
       .min = 0},
      {.name = "cache.redis",
       .help = "Use Redis (redis.url) as the shared second cache tier",
       .field = [](Config& c) -> Field { return &c.cache.redis; }},
      {.name = "cache.xfetch_beta",
       .help = "Probabilistic early refresh of hot entries (XFetch beta); 0 = off",
       .field = [](Config& c) -> Field { return &c.cache.xfetch_beta; },
       .min = 0,
       .max = 10},

      {.name = "redis.url",
       .help = "Redis for the shared response cache and global rate limits, "
               "redis://[:password@]host:port[/db]; empty = none",
       .field = [](Config& c) -> Field { return &c.redis.url; },
       .secret = true,
       .check = CheckRedisUrl},
      {.name = "redis.timeout",
       .help = "Time a Redis command may take; slower counts as an error",
       .field = [](Config& c) -> Field { return &c.redis.timeout; },
       .min = 1},
      {.name = "redis.connect_timeout",
       .help = "Time to connect to Redis",
       .field = [](Config& c) -> Field { return &c.redis.connect_timeout; },
       .min = 1},

      {.name = "market_data.sync",
       .help = "Candle series serve keeps in sync, \"SOURCE:SYMBOL:INTERVAL\" each (e.g. "
               "\"binance:BTCUSDT:4h\"); empty = off",
       .field = [](Config& c) -> Field { return &c.market_data.sync; },
       .check = CheckSyncTargets},
      {.name = "market_data.sync_interval",
       .help = "Time between two sync rounds over every market_data.sync series",
       .field = [](Config& c) -> Field { return &c.market_data.sync_interval; },
       .min = 1000},
      {.name = "market_data.binance_url",
       .help = "Base URL of the Binance spot API",
       .field = [](Config& c) -> Field { return &c.market_data.binance_url; },
       .check = CheckHttpUrl},
      {.name = "market_data.coinbase_url",
       .help = "Base URL of the Coinbase Exchange API",
       .field = [](Config& c) -> Field { return &c.market_data.coinbase_url; },
       .check = CheckHttpUrl},
      {.name = "market_data.binance_weight_budget",
       .help = "Binance request weight the sync may use per minute (the exchange allows 6000)",
       .field = [](Config& c) -> Field { return &c.market_data.binance_weight_budget; },
       .min = 2,
       .max = 6000},
      {.name = "market_data.backfill_days",
       .help = "Days of history fetched for a series that has no candles yet",
       .field = [](Config& c) -> Field { return &c.market_data.backfill_days; },
       .min = 1,
       .max = 36500},
  };
  return keys;
}

const KeyDef* FindKey(std::string_view name) {
  for (const KeyDef& key : Keys()) {
    if (key.name == name) return &key;
  }
  return nullptr;
}

// True when some key lives in the table `name` ("server" for "server.threads").
bool IsSection(std::string_view name) {
  for (const KeyDef& key : Keys()) {
    if (key.name.size() > name.size() && key.name.starts_with(name) &&
        key.name[name.size()] == '.') {
      return true;
    }
  }
  return false;
}

std::string_view TypeName(Type type) {
  switch (type) {
    case Type::kString:
      return "string";
    case Type::kInt:
      return "int";
    case Type::kFloat:
      return "float";
    case Type::kBool:
      return "bool";
    case Type::kDuration:
      return "duration";
    case Type::kSize:
      return "size";
    case Type::kStringList:
      return "string list";
    case Type::kFloatList:
      return "float list";
  }
  return "unknown";
}

// What a key's type accepts, for "expected ..." messages.
std::string_view Expected(Type type) {
  switch (type) {
    case Type::kString:
      return "a string";
    case Type::kInt:
      return "an integer";
    case Type::kFloat:
      return "a number";
    case Type::kBool:
      return "a boolean";
    case Type::kDuration:
      return "a duration (a string like \"10s\" or an integer of seconds)";
    case Type::kSize:
      return "a size (a string like \"16KiB\" or an integer of bytes)";
    case Type::kStringList:
      return "an array of strings";
    case Type::kFloatList:
      return "an array of numbers";
  }
  return "a value";
}

// Levenshtein distance, for "did you mean" hints.
std::size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];  // row[i-1][j-1]
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// " (did you mean X?)" for the closest candidate within edit distance 2, else "".
std::string Suggest(std::string_view name, const std::vector<std::string>& candidates) {
  const std::string* best = nullptr;
  std::size_t best_distance = 3;
  for (const std::string& candidate : candidates) {
    std::size_t d = EditDistance(name, candidate);
    if (d < best_distance) {
      best = &candidate;
      best_distance = d;
    }
  }
  return best ? fmt::format("; did you mean {}?", *best) : "";
}

// Hint for an unknown key: a key within edit distance 2, else the one key with the same last
// component in another table ("listen" -> "server.listen").
std::string SuggestKey(std::string_view name, bool is_table) {
  std::vector<std::string> candidates;
  for (const KeyDef& key : Keys()) {
    candidates.emplace_back(key.name);
    if (is_table) {
      std::size_t dot = key.name.find('.');
      if (dot != std::string_view::npos) candidates.emplace_back(key.name.substr(0, dot));
    }
  }
  std::string hint = Suggest(name, candidates);
  if (!hint.empty() || is_table) return hint;
  std::string_view leaf = name.substr(name.rfind('.') + 1);
  const KeyDef* match = nullptr;
  for (const KeyDef& key : Keys()) {
    if (key.name.substr(key.name.rfind('.') + 1) == leaf) {
      if (match) return "";
      match = &key;
    }
  }
  return match ? fmt::format("; did you mean {}?", match->name) : "";
}

// A TOML basic string: quoted, with backslash, quote and control characters escaped.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += fmt::format("\\u{:04X}", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

// The shortest text that reads back as the same double, always in TOML float syntax.
std::string FormatFloat(double d) {
  std::string s = fmt::format("{}", d);
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // "1" -> "1.0"; keeps inf/nan
  return s;
}

// The value as it would appear in TOML (as_toml) or in a message: messages leave durations and
// sizes unquoted ("got 2MiB").
std::string Format(const Value& value, bool as_toml) {
  struct Visitor {
    bool as_toml;
    std::string operator()(const std::string& s) const { return Quote(s); }
    std::string operator()(std::int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const { return FormatFloat(d); }
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(Duration d) const {
      return as_toml ? Quote(FormatDuration(d)) : FormatDuration(d);
    }
    std::string operator()(std::size_t n) const {
      std::string s = FormatSize(n);
      bool has_unit = !s.empty() && !std::isdigit(static_cast<unsigned char>(s.back()));
      return as_toml && has_unit ? Quote(s) : s;
    }
    std::string operator()(const std::vector<std::string>& list) const {
      std::string out = "[";
      for (std::size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + Quote(list[i]);
      return out + "]";
    }
    std::string operator()(const std::vector<double>& list) const {
      std::string out = "[";
      for (std::size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + FormatFloat(list[i]);
      return out + "]";
    }
  };
  return std::visit(Visitor{as_toml}, value);
}

// The value for printing; non-empty secrets are masked.
std::string FormatForDisplay(const KeyDef& key, const Value& value, bool as_toml) {
  if (key.secret) {
    const auto* s = std::get_if<std::string>(&value);
    if (s && key.redact) return Quote(key.redact(*s));
    return s && s->empty() ? Quote("") : Quote("********");
  }
  return Format(value, as_toml);
}

Value Read(Field field) {
  return std::visit(
      [](auto* member) -> Value {
        using T = std::remove_pointer_t<decltype(member)>;
        if constexpr (std::is_same_v<T, int>) {
          return static_cast<std::int64_t>(*member);
        } else {
          return *member;
        }
      },
      field);
}

// Stores a value whose alternative matches the field's; Validate has checked an int fits.
void Store(Field field, const Value& value) {
  std::visit(
      [&value](auto* member) {
        using T = std::remove_pointer_t<decltype(member)>;
        if constexpr (std::is_same_v<T, int>) {
          *member = static_cast<int>(std::get<std::int64_t>(value));
        } else {
          *member = std::get<T>(value);
        }
      },
      field);
}

// A bound in the key's unit, for messages.
std::string FormatBound(Type type, double bound) {
  switch (type) {
    case Type::kDuration:
      return FormatDuration(Duration(static_cast<std::int64_t>(bound)));
    case Type::kSize:
      return FormatSize(static_cast<std::size_t>(bound));
    case Type::kFloat:
      return fmt::format("{}", bound);
    default:
      return std::to_string(static_cast<std::int64_t>(bound));
  }
}

// The problem with a value for this key, or "" when it is acceptable.
std::string Validate(const KeyDef& key, const Value& value) {
  Type type = static_cast<Type>(value.index());
  std::string got = !key.secret ? Format(value, false)
                    : key.redact && std::holds_alternative<std::string>(value)
                        ? Quote(key.redact(std::get<std::string>(value)))
                        : "********";
  std::optional<double> number;
  switch (type) {
    case Type::kInt: {
      std::int64_t i = std::get<std::int64_t>(value);
      if (i < std::numeric_limits<int>::min() || i > std::numeric_limits<int>::max()) {
        return fmt::format("must be between {} and {}, got {}",
                           FormatBound(type, key.min.value_or(std::numeric_limits<int>::min())),
                           FormatBound(type, key.max.value_or(std::numeric_limits<int>::max())),
                           got);
      }
      number = static_cast<double>(i);
      break;
    }
    case Type::kFloat:
      number = std::get<double>(value);
      if (!std::isfinite(*number)) return fmt::format("must be a finite number, got {}", got);
      break;
    case Type::kDuration:
      number = static_cast<double>(std::get<Duration>(value).count());
      break;
    case Type::kSize:
      number = static_cast<double>(std::get<std::size_t>(value));
      break;
    default:
      break;
  }
  if (number) {
    bool too_low = key.min && (key.min_exclusive ? *number <= *key.min : *number < *key.min);
    bool too_high = key.max && *number > *key.max;
    if (too_low || too_high) {
      if (key.min && key.max) {
        return fmt::format("must be between {} and {}, got {}", FormatBound(type, *key.min),
                           FormatBound(type, *key.max), got);
      }
      if (key.max)
        return fmt::format("must be at most {}, got {}", FormatBound(type, *key.max), got);
      return fmt::format("must be {} {}, got {}", key.min_exclusive ? "greater than" : "at least",
                         FormatBound(type, *key.min), got);
    }
  }
  if (!key.choices.empty()) {
    const std::string& s = std::get<std::string>(value);
    if (std::find(key.choices.begin(), key.choices.end(), s) == key.choices.end()) {
      return fmt::format("must be one of {}, got {}", fmt::join(key.choices, ", "), got);
    }
  }
  if (key.check) return key.check(value);
  return "";
}

std::string_view Trim(std::string_view s) {
  std::size_t begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string_view::npos) return {};
  std::size_t end = s.find_last_not_of(" \t\r\n");
  return s.substr(begin, end - begin + 1);
}

std::optional<std::int64_t> ParseInt(std::string_view s) {
  if (s.starts_with('+')) s.remove_prefix(1);
  std::int64_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::optional<double> ParseFloat(std::string_view s) {
  if (s.starts_with('+')) s.remove_prefix(1);
  double value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// Splits "a, b,c" into trimmed, non-empty items; "" is the empty list.
std::vector<std::string> SplitList(std::string_view text) {
  std::vector<std::string> items;
  while (!text.empty()) {
    std::size_t comma = text.find(',');
    std::string_view item = Trim(text.substr(0, comma));
    if (!item.empty()) items.emplace_back(item);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return items;
}

// Parses text from the environment or a flag into the key's type.
Result<Value> FromText(const KeyDef& key, std::string_view text) {
  Type type = key.type();
  std::string_view trimmed = Trim(text);
  auto bad = [&] {
    return InvalidArgument(fmt::format("expected {}, got \"{}\"", Expected(type), text));
  };
  switch (type) {
    case Type::kString:
      return Value(std::in_place_index<0>, std::string(text));
    case Type::kInt: {
      auto i = ParseInt(trimmed);
      if (!i) return bad();
      return Value(*i);
    }
    case Type::kFloat: {
      auto d = ParseFloat(trimmed);
      if (!d) return bad();
      return Value(*d);
    }
    case Type::kBool: {
      std::string lower;
      for (char c : trimmed)
        lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (lower == "true" || lower == "1" || lower == "yes" || lower == "on") return Value(true);
      if (lower == "false" || lower == "0" || lower == "no" || lower == "off") return Value(false);
      return InvalidArgument(
          fmt::format("expected a boolean (true/false, 1/0, yes/no, on/off), got \"{}\"", text));
    }
    case Type::kDuration: {
      auto d = ParseDuration(trimmed);
      if (!d.ok()) return d.status();
      return Value(*d);
    }
    case Type::kSize: {
      auto n = ParseSize(trimmed);
      if (!n.ok()) return n.status();
      return Value(*n);
    }
    case Type::kStringList:
      return Value(SplitList(text));
    case Type::kFloatList: {
      std::vector<double> list;
      for (const std::string& item : SplitList(text)) {
        auto d = ParseFloat(item);
        if (!d) return InvalidArgument(fmt::format("expected a number, got \"{}\"", item));
        list.push_back(*d);
      }
      return Value(std::move(list));
    }
  }
  return Internal("unknown key type");
}

// Converts a TOML value into the key's type. Errors carry the position of the offending node
// (an array element, for lists) in `where`.
Result<Value> FromToml(const KeyDef& key, const toml::node& node, toml::source_position* where) {
  Type type = key.type();
  *where = node.source().begin;
  auto wrong = [&] {
    return InvalidArgument(
        fmt::format("expected {}, got {}", Expected(type), DescribeTomlNode(node)));
  };
  switch (type) {
    case Type::kString:
      if (auto s = node.as_string()) return Value(std::in_place_index<0>, s->get());
      return wrong();
    case Type::kInt:
      if (auto i = node.as_integer()) return Value(i->get());
      return wrong();
    case Type::kFloat:
      if (auto d = node.as_floating_point()) return Value(d->get());
      if (auto i = node.as_integer()) return Value(static_cast<double>(i->get()));
      return wrong();
    case Type::kBool:
      if (auto b = node.as_boolean()) return Value(b->get());
      return wrong();
    case Type::kDuration:
      if (auto s = node.as_string()) {
        auto d = ParseDuration(s->get());
        if (!d.ok()) return d.status();
        return Value(*d);
      }
      if (auto i = node.as_integer()) {
        std::int64_t seconds = i->get();
        if (seconds < 0) {
          return InvalidArgument(fmt::format("invalid duration {}: must not be negative", seconds));
        }
        if (seconds > kMaxDurationMs / 1000) {
          return InvalidArgument(fmt::format("invalid duration {}: too large", seconds));
        }
        return Value(Duration(seconds * 1000));
      }
      return wrong();
    case Type::kSize:
      if (auto s = node.as_string()) {
        auto n = ParseSize(s->get());
        if (!n.ok()) return n.status();
        return Value(*n);
      }
      if (auto i = node.as_integer()) {
        if (i->get() < 0) {
          return InvalidArgument(fmt::format("invalid size {}: must not be negative", i->get()));
        }
        return Value(static_cast<std::size_t>(i->get()));
      }
      return wrong();
    case Type::kStringList:
    case Type::kFloatList: {
      const toml::array* array = node.as_array();
      if (!array) return wrong();
      std::vector<std::string> strings;
      std::vector<double> numbers;
      for (const toml::node& element : *array) {
        if (type == Type::kStringList && element.is_string()) {
          strings.push_back(element.as_string()->get());
        } else if (type == Type::kFloatList && element.is_floating_point()) {
          numbers.push_back(element.as_floating_point()->get());
        } else if (type == Type::kFloatList && element.is_integer()) {
          numbers.push_back(static_cast<double>(element.as_integer()->get()));
        } else {
          *where = element.source().begin;
          return InvalidArgument(fmt::format("expected {}, got an array containing {}",
                                             Expected(type), DescribeTomlNode(element)));
        }
      }
      if (type == Type::kStringList) return Value(std::move(strings));
      return Value(std::move(numbers));
    }
  }
  return Internal("unknown key type");
}

// Applies the layers in order, collecting the errors of all of them so that one run reports
// every problem rather than the first.
class Loader {
 public:
  Loader() {
    for (const KeyDef& key : Keys()) loaded_.provenance[std::string(key.name)] = "default";
  }

  // Reads and applies the TOML file. Returns an error only when the file cannot be read or
  // parsed; problems with individual keys are collected.
  Status ApplyFile(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      return NotFound(fmt::format("config file {}: no such file", path));
    }
    if (std::filesystem::is_directory(path, ec)) {
      return InvalidArgument(fmt::format("config file {}: is a directory", path));
    }
    toml::table root;
    try {
      root = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      const toml::source_position& at = e.source().begin;
      return InvalidArgument(
          fmt::format("{}:{}:{}: {}", path, at.line, at.column, e.description()));
    } catch (const std::exception& e) {
      return Internal(fmt::format("config file {}: {}", path, e.what()));
    }
    path_ = path;
    WalkTable(root, "");
    // The walk visits keys in name order; report problems in file order instead.
    std::stable_sort(file_errors_.begin(), file_errors_.end(), [](const auto& a, const auto& b) {
      return std::pair(a.first.line, a.first.column) < std::pair(b.first.line, b.first.column);
    });
    for (auto& [at, message] : file_errors_) errors_.push_back(std::move(message));
    return Status::Ok();
  }

  void ApplyEnvironment(const std::vector<std::pair<std::string, std::string>>& env) {
    for (const auto& [name, value] : env) {
      if (!name.starts_with(kEnvPrefix)) continue;
      if (std::find(std::begin(kAllowedEnvironment), std::end(kAllowedEnvironment), name) !=
          std::end(kAllowedEnvironment)) {
        continue;
      }
      const KeyDef* key = nullptr;
      std::vector<std::string> names;
      for (const KeyDef& candidate : Keys()) {
        names.push_back(candidate.EnvName());
        if (names.back() == name) key = &candidate;
      }
      if (!key) {
        errors_.push_back(
            fmt::format("unknown environment variable {}{}", name, Suggest(name, names)));
        continue;
      }
      ApplyText(*key, value, "env " + name);
    }
  }

  void ApplyOverrides(const std::vector<ConfigSources::Override>& overrides) {
    for (const ConfigSources::Override& o : overrides) {
      const KeyDef* key = FindKey(o.key);
      if (!key) {
        errors_.push_back(fmt::format("unknown key \"{}\" (from {}){}", o.key, o.origin,
                                      SuggestKey(o.key, false)));
        continue;
      }
      ApplyText(*key, o.value, o.origin);
    }
  }

  Result<LoadedConfig> Finish() && {
    if (errors_.empty()) return std::move(loaded_);
    return InvalidArgument(fmt::format("{}", fmt::join(errors_, "\n")));
  }

 private:
  void WalkTable(const toml::table& table, const std::string& prefix) {
    for (const auto& [toml_key, node] : table) {
      std::string name =
          prefix.empty() ? std::string(toml_key.str()) : prefix + "." + std::string(toml_key.str());
      toml::source_position at = node.source().begin;
      if (prefix.empty() && (name == "routes" || name == "upstreams")) {
        for (auto& [where, message] : ParseConfigTables(name, node, path_, loaded_.config)) {
          file_errors_.emplace_back(where, std::move(message));
        }
      } else if (const KeyDef* key = FindKey(name)) {
        Result<Value> value = FromToml(*key, node, &at);
        std::string problem =
            value.ok()
                ? Assign(*key, *value, fmt::format("{}:{}", path_, at.line))
                : fmt::format("{}: {} (from {})", name, value.status().message(), Position(at));
        if (!problem.empty()) file_errors_.emplace_back(at, std::move(problem));
      } else if (IsSection(name)) {
        if (const toml::table* section = node.as_table()) {
          WalkTable(*section, name);
        } else {
          file_errors_.emplace_back(at, fmt::format("{}: expected a table, got {} (from {})", name,
                                                    DescribeTomlNode(node), Position(at)));
        }
      } else {
        // Point at the key itself; fall back to the value for keys toml++ gives no position.
        if (toml_key.source().begin) at = toml_key.source().begin;
        file_errors_.emplace_back(at, fmt::format("unknown key \"{}\" (from {}){}", name,
                                                  Position(at), SuggestKey(name, node.is_table())));
      }
    }
  }

  void ApplyText(const KeyDef& key, std::string_view text, const std::string& origin) {
    Result<Value> value = FromText(key, text);
    std::string problem =
        value.ok() ? Assign(key, *value, origin)
                   : fmt::format("{}: {} (from {})", key.name, value.status().message(), origin);
    if (!problem.empty()) errors_.push_back(std::move(problem));
  }

  // Validates and stores a value; returns the error message, or "" when it was stored.
  std::string Assign(const KeyDef& key, const Value& value, const std::string& origin) {
    std::string problem = Validate(key, value);
    if (!problem.empty()) return fmt::format("{}: {} (from {})", key.name, problem, origin);
    Store(key.field(loaded_.config), value);
    loaded_.provenance[std::string(key.name)] = origin;
    return "";
  }

  std::string Position(const toml::source_position& at) const {
    return fmt::format("{}:{}:{}", path_, at.line, at.column);
  }

  LoadedConfig loaded_;
  std::string path_;
  std::vector<std::pair<toml::source_position, std::string>> file_errors_;
  std::vector<std::string> errors_;
};

}  // namespace

Result<LoadedConfig> LoadConfig(const ConfigSources& sources) {
  try {
    Loader loader;
    if (!sources.file.empty()) {
      Status status = loader.ApplyFile(sources.file);
      if (!status.ok()) return status;
    }
    loader.ApplyEnvironment(sources.env);
    loader.ApplyOverrides(sources.overrides);
    return std::move(loader).Finish();
  } catch (const std::exception& e) {  // e.g. std::bad_alloc; nothing here throws by design
    return Internal(fmt::format("loading configuration: {}", e.what()));
  }
}

std::vector<std::pair<std::string, std::string>> ProcessEnvironment() {
  std::vector<std::pair<std::string, std::string>> env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string_view text(*entry);
    std::size_t eq = text.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace_back(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return env;
}

std::string PrintConfig(const LoadedConfig& loaded) {
  Config config = loaded.config;  // a copy: the accessors take a mutable Config
  std::vector<std::string_view> sections;
  std::map<std::string_view, std::string> body;  // section ("" = top level) -> its key lines
  for (const KeyDef& key : Keys()) {
    std::size_t dot = key.name.find('.');
    std::string_view section = dot == std::string_view::npos ? "" : key.name.substr(0, dot);
    std::string_view leaf = dot == std::string_view::npos ? key.name : key.name.substr(dot + 1);
    if (!section.empty() &&
        std::find(sections.begin(), sections.end(), section) == sections.end()) {
      sections.push_back(section);
    }
    auto it = loaded.provenance.find(std::string(key.name));
    std::string source = it == loaded.provenance.end() ? "unknown" : it->second;
    std::replace_if(
        source.begin(), source.end(), [](char c) { return c == '\n' || c == '\r'; }, ' ');
    body[section] += fmt::format("{} = {}  # {}\n", leaf,
                                 FormatForDisplay(key, Read(key.field(config)), true), source);
  }
  std::string out = "# Effective megaserve configuration; each value is followed by its source.\n";
  out += body[""];
  for (std::string_view section : sections) {
    out += fmt::format("\n[{}]\n{}", section, body[section]);
  }
  return out;
}

std::vector<KeyInfo> ConfigKeys() {
  Config defaults;
  std::vector<KeyInfo> keys;
  for (const KeyDef& key : Keys()) {
    keys.push_back({.key = std::string(key.name),
                    .type = std::string(TypeName(key.type())),
                    .help = std::string(key.help),
                    .secret = key.secret,
                    .default_value = FormatForDisplay(key, Read(key.field(defaults)), true)});
  }
  return keys;
}

namespace {

// Splits "16KiB" into its leading digits and the unit after optional spaces. Returns false when
// there are no digits or the number overflows.
bool SplitNumber(std::string_view text, std::uint64_t* number, std::string_view* unit) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + digits, *number);
  if (ec != std::errc()) return false;
  *unit = Trim(text.substr(digits));
  return true;
}

// ParseDuration and ParseFineDuration: a whole number and a unit, in microseconds; "us" is a
// unit only when `fine`.
Result<std::int64_t> ParseDurationMicros(std::string_view text, bool fine) {
  const std::string_view units = fine ? "us, ms, s, m or h" : "ms, s, m or h";
  std::string_view trimmed = Trim(text);
  std::uint64_t number = 0;
  std::string_view unit;
  if (!SplitNumber(trimmed, &number, &unit)) {
    return InvalidArgument(fmt::format(
        "invalid duration \"{}\": expected a whole number followed by {}", text, units));
  }
  std::uint64_t scale;  // microseconds per unit
  if (fine && unit == "us") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1000;
  } else if (unit.empty() || unit == "s") {
    scale = 1'000'000;
  } else if (unit == "m") {
    scale = 60'000'000;
  } else if (unit == "h") {
    scale = 3'600'000'000;
  } else {
    return InvalidArgument(
        fmt::format("invalid duration \"{}\": unknown unit \"{}\" (use {})", text, unit, units));
  }
  if (number > static_cast<std::uint64_t>(kMaxDurationMs) * 1000 / scale) {
    return InvalidArgument(fmt::format("invalid duration \"{}\": too large", text));
  }
  return static_cast<std::int64_t>(number * scale);
}

}  // namespace

Result<std::pair<std::int64_t, Duration>> ParseRate(std::string_view text) {
  std::string_view trimmed = Trim(text);
  std::size_t slash = trimmed.find('/');
  auto bad = [&] {
    return InvalidArgument(fmt::format(
        "\"{}\" is not a rate; expected N/UNIT like \"600/min\", \"10/s\" or \"100/10s\"", text));
  };
  if (slash == std::string_view::npos) return bad();
  std::string_view count = Trim(trimmed.substr(0, slash));
  std::string_view unit = Trim(trimmed.substr(slash + 1));
  std::int64_t n = 0;
  auto r = std::from_chars(count.data(), count.data() + count.size(), n);
  if (r.ec != std::errc() || r.ptr != count.data() + count.size() || n <= 0) return bad();
  static const std::pair<std::string_view, std::int64_t> kUnits[] = {
      {"s", 1'000},      {"sec", 1'000},     {"second", 1'000}, {"m", 60'000},
      {"min", 60'000},   {"minute", 60'000}, {"h", 3'600'000},  {"hour", 3'600'000},
      {"d", 86'400'000}, {"day", 86'400'000}};
  for (const auto& [name, ms] : kUnits) {
    if (unit == name) return std::pair(n, Duration(ms));
  }
  auto period = ParseDuration(unit);
  if (!period.ok() || period->count() <= 0) return bad();
  return std::pair(n, *period);
}

Result<Duration> ParseDuration(std::string_view text) {
  auto us = ParseDurationMicros(text, false);
  if (!us.ok()) return us.status();
  return Duration(*us / 1000);  // every unit but "us" is whole milliseconds
}

Result<std::chrono::microseconds> ParseFineDuration(std::string_view text) {
  auto us = ParseDurationMicros(text, true);
  if (!us.ok()) return us.status();
  return std::chrono::microseconds(*us);
}

Result<std::size_t> ParseSize(std::string_view text) {
  std::string_view trimmed = Trim(text);
  std::uint64_t number = 0;
  std::string_view unit;
  if (!SplitNumber(trimmed, &number, &unit)) {
    return InvalidArgument(
        fmt::format("invalid size \"{}\": expected a whole number and an optional unit", text));
  }
  std::string lower;
  for (char c : unit) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static constexpr std::pair<std::string_view, std::uint64_t> kUnits[] = {
      {"", 1},
      {"b", 1},
      {"kb", 1000},
      {"mb", 1000 * 1000},
      {"gb", 1000 * 1000 * 1000},
      {"tb", std::uint64_t{1000} * 1000 * 1000 * 1000},
      {"kib", kKiB},
      {"mib", kMiB},
      {"gib", kGiB},
      {"tib", std::uint64_t{1024} * kGiB},
  };
  for (const auto& [name, scale] : kUnits) {
    if (lower != name) continue;
    if (number > std::numeric_limits<std::size_t>::max() / scale) {
      return InvalidArgument(fmt::format("invalid size \"{}\": too large", text));
    }
    return static_cast<std::size_t>(number * scale);
  }
  return InvalidArgument(fmt::format(
      "invalid size \"{}\": unknown unit \"{}\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
      text, unit));
}

Result<std::pair<std::string, unsigned short>> ParseListen(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return InvalidArgument(fmt::format("invalid listen address \"{}\": {}", text, why));
  };
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("missing ']' after IPv6 address");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (!rest.starts_with(':')) return bad("missing port; expected [V6]:PORT");
    port = rest.substr(1);
    // Hex digits, ':' and '.' (for embedded IPv4), and '%' with an alphanumeric zone id.
    bool v6_chars = std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == ':' || c == '.' || c == '%';
    });
    if (!host.empty() && (host.find(':') == std::string_view::npos || !v6_chars)) {
      return bad("invalid IPv6 address");
    }
  } else {
    std::size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("missing port; expected HOST:PORT");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return bad("an IPv6 address needs brackets, e.g. [::1]:8080");
    }
    bool host_chars = std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
    });
    if (!host_chars) return bad("invalid host");
  }
  if (host.empty()) return bad("empty host");
  if (port.empty()) return bad("missing port");
  if (!ValidPort(port)) return bad("port must be a number from 0 to 65535");
  unsigned value = 0;
  std::from_chars(port.data(), port.data() + port.size(), value);
  return std::pair<std::string, unsigned short>(std::string(host),
                                                static_cast<unsigned short>(value));
}

std::string RedactUrlPassword(std::string_view url) {
  constexpr std::string_view kMask = "********";
  std::string out(url);
  std::size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    std::size_t start = scheme + 3;
    std::size_t end = out.find_first_of("/?#", start);
    if (end == std::string::npos) end = out.size();
    std::size_t at = out.rfind('@', end - 1);
    if (at != std::string::npos && at >= start) {
      std::size_t colon = out.find(':', start);
      if (colon != std::string::npos && colon < at) {
        out.replace(colon + 1, at - colon - 1, kMask);
      }
    }
  }
  // password=... in the query string (libpq accepts it there too).
  std::size_t query = out.find('?');
  while (query != std::string::npos) {
    std::size_t key = query + 1;
    if (out.compare(key, 9, "password=") == 0) {
      std::size_t value = key + 9;
      std::size_t end = out.find('&', value);
      if (end == std::string::npos) end = out.size();
      out.replace(value, end - value, kMask);
      end = value + kMask.size();
      query = end < out.size() ? end : std::string::npos;
    } else {
      query = out.find('&', key);
    }
  }
  return out;
}

std::string FormatDuration(Duration d) {
  std::int64_t ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms % 60'000 == 0) return fmt::format("{}m", ms / 60'000);
  if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  return fmt::format("{}ms", ms);
}

std::string FormatFineDuration(std::chrono::microseconds d) {
  if (d.count() % 1000 != 0) return fmt::format("{}us", d.count());
  return FormatDuration(std::chrono::duration_cast<Duration>(d));
}

std::string FormatSize(std::size_t bytes) {
  if (bytes != 0) {
    if (bytes % kGiB == 0) return fmt::format("{}GiB", bytes / kGiB);
    if (bytes % kMiB == 0) return fmt::format("{}MiB", bytes / kMiB);
    if (bytes % kKiB == 0) return fmt::format("{}KiB", bytes / kKiB);
  }
  return std::to_string(bytes);
}

}  // namespace megaserve::core
