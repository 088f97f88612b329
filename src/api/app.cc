#include "api/app.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <thread>

#include "api/forecast_routes.h"
#include "api/job_routes.h"
#include "api/key_routes.h"
#include "api/model_routes.h"
#include "api/system_routes.h"
#include "forecast/forecast_backend.h"
#include "jobs/builtin_handlers.h"
#include "jobs/jobs_config.h"
#include "jobs/webhook_signature.h"
#include "store/migrations.h"

namespace megaserve::api {
namespace {

// Blocking-pool size: enough threads to keep the store's connections busy without oversubscribing.
constexpr std::size_t kPoolThreads = 8;
constexpr std::size_t kPoolQueue = 4096;

// The dispatcher's options from [webhooks]; errors name the key at fault. Without a secret the
// result has none (webhooks are off).
core::Result<jobs::WebhookDispatcherOptions> WebhookOptions(const core::Config& config) {
  const core::WebhooksConfig& c = config.webhooks;
  jobs::WebhookDispatcherOptions options;
  if (!c.secret.empty()) {
    auto secret = jobs::WebhookSecret::Parse(c.secret);
    if (!secret.ok()) {
      return core::InvalidArgument("webhooks.secret: " + secret.status().message() +
                                   " (make one with: megaserve webhooks new-secret)");
    }
    options.secret = std::move(*secret);
  }
  options.ssrf = {.allow_private = c.allow_private, .allowed_cidrs = c.allowed_cidrs};
  options.timeout = c.timeout;
  options.concurrency = c.concurrency;
  options.retry_schedule.clear();
  for (const std::string& wait : c.retry_schedule) {
    auto d = core::ParseDuration(wait);
    if (!d.ok()) return core::InvalidArgument("webhooks.retry_schedule: " + d.status().message());
    options.retry_schedule.push_back(*d);
  }
  return options;
}

}  // namespace

App::App(const core::Config& config, metrics::Registry& registry, Role role)
    : config_(config), registry_(registry), role_(role) {}

App::~App() { Shutdown(); }

core::Result<std::unique_ptr<App>> App::Create(const core::Config& config,
                                               metrics::Registry& registry, Role role) {
  std::unique_ptr<App> app(new App(config, registry, role));
  bool serve = role == Role::kServe;
  auto webhooks = WebhookOptions(config);
  if (!webhooks.ok()) return webhooks.status();
  auto guard = jobs::SsrfGuard::Create(webhooks->ssrf);
  if (!guard.ok()) {
    return core::InvalidArgument("webhooks.allowed_cidrs: " + guard.status().message());
  }
  app->webhook_guard_.emplace(std::move(*guard));
  auto db = store::OpenConfiguredStore(config);
  if (!db.ok()) return db.status();
  app->db_ = std::move(*db);
  app->keys_ = std::make_unique<gateway::ApiKeyStore>(*app->db_);
  app->pool_ = std::make_unique<core::BlockingPool>("store", kPoolThreads, kPoolQueue);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  if (serve) {
    app->queue_ = std::make_unique<jobs::JobQueue>(
        *app->db_, std::string(host) + ":" + std::to_string(getpid()),
        jobs::QueueOptionsFromConfig(config));
    // Heartbeats also deliver cancellations (jobs.heartbeat, 1 s by default, rather than a
    // third of the lease), so a cancel reaches a running handler quickly.
    app->workers_ =
        std::make_unique<jobs::Workers>(*app->queue_, jobs::WorkersOptionsFromConfig(config));
    jobs::RegisterBuiltinHandlers(*app->workers_);
    app->streams_ = std::make_unique<JobEventStreams>(*app->queue_);
  }
  if (serve && webhooks->secret) {
    auto dispatcher = jobs::WebhookDispatcher::Create(*app->db_, *app->queue_, std::move(*webhooks),
                                                      JobJson, registry);
    if (!dispatcher.ok()) return dispatcher.status();
    app->webhooks_ = std::move(*dispatcher);
  }

  StatusInfo info;
  info.roles = serve ? std::vector<std::string>{"api", "jobs", "worker", "gateway"}
                     : std::vector<std::string>{"gateway"};
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

  RegisterKeyRoutes(app->router_, {.store = app->keys_.get(), .pool = app->pool_.get()});
  if (!serve) {
    // Proxied routes: placeholders now (the server sizes its per-route metrics from the routes
    // registered before it is built); the gateway's chains replace them in Start().
    for (const core::RouteConfig& route : config.routes) {
      if (route.upstream.empty() || route.pattern.find('*') != std::string::npos) continue;
      for (net::Method m : {net::Method::kGet, net::Method::kPost, net::Method::kPut,
                            net::Method::kDelete, net::Method::kPatch}) {
        app->router_.Add(m, route.pattern, [](const net::Request&) {
          return net::ErrorResponse(502, "no_upstream", "this route has no upstream");
        });
      }
    }
    return app;
  }

  JobsContext jobs_ctx;
  jobs_ctx.queue = app->queue_.get();
  jobs_ctx.workers = app->workers_.get();
  jobs_ctx.pool = app->pool_.get();
  jobs_ctx.streams = app->streams_.get();
  if (app->webhooks_) jobs_ctx.webhook_guard = &*app->webhook_guard_;
  RegisterJobRoutes(app->router_, jobs_ctx);

  app->models_ = std::make_unique<models::Repository>(models::RepositoryOptions{
      .dir = config.models.dir.empty() ? config.data_dir + "/models" : config.models.dir,
      .cache_bytes = config.models.cache_bytes,
      .registry = &registry});
  RegisterModelRoutes(app->router_, {.repository = app->models_.get(), .pool = app->pool_.get()});

  app->models_->RegisterBackend(std::string(forecast::kForecastBackend),
                                forecast::LoadForecastModel);
  app->candles_ = std::make_unique<forecast::CandleStore>(*app->db_);
  app->forecasts_ = std::make_unique<forecast::ForecastService>(forecast::ForecastServiceOptions{
      .repository = app->models_.get(), .candles = app->candles_.get()});
  RegisterForecastRoutes(
      app->router_,
      {.service = app->forecasts_.get(), .candles = app->candles_.get(), .pool = app->pool_.get()});
  auto market_sync = forecast::PeriodicSync::Create(config.market_data, *app->candles_);
  if (!market_sync.ok()) return market_sync.status();
  app->market_sync_ = std::move(*market_sync);  // null unless market_data.sync lists series
  return app;
}

core::Status App::Start() {
  server_ = std::make_unique<net::Server>(config_, router_, registry_);
  if (auto s = server_->Bind(); !s.ok()) return s;
  auto gateway = gateway::Gateway::Create(
      {.config = &config_,
       .registry = &registry_,
       .keys = keys_.get(),
       .pool = pool_.get(),
       .loops = server_->loops(),
       .proxy = role_ == Role::kGateway,
       .cache_key_salt = candles_ ? ForecastCacheSalt(*candles_) : nullptr});
  if (!gateway.ok()) return gateway.status();
  gateway_ = std::move(*gateway);
  if (auto s = gateway_->Install(router_); !s.ok()) return s;
  if (models_) {
    // Model metadata is cached (an hour by default): a state change drops its entries.
    models_->OnChange([gw = gateway_.get()](std::string_view name) {
      gw->Invalidate("/v1/models", "/v1/models");
      gw->Invalidate("/v1/models/{name}", "/v1/models/" + std::string(name));
    });
  }
  gateway_->Start();
  if (auto s = server_->Start(); !s.ok()) return s;
  // With jobs.concurrency 0 the API only enqueues; megaserve worker processes run the jobs.
  if (workers_ && config_.jobs.concurrency > 0) workers_->Start();
  if (webhooks_) webhooks_->Start();
  if (market_sync_) market_sync_->Start();
  started_ = true;
  server_->set_ready(true);
  return core::Status::Ok();
}

void App::Shutdown() {
  if (stopped_) return;
  stopped_ = true;
  if (server_) server_->Shutdown();
  if (gateway_) gateway_->Stop();
  if (streams_) streams_->Stop();
  if (workers_ && started_) workers_->Stop(config_.server.drain_timeout);
  if (webhooks_) webhooks_->Stop(config_.server.drain_timeout);
  if (market_sync_) market_sync_->Stop();
  if (pool_) pool_->Shutdown();
}

}  // namespace megaserve::api
