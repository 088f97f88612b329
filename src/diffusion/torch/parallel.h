// How the engine uses the CPU's cores: through one pool of threads, ATen's intra-op (OpenMP)
// pool, for every operation.
//
// libtorch's CPU build computes convolutions, normalisations and element-wise work on its OpenMP
// pool, but hands matrix products to the BLAS library, which keeps a thread pool of its own
// (OpenBLAS's pthreads). With both pools as large as the machine, each pool's idle threads spin
// while the other computes, and the kernel time-slices them (on a 2-core machine a profile of
// a Stable Diffusion 1.5 UNet step showed much of its time there; docs/architecture.md). The
// engine therefore runs BLAS single-threaded and splits its large
// products over the OpenMP pool itself: rows of the left operand per thread, each part one BLAS
// call on the thread that owns it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <cstdint>

namespace megaserve::diffusion {

// at::parallel_for(begin, end, grain, f) with the caller's thread-local state (inference mode,
// grad mode) in force on every thread: the pool's threads do not inherit it, and tensors made
// there under another mode cannot be updated in place. Runs inline inside a parallel region.
template <class F>
void ParallelFor(int64_t begin, int64_t end, int64_t grain, const F& f) {
  const at::ThreadLocalState state;
  at::parallel_for(begin, end, grain, [&](int64_t part_begin, int64_t part_end) {
    const at::ThreadLocalStateGuard guard(state);
    f(part_begin, part_end);
  });
}

// Sets the intra-op pool to `threads` (when > 0; otherwise libtorch's default stays) and makes
// an OpenBLAS found in the process run every call on its calling thread. Process-wide: call it
// before computing, from one thread. Returns false when the BLAS library is not OpenBLAS (its
// threading is then left as it is).
bool ConfigureComputeThreads(int threads);

// out = a @ b + bias, or out += a @ b + bias with `accumulate`, for a [M, K], b [K, N] and
// out [M, N] whose rows have unit stride (b and a may be transposed views); `bias` [N] may be
// undefined. Large products are split over the intra-op pool by rows of a (by columns of b
// when there are few rows); inside a parallel region it runs on the calling thread.
void ParallelMatmul(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                    const at::Tensor& bias, bool accumulate);

// x W^T + b over the last dimension: x [..., in], weight [out, in], bias [out] or undefined;
// returns a new contiguous [..., out]. Throws (c10::Error) on a width mismatch.
at::Tensor ParallelLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace megaserve::diffusion
