// The `serve` process as an object: configuration in, a running HTTP server with the job store,
// workers and every route out. main() and the integration tests build the same thing.
//
// Start-up order: open the store (and migrate it when store.migrate_on_start), start the
// blocking pool, the job queue, the workers, the webhook dispatcher (when webhooks.secret is set)
// and the event streams, register the routes, then listen, then start the market data sync (when
// market_data.sync lists series). Shutdown runs the other way: HTTP drains first (in-flight
// requests finish, streams get their last chunk), then event streams, workers (running jobs get
// server.drain_timeout to finish), webhook deliveries in flight (as long again), the market data
// sync, and the blocking pool.
#pragma once

#include <memory>
#include <optional>

#include "api/job_events.h"
#include "api/status.h"
#include "core/blocking_pool.h"
#include "core/config.h"
#include "forecast/candle_store.h"
#include "forecast/forecast_service.h"
#include "forecast/market_sync.h"
#include "gateway/api_keys.h"
#include "gateway/gateway.h"
#include "jobs/job_queue.h"
#include "jobs/ssrf_guard.h"
#include "jobs/webhook_dispatcher.h"
#include "jobs/workers.h"
#include "models/repository.h"
#include "net/router.h"
#include "net/server.h"
#include "store/database.h"

namespace megaserve::metrics {
class Registry;
}

namespace megaserve::api {

// What a process runs: `serve` (every role) or `gateway` (the gateway alone: system and admin
// routes, and the [[routes]] that name an upstream, proxied; no job workers or models).
enum class Role { kServe, kGateway };

class App {
 public:
  // Opens the store and builds everything; nothing listens yet. `config` and `registry` must
  // outlive the App.
  static core::Result<std::unique_ptr<App>> Create(const core::Config& config,
                                                   metrics::Registry& registry,
                                                   Role role = Role::kServe);
  ~App();                    // Shuts down if still running.
  App(const App&) = delete;  // No copying allowed.
  App& operator=(const App&) = delete;

  // Routes may be added here until Start().
  net::Router& router() { return router_; }

  // Binds the HTTP server, builds the gateway around the routes (which may refuse an unsafe
  // setup, see gateway::ResolveKeysRequired), starts the workers and the server, then reports
  // ready.
  core::Status Start();

  // Graceful shutdown (see the top of this file). Idempotent.
  void Shutdown();

  net::Server& server() { return *server_; }
  jobs::JobQueue& queue() { return *queue_; }
  jobs::Workers& workers() { return *workers_; }
  StatusCache& status() { return *status_; }
  store::Database& database() { return *db_; }
  models::Repository& models() { return *models_; }
  forecast::CandleStore& candles() { return *candles_; }
  forecast::ForecastService& forecasts() { return *forecasts_; }
  gateway::ApiKeyStore& keys() { return *keys_; }
  gateway::Gateway& gateway() { return *gateway_; }

 private:
  App(const core::Config& config, metrics::Registry& registry, Role role);

  const core::Config& config_;
  metrics::Registry& registry_;
  Role role_;
  std::unique_ptr<store::Database> db_;
  std::unique_ptr<gateway::ApiKeyStore> keys_;
  std::unique_ptr<models::Repository> models_;            // outlives pool_, whose tasks use it
  std::unique_ptr<forecast::CandleStore> candles_;        // serve only; outlives pool_ too
  std::unique_ptr<forecast::ForecastService> forecasts_;  // serve only; outlives pool_ too
  std::unique_ptr<forecast::PeriodicSync> market_sync_;   // serve with market_data.sync only
  std::unique_ptr<core::BlockingPool> pool_;
  std::unique_ptr<jobs::JobQueue> queue_;
  std::unique_ptr<jobs::Workers> workers_;
  std::unique_ptr<JobEventStreams> streams_;
  std::optional<jobs::SsrfGuard> webhook_guard_;       // from [webhooks]
  std::unique_ptr<jobs::WebhookDispatcher> webhooks_;  // null without webhooks.secret
  net::Router router_;
  std::unique_ptr<StatusCache> status_;
  std::unique_ptr<net::Server> server_;
  std::unique_ptr<gateway::Gateway> gateway_;  // uses the server's loops: destroyed first
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace megaserve::api
