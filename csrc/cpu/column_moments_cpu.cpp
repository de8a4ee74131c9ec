// Column statistics (mean, centered copy, sum of squared deviations): the
// O(N D) column pass that every covariance-family loss makes over its embeddings.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "cpu_utils.h"
#include "sslext/kernels.h"

namespace sslext::kernels {

using cpu::kColumnGrain;

// Each task owns a block of columns and sweeps every row twice: once for the
// mean, once for the centered values and their squares (two passes are exact
// where a one-pass formula cancels for large means).
std::tuple<at::Tensor, at::Tensor> column_moments_cpu(const at::Tensor& z, at::Tensor& centered) {
  const int64_t n = z.size(0), d = z.size(1);
  auto mean = at::empty({d}, centered.options());
  auto m2 = at::empty({d}, centered.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, z.scalar_type(), "column_moments_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* zp = z.const_data_ptr<scalar_t>();
        acc_t* cp = centered.data_ptr<acc_t>();
        acc_t* mp = mean.data_ptr<acc_t>();
        acc_t* sp = m2.data_ptr<acc_t>();
        at::parallel_for(0, d, kColumnGrain, [&](int64_t d0, int64_t d1) {
          const int64_t w = d1 - d0;
          // Column sums in float64: a sequential float32 sum over N rows would
          // put O(N eps |mean|) into every centered value. The sums are of
          // deviations from row 0 (shifted data), so a constant column has a
          // mean equal to its value and centers to exact zeros — N copies of v
          // summed and divided by N need not give v back, and VICReg's
          // variance gradient amplifies that residual by 1/sqrt(eps).
          std::vector<double> s(w, 0.0);
          const scalar_t* row0 = zp + d0;
          for (int64_t i = 1; i < n; ++i) {
            const scalar_t* row = zp + i * d + d0;
            for (int64_t j = 0; j < w; ++j)
              s[j] += static_cast<double>(row[j]) - static_cast<double>(row0[j]);
          }
          for (int64_t j = 0; j < w; ++j) {
            mp[d0 + j] =
                static_cast<acc_t>(static_cast<double>(row0[j]) + s[j] / static_cast<double>(n));
            s[j] = 0.0;
          }
          for (int64_t i = 0; i < n; ++i) {
            const scalar_t* row = zp + i * d + d0;
            acc_t* out = cp + i * d + d0;
            for (int64_t j = 0; j < w; ++j) {
              const acc_t c = static_cast<acc_t>(row[j]) - mp[d0 + j];
              out[j] = c;
              s[j] += static_cast<double>(c) * static_cast<double>(c);
            }
          }
          for (int64_t j = 0; j < w; ++j) sp[d0 + j] = static_cast<acc_t>(s[j]);
        });
      });
  return {mean, m2};
}

}  // namespace sslext::kernels
