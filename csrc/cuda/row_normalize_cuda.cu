// Row-wise L2 normalisation and its backward on CUDA, as
// csrc/cpu/row_normalize_cpu.cpp (TiCo's F.normalize of each view).
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
using cuda::device_sqrt;

constexpr int kThreads = 256;
// Rows are looped over past this many blocks; far more than can be resident.
constexpr int64_t kMaxRowBlocks = 65535;

int64_t row_blocks(int64_t n) { return std::clamp<int64_t>(n, 1, kMaxRowBlocks); }

// One block per row (rows gridDim.x apart share a block); threads stride the
// row's columns, so a warp reads consecutive elements, and the row's sum of
// squares is a fixed block tree. The second sweep re-reads the row (L1/L2).
template <typename scalar_t, typename acc_t>
__global__ __launch_bounds__(kThreads) void row_normalize_kernel(const scalar_t* __restrict__ z,
                                                                 acc_t* __restrict__ zhat,
                                                                 acc_t* __restrict__ norms,
                                                                 int64_t n, int64_t d, acc_t eps) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const scalar_t* row = z + i * d;
    // Sum of squares and its sqrt in float64, as on the CPU: in float32 a row
    // with |z| ~ 1e20 would overflow to norm = inf and zhat = 0.
    double s = 0.0;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      const double v = static_cast<double>(row[j]);
      s += v * v;
    }
    s = block_reduce_sum<kThreads>(s);
    const acc_t norm = static_cast<acc_t>(device_sqrt(s));
    if (threadIdx.x == 0) norms[i] = norm;
    // std::max(norm, eps) of the CPU path: a NaN norm stays NaN.
    const acc_t inv = acc_t(1) / (norm < eps ? eps : norm);
    acc_t* out = zhat + i * d;
    for (int64_t j = threadIdx.x; j < d; j += kThreads) out[j] = static_cast<acc_t>(row[j]) * inv;
  }
}

// Same mapping as row_normalize_kernel. g = w0 * other + w1 * proj is formed
// twice (for <zhat, g>, then for the output) instead of being stored.
template <typename acc_t, typename out_t>
__global__ __launch_bounds__(kThreads) void row_normalize_backward_kernel(
    const acc_t* __restrict__ other, const acc_t* __restrict__ proj, const acc_t* __restrict__ zhat,
    const acc_t* __restrict__ norms, const acc_t* __restrict__ w, out_t* __restrict__ dz, int64_t n,
    int64_t d, acc_t eps) {
  const bool has_proj = proj != nullptr;
  const acc_t w0 = w[0];
  const acc_t w1 = has_proj ? w[1] : acc_t(0);
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t base = i * d;
    acc_t dot = acc_t(0);
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      acc_t v = w0 * other[base + j];
      if (has_proj) v += w1 * proj[base + j];
      dot += v * zhat[base + j];
    }
    dot = block_reduce_sum<kThreads>(dot);
    const acc_t norm = norms[i];
    const bool active = norm > eps;
    const acc_t inv = acc_t(1) / (active ? norm : eps);
    for (int64_t j = threadIdx.x; j < d; j += kThreads) {
      acc_t v = w0 * other[base + j];
      if (has_proj) v += w1 * proj[base + j];
      dz[base + j] = static_cast<out_t>(active ? (v - zhat[base + j] * dot) * inv : v * inv);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> row_normalize_cuda(const at::Tensor& z, double eps) {
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0), d = z.size(1);
  const auto acc_dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto zhat = at::empty({n, d}, z.options().dtype(acc_dtype));
  auto norms = at::empty({n}, z.options().dtype(acc_dtype));
  if (n == 0) return {zhat, norms};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "row_normalize_cuda",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    SSLEXT_LAUNCH(static_cast<unsigned>(row_blocks(n)), kThreads, 0,
                                                  stream, row_normalize_kernel<scalar_t, acc_t>)(
                                        z.const_data_ptr<scalar_t>(), zhat.data_ptr<acc_t>(),
                                        norms.data_ptr<acc_t>(), n, d, static_cast<acc_t>(eps));
                                    C10_CUDA_KERNEL_LAUNCH_CHECK();
                                  });
  return {zhat, norms};
}

at::Tensor row_normalize_backward_cuda(const at::Tensor& other, const at::Tensor& proj,
                                       const at::Tensor& zhat, const at::Tensor& norms,
                                       const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  c10::cuda::CUDAGuard guard(zhat.device());
  const int64_t n = zhat.size(0), d = zhat.size(1);
  auto dz = at::empty({n, d}, zhat.options().dtype(out_dtype));
  if (n == 0) return dz;
  const bool has_proj = proj.defined() && proj.numel() > 0;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(zhat.scalar_type(), "row_normalize_backward_cuda", [&] {
    using acc_t = scalar_t;
    const acc_t* otp = other.const_data_ptr<acc_t>();
    const acc_t* pp = has_proj ? proj.const_data_ptr<acc_t>() : nullptr;
    const acc_t* hp = zhat.const_data_ptr<acc_t>();
    const acc_t* np = norms.const_data_ptr<acc_t>();
    const acc_t* wp = w.const_data_ptr<acc_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out_dtype, "row_normalize_backward_cuda_out", [&] {
          SSLEXT_LAUNCH(static_cast<unsigned>(row_blocks(n)), kThreads, 0, stream,
                        row_normalize_backward_kernel<acc_t, scalar_t>)(
              otp, pp, hp, np, wp, dz.data_ptr<scalar_t>(), n, d, static_cast<acc_t>(eps));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  });
  return dz;
}

}  // namespace sslext::kernels
