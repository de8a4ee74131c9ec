// Every sslext schema, in one place, and the CPU / CUDA bindings of the host
// functions (each written once for both devices; see sslext/ops.h).
//
// c_new (TiCo family) is the updated running covariance where the covariance
// path formed it anyway, and an empty tensor on the Gram path.
//
// VICReg-TiCo's `proposal` selects the research proposal's literal term (one
// branch, no /D) over the symmetric default; see sslext.functional.
//
// `batch_cov_in_graph` (TiCo and VICReg-TiCo) keeps the batch matrix B of
// C_new = beta C + (1 - beta) B inside the gradient (TiCo's pseudocode, the
// proposal's text) instead of holding C_new constant (lightly's reading, the
// default). Only the forward takes it: the `proj` it returns for the backward
// then already carries the extra term (see add_batch_cov_grad_ in ops.h).
//
// The backward of each fused loss is an op too (autograd and compiled graphs
// call it), named with a leading underscore because users should not; it
// takes output_mask = [dz_a wanted, dz_b wanted] and checks every argument
// as the public ops do.
//
// Conventions: `strategy` is 0 for the D x D covariance path and 1 for the
// N x N Gram path (Python resolves "auto"). Fused losses return the terms
// vector first, then the tensors their backward reuses; outputs are float32
// for float16 / bfloat16 / float32 inputs and float64 for float64 inputs.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <array>
#include <string>

#include "sslext/ops.h"

#ifndef SSLEXT_CUDA_ARCHS
#define SSLEXT_CUDA_ARCHS ""
#endif
#ifndef SSLEXT_CUDA_VERSION
#define SSLEXT_CUDA_VERSION ""
#endif
#ifndef SSLEXT_TORCH_VERSION
#define SSLEXT_TORCH_VERSION ""
#endif

namespace sslext {

// Describes the loaded binary itself, so it cannot disagree with what runs.
std::string build_info() {
#ifdef SSLEXT_WITH_CUDA
  const char* with_cuda = "true";
#else
  const char* with_cuda = "false";
#endif
#ifdef SSLEXT_EMULATE_CUDA
  const char* emulated = "true";
#else
  const char* emulated = "false";
#endif
  return std::string("{\"with_cuda\": ") + with_cuda + ", \"emulated_cuda\": " + emulated +
         ", \"cuda_archs\": \"" SSLEXT_CUDA_ARCHS "\", \"cuda_version\": \"" SSLEXT_CUDA_VERSION
         "\", \"torch_version\": \"" SSLEXT_TORCH_VERSION "\"}";
}

}  // namespace sslext

TORCH_LIBRARY(sslext, m) {
  m.def("build_info() -> str", &sslext::build_info);

  // Low-level ops.
  m.def("batch_covariance(Tensor z) -> Tensor");
  m.def("cross_correlation(Tensor z_a, Tensor z_b, float eps) -> Tensor");
  m.def("off_diagonal_penalty(Tensor c, float off_weight, float? diag_target) -> Tensor");
  m.def("tico_ema_update_(Tensor(a!) c, Tensor z, float beta) -> ()");

  // Fused losses and their backwards.
  m.def(
      "vicreg_loss(Tensor z_a, Tensor z_b, float inv_coeff, float var_coeff, "
      "float cov_coeff, float eps, int strategy) -> (Tensor terms, Tensor "
      "mean_a, Tensor mean_b, Tensor var_a, Tensor var_b, Tensor mat_a, Tensor "
      "mat_b)");
  m.def(
      "_vicreg_loss_backward(Tensor grad_terms, Tensor z_a, Tensor z_b, Tensor "
      "mean_a, Tensor mean_b, Tensor var_a, Tensor var_b, Tensor mat_a, Tensor "
      "mat_b, float inv_coeff, float var_coeff, float cov_coeff, float "
      "eps, int strategy, bool[] output_mask) -> (Tensor, Tensor)");
  m.def(
      "vicreg_tico_loss(Tensor z_a, Tensor z_b, Tensor c, float inv_coeff, "
      "float var_coeff, float cov_coeff, float beta, float eps, int strategy, "
      "bool proposal=False, bool batch_cov_in_graph=False) -> (Tensor terms, Tensor centered, "
      "Tensor mean_a, Tensor mean_b, Tensor "
      "var_a, Tensor var_b, Tensor proj, Tensor c_new)");
  m.def(
      "_vicreg_tico_loss_backward(Tensor grad_terms, Tensor z_a, Tensor z_b, "
      "Tensor mean_a, Tensor mean_b, Tensor var_a, Tensor var_b, Tensor proj, float "
      "inv_coeff, float var_coeff, float cov_coeff, float eps, bool "
      "proposal, bool[] output_mask) -> (Tensor, Tensor)");
  m.def(
      "barlow_twins_loss(Tensor z_a, Tensor z_b, float lambd, float eps, int "
      "strategy) -> (Tensor terms, Tensor norm_a, Tensor norm_b, Tensor "
      "inv_std_a, Tensor inv_std_b, Tensor mat)");
  m.def(
      "_barlow_twins_loss_backward(Tensor grad_terms, Tensor norm_a, Tensor "
      "norm_b, Tensor inv_std_a, Tensor inv_std_b, Tensor mat, float lambd, int "
      "strategy, ScalarType out_dtype, bool[] output_mask) -> (Tensor, Tensor)");
  m.def(
      "tico_loss(Tensor z_a, Tensor z_b, Tensor c, float beta, float rho, int "
      "strategy, bool batch_cov_in_graph=False) -> (Tensor terms, Tensor zhat_a, Tensor zhat_b, "
      "Tensor norm_a, "
      "Tensor norm_b, Tensor proj, Tensor c_new)");
  m.def(
      "_tico_loss_backward(Tensor grad_terms, Tensor zhat_a, Tensor zhat_b, "
      "Tensor norm_a, Tensor norm_b, Tensor proj, float rho, ScalarType "
      "out_dtype, bool[] output_mask) -> (Tensor, Tensor)");
}

