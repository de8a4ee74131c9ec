// TiCo (Zhu et al., 2022): 1 - mean <za, zb> + rho * mean za^T C_new za on
// L2-normalised rows, with C_new = beta C + (1 - beta) za^T za / N detached.
#include <ATen/ATen.h>

#include "sslext/common.h"
#include "sslext/kernels.h"
#include "sslext/ops.h"

namespace sslext {

namespace {
// F.normalize's default: rows shorter than this are divided by it instead.
constexpr double kNormalizeEps = 1e-12;
}  // namespace

Tensor2 tico_contrast_product(const at::Tensor& y, const at::Tensor& c,
                              double beta, int64_t strategy) {
  const double m = static_cast<double>(y.size(0));
  const auto cy = c.to(y.scalar_type());
  if (to_strategy(strategy) == Strategy::kGram) {
    // beta Y C + (1 - beta)/M (Y Y^T) Y: the only D x D matrix touched is C.
    auto p = at::empty_like(y).addmm_(y, cy, /*beta=*/0.0, beta);
    p.addmm_(at::mm(y, y.t()), y, 1.0, (1.0 - beta) / m);
    return {p, at::empty({0}, y.options())};
  }
  auto c_new = at::addmm(cy, y.t(), y, beta, (1.0 - beta) / m);
  auto p = at::mm(y, c_new);
  return {p, c_new};
}

Tensor7 tico_loss(const at::Tensor& z_a, const at::Tensor& z_b,
                  const at::Tensor& c, double beta, double rho,
                  int64_t strategy) {
  check_pair(z_a, z_b);
  check_running_cov(c, z_a, "c");
  check_beta(beta);
  to_strategy(strategy);
  const double n = static_cast<double>(z_a.size(0));
  auto [zhat_a, norm_a] = kernels::row_normalize(z_a.contiguous(), kNormalizeEps);
  auto [zhat_b, norm_b] = kernels::row_normalize(z_b.contiguous(), kNormalizeEps);
  auto [proj, c_new] = tico_contrast_product(zhat_a, c, beta, strategy);
  auto sim = kernels::dot_f64(zhat_a, zhat_b).div_(n);
  auto quad = kernels::dot_f64(zhat_a, proj).div_(n);
  auto loss = (1.0 - sim).add_(quad, rho);
  auto terms = at::stack({loss, sim, quad}).to(zhat_a.scalar_type());
  return {terms, zhat_a, zhat_b, norm_a, norm_b, proj, c_new};
}

Tensor2 tico_loss_backward(const at::Tensor& grad_terms,
                           const at::Tensor& zhat_a, const at::Tensor& zhat_b,
                           const at::Tensor& norm_a, const at::Tensor& norm_b,
                           const at::Tensor& proj, double rho,
                           at::ScalarType out_dtype) {
  const double n = static_cast<double>(zhat_a.size(0));
  auto g = grad_terms.contiguous().to(zhat_a.scalar_type());
  // d loss/d sim = -1 and d loss/d quad = rho; C_new is a constant (detached,
  // as in the paper and lightly), so d quad/d zhat_a = 2 C_new zhat_a / N.
  auto w_sim = (g.select(0, 1) - g.select(0, 0)).div_(n);
  auto w_quad = (g.select(0, 0) * rho + g.select(0, 2)).mul_(2.0 / n);
  auto w_a = at::stack({w_sim, w_quad});
  auto w_b = at::stack({w_sim, at::zeros_like(w_sim)});
  auto dz_a = kernels::row_normalize_backward(zhat_b, proj, zhat_a, norm_a, w_a,
                                              kNormalizeEps, out_dtype);
  auto dz_b = kernels::row_normalize_backward(zhat_a, at::Tensor(), zhat_b,
                                              norm_b, w_b, kNormalizeEps,
                                              out_dtype);
  return {dz_a, dz_b};
}

}  // namespace sslext
