// megaserve: one binary, subcommands for each role and tool.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "api/app.h"
#include "cli/backtest_command.h"
#include "cli/data_command.h"
#include "cli/data_sync.h"
#include "cli/generate.h"
#include "cli/train_command.h"
#include "core/config.h"
#include "core/logging.h"
#include "core/time_format.h"
#include "gateway/api_keys.h"
#include "jobs/builtin_handlers.h"
#include "jobs/job_queue.h"
#include "jobs/jobs_config.h"
#include "jobs/webhook_signature.h"
#include "jobs/workers.h"
#include "megaserve/build_info.h"
#include "metrics/process.h"
#include "metrics/registry.h"
#include "net/server.h"
#include "store/database.h"
#include "store/migrations.h"

namespace {

using namespace megaserve;

// Flags shared by the subcommands that read the configuration.
struct ConfigFlags {
  std::string file;
  std::string listen;
  std::string data_dir;
  int threads = -1;
  std::vector<std::string> sets;

  void AddTo(CLI::App* cmd) {
    cmd->add_option("-c,--config", file,
                    "TOML configuration file (default: $MEGASERVE_CONFIG, else none)");
    cmd->add_option("-l,--listen", listen, "HOST:PORT to listen on (server.listen)");
    cmd->add_option("-d,--data-dir", data_dir, "folder for jobs, artifacts and models (data_dir)");
    cmd->add_option("-t,--threads", threads, "I/O threads, 0 = one per core (server.threads)");
    cmd->add_option("--set", sets, "KEY=VALUE: set any configuration key (repeatable)");
  }