#define SSLEXT_REGISTER_IMPLS(m)                                              \
  m.impl("batch_covariance", &sslext::batch_covariance);                      \
  m.impl("cross_correlation", &sslext::cross_correlation);                    \
  m.impl("off_diagonal_penalty", &sslext::off_diagonal_penalty);              \
  m.impl("tico_ema_update_", &sslext::tico_ema_update_);                      \
  m.impl("vicreg_loss", &sslext::vicreg_loss);                                \
  m.impl("_vicreg_loss_backward", &sslext::vicreg_loss_backward);             \
  m.impl("vicreg_tico_loss", &sslext::vicreg_tico_loss);                      \
  m.impl("_vicreg_tico_loss_backward", &sslext::vicreg_tico_loss_backward);   \
  m.impl("barlow_twins_loss", &sslext::barlow_twins_loss);                    \
  m.impl("_barlow_twins_loss_backward", &sslext::barlow_twins_loss_backward); \
  m.impl("tico_loss", &sslext::tico_loss);                                    \
  m.impl("_tico_loss_backward", &sslext::tico_loss_backward)

TORCH_LIBRARY_IMPL(sslext, CPU, m) { SSLEXT_REGISTER_IMPLS(m); }

#if defined(SSLEXT_WITH_CUDA) && !defined(SSLEXT_EMULATE_CUDA)
TORCH_LIBRARY_IMPL(sslext, CUDA, m) { SSLEXT_REGISTER_IMPLS(m); }
#else
// A build without CUDA kernels still answers CUDA tensors, with how to get
// the kernels, instead of the dispatcher's bare "could not run ... with
// arguments from the 'CUDA' backend". (The emulated build's "CUDA" kernels
// take CPU tensors: it registers for CPU only, above.)
namespace {

constexpr std::array<const char*, 12> kTensorOps = {"batch_covariance",
                                                    "cross_correlation",
                                                    "off_diagonal_penalty",
                                                    "tico_ema_update_",
                                                    "vicreg_loss",
                                                    "_vicreg_loss_backward",
                                                    "vicreg_tico_loss",
                                                    "_vicreg_tico_loss_backward",
                                                    "barlow_twins_loss",
                                                    "_barlow_twins_loss_backward",
                                                    "tico_loss",
                                                    "_tico_loss_backward"};

void no_cuda_kernels(const c10::OperatorHandle& op, torch::jit::Stack*) {
#ifdef SSLEXT_EMULATE_CUDA
  const char* build =
      "this is the emulated-CUDA build of sslext (SSLEXT_EMULATED=1, "
      "docs/cuda.md), which runs its CUDA kernels on CPU tensors only";
#else
  const char* build =
      "this sslext was built without CUDA kernels "
      "(sslext.build_info()['with_cuda'] is False: at build time torch was a "
      "CPU-only build, nvcc was not found, or SSLEXT_FORCE_CPU=1 was set)";
#endif
  TORCH_CHECK_NOT_IMPLEMENTED(
      false, op.schema().name(), " was given CUDA tensors, but ", build,
      ". Rebuild sslext with CUDA: install a CUDA build of torch and the CUDA "
      "toolkit of the same major version as torch.version.cuda, then run "
      "`SSLEXT_FORCE_CUDA=1 pip install --no-build-isolation .` in the sslext "
      "source tree (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda, if nvcc is "
      "not on PATH; see docs/cuda.md). Or move the tensors to the CPU.");
}

}  // namespace

TORCH_LIBRARY_IMPL(sslext, CUDA, m) {
  for (const char* name : kTensorOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernels>());
  }
}
#endif
