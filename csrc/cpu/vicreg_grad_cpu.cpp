// The elementwise gradient of one VICReg branch (invariance, variance and
// covariance terms together), shared by VICReg and VICReg-TiCo.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "sslext/kernels.h"

namespace sslext::kernels {

at::Tensor vicreg_grad_cpu(const at::Tensor& z, const at::Tensor& z_other,
                           const at::Tensor& centered, const at::Tensor& var, const at::Tensor& g,
                           const at::Tensor& grad_terms, double inv_coeff, double var_coeff,
                           double cov_coeff, double eps, double cov_scale, bool subtract_diag) {
  const int64_t n = z.size(0), d = z.size(1);
  // Contiguous whatever z's strides (a size-1 dim keeps any stride): the
  // fake kernel promises contiguous gradients.
  auto dz = at::empty(z.sizes(), z.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "vicreg_grad_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const acc_t* gt = grad_terms.const_data_ptr<acc_t>();
        const acc_t w_inv = gt[0] * static_cast<acc_t>(inv_coeff) + gt[1];
        const acc_t w_var = gt[0] * static_cast<acc_t>(var_coeff) + gt[2];
        const acc_t w_cov = gt[0] * static_cast<acc_t>(cov_coeff) + gt[3];
        const acc_t k_inv = w_inv * acc_t(2) / static_cast<acc_t>(n * d);
        const acc_t k_g = w_cov * static_cast<acc_t>(cov_scale);
        // Everything that depends on the column only is folded into one
        // coefficient of the centered value, so the row loop is a pure axpy.
        std::vector<acc_t> k_c(d);
        const acc_t* vp = var.const_data_ptr<acc_t>();
        for (int64_t j = 0; j < d; ++j) {
          const acc_t sd = std::sqrt(vp[j] + static_cast<acc_t>(eps));
          acc_t c =
              sd < acc_t(1)
                  ? -w_var / (acc_t(2) * static_cast<acc_t>(d) * static_cast<acc_t>(n - 1) * sd)
                  : acc_t(0);
          if (subtract_diag) c -= k_g * vp[j];
          k_c[j] = c;
        }
        const scalar_t* zp = z.const_data_ptr<scalar_t>();
        const scalar_t* op = z_other.const_data_ptr<scalar_t>();
        const acc_t* cp = centered.const_data_ptr<acc_t>();
        const acc_t* gp = g.const_data_ptr<acc_t>();
        scalar_t* out = dz.data_ptr<scalar_t>();
        at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t base = i * d;
            for (int64_t j = 0; j < d; ++j) {
              const acc_t diff =
                  static_cast<acc_t>(zp[base + j]) - static_cast<acc_t>(op[base + j]);
              out[base + j] =
                  static_cast<scalar_t>(k_inv * diff + k_c[j] * cp[base + j] + k_g * gp[base + j]);
            }
          }
        });
      });
  return dz;
}

}  // namespace sslext::kernels
