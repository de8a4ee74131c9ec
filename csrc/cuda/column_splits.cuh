// The launch plan shared by the column passes (column_moments_cuda.cu,
// bn_backward_cuda.cu): blocks are (column tile, row split); the number of row
// splits is fixed by N alone, so that a narrow D still gives enough blocks to
// fill the device, and the per-split partials are combined in split order
// 0, 1, ... by whoever needs the total, so the result depends on the shape
// only, never on the device or on scheduling.
#pragma once

#include <algorithm>
#include <cstdint>

#include "reduce.cuh"

namespace sslext::kernels {

namespace {

using cuda::ceil_div;

// A warp is one row segment of kColTile consecutive columns (coalesced); the
// kRowGroups warps of a block interleave over the rows of the block's split.
constexpr int kColTile = 32;
constexpr int kRowGroups = 8;
constexpr int kThreads = kColTile * kRowGroups;
// Target rows per split: 16 rows per thread amortise the partial combine,
// and N = 256, D = 2048 still launches 128 blocks.
constexpr int64_t kRowsPerSplit = 128;
// Caps the partials each block of the second sweep re-reads per column.
constexpr int64_t kMaxSplits = 128;

struct SplitPlan {
  int64_t splits;
  int64_t rows_per_split;
};

inline SplitPlan plan_splits(int64_t n) {
  const int64_t splits = std::min(ceil_div(n, kRowsPerSplit), kMaxSplits);
  return {splits, ceil_div(n, splits)};
}

inline dim3 column_grid(int64_t d, const SplitPlan& plan) {
  return dim3(static_cast<unsigned>(ceil_div<int64_t>(d, kColTile)),
              static_cast<unsigned>(plan.splits));
}

// Sum of the split partials of column c (layout [splits][d]) in split order.
// Every block that needs the total runs this same sequence, so all agree bitwise.
template <typename acc_t>
__device__ __forceinline__ acc_t sum_splits(const acc_t* __restrict__ partial, int64_t splits,
                                            int64_t d, int64_t c) {
  acc_t total = acc_t(0);
  for (int64_t s = 0; s < splits; ++s) total += partial[s * d + c];
  return total;
}

}  // namespace

}  // namespace sslext::kernels
