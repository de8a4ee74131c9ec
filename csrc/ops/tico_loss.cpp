// TiCo (Zhu et al., 2022): 1 - mean <za, zb> + rho * mean za^T C_new za on
// L2-normalised rows, with C_new = beta C + (1 - beta) za^T za / N detached
// (lightly's reading) or with its batch matrix in the graph (batch_cov_in_graph).
#include <ATen/ATen.h>

#include "sslext/common.h"
#include "sslext/kernels.h"
#include "sslext/ops.h"

namespace sslext {

namespace {
// F.normalize's default: rows shorter than this are divided by it instead.
constexpr double kNormalizeEps = 1e-12;
}  // namespace

Tensor2 tico_contrast_product(const at::Tensor& y, const at::Tensor& c, double beta,
                              Strategy strategy) {
  const double m = static_cast<double>(y.size(0));
  const auto cy = c.to(y.scalar_type());
  if (strategy == Strategy::kGram) {
    // beta Y C + (1 - beta)/M (Y Y^T) Y: the only D x D matrix touched is C.
    auto p = at::empty_like(y).addmm_(y, cy, /*beta=*/0.0, beta);
    p.addmm_(at::mm(y, y.t()), y, 1.0, (1.0 - beta) / m);
    return {p, at::empty({0}, y.options())};
  }
  auto c_new = at::addmm(cy, y.t(), y, beta, (1.0 - beta) / m);
  auto p = at::mm(y, c_new);
  return {p, c_new};
}

void add_batch_cov_grad_(at::Tensor& p, const at::Tensor& y, double beta, Strategy strategy) {
  const double m = static_cast<double>(y.size(0));
  if (strategy == Strategy::kGram) {
    p.addmm_(at::mm(y, y.t()), y, 1.0, (1.0 - beta) / m);
  } else {
    p.addmm_(y, at::mm(y.t(), y), 1.0, (1.0 - beta) / m);
  }
}

Tensor7 tico_loss(const at::Tensor& z_a, const at::Tensor& z_b, const at::Tensor& c, double beta,
                  double rho, int64_t strategy, bool batch_cov_in_graph) {
  check_pair(z_a, z_b);
  check_running_cov(c, z_a, "c", "z_a");
  check_beta(beta);
  check_finite(rho, "rho");
  const auto strat = to_strategy(strategy);
  const double n = static_cast<double>(z_a.size(0));
  auto [zhat_a, norm_a] = kernels::row_normalize(z_a.contiguous(), kNormalizeEps);
  auto [zhat_b, norm_b] = kernels::row_normalize(z_b.contiguous(), kNormalizeEps);
  auto [proj, c_new] = tico_contrast_product(zhat_a, c, beta, strat);
  auto sim = kernels::dot_f64(zhat_a, zhat_b).div_(n);
  auto quad = kernels::dot_f64(zhat_a, proj).div_(n);
  // From here on proj is the backward's product, no longer the loss's.
  if (batch_cov_in_graph && beta != 1.0) {
    add_batch_cov_grad_(proj, zhat_a, beta, strat);
  }
  auto loss = (1.0 - sim).add_(quad, rho);
  auto terms = at::stack({loss, sim, quad}).to(zhat_a.scalar_type());
  return {terms, zhat_a, zhat_b, norm_a, norm_b, proj, c_new};
}

Tensor2 tico_loss_backward(const at::Tensor& grad_terms, const at::Tensor& zhat_a,
                           const at::Tensor& zhat_b, const at::Tensor& norm_a,
                           const at::Tensor& norm_b, const at::Tensor& proj, double rho,
                           at::ScalarType out_dtype, const c10::List<bool>& output_mask) {
  // zhat_a is the forward's row-normalised z_a: an (N, D) opmath batch.
  check_embedding(zhat_a, "zhat_a");
  TORCH_CHECK(zhat_a.scalar_type() == at::kFloat || zhat_a.scalar_type() == at::kDouble,
              "zhat_a must be float32 or float64 (the forward op's output), got ",
              zhat_a.scalar_type());
  const int64_t n = zhat_a.size(0);
  const auto acc = zhat_a.scalar_type();
  check_saved(zhat_b, "zhat_b", zhat_a.sizes(), acc, zhat_a, "zhat_a", "the shape of zhat_a");
  check_saved(norm_a, "norm_a", {n}, acc, zhat_a, "zhat_a", "one norm per row of zhat_a");
  check_saved(norm_b, "norm_b", {n}, acc, zhat_a, "zhat_a", "one norm per row of zhat_a");
  check_saved(proj, "proj", zhat_a.sizes(), acc, zhat_a, "zhat_a", "the shape of zhat_a");
  check_grad_terms(grad_terms, 3, zhat_a, "zhat_a");
  check_finite(rho, "rho");
  check_out_dtype(out_dtype, zhat_a, "zhat_a");
  const auto [need_a, need_b] = to_output_mask(output_mask);
  const double nd = static_cast<double>(n);
  // The kernels read every saved tensor flat.
  auto ha = zhat_a.contiguous(), hb = zhat_b.contiguous();
  auto g = grad_terms.contiguous().to(acc);
  // d loss/d sim = -1 and d loss/d quad = rho; d quad/d zhat_a = 2 proj / N,
  // with proj = zhat_a C_new when C_new is held constant (lightly's reading)
  // and zhat_a (C_new + (1 - beta) B) when B is in the graph: the forward
  // already chose.
  auto w_sim = (g.select(0, 1) - g.select(0, 0)).div_(nd);
  auto w_quad = (g.select(0, 0) * rho + g.select(0, 2)).mul_(2.0 / nd);
  at::Tensor dz_a = unrequested_grad(ha, out_dtype), dz_b = unrequested_grad(hb, out_dtype);
  if (need_a) {
    auto w_a = at::stack({w_sim, w_quad});
    dz_a = kernels::row_normalize_backward(hb, proj.contiguous(), ha, norm_a.contiguous(), w_a,
                                           kNormalizeEps, out_dtype);
  }
  if (need_b) {
    auto w_b = at::stack({w_sim, at::zeros_like(w_sim)});
    dz_b = kernels::row_normalize_backward(ha, at::Tensor(), hb, norm_b.contiguous(), w_b,
                                           kNormalizeEps, out_dtype);
  }
  return {dz_a, dz_b};
}

}  // namespace sslext
