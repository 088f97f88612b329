#include "forecast/lstm_kernels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

namespace megaserve::forecast::kernels {
namespace {

std::vector<float> Random(std::size_t n, uint32_t seed, float scale = 1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<Kernel> Supported() {
  std::vector<Kernel> out;
  for (Kernel k : {Kernel::kGeneric, Kernel::kAvx2, Kernel::kAvx512Vnni}) {
    if (CpuSupports(k)) out.push_back(k);
  }
  return out;
}

// Shapes the engine uses (4H x in, 4H x H, head) and odd ones.
struct Dims {
  int rows, cols, count;
};
constexpr Dims kDims[] = {{256, 7, 1}, {256, 64, 1}, {256, 64, 32}, {18, 64, 5},
                          {40, 13, 7}, {200, 24, 6}, {256, 7, 2048}};

TEST(LstmKernelsTest, Fp32MatchesNaiveAndKernelsAreBitIdentical) {
  for (const Dims& d : kDims) {
    const auto w = Random(static_cast<std::size_t>(d.rows) * d.cols, 1, 0.2f);
    const int ldx = d.cols + 3, ldy = PaddedRows(d.rows) + 16;
    const auto x = Random(static_cast<std::size_t>(d.count) * ldx, 2);
    const auto y0 = Random(static_cast<std::size_t>(d.count) * ldy, 3);
    const PackedF32 packed = PackF32(w, d.rows, d.cols);
    auto reference = y0;
    GemmF32(Kernel::kGeneric, packed, x.data(), ldx, d.count, reference.data(), ldy);
    for (int n = 0; n < d.count; ++n) {
      for (int r = 0; r < d.rows; ++r) {
        double dot = 0;
        for (int k = 0; k < d.cols; ++k) dot += double{w[r * d.cols + k]} * x[n * ldx + k];
        ASSERT_NEAR(reference[n * ldy + r], y0[n * ldy + r] + dot, 1e-4) << r << " " << n;
      }
      // Past the padded rows nothing is touched.
      for (int r = PaddedRows(d.rows); r < ldy; ++r)
        ASSERT_EQ(reference[n * ldy + r], y0[n * ldy + r]);
    }
    for (Kernel k : Supported()) {
      auto y = y0;
      GemmF32(k, packed, x.data(), ldx, d.count, y.data(), ldy);
      ASSERT_EQ(y, reference) << Name(k) << " " << d.rows << "x" << d.cols << " n=" << d.count;
    }
  }
}

TEST(LstmKernelsTest, QuantizeColsIsSymmetricPerColumn) {
  // H = 64, the input features (7), and lengths that leave a partial 8-lane block, alone (13) and
  // after several full ones (37).
  for (const int cols : {64, 7, 13, 37}) {
    const int count = 9, ldx = cols + 6, kpad = (cols + 7) / 8 * 8;
    auto x = Random(static_cast<std::size_t>(count) * ldx, 4);
    for (int k = 0; k < cols; ++k) x[ldx + k] = 0;  // an all-zero column
    QuantizedCols reference;
    QuantizeCols(Kernel::kGeneric, x.data(), ldx, count, cols, kpad, &reference);
    EXPECT_EQ(reference.scale[1], 0.0f);
    for (int n = 0; n < count; ++n) {
      float m = 0;
      for (int k = 0; k < cols; ++k) m = std::max(m, std::fabs(x[n * ldx + k]));
      EXPECT_FLOAT_EQ(reference.scale[n], m / kActivationMax);
      for (int k = 0; k < cols; ++k) {
        const int q = reference.s8[n * kpad + k];
        ASSERT_LE(std::abs(q), kActivationMax);
        if (m > 0) {
          ASSERT_NEAR(q * reference.scale[n], x[n * ldx + k], reference.scale[n] / 2 * 1.001);
        }
      }
      for (int k = cols; k < kpad; ++k) ASSERT_EQ(reference.s8[n * kpad + k], 0) << cols;
    }
    for (Kernel k : Supported()) {
      if (k == Kernel::kAvx512Vnni) continue;
      QuantizedCols q;
      q.s8.assign(static_cast<std::size_t>(count) * kpad, 99);  // padding must be rewritten
      QuantizeCols(k, x.data(), ldx, count, cols, kpad, &q);
      EXPECT_EQ(q.s8, reference.s8) << Name(k) << " cols " << cols;
      EXPECT_EQ(q.scale, reference.scale) << Name(k) << " cols " << cols;
    }
    QuantizedCols vnni;
    vnni.u8.assign(static_cast<std::size_t>(count) * kpad, 99);  // padding must be rewritten
    QuantizeCols(Kernel::kAvx512Vnni, x.data(), ldx, count, cols, kpad, &vnni);
    for (std::size_t i = 0; i < vnni.u8.size(); ++i) {
      ASSERT_EQ(vnni.u8[i], reference.s8[i] + 128) << cols;
    }
    EXPECT_EQ(vnni.scale, reference.scale) << cols;
  }
}

TEST(LstmKernelsTest, Int8ProductsAreExactAndIdenticalAcrossPackings) {
  for (const Dims& d : kDims) {
    const auto w = Random(static_cast<std::size_t>(d.rows) * d.cols, 5, 0.2f);
    const QuantizedMatrix q = QuantizeRows(w, d.rows, d.cols);
    const int ldx = d.cols + 1, ldy = PaddedRows(d.rows) + 16;
    const auto x = Random(static_cast<std::size_t>(d.count) * ldx, 6);
    const auto y0 = Random(static_cast<std::size_t>(d.count) * ldy, 7);
    // Unit scales turn the output into the exact integer products.
    QuantizedMatrix unit = q;
    std::fill(unit.scale.begin(), unit.scale.end(), 1.0f);
    std::vector<float> reference;
    for (Kernel k : {Kernel::kGeneric, Kernel::kAvx2, Kernel::kAvx512Vnni}) {
      const PackedI8 packed = PackI8(k, q);
      QuantizedCols xq;
      QuantizeCols(k, x.data(), ldx, d.count, d.cols, packed.kpad, &xq);
      auto y = y0;
      GemmI8Portable(packed, xq, d.count, y.data(), ldy);
      if (reference.empty()) {
        reference = y;
        // Against a naive sum of the same integers.
        for (int n = 0; n < d.count; ++n) {
          for (int r = 0; r < d.rows; ++r) {
            int64_t acc = 0;
            for (int c = 0; c < d.cols; ++c) {
              const int xi = k == Kernel::kAvx512Vnni ? xq.u8[n * packed.kpad + c] - 128
                                                      : xq.s8[n * packed.kpad + c];
              acc += int64_t{q.q[r * d.cols + c]} * xi;
            }
            const float expected =
                std::fma(q.scale[r] * xq.scale[n], static_cast<float>(acc), y0[n * ldy + r]);
            ASSERT_EQ(y[n * ldy + r], expected) << r << " " << n;
          }
        }
      }
      ASSERT_EQ(y, reference) << "portable, " << Name(k) << " packing";
      if (CpuSupports(k)) {
        auto fast = y0;
        GemmI8(packed, xq, d.count, fast.data(), ldy);
        ASSERT_EQ(fast, reference) << Name(k) << " " << d.rows << "x" << d.cols << " n=" << d.count;
      }
    }
  }
}

// Every weight at +-127 and every activation at +-kActivationMax: the AVX2 kernel's int16 sums of
// two pair sums reach their bound (4 * 63 * 127) and must still be exact.
TEST(LstmKernelsTest, Int8ProductsAtTheExtremesAreExact) {
  const int rows = 32, cols = 64, count = 4;
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.scale.assign(rows, 1.0f);
  for (int r = 0; r < rows; ++r) {
    for (int k = 0; k < cols; ++k) q.q.push_back(static_cast<int8_t>(r % 2 ? 127 : -127));
  }
  std::vector<float> x(static_cast<std::size_t>(count) * cols);
  for (int n = 0; n < count; ++n) {
    // Whole columns of one sign, so every product of a row has the same sign.
    for (int k = 0; k < cols; ++k) x[n * cols + k] = n % 2 ? -1.0f : 1.0f;
  }
  for (Kernel k : Supported()) {
    const PackedI8 packed = PackI8(k, q);
    QuantizedCols xq;
    QuantizeCols(k, x.data(), cols, count, cols, packed.kpad, &xq);
    std::vector<float> y(static_cast<std::size_t>(count) * rows, 0.0f);
    GemmI8(packed, xq, count, y.data(), rows);
    for (int n = 0; n < count; ++n) {
      for (int r = 0; r < rows; ++r) {
        int64_t acc = 0;
        for (int c = 0; c < cols; ++c) {
          acc += int64_t{q.q[r * cols + c]} * (x[n * cols + c] > 0 ? 1 : -1) * kActivationMax;
        }
        ASSERT_EQ(y[n * rows + r], xq.scale[n] * static_cast<float>(acc))
            << Name(k) << " r " << r << " n " << n;
      }
    }
  }
}

TEST(LstmKernelsTest, CellMatchesFormula) {
  const int hidden = 64, count = 3, ldg = PaddedRows(4 * hidden), ldh = 70;
  const auto g = Random(static_cast<std::size_t>(count) * ldg, 8, 3);
  const auto c0 = Random(static_cast<std::size_t>(count) * hidden, 9);
  for (Kernel k : Supported()) {
    auto c = c0;
    std::vector<float> h(static_cast<std::size_t>(count) * ldh, 0);
    LstmCell(k, g.data(), ldg, count, hidden, c.data(), h.data(), ldh);
    for (int n = 0; n < count; ++n) {
      for (int j = 0; j < hidden; ++j) {
        auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
        const float* gc = &g[n * ldg];
        const double cn = sig(gc[hidden + j]) * c0[n * hidden + j] +
                          sig(gc[j]) * std::tanh(double{gc[2 * hidden + j]});
        ASSERT_NEAR(c[n * hidden + j], cn, 1e-6) << Name(k);
        ASSERT_NEAR(h[n * ldh + j], sig(gc[3 * hidden + j]) * std::tanh(cn), 1e-6) << Name(k);
      }
    }
  }
}

// The SIMD cells approximate sigmoid and tanh (lstm_kernels.cc); sweep every gate over [-30, 30],
// past the approximations' clamping points, and compare with double precision.
TEST(LstmKernelsTest, CellNonlinearitiesHoldOverTheWholeRange) {
  const int hidden = 16, ldg = PaddedRows(4 * hidden);  // 16: every SIMD cell takes it
  const int count = 6001;                               // gate values -30, -29.99, ..., 30
  std::vector<float> g(static_cast<std::size_t>(count) * ldg, 0.0f);
  for (int n = 0; n < count; ++n) {
    for (int j = 0; j < 4 * hidden; ++j) {
      // Each gate row sees the sweep, shifted per row so the gates of a column differ.
      g[n * ldg + j] = -30.0f + 0.01f * static_cast<float>((n + 37 * j) % count);
    }
  }
  const std::vector<float> c0(static_cast<std::size_t>(count) * hidden, 0.75f);
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  for (CellMath math : {CellMath::kPrecise, CellMath::kFast}) {
    // kFast: tanh within 1.2e-4 (sigmoid within half that); c = f c0 + i g and h = o tanh(c)
    // add those errors up.
    const double limit = math == CellMath::kFast ? 2e-4 : 1e-6;
    double worst_fast = 0;
    for (Kernel k : Supported()) {
      auto c = c0;
      std::vector<float> h(static_cast<std::size_t>(count) * hidden);
      LstmCell(k, g.data(), ldg, count, hidden, c.data(), h.data(), hidden, math);
      double worst_c = 0, worst_h = 0;
      for (int n = 0; n < count; ++n) {
        for (int j = 0; j < hidden; ++j) {
          const float* gc = &g[n * ldg];
          const double cn = sig(gc[hidden + j]) * 0.75 + sig(gc[j]) * std::tanh(gc[2 * hidden + j]);
          worst_c = std::max(worst_c, std::fabs(c[n * hidden + j] - cn));
          const double hn = sig(gc[3 * hidden + j]) * std::tanh(double{c[n * hidden + j]});
          worst_h = std::max(worst_h, std::fabs(h[n * hidden + j] - hn));
        }
      }
      EXPECT_LE(worst_c, limit) << Name(k);
      EXPECT_LE(worst_h, limit) << Name(k);
      worst_fast = std::max({worst_fast, worst_c, worst_h});
    }
    // The fast functions are really the cheaper ones, not the precise ones by another name.
    if (math == CellMath::kFast) {
      EXPECT_GT(worst_fast, 1e-5);
    }
  }
}

TEST(LstmKernelsTest, NamesAndSupport) {
  EXPECT_TRUE(CpuSupports(Kernel::kGeneric));
  EXPECT_TRUE(CpuSupports(Best()));
  for (Kernel k : {Kernel::kGeneric, Kernel::kAvx2, Kernel::kAvx512Vnni}) {
    EXPECT_EQ(*Parse(Name(k)), k);
  }
  EXPECT_FALSE(Parse("neon").ok());
  EXPECT_EQ(PaddedRows(18), 32);
  EXPECT_EQ(PaddedRows(256), 256);
}

}  // namespace
}  // namespace megaserve::forecast::kernels
