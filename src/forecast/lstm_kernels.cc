// Kernels for the native LSTM engine.
//
// Shape of the work. Gates are W x for a 4H x K weight matrix and a batch of columns x (one per
// sequence, or one per sequence and step when a whole layer's input projection is computed at
// once). All kernels broadcast activations and load weights: a weight block holds 8 (AVX2) or 16
// (AVX-512) consecutive output rows for one k step, so one vector instruction updates 8 or 16
// outputs of one column and no horizontal reduction is ever needed. A register tile covers
// 4 row blocks x 3 columns in FP32 (AVX2: 12 accumulators, 4 weight loads and 3 broadcasts per k),
// the usual outer-product micro-kernel of blocked GEMMs (Goto and van de Geijn, "Anatomy of
// High-Performance Matrix Multiplication", ACM TOMS 2008), and 4 row blocks x 1 column in INT8
// on AVX2, whose products need temporaries (below) that leave no registers for a second column.
// Row tiles are the outer loop so a tile's weights stay in L1 while the columns stream past.
//
// INT8. Weights are the file's per-row symmetric int8 values in [-127, 127], activations are
// quantized per column to [-63, 63] (kActivationMax, 7 bits: see below), and products accumulate
// exactly in int32; the float result is y += (w_scale[r] * x_scale[n]) * acc, one fused
// multiply-add. Weights are stored as bytes, a row's k in groups of 4 (a 4H x H recurrent matrix
// at H = 64 is 16 KiB and stays in L1), k padded to a multiple of 8.
// - AVX2 uses _mm256_maddubs_epi16 (32 u8 x s8 products summed in pairs to int16). maddubs needs
//   an unsigned operand, so it multiplies |x| by w carrying x's sign (_mm256_sign_epi8, as ggml's
//   q8 dot products do). Two k groups' pair sums are added in int16 (at most 4 * 63 * 127 =
//   32004, so neither step can saturate or wrap) and one _mm256_madd_epi16 against ones widens
//   them to int32: three vector integer multiplies (two maddubs, one madd) per 64 products,
//   against four with 8-bit activations (one madd per maddubs, since a pair sum of 8-bit values
//   can reach 32258 and two cannot share an int16) and four for int16-widened operands and
//   _mm256_madd_epi16 alone, whose vector registers also hold half as many products. CPUs
//   without VNNI issue about one such multiply per cycle, so their count sets the pace.
//   Dropping the activations' eighth bit costs little accuracy, the weights' rounding
//   dominating: LstmEngineTest.Int8AgreesWithFp32OnRealData prints the worst INT8 vs FP32 gap
//   on real windows (limit 1 % of the p10-p90 spread).
// - AVX-512 VNNI uses _mm512_dpbusd_epi32 (64 u8 x s8 products summed in groups of 4 into 16
//   int32, no intermediate saturation). It needs unsigned activations, so they are stored as
//   q + 128 and each row's sum of 128 * w is subtracted afterwards (the zero-point compensation
//   of Intel's "Lower Numerical Precision Deep Learning Inference and Training", 2018).
// All three INT8 kernels compute the same integers and the same final float operation, so their
// outputs are identical bit for bit; the generic FP32 product uses std::fma in the same k order as
// the AVX2 one for the same reason. Only the cell's sigmoid and tanh differ: the generic cell
// calls the C library, the SIMD ones a rational approximation of tanh (absolute error below 4e-7,
// sigmoid(x) = (1 + tanh(x / 2)) / 2), which needs no exponential and fewer instructions; the
// AVX-512 cell (16 lanes, for the VNNI kernel) differs from the AVX2 one (8 lanes) only in its
// reciprocal estimate, which Newton's step refines.
#include "forecast/lstm_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "fmt/format.h"

