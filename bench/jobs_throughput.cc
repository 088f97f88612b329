// Job-queue throughput: N `noop` jobs go through enqueue -> claim -> complete on one store.
//
// Producers enqueue the jobs (as fast as they can, or paced at --rate jobs/s on a fixed
// schedule, so a slow enqueue does not lower the offered rate afterwards); W workers loop
// Claim("default", {"noop"}, B) and acknowledge what they got: with B = 1 one Complete per job,
// with B > 1 one CompleteMany for the whole batch (batched claim and ack).
//
// Reported: jobs/s from the first enqueue call to the last completion, the rate enqueues were
// issued at, and p50/p99 of enqueue -> claim latency: from the return of Enqueue (the job is
// committed and acknowledged) to the return of the Claim that handed it out, i.e. the time the
// job waited in the queue. The same measured from the start of the Enqueue call, which adds the
// enqueue transaction's own commit, is printed beside it. The last line is machine-readable:
//   result jobs_per_s=... enqueue_per_s=... p50_ms=... p99_ms=... p50_call_ms=...
//   jobs_throughput --url URL --jobs N --workers W --batch B [--rate R] [--producers P]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"
#include "jobs/job_queue.h"
#include "store/database.h"
#include "store/migrations.h"

namespace {

using megaserve::core::Status;
using megaserve::jobs::JobQueue;
using Clock = std::chrono::steady_clock;

struct Settings {
  std::string url;
  int jobs = 5000;
  int workers = 4;
  int batch = 1;
  int enqueue_batch = 1;     // jobs per enqueue call; above 1 through EnqueueMany
  bool no_coalesce = false;  // every call its own statement (JobQueue::Options::coalesce off)
  int producers = 2;
  double rate = 0;  // jobs/s over all producers; 0 = unpaced
  int idle_sleep_us = 50'000;
};

// The first error any thread hit; the run stops at once when there is one.
class FirstError {
 public:
  void Set(const std::string& where, const Status& status) {
    std::lock_guard lock(mu_);
    if (message_.empty()) message_ = where + ": " + status.ToString();
    failed_.store(true);
  }
  bool failed() const { return failed_.load(std::memory_order_relaxed); }
  std::string message() const {
    std::lock_guard lock(mu_);
    return message_;
  }

 private:
  mutable std::mutex mu_;
  std::string message_;
  std::atomic<bool> failed_{false};
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

int Run(const Settings& cfg) {
  megaserve::store::StoreOptions options;
  options.url = cfg.url;
  options.pool_size = std::max(20, cfg.workers + cfg.producers + 2);
  auto db = megaserve::store::Database::Open(options);
  if (!db.ok()) {
    std::fprintf(stderr, "jobs_throughput: open %s: %s\n", cfg.url.c_str(),
                 db.status().ToString().c_str());
    return 1;
  }
  megaserve::store::Database& store = **db;
  if (Status migrated = megaserve::store::Migrate(store); !migrated.ok()) {
    std::fprintf(stderr, "jobs_throughput: migrate: %s\n", migrated.ToString().c_str());
    return 1;
  }
  // Every run starts from empty tables. On PostgreSQL TRUNCATE (rather than DELETE) also drops
  // the dead rows and index entries an earlier run left, so runs do not slow each other down.
  auto cleared = store.Execute(
      store.engine() == megaserve::store::Engine::kPostgres
          ? "TRUNCATE webhook_deliveries, job_events, jobs"
          : "DELETE FROM webhook_deliveries; DELETE FROM job_events; DELETE FROM jobs");
  if (!cleared.ok()) {
    std::fprintf(stderr, "jobs_throughput: clear: %s\n", cleared.status().ToString().c_str());
    return 1;
  }

  FirstError error;
  std::atomic<int> next_job{0};
  std::atomic<int> enqueued{0};
  std::atomic<int> completed{0};
  std::atomic<int> empty_claims{0};
  std::atomic<int64_t> last_enqueue_ns{0};
  std::atomic<int64_t> last_complete_ns{0};
  // Enqueue start per job id, filled by producers; claim times are matched up after the run.
  std::mutex enqueued_mu;
  std::unordered_map<std::string, std::pair<Clock::time_point, Clock::time_point>> enqueued_at;
  enqueued_at.reserve(static_cast<size_t>(cfg.jobs));
  std::vector<std::vector<std::pair<std::string, Clock::time_point>>> claimed_at(
      static_cast<size_t>(cfg.workers));
  auto done = [&] { return completed.load() >= cfg.jobs || error.failed(); };
  auto since = [](Clock::time_point base) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - base).count();
  };

