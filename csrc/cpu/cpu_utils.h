// Helpers shared by the CPU kernels.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace sslext::cpu {

// Columns per parallel task: wide enough that each row segment a task reads is
// a few cache lines, narrow enough that D = 1024 still feeds several threads.
constexpr int64_t kColumnGrain = 64;
// Rows per reduction chunk. The chunking depends only on the shape, never on
// the thread count, so a reduction gives the same bits on any machine.
constexpr int64_t kRowChunk = 8;

// Sum of f(row_begin, row_end) over fixed row chunks, partials combined in
// chunk order: deterministic regardless of how many threads ran the chunks.
template <int kWidth, typename F>
std::vector<double> chunked_row_sums(int64_t rows, F&& f) {
  const int64_t chunks = (rows + kRowChunk - 1) / kRowChunk;
  std::vector<double> partial(chunks * kWidth, 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * kRowChunk;
      const int64_t r1 = std::min(rows, r0 + kRowChunk);
      f(r0, r1, &partial[c * kWidth]);
    }
  });
  std::vector<double> total(kWidth, 0.0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int k = 0; k < kWidth; ++k) total[k] += partial[c * kWidth + k];
  return total;
}

}  // namespace sslext::cpu
