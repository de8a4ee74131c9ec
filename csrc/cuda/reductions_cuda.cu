// Scalar reductions with float64 accumulation on CUDA, as
// csrc/cpu/reductions_cpu.cpp: off-/on-diagonal sums of squares, the squared
// distance of two batches and the Frobenius product.
//
// Two launches each: a partial kernel whose grid size is a function of the
// shape only writes one float64 partial per block, and a single-block kernel
// folds the partials in a fixed order. No atomics, so the bits never change.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "reduce.cuh"
#include "sslext/kernels.h"

namespace sslext::kernels {

namespace {

using cuda::block_reduce_sum;
using cuda::ceil_div;

constexpr int kThreads = 256;
// Elements per thread a partial block aims for before the grid stops growing.
constexpr int64_t kItemsPerThread = 8;
// Upper bound on partial blocks: ~8 blocks per SM on the largest parts, and a
// partial array the finalize block folds in four strided sweeps.
constexpr int64_t kMaxPartials = 1024;

int64_t flat_blocks(int64_t numel) {
  return std::clamp<int64_t>(ceil_div(numel, kThreads * kItemsPerThread), 1, kMaxPartials);
}

// Thread t of the single block folds partials t, t + kThreads, ... of each of
// the kWidth interleaved components, then the block tree adds the threads.
template <int kWidth>
__global__ __launch_bounds__(kThreads) void finalize_partials_kernel(
    const double* __restrict__ partials, int64_t count, double* __restrict__ out) {
  for (int k = 0; k < kWidth; ++k) {
    double s = 0.0;
    for (int64_t p = threadIdx.x; p < count; p += kThreads) s += partials[p * kWidth + k];
    s = block_reduce_sum<kThreads>(s);
    if (threadIdx.x == 0) out[k] = s;
  }
}

// Grid-stride over the flat index: a warp reads consecutive elements, and each
// thread's float64 sum sees a sequence fixed by the (shape-only) grid.
template <typename scalar_t, typename acc_t>
__global__ __launch_bounds__(kThreads) void sum_sq_diff_partial_kernel(
    const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t numel,
    double* __restrict__ partials) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double s = 0.0;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < numel;
       k += stride) {
    // The difference in opmath, its square in float64, as on the CPU: a
    // float32 square overflows for |diff| > ~1.8e19.
    const double diff = static_cast<double>(static_cast<acc_t>(a[k]) - static_cast<acc_t>(b[k]));
    s += diff * diff;
  }
  s = block_reduce_sum<kThreads>(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Same mapping as sum_sq_diff_partial_kernel; products and sums in float64,
// as on the CPU.
template <typename scalar_t>
__global__ __launch_bounds__(kThreads) void dot_partial_kernel(const scalar_t* __restrict__ a,
                                                               const scalar_t* __restrict__ b,
                                                               int64_t numel,
                                                               double* __restrict__ partials) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  double s = 0.0;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; k < numel;
       k += stride) {
    s += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  }
  s = block_reduce_sum<kThreads>(s);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// Block b takes rows b, b + gridDim.x, ...; its threads stride the row's
// columns (coalesced). The diagonal element goes to its own sum and never into
// the off-diagonal one. Partials interleaved as (off, diag) per block.
template <typename scalar_t>
__global__ __launch_bounds__(kThreads) void offdiag_partial_kernel(const scalar_t* __restrict__ m,
                                                                   int64_t d, double diag_target,
                                                                   double* __restrict__ partials) {
  double off = 0.0, on = 0.0;
  for (int64_t i = blockIdx.x; i < d; i += gridDim.x) {
    const scalar_t* row = m + i * d;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      const scalar_t v = row[j];
      if (j == i) {
        const double t = static_cast<double>(v) - diag_target;
        on += t * t;
      } else {
        const double w = static_cast<double>(v);
        off += w * w;
      }
    }
  }
  off = block_reduce_sum<kThreads>(off);
  on = block_reduce_sum<kThreads>(on);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = off;
    partials[2 * blockIdx.x + 1] = on;
  }
}

}  // namespace

at::Tensor offdiag_sums_cuda(const at::Tensor& m, double diag_target) {
  c10::cuda::CUDAGuard guard(m.device());
  const int64_t d = m.size(0);
  const int64_t blocks = std::clamp<int64_t>(d, 1, kMaxPartials);
  auto partials = at::empty({blocks, 2}, m.options().dtype(at::kDouble));
  auto out = at::empty({2}, m.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "offdiag_sums_cuda", [&] {
    SSLEXT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream,
                  offdiag_partial_kernel<scalar_t>)(m.const_data_ptr<scalar_t>(), d, diag_target,
                                                    partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  SSLEXT_LAUNCH(1, kThreads, 0, stream, finalize_partials_kernel<2>)(
      partials.const_data_ptr<double>(), blocks, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sum_sq_diff_cuda(const at::Tensor& a, const at::Tensor& b) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t numel = a.numel();
  const int64_t blocks = flat_blocks(numel);
  auto partials = at::empty({blocks}, a.options().dtype(at::kDouble));
  auto out = at::empty({}, a.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "sum_sq_diff_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        SSLEXT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream,
                      sum_sq_diff_partial_kernel<scalar_t, acc_t>)(
            a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), numel,
            partials.data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  SSLEXT_LAUNCH(1, kThreads, 0, stream, finalize_partials_kernel<1>)(
      partials.const_data_ptr<double>(), blocks, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor dot_f64_cuda(const at::Tensor& a, const at::Tensor& b) {
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t numel = a.numel();
  const int64_t blocks = flat_blocks(numel);
  auto partials = at::empty({blocks}, a.options().dtype(at::kDouble));
  auto out = at::empty({}, a.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "dot_f64_cuda", [&] {
    SSLEXT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream, dot_partial_kernel<scalar_t>)(
        a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(), numel,
        partials.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  SSLEXT_LAUNCH(1, kThreads, 0, stream, finalize_partials_kernel<1>)(
      partials.const_data_ptr<double>(), blocks, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace sslext::kernels