namespace megaserve::forecast::kernels {
namespace {

constexpr int kPadRows = 16;

int RoundUp(int x, int m) { return (x + m - 1) / m * m; }

// Every INT8 packing groups k by 4 (one int32 lane of products per row); k is padded to a
// multiple of 8 so the AVX2 kernel can take those groups in pairs.
constexpr int kKStep = 8;

// Rows per INT8 row block: 16 for avx512-vnni, 8 otherwise.
int I8Block(Kernel kernel) { return kernel == Kernel::kAvx512Vnni ? 16 : 8; }

int32_t Load32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// ---------------------------------------------------------------- generic

void GemmF32Generic(const PackedF32& w, const float* x, int ldx, int count, float* y, int ldy) {
  const int blocks = PaddedRows(w.rows) / 8;
  for (int rb = 0; rb < blocks; ++rb) {
    const float* wb = &w.data[static_cast<std::size_t>(rb) * w.cols * 8];
    for (int n = 0; n < count; ++n) {
      const float* xc = x + static_cast<std::size_t>(n) * ldx;
      float* yc = y + static_cast<std::size_t>(n) * ldy + rb * 8;
      for (int i = 0; i < 8; ++i) {
        float acc = 0;
        for (int k = 0; k < w.cols; ++k) acc = std::fma(wb[k * 8 + i], xc[k], acc);
        yc[i] += acc;
      }
    }
  }
}

void GemmI8Generic(const PackedI8& w, const QuantizedCols& xq, int count, float* y, int ldy) {
  const int rows = PaddedRows(w.rows), kp4 = w.kpad / 4, block = I8Block(w.kernel);
  const bool vnni = w.kernel == Kernel::kAvx512Vnni;
  for (int n = 0; n < count; ++n) {
    float* yc = y + static_cast<std::size_t>(n) * ldy;
    const std::size_t x0 = static_cast<std::size_t>(n) * w.kpad;
    for (int r = 0; r < rows; ++r) {
      int32_t acc = 0;
      for (int kk = 0; kk < kp4; ++kk) {
        const int8_t* wk =
            &w.w8[((static_cast<std::size_t>(r / block) * kp4 + kk) * block + r % block) * 4];
        for (int j = 0; j < 4; ++j) {
          const int32_t xv = vnni ? int32_t{xq.u8[x0 + 4 * kk + j]} : xq.s8[x0 + 4 * kk + j];
          acc += xv * wk[j];
        }
      }
      if (vnni) acc -= w.comp[r];
      yc[r] = std::fma(w.scale[r] * xq.scale[n], static_cast<float>(acc), yc[r]);
    }
  }
}

// Quantizes one column; returns its scale. Writes q as int8, or q + 128 in the same bytes when
// `unsigned_bytes` (flipping a byte's sign bit adds 128), as QuantizeColsAvx2 does.
float QuantizeColumn(const float* x, int cols, int kpad, bool unsigned_bytes, int8_t* q) {
  float m = 0;
  for (int k = 0; k < cols; ++k) m = std::max(m, std::fabs(x[k]));
  constexpr float kMax = kActivationMax;
  const float inv = m > 0 ? kMax / m : 0.0f;
  const unsigned flip = unsigned_bytes ? 0x80 : 0;
  auto byte = [flip](int v) { return static_cast<int8_t>(static_cast<uint8_t>(v) ^ flip); };
  for (int k = 0; k < cols; ++k) {
    q[k] = byte(static_cast<int>(std::clamp(std::nearbyint(x[k] * inv), -kMax, kMax)));
  }
  for (int k = cols; k < kpad; ++k) q[k] = byte(0);
  return m / kMax;
}

// CellMath::kFast's tanh: x P(x^2) / Q(x^2) with P of degree 2 and Q of degree 2 in x^2, on x
// clamped to +-5, fitted to tanh on [0, 5] by iteratively reweighted least squares; absolute
// error below 1.2e-4 everywhere, clamping included (LstmKernelsTest checks it over [-30, 30]).
// The SIMD versions evaluate the same polynomials with FMAs. Coefficients from the highest power
// of x^2 down.
constexpr float kFastTanhClamp = 5.0f;
constexpr float kFastP[] = {0.0006854703900064513f, 0.10286435635132107f, 0.9999207632930479f};
constexpr float kFastQ[] = {0.012963736660116201f, 0.4358808489286813f, 1.0f};

float FastTanh(float x) {
  x = std::clamp(x, -kFastTanhClamp, kFastTanhClamp);
  const float x2 = x * x;
  const float p = std::fma(std::fma(kFastP[0], x2, kFastP[1]), x2, kFastP[2]) * x;
  const float q = std::fma(std::fma(kFastQ[0], x2, kFastQ[1]), x2, kFastQ[2]);
  return p / q;
}

float FastSigmoid(float x) { return std::fma(0.5f, FastTanh(0.5f * x), 0.5f); }

template <CellMath kMath>
void LstmCellGeneric(const float* g, int ldg, int count, int hidden, float* c, float* h, int ldh) {
  constexpr bool fast = kMath == CellMath::kFast;
  for (int n = 0; n < count; ++n) {
    const float* gc = g + static_cast<std::size_t>(n) * ldg;
    float* cc = c + static_cast<std::size_t>(n) * hidden;
    float* hc = h + static_cast<std::size_t>(n) * ldh;
    for (int j = 0; j < hidden; ++j) {
      const float i = fast ? FastSigmoid(gc[j]) : Sigmoid(gc[j]);
      const float f = fast ? FastSigmoid(gc[hidden + j]) : Sigmoid(gc[hidden + j]);
      const float gg = fast ? FastTanh(gc[2 * hidden + j]) : std::tanh(gc[2 * hidden + j]);
      const float o = fast ? FastSigmoid(gc[3 * hidden + j]) : Sigmoid(gc[3 * hidden + j]);
      cc[j] = f * cc[j] + i * gg;
      hc[j] = o * (fast ? FastTanh(cc[j]) : std::tanh(cc[j]));
    }
  }
}

// ---------------------------------------------------------------- AVX2 + FMA

#define MEGASERVE_AVX2 __attribute__((target("avx2,fma")))

template <int RB, int NC>
MEGASERVE_AVX2 inline void TileF32Avx2(const float* wb, int cols, const float* x, int ldx, float* y,
                                       int ldy) {
  __m256 acc[RB][NC];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 3
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_setzero_ps();
  }
  const std::size_t block = static_cast<std::size_t>(cols) * 8;
  for (int k = 0; k < cols; ++k) {
    __m256 wv[RB];
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) wv[r] = _mm256_loadu_ps(wb + r * block + k * 8);
#pragma GCC unroll 3
    for (int c = 0; c < NC; ++c) {
      const __m256 xb = _mm256_broadcast_ss(x + static_cast<std::size_t>(c) * ldx + k);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) acc[r][c] = _mm256_fmadd_ps(wv[r], xb, acc[r][c]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 3
    for (int c = 0; c < NC; ++c) {
      float* yp = y + static_cast<std::size_t>(c) * ldy + r * 8;
      _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), acc[r][c]));
    }
  }
}

