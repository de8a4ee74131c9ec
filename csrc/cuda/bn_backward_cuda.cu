// The batch-norm backward on CUDA (Barlow Twins' standardisation): the same
// two sweeps as csrc/cpu/bn_backward_cpu.cpp, laid out as the column passes of
// column_moments_cuda.cu (column_splits.cuh): per-split partials of da and
// da * a, combined in split order, then dz = inv_std * (da - mean(da) - a * mean(da * a)).
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

using cuda::column_group_sum;

// Same mapping as column_sum_partial_kernel (column_moments_cuda.cu), two sums at once: da and da *
// a.
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

// Same mapping again. Row 0 of the block folds the
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
