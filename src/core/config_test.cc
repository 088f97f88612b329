#include "core/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

namespace megaserve::core {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// A file in the temporary directory holding `content`, removed when the object goes away.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    static int counter = 0;
    path_ = (std::filesystem::temp_directory_path() /
             ("megaserve_config_test_" + std::to_string(getpid()) + "_" +
              std::to_string(counter++) + ".toml"))
                .string();
    std::ofstream(path_) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ErrorOf(const Result<LoadedConfig>& result) {
  EXPECT_FALSE(result.ok());
  return result.status().message();
}

std::filesystem::path SourceDir() {
  if (const char* dir = std::getenv("MEGASERVE_SOURCE_DIR"); dir && *dir) return dir;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

TEST(ConfigTest, DefaultsWhenNoSources) {
  auto loaded = LoadConfig({});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config, Config{});
  EXPECT_EQ(loaded->config.server.listen, "127.0.0.1:8080");
  EXPECT_EQ(loaded->config.server.header_timeout, Duration(10'000));
  EXPECT_EQ(loaded->provenance.size(), ConfigKeys().size());
  for (const auto& [key, source] : loaded->provenance) EXPECT_EQ(source, "default") << key;
}

TEST(ConfigTest, FileOverridesDefaults) {
  TempFile file(R"(data_dir = "/var/lib/megaserve"
metrics.duration_buckets = [0.1, 1, 10]

[server]
listen = "0.0.0.0:9000"
threads = 2
backlog = 128
max_header_bytes = "32KiB"
max_body_bytes = 2048
header_timeout = "250ms"
idle_timeout = 5

[cors]
allowed_origins = ["https://app.example.com", "http://localhost:3000"]

[log]
level = "debug"
access_sample = 0
)");
  auto loaded = LoadConfig({.file = file.path()});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const Config& c = loaded->config;
  EXPECT_EQ(c.data_dir, "/var/lib/megaserve");
  EXPECT_EQ(c.server.backlog, 128);
  EXPECT_EQ(c.server.listen, "0.0.0.0:9000");
  EXPECT_EQ(c.server.threads, 2);
  EXPECT_EQ(c.server.max_header_bytes, 32u * 1024);
  EXPECT_EQ(c.server.max_body_bytes, 2048u);
  EXPECT_EQ(c.server.header_timeout, Duration(250));
  EXPECT_EQ(c.server.idle_timeout, Duration(5000));
  EXPECT_THAT(c.cors.allowed_origins,
              ::testing::ElementsAre("https://app.example.com", "http://localhost:3000"));
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_EQ(c.log.access_sample, 0.0);
  EXPECT_THAT(c.metrics.duration_buckets, ::testing::ElementsAre(0.1, 1.0, 10.0));
  // Keys the file does not name keep their defaults.
  EXPECT_EQ(c.server.max_connections, 10000);

  EXPECT_EQ(loaded->provenance.at("data_dir"), file.path() + ":1");
  EXPECT_EQ(loaded->provenance.at("metrics.duration_buckets"), file.path() + ":2");
  EXPECT_EQ(loaded->provenance.at("server.threads"), file.path() + ":6");
  EXPECT_EQ(loaded->provenance.at("server.max_connections"), "default");
}

TEST(ConfigTest, EnvironmentOverridesFile) {
  TempFile file("[server]\nthreads = 2\nbacklog = 64\n");
  ConfigSources sources{.file = file.path(),
                        .env = {{"PATH", "/bin"},
                                {"MEGASERVE_SERVER_THREADS", "4"},
                                {"MEGASERVE_LOG_ACCESS", "off"},
                                {"MEGASERVE_CORS_ALLOWED_HEADERS", "x-a, x-b,,x-c"},
                                {"MEGASERVE_METRICS_DURATION_BUCKETS", "0.5,1,2"},
                                {"MEGASERVE_SERVER_BODY_TIMEOUT", "2m"},
                                {"MEGASERVE_SERVER_MAX_BODY_BYTES", "64KB"}}};
  auto loaded = LoadConfig(sources);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const Config& c = loaded->config;
  EXPECT_EQ(c.server.threads, 4);
  EXPECT_EQ(c.server.backlog, 64);
  EXPECT_FALSE(c.log.access);
  EXPECT_THAT(c.cors.allowed_headers, ::testing::ElementsAre("x-a", "x-b", "x-c"));
  EXPECT_THAT(c.metrics.duration_buckets, ::testing::ElementsAre(0.5, 1.0, 2.0));
  EXPECT_EQ(c.server.body_timeout, Duration(120'000));
  EXPECT_EQ(c.server.max_body_bytes, 64'000u);
  EXPECT_EQ(loaded->provenance.at("server.threads"), "env MEGASERVE_SERVER_THREADS");
  EXPECT_EQ(loaded->provenance.at("server.backlog"), file.path() + ":3");
}

TEST(ConfigTest, OverridesBeatEnvironment) {
  ConfigSources sources{
      .env = {{"MEGASERVE_SERVER_THREADS", "4"}, {"MEGASERVE_SERVER_LISTEN", "0.0.0.0:1"}},
      .overrides = {{"server.threads", "8", "flag --threads"},
                    {"log.level", "warn", "flag --set"}}};
  auto loaded = LoadConfig(sources);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config.server.threads, 8);
  EXPECT_EQ(loaded->config.server.listen, "0.0.0.0:1");
  EXPECT_EQ(loaded->config.log.level, "warn");
  EXPECT_EQ(loaded->provenance.at("server.threads"), "flag --threads");
  EXPECT_EQ(loaded->provenance.at("log.level"), "flag --set");
  EXPECT_EQ(loaded->provenance.at("server.listen"), "env MEGASERVE_SERVER_LISTEN");
}

TEST(ConfigTest, BooleanTextForms) {
  for (const char* yes : {"true", "1", "yes", "on", "TRUE", " On "}) {
    auto loaded = LoadConfig({.env = {{"MEGASERVE_METRICS_ENABLED", "false"}},
                              .overrides = {{"metrics.enabled", yes, "flag --set"}}});
    ASSERT_TRUE(loaded.ok()) << yes;
    EXPECT_TRUE(loaded->config.metrics.enabled) << yes;
  }
  for (const char* no : {"false", "0", "no", "off"}) {
    auto loaded = LoadConfig({.env = {{"MEGASERVE_METRICS_ENABLED", no}}});
    ASSERT_TRUE(loaded.ok()) << no;
    EXPECT_FALSE(loaded->config.metrics.enabled) << no;
  }
  auto bad = LoadConfig({.env = {{"MEGASERVE_METRICS_ENABLED", "maybe"}}});
  EXPECT_THAT(ErrorOf(bad), HasSubstr("metrics.enabled: expected a boolean"));
  EXPECT_THAT(ErrorOf(bad), HasSubstr("(from env MEGASERVE_METRICS_ENABLED)"));
}

TEST(ConfigTest, EmptyEnvironmentListClearsIt) {
  auto loaded = LoadConfig({.env = {{"MEGASERVE_CORS_ALLOWED_HEADERS", ""}}});
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(loaded->config.cors.allowed_headers.empty());
}

TEST(ConfigTest, UnknownKeyInFileNamesPositionAndSuggests) {
  TempFile file("[server]\nthread = 2\n");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_EQ(error, "unknown key \"server.thread\" (from " + file.path() +
                       ":2:1); did you mean server.threads?");
}

TEST(ConfigTest, UnknownDottedAndTopLevelKeys) {
  TempFile file("listen = \"0.0.0.0:80\"\nserver.bogus_thing = 1\n");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_THAT(error, HasSubstr("unknown key \"listen\" (from " + file.path() + ":1:1)"));
  EXPECT_THAT(error, HasSubstr("did you mean server.listen?"));
  EXPECT_THAT(error, HasSubstr("unknown key \"server.bogus_thing\" (from " + file.path() + ":2:"));
}

TEST(ConfigTest, UnknownTableIsAnError) {
  TempFile file("[sever]\nthreads = 2\n\n[tls]\ncert = \"x\"\n");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_THAT(error, HasSubstr("unknown key \"sever\" (from " + file.path() + ":1:"));
  EXPECT_THAT(error, HasSubstr("did you mean server?"));
  EXPECT_THAT(error, HasSubstr("unknown key \"tls\""));
}

TEST(ConfigTest, UnknownNestedTableInsideSection) {
  TempFile file("[server.tls]\ncert = \"x\"\n");
  EXPECT_THAT(ErrorOf(LoadConfig({.file = file.path()})),
              HasSubstr("unknown key \"server.tls\" (from " + file.path() + ":1:"));
}

TEST(ConfigTest, WrongTypeNamesKeyAndPosition) {
  TempFile file("[server]\nthreads = \"two\"\n");
  EXPECT_EQ(ErrorOf(LoadConfig({.file = file.path()})),
            "server.threads: expected an integer, got a string (from " + file.path() + ":2:11)");
}

TEST(ConfigTest, WrongTypesOfEachKind) {
  TempFile file(R"(
server = 3
[log]
access = "yes"
[cors]
allowed_origins = ["https://a.example", 7]
max_age = 1.5
)");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_THAT(
      error, HasSubstr("server: expected a table, got an integer (from " + file.path() + ":2:10)"));
  EXPECT_THAT(error, HasSubstr("log.access: expected a boolean, got a string (from " + file.path() +
                               ":4:10)"));
  EXPECT_THAT(error, HasSubstr("cors.allowed_origins: expected an array of strings, got an array "
                               "containing an integer (from " +
                               file.path() + ":6:41)"));
  EXPECT_THAT(error, HasSubstr("cors.max_age: expected a duration"));
  EXPECT_THAT(error, HasSubstr("got a float (from " + file.path() + ":7:11)"));
  // Reported in file order.
  EXPECT_LT(error.find("server:"), error.find("log.access:"));
  EXPECT_LT(error.find("log.access:"), error.find("cors.allowed_origins:"));
}

TEST(ConfigTest, OutOfRangeInFile) {
  TempFile file("[server]\n\nthreads = 5000\n");
  EXPECT_EQ(ErrorOf(LoadConfig({.file = file.path()})),
            "server.threads: must be between 0 and 1024, got 5000 (from " + file.path() + ":3)");
}

TEST(ConfigTest, OutOfRangeInEnvironment) {
  EXPECT_EQ(ErrorOf(LoadConfig({.env = {{"MEGASERVE_SERVER_THREADS", "5000"}}})),
            "server.threads: must be between 0 and 1024, got 5000 (from env "
            "MEGASERVE_SERVER_THREADS)");
}

TEST(ConfigTest, ModelsSection) {
  TempFile file("[models]\ndir = \"/srv/models\"\ncache_bytes = \"512MiB\"\n");
  auto loaded = LoadConfig({.file = file.path()});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config.models.dir, "/srv/models");
  EXPECT_EQ(loaded->config.models.cache_bytes, std::size_t{512} * 1024 * 1024);
  EXPECT_EQ(Config{}.models.cache_bytes, std::size_t{8} * 1024 * 1024 * 1024);
  auto zero = LoadConfig({.env = {{"MEGASERVE_MODELS_CACHE_BYTES", "0"}}});
  ASSERT_FALSE(zero.ok());
  EXPECT_THAT(zero.status().message(), ::testing::HasSubstr("models.cache_bytes"));
}

TEST(ConfigTest, MarketDataSection) {
  EXPECT_TRUE(Config{}.market_data.sync.empty());  // off by default
  TempFile file(
      "[market_data]\nsync = [\"binance:BTCUSDT:4h\", \"coinbase:BTC-USD:1h\"]\n"
      "sync_interval = \"5m\"\nbinance_url = \"http://127.0.0.1:9\"\n");
  auto loaded = LoadConfig({.file = file.path()});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_THAT(loaded->config.market_data.sync,
              ::testing::ElementsAre("binance:BTCUSDT:4h", "coinbase:BTC-USD:1h"));
  EXPECT_EQ(loaded->config.market_data.sync_interval, std::chrono::minutes(5));
  EXPECT_EQ(loaded->config.market_data.binance_url, "http://127.0.0.1:9");
  for (const char* bad : {"binance:BTCUSDT", "kraken:BTCUSD:1h", "binance::4h", "binance:A:1h:x",
                          ":BTCUSDT:4h", "binance:BTCUSDT:"}) {
    auto refused = LoadConfig({.overrides = {{"market_data.sync", bad, "flag --set"}}});
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_THAT(refused.status().message(), ::testing::HasSubstr("market_data.sync")) << bad;
  }
  auto url = LoadConfig({.env = {{"MEGASERVE_MARKET_DATA_COINBASE_URL", "ftp://x"}}});
  ASSERT_FALSE(url.ok());
  EXPECT_THAT(url.status().message(), ::testing::HasSubstr("market_data.coinbase_url"));
}

TEST(ConfigTest, RangesOfOtherTypes) {
  auto check = [](const std::string& key, const std::string& value, const std::string& want) {
    auto loaded = LoadConfig({.overrides = {{key, value, "flag --set"}}});
    std::string error = ErrorOf(loaded);
    EXPECT_THAT(error, HasSubstr(key + ": " + want)) << value;
    EXPECT_THAT(error, HasSubstr("(from flag --set)")) << value;
  };
  check("server.threads", "99999999999", "must be between 0 and 1024, got 99999999999");
  check("server.backlog", "0", "must be between 1 and 65535, got 0");
  check("server.max_connections", "1000001", "must be between 1 and 1000000, got 1000001");
  check("server.max_header_bytes", "2MiB", "must be between 1KiB and 1MiB, got 2MiB");
  check("server.max_header_bytes", "1000", "must be between 1KiB and 1MiB, got 1000");
  check("server.max_body_bytes", "17GiB", "must be between 0 and 16GiB, got 17GiB");
  check("server.header_timeout", "0s", "must be greater than 0s, got 0s");
  check("server.write_timeout", "0", "must be greater than 0s, got 0s");
  check("log.access_sample", "1.5", "must be between 0 and 1, got 1.5");
  check("log.access_sample", "nan", "must be a finite number, got nan");
  check("log.level", "verbose",
        "must be one of trace, debug, info, warn, error, off, got \"verbose\"");
  check("log.format", "xml", "must be one of text, json, got \"xml\"");
  check("metrics.duration_buckets", "1,0.5",
        "buckets must be strictly increasing, got 0.5 after 1");
  check("metrics.duration_buckets", "1,1", "buckets must be strictly increasing, got 1 after 1");
  check("metrics.duration_buckets", "", "must not be empty");
  check("server.listen", "localhost", "invalid listen address \"localhost\": missing port");
  check("data_dir", "", "must not be empty");
  check("cors.allowed_origins", "https://a.example/app", "invalid origin");
  check("cors.allowed_headers", "x y", "invalid header name \"x y\"");
  check("server.threads", "two", "expected an integer, got \"two\"");
  check("server.idle_timeout", "10x", "invalid duration \"10x\": unknown unit \"x\"");
}

TEST(ConfigTest, BoundaryValuesAreAccepted) {
  auto loaded = LoadConfig({.overrides = {{"server.threads", "1024", "a"},
                                          {"server.backlog", "65535", "a"},
                                          {"server.max_connections", "1000000", "a"},
                                          {"server.max_header_bytes", "1KiB", "a"},
                                          {"server.max_body_bytes", "16GiB", "a"},
                                          {"server.shutdown_delay", "0", "a"},
                                          {"server.drain_timeout", "0s", "a"},
                                          {"log.access_sample", "0", "a"},
                                          {"server.listen", "[::1]:0", "a"},
                                          {"cors.allowed_origins", "*", "a"}}});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config.server.max_body_bytes, std::size_t{16} << 30);
}

TEST(ConfigTest, CorsOrigins) {
  for (const char* good :
       {"*", "https://a.example", "http://localhost:3000", "http://[::1]:8080", "app+x://host"}) {
    EXPECT_TRUE(LoadConfig({.overrides = {{"cors.allowed_origins", good, "x"}}}).ok()) << good;
  }
  for (const char* bad : {"a.example", "https://", "https://a.example/", "https://a:99999",
                          "https://a.example?x", "://a", "1http://a"}) {
    EXPECT_FALSE(LoadConfig({.overrides = {{"cors.allowed_origins", bad, "x"}}}).ok()) << bad;
  }
}

TEST(ConfigTest, OutOfRangeReportsTheLayerThatSuppliedIt) {
  // A bad file value is an error even though the environment would replace it.
  TempFile file("[server]\nthreads = -1\n");
  auto loaded = LoadConfig({.file = file.path(), .env = {{"MEGASERVE_SERVER_THREADS", "2"}}});
  EXPECT_THAT(ErrorOf(loaded), HasSubstr("(from " + file.path() + ":2)"));
}

TEST(ConfigTest, ReportsEveryError) {
  auto loaded = LoadConfig(
      {.env = {{"MEGASERVE_SERVER_THREADS", "5000"}, {"MEGASERVE_SERVER_BACKLOG", "0"}}});
  std::string error = ErrorOf(loaded);
  EXPECT_THAT(error, HasSubstr("server.threads"));
  EXPECT_THAT(error, HasSubstr("server.backlog"));
}

TEST(ConfigTest, SyntaxErrorNamesFileLineAndColumn) {
  TempFile file("[server]\nthreads = 2\nlisten = \n");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_THAT(error, HasSubstr(file.path() + ":3:"));
  EXPECT_GT(error.size(), file.path().size() + 6);  // toml++'s description follows
}

TEST(ConfigTest, DuplicateKeyIsASyntaxError) {
  TempFile file("[server]\nthreads = 2\nthreads = 3\n");
  EXPECT_THAT(ErrorOf(LoadConfig({.file = file.path()})), HasSubstr(file.path() + ":3:"));
}

TEST(ConfigTest, MissingFileIsAnError) {
  auto loaded = LoadConfig({.file = "/nonexistent/megaserve.toml"});
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(loaded.status().message(), HasSubstr("/nonexistent/megaserve.toml"));
}

TEST(ConfigTest, UnknownEnvironmentVariableIsRejected) {
  EXPECT_EQ(ErrorOf(LoadConfig({.env = {{"MEGASERVE_FOO", "1"}}})),
            "unknown environment variable MEGASERVE_FOO");
  EXPECT_THAT(ErrorOf(LoadConfig({.env = {{"MEGASERVE_SERVER_THREAD", "1"}}})),
              HasSubstr("did you mean MEGASERVE_SERVER_THREADS?"));
}

TEST(ConfigTest, AllowedNonKeyEnvironmentVariables) {
  auto loaded = LoadConfig({.env = {{"MEGASERVE_CONFIG", "/etc/megaserve.toml"},
                                    {"MEGASERVE_BINARY", "/build/megaserve"},
                                    {"MEGASERVE_SOURCE_DIR", "/src"},
                                    {"MEGASERVE_TORCH_PLUGIN", "/opt/libmegaserve_torch.so"},
                                    {"MEGASERVE_FORECAST_KERNEL", "avx2"},
                                    {"HOME", "/root"},
                                    {"MEGASERVEX", "not ours"}}});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config, Config{});
}

TEST(ConfigTest, UnknownOverrideKeyNamesOrigin) {
  EXPECT_EQ(ErrorOf(LoadConfig({.overrides = {{"server.thread", "2", "flag --set"}}})),
            "unknown key \"server.thread\" (from flag --set); did you mean server.threads?");
}

TEST(ConfigTest, ProcessEnvironmentListsVariables) {
  ASSERT_EQ(setenv("MEGASERVE_CONFIG_TEST_PROBE", "a=b", 1), 0);
  auto env = ProcessEnvironment();
  unsetenv("MEGASERVE_CONFIG_TEST_PROBE");
  EXPECT_THAT(env, ::testing::Contains(
                       std::pair<std::string, std::string>("MEGASERVE_CONFIG_TEST_PROBE", "a=b")));
}

TEST(ParseDurationTest, AcceptsUnits) {
  EXPECT_EQ(*ParseDuration("250ms"), Duration(250));
  EXPECT_EQ(*ParseDuration("10s"), Duration(10'000));
  EXPECT_EQ(*ParseDuration("2m"), Duration(120'000));
  EXPECT_EQ(*ParseDuration("1h"), Duration(3'600'000));
  EXPECT_EQ(*ParseDuration("0"), Duration(0));
  EXPECT_EQ(*ParseDuration("30"), Duration(30'000));
  EXPECT_EQ(*ParseDuration(" 5 s "), Duration(5'000));
}

TEST(ParseDurationTest, RejectsBadInput) {
  for (const char* bad :
       {"", "s", "10x", "-5s", "1.5s", "10sec", "1h30m", "99999999999999999999", "2000000h"}) {
    auto d = ParseDuration(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(d.status().message(), HasSubstr("invalid duration")) << bad;
  }
}

TEST(ParseDurationTest, FineDurationsTakeMicrosecondsToo) {
  using std::chrono::microseconds;
  EXPECT_EQ(*ParseFineDuration("250us"), microseconds(250));
  EXPECT_EQ(*ParseFineDuration(" 0us "), microseconds(0));
  EXPECT_EQ(*ParseFineDuration("5 us"), microseconds(5));  // spaces before a unit, as in "5 s"
  EXPECT_EQ(*ParseFineDuration("2ms"), microseconds(2000));
  EXPECT_EQ(*ParseFineDuration("1s"), microseconds(1'000'000));
  EXPECT_EQ(*ParseFineDuration("30"), microseconds(30'000'000));
  EXPECT_EQ(*ParseFineDuration("1000000h"), microseconds(int64_t{3'600'000'000'000'000}));
  for (const char* bad : {"us", "-5us", "1.5us", "abc", "5 parsecs", "3600000000000001us"}) {
    auto d = ParseFineDuration(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_THAT(d.status().message(), HasSubstr("invalid duration")) << bad;
  }
  // Plain durations stay whole milliseconds.
  EXPECT_THAT(ParseDuration("250us").status().message(), HasSubstr("unknown unit \"us\""));
  for (int64_t us : {0, 250, 1500, 2000, 1'000'000}) {
    EXPECT_EQ(*ParseFineDuration(FormatFineDuration(microseconds(us))), microseconds(us)) << us;
  }
  EXPECT_EQ(FormatFineDuration(microseconds(250)), "250us");
  EXPECT_EQ(FormatFineDuration(microseconds(2000)), "2ms");
}

TEST(ParseSizeTest, AcceptsUnits) {
  EXPECT_EQ(*ParseSize("512"), 512u);
  EXPECT_EQ(*ParseSize("512B"), 512u);
  EXPECT_EQ(*ParseSize("16KiB"), 16u * 1024);
  EXPECT_EQ(*ParseSize("1MiB"), 1024u * 1024);
  EXPECT_EQ(*ParseSize("2GiB"), std::size_t{2} << 30);
  EXPECT_EQ(*ParseSize("64KB"), 64'000u);
  EXPECT_EQ(*ParseSize("3MB"), 3'000'000u);
  EXPECT_EQ(*ParseSize("16kib"), 16u * 1024);
}

TEST(ParseSizeTest, RejectsBadInput) {
  for (const char* bad : {"", "KiB", "16XB", "-1", "1.5MiB", "16K", "99999999999TiB"}) {
    auto n = ParseSize(bad);
    ASSERT_FALSE(n.ok()) << bad;
    EXPECT_THAT(n.status().message(), HasSubstr("invalid size")) << bad;
  }
}

TEST(ParseListenTest, AcceptsHostAndPort) {
  using HostPort = std::pair<std::string, unsigned short>;
  EXPECT_EQ(*ParseListen("127.0.0.1:8080"), HostPort("127.0.0.1", 8080));
  EXPECT_EQ(*ParseListen("0.0.0.0:80"), HostPort("0.0.0.0", 80));
  EXPECT_EQ(*ParseListen("[::1]:8080"), HostPort("::1", 8080));
  EXPECT_EQ(*ParseListen("localhost:0"), HostPort("localhost", 0));
  EXPECT_EQ(*ParseListen("api.example.com:65535"), HostPort("api.example.com", 65535));
}

TEST(ParseListenTest, RejectsBadInput) {
  for (const char* bad :
       {"127.0.0.1", "127.0.0.1:", ":8080", "localhost:65536", "localhost:-1", "localhost:http",
        "::1:8080", "[::1]8080", "[::1", "[]:80", "bad host:80", "host:080000"}) {
    auto parsed = ParseListen(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(FormatTest, DurationsAndSizes) {
  EXPECT_EQ(FormatDuration(Duration(0)), "0s");
  EXPECT_EQ(FormatDuration(Duration(250)), "250ms");
  EXPECT_EQ(FormatDuration(Duration(1500)), "1500ms");
  EXPECT_EQ(FormatDuration(Duration(10'000)), "10s");
  EXPECT_EQ(FormatDuration(Duration(120'000)), "2m");
  EXPECT_EQ(FormatDuration(Duration(7'200'000)), "2h");
  EXPECT_EQ(FormatSize(0), "0");
  EXPECT_EQ(FormatSize(1000), "1000");
  EXPECT_EQ(FormatSize(16 * 1024), "16KiB");
  EXPECT_EQ(FormatSize(1024 * 1024), "1MiB");
  EXPECT_EQ(FormatSize(std::size_t{16} << 30), "16GiB");
}

TEST(PrintConfigTest, LayoutAndSources) {
  auto loaded = LoadConfig({.env = {{"MEGASERVE_SERVER_THREADS", "3"}}});
  ASSERT_TRUE(loaded.ok());
  std::string printed = PrintConfig(*loaded);
  EXPECT_THAT(printed, HasSubstr("data_dir = \"./data\"  # default\n"));
  EXPECT_THAT(printed, HasSubstr("\n[server]\nlisten = \"127.0.0.1:8080\"  # default\n"));
  EXPECT_THAT(printed, HasSubstr("threads = 3  # env MEGASERVE_SERVER_THREADS\n"));
  EXPECT_THAT(printed, HasSubstr("max_header_bytes = \"16KiB\"  # default\n"));
  EXPECT_THAT(printed, HasSubstr("header_timeout = \"10s\"  # default\n"));
  EXPECT_THAT(printed, HasSubstr("access_sample = 1.0  # default\n"));
  EXPECT_THAT(printed, HasSubstr("max_age = \"10m\"  # default\n"));
  // Top-level keys come before the first table, and each section appears once.
  EXPECT_LT(printed.find("data_dir"), printed.find("[server]"));
  for (const char* section : {"[server]", "[cors]", "[log]", "[metrics]"}) {
    EXPECT_NE(printed.find(section), std::string::npos) << section;
    EXPECT_EQ(printed.find(section), printed.rfind(section)) << section;
  }
}

TEST(PrintConfigTest, RoundTripsThroughToml) {
  TempFile file(R"(
data_dir = "/data/with \"quotes\" and \\ backslash"
[server]
listen = "[::1]:0"
threads = 7
max_body_bytes = 12345
max_header_bytes = "2KiB"
body_timeout = "1500ms"
shutdown_delay = "2h"
[cors]
allowed_origins = ["*"]
allowed_headers = []
max_age = 0
[log]
format = "json"
access_sample = 0.125
access_file = "/var/log/access.log"
[metrics]
enabled = false
duration_buckets = [1e-05, 0.1, 0.3, 7]
)");
  auto first = LoadConfig({.file = file.path(),
                           .env = {{"MEGASERVE_LOG_LEVEL", "error"}},
                           .overrides = {{"server.backlog", "77", "flag --set"}}});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_NE(first->config, Config{});

  std::string printed = PrintConfig(*first);
  toml::table parsed;
  ASSERT_NO_THROW(parsed = toml::parse(printed)) << printed;
  EXPECT_EQ(parsed["server"]["threads"].value<int64_t>(), 7);

  TempFile reprinted(printed);
  auto second = LoadConfig({.file = reprinted.path()});
  ASSERT_TRUE(second.ok()) << second.status().ToString() << "\n" << printed;
  EXPECT_EQ(second->config, first->config) << printed;
  EXPECT_THAT(printed, HasSubstr("max_body_bytes = 12345  # " + file.path()));
  EXPECT_THAT(printed, HasSubstr("backlog = 77  # flag --set\n"));
  EXPECT_THAT(printed, HasSubstr("level = \"error\"  # env MEGASERVE_LOG_LEVEL\n"));
}

TEST(PrintConfigTest, DefaultsRoundTrip) {
  auto first = LoadConfig({});
  ASSERT_TRUE(first.ok());
  TempFile printed(PrintConfig(*first));
  auto second = LoadConfig({.file = printed.path()});
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->config, Config{});
}

TEST(PrintConfigTest, SecretsAreMasked) {
  auto loaded = LoadConfig({.env = {{"MEGASERVE_METRICS_BEARER_TOKEN", "s3cr3t-value"}}});
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->config.metrics.bearer_token, "s3cr3t-value");
  std::string printed = PrintConfig(*loaded);
  EXPECT_THAT(printed, Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(printed,
              HasSubstr("bearer_token = \"********\"  # env MEGASERVE_METRICS_BEARER_TOKEN\n"));

  auto empty = LoadConfig({});
  ASSERT_TRUE(empty.ok());
  EXPECT_THAT(PrintConfig(*empty), HasSubstr("bearer_token = \"\"  # default\n"));
}

TEST(PrintConfigTest, SecretsAreNotEchoedInErrors) {
  TempFile file("[metrics]\nbearer_token = 12345678\n");
  std::string error = ErrorOf(LoadConfig({.file = file.path()}));
  EXPECT_THAT(error, HasSubstr("metrics.bearer_token: expected a string, got an integer"));
  EXPECT_THAT(error, Not(HasSubstr("12345678")));
}

TEST(ConfigKeysTest, DescribesEveryKey) {
  std::vector<KeyInfo> keys = ConfigKeys();
  auto loaded = LoadConfig({});
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(keys.size(), loaded->provenance.size());
  std::set<std::string> env_names;
  for (const KeyInfo& info : keys) {
    EXPECT_TRUE(loaded->provenance.count(info.key)) << info.key;
    EXPECT_FALSE(info.help.empty()) << info.key;
    EXPECT_FALSE(info.default_value.empty()) << info.key;
    std::string env = "MEGASERVE_";
    for (char c : info.key)
      env += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_TRUE(env_names.insert(env).second) << "two keys share " << env;
    EXPECT_EQ(info.secret, info.key == "metrics.bearer_token" || info.key == "store.url" ||
                               info.key == "redis.url" || info.key == "webhooks.secret")
        << info.key;
  }
  auto type_of = [&](const std::string& key) {
    for (const KeyInfo& info : keys) {
      if (info.key == key) return info.type;
    }
    return std::string("missing");
  };
  EXPECT_EQ(type_of("server.threads"), "int");
  EXPECT_EQ(type_of("server.listen"), "string");
  EXPECT_EQ(type_of("server.idle_timeout"), "duration");
  EXPECT_EQ(type_of("server.max_body_bytes"), "size");
  EXPECT_EQ(type_of("log.access"), "bool");
  EXPECT_EQ(type_of("log.access_sample"), "float");
  EXPECT_EQ(type_of("cors.allowed_origins"), "string list");
  EXPECT_EQ(type_of("metrics.duration_buckets"), "float list");
}

TEST(StoreConfigTest, DefaultsAndOverrides) {
  auto defaults = LoadConfig({});
  ASSERT_TRUE(defaults.ok());
  const StoreConfig& d = defaults->config.store;
  EXPECT_EQ(d.url, "");
  EXPECT_EQ(d.pool_size, 20);
  EXPECT_EQ(d.max_overflow, 10);
  EXPECT_EQ(d.pool_timeout, Duration(30'000));
  EXPECT_TRUE(d.pre_ping);
  EXPECT_EQ(d.recycle, Duration(3'600'000));
  EXPECT_TRUE(d.migrate_on_start);

  TempFile file(R"(
[store]
url = "postgresql://app:pw@db:5432/megaserve"
pool_size = 5
max_overflow = 0
pool_timeout = "250ms"
pre_ping = false
recycle = "10m"
migrate_on_start = false
)");
  auto loaded = LoadConfig({.file = file.path(), .env = {{"MEGASERVE_STORE_POOL_SIZE", "7"}}});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  const StoreConfig& s = loaded->config.store;
  EXPECT_EQ(s.url, "postgresql://app:pw@db:5432/megaserve");
  EXPECT_EQ(s.pool_size, 7);
  EXPECT_EQ(s.max_overflow, 0);
  EXPECT_EQ(s.pool_timeout, Duration(250));
  EXPECT_FALSE(s.pre_ping);
  EXPECT_EQ(s.recycle, Duration(600'000));
  EXPECT_FALSE(s.migrate_on_start);
}

TEST(StoreConfigTest, RangesAndUrlSchemes) {
  EXPECT_THAT(ErrorOf(LoadConfig({.env = {{"MEGASERVE_STORE_POOL_SIZE", "0"}}})),
              HasSubstr("store.pool_size: must be between 1 and 1000, got 0"));
  EXPECT_THAT(ErrorOf(LoadConfig({.env = {{"MEGASERVE_STORE_MAX_OVERFLOW", "-1"}}})),
              HasSubstr("store.max_overflow: must be between 0 and 1000"));
  EXPECT_THAT(ErrorOf(LoadConfig({.env = {{"MEGASERVE_STORE_POOL_TIMEOUT", "0s"}}})),
              HasSubstr("store.pool_timeout: must be greater than 0s"));
  EXPECT_THAT(ErrorOf(LoadConfig({.env = {{"MEGASERVE_STORE_RECYCLE", "0"}}})),
              HasSubstr("store.recycle: must be greater than 0s"));
  std::string error =
      ErrorOf(LoadConfig({.env = {{"MEGASERVE_STORE_URL", "mysql://u:hunter2@h/db"}}}));
  EXPECT_THAT(error, HasSubstr("store.url: expected sqlite:///PATH"));
  EXPECT_THAT(error, Not(HasSubstr("hunter2")));
  for (const char* url : {"sqlite:///var/lib/m.db", "sqlite://m.db", "sqlite::memory:",
                          "postgres://h/db", "postgresql://u@h:5433/db?sslmode=disable"}) {
    EXPECT_TRUE(LoadConfig({.env = {{"MEGASERVE_STORE_URL", url}}}).ok()) << url;
  }
}

TEST(StoreConfigTest, UrlPasswordIsMaskedWhenPrinted) {
  auto loaded = LoadConfig(
      {.env = {{"MEGASERVE_STORE_URL", "postgresql://app:s3cr3t@db.internal:5432/megaserve"}}});
  ASSERT_TRUE(loaded.ok());
  std::string printed = PrintConfig(*loaded);
  EXPECT_THAT(printed, Not(HasSubstr("s3cr3t")));
  EXPECT_THAT(printed, HasSubstr("url = \"postgresql://app:********@db.internal:5432/megaserve\""));
  EXPECT_THAT(PrintConfig(*LoadConfig({})), HasSubstr("[store]\nurl = \"\"  # default\n"));
}

TEST(RedactUrlPasswordTest, MasksOnlyThePassword) {
  EXPECT_EQ(RedactUrlPassword("postgresql://u:p@h/db"), "postgresql://u:********@h/db");
  EXPECT_EQ(RedactUrlPassword("postgresql://u@h/db"), "postgresql://u@h/db");
  EXPECT_EQ(RedactUrlPassword("postgres://u:p%40x@h:1/db?sslmode=require"),
            "postgres://u:********@h:1/db?sslmode=require");
  EXPECT_EQ(RedactUrlPassword("postgresql://h/db?user=u&password=pw&sslmode=off"),
            "postgresql://h/db?user=u&password=********&sslmode=off");
  EXPECT_EQ(RedactUrlPassword("sqlite:///data/m.db"), "sqlite:///data/m.db");
}

TEST(ExampleConfigTest, LoadsAndListsEveryKeyWithItsDefault) {
  std::filesystem::path example = SourceDir() / "megaserve.example.toml";
  ASSERT_TRUE(std::filesystem::exists(example)) << example;
  auto loaded = LoadConfig({.file = example.string()});
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_EQ(loaded->config, Config{});
  for (const auto& [key, source] : loaded->provenance) {
    EXPECT_TRUE(source.starts_with(example.string() + ":")) << key << " is not in the example";
  }
}

}  // namespace
}  // namespace megaserve::core
