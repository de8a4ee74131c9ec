// Host functions of the sslext ops. Each is written once for CPU and CUDA: it
// checks its arguments, runs GEMMs through ATen and its O(N D) passes through
// the kernels of sslext/kernels.h. Schemas live in csrc/register_ops.cpp.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/List.h>
#include "sslext/common.h"

#include <optional>
#include <tuple>

namespace sslext {

// The backwards (schema names with a leading underscore: autograd calls them,
// users should not) take output_mask = [need dz_a, need dz_b] and return an
// empty tensor for a gradient not asked for; they check every saved tensor
// against the inputs all the same, since the schema is callable.
//
// Output tuples: the first tensor is what the user sees; the rest are what
// the backward needs, so the forward's work is not redone.
using Tensor2 = std::tuple<at::Tensor, at::Tensor>;
using Tensor6 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor7 =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Tensor8 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                           at::Tensor, at::Tensor>;

// csrc/ops/covariance.cpp
at::Tensor batch_covariance(const at::Tensor& z);
at::Tensor cross_correlation(const at::Tensor& z_a, const at::Tensor& z_b, double eps);
at::Tensor off_diagonal_penalty(const at::Tensor& c, double off_weight,
                                std::optional<double> diag_target);
void tico_ema_update_(at::Tensor& c, const at::Tensor& z, double beta);

// csrc/ops/vicreg_loss.cpp
Tensor7 vicreg_loss(const at::Tensor& z_a, const at::Tensor& z_b, double inv_coeff,
                    double var_coeff, double cov_coeff, double eps, int64_t strategy);
Tensor2 vicreg_loss_backward(const at::Tensor& grad_terms, const at::Tensor& z_a,
                             const at::Tensor& z_b, const at::Tensor& mean_a,
                             const at::Tensor& mean_b, const at::Tensor& var_a,
                             const at::Tensor& var_b, const at::Tensor& mat_a,
                             const at::Tensor& mat_b, double inv_coeff, double var_coeff,
                             double cov_coeff, double eps, int64_t strategy,
                             const c10::List<bool>& output_mask);
Tensor8 vicreg_tico_loss(const at::Tensor& z_a, const at::Tensor& z_b, const at::Tensor& c,
                         double inv_coeff, double var_coeff, double cov_coeff, double beta,
                         double eps, int64_t strategy, bool proposal, bool batch_cov_in_graph);
Tensor2 vicreg_tico_loss_backward(const at::Tensor& grad_terms, const at::Tensor& z_a,
                                  const at::Tensor& z_b, const at::Tensor& mean_a,
                                  const at::Tensor& mean_b, const at::Tensor& var_a,
                                  const at::Tensor& var_b, const at::Tensor& proj, double inv_coeff,
                                  double var_coeff, double cov_coeff, double eps, bool proposal,
                                  const c10::List<bool>& output_mask);

// csrc/ops/barlow_twins_loss.cpp
Tensor6 barlow_twins_loss(const at::Tensor& z_a, const at::Tensor& z_b, double lambd, double eps,
                          int64_t strategy);
Tensor2 barlow_twins_loss_backward(const at::Tensor& grad_terms, const at::Tensor& norm_a,
                                   const at::Tensor& norm_b, const at::Tensor& inv_std_a,
                                   const at::Tensor& inv_std_b, const at::Tensor& mat, double lambd,
                                   int64_t strategy, at::ScalarType out_dtype,
                                   const c10::List<bool>& output_mask);

// csrc/ops/tico_loss.cpp
Tensor7 tico_loss(const at::Tensor& z_a, const at::Tensor& z_b, const at::Tensor& c, double beta,
                  double rho, int64_t strategy, bool batch_cov_in_graph);
Tensor2 tico_loss_backward(const at::Tensor& grad_terms, const at::Tensor& zhat_a,
                           const at::Tensor& zhat_b, const at::Tensor& norm_a,
                           const at::Tensor& norm_b, const at::Tensor& proj, double rho,
                           at::ScalarType out_dtype, const c10::List<bool>& output_mask);

// Shared by TiCo and VICReg-TiCo (csrc/ops/tico_loss.cpp): P = Y C_new with
// C_new = beta C + (1 - beta) Y^T Y / M, never materialising C_new on the Gram
// path: P = beta Y C + (1 - beta) / M (Y Y^T) Y. Returns (P, C_new), C_new
// empty on the Gram path; where it exists, the running-C update is a copy of it
// instead of another rank-M GEMM.
Tensor2 tico_contrast_product(const at::Tensor& y, const at::Tensor& c, double beta,
                              Strategy strategy);

// With the batch matrix B = Y^T Y / M inside the graph (batch_cov_in_graph),
// the contrast sum_i y_i^T C_new y_i gains a second gradient term beside the
// detached 2 Y C_new: 2 (1 - beta) Y B. Adds (1 - beta) Y B to P in place, so
// that P then carries Y (C_new + (1 - beta) B) and the backwards, which scale
// P by 2, need no other change. Same strategies as tico_contrast_product.
void add_batch_cov_grad_(at::Tensor& p, const at::Tensor& y, double beta, Strategy strategy);

}  // namespace sslext
