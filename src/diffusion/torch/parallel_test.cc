#include "diffusion/torch/parallel.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "diffusion/torch/attention.h"

namespace megaserve::diffusion {
namespace {

// Every test runs on two intra-op threads (the parallel paths), then restores the count.
class ParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    saved_threads_ = at::get_num_threads();
    at::set_num_threads(2);
  }
  void TearDown() override { at::set_num_threads(saved_threads_); }

  static at::Tensor Random(at::IntArrayRef sizes) { return at::randn(sizes, at::kFloat); }
  static void ExpectClose(const at::Tensor& got, const at::Tensor& want) {
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT((got - want).abs().max().item<float>(), 1e-4f);
  }

 private:
  int saved_threads_ = 1;
};

TEST_F(ParallelTest, RowSplitProductMatchesAddmm) {
  const at::Tensor a = Random({300, 64}), w = Random({128, 64}), bias = Random({128});
  at::Tensor out = at::empty({300, 128});
  ParallelMatmul(out, a, w.t(), bias, /*accumulate=*/false);
  ExpectClose(out, at::addmm(bias, a, w.t()));

  const at::Tensor residual = Random({300, 128});
  at::Tensor acc = residual.clone();
  ParallelMatmul(acc, a, w.t(), bias, /*accumulate=*/true);
  ExpectClose(acc, residual + bias + at::mm(a, w.t()));
}

TEST_F(ParallelTest, FewRowsSplitByColumns) {
  const at::Tensor a = Random({4, 512}), w = Random({1024, 512}), bias = Random({1024});
  at::Tensor out = at::empty({4, 1024});
  ParallelMatmul(out, a, w.t(), bias, /*accumulate=*/false);
  ExpectClose(out, at::addmm(bias, a, w.t()));

  at::Tensor no_bias = at::empty({4, 1024});
  ParallelMatmul(no_bias, a, w.t(), at::Tensor(), /*accumulate=*/false);
  ExpectClose(no_bias, at::mm(a, w.t()));
}

TEST_F(ParallelTest, StaleOutputIsIgnoredUnlessAccumulating) {
  const at::Tensor a = Random({256, 64}), b = Random({64, 96});
  at::Tensor out = at::full({256, 96}, std::numeric_limits<float>::quiet_NaN());
  ParallelMatmul(out, a, b, at::Tensor(), /*accumulate=*/false);
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  ExpectClose(out, at::mm(a, b));
}

TEST_F(ParallelTest, TransposedLeftOperand) {
  const at::Tensor at_ = Random({64, 300}), b = Random({64, 80});
  at::Tensor out = at::empty({300, 80});
  ParallelMatmul(out, at_.t(), b, at::Tensor(), /*accumulate=*/false);
  ExpectClose(out, at::mm(at_.t(), b));
}

TEST_F(ParallelTest, LinearKeepsLeadingDimensionsAndChecksWidth) {
  const at::Tensor x = Random({2, 70, 64}), w = Random({96, 64}), bias = Random({96});
  const at::Tensor y = ParallelLinear(x, w, bias);
  ExpectClose(y, at::linear(x, w, bias));
  EXPECT_THROW(ParallelLinear(Random({2, 70, 63}), w, bias), c10::Error);
}

// Tensors made under inference mode can only be updated in place under it; the pool's threads
// must therefore run with the caller's mode, which the attention's blocks rely on.
TEST_F(ParallelTest, AttentionOnThePoolUnderInferenceModeMatchesTheReference) {
  const at::InferenceMode inference;
  const int64_t batch = 2, heads = 3, d = 16, n = 600, m = 250;
  const at::Tensor q = Random({batch, n, heads * d}), k = Random({batch, m, heads * d}),
                   v = Random({batch, m, heads * d});
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const at::Tensor got = MultiHeadAttention(q, k, v, heads, scale, /*slice=*/128);

  auto split = [&](const at::Tensor& t) { return t.view({batch, -1, heads, d}).transpose(1, 2); };
  const at::Tensor p = at::softmax(at::matmul(split(q), split(k).transpose(-1, -2)) * scale, -1);
  const at::Tensor want = at::matmul(p, split(v)).transpose(1, 2).reshape({batch, n, heads * d});
  ExpectClose(got, want);
}

TEST_F(ParallelTest, ConfigureMakesOpenBlasSingleThreaded) {
  void* blas = dlopen("libopenblas.so.0", RTLD_LAZY | RTLD_NOLOAD);
  const bool configured = ConfigureComputeThreads(2);
  EXPECT_EQ(at::get_num_threads(), 2);
  if (blas == nullptr) {
    EXPECT_FALSE(configured) << "no OpenBLAS in the process, so nothing to configure";
    return;
  }
  EXPECT_TRUE(configured);
  using GetThreads = int (*)();
  auto get_threads = reinterpret_cast<GetThreads>(dlsym(blas, "openblas_get_num_threads"));
  ASSERT_NE(get_threads, nullptr);
  EXPECT_EQ(get_threads(), 1);
  dlclose(blas);
}

}  // namespace
}  // namespace megaserve::diffusion
