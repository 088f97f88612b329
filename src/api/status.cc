#include "api/status.h"

#include <openssl/opensslv.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <unistd.h>

#include <boost/version.hpp>
#include <thread>

#include "core/time_format.h"
#include "megaserve/build_info.h"

namespace megaserve::api {
namespace {

std::atomic<uint64_t> g_next_id{1};

std::string Iso8601(std::chrono::system_clock::time_point t) {
  return core::Rfc3339(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}

struct ThreadCopy {
  uint64_t owner = 0;
  uint64_t generation = 0;
  std::shared_ptr<const std::string> body;
};
thread_local ThreadCopy t_copy;

}  // namespace

StatusCache::StatusCache(StatusInfo info, std::chrono::milliseconds ttl)
    : info_(std::move(info)),
      ttl_(ttl),
      started_wall_(std::chrono::system_clock::now()),
      started_(Clock::now()),
      id_(g_next_id.fetch_add(1)) {}

std::shared_ptr<const std::string> StatusCache::Get() {
  int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  uint64_t gen = generation_.load(std::memory_order_acquire);
  if (t_copy.owner == id_ && t_copy.generation == gen &&
      now < expires_ns_.load(std::memory_order_relaxed)) {
    return t_copy.body;
  }
  std::shared_ptr<const std::string> shared;
  {
    std::lock_guard lock(mu_);
    if (!body_ || now >= expires_ns_.load(std::memory_order_relaxed)) {
      body_ = std::make_shared<const std::string>(Build());
      builds_.fetch_add(1, std::memory_order_relaxed);
      expires_ns_.store(now + std::chrono::nanoseconds(ttl_).count(), std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    shared = body_;
    gen = generation_.load(std::memory_order_relaxed);
  }
  t_copy.owner = id_;
  t_copy.generation = gen;
  t_copy.body = std::make_shared<const std::string>(*shared);
  return t_copy.body;
}

std::string StatusCache::Build() const {
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  auto str = [&w](const char* key, std::string_view v) {
    w.Key(key);
    w.String(v.data(), static_cast<rapidjson::SizeType>(v.size()));
  };
  auto now_wall = std::chrono::system_clock::now();
  w.StartObject();
  str("service", info_.service);
  str("status", "ok");
  str("version", build::kVersion);
  w.Key("roles");
  w.StartArray();
  for (const auto& r : info_.roles) w.String(r.c_str());
  w.EndArray();
  str("started_at", Iso8601(started_wall_));
  str("generated_at", Iso8601(now_wall));
  w.Key("uptime_seconds");
  w.Double(std::chrono::duration<double>(Clock::now() - started_).count());
  w.Key("cache_ttl_seconds");
  w.Int64(std::chrono::duration_cast<std::chrono::seconds>(ttl_).count());

  w.Key("build");
  w.StartObject();
  str("version", build::kVersion);
  str("commit", build::kGitCommit);
  str("type", build::kBuildType);
  str("compiler", build::kCompiler);
  str("cxx_standard", "C++20");
  str("boost", BOOST_LIB_VERSION);
  str("openssl", OPENSSL_VERSION_TEXT);
  w.EndObject();

  char host[256] = {};
  gethostname(host, sizeof host - 1);
  w.Key("host");
  w.StartObject();
  str("hostname", host);
  w.Key("pid");
  w.Int64(getpid());
  w.Key("cpus");
  w.Uint(std::thread::hardware_concurrency());
  w.EndObject();

  if (info_.config) {
    const auto& s = info_.config->server;
    w.Key("server");
    w.StartObject();
    str("listen", s.listen);
    w.Key("io_threads");
    w.Uint(info_.io_threads);
    w.Key("max_connections");
    w.Int(s.max_connections);
    w.Key("max_header_bytes");
    w.Uint64(s.max_header_bytes);
    w.Key("max_body_bytes");
    w.Uint64(s.max_body_bytes);
    auto seconds = [&w](const char* key, std::chrono::milliseconds d) {
      w.Key(key);
      w.Double(static_cast<double>(d.count()) / 1000.0);
    };
    seconds("header_timeout_seconds", s.header_timeout);
    seconds("body_timeout_seconds", s.body_timeout);
    seconds("idle_timeout_seconds", s.idle_timeout);
    seconds("write_timeout_seconds", s.write_timeout);
    seconds("drain_timeout_seconds", s.drain_timeout);
    w.Key("cors_origins");
    w.Uint(static_cast<unsigned>(info_.config->cors.allowed_origins.size()));
    w.Key("metrics");
    w.Bool(info_.config->metrics.enabled);
    w.EndObject();
  }
  w.Key("routes");
  w.StartArray();
  if (info_.router) {
    for (const auto& r : info_.router->routes()) {
      w.StartObject();
      str("path", r->pattern);
      str("methods", r->allow);
      w.EndObject();
    }
  }
  w.EndArray();
  w.EndObject();
  return {sb.GetString(), sb.GetSize()};
}

}  // namespace megaserve::api
