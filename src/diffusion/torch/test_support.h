// Helpers for the libtorch component tests: run a Python reference script (Debian's
// python3-torch, from /usr/bin/python3) into a temporary folder, read its safetensors outputs,
// and compare tensors.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "diffusion/torch/weights.h"

namespace megaserve::diffusion::testing {

// The repository's root (MEGASERVE_SOURCE_DIR, set by ctest).
inline std::filesystem::path SourceDir() {
  const char* dir = std::getenv("MEGASERVE_SOURCE_DIR");
  return dir != nullptr ? std::filesystem::path(dir) : std::filesystem::current_path();
}

// A fresh empty folder under the system temp folder, removed by the caller (or left for
// inspection when a test fails).
inline std::filesystem::path MakeTempDir(const std::string& tag) {
  std::string pattern = (std::filesystem::temp_directory_path() / ("megaserve-" + tag + "-XXXXXX"));
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

// Runs `/usr/bin/python3 tests/diffusion/<script> <args>`; returns its exit status (0 = ok).
inline int RunPython(const std::string& script, const std::string& args) {
  const std::string cmd =
      "/usr/bin/python3 " + (SourceDir() / "tests/diffusion" / script).string() + " " + args;
  return std::system(cmd.c_str());
}

// Reads every tensor of a safetensors file in fp32.
inline Weights ReadTensors(const std::filesystem::path& file) {
  return Weights::FromFile(file.string(), ComputeOptions{});
}

// Largest absolute difference between two tensors of the same shape (in fp32).
inline double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().max().item<double>();
}

#define EXPECT_TENSOR_NEAR(actual, expected, tol)                                  \
  do {                                                                             \
    const at::Tensor& a_ = (actual);                                               \
    const at::Tensor& e_ = (expected);                                             \
    ASSERT_EQ(a_.sizes(), e_.sizes());                                             \
    const double d_ = ::megaserve::diffusion::testing::MaxAbsDiff(a_, e_);         \
    EXPECT_LE(d_, (tol)) << "max |actual - expected| = " << d_ << " for " #actual; \
  } while (0)

}  // namespace megaserve::diffusion::testing