template <int RB>
MEGASERVE_AVX2 void RowTileF32Avx2(const float* wb, int cols, const float* x, int ldx, int count,
                                   float* y, int ldy) {
  int n = 0;
  for (; n + 3 <= count; n += 3) {
    TileF32Avx2<RB, 3>(wb, cols, x + static_cast<std::size_t>(n) * ldx, ldx,
                       y + static_cast<std::size_t>(n) * ldy, ldy);
  }
  const float* xn = x + static_cast<std::size_t>(n) * ldx;
  float* yn = y + static_cast<std::size_t>(n) * ldy;
  if (count - n == 2) TileF32Avx2<RB, 2>(wb, cols, xn, ldx, yn, ldy);
  if (count - n == 1) TileF32Avx2<RB, 1>(wb, cols, xn, ldx, yn, ldy);
}

MEGASERVE_AVX2 void GemmF32Avx2(const PackedF32& w, const float* x, int ldx, int count, float* y,
                                int ldy) {
  const int blocks = PaddedRows(w.rows) / 8;
  const std::size_t block = static_cast<std::size_t>(w.cols) * 8;
  int rb = 0;
  for (; rb + 4 <= blocks; rb += 4) {
    RowTileF32Avx2<4>(&w.data[rb * block], w.cols, x, ldx, count, y + rb * 8, ldy);
  }
  for (; rb < blocks; ++rb) {
    RowTileF32Avx2<1>(&w.data[rb * block], w.cols, x, ldx, count, y + rb * 8, ldy);
  }
}

// The int16 pair sums of w's bytes times xb's, by vpmaddubsw on |xb| and w carrying xb's sign.
MEGASERVE_AVX2 inline __m256i PairsI8Avx2(__m256i w, __m256i xb, __m256i abs_xb) {
  return _mm256_maddubs_epi16(abs_xb, _mm256_sign_epi8(w, xb));
}

// One column against RB row blocks, two k groups (8 values of k) at a time: their pair sums add
// in int16 (at most 4 * 63 * 127 = 32004), and one vpmaddwd against ones widens the total to
// int32. One column at a time: a second one's broadcasts and accumulators would not fit in the
// 16 vector registers beside the temporaries, and spilling costs more than the weight loads
// that a second column would share.
template <int RB>
MEGASERVE_AVX2 inline void TileI8Avx2(const int8_t* wb, int kp4, const int8_t* x, const float* ws,
                                      float xs, float* y) {
  __m256i acc[RB];
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) acc[r] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const std::size_t block = static_cast<std::size_t>(kp4) * 32;
  for (int kk = 0; kk < kp4; kk += 2) {
    const __m256i x0 = _mm256_set1_epi32(Load32(x + 4 * kk));
    const __m256i x1 = _mm256_set1_epi32(Load32(x + 4 * kk + 4));
    const __m256i a0 = _mm256_abs_epi8(x0), a1 = _mm256_abs_epi8(x1);
#pragma GCC unroll 4
    for (int r = 0; r < RB; ++r) {
      const int8_t* wr = wb + r * block + kk * 32;
      const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr));
      const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + 32));
      const __m256i pairs = _mm256_add_epi16(PairsI8Avx2(w0, x0, a0), PairsI8Avx2(w1, x1, a1));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
    }
  }
  const __m256 xsv = _mm256_set1_ps(xs);
