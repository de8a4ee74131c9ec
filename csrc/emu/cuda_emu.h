// The CUDA surface the kernels of csrc/cuda/ use, for compiling them as host
// C++ (SSLEXT_EMULATE_CUDA): execution-model variables, __shared__,
// __syncthreads, warp shuffles, __launch_bounds__ and the launch helper.
// The runtime (csrc/emu/runtime.cpp) runs each block's threads as fibers and
// checks barriers, shuffles, shared-memory races and global bounds; see
// docs/dev/emulator.md.
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define SSLEXT_EMULATE_CUDA_ACTIVE 1

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

namespace sslext::emu {

// Out of line (runtime.cpp, not instrumented): reading them is not a memory
// access of the kernel, so memcheck sees only the kernel's own loads/stores.
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void syncthreads(const char* file, int line);
// Warp rendezvous of the lanes named in mask at one call site: every lane
// posts its value and source lane; returns the value of its source lane (or
// its own where CUDA says so). kind: 0 idx, 1 down, 2 up, 3 xor.
uint64_t shfl(const char* file, int line, unsigned mask, uint64_t bits, int kind, int arg,
              int width);

template <typename T>
inline T shfl_t(const char* file, int line, unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>,
                "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  b = shfl(file, line, mask, b, kind, arg, width);
  T out;
  std::memcpy(&out, &b, sizeof(T));
  return out;
}

// One kernel launch: runs body(ctx) for every thread of every block.
struct LaunchSpec {
  const char* kernel;
  const char* file;
  int line;
  dim3 grid, block;
  size_t dynamic_smem;
  int bounds;  // __launch_bounds__ of the kernel, 0 when unknown
};
using ThreadBody = void (*)(void* ctx);
void launch(const LaunchSpec& spec, ThreadBody body, void* ctx);

// __launch_bounds__ of each kernel, registered by the wrapper TUs after the
// .cu is included (the attribute itself leaves no trace a program can read).
int launch_bounds_of(const char* kernel_name);
struct BoundsRegistrar {
  BoundsRegistrar(const char* kernel_name, int bounds);
};

template <typename... P>
struct Launcher {
  LaunchSpec spec;
  void (*fn)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    // Arguments are converted once, as the CUDA runtime copies them into the
    // parameter buffer, and every thread reads the same copy.
    std::tuple<std::decay_t<P>...> args(static_cast<P>(std::forward<A>(a))...);
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...>* args;
    } ctx{fn, &args};
    LaunchSpec s = spec;
    s.bounds = launch_bounds_of(spec.kernel);
    launch(s, &Launcher::thread_body, &ctx);
  }
  [[gnu::noinline, gnu::no_sanitize("thread")]] static void thread_body(void* p) {
    struct Ctx {
      void (*fn)(P...);
      std::tuple<std::decay_t<P>...>* args;
    };
    auto* c = static_cast<Ctx*>(p);
    // A copy per thread: the kernel's parameters live on its own stack.
    std::tuple<std::decay_t<P>...> mine = *c->args;
    std::apply(c->fn, mine);
  }
};

template <typename... P>
Launcher<P...> make_launcher(const char* name, const char* file, int line, dim3 grid, dim3 block,
                             size_t smem, void (*fn)(P...)) {
  return Launcher<P...>{LaunchSpec{name, file, line, grid, block, smem, 0}, fn};
}

}  // namespace sslext::emu

#define __global__ [[gnu::noinline]]
#define __device__
#define __host__
#define __forceinline__ inline
// Not readable from the function: the wrapper TU registers the same value
// with SSLEXT_EMU_BOUNDS (a test compares the two against the .cu text).
#define __launch_bounds__(...)
// One copy per block: blocks run one at a time, so a function-local static is
// the block's shared memory. Its address lies in this library's writable
// segment, which is how the checks tell shared from global memory. volatile:
// the array's address never escapes, so without it the compiler may keep a
// thread's own store in a register across __syncthreads (an opaque call that
// provably cannot touch a non-escaping static) and other threads' stores
// would never be seen, nor checked.
#define __shared__ static volatile
#define threadIdx (::sslext::emu::thread_idx())
#define blockIdx (::sslext::emu::block_idx())
#define blockDim (::sslext::emu::block_dim())
#define gridDim (::sslext::emu::grid_dim())
#define warpSize 32
#define __syncthreads() ::sslext::emu::syncthreads(__FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...)                             \
  ::sslext::emu::shfl_t(__FILE__, __LINE__, (mask), (v), 0, (src), \
                        (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32)
#define __shfl_down_sync(mask, v, d, ...)                        \
  ::sslext::emu::shfl_t(__FILE__, __LINE__, (mask), (v), 1, (d), \
                        (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32)
#define __shfl_up_sync(mask, v, d, ...)                          \
  ::sslext::emu::shfl_t(__FILE__, __LINE__, (mask), (v), 2, (d), \
                        (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32)
#define __shfl_xor_sync(mask, v, m, ...)                         \
  ::sslext::emu::shfl_t(__FILE__, __LINE__, (mask), (v), 3, (m), \
                        (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 32)

// kernel<<<grid, block, smem, stream>>>(args) in the real build.
#define SSLEXT_LAUNCH(grid, block, smem, stream, ...)                                             \
  ::sslext::emu::make_launcher(#__VA_ARGS__, __FILE__, __LINE__, dim3(grid), dim3(block), (smem), \
                               &__VA_ARGS__)

#define SSLEXT_EMU_BOUNDS(kernel, n) \
  static ::sslext::emu::BoundsRegistrar sslext_emu_bounds_##kernel(#kernel, (n))
