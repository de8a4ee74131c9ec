// Scalar reductions with float64 accumulation: the off-/on-diagonal sums of
// squares behind every off-diagonal penalty, the squared distance of two
// batches (VICReg's invariance) and the Frobenius products of the Gram path.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "cpu_utils.h"
#include "sslext/kernels.h"

namespace sslext::kernels {

// One pass over the matrix: each row's off-diagonal part is summed as the two
// runs left and right of the diagonal, so no mask and no copy is made, and the
// diagonal never enters the off-diagonal sum (no cancellation).
at::Tensor offdiag_sums_cpu(const at::Tensor& m, double diag_target) {
  const int64_t d = m.size(0);
  std::vector<double> sums;
  AT_DISPATCH_FLOATING_TYPES(m.scalar_type(), "offdiag_sums_cpu", [&] {
    const scalar_t* p = m.const_data_ptr<scalar_t>();
    sums = cpu::chunked_row_sums<2>(d, [&](int64_t r0, int64_t r1, double* out) {
      for (int64_t i = r0; i < r1; ++i) {
        const scalar_t* row = p + i * d;
        double left = 0, right = 0;
        for (int64_t j = 0; j < i; ++j) {
          const double v = static_cast<double>(row[j]);
          left += v * v;
        }
        for (int64_t j = i + 1; j < d; ++j) {
          const double v = static_cast<double>(row[j]);
          right += v * v;
        }
        out[0] += left + right;
        const double t = static_cast<double>(row[i]) - diag_target;
        out[1] += t * t;
      }
    });
  });
  return at::tensor({sums[0], sums[1]}, m.options().dtype(at::kDouble));
}

at::Tensor sum_sq_diff_cpu(const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(0), d = a.size(1);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, a.scalar_type(), "sum_sq_diff_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* ap = a.const_data_ptr<scalar_t>();
        const scalar_t* bp = b.const_data_ptr<scalar_t>();
        total = cpu::chunked_row_sums<1>(n, [&](int64_t r0, int64_t r1, double* out) {
          for (int64_t i = r0; i < r1; ++i) {
            // The difference in opmath, as the GPU forms it; the sum in float64
            // (a float32 running sum over D terms would lose ~D eps).
            double s = 0;
            for (int64_t j = 0; j < d; ++j) {
              const double diff = static_cast<double>(static_cast<acc_t>(ap[i * d + j]) -
                                                      static_cast<acc_t>(bp[i * d + j]));
              s += diff * diff;
            }
            out[0] += s;
          }
        })[0];
      });
  return at::scalar_tensor(total, a.options().dtype(at::kDouble));
}

at::Tensor dot_f64_cpu(const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.numel() / std::max<int64_t>(1, a.size(-1));
  const int64_t cols = a.numel() / std::max<int64_t>(1, rows);
  double total = 0.0;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "dot_f64_cpu", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    total = cpu::chunked_row_sums<1>(rows, [&](int64_t r0, int64_t r1, double* out) {
      for (int64_t i = r0; i < r1; ++i) {
        double s = 0;
        for (int64_t j = 0; j < cols; ++j)
          s += static_cast<double>(ap[i * cols + j]) * static_cast<double>(bp[i * cols + j]);
        out[0] += s;
      }
    })[0];
  });
  return at::scalar_tensor(total, a.options().dtype(at::kDouble));
}

}  // namespace sslext::kernels
