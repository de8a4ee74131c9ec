// VICReg (Bardes et al., 2022) as in the official code, and VICReg-TiCo: VICReg
// with its covariance term replaced by TiCo's running-covariance contrast.
#include <ATen/ATen.h>

#include "sslext/common.h"
#include "sslext/kernels.h"
#include "sslext/ops.h"

namespace sslext {

namespace {

// Centers z into `centered` (a preallocated opmath buffer); returns the
// column mean and the unbiased per-dimension variance.
std::tuple<at::Tensor, at::Tensor> center_into(const at::Tensor& z, at::Tensor centered) {
  auto [mean, m2] = kernels::column_moments(z, centered);
  return {mean, m2.div_(static_cast<double>(z.size(0) - 1))};
}

// The backward recomputes the centered batch (one O(N D) pass) rather than
// keeping it alive from the forward: the saved state is then O(D) per branch,
// so peak memory stays below a plain-PyTorch implementation's.
at::Tensor recenter(const at::Tensor& z, const at::Tensor& mean) { return at::sub(z, mean); }

// mean(relu(1 - sqrt(var + eps))) of one branch, as a float64 scalar.
at::Tensor hinge_std(const at::Tensor& var, double eps) {
  return at::relu(1.0 - at::sqrt(var.to(at::kDouble) + eps)).mean();
}

// Invariance and variance terms, shared by VICReg and VICReg-TiCo.
std::tuple<at::Tensor, at::Tensor> invariance_and_variance(const at::Tensor& a, const at::Tensor& b,
                                                           const at::Tensor& var_a,
                                                           const at::Tensor& var_b, double eps) {
  const double nd = static_cast<double>(a.numel());
  auto inv = kernels::sum_sq_diff(a, b).div_(nd);
  auto var = (hinge_std(var_a, eps) + hinge_std(var_b, eps)).mul_(0.5);
  return {inv, var};
}

void check_coeffs(double inv_coeff, double var_coeff, double cov_coeff, double eps) {
  check_finite(inv_coeff, "inv_coeff");
  check_finite(var_coeff, "var_coeff");
  check_finite(cov_coeff, "cov_coeff");
  check_eps(eps);
}

// The per-branch statistics both backwards take: mean and variance of each
// branch, length D, in the forward's opmath dtype, on z_a's device.
void check_branch_stats(const at::Tensor& z_a, const at::Tensor& mean_a, const at::Tensor& mean_b,
                        const at::Tensor& var_a, const at::Tensor& var_b) {
  const auto acc = opmath_dtype(z_a.scalar_type());
  const int64_t d = z_a.size(1);
  const char* why = "the dim of z_a";
  check_saved(mean_a, "mean_a", {d}, acc, z_a, "z_a", why);
  check_saved(mean_b, "mean_b", {d}, acc, z_a, "z_a", why);
  check_saved(var_a, "var_a", {d}, acc, z_a, "z_a", why);
  check_saved(var_b, "var_b", {d}, acc, z_a, "z_a", why);
}

at::Tensor vicreg_terms(const at::Tensor& inv, const at::Tensor& var, const at::Tensor& cov,
                        double inv_coeff, double var_coeff, double cov_coeff,
                        at::ScalarType dtype) {
  auto loss = inv * inv_coeff + var * var_coeff + cov * cov_coeff;
  return at::stack({loss, inv, var, cov}).to(dtype);
}

// sum_{i != j} C_ij^2 for C = x^T x / (N - 1) of one centered branch; returns
// (penalty as float64 scalar, the matrix the backward multiplies by: x x^T /
// (N - 1) on the Gram path, C without its diagonal on the covariance path).
std::tuple<at::Tensor, at::Tensor> branch_offdiag(const at::Tensor& x, const at::Tensor& var,
                                                  Strategy strategy) {
  const double scale = 1.0 / static_cast<double>(x.size(0) - 1);
  if (strategy == Strategy::kGram) {
    // ||x^T x||_F = ||x x^T||_F and diag(C) = var, so the off-diagonal sum of
    // C costs an N x N Gram matrix instead of a D x D covariance.
    auto k = at::empty({x.size(0), x.size(0)}, x.options()).addmm_(x, x.t(), /*beta=*/0.0, scale);
    auto sums = kernels::offdiag_sums(k, 0.0);
    auto frob = sums.sum();
    auto v = var.to(at::kDouble);
    return {frob.sub_(at::dot(v, v)), k};
  }
  auto c = at::empty({x.size(1), x.size(1)}, x.options()).addmm_(x.t(), x, /*beta=*/0.0, scale);
  auto off = kernels::offdiag_sums(c, 0.0).select(0, 0);
  // The backward needs x C_off; with the diagonal gone from the saved matrix
  // it is one GEMM, free of the x C - x diag(C) cancellation that a
  // dominant diagonal (N >= D, large variances) would cause.
  c.diagonal().zero_();
  return {off, c};
}

}  // namespace

Tensor7 vicreg_loss(const at::Tensor& z_a, const at::Tensor& z_b, double inv_coeff,
                    double var_coeff, double cov_coeff, double eps, int64_t strategy) {
  check_pair(z_a, z_b);
  check_coeffs(inv_coeff, var_coeff, cov_coeff, eps);
  const auto strat = to_strategy(strategy);
  auto a = z_a.contiguous(), b = z_b.contiguous();
  const auto acc = opmath_dtype(a.scalar_type());
  auto xa = at::empty(a.sizes(), a.options().dtype(acc));
  auto xb = at::empty(b.sizes(), b.options().dtype(acc));
  auto [mean_a, var_a] = center_into(a, xa);
  auto [mean_b, var_b] = center_into(b, xb);
  auto [inv, var] = invariance_and_variance(a, b, var_a, var_b, eps);
  auto [off_a, mat_a] = branch_offdiag(xa, var_a, strat);
  auto [off_b, mat_b] = branch_offdiag(xb, var_b, strat);
  auto cov = (off_a + off_b).div_(static_cast<double>(a.size(1)));
  auto terms = vicreg_terms(inv, var, cov, inv_coeff, var_coeff, cov_coeff, acc);
  return {terms, mean_a, mean_b, var_a, var_b, mat_a, mat_b};
}

Tensor2 vicreg_loss_backward(const at::Tensor& grad_terms, const at::Tensor& z_a,
                             const at::Tensor& z_b, const at::Tensor& mean_a,
                             const at::Tensor& mean_b, const at::Tensor& var_a,
                             const at::Tensor& var_b, const at::Tensor& mat_a,
                             const at::Tensor& mat_b, double inv_coeff, double var_coeff,
                             double cov_coeff, double eps, int64_t strategy,
                             const c10::List<bool>& output_mask) {
  check_pair(z_a, z_b);
  check_grad_terms(grad_terms, 4, z_a, "z_a");
  check_branch_stats(z_a, mean_a, mean_b, var_a, var_b);
  check_coeffs(inv_coeff, var_coeff, cov_coeff, eps);
  const auto strat = to_strategy(strategy);
  const bool gram = strat == Strategy::kGram;
  {
    const int64_t m = gram ? z_a.size(0) : z_a.size(1);
    const char* why = gram ? "N x N for strategy=1 (gram)" : "D x D for strategy=0 (covariance)";
    const auto acc = opmath_dtype(z_a.scalar_type());
    check_saved(mat_a, "mat_a", {m, m}, acc, z_a, "z_a", why);
    check_saved(mat_b, "mat_b", {m, m}, acc, z_a, "z_a", why);
  }
  const auto [need_a, need_b] = to_output_mask(output_mask);
  auto a = z_a.contiguous(), b = z_b.contiguous();
  auto g = grad_terms.contiguous().to(mean_a.scalar_type());
  const double cov_scale =
      4.0 / (static_cast<double>(a.size(1)) * static_cast<double>(a.size(0) - 1));
  // One branch at a time, so only one branch's temporaries are alive.
  auto branch = [&](const at::Tensor& z, const at::Tensor& other, const at::Tensor& mean,
                    const at::Tensor& var, const at::Tensor& mat) {
    auto x = recenter(z, mean);
    // d off(C)/dx = 4 (x C - x diag(C)) / (N - 1), with x C = (x x^T/(N-1)) x
    // on the Gram path: the same product in O(N^2 D) instead of O(N D^2).
    auto prod = gram ? at::mm(mat, x) : at::mm(x, mat);
    // The covariance path saved C with its diagonal removed (branch_offdiag).
    return kernels::vicreg_grad(z, other, x, var.contiguous(), prod, g, inv_coeff, var_coeff,
                                cov_coeff, eps, cov_scale,
                                /*subtract_diag=*/gram);
  };
  auto dz_a = need_a ? branch(a, b, mean_a, var_a, mat_a) : unrequested_grad(a, a.scalar_type());
  auto dz_b = need_b ? branch(b, a, mean_b, var_b, mat_b) : unrequested_grad(b, b.scalar_type());
  return {dz_a, dz_b};
}

Tensor8 vicreg_tico_loss(const at::Tensor& z_a, const at::Tensor& z_b, const at::Tensor& c,
                         double inv_coeff, double var_coeff, double cov_coeff, double beta,
                         double eps, int64_t strategy, bool proposal, bool batch_cov_in_graph) {
  check_pair(z_a, z_b);
  check_running_cov(c, z_a, "c", "z_a");
  check_coeffs(inv_coeff, var_coeff, cov_coeff, eps);
  check_beta(beta);
  const auto strat = to_strategy(strategy);
  auto a = z_a.contiguous(), b = z_b.contiguous();
  const int64_t n = a.size(0), d = a.size(1);
  // Both centered branches stacked (2N x D), written in place by the moments
  // pass. The symmetric form's running covariance and contrast see all 2N
  // rows; the proposal's see branch a's N rows only, the leading block.
  auto y = at::empty({2 * n, d}, a.options().dtype(opmath_dtype(a.scalar_type())));
  auto [mean_a, var_a] = center_into(a, y.narrow(0, 0, n));
  auto [mean_b, var_b] = center_into(b, y.narrow(0, n, n));
  auto [inv, var] = invariance_and_variance(a, b, var_a, var_b, eps);
  auto rows = proposal ? y.narrow(0, 0, n) : y;
  auto [proj, c_new] = tico_contrast_product(rows, c, beta, strat);
  // Symmetric: per branch mean_i y_i^T C_new y_i / D, summed over branches.
  // Proposal: mean_i y_i^T C_new y_i over branch a, no /D.
  const double scale = proposal ? static_cast<double>(n) : static_cast<double>(n * d);
  auto cov = kernels::dot_f64(rows, proj).div_(scale);
  // From here on proj is the backward's product, no longer the loss's. The
  // centering adds nothing: each branch's rows have zero column mean, so
  // their product with any D x D matrix does too.
  if (batch_cov_in_graph && beta != 1.0) {
    add_batch_cov_grad_(proj, rows, beta, strat);
  }
  auto terms = vicreg_terms(inv, var, cov, inv_coeff, var_coeff, cov_coeff, y.scalar_type());
  return {terms, rows, mean_a, mean_b, var_a, var_b, proj, c_new};
}

Tensor2 vicreg_tico_loss_backward(const at::Tensor& grad_terms, const at::Tensor& z_a,
                                  const at::Tensor& z_b, const at::Tensor& mean_a,
                                  const at::Tensor& mean_b, const at::Tensor& var_a,
                                  const at::Tensor& var_b, const at::Tensor& proj, double inv_coeff,
                                  double var_coeff, double cov_coeff, double eps, bool proposal,
                                  const c10::List<bool>& output_mask) {
  check_pair(z_a, z_b);
  check_grad_terms(grad_terms, 4, z_a, "z_a");
  check_branch_stats(z_a, mean_a, mean_b, var_a, var_b);
  check_coeffs(inv_coeff, var_coeff, cov_coeff, eps);
  const int64_t n = z_a.size(0), d = z_a.size(1);
  check_saved(proj, "proj", {proposal ? n : 2 * n, d}, opmath_dtype(z_a.scalar_type()), z_a, "z_a",
              proposal ? "N x D: proposal=True contrasts branch a's rows"
                       : "2N x D: proposal=False contrasts both branches' rows");
  const auto [need_a, need_b] = to_output_mask(output_mask);
  auto a = z_a.contiguous(), b = z_b.contiguous();
  // The kernel reads its row block of proj flat.
  auto p = proj.contiguous();
  auto g = grad_terms.contiguous().to(mean_a.scalar_type());
  // d cov/d y = 2 proj / (N D) (2 proj / N for the proposal), proj being
  // y C_new when C_new is held constant (lightly's reading) and
  // y (C_new + (1 - beta) B) when B is in the graph: the forward chose. No
  // diagonal is excluded in this contrast.
  const double cov_scale =
      proposal ? 2.0 / static_cast<double>(n) : 2.0 / static_cast<double>(n * d);
  at::Tensor dz_a = unrequested_grad(a, a.scalar_type()),
             dz_b = unrequested_grad(b, b.scalar_type());
  if (need_a) {
    auto xa = recenter(a, mean_a);
    dz_a = kernels::vicreg_grad(a, b, xa, var_a.contiguous(), p.narrow(0, 0, n), g, inv_coeff,
                                var_coeff, cov_coeff, eps, cov_scale, false);
  }
  if (need_b) {
    auto xb = recenter(b, mean_b);
    // The proposal's contrast does not involve branch b: its covariance weight
    // is zero, and the centered rows stand in for the product it multiplies.
    dz_b = proposal ? kernels::vicreg_grad(b, a, xb, var_b.contiguous(), xb, g, inv_coeff,
                                           var_coeff, cov_coeff, eps, 0.0, false)
                    : kernels::vicreg_grad(b, a, xb, var_b.contiguous(), p.narrow(0, n, n), g,
                                           inv_coeff, var_coeff, cov_coeff, eps, cov_scale, false);
  }
  return {dz_a, dz_b};
}

}  // namespace sslext
