// The low-level covariance ops: batch covariance, Barlow Twins'
// cross-correlation, the off-diagonal penalty and TiCo's in-place EMA update.
#include <ATen/ATen.h>

#include "sslext/common.h"
#include "sslext/kernels.h"
#include "sslext/ops.h"

namespace sslext {

namespace {

// alpha * x^T y as a fresh matrix: addmm_ with beta = 0 never reads the
// uninitialised output, and the scale rides on the GEMM instead of a pass.
at::Tensor scaled_xty(const at::Tensor& x, const at::Tensor& y, double alpha) {
  return at::empty({x.size(1), y.size(1)}, x.options()).addmm_(x.t(), y, /*beta=*/0.0, alpha);
}

at::Tensor standardized(const at::Tensor& z, double eps) {
  auto zc = z.contiguous();
  auto out = at::empty(zc.sizes(), zc.options().dtype(opmath_dtype(zc.scalar_type())));
  auto [mean, m2] = kernels::column_moments(zc, out);
  // Biased variance, as BatchNorm1d(affine=False) in training mode.
  return out.mul_(m2.div(zc.size(0)).add_(eps).rsqrt_());
}

}  // namespace

at::Tensor batch_covariance(const at::Tensor& z) {
  check_embedding(z, "z");
  auto zc = z.contiguous();
  auto centered = at::empty(zc.sizes(), zc.options().dtype(opmath_dtype(zc.scalar_type())));
  kernels::column_moments(zc, centered);
  return scaled_xty(centered, centered, 1.0 / static_cast<double>(zc.size(0) - 1));
}

at::Tensor cross_correlation(const at::Tensor& z_a, const at::Tensor& z_b, double eps) {
  check_pair(z_a, z_b);
  check_eps(eps);
  return scaled_xty(standardized(z_a, eps), standardized(z_b, eps),
                    1.0 / static_cast<double>(z_a.size(0)));
}

at::Tensor off_diagonal_penalty(const at::Tensor& c, double off_weight,
                                std::optional<double> diag_target) {
  TORCH_CHECK(c.dim() == 2 && c.size(0) == c.size(1) && c.size(0) >= 1,
              "c must be a square 2-D matrix of at least 1 x 1, got shape ", c.sizes());
  TORCH_CHECK(is_supported_float(c.scalar_type()),
              "c must be float16, bfloat16, float32 or float64, got ", c.scalar_type());
  check_finite(off_weight, "off_weight");
  if (diag_target.has_value()) check_finite(*diag_target, "diag_target");
  const auto acc = opmath_dtype(c.scalar_type());
  auto cc = c.contiguous().to(acc);
  auto sums = kernels::offdiag_sums(cc, diag_target.value_or(0.0));
  auto penalty = sums.select(0, 0).mul(off_weight);
  if (diag_target.has_value()) penalty.add_(sums.select(0, 1));
  return penalty.to(acc);
}

void tico_ema_update_(at::Tensor& c, const at::Tensor& z, double beta) {
  check_embedding(z, "z");
  check_running_cov(c, z, "c", "z");
  // An expanded c (stride 0) would be written through one element many times.
  TORCH_CHECK(at::has_internal_overlap(c) != at::MemOverlap::Yes,
              "c must not have overlapping memory (an expanded tensor): it is "
              "updated in place");
  check_beta(beta);
  // One rank-N update of c in place: no B = z^T z / N temporary.
  auto zc = z.contiguous().to(c.scalar_type());
  c.addmm_(zc.t(), zc, beta, (1.0 - beta) / static_cast<double>(zc.size(0)));
}

}  // namespace sslext
