// Dynamic batcher benchmarks (driven by bench/batching.sh).
//
//   batching_bench load [--clients 64] [--seconds 5] [--max-batch 32] [--delay-us 1000]
//       Closed-loop clients against one instance of a backend that busy-waits
//       2 ms + 0.1 ms per item on the steady clock. Prints a `result` line with throughput,
//       latency percentiles and the mean executed batch size.
//   batching_bench overhead [Google Benchmark flags]
//       Per-request cost of Submit -> backend -> result with a backend that does nothing:
//       BM_PollMode runs the batcher on the calling thread (no thread hand-offs), BM_Threaded
//       submits from many threads to one worker instance, `inflight` requests outstanding per
//       thread. The wall_ns_per_req counter is wall time per completed request.
#include <benchmark/benchmark.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "batching/dynamic_batcher.h"
#include "metrics/registry.h"

namespace {

using megaserve::batching::DynamicBatcher;
using megaserve::batching::DynamicBatcherOptions;
using megaserve::batching::SubmitOptions;
using megaserve::core::Result;
using SteadyClock = std::chrono::steady_clock;
using Batcher = DynamicBatcher<int, int>;

void BusyWait(SteadyClock::duration d) {
  const auto until = SteadyClock::now() + d;
  while (SteadyClock::now() < until) {
  }
}

std::vector<Result<int>> Echo(std::vector<int>& reqs) {
  std::vector<Result<int>> out;
  out.reserve(reqs.size());
  for (int r : reqs) out.emplace_back(r);
  return out;
}

int RunLoad(int clients, double seconds, std::size_t max_batch, int delay_us) {
  megaserve::metrics::Registry registry;
  DynamicBatcherOptions o;
  o.model = "load";
  o.registry = &registry;
  o.instances = 1;
  o.max_batch_size = max_batch;
  o.max_queue_delay = std::chrono::microseconds(delay_us);
  std::atomic<uint64_t> batches{0};
  Batcher batcher(o, [&](std::vector<int>& reqs) {
    BusyWait(std::chrono::microseconds(2000 + 100 * static_cast<int64_t>(reqs.size())));
    batches.fetch_add(1, std::memory_order_relaxed);
    return Echo(reqs);
  });
  const auto warmup = std::chrono::milliseconds(300);
  const auto start = SteadyClock::now();
  const auto measure_from = start + warmup;
  const auto stop_at = measure_from + std::chrono::duration<double>(seconds);
  std::vector<std::vector<double>> latencies(clients);
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto& mine = latencies[c];
      for (;;) {
        const auto t0 = SteadyClock::now();
        if (t0 >= stop_at) break;
        auto r = batcher.Submit(c).result.get();
        const auto t1 = SteadyClock::now();
        if (r.ok() && t0 >= measure_from && t1 <= stop_at) {
          mine.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  std::vector<double> all;
  for (auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) {
    return all.empty() ? 0.0
                       : all[std::min(all.size() - 1, static_cast<std::size_t>(p * all.size()))];
  };
  const double rate = static_cast<double>(all.size()) / seconds;
  const double total_batches = static_cast<double>(batches.load());
  std::printf("clients=%d max_batch=%zu delay_us=%d seconds=%.1f completed=%zu\n", clients,
              max_batch, delay_us, seconds, all.size());
  std::printf(
      "result max_batch=%zu req_per_s=%.0f p50_ms=%.2f p95_ms=%.2f p99_ms=%.2f batches=%.0f\n",
      max_batch, rate, pct(0.50), pct(0.95), pct(0.99), total_batches);
  return 0;
}

// The batcher on the calling thread: 32 submissions with callbacks, then one Poll().
void BM_PollMode(benchmark::State& state) {
  megaserve::metrics::Registry registry;
  DynamicBatcherOptions o;
  o.registry = &registry;
  o.instances = 0;
  o.max_batch_size = 32;
  o.max_queue_delay = {};
  Batcher batcher(o, Echo);
  int64_t sum = 0;
  SubmitOptions so;
  const auto start = SteadyClock::now();
  for (auto _ : state) {
    for (int i = 0; i < 32; ++i) {
      batcher.Submit(i, so, [&sum](Result<int> r) { sum += r.value(); });
    }
    batcher.Poll();
  }
  const double wall = std::chrono::duration<double, std::nano>(SteadyClock::now() - start).count();
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * 32);
  state.counters["wall_ns_per_req"] = wall / static_cast<double>(state.iterations() * 32);
}
BENCHMARK(BM_PollMode)->UseRealTime();

double ProcessCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

megaserve::metrics::Registry bench_registry;
std::unique_ptr<Batcher> shared_batcher;  // created and destroyed by thread 0 of each run
std::atomic<uint64_t> completed{0};       // requests completed in the current run

// Many threads, each keeping range(0) requests outstanding against one worker instance with
// max_queue_delay range(1) microseconds. Thread 0 reports, per completed request over all
// threads, the wall time (wall_ns_per_req) and the CPU time of the whole process
// (cpu_ns_per_req: the batcher's work plus the clients' and the thread hand-offs).
void BM_Threaded(benchmark::State& state) {
  const int inflight = static_cast<int>(state.range(0));
  if (state.thread_index() == 0) {
    DynamicBatcherOptions o;
    o.registry = &bench_registry;
    o.instances = 1;
    o.max_batch_size = 64;
    o.max_queue_delay = std::chrono::microseconds(state.range(1));
    shared_batcher = std::make_unique<Batcher>(o, Echo);
    completed = 0;
  }
  std::vector<Batcher::Future> futures(inflight);
  int64_t sum = 0;
  double wall0 = 0, cpu0 = 0;
  bool first = true;
  for (auto _ : state) {
    if (first) {  // after the start barrier, so the batcher exists
      first = false;
      wall0 = static_cast<double>(SteadyClock::now().time_since_epoch().count());
      cpu0 = ProcessCpuNs();
    }
    for (auto& f : futures) f = shared_batcher->Submit(1).result;
    for (auto& f : futures) sum += f.get().value();
    completed.fetch_add(static_cast<uint64_t>(inflight), std::memory_order_relaxed);
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(state.iterations() * inflight);
  if (state.thread_index() == 0) {
    const double wall = static_cast<double>(SteadyClock::now().time_since_epoch().count()) - wall0;
    const double cpu = ProcessCpuNs() - cpu0;
    // Counted by the clients themselves: the benchmark library's per-thread iteration
    // accounting makes its own rates hard to read with several threads.
    const double requests = static_cast<double>(completed.exchange(0));
    state.counters["wall_ns_per_req"] = wall / requests;
    state.counters["cpu_ns_per_req"] = cpu / requests;
    shared_batcher.reset();
  }
}
BENCHMARK(BM_Threaded)
    ->ArgsProduct({{1, 32}, {0, 50}})
    ->Threads(1)
    ->Threads(8)
    ->Threads(32)
    ->UseRealTime();

int RunOverhead(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && std::string_view(argv[1]) == "overhead") {
    argv[1] = argv[0];
    return RunOverhead(argc - 1, argv + 1);
  }
  CLI::App app{
      "Dynamic batcher benchmarks: `load` (closed-loop clients, busy-wait backend) or "
      "`overhead` (Google Benchmark)"};
  app.require_subcommand(1);
  auto* load = app.add_subcommand("load", "closed-loop clients against a busy-wait backend");
  int clients = 64;
  double seconds = 5;
  std::size_t max_batch = 32;
  int delay_us = 1000;
  load->add_option("--clients", clients, "client threads")->check(CLI::PositiveNumber);
  load->add_option("--seconds", seconds, "measured seconds (after 0.3 s warm-up)")
      ->check(CLI::PositiveNumber);
  load->add_option("--max-batch", max_batch, "max_batch_size")->check(CLI::PositiveNumber);
  load->add_option("--delay-us", delay_us, "max_queue_delay in microseconds")
      ->check(CLI::NonNegativeNumber);
  app.add_subcommand("overhead", "Google Benchmark of the per-request cost");
  CLI11_PARSE(app, argc, argv);
  return RunLoad(clients, seconds, max_batch, delay_us);
}
