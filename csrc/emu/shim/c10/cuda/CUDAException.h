// Emulated build (SSLEXT_EMULATE_CUDA): launch errors are raised by the
// emulator's launch itself, so the post-launch check has nothing left to do.
#pragma once
#include <c10/util/Exception.h>
#define C10_CUDA_KERNEL_LAUNCH_CHECK() \
  do {                                 \
  } while (0)