  core::Result<core::LoadedConfig> Load() const {
    core::ConfigSources src;
    src.file = file;
    if (src.file.empty()) {
      if (const char* env = std::getenv("MEGASERVE_CONFIG")) src.file = env;
    }
    src.env = core::ProcessEnvironment();
    if (!listen.empty()) src.overrides.push_back({"server.listen", listen, "flag --listen"});
    if (!data_dir.empty()) src.overrides.push_back({"data_dir", data_dir, "flag --data-dir"});
    if (threads >= 0) {
      src.overrides.push_back({"server.threads", std::to_string(threads), "flag --threads"});
    }
    for (const auto& s : sets) {
      auto eq = s.find('=');
      if (eq == std::string::npos || eq == 0) {
        return core::InvalidArgument("flag --set: expected KEY=VALUE, got \"" + s + "\"");
      }
      src.overrides.push_back({s.substr(0, eq), s.substr(eq + 1), "flag --set"});
    }
    return core::LoadConfig(src);
  }
};

int Fail(const core::Status& s) {
  std::fprintf(stderr, "megaserve: %s\n", s.message().c_str());
  return 2;
}

int Serve(const ConfigFlags& flags, api::Role role) {
  auto started = std::chrono::steady_clock::now();
  auto loaded = flags.Load();
  if (!loaded.ok()) return Fail(loaded.status());
  const core::Config& config = loaded->config;
  // Shutdown signals are taken by sigwait below, so every thread must have them blocked, the
  // logger's background thread (started by InitLogging) included: a signal delivered to a thread
  // that does not block it kills the process.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (auto s = core::InitLogging(config.log); !s.ok()) return Fail(s);

  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  if (ec) {
    return Fail(core::InvalidArgument("data_dir: cannot create \"" + config.data_dir +
                                      "\": " + ec.message()));
  }

  auto& registry = metrics::Registry::Global();
  metrics::RegisterProcessMetrics(registry);
  registry
      .AddGauge("megaserve_build_info", "Build information; the value is always 1.",
                {"version", "commit", "compiler", "build_type"})
      .WithLabels({build::kVersion, build::kGitCommit, build::kCompiler, build::kBuildType})
      .Set(1);

  auto app = api::App::Create(config, registry, role);
  if (!app.ok()) return Fail(app.status());
  if (auto s = (*app)->Start(); !s.ok()) return Fail(s);
  net::Server& server = (*app)->server();
  double ready_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
  spdlog::info("megaserve {} {} listening on {} (port {}, {} I/O threads), ready in {:.1f} ms",
               build::kVersion, role == api::Role::kServe ? "serve" : "gateway",
               config.server.listen, server.port(), server.loops().size(), ready_ms);

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("received {}; draining (up to {} ms)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               config.server.drain_timeout.count());
  (*app)->Shutdown();
  spdlog::info("stopped");
  core::ShutdownLogging();
  return 0;
}

// megaserve worker: claims and runs jobs from one queue of the configured store (PostgreSQL
// when several processes share it), until SIGTERM/SIGINT.
int Work(const ConfigFlags& flags, const std::string& queue_name, int concurrency) {
  auto loaded = flags.Load();
  if (!loaded.ok()) return Fail(loaded.status());
  const core::Config& config = loaded->config;
  sigset_t signals;  // blocked before any thread starts (see Serve)
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  if (auto s = core::InitLogging(config.log); !s.ok()) return Fail(s);

  auto db = store::OpenConfiguredStore(config);
  if (!db.ok()) return Fail(db.status());
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  jobs::JobQueue queue(**db, std::string(host) + ":" + std::to_string(getpid()),
                       jobs::QueueOptionsFromConfig(config));
  jobs::WorkersOptions options = jobs::WorkersOptionsFromConfig(config);
  if (!queue_name.empty()) options.queue = queue_name;
  if (concurrency > 0) options.concurrency = concurrency;
  options.concurrency = std::max(1, options.concurrency);
  jobs::Workers workers(queue, options);
  jobs::RegisterBuiltinHandlers(workers);
  workers.Start();
  std::string types;
  for (const auto& t : workers.types()) types += (types.empty() ? "" : ", ") + t;
  spdlog::info("megaserve {} worker on queue \"{}\" ({} at once; types: {}), ready",
               build::kVersion, options.queue, options.concurrency, types);

  int sig = 0;
  sigwait(&signals, &sig);
  spdlog::info("received {}; finishing running jobs (up to {} ms)",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", config.server.drain_timeout.count());
  workers.Stop(config.server.drain_timeout);
  spdlog::info("stopped");
  core::ShutdownLogging();
  return 0;
}

// megaserve migrate [--status]: applies pending migrations to store.url, or lists them.
int Migrate(const ConfigFlags& flags, bool status_only) {
  auto loaded = flags.Load();
  if (!loaded.ok()) return Fail(loaded.status());
  store::StoreOptions options = store::StoreOptionsFromConfig(loaded->config);
  std::printf("database: %s\n", core::RedactUrlPassword(options.url).c_str());
  auto db = store::Database::Open(options);
  if (!db.ok()) return Fail(core::Status(db.status().code(), "migrate: " + db.status().message()));

  if (status_only) {
    auto list = store::MigrationStatus(**db);
    if (!list.ok()) {
      return Fail(core::Status(list.status().code(), "migrate: " + list.status().message()));
    }
    int pending = 0;
    for (const auto& m : *list) {
      if (m.applied) {
        std::printf("applied  %4d  %-40s %s\n", m.version, m.name.c_str(),
                    core::Rfc3339(m.applied_at).c_str());
      } else {
        ++pending;
        std::printf("pending  %4d  %s\n", m.version, m.name.c_str());
      }
    }
    std::printf("%d applied, %d pending\n", static_cast<int>(list->size()) - pending, pending);
    return 0;
  }

  std::vector<store::MigrationInfo> applied;
  core::Status status = store::Migrate(**db, &applied);
  for (const auto& m : applied) std::printf("applied  %4d  %s\n", m.version, m.name.c_str());
  if (!status.ok()) return Fail(core::Status(status.code(), "migrate: " + status.message()));
  int latest = store::Migrations().empty() ? 0 : store::Migrations().back().version;
  if (applied.empty()) {
    std::printf("up to date at version %d\n", latest);
  } else {
    std::printf("%zu migration%s applied; now at version %d\n", applied.size(),
                applied.size() == 1 ? "" : "s", latest);
  }
  return 0;
}

// `megaserve keys create|list|revoke`: API keys in the configured store.
struct KeyFlags {
  std::string name;
  std::string scopes;
  std::int64_t quota = 0;
  bool json = false;
  bool quiet = false;
  std::string id;
};

int Keys(const ConfigFlags& flags, const KeyFlags& k, bool create, bool list, bool revoke) {
  auto loaded = flags.Load();
  if (!loaded.ok()) return Fail(loaded.status());
  const core::Config& config = loaded->config;
  std::error_code ec;
  std::filesystem::create_directories(config.data_dir, ec);
  core::LogConfig quiet_log = config.log;
  quiet_log.level = "warn";  // migrations applied on the way are not worth a line here
  if (auto s = core::InitLogging(quiet_log); !s.ok()) return Fail(s);
  auto db = store::OpenConfiguredStore(config);
  if (!db.ok()) return Fail(db.status());
  gateway::ApiKeyStore store(**db);
  auto when = [](std::int64_t us) { return us == 0 ? std::string("-") : core::Rfc3339(us); };
  if (create) {
    auto scopes = gateway::ParseScopes(k.scopes);
    if (!scopes.ok()) return Fail(scopes.status());
    auto created = store.Create(k.name, *scopes, k.quota);
    if (!created.ok()) return Fail(created.status());
    if (k.quiet) {
      std::printf("%s\n", created->token.c_str());
    } else if (k.json) {
      std::printf("%s\n", created->key.ToJson(created->token).c_str());
    } else {
      std::printf(
          "created key %s (\"%s\", scopes %s, quota %s)\n\n  %s\n\n"
          "This is the only time the key is shown: only its hash is stored.\n"
          "Send it as \"Authorization: Bearer <key>\".\n",
          created->key.id.c_str(), created->key.name.c_str(),
          gateway::FormatScopes(created->key.scopes).c_str(),
          created->key.quota > 0 ? (std::to_string(created->key.quota) + "/min").c_str()
                                 : "route default",
          created->token.c_str());
    }
    return 0;
  }
  if (list) {
    auto keys = store.List();
    if (!keys.ok()) return Fail(keys.status());
    if (k.json) {
      std::string out = "[";
      for (const auto& key : *keys) out += (out.size() > 1 ? "," : "") + key.ToJson();
      std::printf("%s]\n", out.c_str());
      return 0;
    }
    std::printf("%-14s %-20s %-32s %-10s %-21s %-21s %s\n", "ID", "NAME", "SCOPES", "QUOTA",
                "CREATED", "LAST USED", "REVOKED");
    for (const auto& key : *keys) {
      std::printf("%-14s %-20s %-32s %-10s %-21s %-21s %s\n", key.id.c_str(), key.name.c_str(),
                  gateway::FormatScopes(key.scopes).c_str(),
                  key.quota > 0 ? (std::to_string(key.quota) + "/min").c_str() : "default",
                  when(key.created_at).c_str(), when(key.last_used_at).c_str(),
                  when(key.revoked_at).c_str());
    }
    return 0;
  }
  if (revoke) {
    auto key = store.Revoke(k.id);
    if (!key.ok()) return Fail(key.status());
    std::printf("revoked key %s (\"%s\"); gateways refuse it within %lld ms\n", key->id.c_str(),
                key->name.c_str(), static_cast<long long>(config.gateway.key_cache_ttl.count()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "megaserve: generative and predictive AI over HTTP, with its own gateway, job "
      "orchestrator and metrics."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("megaserve ") + build::kVersion);

  ConfigFlags flags;
  auto* serve = app.add_subcommand(
      "serve", "Run every role in one process: HTTP API, job store, workers, metrics.");
  flags.AddTo(serve);

  auto* gateway_cmd = app.add_subcommand(
      "gateway",
      "Run the gateway alone: auth, rate limits, the response cache, and the [[routes]] that name "
      "an [[upstreams]] group proxied to worker services.");
  flags.AddTo(gateway_cmd);

  auto* migrate = app.add_subcommand(
      "migrate", "Apply pending database migrations to store.url, or list them with --status.");
  flags.AddTo(migrate);
  bool migrate_status = false;
  migrate->add_flag("--status", migrate_status,
                    "List applied and pending migrations without changing anything");

  std::string worker_queue;    // "" = jobs.queue
  int worker_concurrency = 0;  // 0 = jobs.concurrency
  auto* worker = app.add_subcommand(
      "worker", "Run jobs from a queue of the job store (share it through PostgreSQL to scale).");
  flags.AddTo(worker);
  worker->add_option("-q,--queue", worker_queue,
                     "queue to claim jobs from (default: jobs.queue, \"default\")");
  worker
      ->add_option("-n,--concurrency", worker_concurrency,
                   "jobs to run at once (default: jobs.concurrency, 4)")
      ->check(CLI::Range(1, 4096));

  auto* version = app.add_subcommand("version", "Print the version and build details.");

  auto* config = app.add_subcommand("config", "Inspect the configuration.");
  config->require_subcommand(1);
  auto* print = config->add_subcommand(
      "print",
      "Print the effective configuration as TOML, each key with its source; secrets "
      "are masked.");
  flags.AddTo(print);
  auto* keys = config->add_subcommand("keys", "List every configuration key with its type.");

  KeyFlags key_flags;
  auto* api_keys = app.add_subcommand("keys", "Manage API keys (stored hashed in the job store).");
  api_keys->require_subcommand(1);
  auto* key_create = api_keys->add_subcommand(
      "create", "Create a key and print it once (only its hash is stored).");
  flags.AddTo(key_create);
  key_create->add_option("--name", key_flags.name, "label for the key")->required();
  key_create
      ->add_option("--scopes", key_flags.scopes,
                   "comma-separated: images, videos, forecasts, jobs, admin")
      ->required();
  key_create
      ->add_option("--quota", key_flags.quota,
                   "requests per minute for this key (default: the route's limit)")
      ->check(CLI::NonNegativeNumber);
  key_create->add_flag("--json", key_flags.json, "print the key record as JSON");
  key_create->add_flag("--quiet", key_flags.quiet, "print only the key");
  auto* key_list = api_keys->add_subcommand("list", "List keys (never their secrets).");
  flags.AddTo(key_list);
  key_list->add_flag("--json", key_flags.json, "print JSON");
  auto* key_revoke = api_keys->add_subcommand("revoke", "Revoke a key by id.");
  flags.AddTo(key_revoke);
  key_revoke->add_option("id", key_flags.id, "the key's id (from keys list)")->required();

  auto* webhooks = app.add_subcommand("webhooks", "Webhook tools.");
  webhooks->require_subcommand(1);
  auto* new_secret = webhooks->add_subcommand(
      "new-secret", "Print a fresh webhook signing secret (\"whsec_...\") for webhooks.secret.");

  cli::BacktestFlags backtest_flags;
  auto* backtest = cli::AddBacktestCommand(app, backtest_flags);
  cli::GenerateFlags generate_flags;
  auto* generate = cli::AddGenerateCommand(app, generate_flags);
  cli::DataFlags data_flags;
  auto* data_cmd = cli::AddDataCommand(app, data_flags);
  cli::DataSyncFlags data_sync_flags;
  auto* data_sync = cli::AddDataSyncCommand(data_cmd, data_flags, data_sync_flags);
  cli::TrainFlags train_flags;
  auto* train = cli::AddTrainCommand(app, train_flags);

  CLI11_PARSE(app, argc, argv);

  if (*backtest) return cli::RunBacktestCommand(backtest_flags);
  if (*generate) return cli::RunGenerate(generate_flags);
  if (data_sync->parsed()) return cli::RunDataSync(data_flags, data_sync_flags);
  if (*data_cmd) return cli::RunData(data_flags);
  if (*train) return cli::RunTrainForecast(train_flags);

  if (*serve) return Serve(flags, api::Role::kServe);
  if (*gateway_cmd) return Serve(flags, api::Role::kGateway);
  if (*worker) return Work(flags, worker_queue, worker_concurrency);
  if (*migrate) return Migrate(flags, migrate_status);
  if (*api_keys) {
    return Keys(flags, key_flags, key_create->parsed(), key_list->parsed(), key_revoke->parsed());
  }
  if (*version) {
    std::printf("megaserve %s (commit %s, %s build, %s)\n", build::kVersion, build::kGitCommit,
                build::kBuildType, build::kCompiler);
    return 0;
  }
  if (*print) {
    auto loaded = flags.Load();
    if (!loaded.ok()) return Fail(loaded.status());
    std::fputs(core::PrintConfig(*loaded).c_str(), stdout);
    return 0;
  }
  if (*new_secret) {
    auto secret = jobs::WebhookSecret::Generate();
    if (!secret.ok()) return Fail(secret.status());
    std::printf("%s\n", secret->ToString().c_str());
    return 0;
  }
  if (*keys) {
    for (const auto& k : core::ConfigKeys()) {
      std::printf("%-32s %-12s %s%s\n", k.key.c_str(), k.type.c_str(), k.help.c_str(),
                  k.secret ? " (secret)" : "");
    }
    return 0;
  }
  return 0;
}