#pragma GCC unroll 4
  for (int r = 0; r < RB; ++r) {
    const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(ws + r * 8), xsv);
    _mm256_storeu_ps(y + r * 8,
                     _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(acc[r]), _mm256_loadu_ps(y + r * 8)));
  }
}

template <int RB>
MEGASERVE_AVX2 void RowTileI8Avx2(const int8_t* wb, int kp4, const QuantizedCols& xq, int kpad,
                                  const float* ws, int count, float* y, int ldy) {
  for (int n = 0; n < count; ++n) {
    TileI8Avx2<RB>(wb, kp4, &xq.s8[static_cast<std::size_t>(n) * kpad], ws, xq.scale[n],
                   y + static_cast<std::size_t>(n) * ldy);
  }
}

MEGASERVE_AVX2 void GemmI8Avx2(const PackedI8& w, const QuantizedCols& xq, int count, float* y,
                               int ldy) {
  const int blocks = PaddedRows(w.rows) / 8;
  const int kp4 = w.kpad / 4;
  const std::size_t block = static_cast<std::size_t>(kp4) * 32;
  int rb = 0;
  for (; rb + 4 <= blocks; rb += 4) {
    RowTileI8Avx2<4>(&w.w8[rb * block], kp4, xq, w.kpad, &w.scale[rb * 8], count, y + rb * 8, ldy);
  }
  for (; rb < blocks; ++rb) {
    RowTileI8Avx2<1>(&w.w8[rb * block], kp4, xq, w.kpad, &w.scale[rb * 8], count, y + rb * 8, ldy);
  }
}

// Lanes [0, n) of a mask for _mm256_maskload_ps (n clamped to [0, 8]).
MEGASERVE_AVX2 inline __m256i FirstLanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(std::clamp(n, 0, 8)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Quantizes columns as QuantizeColumn does (cvtps_epi32 rounds half to even, as nearbyint does
// in the default rounding mode); lanes past `cols` are loaded masked, as zeros. Writes q as int8
// to q_out, or q + 128 when `unsigned_bytes` (flipping the sign bit of q's byte adds 128).
MEGASERVE_AVX2 void QuantizeColsAvx2(const float* x, int ldx, int count, int cols, int kpad,
                                     bool unsigned_bytes, int8_t* q_out, float* scales) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  constexpr float kMax = kActivationMax;
  const __m256i lo = _mm256_set1_epi32(-kActivationMax), hi = _mm256_set1_epi32(kActivationMax);
  const int full = cols / 8 * 8;
  const __m256i tail = FirstLanes(cols - full);
  const __m128i flip = _mm_set1_epi8(unsigned_bytes ? static_cast<char>(0x80) : 0);
  for (int n = 0; n < count; ++n) {
    const float* xc = x + static_cast<std::size_t>(n) * ldx;
    int8_t* q = q_out + static_cast<std::size_t>(n) * kpad;
    __m256 mv = _mm256_setzero_ps();
    for (int k = 0; k < full; k += 8)
      mv = _mm256_max_ps(mv, _mm256_and_ps(_mm256_loadu_ps(xc + k), abs_mask));
    if (full < cols) {
      mv = _mm256_max_ps(mv, _mm256_and_ps(_mm256_maskload_ps(xc + full, tail), abs_mask));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    const float m = _mm_cvtss_f32(m4);
    const float inv = m > 0 ? kMax / m : 0.0f;
    const __m256 invv = _mm256_set1_ps(inv);
    for (int k = 0; k < kpad; k += 8) {
      const __m256 v = k + 8 <= cols ? _mm256_loadu_ps(xc + k)
                                     : _mm256_maskload_ps(xc + k, FirstLanes(cols - k));
      __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(v, invv));
      a = _mm256_min_epi32(_mm256_max_epi32(a, lo), hi);
      const __m128i words =
          _mm_packs_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
      const __m128i bytes = _mm_xor_si128(_mm_packs_epi16(words, words), flip);
      if (k + 8 <= kpad) {
        _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), bytes);
      } else {  // kpad is a multiple of 4
        const int32_t four = _mm_cvtsi128_si32(bytes);
        std::memcpy(q + k, &four, sizeof(four));
      }
    }
    scales[n] = m / kMax;
  }
}

