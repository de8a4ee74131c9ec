// Row-wise L2 normalisation and its backward, as TiCo applies to each view.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "sslext/kernels.h"

namespace sslext::kernels {

std::tuple<at::Tensor, at::Tensor> row_normalize_cpu(const at::Tensor& z, double eps) {
  const int64_t n = z.size(0), d = z.size(1);
  const auto acc_dtype = z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto zhat = at::empty({n, d}, z.options().dtype(acc_dtype));
  auto norms = at::empty({n}, z.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "row_normalize_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* zp = z.const_data_ptr<scalar_t>();
        acc_t* hp = zhat.data_ptr<acc_t>();
        acc_t* np = norms.data_ptr<acc_t>();
        at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            const scalar_t* row = zp + i * d;
            double s = 0;
            for (int64_t j = 0; j < d; ++j) {
              const double v = static_cast<double>(row[j]);
              s += v * v;
            }
            const acc_t norm = static_cast<acc_t>(std::sqrt(s));
            np[i] = norm;
            const acc_t inv = acc_t(1) / std::max(norm, static_cast<acc_t>(eps));
            for (int64_t j = 0; j < d; ++j) hp[i * d + j] = static_cast<acc_t>(row[j]) * inv;
          }
        });
      });
  return {zhat, norms};
}

// For zhat = z / max(|z|, eps): dz = (g - zhat <zhat, g>) / |z| where the norm
// is active, g / eps where the clamp is.
at::Tensor row_normalize_backward_cpu(const at::Tensor& other, const at::Tensor& proj,
                                      const at::Tensor& zhat, const at::Tensor& norms,
                                      const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  const int64_t n = zhat.size(0), d = zhat.size(1);
  auto dz = at::empty({n, d}, zhat.options().dtype(out_dtype));
  const bool has_proj = proj.defined() && proj.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(zhat.scalar_type(), "row_normalize_backward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* wp = w.const_data_ptr<acc_t>();
    const acc_t w0 = wp[0], w1 = has_proj ? wp[1] : acc_t(0);
    const acc_t* otp = other.const_data_ptr<acc_t>();
    const acc_t* pp = has_proj ? proj.const_data_ptr<acc_t>() : nullptr;
    const acc_t* hp = zhat.const_data_ptr<acc_t>();
    const acc_t* np = norms.const_data_ptr<acc_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out_dtype, "row_normalize_backward_cpu_out", [&] {
          scalar_t* op = dz.data_ptr<scalar_t>();
          at::parallel_for(0, n, 1, [&](int64_t i0, int64_t i1) {
            std::vector<acc_t> g(d);
            for (int64_t i = i0; i < i1; ++i) {
              const int64_t base = i * d;
              acc_t dot = 0;
              for (int64_t j = 0; j < d; ++j) {
                acc_t v = w0 * otp[base + j];
                if (pp) v += w1 * pp[base + j];
                g[j] = v;
                dot += v * hp[base + j];
              }
              if (np[i] > static_cast<acc_t>(eps)) {
                const acc_t inv = acc_t(1) / np[i];
                for (int64_t j = 0; j < d; ++j)
                  op[base + j] = static_cast<scalar_t>((g[j] - hp[base + j] * dot) * inv);
              } else {
                const acc_t inv = acc_t(1) / static_cast<acc_t>(eps);
                for (int64_t j = 0; j < d; ++j) op[base + j] = static_cast<scalar_t>(g[j] * inv);
              }
            }
          });
        });
  });
  return dz;
}

}  // namespace sslext::kernels
