// The primitive kernels the ops are built from. Each has a CPU implementation
// in csrc/cpu/<kernel>_cpu.cpp and a CUDA one in csrc/cuda/<kernel>_cuda.cu;
// the inline dispatchers below pick by the device of the first tensor, so the
// host code of every op (csrc/ops/*.cpp) is written once for both devices.
//
// Conventions: inputs are contiguous (callers call .contiguous()); "opmath" is
// float32 for half/bfloat16/float32 inputs and float64 for float64 inputs;
// scalar reductions accumulate in float64 and combine partial sums in a fixed
// order, so results do not depend on thread count or scheduling.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace sslext::kernels {

// Column statistics of z (N x D): writes centered = z - mean (opmath, N x D,
// contiguous, may be a row-slice of a larger buffer) and returns
// (mean, m2) with m2[d] = sum_n centered[n, d]^2, both opmath of length D.
std::tuple<at::Tensor, at::Tensor> column_moments_cpu(const at::Tensor& z, at::Tensor& centered);
// sum over all elements of (a - b)^2, as a 0-d float64 tensor.
at::Tensor sum_sq_diff_cpu(const at::Tensor& a, const at::Tensor& b);
// Batch-norm backward for a = centered * inv_std:
// dz = inv_std * (da - mean_n(da) - a * mean_n(da * a)), in dtype out_dtype.
at::Tensor bn_backward_cpu(const at::Tensor& da, const at::Tensor& a, const at::Tensor& inv_std,
                           at::ScalarType out_dtype);

// (sum_{i != j} m_ij^2, sum_i (m_ii - diag_target)^2) of a square opmath
// matrix, as a length-2 float64 tensor, in one pass and without any temporary.
at::Tensor offdiag_sums_cpu(const at::Tensor& m, double diag_target);
// <a, b> over all elements of two same-shape opmath tensors, as a 0-d float64
// tensor (the Frobenius products of the Gram path).
at::Tensor dot_f64_cpu(const at::Tensor& a, const at::Tensor& b);

// The VICReg gradient of one branch, every term in one elementwise pass:
//   dz = w_inv * 2 (z - z_other) / (N D)
//      + w_var * -[std < 1] centered / (2 D (N - 1) std),   std = sqrt(var + eps)
//      + w_cov * cov_scale * (g - [subtract_diag] centered * var)
// where grad_terms is the incoming gradient of the terms vector
// [loss, invariance, variance, covariance] (opmath, on z's device) and
// w_inv = grad_terms[0] * inv_coeff + grad_terms[1], and so on: the weights are
// formed inside the kernel, so the backward needs no host sync.
at::Tensor vicreg_grad_cpu(const at::Tensor& z, const at::Tensor& z_other,
                           const at::Tensor& centered, const at::Tensor& var, const at::Tensor& g,
                           const at::Tensor& grad_terms, double inv_coeff, double var_coeff,
                           double cov_coeff, double eps, double cov_scale, bool subtract_diag);

// Row-wise L2 normalisation as F.normalize(z, dim=1, eps): returns
// (zhat opmath N x D, norms opmath N).
std::tuple<at::Tensor, at::Tensor> row_normalize_cpu(const at::Tensor& z, double eps);
// Backward of row_normalize for the incoming gradient
// g = w[0] * other + w[1] * proj (proj may be undefined), in dtype out_dtype.
at::Tensor row_normalize_backward_cpu(const at::Tensor& other, const at::Tensor& proj,
                                      const at::Tensor& zhat, const at::Tensor& norms,
                                      const at::Tensor& w, double eps, at::ScalarType out_dtype);

#if defined(SSLEXT_WITH_CUDA) || defined(SSLEXT_EMULATE_CUDA)
std::tuple<at::Tensor, at::Tensor> column_moments_cuda(const at::Tensor& z, at::Tensor& centered);
at::Tensor sum_sq_diff_cuda(const at::Tensor& a, const at::Tensor& b);
at::Tensor bn_backward_cuda(const at::Tensor& da, const at::Tensor& a, const at::Tensor& inv_std,
                            at::ScalarType out_dtype);