// x clamped to [-limit, limit].
MEGASERVE_AVX2 inline __m256 ClampAvx2(__m256 x, float limit) {
  return _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-limit)), _mm256_set1_ps(limit));
}

// p / q as p times a reciprocal estimate of q refined by one Newton step (r' = r (2 - q r)),
// cheaper than a division.
MEGASERVE_AVX2 inline __m256 DivideAvx2(__m256 p, __m256 q) {
  const __m256 r = _mm256_rcp_ps(q);
  return _mm256_mul_ps(p, _mm256_mul_ps(r, _mm256_fnmadd_ps(q, r, _mm256_set1_ps(2.0f))));
}

// tanh(x) as the rational function x P(x^2) / Q(x^2) of degrees 13 and 6 that Eigen uses for
// float tanh (Eigen's generic_fast_tanh_float), on x clamped to +-kTanhClamp (beyond it tanh
// rounds to +-1 within 3e-7), divided by DivideAvx2. Absolute error below 4e-7 (LstmKernelsTest
// checks it over [-30, 30]). Coefficients from the highest power down, for Horner's rule.
constexpr float kTanhClamp = 7.90531110763549805f;
constexpr float kTanhP[] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                            5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                            4.89352455891786e-03f};
constexpr float kTanhQ[] = {1.19825839466702e-06f, 1.18534705686654e-04f, 2.26843463243900e-03f,
                            4.89352518554385e-03f};

// Horner's rule over coefficients c[0] (highest power) .. c[N - 1] (constant), 8 lanes.
template <std::size_t N>
MEGASERVE_AVX2 inline __m256 HornerAvx2(const float (&c)[N], __m256 x) {
  __m256 acc = _mm256_set1_ps(c[0]);
#pragma GCC unroll 8
  for (std::size_t i = 1; i < N; ++i) acc = _mm256_fmadd_ps(acc, x, _mm256_set1_ps(c[i]));
  return acc;
}

MEGASERVE_AVX2 inline __m256 TanhAvx2(__m256 x) {
  x = ClampAvx2(x, kTanhClamp);
  const __m256 x2 = _mm256_mul_ps(x, x);
  return DivideAvx2(_mm256_mul_ps(HornerAvx2(kTanhP, x2), x), HornerAvx2(kTanhQ, x2));
}

// CellMath::kFast's tanh (FastTanh above), 8 lanes: 12 instructions against TanhAvx2's 17.
MEGASERVE_AVX2 inline __m256 FastTanhAvx2(__m256 x) {
  x = ClampAvx2(x, kFastTanhClamp);
  const __m256 x2 = _mm256_mul_ps(x, x);
  return DivideAvx2(_mm256_mul_ps(HornerAvx2(kFastP, x2), x), HornerAvx2(kFastQ, x2));
}

template <CellMath kMath>
MEGASERVE_AVX2 inline __m256 TanhOf(__m256 x) {
  return kMath == CellMath::kFast ? FastTanhAvx2(x) : TanhAvx2(x);
}

// sigmoid(x) = (1 + tanh(x / 2)) / 2.
template <CellMath kMath>
MEGASERVE_AVX2 inline __m256 SigmoidOf(__m256 x) {
  const __m256 half = _mm256_set1_ps(0.5f);
  return _mm256_fmadd_ps(half, TanhOf<kMath>(_mm256_mul_ps(half, x)), half);
}

template <CellMath kMath>
MEGASERVE_AVX2 void LstmCellAvx2(const float* g, int ldg, int count, int hidden, float* c, float* h,
                                 int ldh) {
  for (int n = 0; n < count; ++n) {
    const float* gc = g + static_cast<std::size_t>(n) * ldg;
    float* cc = c + static_cast<std::size_t>(n) * hidden;
    float* hc = h + static_cast<std::size_t>(n) * ldh;
    for (int j = 0; j < hidden; j += 8) {
      const __m256 i = SigmoidOf<kMath>(_mm256_loadu_ps(gc + j));
      const __m256 f = SigmoidOf<kMath>(_mm256_loadu_ps(gc + hidden + j));
      const __m256 gg = TanhOf<kMath>(_mm256_loadu_ps(gc + 2 * hidden + j));
      const __m256 o = SigmoidOf<kMath>(_mm256_loadu_ps(gc + 3 * hidden + j));
      const __m256 cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(cc + j), _mm256_mul_ps(i, gg));
      _mm256_storeu_ps(cc + j, cn);
      _mm256_storeu_ps(hc + j, _mm256_mul_ps(o, TanhOf<kMath>(cn)));
    }
  }
}

