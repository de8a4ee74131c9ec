// Column statistics (mean, centered copy, sum of squared deviations) and the
// batch-norm backward on CUDA: the same two-sweep algorithms as
// csrc/cpu/column_moments_cpu.cpp.
//
// The rows are cut into a number of row splits fixed by N alone, so that a
// narrow D still gives enough blocks to fill the device. Each (column tile,
// row split) block writes one partial per column to a workspace; the partials
// are combined in split order 0, 1, ... by whoever needs the total, so the
// result depends on the shape only, never on the device or on scheduling.
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

#include "reduce.cuh"
#include "sslext/kernels.h"

namespace sslext::kernels {

namespace {

using cuda::ceil_div;
using cuda::column_group_sum;

// A warp is one row segment of kColTile consecutive columns (coalesced); the
// kRowGroups warps of a block interleave over the rows of the block's split.
constexpr int kColTile = 32;
constexpr int kRowGroups = 8;
constexpr int kThreads = kColTile * kRowGroups;
// Target rows per split: 16 rows per thread amortise the partial combine,
// and N = 256, D = 2048 still launches 128 blocks.
constexpr int64_t kRowsPerSplit = 128;
// Caps the partials each block of the second sweep re-reads per column.
constexpr int64_t kMaxSplits = 128;
// Threads of the 1-D kernel that folds the last partials.
constexpr int kFinalizeThreads = 256;

struct SplitPlan {
  int64_t splits;
  int64_t rows_per_split;
};

SplitPlan plan_splits(int64_t n) {
  const int64_t splits = std::min(ceil_div(n, kRowsPerSplit), kMaxSplits);
  return {splits, ceil_div(n, splits)};
}

dim3 column_grid(int64_t d, const SplitPlan& plan) {
  return dim3(static_cast<unsigned>(ceil_div<int64_t>(d, kColTile)),
              static_cast<unsigned>(plan.splits));
}

// Sum of the split partials of column c (layout [splits][d]) in split order.
// Every block that needs the total runs this same sequence, so all agree bitwise.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_splits(const acc_t* __restrict__ partial, int64_t splits,
                                            int64_t d, int64_t c) {
  acc_t total = acc_t(0);
  for (int64_t s = 0; s < splits; ++s) total += partial[s * d + c];
  return total;
}

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

// Same mapping as column_sum_partial_kernel, two sums at once: da and da * a.
template <typename acc_t>
__global__ __launch_bounds__(kThreads) void bn_backward_partial_kernel(
    const acc_t* __restrict__ da, const acc_t* __restrict__ a, acc_t* __restrict__ partial_g,
    acc_t* __restrict__ partial_ga, int64_t n, int64_t d, int64_t rows_per_split) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = std::min(n, r0 + rows_per_split);
  acc_t s1 = acc_t(0), s2 = acc_t(0);
  if (c < d) {
    for (int64_t i = r0 + threadIdx.y; i < r1; i += kRowGroups) {
      const acc_t g = da[i * d + c];
      s1 += g;
      s2 += g * a[i * d + c];
    }
  }
  s1 = column_group_sum<kColTile, kRowGroups>(s1);
  s2 = column_group_sum<kColTile, kRowGroups>(s2);
  if (threadIdx.y == 0 && c < d) {
    partial_g[blockIdx.y * d + c] = s1;
    partial_ga[blockIdx.y * d + c] = s2;
  }
}

// Same mapping as column_sum_partial_kernel. Row 0 of the block folds the
// partials into mean(da) and mean(da * a) of its columns; then every thread
// writes dz for its rows of the split.
template <typename acc_t, typename out_t>
__global__ __launch_bounds__(kThreads) void bn_backward_apply_kernel(
    const acc_t* __restrict__ da, const acc_t* __restrict__ a, const acc_t* __restrict__ inv_std,
    const acc_t* __restrict__ partial_g, const acc_t* __restrict__ partial_ga,
    out_t* __restrict__ dz, int64_t n, int64_t d, int64_t rows_per_split, int64_t splits) {
  __shared__ acc_t tile_mg[kColTile];
  __shared__ acc_t tile_mga[kColTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  if (threadIdx.y == 0) {
    acc_t m1 = acc_t(0), m2 = acc_t(0);
    if (c < d) {
      m1 = sum_splits(partial_g, splits, d, c) / static_cast<acc_t>(n);
      m2 = sum_splits(partial_ga, splits, d, c) / static_cast<acc_t>(n);
    }
    tile_mg[threadIdx.x] = m1;
    tile_mga[threadIdx.x] = m2;
  }
  __syncthreads();
  if (c >= d) return;  // no barrier below
  const acc_t m1 = tile_mg[threadIdx.x];
  const acc_t m2 = tile_mga[threadIdx.x];
  const acc_t is = inv_std[c];
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = std::min(n, r0 + rows_per_split);
  for (int64_t i = r0 + threadIdx.y; i < r1; i += kRowGroups) {
    const int64_t k = i * d + c;
    dz[k] = static_cast<out_t>(is * (da[k] - m1 - a[k] * m2));
  }
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

at::Tensor bn_backward_cuda(const at::Tensor& da, const at::Tensor& a, const at::Tensor& inv_std,
                            at::ScalarType out_dtype) {
  c10::cuda::CUDAGuard guard(da.device());
  const int64_t n = da.size(0), d = da.size(1);
  auto dz = at::empty({n, d}, da.options().dtype(out_dtype));
  const SplitPlan plan = plan_splits(n);
  auto g_ws = at::empty({plan.splits, d}, da.options());
  auto ga_ws = at::empty({plan.splits, d}, da.options());
  const dim3 grid = column_grid(d, plan);
  const dim3 block(kColTile, kRowGroups);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(da.scalar_type(), "bn_backward_cuda", [&] {
    using acc_t = scalar_t;
    const acc_t* gp = da.const_data_ptr<acc_t>();
    const acc_t* ap = a.const_data_ptr<acc_t>();
    const acc_t* ip = inv_std.const_data_ptr<acc_t>();
    SSLEXT_LAUNCH(grid, block, 0, stream, bn_backward_partial_kernel<acc_t>)(
        gp, ap, g_ws.data_ptr<acc_t>(), ga_ws.data_ptr<acc_t>(), n, d, plan.rows_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out_dtype, "bn_backward_cuda_out", [&] {
          SSLEXT_LAUNCH(grid, block, 0, stream, bn_backward_apply_kernel<acc_t, scalar_t>)(
              gp, ap, ip, g_ws.const_data_ptr<acc_t>(), ga_ws.const_data_ptr<acc_t>(),
              dz.data_ptr<scalar_t>(), n, d, plan.rows_per_split, plan.splits);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
  return dz;
}

}  // namespace sslext::kernels