  // One JobQueue for every thread, as in a server process: its enqueues wake idle workers
  // through Subscribe (as Workers does), so nobody spins on an empty queue.
  JobQueue::Options queue_options;
  queue_options.coalesce = !cfg.no_coalesce;
  JobQueue queue(store, "bench", queue_options);
  std::mutex idle_mu;
  std::condition_variable idle_cv;
  uint64_t announced = 0;  // guarded by idle_mu
  const int subscription = queue.Subscribe([&](const std::string&) {
    {
      std::lock_guard lock(idle_mu);
      ++announced;
    }
    idle_cv.notify_one();  // one job, one worker: waking all would make the rest claim nothing
  });

  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (int p = 0; p < cfg.producers; ++p) {
    threads.emplace_back([&] {
      megaserve::jobs::NewJob job;
      job.type = "noop";
      job.input_json = "{}";
      const int per_call = std::max(1, cfg.enqueue_batch);
      for (int i; (i = next_job.fetch_add(per_call)) < cfg.jobs && !error.failed();) {
        const int n = std::min(per_call, cfg.jobs - i);
        // A fixed schedule (job i at start + i/rate) keeps the offered load at --rate.
        if (cfg.rate > 0)
          std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                    std::chrono::duration<double>(i / cfg.rate)));
        const Clock::time_point t = Clock::now();
        std::vector<std::string> ids;
        if (n == 1 && cfg.enqueue_batch <= 1) {
          auto added = queue.Enqueue(job);
          if (!added.ok()) return error.Set("enqueue", added.status());
          ids.push_back(added->id);
        } else {
          auto added = queue.EnqueueMany(std::vector<megaserve::jobs::NewJob>(n, job));
          if (!added.ok()) return error.Set("enqueue", added.status());
          for (const auto& j : *added) ids.push_back(j.id);
        }
        {
          std::lock_guard lock(enqueued_mu);
          for (const std::string& id : ids)
            enqueued_at.emplace(id, std::make_pair(t, Clock::now()));
        }
        enqueued.fetch_add(n);
        int64_t now_ns = since(start);
        int64_t prev = last_enqueue_ns.load();
        while (prev < now_ns && !last_enqueue_ns.compare_exchange_weak(prev, now_ns)) {
        }
      }
    });
  }
  for (int w = 0; w < cfg.workers; ++w) {
    threads.emplace_back([&, w] {
      const std::vector<std::string> types = {"noop"};
      auto& mine = claimed_at[static_cast<size_t>(w)];
      while (!done()) {
        uint64_t seen = 0;
        {
          std::lock_guard lock(idle_mu);
          seen = announced;
        }
        auto claimed = queue.Claim("default", types, cfg.batch);
        if (!claimed.ok()) return error.Set("claim", claimed.status());
        const Clock::time_point t = Clock::now();
        if (claimed->empty()) {
          empty_claims.fetch_add(1, std::memory_order_relaxed);
          // Idle until the next enqueue (or a short poll, as a worker would).
          std::unique_lock lock(idle_mu);
          idle_cv.wait_for(lock, std::chrono::microseconds(cfg.idle_sleep_us),
                           [&] { return announced != seen || done(); });
          continue;
        }
        if (cfg.batch > 1) {
          // Batched ack: the whole claim is acknowledged in one statement.
          std::vector<JobQueue::Ack> acks;
          for (const auto& c : *claimed) {
            mine.emplace_back(c.job.id, t);
            acks.push_back({c.job.id, c.fencing_token, "{}"});
          }
          auto acked = queue.CompleteMany(acks);
          if (!acked.ok()) return error.Set("complete", acked.status());
          for (const Status& s : *acked) {
            if (!s.ok()) return error.Set("complete", s);
          }
          completed.fetch_add(static_cast<int>(acks.size()));
        } else {
          for (const auto& c : *claimed) {
            mine.emplace_back(c.job.id, t);
            if (Status s = queue.Complete(c.job.id, c.fencing_token, "{}"); !s.ok()) {
              return error.Set("complete", s);
            }
            completed.fetch_add(1);
          }
        }
        // Benign race between workers: the largest value wins eventually, which is all we need.
        int64_t now_ns = since(start);
        int64_t prev = last_complete_ns.load();
        while (prev < now_ns && !last_complete_ns.compare_exchange_weak(prev, now_ns)) {
        }
      }
    });
  }

  // One progress line on stderr, redrawn in place, once a run has taken more than a second.
  const bool tty = isatty(STDERR_FILENO) != 0;
  bool drew = false;
  while (!done()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    double elapsed = Ms(Clock::now() - start) / 1000;
    if (tty && elapsed > 1) {
      std::fprintf(stderr, "\r  %5.1f s  enqueued %d/%d  completed %d/%d   ", elapsed,
                   enqueued.load(), cfg.jobs, completed.load(), cfg.jobs);
      drew = true;
    }
  }
  if (drew) std::fprintf(stderr, "\r%70s\r", "");
  idle_cv.notify_all();
  for (auto& t : threads) t.join();
  queue.Unsubscribe(subscription);
  if (error.failed()) {
    std::fprintf(stderr, "jobs_throughput: %s\n", error.message().c_str());
    return 1;
  }

  std::vector<double> latencies;       // from Enqueue's return
  std::vector<double> call_latencies;  // from Enqueue's call
  latencies.reserve(static_cast<size_t>(cfg.jobs));
  call_latencies.reserve(static_cast<size_t>(cfg.jobs));
  for (const auto& worker : claimed_at) {
    for (const auto& [id, t] : worker) {
      auto it = enqueued_at.find(id);
      if (it == enqueued_at.end()) continue;
      latencies.push_back(Ms(t - it->second.second));
      call_latencies.push_back(Ms(t - it->second.first));
    }
  }
  std::sort(latencies.begin(), latencies.end());
  std::sort(call_latencies.begin(), call_latencies.end());
  const double total_s = static_cast<double>(last_complete_ns.load()) / 1e9;
  const double enqueue_s = static_cast<double>(last_enqueue_ns.load()) / 1e9;
  const double jobs_per_s = cfg.jobs / total_s;
  const double enqueue_per_s = cfg.jobs / enqueue_s;
  const double p50 = Percentile(latencies, 0.50);
  const double p99 = Percentile(latencies, 0.99);
  const double p50_call = Percentile(call_latencies, 0.50);
  const double p99_call = Percentile(call_latencies, 0.99);
  std::printf(
      "%s: %d jobs, %d producers (enqueue batch %d), %d workers (claim/ack batch %d), rate %s%s\n",
      std::string(megaserve::store::EngineName(store.engine())).c_str(), cfg.jobs, cfg.producers,
      cfg.enqueue_batch, cfg.workers, cfg.batch,
      cfg.rate > 0 ? (std::to_string(static_cast<int>(cfg.rate)) + " jobs/s").c_str() : "unpaced",
      cfg.no_coalesce ? ", no coalescing" : "");
  std::printf(
      "  end to end: %.0f jobs/s (%.3f s); enqueues issued at %.0f jobs/s; %d claims found "
      "nothing\n",
      jobs_per_s, total_s, enqueue_per_s, empty_claims.load());
  std::printf(
      "  enqueue->claim: p50 %.3f ms, p99 %.3f ms (from the Enqueue call: p50 %.3f, p99 %.3f; "
      "%zu samples)\n",
      p50, p99, p50_call, p99_call, latencies.size());
  std::printf(
      "result jobs_per_s=%.1f enqueue_per_s=%.1f p50_ms=%.3f p99_ms=%.3f p50_call_ms=%.3f\n",
      jobs_per_s, enqueue_per_s, p50, p99, p50_call);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Settings cfg;
  CLI::App app{"Job-queue throughput: enqueue -> claim -> complete of noop jobs."};
  app.add_option("--url", cfg.url, "store URL (sqlite:///ABS/PATH.db or postgresql://...)")
      ->required();
  app.add_option("--jobs", cfg.jobs, "jobs to run")->check(CLI::PositiveNumber);
  app.add_option("--workers", cfg.workers, "worker threads")->check(CLI::PositiveNumber);
  app.add_option("--batch", cfg.batch, "jobs per claim; above 1 each claim is acked in one batch")
      ->check(CLI::PositiveNumber);
  app.add_option("--enqueue-batch", cfg.enqueue_batch,
                 "jobs per enqueue call; above 1 they are inserted together (EnqueueMany)")
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-coalesce", cfg.no_coalesce,
               "PostgreSQL: run every enqueue, claim and ack as its own statement instead of "
               "letting concurrent calls share statements");
  app.add_option("--rate", cfg.rate, "enqueue rate in jobs/s over all producers; 0 = unpaced")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--producers", cfg.producers, "producer threads")->check(CLI::PositiveNumber);
  app.add_option("--idle-sleep-us", cfg.idle_sleep_us,
                 "longest worker wait after an empty claim (an enqueue ends it sooner)")
      ->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  return Run(cfg);
}