// ---------------------------------------------------------------- AVX-512 VNNI

#define MEGASERVE_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

// GCC 12's _mm512_cvtepi32_ps passes _mm512_undefined_ps(), which -Wmaybe-uninitialized and
// -Wuninitialized flag.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// Row blocks [rb, rb + RB) times columns [n, n + NC): RB x NC accumulators, so that RB x NC
// independent dpbusd chains hide the instruction's latency (a single chain would wait for each
// previous sum: one column of one row block is only kp4 dependent steps).
template <int RB, int NC>
MEGASERVE_VNNI inline void TileI8Vnni(const PackedI8& w, int rb, const QuantizedCols& xq, int n,
                                      float* y, int ldy) {
  const int kp4 = w.kpad / 4;
  const int8_t* wb = &w.w8[static_cast<std::size_t>(rb) * kp4 * 64];
  const uint8_t* x = &xq.u8[static_cast<std::size_t>(n) * w.kpad];
  __m512i acc[RB][NC];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm512_setzero_si512();
  }
  for (int kk = 0; kk < kp4; ++kk) {
    __m512i wv[RB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      wv[r] = _mm512_loadu_si512(wb + (static_cast<std::size_t>(r) * kp4 + kk) * 64);
    }
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const __m512i xb =
          _mm512_set1_epi32(Load32(x + static_cast<std::size_t>(c) * w.kpad + 4 * kk));
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xb, wv[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r) {
    const int row = (rb + r) * 16;
    const __m512i cv = _mm512_loadu_si512(&w.comp[row]);
    const __m512 wsv = _mm512_loadu_ps(&w.scale[row]);
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      float* yp = y + static_cast<std::size_t>(n + c) * ldy + row;
      const __m512 s = _mm512_mul_ps(wsv, _mm512_set1_ps(xq.scale[n + c]));
      const __m512 a = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][c], cv));
      _mm512_storeu_ps(yp, _mm512_fmadd_ps(s, a, _mm512_loadu_ps(yp)));
    }
  }
}

// Columns in fours take 4 x 4 tiles (16 accumulators); the remaining columns, such as a batch of
// one, take 8 row blocks at a time.
MEGASERVE_VNNI void GemmI8Vnni(const PackedI8& w, const QuantizedCols& xq, int count, float* y,
                               int ldy) {
  const int blocks = PaddedRows(w.rows) / 16;
  const int fours = count / 4 * 4;
  int rb = 0;
  for (; rb + 4 <= blocks; rb += 4) {
    for (int n = 0; n < fours; n += 4) TileI8Vnni<4, 4>(w, rb, xq, n, y, ldy);
  }
  for (; rb < blocks; ++rb) {
    for (int n = 0; n < fours; n += 4) TileI8Vnni<1, 4>(w, rb, xq, n, y, ldy);
  }
  for (int n = fours; n < count; ++n) {
    rb = 0;
    for (; rb + 8 <= blocks; rb += 8) TileI8Vnni<8, 1>(w, rb, xq, n, y, ldy);
    for (; rb < blocks; ++rb) TileI8Vnni<1, 1>(w, rb, xq, n, y, ldy);
  }
}

// The cell on 16 lanes (hidden a multiple of 16): the AVX2 cell's functions and polynomials, with
// _mm512_rcp14_ps's reciprocal estimate (relative error 2^-14, against _mm256_rcp_ps's
// 1.5 * 2^-12) refined by the same Newton step: half the instructions of the AVX2 cell.
MEGASERVE_VNNI inline __m512 Clamp512(__m512 x, float limit) {
  return _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-limit)), _mm512_set1_ps(limit));
}

MEGASERVE_VNNI inline __m512 Divide512(__m512 p, __m512 q) {
  const __m512 r = _mm512_rcp14_ps(q);
  return _mm512_mul_ps(p, _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f))));
}

template <std::size_t N>
MEGASERVE_VNNI inline __m512 Horner512(const float (&c)[N], __m512 x) {
  __m512 acc = _mm512_set1_ps(c[0]);
#pragma GCC unroll 8
  for (std::size_t i = 1; i < N; ++i) acc = _mm512_fmadd_ps(acc, x, _mm512_set1_ps(c[i]));
  return acc;
}

