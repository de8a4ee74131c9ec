"""What benchmarks/gpu_check.sh needs, checked before it spends minutes on a build.

``python benchmarks/gpu_preflight.py`` prints one line per requirement
(``ok`` or ``MISSING``) and exits 2 when any is missing, naming each; its last
line, ``compute_sanitizer=PATH``, tells the script which sanitizer to run.
Requirements: torch with CUDA and a visible device; nvcc whose major version
is torch's (``torch.version.cuda``), else the build fails deep in its log;
compute-sanitizer on PATH or under CUDA_HOME; setuptools, ninja, pytest,
hypothesis and yaml (the build and the tests import them; the GPU machine has
no network to fetch them).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

PY_MODULES = ["setuptools", "ninja", "pytest", "hypothesis", "yaml"]


def nvcc_release(nvcc: str) -> Optional[str]:
    """``"13.0"`` from ``nvcc --version`` ("Cuda compilation tools, release 13.0, V13.0.88"), or None."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def cuda_major_mismatch(nvcc_version: Optional[str], torch_cuda: Optional[str]) -> Optional[str]:
    """A message when nvcc's major version is not torch's, else None (also None when either is unknown)."""
    if not nvcc_version or not torch_cuda:
        return None
    if nvcc_version.split(".")[0] == torch_cuda.split(".")[0]:
        return None
    return (
        f"nvcc is CUDA {nvcc_version} but torch was built with CUDA {torch_cuda}: the major versions "
        f"must match (put the CUDA {torch_cuda.split('.')[0]}.x toolkit first on PATH / in CUDA_HOME)"
    )


def find_sanitizer(cuda_home: Optional[str]) -> Optional[str]:
    """compute-sanitizer on PATH, else in CUDA_HOME's bin/ or compute-sanitizer/ folder."""
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for sub in ("bin", "compute-sanitizer"):
        if cuda_home:
            p = os.path.join(cuda_home, sub, "compute-sanitizer")
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
    return None


def find_nvcc(cuda_home: Optional[str]) -> Optional[str]:
    if cuda_home:
        p = os.path.join(cuda_home, "bin", "nvcc")
        if os.path.isfile(p):
            return p
    return shutil.which("nvcc")


def check(facts: Dict[str, object]) -> Tuple[List[str], List[str]]:
    """(ok lines, missing lines) from gathered facts; pure, so the logic is tested with fakes."""
    ok, missing = [], []
    tv, tc, dev = facts.get("torch_version"), facts.get("torch_cuda"), facts.get("device")
    if tv is None:
        missing.append("torch: not importable")
    elif tc is None:
        missing.append(f"torch {tv} is a CPU-only build: install a CUDA build of torch")
    elif dev is None:
        missing.append(f"torch {tv} (CUDA {tc}) sees no CUDA device")
    else:
        ok.append(f"torch {tv} (CUDA {tc}), device {dev}")
    nvcc, nv = facts.get("nvcc"), facts.get("nvcc_version")
    if nvcc is None:
        missing.append("nvcc: not in CUDA_HOME/bin or on PATH (set CUDA_HOME to the toolkit)")
    elif nv is None:
        missing.append(f"nvcc at {nvcc}: could not read its version")
    else:
        msg = cuda_major_mismatch(nv, tc)  # type: ignore[arg-type]
        if msg:
            missing.append(msg)
        else:
            ok.append(f"nvcc {nv} at {nvcc}")
    san = facts.get("sanitizer")
    if san is None:
        missing.append("compute-sanitizer: not on PATH, in CUDA_HOME/bin or CUDA_HOME/compute-sanitizer")
    else:
        ok.append(f"compute-sanitizer at {san}")
    for name, version in dict(facts.get("modules", {})).items():  # type: ignore[call-overload]
        if version is None:
            missing.append(f"python module {name}: not importable (pip install it, or bring its wheel)")
        else:
            ok.append(f"{name} {version}")
    return ok, missing


def gather() -> Dict[str, object]:
    facts: Dict[str, object] = {"torch_version": None, "torch_cuda": None, "device": None}
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    try:
        import torch
        from torch.utils import cpp_extension

        facts["torch_version"], facts["torch_cuda"] = torch.__version__, torch.version.cuda
        if torch.version.cuda and torch.cuda.is_available():
            cap = torch.cuda.get_device_capability()
            facts["device"] = f"{torch.cuda.get_device_name()} (compute capability {cap[0]}.{cap[1]})"
        cuda_home = cuda_home or cpp_extension.CUDA_HOME
    except ImportError:
        pass
    nvcc = find_nvcc(cuda_home)
    facts["nvcc"] = nvcc
    facts["nvcc_version"] = nvcc_release(nvcc) if nvcc else None
    facts["sanitizer"] = find_sanitizer(cuda_home)
    mods: Dict[str, Optional[str]] = {}
    for name in PY_MODULES:
        try:
            mods[name] = str(getattr(importlib.import_module(name), "__version__", "present"))
        except ImportError:
            mods[name] = None
    facts["modules"] = mods
    return facts


def main() -> int:
    facts = gather()
    ok, missing = check(facts)
    for line in ok:
        print(f"ok       {line}")
    for line in missing:
        print(f"MISSING  {line}")
    if missing:
        print(f"gpu_preflight: {len(missing)} requirement(s) missing; nothing was built or run", file=sys.stderr)
        return 2
    print(f"compute_sanitizer={facts['sanitizer']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
