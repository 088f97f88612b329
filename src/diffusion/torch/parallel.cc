#include "diffusion/torch/parallel.h"

#include <dlfcn.h>

#include <cstdint>
#include <vector>

namespace megaserve::diffusion {
namespace {

// Below this many multiply-adds a product runs as one call: opening an OpenMP region has a
// fixed cost that small products do not repay.
constexpr int64_t kMinParallelMacs = int64_t{1} << 18;
// The fewest rows (or columns) one thread's part gets, so that every part stays a product
// BLAS runs near its peak.
constexpr int64_t kMinPartRows = 32;
constexpr int64_t kMinPartColumns = 64;

// out (+)= a @ b + bias on the calling thread.
void MatmulPart(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                const at::Tensor& bias, bool accumulate) {
  if (bias.defined()) {
    const at::Tensor row = bias.expand_as(out);
    accumulate ? out.add_(row) : out.copy_(row);
    accumulate = true;
  }
  // beta 0 makes BLAS ignore what `out` held (even NaN), as at::mm would.
  out.addmm_(a, b, /*beta=*/accumulate ? 1 : 0, /*alpha=*/1);
}

}  // namespace

bool ConfigureComputeThreads(int threads) {
  if (threads > 0) at::set_num_threads(threads);
  // libtorch reaches OpenBLAS through libblas.so.3; every Debian flavour of it (pthreads, OpenMP,
  // serial) has this soname and exports its thread setter.
  void* blas = dlopen("libopenblas.so.0", RTLD_LAZY | RTLD_NOLOAD);
  if (blas == nullptr) return false;
  using SetThreads = void (*)(int);
  auto set_threads = reinterpret_cast<SetThreads>(dlsym(blas, "openblas_set_num_threads"));
  if (set_threads != nullptr) set_threads(1);
  dlclose(blas);  // drops the reference RTLD_NOLOAD took; the library stays loaded
  return set_threads != nullptr;
}

void ParallelMatmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& bias, bool accumulate) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  const int64_t threads = !out.is_cpu() || at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads > 1 && m * k * n >= kMinParallelMacs) {
    if (m >= threads * kMinPartRows) {
      ParallelFor(0, m, kMinPartRows, [&](int64_t r0, int64_t r1) {
        MatmulPart(out.narrow(0, r0, r1 - r0), a.narrow(0, r0, r1 - r0), b, bias, accumulate);
      });
      return;
    }
    if (n >= threads * kMinPartColumns) {
      ParallelFor(0, n, kMinPartColumns, [&](int64_t c0, int64_t c1) {
        MatmulPart(out.narrow(1, c0, c1 - c0), a, b.narrow(1, c0, c1 - c0),
                   bias.defined() ? bias.narrow(0, c0, c1 - c0) : bias, accumulate);
      });
      return;
    }
  }
  MatmulPart(out, a, b, bias, accumulate);
}

at::Tensor ParallelLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  const int64_t in = weight.size(1);
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "linear: input width ", x.size(-1),
              " does not match the weight's ", in);
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = weight.size(0);
  const at::Tensor rows = x.reshape({-1, in});
  at::Tensor out = at::empty({rows.size(0), weight.size(0)}, x.options());
  ParallelMatmul(out, rows, weight.t(), bias, /*accumulate=*/false);
  return out.view(sizes);
}

}  // namespace megaserve::diffusion