template <CellMath kMath>
MEGASERVE_VNNI inline __m512 TanhOf512(__m512 x) {
  constexpr bool fast = kMath == CellMath::kFast;
  x = Clamp512(x, fast ? kFastTanhClamp : kTanhClamp);
  const __m512 x2 = _mm512_mul_ps(x, x);
  if constexpr (fast) {
    return Divide512(_mm512_mul_ps(Horner512(kFastP, x2), x), Horner512(kFastQ, x2));
  } else {
    return Divide512(_mm512_mul_ps(Horner512(kTanhP, x2), x), Horner512(kTanhQ, x2));
  }
}

template <CellMath kMath>
MEGASERVE_VNNI inline __m512 SigmoidOf512(__m512 x) {
  const __m512 half = _mm512_set1_ps(0.5f);
  return _mm512_fmadd_ps(half, TanhOf512<kMath>(_mm512_mul_ps(half, x)), half);
}

template <CellMath kMath>
MEGASERVE_VNNI void LstmCellAvx512(const float* g, int ldg, int count, int hidden, float* c,
                                   float* h, int ldh) {
  for (int n = 0; n < count; ++n) {
    const float* gc = g + static_cast<std::size_t>(n) * ldg;
    float* cc = c + static_cast<std::size_t>(n) * hidden;
    float* hc = h + static_cast<std::size_t>(n) * ldh;
    for (int j = 0; j < hidden; j += 16) {
      const __m512 i = SigmoidOf512<kMath>(_mm512_loadu_ps(gc + j));
      const __m512 f = SigmoidOf512<kMath>(_mm512_loadu_ps(gc + hidden + j));
      const __m512 gg = TanhOf512<kMath>(_mm512_loadu_ps(gc + 2 * hidden + j));
      const __m512 o = SigmoidOf512<kMath>(_mm512_loadu_ps(gc + 3 * hidden + j));
      const __m512 cn = _mm512_fmadd_ps(f, _mm512_loadu_ps(cc + j), _mm512_mul_ps(i, gg));
      _mm512_storeu_ps(cc + j, cn);
      _mm512_storeu_ps(hc + j, _mm512_mul_ps(o, TanhOf512<kMath>(cn)));
    }
  }
}

#pragma GCC diagnostic pop

}  // namespace

std::string_view Name(Kernel kernel) {
  switch (kernel) {
    case Kernel::kAvx2:
      return "avx2";
    case Kernel::kAvx512Vnni:
      return "avx512-vnni";
    case Kernel::kGeneric:
      break;
  }
  return "generic";
}

core::Result<Kernel> Parse(std::string_view name) {
  for (Kernel k : {Kernel::kGeneric, Kernel::kAvx2, Kernel::kAvx512Vnni}) {
    if (Name(k) == name) return k;
  }
  return core::InvalidArgument(
      fmt::format("unknown kernel \"{}\" (allowed: generic, avx2, avx512-vnni)", name));
}

