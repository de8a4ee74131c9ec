"""Loads the compiled ops library that registers ``torch.ops.sslext.*``.

Normally ``sslext._C``. With ``SSLEXT_EMULATED=1`` it is the emulated-CUDA
build ``sslext/_C_emu.so`` instead (or the file ``SSLEXT_EMU_LIBRARY`` names):
the CUDA kernels compiled as host C++ and run, with sanitizer checks, on CPU
tensors (docs/cuda.md). Both register the same ``sslext`` library, so one
process loads one of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

EMULATED = os.environ.get("SSLEXT_EMULATED", "").strip() == "1"

if EMULATED:
    _lib = os.environ.get("SSLEXT_EMU_LIBRARY") or str(Path(__file__).with_name("_C_emu.so"))
    if not Path(_lib).is_file():
        raise ImportError(
            f"SSLEXT_EMULATED=1 but the emulated build {_lib} does not exist; "
            "build it with `make test-emulated` (see docs/cuda.md)"
        )
    torch.ops.load_library(_lib)
else:
    from . import _C  # noqa: F401
