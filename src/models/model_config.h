// A model's config.toml: which backend serves it, its version, how requests to it are batched,
// how many instances run and the inputs that warm it up.
//
//   backend = "echo"            # required: a backend registered with the Repository
//   version = 3                 # integer >= 1; default 1
//   instances = 1               # >= 1
//   [batching]
//   max_batch_size = 8          # >= 1
//   max_queue_delay = "5ms"     # a duration, as core::ParseFineDuration reads it ("250us")
//   preferred_batch_sizes = [4, 8]
//   max_queue_size = 1024       # >= 1
//   priority_levels = 1         # >= 1
//   wait_spin_us = 50           # 0..1000000: how long an idle worker polls before sleeping
//   [warmup]
//   inputs = [{ text = "hello" }]  # free-form; each element is one warm-up request
//
// Unknown keys, wrong types and out-of-range values are errors naming the key and its
// FILE:LINE:COLUMN, as core::LoadConfig reports them for megaserve.toml.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "core/status.h"

namespace megaserve::models {

struct BatchingConfig {
  int max_batch_size = 1;
  std::chrono::microseconds max_queue_delay{0};
  std::vector<int> preferred_batch_sizes;
  int max_queue_size = 1024;
  int priority_levels = 1;
  // batching::DynamicBatcherOptions::wait_spin, in microseconds; 0 sleeps at once.
  int wait_spin_us = 50;

  bool operator==(const BatchingConfig&) const = default;
};

struct ModelConfig {
  std::string backend;
  int version = 1;
  int instances = 1;
  BatchingConfig batching;
  // The warm-up requests as JSON text, one per element of [warmup] inputs (a table alone is one
  // request). Run in order on every freshly loaded model before it serves.
  std::vector<std::string> warmup_inputs;

  bool operator==(const ModelConfig&) const = default;
};

// Reads and validates the config.toml at `path`. Errors: NotFound when the file is missing,
// InvalidArgument naming every problem (one per line) otherwise.
core::Result<ModelConfig> LoadModelConfig(const std::string& path);

// As LoadModelConfig, from TOML text; `path` is only used in messages.
core::Result<ModelConfig> ParseModelConfig(std::string_view text, const std::string& path);

}  // namespace megaserve::models
