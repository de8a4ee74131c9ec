// Device helpers shared by the sslext CUDA kernels. Every reduction here
// combines values in an order fixed by the block shape alone (shuffle trees and
// fixed shared-memory sweeps, never atomics), so the same launch on the same
// inputs gives the same bits on every run and every device.
#pragma once

#include <cstdint>

// Every launch goes through SSLEXT_LAUNCH(grid, block, smem, stream, kernel)(args):
// kernel<<<grid, block, smem, stream>>>(args) under nvcc, the emulator's
// checked launch when the kernels are compiled as host C++ (docs/dev/emulator.md).
#ifndef SSLEXT_EMULATE_CUDA
#define SSLEXT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

namespace sslext::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Correctly rounded in both precisions (no fast-math), as std::sqrt on the host.
__device__ __forceinline__ float device_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double device_sqrt(double x) { return sqrt(x); }

// Shuffle-down tree: lane 0 ends with the full sum, paired the same way on
// every call (lanes i and i + 16, then i + 8, ...).
template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

// Sum over a 1-D block of exactly kBlock threads, returned to every thread.
// Must be reached by all threads of the block. The trailing barrier lets a
// caller reduce again (or loop to another row) without racing on the scratch.
template <int kBlock, typename T>
__device__ __forceinline__ T block_reduce_sum(T v) {
  static_assert(kBlock % kWarpSize == 0 && kBlock <= 1024, "block_reduce_sum needs whole warps");
  constexpr int kWarps = kBlock / kWarpSize;
  // kWarps partials plus one broadcast slot, so the broadcast write never
  // overlaps a slot warp 0 may still be reading.
  __shared__ T scratch[kWarps + 1];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  v = warp_reduce_sum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < kWarps ? scratch[lane] : T(0);
    w = warp_reduce_sum(w);
    if (lane == 0) scratch[kWarps] = w;
  }
  __syncthreads();
  const T total = scratch[kWarps];
  __syncthreads();
  return total;
}

// For a 2-D block of kCols x kGroups threads (x = column, y = row group):
// sums v over the row groups of each column, in group order 0, 1, ..., and
// returns the total to the threads with threadIdx.y == 0 (others get 0).
// Must be reached by all threads of the block.
template <int kCols, int kGroups, typename T>
__device__ __forceinline__ T column_group_sum(T v) {
  __shared__ T scratch[kGroups][kCols];
  scratch[threadIdx.y][threadIdx.x] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.y == 0) {
    total = scratch[0][threadIdx.x];
#pragma unroll
    for (int grp = 1; grp < kGroups; ++grp) total += scratch[grp][threadIdx.x];
  }
  __syncthreads();
  return total;
}

}  // namespace sslext::cuda
