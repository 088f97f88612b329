// Model backends: the interface a loaded model implements and the factory that loads one.
//
// A backend is named in a model's config.toml (`backend = "echo"`); the Repository keeps one
// factory per name (Repository::RegisterBackend) and calls it to load a model. Factories run on
// a blocking thread and may take long (reading weights, allocating device memory).
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "models/model_config.h"

namespace megaserve::models {

// The bytes of one request to a model. Owned (most requests), or shared with whoever made them:
// many forecast requests carry the same window, and sharing it lets a request wait in a
// batcher's queue without a copy. Converts implicitly from a string, so callers that have one
// pass it as before.
class Input {
 public:
  Input(std::string bytes) : owned_(std::move(bytes)) {}  // NOLINT(google-explicit-constructor)
  // Shares `bytes`, which must not change while this Input lives.
  explicit Input(std::shared_ptr<const std::string> bytes) : shared_(std::move(bytes)) {}

  std::string_view view() const { return shared_ ? std::string_view(*shared_) : owned_; }

 private:
  std::string owned_;
  std::shared_ptr<const std::string> shared_;
};

// A loaded model. Infer() may be called from several threads at once.
class Model {
 public:
  virtual ~Model() = default;

  // Bytes this model holds while loaded (weights, buffers); what the repository's cache counts.
  virtual std::size_t memory_bytes() const = 0;

  // Runs one request. Input and output are JSON text.
  virtual core::Result<std::string> Infer(std::string_view input_json) = 0;

  // Runs one batch: one result per input, in order. The batcher calls this with the requests it
  // grouped; the default runs Infer() on each, and a backend that gains from batching (one
  // matrix product for all the inputs) overrides it.
  virtual std::vector<core::Result<std::string>> InferBatch(const std::vector<Input>& inputs);
};

// What a factory is given to load one model.
struct ModelSpec {
  std::string name;
  std::string dir;  // the model's folder: config.toml and the model's files
  ModelConfig config;
};

// Loads a model; returns it ready to serve, or why it could not be loaded.
using BackendFactory = std::function<core::Result<std::unique_ptr<Model>>(const ModelSpec&)>;

// The built-in "echo" backend: Infer() returns its input; memory is the total size of the files
// in the model's folder. For tests and trying the server out.
core::Result<std::unique_ptr<Model>> LoadEchoModel(const ModelSpec& spec);

}  // namespace megaserve::models
