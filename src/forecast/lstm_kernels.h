// The compute kernels behind LstmEngine (lstm_engine.h): packed weight layouts, blocked matrix
// products in FP32 and INT8, per-column activation quantization and the LSTM cell, each in a
// portable version and SIMD versions chosen at run time. See lstm_kernels.cc for the layouts and
// why they were chosen.
//
// Matrices of activations are "column" matrices: column n (one sequence at one step) is
// contiguous, `ld` elements after column n - 1. Every product accumulates into its output:
// Y[n * ldy + r] += (W X)[r][n]. Outputs must have room for PaddedRows(rows) rows per column;
// the padding rows receive zeros added to whatever they hold.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "forecast/lstm_model.h"

namespace megaserve::forecast::kernels {

enum class Kernel { kGeneric, kAvx2, kAvx512Vnni };

// "generic", "avx2", "avx512-vnni".
std::string_view Name(Kernel kernel);
// kInvalidArgument names the allowed values.
core::Result<Kernel> Parse(std::string_view name);
// Whether this CPU can run `kernel`.
bool CpuSupports(Kernel kernel);
// The fastest kernel this CPU supports.
Kernel Best();
// The kernel named by MEGASERVE_FORECAST_KERNEL, or Best() when it is unset or empty.
// kInvalidArgument for an unknown name, kFailedPrecondition for a kernel this CPU lacks.
core::Result<Kernel> Requested();

// Rows rounded up to the row block every kernel writes (16).
int PaddedRows(int rows);

// FP32 weights in row blocks of 8: data[(rb * cols + k) * 8 + i] = W[8 rb + i][k], padded rows 0.
struct PackedF32 {
  int rows = 0;
  int cols = 0;
  std::vector<float> data;
};
PackedF32 PackF32(const std::vector<float>& w, int rows, int cols);

// Y[n * ldy + r] += sum_k W[r][k] X[n * ldx + k] for n < count. The generic and AVX2 versions
// give identical bits (each dot product is one fused multiply-add chain in k order, then added).
void GemmF32(Kernel kernel, const PackedF32& w, const float* x, int ldx, int count, float* y,
             int ldy);

// INT8 weights with their per-row scales, packed for one kernel family (see lstm_kernels.cc):
// row blocks of 8 (generic, avx2) or 16 (avx512-vnni) rows, each row's k in groups of 4 bytes.
// The integers must lie in [-127, 127] (QuantizeRows and the INT8 file guarantee it).
struct PackedI8 {
  Kernel kernel = Kernel::kGeneric;
  int rows = 0;
  int cols = 0;
  int kpad = 0;               // cols rounded up to 8
  std::vector<int8_t> w8;     // PaddedRows(rows) x kpad, padding 0
  std::vector<int32_t> comp;  // avx512-vnni: 128 * sum of each row's integers
  std::vector<float> scale;   // PaddedRows(rows), padding 0
};
PackedI8 PackI8(Kernel kernel, const QuantizedMatrix& m);

// Activations are quantized to [-kActivationMax, kActivationMax], 7 bits: the AVX2 kernel then
// adds two vpmaddubsw pair sums in int16 without overflow (see lstm_kernels.cc).
inline constexpr int kActivationMax = 63;

// Columns quantized symmetrically, one scale per column (scale = max|x| / kActivationMax, q =
// round(x / scale), round half to even); s8 for generic/avx2 (q), u8 for avx512-vnni (q + 128),
// both count x kpad with zero q in the padding.
struct QuantizedCols {
  std::vector<int8_t> s8;
  std::vector<uint8_t> u8;
  std::vector<float> scale;
};
void QuantizeCols(Kernel kernel, const float* x, int ldx, int count, int cols, int kpad,
                  QuantizedCols* out);

// Y[n * ldy + r] += (w.scale[r] * xq.scale[n]) * sum_k q[r][k] xq[n][k], the sum exact in int32.
// The generic, AVX2 and VNNI versions give identical bits.
void GemmI8(const PackedI8& w, const QuantizedCols& xq, int count, float* y, int ldy);
// GemmI8 in portable C++ for any packing (what the generic kernel runs; tests use it to check
// the other packings on CPUs that lack their instructions).
void GemmI8Portable(const PackedI8& w, const QuantizedCols& xq, int count, float* y, int ldy);

// How the cell computes sigmoid and tanh. kPrecise: within 1e-6 of the exact functions (the
// FP32 engine, which must match PyTorch). kFast: a lower-degree rational tanh, within 1.2e-4,
// for the INT8 engine, whose 7-bit activations are coarser than that by two orders of magnitude
// (a quantization step is 1/63 of a column's largest value).
enum class CellMath { kPrecise, kFast };

// The LSTM cell for `count` columns: gates g[n * ldg + {0, H, 2H, 3H} + j] (i, f, g, o) update
// c[n * hidden + j] and write h[n * ldh + j].
void LstmCell(Kernel kernel, const float* g, int ldg, int count, int hidden, float* c, float* h,
              int ldh, CellMath math = CellMath::kPrecise);

}  // namespace megaserve::forecast::kernels
