#include "api/app.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <thread>

#include "api/job_routes.h"
#include "api/system_routes.h"
#include "jobs/builtin_handlers.h"
#include "store/migrations.h"

namespace megaserve::api {
namespace {

// Blocking-pool size: enough threads to keep the store's connections busy without oversubscribing.
constexpr std::size_t kPoolThreads = 8;
constexpr std::size_t kPoolQueue = 4096;

}  // namespace

App::App(const core::Config& config, metrics::Registry& registry)
    : config_(config), registry_(registry) {}

App::~App() { Shutdown(); }

core::Result<std::unique_ptr<App>> App::Create(const core::Config& config,
                                               metrics::Registry& registry) {
  std::unique_ptr<App> app(new App(config, registry));
  auto db = store::OpenConfiguredStore(config);
  if (!db.ok()) return db.status();
  app->db_ = std::move(*db);
  app->pool_ = std::make_unique<core::BlockingPool>("store", kPoolThreads, kPoolQueue);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  app->queue_ = std::make_unique<jobs::JobQueue>(
      *app->db_, std::string(host) + ":" + std::to_string(getpid()));
  // Heartbeats also deliver cancellations, so they run every second rather than at a third of
  // the 30 s lease: a cancel reaches a running handler within about a second.
  jobs::WorkersOptions worker_options;
  worker_options.heartbeat_interval = std::chrono::seconds(1);
  app->workers_ = std::make_unique<jobs::Workers>(*app->queue_, worker_options);
  jobs::RegisterBuiltinHandlers(*app->workers_);
  app->streams_ = std::make_unique<JobEventStreams>(*app->queue_);

  StatusInfo info;
  info.roles = {"api", "jobs", "worker"};
  info.config = &config;
  info.router = &app->router_;
  info.io_threads = config.server.threads > 0 ? unsigned(config.server.threads)
                                              : std::max(1u, std::thread::hardware_concurrency());
  app->status_ = std::make_unique<StatusCache>(info);

  App* raw = app.get();
  SystemContext sys;
  sys.config = &config;
  sys.registry = &registry;
  sys.status = app->status_.get();
  sys.ready = [raw] { return raw->server_ && raw->server_->ready(); };
  sys.draining = [raw] { return raw->server_ && raw->server_->draining(); };
  RegisterSystemRoutes(app->router_, sys);

  JobsContext jobs_ctx;
  jobs_ctx.queue = app->queue_.get();
  jobs_ctx.workers = app->workers_.get();
  jobs_ctx.pool = app->pool_.get();
  jobs_ctx.streams = app->streams_.get();
  RegisterJobRoutes(app->router_, jobs_ctx);
  return app;
}

core::Status App::Start() {
  server_ = std::make_unique<net::Server>(config_, router_, registry_);
  if (auto s = server_->Start(); !s.ok()) return s;
  workers_->Start();
  started_ = true;
  server_->set_ready(true);
  return core::Status::Ok();
}

void App::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (server_) server_->Shutdown();
  if (streams_) streams_->Stop();
  if (workers_ && started_) workers_->Stop(config_.server.drain_timeout);
  if (pool_) pool_->Shutdown();
}

}  // namespace megaserve::api
