// The elementwise gradient of one VICReg branch on CUDA, as
// csrc/cpu/vicreg_grad_cpu.cpp: invariance, variance and covariance terms in
// one pass. The loss weights are read from grad_terms on the device, so the
// backward never waits on the host.
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
using cuda::device_sqrt;

constexpr int kThreads = 256;
// Enough resident blocks for any current part; larger inputs loop.
constexpr int64_t kMaxBlocks = 8192;

struct VicregCoeffs {
  double inv_coeff, var_coeff, cov_coeff, eps, cov_scale;
};

// Grid-stride over the flat index (64-bit): a warp touches consecutive
// elements. The column is tracked incrementally (col += stride mod d) to avoid
// a 64-bit division per element; its coefficient is recomputed in place.
template <typename scalar_t, typename acc_t>
__global__ __launch_bounds__(kThreads) void vicreg_grad_kernel(
    const scalar_t* __restrict__ z, const scalar_t* __restrict__ z_other,
    const acc_t* __restrict__ centered, const acc_t* __restrict__ var, const acc_t* __restrict__ g,
    const acc_t* __restrict__ grad_terms, scalar_t* __restrict__ dz, int64_t n, int64_t d,
    VicregCoeffs co, bool subtract_diag) {
  // Same expressions, in the same order, as the CPU reference. Parity is
  // within tolerance, not bitwise: nvcc contracts a * b + c into FMAs
  // (--fmad=true, its default), the CPU build does not (docs/cuda.md).
  const acc_t gt0 = grad_terms[0];
  const acc_t w_inv = gt0 * static_cast<acc_t>(co.inv_coeff) + grad_terms[1];
  const acc_t w_var = gt0 * static_cast<acc_t>(co.var_coeff) + grad_terms[2];
  const acc_t w_cov = gt0 * static_cast<acc_t>(co.cov_coeff) + grad_terms[3];
  const acc_t k_inv = w_inv * acc_t(2) / static_cast<acc_t>(n * d);
  const acc_t k_g = w_cov * static_cast<acc_t>(co.cov_scale);
  const acc_t var_denom = acc_t(2) * static_cast<acc_t>(d) * static_cast<acc_t>(n - 1);
  const acc_t eps = static_cast<acc_t>(co.eps);

  const int64_t numel = n * d;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t col_step = stride % d;
  int64_t k = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int64_t col = k % d;
  for (; k < numel; k += stride) {
    const acc_t v = var[col];
    const acc_t sd = device_sqrt(v + eps);
    acc_t c = sd < acc_t(1) ? -w_var / (var_denom * sd) : acc_t(0);
    if (subtract_diag) c -= k_g * v;
    const acc_t diff = static_cast<acc_t>(z[k]) - static_cast<acc_t>(z_other[k]);
    dz[k] = static_cast<scalar_t>(k_inv * diff + c * centered[k] + k_g * g[k]);
    col += col_step;
    if (col >= d) col -= d;
  }
}

}  // namespace

at::Tensor vicreg_grad_cuda(const at::Tensor& z, const at::Tensor& z_other,
                            const at::Tensor& centered, const at::Tensor& var, const at::Tensor& g,
                            const at::Tensor& grad_terms, double inv_coeff, double var_coeff,
                            double cov_coeff, double eps, double cov_scale, bool subtract_diag) {
  c10::cuda::CUDAGuard guard(z.device());
  const int64_t n = z.size(0), d = z.size(1);
  // Contiguous whatever z's strides (a size-1 dim keeps any stride): the
  // fake kernel promises contiguous gradients.
  auto dz = at::empty(z.sizes(), z.options());
  const int64_t numel = n * d;
  if (numel == 0) return dz;
  const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(numel, kThreads), kMaxBlocks);
  const VicregCoeffs co{inv_coeff, var_coeff, cov_coeff, eps, cov_scale};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "vicreg_grad_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        SSLEXT_LAUNCH(static_cast<unsigned>(blocks), kThreads, 0, stream,
                      vicreg_grad_kernel<scalar_t, acc_t>)(
            z.const_data_ptr<scalar_t>(), z_other.const_data_ptr<scalar_t>(),
            centered.const_data_ptr<acc_t>(), var.const_data_ptr<acc_t>(),
            g.const_data_ptr<acc_t>(), grad_terms.const_data_ptr<acc_t>(), dz.data_ptr<scalar_t>(),
            n, d, co, subtract_diag);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return dz;
}

}  // namespace sslext::kernels
