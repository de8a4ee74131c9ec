// Shared argument checks and type helpers for the sslext ops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/List.h>

#include <cmath>
#include <cstdint>

namespace sslext {

// The D x D vs N x N choice of the fused losses. Python resolves "auto" before
// calling, so the C++ side only ever sees an explicit strategy.
enum class Strategy : int64_t { kCovariance = 0, kGram = 1 };

inline Strategy to_strategy(int64_t s) {
  TORCH_CHECK(s == 0 || s == 1, "strategy must be 0 (covariance) or 1 (gram), got ", s);
  return static_cast<Strategy>(s);
}

inline const char* strategy_name(Strategy s) {
  return s == Strategy::kGram ? "strategy=1 (gram)" : "strategy=0 (covariance)";
}

// float32 accumulation for half, bfloat16 and float32; float64 stays float64 so
// that gradcheck sees exact derivatives.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// An embedding batch: 2-D (batch, dim), at least two rows, a real float dtype.
inline void check_embedding(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.dim() == 2, name, " must be 2-D (batch, dim), got shape ", z.sizes());
  TORCH_CHECK(z.size(0) >= 2, name,
              " must have at least 2 rows (batch statistics need N >= 2), got ", z.size(0));
  TORCH_CHECK(z.size(1) >= 1, name, " must have at least 1 column, got shape ", z.sizes());
  TORCH_CHECK(is_supported_float(z.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", z.scalar_type());
}

inline void check_pair(const at::Tensor& za, const at::Tensor& zb) {
  check_embedding(za, "z_a");
  check_embedding(zb, "z_b");
  TORCH_CHECK(za.sizes() == zb.sizes(), "z_b must have the shape of z_a ", za.sizes(), ", got ",
              zb.sizes());
  TORCH_CHECK(za.device() == zb.device(), "z_b must be on the device of z_a (", za.device(),
              "), got ", zb.device());
  TORCH_CHECK(za.scalar_type() == zb.scalar_type(), "z_b must have the dtype of z_a (",
              za.scalar_type(), "), got ", zb.scalar_type());
}

// The running covariance of TiCo: a (dim, dim) float32/float64 matrix on z's device.
inline void check_running_cov(const at::Tensor& c, const at::Tensor& z, const char* name,
                              const char* z_name) {
  TORCH_CHECK(c.dim() == 2 && c.size(0) == z.size(1) && c.size(1) == z.size(1), name,
              " must have shape (", z.size(1), ", ", z.size(1), ") to match the embedding dim of ",
              z_name, " ", z.sizes(), ", got ", c.sizes());
  TORCH_CHECK(c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", c.scalar_type());
  TORCH_CHECK(c.device() == z.device(), name, " must be on the device of ", z_name, " (",
              z.device(), "), got ", c.device());
}

inline void check_beta(double beta) {
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "beta must be in [0, 1], got ", beta);
}

// Loss weights may be any finite number; NaN or Inf would only turn into a NaN
// loss far from the call that passed it.
inline void check_finite(double value, const char* name) {
  TORCH_CHECK(std::isfinite(value), name, " must be a finite number, got ", value);
}

inline void check_eps(double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, "eps must be a finite non-negative number, got ",
              eps);
}

// The backward ops' saved tensors come from the forward op, but the schema is
// public: every one is checked against the inputs before a kernel reads it.
// `why` says where the expected shape comes from (e.g. "the dim of z_a").
inline void check_saved(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                        at::ScalarType dtype, const at::Tensor& like, const char* like_name,
                        const char* why) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, " (", why, "), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must be ", dtype, " (",
              "the forward op's output dtype for ", like_name, " of dtype ", like.scalar_type(),
              "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on the device of ", like_name, " (",
              like.device(), "), got ", t.device());
}

// The incoming gradient of a fused loss's terms vector: any float dtype (it is
// cast to opmath), exactly `count` entries.
inline void check_grad_terms(const at::Tensor& g, int64_t count, const at::Tensor& like,
                             const char* like_name) {
  TORCH_CHECK(g.dim() == 1 && g.size(0) == count, "grad_terms must have shape [", count,
              "] (one entry per term of the loss), got ", g.sizes());
  TORCH_CHECK(is_supported_float(g.scalar_type()),
              "grad_terms must be float16, bfloat16, float32 or float64, got ", g.scalar_type());
  TORCH_CHECK(g.device() == like.device(), "grad_terms must be on the device of ", like_name, " (",
              like.device(), "), got ", g.device());
}

// Which of the two inputs' gradients the backward computes (autograd's
// needs_input_grad); a gradient not asked for comes back as an empty tensor.
inline std::pair<bool, bool> to_output_mask(const c10::List<bool>& mask) {
  TORCH_CHECK(mask.size() == 2, "output_mask must have 2 entries (one per input: z_a, z_b), got ",
              mask.size());
  return {mask.get(0), mask.get(1)};
}

// What a backward returns for a gradient output_mask did not ask for: the
// schema's return type is Tensor, so an empty one rather than None.
inline at::Tensor unrequested_grad(const at::Tensor& like, at::ScalarType dtype) {
  return at::empty({0}, like.options().dtype(dtype));
}

// The gradient dtype a backward is asked to return: a supported float whose
// opmath dtype is that of the saved tensors (float64 <-> float64, the rest
// <-> float32).
inline void check_out_dtype(at::ScalarType out_dtype, const at::Tensor& saved,
                            const char* saved_name) {
  TORCH_CHECK(is_supported_float(out_dtype),
              "out_dtype must be float16, bfloat16, float32 or float64, got ", out_dtype);
  TORCH_CHECK(opmath_dtype(out_dtype) == saved.scalar_type(), "out_dtype ", out_dtype,
              " does not match ", saved_name, " of dtype ", saved.scalar_type(),
              " (the forward computes float16/bfloat16/float32 "
              "inputs in float32 and float64 inputs in float64)");
}

}  // namespace sslext
