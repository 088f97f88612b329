// Test helpers for serving forecasts: a small model with random weights (fixed seed), synthetic
// candles, and a model folder in the layout the "forecast" backend reads.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "forecast/candles.h"
#include "forecast/forecast_backend.h"
#include "forecast/lstm_model.h"

namespace megaserve::forecast::testing {

// 2024-01-01T00:00:00Z.
inline constexpr int64_t kJan2024Ms = 1'704'067'200'000;
inline constexpr int64_t kFourHoursMs = 4 * 3'600'000;

// A small shape that keeps tests fast.
inline LstmShape TinyShape() {
  LstmShape s;
  s.hidden_size = 8;
  s.num_layers = 2;
  s.horizon = 4;
  s.num_quantiles = 3;
  s.window = 16;
  return s;
}

// A model of `shape` with weights uniform in [-0.4, 0.4] drawn from `seed`, for BTCUSDT 4h.
inline ForecastModel TinyModel(LstmShape shape = TinyShape(), uint64_t seed = 7) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-0.4f, 0.4f);
  auto fill = [&](std::size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = u(rng);
    return v;
  };
  ForecastModel m;
  m.weights.shape = shape;
  const std::size_t h = shape.hidden_size;
  for (int l = 0; l < shape.num_layers; ++l) {
    const std::size_t in = l == 0 ? shape.input_size : h;
    m.weights.layers.push_back({fill(4 * h * in), fill(4 * h * h), fill(4 * h), fill(4 * h)});
  }
  m.weights.head_w = fill(shape.outputs() * h);
  m.weights.head_b = fill(shape.outputs());
  m.info.symbol = "BTCUSDT";
  m.info.interval = "4h";
  m.info.quantiles = {0.1, 0.5, 0.9};
  m.info.quantiles.resize(shape.num_quantiles, 0.95);
  for (int f = 0; f < kFeatureCount; ++f) {
    m.info.norm.mean[f] = 0.0f;
    m.info.norm.std[f] = 1.0f;
  }
  m.info.norm.target_scale = 0.01f;
  m.info.seed = seed;
  m.info.trained_at_ms = kJan2024Ms;
  return m;
}

// `count` bars `interval_ms` apart from `first_open_ms`: a random walk (seeded) around 40000.
inline std::vector<Candle> SyntheticCandles(int64_t count, int64_t first_open_ms = kJan2024Ms,
                                            int64_t interval_ms = kFourHoursMs,
                                            uint64_t seed = 11) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> step(0.0, 0.01);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<Candle> out;
  double close = 40000;
  for (int64_t i = 0; i < count; ++i) {
    Candle c;
    c.open_time_ms = first_open_ms + i * interval_ms;
    c.open = close;
    close *= std::exp(step(rng));
    c.close = close;
    c.high = std::max(c.open, c.close) * (1 + 0.004 * u(rng));
    c.low = std::min(c.open, c.close) * (1 - 0.004 * u(rng));
    c.volume = 100 + 50 * u(rng);
    out.push_back(c);
  }
  return out;
}

// Writes <models_dir>/<name>/config.toml (backend "forecast" plus `extra_config`) and the
// model's FP32 and/or INT8 files.
inline void WriteModelDir(const std::string& models_dir, const std::string& name,
                          const ForecastModel& model, bool fp32, bool int8,
                          const std::string& extra_config = "") {
  const std::filesystem::path dir = std::filesystem::path(models_dir) / name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.toml") << "backend = \"forecast\"\n" << extra_config;
  if (fp32) {
    auto s = WriteModelFp32(model, (dir / std::string(kFp32File)).string());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  if (int8) {
    auto s = WriteModelInt8(model, (dir / std::string(kInt8File)).string());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
}

}  // namespace megaserve::forecast::testing
