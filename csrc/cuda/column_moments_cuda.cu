// Column statistics (mean, centered copy, sum of squared deviations) on CUDA:
// the same two-sweep algorithm as csrc/cpu/column_moments_cpu.cpp. Each
// (column tile, row split) block writes one partial per column to a workspace
// (the plan: column_splits.cuh).
//
// Precision contract (as csrc/cpu/column_moments_cpu.cpp): the column sums and
// sums of squared deviations accumulate in float64, per thread, across the
// block and across splits (float64 partials); mean and m2 are stored in
// opmath. A float32 running sum over ~N/1024 rows per thread would lose
// accuracy as N grows.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>

#include "column_splits.cuh"
#include "reduce.cuh"
#include "sslext/kernels.h"

namespace sslext::kernels {

namespace {

using cuda::ceil_div;
using cuda::column_group_sum;

// Threads of the 1-D kernel that folds the last partials.
constexpr int kFinalizeThreads = 256;

// Block (x, y) = (column tile, row split); thread (tx, ty) sums column
// x * 32 + tx over rows ty, ty + 8, ... of the split. One partial per column.
template <typename scalar_t, typename acc_t>
__global__ __launch_bounds__(kThreads) void column_sum_partial_kernel(
    const scalar_t* __restrict__ z, double* __restrict__ partial, int64_t n, int64_t d,
    int64_t rows_per_split) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = std::min(n, r0 + rows_per_split);
  // Deviations from row 0 (shifted data): a constant column then has a mean
  // equal to its value and centers to exact zeros (see column_moments_cpu).
  double s = 0.0;
  if (c < d) {
    const double shift = static_cast<double>(z[c]);
    for (int64_t i = r0 + threadIdx.y; i < r1; i += kRowGroups)
      s += static_cast<double>(z[i * d + c]) - shift;
  }
  s = column_group_sum<kColTile, kRowGroups>(s);
  if (threadIdx.y == 0 && c < d) partial[blockIdx.y * d + c] = s;
}

// Same mapping as column_sum_partial_kernel. Row 0 of the block first folds the
// split partials into the column mean (blocks of split 0 also store it); then
// every thread writes its centered values and sums their squares.
template <typename scalar_t, typename acc_t>
__global__ __launch_bounds__(kThreads) void column_center_kernel(
    const scalar_t* __restrict__ z, const double* __restrict__ sum_partial,
    acc_t* __restrict__ centered, acc_t* __restrict__ mean, double* __restrict__ sq_partial,
    int64_t n, int64_t d, int64_t rows_per_split, int64_t splits) {
  __shared__ acc_t tile_mean[kColTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  if (threadIdx.y == 0) {
    acc_t m = acc_t(0);
    if (c < d) {
      m = static_cast<acc_t>(static_cast<double>(z[c]) +
                             sum_splits(sum_partial, splits, d, c) / static_cast<double>(n));
      if (blockIdx.y == 0) mean[c] = m;
    }
    tile_mean[threadIdx.x] = m;
  }
  __syncthreads();
  const acc_t mu = tile_mean[threadIdx.x];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = std::min(n, r0 + rows_per_split);
  double s = 0.0;
  if (c < d) {
    for (int64_t i = r0 + threadIdx.y; i < r1; i += kRowGroups) {
      const int64_t k = i * d + c;
      const acc_t v = static_cast<acc_t>(z[k]) - mu;
      centered[k] = v;
      s += static_cast<double>(v) * static_cast<double>(v);
    }
  }
  s = column_group_sum<kColTile, kRowGroups>(s);
  if (threadIdx.y == 0 && c < d) sq_partial[blockIdx.y * d + c] = s;
}

// One thread per column: folds the float64 split partials into the column total.
template <typename acc_t>
__global__ __launch_bounds__(kFinalizeThreads) void column_finalize_kernel(
    const double* __restrict__ partial, acc_t* __restrict__ out, int64_t d, int64_t splits) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinalizeThreads + threadIdx.x;
  if (c < d) out[c] = static_cast<acc_t>(sum_splits(partial, splits, d, c));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> column_moments_cuda(const at::Tensor& z, at::Tensor& centered) {
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0), d = z.size(1);
  auto mean = at::empty({d}, centered.options());
  auto m2 = at::empty({d}, centered.options());
  const SplitPlan plan = plan_splits(n);
  auto sum_ws = at::empty({plan.splits, d}, centered.options().dtype(at::kDouble));
  auto sq_ws = at::empty({plan.splits, d}, centered.options().dtype(at::kDouble));
  const dim3 grid = column_grid(d, plan);
  const dim3 block(kColTile, kRowGroups);
  const dim3 fin_grid(static_cast<unsigned>(ceil_div<int64_t>(d, kFinalizeThreads)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "column_moments_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* zp = z.const_data_ptr<scalar_t>();
        SSLEXT_LAUNCH(grid, block, 0, stream, column_sum_partial_kernel<scalar_t, acc_t>)(
            zp, sum_ws.data_ptr<double>(), n, d, plan.rows_per_split);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        SSLEXT_LAUNCH(grid, block, 0, stream, column_center_kernel<scalar_t, acc_t>)(
            zp, sum_ws.const_data_ptr<double>(), centered.data_ptr<acc_t>(), mean.data_ptr<acc_t>(),
            sq_ws.data_ptr<double>(), n, d, plan.rows_per_split, plan.splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        SSLEXT_LAUNCH(fin_grid, kFinalizeThreads, 0, stream, column_finalize_kernel<acc_t>)(
            sq_ws.const_data_ptr<double>(), m2.data_ptr<acc_t>(), d, plan.splits);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {mean, m2};
}

}  // namespace sslext::kernels
