"""Runs last (file order): every kernel of csrc/cuda/ has run under the checks."""

import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_every_cuda_kernel_ran():
    counts = dict(line.split("=") for line in torch.ops.sslext_emu.launch_counts().split())
    kernels = []
    for cu in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        kernels += re.findall(r"__global__\s+(?:__launch_bounds__\(\w+\)\s+)?void\s+(\w+)", cu.read_text())
    assert len(kernels) >= 12
    missing = [k for k in kernels if int(counts.get(k, 0)) == 0]
    assert not missing, missing
