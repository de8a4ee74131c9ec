"""Which GPUs a built sslext wheel runs on: the SASS and PTX embedded in its ``_C`` extension.

``python python_tests/check_wheel_archs.py dist/sslext-*.whl [--archs "8.0;9.0+PTX"]``

Lists the cubins (``cuobjdump --list-elf``) and PTX (``--list-ptx``) of the
wheel's extension and fails unless there is SASS for every arch of the list
and PTX exactly for the archs marked ``+PTX`` (default: what setup.py builds for here:
``TORCH_CUDA_ARCH_LIST``, else the visible GPUs, else its ``DEFAULT_ARCHS``).
A wheel without CUDA kernels passes when no CUDA build was expected
(``--expect-cuda`` off: no nvcc, or a CPU-only torch). Run by ``make wheel``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def parse_arch_list(spec: str):
    """``"8.0;9.0+PTX"`` -> ({80, 90}, {90}): the SASS and the PTX a build embeds."""
    sass, ptx = set(), set()
    for item in re.split(r"[;\s]+", spec.strip()):
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", item)
        if not m:
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot read {item!r}")
        cc = int(m.group(1)) * 10 + int(m.group(2))
        sass.add(cc)
        if m.group(4):
            ptx.add(cc)
    return sass, ptx


def default_archs() -> str:
    """The arch list setup.py builds for on this machine: ``TORCH_CUDA_ARCH_LIST`` if set; else
    the visible GPUs' (torch's rule: each one's capability, ``+PTX`` on the newest); else
    setup.py's ``DEFAULT_ARCHS``."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if env:
        return env
    import torch

    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps) + "+PTX"
    setup_py = Path(__file__).resolve().parent.parent / "setup.py"
    m = re.search(r'^DEFAULT_ARCHS = "([^"]+)"', setup_py.read_text(), re.M)
    if not m:
        raise SystemExit(f"check_wheel_archs: no DEFAULT_ARCHS in {setup_py}")
    return m.group(1)


def _cuobjdump() -> str:
    """cuobjdump from PATH, CUDA_HOME, or the copy triton (a torch dependency) ships.

    Some CUDA toolkit installs (this project's build image among them) carry nvcc but
    not cuobjdump; pip's CUDA torch always brings triton, and triton brings cuobjdump.
    """
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    candidates = [shutil.which("cuobjdump"), str(Path(home, "bin", "cuobjdump"))]
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    for exe in candidates:
        if exe and Path(exe).is_file():
            return exe
    raise SystemExit("check_wheel_archs: cuobjdump not found (not on PATH, in CUDA_HOME/bin, or in triton)")


def embedded(so: Path):
    """({sm of each cubin}, {sm of each PTX}) in the shared object; empty sets without device code."""
    exe = _cuobjdump()
    found = []
    for flag in ("--list-elf", "--list-ptx"):
        r = subprocess.run([exe, flag, str(so)], capture_output=True, text=True)
        if r.returncode != 0 and "does not contain device code" not in (r.stdout + r.stderr):
            raise SystemExit(f"check_wheel_archs: {exe} {flag} failed: {r.stderr.strip()}")
        found.append({int(m) for m in re.findall(r"sm_(\d+)", r.stdout)})
    return found[0], found[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheel", type=Path)
    p.add_argument(
        "--archs",
        default=None,
        help="the TORCH_CUDA_ARCH_LIST the wheel was built with (default: what setup.py "
        "chose here: TORCH_CUDA_ARCH_LIST, else the visible GPUs, else its DEFAULT_ARCHS)",
    )
    p.add_argument("--expect-cuda", action="store_true", help="fail if the wheel has no CUDA kernels")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(a.wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"sslext/_C\..*so", n)]
        if len(names) != 1:
            print(f"check_wheel_archs: {a.wheel} holds {names or 'no'} sslext/_C*.so", file=sys.stderr)
            return 1
        so = Path(zf.extract(names[0], tmp))
        sass, ptx = embedded(so)
    if not sass and not ptx:
        if a.expect_cuda:
            print(
                f"check_wheel_archs: {a.wheel.name} has no CUDA kernels, but a CUDA build was expected", file=sys.stderr
            )
            return 1
        print(f"check_wheel_archs: {a.wheel.name}: CPU kernels only (no CUDA build)")
        return 0
    if a.archs is None:
        a.archs = default_archs()
    want_sass, want_ptx = parse_arch_list(a.archs)
    print(
        f"check_wheel_archs: {a.wheel.name}: SASS {sorted(f'sm_{c}' for c in sass)}, "
        f"PTX {sorted(f'compute_{c}' for c in ptx)}"
    )
    problems = []
    if want_sass - sass:
        problems.append(f"no SASS for {sorted(want_sass - sass)}")
    if ptx != want_ptx:
        problems.append(f"PTX for {sorted(ptx)}, expected {sorted(want_ptx)} (the archs marked +PTX)")
    if problems:
        print(f"check_wheel_archs: TORCH_CUDA_ARCH_LIST={a.archs!r}: " + "; ".join(problems), file=sys.stderr)
        return 1
    newest = max(ptx) if ptx else None
    print(
        "check_wheel_archs: runs natively on compute capability "
        + ", ".join(f"{c // 10}.x (x >= {c % 10})" for c in sorted(sass))
        + (
            f"; newer GPUs (> {newest // 10}.{newest % 10}) through the driver's JIT of compute_{newest} PTX"
            if newest
            else "; no PTX: no newer GPU"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
