// Kernels written to be wrong, one per check, so the tests can show that each
// check fires (python_tests/emulated/test_emu_selftest.py), plus the torch ops
// that expose the emulator's seed and statistics. Compiled like the kernels of
// csrc/cuda/ (instrumented, against cuda_emu.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <string>

#include "cuda_emu.h"
#include "sslext/kernels.h"

namespace sslext::emu {
uint64_t seed();
void set_seed(uint64_t s);
std::string launch_counts_text();
std::string bounds_text();
}  // namespace sslext::emu

namespace {

// Writes its slot, then reads the neighbour's without a barrier in between.
__global__ void missing_barrier_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  if (threadIdx.x > 0) out[threadIdx.x] = s[threadIdx.x - 1];
}

// The same code with the barrier: must pass.
__global__ void with_barrier_kernel(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x > 0) out[threadIdx.x] = s[threadIdx.x - 1];
}

// Every thread writes the same shared word.
__global__ void shared_race_kernel(float* out) {
  __shared__ float s[1];
  s[0] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// Reads a shared word, then another thread overwrites it before any barrier.
__global__ void read_write_race_kernel(float* out) {
  __shared__ float s[2];
  if (threadIdx.x == 0) s[0] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[0];
  if (threadIdx.x == 5) s[0] = 2.0f;
}

// One element past the end of out (n elements, n + 1 threads write).
__global__ void oob_write_kernel(float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i <= n) out[i] = 1.0f;
}

__global__ void oob_read_kernel(const float* in, float* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i + 1];
}

// Half the block returns before the barrier the other half waits at.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Odd and even threads wait at two different barriers.
__global__ void two_barriers_kernel(float* out) {
  if (threadIdx.x % 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Every block writes its index to the same word: the last block wins, so the
// result depends on the block order.
__global__ void order_dependent_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
}

// A sum that reads the partials in the order blocks finish (a "ticket").
__global__ void order_dependent_sum_kernel(const float* in, float* acc, float* ticket) {
  if (threadIdx.x == 0) {
    const int k = static_cast<int>(ticket[0]);
    ticket[0] = static_cast<float>(k + 1);
    acc[0] = acc[0] * 0.5f + in[blockIdx.x] * static_cast<float>(k + 1);
  }
}

// A full-mask shuffle in a block of 48 threads: the second warp's mask names
// lanes 16..31, which do not exist.
__global__ void shuffle_past_block_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  v += __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// An xor mask of 32 reaches past the warp.
__global__ void shuffle_xor_past_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  v += __shfl_xor_sync(0xffffffffu, v, 32);
  out[threadIdx.x] = v;
}

