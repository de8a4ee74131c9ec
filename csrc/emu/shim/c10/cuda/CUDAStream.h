// Emulated build: one in-order "stream"; launches run to completion before
// returning, as with CUDA_LAUNCH_BLOCKING=1.
#pragma once
namespace c10::cuda {
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace c10::cuda
