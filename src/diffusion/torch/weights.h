// Named weights of one model component, as tensors ready to compute with.
//
// Inside the libtorch plugin errors are exceptions (libtorch reports its own that way); the
// plugin's entry points turn them into core::Status. A missing or misshapen weight throws
// WeightError naming the weight and the file it was looked for in.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "diffusion/torch/compute_options.h"

namespace megaserve::diffusion {

class SafetensorsFile;

class WeightError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Weights {
 public:
  Weights() = default;

  // Every tensor of a safetensors file. F32 tensors stay in the file's memory mapping when
  // `options.dtype` is kFloat (no copy); other dtypes are converted to `options.dtype`.
  // Throws WeightError when the file cannot be read.
  static Weights FromFile(const std::string& path, const ComputeOptions& options);

  // Adds (or replaces) one tensor.
  void Add(std::string name, at::Tensor tensor);

  // The tensor called `name`. Throws WeightError when it is absent.
  const at::Tensor& Get(std::string_view name) const;
  // The tensor called `name`, checked to have `shape`. Throws WeightError otherwise.
  const at::Tensor& Get(std::string_view name, at::IntArrayRef shape) const;
  bool Has(std::string_view name) const;

  // Names of all tensors, sorted.
  std::vector<std::string> Names() const;
  // Bytes held by the tensors.
  std::size_t bytes() const;
  // Where the weights came from (a file path), for messages.
  const std::string& source() const { return source_; }
  void set_source(std::string source) { source_ = std::move(source); }

 private:
  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, at::Tensor, Hash, std::equal_to<>> tensors_;
  std::string source_;
};

}  // namespace megaserve::diffusion