// Lane 3 exits; the others shuffle with a mask that still names it.
__global__ void shuffle_exited_lane_kernel(float* out) {
  if (threadIdx.x == 3) return;
  float v = static_cast<float>(threadIdx.x);
  v += __shfl_down_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Exact shuffle semantics, written to out[kind * 32 + lane] for one warp:
// down by 5 (width 32), down by 3 within width 8, up by 2, xor 6 within
// width 16, idx of lane 37 (= 5 mod 32), idx 9 within width 4.
__global__ void shuffle_semantics_kernel(float* out) {
  const float v = static_cast<float>(threadIdx.x) + 100.0f;
  const int l = static_cast<int>(threadIdx.x);
  out[0 * 32 + l] = __shfl_down_sync(0xffffffffu, v, 5);
  out[1 * 32 + l] = __shfl_down_sync(0xffffffffu, v, 3, 8);
  out[2 * 32 + l] = __shfl_up_sync(0xffffffffu, v, 2);
  out[3 * 32 + l] = __shfl_xor_sync(0xffffffffu, v, 6, 16);
  out[4 * 32 + l] = __shfl_sync(0xffffffffu, v, 37);
  out[5 * 32 + l] = __shfl_sync(0xffffffffu, v, 9, 4);
}

__global__ __launch_bounds__(128) void bounded_kernel(float* out) { out[threadIdx.x] = 1.0f; }
SSLEXT_EMU_BOUNDS(bounded_kernel, 128);

__global__ void plain_kernel(float* out) {
  if (threadIdx.x == 0 && threadIdx.y == 0) out[blockIdx.y] = 1.0f;
}

// 52 KB of static shared memory, past the 48 KiB limit.
__global__ void big_smem_kernel(float* out) {
  __shared__ float big[13000];
  for (int i = static_cast<int>(threadIdx.x); i < 13000; i += 32) big[i] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[threadIdx.x];
}

std::string run(const std::string& name) {
  auto f = at::zeros({4096}, at::kFloat);
  float* p = f.data_ptr<float>();
  auto small = at::zeros({64}, at::kFloat);
  float* sp = small.data_ptr<float>();
  std::string value;
  try {
    if (name == "missing_barrier") {
      SSLEXT_LAUNCH(1, 64, 0, 0, missing_barrier_kernel)(p);
    } else if (name == "with_barrier") {
      SSLEXT_LAUNCH(1, 64, 0, 0, with_barrier_kernel)(p);
    } else if (name == "shared_race") {
      SSLEXT_LAUNCH(1, 64, 0, 0, shared_race_kernel)(p);
    } else if (name == "read_write_race") {
      SSLEXT_LAUNCH(1, 64, 0, 0, read_write_race_kernel)(p);
    } else if (name == "oob_write") {
      SSLEXT_LAUNCH(3, 32, 0, 0, oob_write_kernel)(sp, int64_t{64});
    } else if (name == "oob_read") {
      SSLEXT_LAUNCH(2, 32, 0, 0, oob_read_kernel)(sp, p, int64_t{64});
    } else if (name == "divergent_barrier") {
      SSLEXT_LAUNCH(1, 64, 0, 0, divergent_barrier_kernel)(p);
    } else if (name == "two_barriers") {
      SSLEXT_LAUNCH(1, 64, 0, 0, two_barriers_kernel)(p);
    } else if (name == "order_dependent") {
      SSLEXT_LAUNCH(64, 32, 0, 0, order_dependent_kernel)(p);
      value = std::to_string(p[0]);
    } else if (name == "order_dependent_sum") {
      auto in = at::arange(1, 65, at::kFloat);
      SSLEXT_LAUNCH(64, 32, 0, 0, order_dependent_sum_kernel)(in.data_ptr<float>(), p, p + 1);
      value = std::to_string(p[0]);
    } else if (name == "shuffle_past_block") {
      SSLEXT_LAUNCH(1, 48, 0, 0, shuffle_past_block_kernel)(p);
    } else if (name == "shuffle_xor_past_warp") {
      SSLEXT_LAUNCH(1, 32, 0, 0, shuffle_xor_past_warp_kernel)(p);
    } else if (name == "shuffle_exited_lane") {
      SSLEXT_LAUNCH(1, 32, 0, 0, shuffle_exited_lane_kernel)(p);
    } else if (name == "shuffle_semantics") {
      SSLEXT_LAUNCH(1, 32, 0, 0, shuffle_semantics_kernel)(p);
      for (int i = 0; i < 6 * 32; ++i) value += std::to_string(static_cast<int>(p[i])) + ",";
    } else if (name == "block_too_large") {
      SSLEXT_LAUNCH(1, 1025, 0, 0, plain_kernel)(p);
    } else if (name == "past_launch_bounds") {
      SSLEXT_LAUNCH(1, 256, 0, 0, bounded_kernel)(p);
    } else if (name == "within_launch_bounds") {
      SSLEXT_LAUNCH(1, 128, 0, 0, bounded_kernel)(p);
    } else if (name == "grid_y_too_large") {
      SSLEXT_LAUNCH(dim3(1, 65536), 32, 0, 0, plain_kernel)(p);
    } else if (name == "zero_grid") {
      SSLEXT_LAUNCH(0, 32, 0, 0, plain_kernel)(p);
    } else if (name == "big_smem") {
      SSLEXT_LAUNCH(1, 32, 0, 0, big_smem_kernel)(p);
    } else if (name == "grid_2d") {
      SSLEXT_LAUNCH(dim3(3, 70), dim3(8, 4), 0, 0, plain_kernel)(p);
      for (int i = 0; i < 70; ++i) value += std::to_string(static_cast<int>(p[i]));
    } else {
      TORCH_CHECK(false, "unknown self-test ", name);
    }
  } catch (const c10::Error& e) {
    return std::string("ERROR ") + e.what_without_backtrace();
  }
  return "OK " + value;
}

}  // namespace

TORCH_LIBRARY(sslext_emu, m) {
  m.def("selftest(str name) -> str", [](std::string name) { return run(name); });
  m.def("seed() -> int", []() { return static_cast<int64_t>(sslext::emu::seed()); });
  m.def("set_seed(int seed) -> ()",
        [](int64_t s) { sslext::emu::set_seed(static_cast<uint64_t>(s)); });
  m.def("launch_counts() -> str", []() { return sslext::emu::launch_counts_text(); });
  m.def("launch_bounds() -> str", []() { return sslext::emu::bounds_text(); });
  // The kernels of csrc/cuda/ one by one, for targeted regression tests.
  namespace k = sslext::kernels;
  m.def("dot_f64(Tensor a, Tensor b) -> Tensor", [](const at::Tensor& a, const at::Tensor& b) {
    return k::dot_f64_cuda(a.contiguous(), b.contiguous());
  });
  m.def("sum_sq_diff(Tensor a, Tensor b) -> Tensor", [](const at::Tensor& a, const at::Tensor& b) {
    return k::sum_sq_diff_cuda(a.contiguous(), b.contiguous());
  });
  m.def("offdiag_sums(Tensor m, float diag_target) -> Tensor",
        [](const at::Tensor& x, double t) { return k::offdiag_sums_cuda(x.contiguous(), t); });
  m.def("row_normalize(Tensor z, float eps) -> (Tensor, Tensor)",
        [](const at::Tensor& z, double eps) { return k::row_normalize_cuda(z.contiguous(), eps); });
  m.def("column_moments(Tensor z) -> (Tensor, Tensor, Tensor)", [](const at::Tensor& z) {
    auto centered = at::empty(
        z.sizes(), z.options().dtype(z.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
    auto [mean, m2] = k::column_moments_cuda(z.contiguous(), centered);
    return std::make_tuple(mean, m2, centered);
  });
}
