// Barlow Twins (Zbontar et al., 2021) as in the official code:
// c = bn(z_a)^T bn(z_b) / N, loss = sum_i (1 - c_ii)^2 + lambd sum_{i!=j} c_ij^2.
#include <ATen/ATen.h>

#include "sslext/common.h"
#include "sslext/kernels.h"
#include "sslext/ops.h"

namespace sslext {

namespace {

// Standardises z into a fresh opmath buffer (biased variance, as
// BatchNorm1d(affine=False) in training mode); returns (a, 1 / std).
std::tuple<at::Tensor, at::Tensor> standardize(const at::Tensor& z, double eps) {
  auto zc = z.contiguous();
  auto a = at::empty(zc.sizes(), zc.options().dtype(opmath_dtype(zc.scalar_type())));
  auto [mean, m2] = kernels::column_moments(zc, a);
  auto inv_std = m2.div_(static_cast<double>(zc.size(0))).add_(eps).rsqrt_();
  a.mul_(inv_std);
  return {a, inv_std};
}

// diag(c)_i = sum_n a_ni b_ni / N without forming c.
at::Tensor cross_diag(const at::Tensor& a, const at::Tensor& b) {
  return at::mul(a, b).sum(0).div_(static_cast<double>(a.size(0)));
}

}  // namespace

Tensor6 barlow_twins_loss(const at::Tensor& z_a, const at::Tensor& z_b, double lambd, double eps,
                          int64_t strategy) {
  check_pair(z_a, z_b);
  check_finite(lambd, "lambd");
  check_eps(eps);
  const auto strat = to_strategy(strategy);
  auto [a, inv_std_a] = standardize(z_a, eps);
  auto [b, inv_std_b] = standardize(z_b, eps);
  const double n = static_cast<double>(a.size(0));
  at::Tensor on, off, mat;
  if (strat == Strategy::kGram) {
    // ||a^T b||_F^2 = <a a^T, b b^T>_F: two N x N Gram matrices, stacked.
    mat = at::empty({2, a.size(0), a.size(0)}, a.options());
    mat.select(0, 0).addmm_(a, a.t(), 0.0, 1.0);
    mat.select(0, 1).addmm_(b, b.t(), 0.0, 1.0);
    auto diag = cross_diag(a, b).to(at::kDouble);
    auto frob = kernels::dot_f64(mat.select(0, 0), mat.select(0, 1)).div_(n * n);
    on = (diag - 1.0).pow_(2).sum();
    off = frob.sub_(at::dot(diag, diag));
  } else {
    mat = at::empty({a.size(1), b.size(1)}, a.options()).addmm_(a.t(), b, 0.0, 1.0 / n);
    auto sums = kernels::offdiag_sums(mat, 1.0);
    off = sums.select(0, 0);
    on = sums.select(0, 1);
  }
  auto loss = on + off * lambd;
  auto terms = at::stack({loss, on, off}).to(a.scalar_type());
  return {terms, a, b, inv_std_a, inv_std_b, mat};
}

Tensor2 barlow_twins_loss_backward(const at::Tensor& grad_terms, const at::Tensor& norm_a,
                                   const at::Tensor& norm_b, const at::Tensor& inv_std_a,
                                   const at::Tensor& inv_std_b, const at::Tensor& mat, double lambd,
                                   int64_t strategy, at::ScalarType out_dtype,
                                   const c10::List<bool>& output_mask) {
  // norm_a is the forward's standardised z_a: an (N, D) opmath batch.
  check_embedding(norm_a, "norm_a");
  TORCH_CHECK(norm_a.scalar_type() == at::kFloat || norm_a.scalar_type() == at::kDouble,
              "norm_a must be float32 or float64 (the forward op's output), got ",
              norm_a.scalar_type());
  const int64_t n = norm_a.size(0), d = norm_a.size(1);
  const auto acc = norm_a.scalar_type();
  check_saved(norm_b, "norm_b", norm_a.sizes(), acc, norm_a, "norm_a", "the shape of norm_a");
  check_saved(inv_std_a, "inv_std_a", {d}, acc, norm_a, "norm_a", "the dim of norm_a");
  check_saved(inv_std_b, "inv_std_b", {d}, acc, norm_a, "norm_a", "the dim of norm_a");
  const bool gram = to_strategy(strategy) == Strategy::kGram;
  if (gram) {
    check_saved(mat, "mat", {2, n, n}, acc, norm_a, "norm_a",
                "two N x N Gram matrices for strategy=1 (gram)");
  } else {
    check_saved(mat, "mat", {d, d}, acc, norm_a, "norm_a", "D x D for strategy=0 (covariance)");
  }
  check_grad_terms(grad_terms, 3, norm_a, "norm_a");
  check_finite(lambd, "lambd");
  check_out_dtype(out_dtype, norm_a, "norm_a");
  const auto [need_a, need_b] = to_output_mask(output_mask);
  // bn_backward reads the batches and 1/std flat.
  auto a = norm_a.contiguous(), b = norm_b.contiguous();
  auto g = grad_terms.contiguous().to(acc);
  auto w_on = g.select(0, 0) + g.select(0, 1);
  auto w_off = g.select(0, 0) * lambd + g.select(0, 2);
  auto diag = gram ? cross_diag(a, b) : mat.diagonal();
  // d/dc_ii of the diagonal terms, net of the off-diagonal sum's c_ii^2 that
  // the full Frobenius product includes: 2 w_on (c_ii - 1) - 2 w_off c_ii.
  auto h = ((diag - 1.0) * w_on - diag * w_off).mul_(2.0 / static_cast<double>(n));
  const double nn = static_cast<double>(n);
  // The Frobenius part: d ||c||^2 / da = 2 b c^T / N = 2 (b b^T) a / N^2.
  at::Tensor dz_a = unrequested_grad(a, out_dtype), dz_b = unrequested_grad(b, out_dtype);
  if (need_a) {
    auto p_a = gram ? at::mm(mat.select(0, 1), a).div_(nn * nn) : at::mm(b, mat.t()).div_(nn);
    auto da = p_a.mul_(w_off * 2.0).addcmul_(b, h);
    dz_a = kernels::bn_backward(da, a, inv_std_a.contiguous(), out_dtype);
  }
  if (need_b) {
    auto p_b = gram ? at::mm(mat.select(0, 0), b).div_(nn * nn) : at::mm(a, mat).div_(nn);
    auto db = p_b.mul_(w_off * 2.0).addcmul_(a, h);
    dz_b = kernels::bn_backward(db, b, inv_std_b.contiguous(), out_dtype);
  }
  return {dz_a, dz_b};
}

}  // namespace sslext
