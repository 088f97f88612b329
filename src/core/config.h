// Configuration: one typed struct, filled in layers.
//
// Layers, each overriding the one before: built-in defaults, a TOML file (--config or
// MEGASERVE_CONFIG), MEGASERVE_* environment variables, then command-line flags. Every key has a
// descriptor (name, type, default, range, help, secret flag); unknown keys, wrong types and
// out-of-range values are errors naming the key and where the value came from, e.g.
// "server.threads: must be between 0 and 1024, got 5000 (from /etc/megaserve.toml:7)".
//
// Environment names are the key upper-cased with '.' turned into '_' and a MEGASERVE_ prefix:
// server.max_connections <- MEGASERVE_SERVER_MAX_CONNECTIONS.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace megaserve::core {

using Duration = std::chrono::milliseconds;

struct ServerConfig {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; [::1]:PORT for IPv6; port 0 = ephemeral
  int threads = 0;                        // I/O threads; 0 = one per core
  int backlog = 1024;
  int max_connections = 10000;                            // open connections across all threads
  std::size_t max_header_bytes = std::size_t{16} * 1024;  // request line + headers; larger gets 431
  std::size_t max_body_bytes = std::size_t{1024} * 1024;  // larger gets 413
  Duration header_timeout{10'000};  // to receive a whole request head; else 408
  Duration body_timeout{30'000};    // to receive the body once the head is in; else 408
  Duration idle_timeout{60'000};    // keep-alive wait for the next request
  Duration write_timeout{30'000};   // a client that stops reading is dropped
  Duration shutdown_delay{0};       // readiness false this long before listeners close
  Duration drain_timeout{30'000};   // in-flight requests get this long to finish

  bool operator==(const ServerConfig&) const = default;
};

struct CorsConfig {
  std::vector<std::string> allowed_origins;  // exact origins, or "*"; empty = CORS off
  std::vector<std::string> allowed_headers = {"authorization", "content-type", "idempotency-key",
                                              "x-request-id"};
  Duration max_age{600'000};  // preflight cache time (Access-Control-Max-Age)

  bool operator==(const CorsConfig&) const = default;
};

struct LogConfig {
  std::string level = "info";     // trace|debug|info|warn|error|off
  std::string format = "text";    // text|json (application log, to stderr)
  bool access = true;             // JSON access log lines
  double access_sample = 1.0;     // fraction of requests logged, 0..1 (errors always)
  std::string access_file = "-";  // "-" = stdout

  bool operator==(const LogConfig&) const = default;
};

struct MetricsConfig {
  bool enabled = true;       // serve GET /metrics
  std::string bearer_token;  // secret; when set, /metrics needs this bearer token
  std::vector<double> duration_buckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,    0.25,  0.5,    1,     2.5,  5,     10};

  bool operator==(const MetricsConfig&) const = default;
};

struct StoreConfig {
  // sqlite:///ABS/PATH.db, sqlite://REL/PATH.db, sqlite::memory:, postgresql://... (secret: may
  // hold a password). Empty = sqlite:///<data_dir>/megaserve.db.
  std::string url;
  int pool_size = 20;             // PostgreSQL connections kept open
  int max_overflow = 10;          // extra connections opened under load, closed when returned
  Duration pool_timeout{30'000};  // longest wait for a free connection
  bool pre_ping = true;           // check a pooled connection is alive before handing it out
  Duration recycle{3'600'000};    // connections older than this are replaced on checkout
  bool migrate_on_start = true;   // serve applies pending migrations at start-up

  bool operator==(const StoreConfig&) const = default;
};

struct JobsConfig {
  std::string queue = "default";  // queue the in-process workers of serve claim from
  int concurrency = 4;            // jobs serve runs at once (0 = no in-process workers)
  // Per-type caps on top of concurrency, "TYPE=N" each (e.g. "sleep=2").
  std::vector<std::string> type_concurrency;
  Duration lease{30'000};           // how long a claim holds a job without a heartbeat
  Duration heartbeat{1'000};        // lease renewal (and cancel check) interval per running job
  Duration poll_interval{1'000};    // idle claim poll; wake-ups come sooner (LISTEN/NOTIFY)
  Duration rescue_interval{5'000};  // how often expired leases are looked for

  bool operator==(const JobsConfig&) const = default;
};

struct WebhooksConfig {
  // Signing key shared with the receivers, "whsec_<base64>" (secret). Empty = jobs with a
  // webhook are refused.
  std::string secret;
  bool allow_private = false;              // allow RFC 1918 / ULA destinations
  std::vector<std::string> allowed_cidrs;  // always-allowed destinations, e.g. "127.0.0.1/32"
  Duration timeout{10'000};                // one delivery attempt, connect included
  // Waits before the 2nd, 3rd, ... attempt; each gets +-20% jitter. After the last, the
  // delivery fails for good.
  std::vector<std::string> retry_schedule = {"5s", "5m", "30m", "2h", "5h", "10h", "24h"};
  int concurrency = 8;  // deliveries in flight at once

  bool operator==(const WebhooksConfig&) const = default;
};

struct ModelsConfig {
  std::string dir;  // one folder per model (see models/repository.h); empty = <data_dir>/models
  std::size_t cache_bytes = std::size_t{8} * 1024 * 1024 * 1024;  // bound on loaded models' bytes

  bool operator==(const ModelsConfig&) const = default;
};

// [gateway]: who may call, and the policy every route starts from.
struct GatewayConfig {
  // "auto": keys optional when server.listen is a loopback address, required otherwise;
  // "required": every request outside the system routes needs a key; "optional": anonymous
  // requests pass (a bad key is still refused).
  std::string auth = "auto";
  // Allow binding a non-loopback address while auth is optional or no key exists yet.
  bool allow_unauthenticated = false;
  std::string rate_limit = "1200/min";     // default per key (per IP when anonymous); "" = none
  std::string rate_limit_store = "local";  // local | redis (global across gateways)
  Duration key_cache_ttl{500};  // how long a verified key is trusted before the store is asked

  bool operator==(const GatewayConfig&) const = default;
};

// [cache]: the response cache.
struct CacheConfig {
  std::size_t memory_bytes = std::size_t{256} * 1024 * 1024;  // L1 budget across shards
  bool redis = true;         // use Redis (redis.url) as the shared L2 tier when configured
  double xfetch_beta = 1.0;  // probabilistic early refresh; 0 = off

  bool operator==(const CacheConfig&) const = default;
};

// [redis]: the shared cache and rate-limit store; optional.
struct RedisConfig {
  std::string url;        // secret; redis://[:password@]host:port/db; empty = no Redis
  Duration timeout{250};  // per command; a slower Redis counts as down
  Duration connect_timeout{1'000};

  bool operator==(const RedisConfig&) const = default;
};

// [market_data]: candles kept in sync from the exchanges by `serve` (see forecast/market_sync.h).
struct MarketDataConfig {
  // "SOURCE:SYMBOL:INTERVAL" each, e.g. "binance:BTCUSDT:4h"; empty = no periodic sync.
  std::vector<std::string> sync;
  Duration sync_interval{60'000};  // between two rounds over every series
  std::string binance_url = "https://api.binance.com";
  std::string coinbase_url = "https://api.exchange.coinbase.com";
  int binance_weight_budget = 1000;  // request weight per minute (Binance allows 6000)
  int backfill_days = 30;            // how far back an empty series is filled

  bool operator==(const MarketDataConfig&) const = default;
};

// One [[routes]] table: the gateway policy of a route pattern (see gateway/route_policy.h).
struct RouteConfig {
  std::string pattern = "*";  // exact route pattern, a prefix ending in '*', or "*" for all
  std::string route;          // the route pattern a policy was applied to (set by the gateway)
  std::vector<std::string> filters;  // in order; names of gateway filters
  std::string scope;                 // required API-key scope; "" = any valid key
  // Rate limit: `rate_limit` requests per `rate_period`, bursts up to the whole limit;
  // 0 = unlimited. -1 = gateway.rate_limit.
  std::int64_t rate_limit = -1;
  Duration rate_period{60'000};
  Duration cache_ttl{0};  // 0 = not cached
  Duration stale_while_revalidate{0};
  Duration stale_if_error{0};
  bool cache_post = false;        // POST responses are cacheable, keyed by body too
  std::vector<std::string> vary;  // request headers (lower case) that select a variant
  std::string upstream;           // [[upstreams]] name; "" = served in-process
  Duration timeout{30'000};
  std::string origin;  // "file:line" of the table, or "default"

  // The route pattern for metrics labels and cache keys: `route` once set, else `pattern`.
  const std::string& RouteLabel() const { return route.empty() ? pattern : route; }

  bool operator==(const RouteConfig&) const = default;
};

// One [[upstreams]] table: a named group of equivalent worker services.
struct UpstreamConfig {
  std::string name;
  std::vector<std::string> targets;       // base URLs: "http://10.0.0.5:8081"
  std::string balance = "least_request";  // or "round_robin"
  std::string health_path = "/readyz";
  Duration health_interval{5'000};
  Duration health_timeout{1'000};
  int eject_after_5xx = 5;         // consecutive 5xx responses before a target is ejected
  Duration base_ejection{30'000};  // ejection length, times the number of ejections so far
  double retry_budget = 0.2;       // retries allowed as a fraction of requests in flight
  int min_retries = 3;             // retries always allowed regardless of the budget

  bool operator==(const UpstreamConfig&) const = default;
};

struct Config {
  std::string data_dir = "./data";  // jobs database, artifacts, models
  ServerConfig server;
  CorsConfig cors;
  LogConfig log;
  MetricsConfig metrics;
  StoreConfig store;
  JobsConfig jobs;
  WebhooksConfig webhooks;
  ModelsConfig models;
  GatewayConfig gateway;
  CacheConfig cache;
  RedisConfig redis;
  MarketDataConfig market_data;
  std::vector<RouteConfig> routes;        // [[routes]] tables, in file order
  std::vector<UpstreamConfig> upstreams;  // [[upstreams]] tables

  bool operator==(const Config&) const = default;
};

// Where a key's effective value came from: "default", "FILE:LINE", "env MEGASERVE_X",
// "flag --listen".
using Provenance = std::map<std::string, std::string>;

struct LoadedConfig {
  Config config;
  Provenance provenance;  // one entry per key
};

struct ConfigSources {
  std::string file = {};  // TOML path; empty = none. A named file that does not exist is an error.
  std::vector<std::pair<std::string, std::string>> env = {};  // NAME=VALUE (usually environ)
  // Flag overrides, in order: {key, value, flag name for messages}. Values are parsed from text
  // as the environment's are.
  struct Override {
    std::string key;
    std::string value;
    std::string origin;  // e.g. "flag --listen" or "flag --set"
  };
  std::vector<Override> overrides = {};
};

// Builds the configuration from its layers. Errors name the key and where the value came from.
Result<LoadedConfig> LoadConfig(const ConfigSources& sources);

// The process environment as NAME=VALUE pairs, for ConfigSources::env.
std::vector<std::pair<std::string, std::string>> ProcessEnvironment();

// The effective configuration as TOML, each key followed by a comment naming its source.
// Secret values are printed as "********" (empty secrets as "").
std::string PrintConfig(const LoadedConfig& loaded);

// All keys with their type and one-line help, for --help and docs.
struct KeyInfo {
  std::string key;
  std::string type;  // "string", "int", "float", "bool", "duration", "size", "string list",
                     // "float list"
  std::string help;
  bool secret = false;
  std::string default_value;  // the built-in default as a TOML value; secrets masked
};
std::vector<KeyInfo> ConfigKeys();

// Parses "250ms", "10s", "2m", "1h" (or a bare integer of seconds) into a Duration.
Result<Duration> ParseDuration(std::string_view text);
// ParseDuration with whole microseconds ("250us") as a unit too, for the few settings finer than
// a millisecond (a model's batching delay).
Result<std::chrono::microseconds> ParseFineDuration(std::string_view text);
// Parses "512", "16KiB", "1MiB", "2GiB", "64KB" (KB = 1000) into bytes.
Result<std::size_t> ParseSize(std::string_view text);
// Splits "HOST:PORT" / "[V6]:PORT" into host and port; port 0..65535.
// An IPv6 host is returned without its brackets ("[::1]:80" -> {"::1", 80}).
Result<std::pair<std::string, unsigned short>> ParseListen(std::string_view text);

// The URL with any password replaced by "********": the userinfo password of
// "scheme://user:password@host/..." and a "password=" query parameter. Other text is unchanged.
std::string RedactUrlPassword(std::string_view url);

// Parses a rate "N/UNIT" (UNIT: s, min, h, d, or a duration like "10s") into N and the period.
Result<std::pair<std::int64_t, Duration>> ParseRate(std::string_view text);

// Formats a duration in the largest unit that divides it exactly: "1h", "2m", "10s", "250ms".
std::string FormatDuration(Duration d);
// FormatDuration for whole milliseconds, else microseconds ("250us"): what ParseFineDuration
// reads back.
std::string FormatFineDuration(std::chrono::microseconds d);
// Formats a byte count as "16KiB", "1MiB", "2GiB" when exact, else as plain bytes ("1000").
std::string FormatSize(std::size_t bytes);

}  // namespace megaserve::core
