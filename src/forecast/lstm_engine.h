// The native forecast engine: runs a stored LSTM (lstm_model.h) on batches of feature windows
// without libtorch, in FP32 or INT8.
//
// INT8: weight matrices are the file's per-row symmetric int8 values; each step's input vector
// is quantized on the fly, products accumulate in int32 and are rescaled to float before the
// gates, whose nonlinearities and the cell state stay in float. The kernel is picked once, at
// run time, from what the CPU offers: AVX-512 VNNI, else AVX2, else portable C++.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"
#include "forecast/lstm_model.h"

namespace megaserve::forecast {

enum class Precision { kFp32, kInt8 };

// "fp32" / "int8".
std::string_view PrecisionName(Precision precision);
core::Result<Precision> ParsePrecision(std::string_view name);

// The kernel family in use on this CPU: "avx512-vnni", "avx2" or "generic" (what
// MEGASERVE_FORECAST_KERNEL asks for when it names one this CPU has).
std::string_view KernelName();

// Optional choices for LstmEngine::Create.
struct EngineOptions {
  // The INT8 file's exact integers (ReadInt8Weights); when null, kInt8 quantizes `weights`.
  const Int8Matrices* int8 = nullptr;
  // "generic", "avx2" or "avx512-vnni"; empty: MEGASERVE_FORECAST_KERNEL when set, else the
  // best this CPU has. A kernel the CPU lacks is refused (kFailedPrecondition).
  std::string kernel;
  // Cores one Run may use. 1: Run works on the calling thread only. N > 1: a batch of at least
  // 2 * kMinSequencesPerPart sequences is cut into up to N contiguous parts of at least that
  // many sequences; the caller runs the first and N - 1 worker threads, started by Create and
  // joined when the engine is destroyed, run the others. A smaller batch of a model with two or
  // more layers runs as a two-stage pipeline over the layers, on the caller and one worker.
  // Workers spin for 200 us after a job before they sleep. 0: std::thread::hardware_concurrency().
  // Negative is refused (kInvalidArgument). Results are bit-identical for every value.
  int threads = 1;
  // The fewest sequences a part of a split batch holds: below this a part's products are too
  // narrow for the SIMD kernels to pay for the hand-off.
  static constexpr int kMinSequencesPerPart = 8;
};

class LstmEngine {
 public:
  // Prepares `weights` for `precision` (for kInt8, quantized per row as QuantizeRows does; pass
  // the INT8 file's exact integers with EngineOptions::int8 to avoid requantizing a dequantized
  // copy). kInvalidArgument for inconsistent weights; kFailedPrecondition when
  // MEGASERVE_FORECAST_KERNEL names a kernel this CPU lacks.
  static core::Result<std::unique_ptr<LstmEngine>> Create(const LstmWeights& weights,
                                                          Precision precision);
  static core::Result<std::unique_ptr<LstmEngine>> Create(const LstmWeights& weights,
                                                          Precision precision,
                                                          const EngineOptions& options);
  virtual ~LstmEngine() = default;

  // Runs `batch` sequences. `inputs` holds batch x window x input_size normalized features
  // (sequence-major, oldest step first); `outputs` receives batch x outputs() values
  // (LstmShape::outputs(), step-major quantiles). Thread-safe: each call uses its own scratch
  // space (kept per thread, so steady-state calls allocate nothing). With
  // EngineOptions::threads > 1 one call at a time splits its batch across the engine's workers;
  // a call made while they are busy with another runs its whole batch on its own thread.
  virtual void Run(std::span<const float> inputs, int batch, std::span<float> outputs) const = 0;

  virtual const LstmShape& shape() const = 0;
  virtual Precision precision() const = 0;
  // Bytes held by the prepared weights.
  virtual std::size_t memory_bytes() const = 0;
  // The kernel family this engine runs ("avx512-vnni", "avx2", "generic").
  virtual std::string_view kernel() const = 0;
  // The number of threads a split Run uses, the caller's included (EngineOptions::threads, with
  // 0 resolved to the core count).
  virtual int threads() const = 0;
};

}  // namespace megaserve::forecast
