// reliability_worker: a job worker process for the crash tests. It runs the "record" handler
// (record_handler.h) on one queue of a store until SIGTERM/SIGINT, then stops after a short
// drain. The tests SIGKILL it mid-run and start another; its lease owner is
// "reliability:<pid>", so a test can tell which jobs this process holds.
//
// It prints "ready" on stdout once its workers have started; its log goes to stderr.
#include <signal.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "jobs/job_queue.h"
#include "jobs/workers.h"
#include "record_handler.h"
#include "store/database.h"
#include "store/migrations.h"

namespace {

using namespace megaserve;

int Fail(const std::string& what, const core::Status& status) {
  std::fprintf(stderr, "reliability_worker: %s: %s\n", what.c_str(), status.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Runs the \"record\" job handler for the reliability tests until SIGTERM/SIGINT."};
  std::string url;
  std::string queue_name = "default";
  int concurrency = 8;
  int lease_ms = 600;
  int rescue_ms = 200;
  int poll_ms = 50;
  int work_ms = 3;
  bool outside_transaction = false;
  app.add_option("--url", url, "store URL (sqlite:///... or postgresql://...)")->required();
  app.add_option("--queue", queue_name, "queue to claim jobs from")->capture_default_str();
  app.add_option("--concurrency", concurrency, "jobs to run at once")->capture_default_str();
  app.add_option("--lease-ms", lease_ms, "lease length of a claim")->capture_default_str();
  app.add_option("--rescue-ms", rescue_ms, "RescueExpired cadence")->capture_default_str();
  app.add_option("--poll-ms", poll_ms, "claim cadence when idle")->capture_default_str();
  app.add_option("--work-ms", work_ms, "most work per job (uniform 0..work-ms)")
      ->capture_default_str();
  app.add_flag("--record-outside-transaction", outside_transaction,
               "record completions before the work, not in the completing transaction "
               "(unsafe; for the tests' negative control)");
  CLI11_PARSE(app, argc, argv);
  spdlog::set_default_logger(spdlog::stderr_logger_mt("reliability_worker"));

  // Shutdown signals are taken by sigwait below, so every thread must have them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  store::StoreOptions store_options;
  store_options.url = url;
  store_options.pool_size = concurrency + 4;  // runners, dispatcher, heartbeat, slack
  auto db = store::Database::Open(store_options);
  if (!db.ok()) return Fail("opening " + url, db.status());
  if (core::Status s = store::Migrate(**db); !s.ok()) return Fail("migrating", s);

  jobs::JobQueue::Options queue_options;
  queue_options.lease = std::chrono::milliseconds(lease_ms);
  jobs::JobQueue queue(**db, "reliability:" + std::to_string(getpid()), queue_options);
  jobs::WorkersOptions options;
  options.queue = queue_name;
  options.concurrency = concurrency;
  options.poll_interval = std::chrono::milliseconds(poll_ms);
  options.rescue_interval = std::chrono::milliseconds(rescue_ms);
  jobs::Workers workers(queue, options);
  reliability::RegisterRecordHandler(
      workers, **db,
      {.max_work = std::chrono::milliseconds(work_ms), .transactional = !outside_transaction});
  workers.Start();
  std::printf("ready\n");
  std::fflush(stdout);

  int sig = 0;
  sigwait(&signals, &sig);
  workers.Stop(std::chrono::milliseconds(2'000));
  return 0;
}