at::Tensor offdiag_sums_cuda(const at::Tensor& m, double diag_target);
at::Tensor dot_f64_cuda(const at::Tensor& a, const at::Tensor& b);
at::Tensor vicreg_grad_cuda(const at::Tensor& z, const at::Tensor& z_other,
                            const at::Tensor& centered, const at::Tensor& var, const at::Tensor& g,
                            const at::Tensor& grad_terms, double inv_coeff, double var_coeff,
                            double cov_coeff, double eps, double cov_scale, bool subtract_diag);
std::tuple<at::Tensor, at::Tensor> row_normalize_cuda(const at::Tensor& z, double eps);
at::Tensor row_normalize_backward_cuda(const at::Tensor& other, const at::Tensor& proj,
                                       const at::Tensor& zhat, const at::Tensor& norms,
                                       const at::Tensor& w, double eps, at::ScalarType out_dtype);
#endif

// Without CUDA kernels the call text is dropped, so the _cuda symbols need not exist.
#ifdef SSLEXT_WITH_CUDA
#define SSLEXT_CUDA_OR_FAIL(call) return call
#else
#define SSLEXT_CUDA_OR_FAIL(call)                                          \
  TORCH_CHECK(false,                                                       \
              "sslext was built without CUDA kernels; reinstall it where " \
              "nvcc is present (or with SSLEXT_FORCE_CUDA=1)")
#endif
#ifdef SSLEXT_EMULATE_CUDA
// The emulated build (sslext/_C_emu, docs/cuda.md) runs the CUDA kernels,
// compiled as host C++, on CPU tensors: every call goes to the _cuda twin.
#define SSLEXT_DISPATCH_DEVICE(t, name, ...) return name##_cuda(__VA_ARGS__)
#else
#define SSLEXT_DISPATCH_DEVICE(t, name, ...)         \
  do {                                               \
    if ((t).is_cuda()) {                             \
      SSLEXT_CUDA_OR_FAIL(name##_cuda(__VA_ARGS__)); \
    }                                                \
    return name##_cpu(__VA_ARGS__);                  \
  } while (0)
#endif

inline std::tuple<at::Tensor, at::Tensor> column_moments(const at::Tensor& z,
                                                         at::Tensor& centered) {
  SSLEXT_DISPATCH_DEVICE(z, column_moments, z, centered);
}
inline at::Tensor sum_sq_diff(const at::Tensor& a, const at::Tensor& b) {
  SSLEXT_DISPATCH_DEVICE(a, sum_sq_diff, a, b);
}
inline at::Tensor bn_backward(const at::Tensor& da, const at::Tensor& a, const at::Tensor& inv_std,
                              at::ScalarType out_dtype) {
  SSLEXT_DISPATCH_DEVICE(da, bn_backward, da, a, inv_std, out_dtype);
}
inline at::Tensor offdiag_sums(const at::Tensor& m, double diag_target) {
  SSLEXT_DISPATCH_DEVICE(m, offdiag_sums, m, diag_target);
}
inline at::Tensor dot_f64(const at::Tensor& a, const at::Tensor& b) {
  SSLEXT_DISPATCH_DEVICE(a, dot_f64, a, b);
}
inline at::Tensor vicreg_grad(const at::Tensor& z, const at::Tensor& z_other,
                              const at::Tensor& centered, const at::Tensor& var,
                              const at::Tensor& g, const at::Tensor& grad_terms, double inv_coeff,
                              double var_coeff, double cov_coeff, double eps, double cov_scale,
                              bool subtract_diag) {
  SSLEXT_DISPATCH_DEVICE(z, vicreg_grad, z, z_other, centered, var, g, grad_terms, inv_coeff,
                         var_coeff, cov_coeff, eps, cov_scale, subtract_diag);
}
inline std::tuple<at::Tensor, at::Tensor> row_normalize(const at::Tensor& z, double eps) {
  SSLEXT_DISPATCH_DEVICE(z, row_normalize, z, eps);
}
inline at::Tensor row_normalize_backward(const at::Tensor& other, const at::Tensor& proj,
                                         const at::Tensor& zhat, const at::Tensor& norms,
                                         const at::Tensor& w, double eps,
                                         at::ScalarType out_dtype) {
  SSLEXT_DISPATCH_DEVICE(zhat, row_normalize_backward, other, proj, zhat, norms, w, eps, out_dtype);
}

}  // namespace sslext::kernels
