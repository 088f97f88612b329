// Native forecast engine timing (driven by bench/forecast.sh, next to bench/forecast_torch.py).
//
//   forecast_bench [--model MODEL.safetensors] [--write-weights OUT.safetensors] [--seed 42]
//                  [--batches 1,32] [--reps 300] [--min-ms 300] [--clock wall|cpu]
//                  [--stat median|min] [--threads 1] [--precisions fp32,int8]
//
// Loads a model (FP32 or INT8 file; for an INT8 file the INT8 engine uses its exact integers),
// or draws default-shape weights (7 inputs, 2 x 64, horizon 6 x 3 quantiles, window 64) from a
// fixed seed and, with --write-weights, writes them as an FP32 file for the PyTorch side. Times
// LstmEngine::Run in FP32 and INT8 for each batch size on one thread: warm-up runs first, then
// at least --reps timed calls (more until --min-ms have passed), and prints the median per call
// (wall-clock time, or with --clock cpu the thread's CPU time, which leaves out the time the
// thread waited for a core on a busy machine; --stat min prints the fastest call instead, the
// least disturbed one when other work shares the cores). --threads takes a comma-separated list
// of EngineOptions::threads values (0: all cores) and times every case with each; a case run
// with more than one thread says so in its line (the CPU clock counts only the calling thread,
// so it is refused there):
//   engine kernel avx2
//   engine threads 1,2
//   engine fp32 batch 1 us <median>
//   engine int8 batch 32 us <median>
//   engine int8 batch 32 threads 2 us <median>
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "forecast/lstm_engine.h"
#include "forecast/lstm_model.h"

namespace {

using namespace megaserve::forecast;
using Clock = std::chrono::steady_clock;

// PyTorch's nn.LSTM / nn.Linear initialization, U(-1/sqrt(H), 1/sqrt(H)), from a fixed seed.
ForecastModel RandomModel(uint32_t seed) {
  ForecastModel m;
  const LstmShape s;
  std::mt19937 rng(seed);
  const float bound = 1.0f / std::sqrt(static_cast<float>(s.hidden_size));
  std::uniform_real_distribution<float> u(-bound, bound);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = u(rng);
    return v;
  };
  m.weights.shape = s;
  const std::size_t g = 4 * s.hidden_size;
  for (int l = 0; l < s.num_layers; ++l) {
    const std::size_t in = l == 0 ? s.input_size : s.hidden_size;
    m.weights.layers.push_back({fill(g * in), fill(g * s.hidden_size), fill(g), fill(g)});
  }
  m.weights.head_w = fill(static_cast<std::size_t>(s.outputs()) * s.hidden_size);
  m.weights.head_b = fill(s.outputs());
  m.info.symbol = "BTCUSDT";
  m.info.interval = "4h";
  m.info.seed = seed;
  m.info.norm.std.fill(1.0f);
  return m;
}

// The calling thread's CPU time in microseconds.
double ThreadCpuMicros() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) * 1e-3;
}

double MedianMicros(const LstmEngine& engine, const std::vector<float>& inputs, int batch, int reps,
                    double min_ms, bool cpu_clock, bool fastest) {
  std::vector<float> out(static_cast<std::size_t>(batch) * engine.shape().outputs());
  for (int i = 0; i < 10; ++i) engine.Run(inputs, batch, out);
  std::vector<double> us;
  const auto start = Clock::now();
  while (static_cast<int>(us.size()) < reps ||
         std::chrono::duration<double, std::milli>(Clock::now() - start).count() < min_ms) {
    const double c0 = cpu_clock ? ThreadCpuMicros() : 0;
    const auto t0 = Clock::now();
    engine.Run(inputs, batch, out);
    us.push_back(cpu_clock ? ThreadCpuMicros() - c0
                           : std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  if (fastest) return *std::min_element(us.begin(), us.end());
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times the native forecast engine (FP32 and INT8)"};
  std::string model_path, write_path, clock = "wall", stat = "median";
  std::vector<int> batches = {1, 32}, thread_counts = {1};
  std::vector<std::string> precision_names = {"fp32", "int8"};
  uint32_t seed = 42;
  int reps = 300;
  double min_ms = 300;
  app.add_option("--model", model_path, "model .safetensors (FP32 or INT8)");
  app.add_option("--write-weights", write_path, "write the random FP32 weights here");
  app.add_option("--seed", seed, "seed of the random weights and inputs");
  app.add_option("--batches", batches, "comma-separated batch sizes")->delimiter(',');
  app.add_option("--reps", reps, "timed calls per case (at least)");
  app.add_option("--min-ms", min_ms, "time per case (at least)");
  app.add_option("--clock", clock, "wall: elapsed time; cpu: the thread's CPU time")
      ->check(CLI::IsMember({"wall", "cpu"}));
  app.add_option("--stat", stat, "median: the median call; min: the fastest call")
      ->check(CLI::IsMember({"median", "min"}));
  app.add_option("--threads", thread_counts,
                 "comma-separated EngineOptions::threads values to time (0: all cores)")
      ->delimiter(',');
  app.add_option("--precisions", precision_names, "comma-separated precisions to time")
      ->delimiter(',')
      ->check(CLI::IsMember({"fp32", "int8"}));
  CLI11_PARSE(app, argc, argv);
  std::vector<Precision> precisions;
  for (const std::string& name : precision_names) precisions.push_back(*ParsePrecision(name));

  ForecastModel model;
  Int8Matrices int8;
  EngineOptions int8_options;
  if (!model_path.empty()) {
    auto read = ReadModel(model_path);
    if (!read.ok()) {
      std::fprintf(stderr, "%s\n", read.status().ToString().c_str());
      return 1;
    }
    model = std::move(read).value();
    if (auto ints = ReadInt8Weights(model_path); ints.ok()) {
      int8 = std::move(ints).value();
      int8_options.int8 = &int8;
    }
  } else {
    model = RandomModel(seed);
    if (!write_path.empty()) {
      if (auto st = WriteModelFp32(model, write_path); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
    }
  }
  const LstmShape& shape = model.weights.shape;
  std::printf("engine kernel %s\n", std::string(KernelName()).c_str());
  std::string used;
  for (int t : thread_counts) {
    used += (used.empty() ? "" : ",") +
            std::to_string(t > 0 ? t : std::max(1u, std::thread::hardware_concurrency()));
  }
  std::printf("engine threads %s\n", used.c_str());
  for (Precision p : precisions) {
    for (int threads : thread_counts) {
      EngineOptions options = p == Precision::kInt8 ? int8_options : EngineOptions{};
      options.threads = threads;
      auto engine = LstmEngine::Create(model.weights, p, options);
      if (!engine.ok()) {
        std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
        return 1;
      }
      const int resolved = (*engine)->threads();
      if (resolved > 1 && clock == "cpu") {
        std::fprintf(stderr, "--clock cpu times only the calling thread; use wall with threads\n");
        return 1;
      }
      for (int batch : batches) {
        std::mt19937 rng(seed + batch);
        std::normal_distribution<float> n(0, 1);
        std::vector<float> inputs(static_cast<std::size_t>(batch) * shape.window *
                                  shape.input_size);
        for (auto& x : inputs) x = n(rng);
        const double us =
            MedianMicros(**engine, inputs, batch, reps, min_ms, clock == "cpu", stat == "min");
        const std::string threads_key =
            resolved > 1 ? " threads " + std::to_string(resolved) : std::string();
        std::printf("engine %s batch %d%s us %.1f\n", std::string(PrecisionName(p)).c_str(), batch,
                    threads_key.c_str(), us);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
