// The batch-norm backward (Barlow Twins' standardisation): each task owns a
// block of columns and sweeps the rows twice, once for mean(da) and
// mean(da * a), once for dz = inv_std * (da - mean(da) - a * mean(da * a)).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "cpu_utils.h"
#include "sslext/kernels.h"

namespace sslext::kernels {

using cpu::kColumnGrain;

at::Tensor bn_backward_cpu(const at::Tensor& da, const at::Tensor& a, const at::Tensor& inv_std,
                           at::ScalarType out_dtype) {
  const int64_t n = da.size(0), d = da.size(1);
  auto dz = at::empty({n, d}, da.options().dtype(out_dtype));
  AT_DISPATCH_FLOATING_TYPES(da.scalar_type(), "bn_backward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* gp = da.const_data_ptr<acc_t>();
    const acc_t* ap = a.const_data_ptr<acc_t>();
    const acc_t* ip = inv_std.const_data_ptr<acc_t>();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, out_dtype, "bn_backward_cpu_out", [&] {
          scalar_t* op = dz.data_ptr<scalar_t>();
          at::parallel_for(0, d, kColumnGrain, [&](int64_t d0, int64_t d1) {
            const int64_t w = d1 - d0;
            std::vector<acc_t> s1(w, acc_t(0)), s2(w, acc_t(0));
            for (int64_t i = 0; i < n; ++i) {
              const acc_t* g = gp + i * d + d0;
              const acc_t* x = ap + i * d + d0;
              for (int64_t j = 0; j < w; ++j) {
                s1[j] += g[j];
                s2[j] += g[j] * x[j];
              }
            }
            for (int64_t j = 0; j < w; ++j) {
              s1[j] /= static_cast<acc_t>(n);
              s2[j] /= static_cast<acc_t>(n);
            }
            for (int64_t i = 0; i < n; ++i) {
              const acc_t* g = gp + i * d + d0;
              const acc_t* x = ap + i * d + d0;
              scalar_t* o = op + i * d + d0;
              for (int64_t j = 0; j < w; ++j)
                o[j] = static_cast<scalar_t>(ip[d0 + j] * (g[j] - s1[j] - x[j] * s2[j]));
            }
          });
        });
  });
  return dz;
}

}  // namespace sslext::kernels
