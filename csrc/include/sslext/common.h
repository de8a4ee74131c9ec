// Shared argument checks and type helpers for the sslext ops.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace sslext {

// The D x D vs N x N choice of the fused losses. Python resolves "auto" before
// calling, so the C++ side only ever sees an explicit strategy.
enum class Strategy : int64_t { kCovariance = 0, kGram = 1 };

inline Strategy to_strategy(int64_t s) {
  TORCH_CHECK(s == 0 || s == 1,
              "strategy must be 0 (covariance) or 1 (gram), got ", s);
  return static_cast<Strategy>(s);
}

// float32 accumulation for half, bfloat16 and float32; float64 stays float64 so
// that gradcheck sees exact derivatives.
inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf ||
         t == at::kBFloat16;
}

// An embedding batch: 2-D (batch, dim), at least two rows, a real float dtype.
inline void check_embedding(const at::Tensor& z, const char* name) {
  TORCH_CHECK(z.dim() == 2, name, " must be 2-D (batch, dim), got shape ",
              z.sizes());
  TORCH_CHECK(z.size(0) >= 2, name,
              " must have at least 2 rows (batch statistics need N >= 2), got ",
              z.size(0));
  TORCH_CHECK(z.size(1) >= 1, name, " must have at least 1 column, got shape ",
              z.sizes());
  TORCH_CHECK(is_supported_float(z.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ",
              z.scalar_type());
}

inline void check_pair(const at::Tensor& za, const at::Tensor& zb) {
  check_embedding(za, "z_a");
  check_embedding(zb, "z_b");
  TORCH_CHECK(za.sizes() == zb.sizes(), "z_b must have the shape of z_a ",
              za.sizes(), ", got ", zb.sizes());
  TORCH_CHECK(za.device() == zb.device(), "z_b must be on the device of z_a (",
              za.device(), "), got ", zb.device());
  TORCH_CHECK(za.scalar_type() == zb.scalar_type(),
              "z_b must have the dtype of z_a (", za.scalar_type(), "), got ",
              zb.scalar_type());
}

// The running covariance of TiCo: a (dim, dim) float32/float64 matrix on z's device.
inline void check_running_cov(const at::Tensor& c, const at::Tensor& z,
                              const char* name) {
  TORCH_CHECK(c.dim() == 2 && c.size(0) == z.size(1) && c.size(1) == z.size(1),
              name, " must have shape (", z.size(1), ", ", z.size(1),
              ") to match the embedding dim, got ", c.sizes());
  TORCH_CHECK(c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble,
              name, " must be float32 or float64, got ", c.scalar_type());
  TORCH_CHECK(c.device() == z.device(), name, " must be on the device of z (",
              z.device(), "), got ", c.device());
}

inline void check_beta(double beta) {
  TORCH_CHECK(beta >= 0.0 && beta <= 1.0, "beta must be in [0, 1], got ", beta);
}

}  // namespace sslext