bool CpuSupports(Kernel kernel) {
  switch (kernel) {
    case Kernel::kGeneric:
      return true;
    case Kernel::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Kernel::kAvx512Vnni:
      return CpuSupports(Kernel::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

Kernel Best() {
  if (CpuSupports(Kernel::kAvx512Vnni)) return Kernel::kAvx512Vnni;
  if (CpuSupports(Kernel::kAvx2)) return Kernel::kAvx2;
  return Kernel::kGeneric;
}

core::Result<Kernel> Requested() {
  const char* env = std::getenv("MEGASERVE_FORECAST_KERNEL");
  if (env == nullptr || *env == '\0') return Best();
  auto kernel = Parse(env);
  if (!kernel.ok()) {
    return core::InvalidArgument("MEGASERVE_FORECAST_KERNEL: " + kernel.status().message());
  }
  if (!CpuSupports(*kernel)) {
    return core::Status(core::StatusCode::kFailedPrecondition,
                        fmt::format("MEGASERVE_FORECAST_KERNEL={}: this CPU lacks it (best: {})",
                                    env, Name(Best())));
  }
  return kernel;
}

int PaddedRows(int rows) { return RoundUp(rows, kPadRows); }

PackedF32 PackF32(const std::vector<float>& w, int rows, int cols) {
  PackedF32 p;
  p.rows = rows;
  p.cols = cols;
  const int padded = PaddedRows(rows);
  p.data.assign(static_cast<std::size_t>(padded) * cols, 0.0f);
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < cols; ++k) {
      p.data[(static_cast<std::size_t>(r / 8) * cols + k) * 8 + r % 8] =
          w[static_cast<std::size_t>(r) * cols + k];
    }
  }
  return p;
}

void GemmF32(Kernel kernel, const PackedF32& w, const float* x, int ldx, int count, float* y,
             int ldy) {
  if (kernel == Kernel::kGeneric) return GemmF32Generic(w, x, ldx, count, y, ldy);
  GemmF32Avx2(w, x, ldx, count, y, ldy);
}

PackedI8 PackI8(Kernel kernel, const QuantizedMatrix& m) {
  PackedI8 p;
  p.kernel = kernel;
  p.rows = m.rows;
  p.cols = m.cols;
  p.kpad = RoundUp(m.cols, kKStep);
  const int padded = PaddedRows(m.rows), kp4 = p.kpad / 4, block = I8Block(kernel);
  p.scale.assign(padded, 0.0f);
  std::copy(m.scale.begin(), m.scale.end(), p.scale.begin());
  p.w8.assign(static_cast<std::size_t>(padded) * p.kpad, 0);
  const bool vnni = kernel == Kernel::kAvx512Vnni;
  if (vnni) p.comp.assign(padded, 0);
  for (int r = 0; r < m.rows; ++r) {
    for (int k = 0; k < m.cols; ++k) {
      const int8_t q = m.q[static_cast<std::size_t>(r) * m.cols + k];
      p.w8[((static_cast<std::size_t>(r / block) * kp4 + k / 4) * block + r % block) * 4 + k % 4] =
          q;
      if (vnni) p.comp[r] += 128 * q;
    }
  }
  return p;
}

void QuantizeCols(Kernel kernel, const float* x, int ldx, int count, int cols, int kpad,
                  QuantizedCols* out) {
  const std::size_t n = static_cast<std::size_t>(count) * kpad;
  const bool vnni = kernel == Kernel::kAvx512Vnni;
  int8_t* q;
  if (vnni) {
    out->u8.resize(n);
    q = reinterpret_cast<int8_t*>(out->u8.data());
  } else {
    out->s8.resize(n);
    q = out->s8.data();
  }
  out->scale.resize(count);
  // The AVX2 routine also serves the VNNI packing (a CPU with VNNI has AVX2); tests quantize for
  // every packing on any CPU.
  static const bool avx2 = CpuSupports(Kernel::kAvx2);
  if (kernel != Kernel::kGeneric && avx2) {
    return QuantizeColsAvx2(x, ldx, count, cols, kpad, vnni, q, out->scale.data());
  }
  for (int c = 0; c < count; ++c) {
    out->scale[c] = QuantizeColumn(x + static_cast<std::size_t>(c) * ldx, cols, kpad, vnni,
                                   q + static_cast<std::size_t>(c) * kpad);
  }
}

void GemmI8(const PackedI8& w, const QuantizedCols& xq, int count, float* y, int ldy) {
  switch (w.kernel) {
    case Kernel::kAvx512Vnni:
      return GemmI8Vnni(w, xq, count, y, ldy);
    case Kernel::kAvx2:
      return GemmI8Avx2(w, xq, count, y, ldy);
    case Kernel::kGeneric:
      break;
  }
  GemmI8Generic(w, xq, count, y, ldy);
}

void GemmI8Portable(const PackedI8& w, const QuantizedCols& xq, int count, float* y, int ldy) {
  GemmI8Generic(w, xq, count, y, ldy);
}

void LstmCell(Kernel kernel, const float* g, int ldg, int count, int hidden, float* c, float* h,
              int ldh, CellMath math) {
  const bool fast = math == CellMath::kFast;
  if (kernel == Kernel::kAvx512Vnni && hidden % 16 == 0) {
    return fast ? LstmCellAvx512<CellMath::kFast>(g, ldg, count, hidden, c, h, ldh)
                : LstmCellAvx512<CellMath::kPrecise>(g, ldg, count, hidden, c, h, ldh);
  }
  if (kernel != Kernel::kGeneric && hidden % 8 == 0) {
    return fast ? LstmCellAvx2<CellMath::kFast>(g, ldg, count, hidden, c, h, ldh)
                : LstmCellAvx2<CellMath::kPrecise>(g, ldg, count, hidden, c, h, ldh);
  }
  return fast ? LstmCellGeneric<CellMath::kFast>(g, ldg, count, hidden, c, h, ldh)
              : LstmCellGeneric<CellMath::kPrecise>(g, ldg, count, hidden, c, h, ldh);
}

}  // namespace megaserve::forecast::kernels
