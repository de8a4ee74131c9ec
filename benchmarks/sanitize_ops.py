"""Every sslext op, forward and backward, on CUDA: a small workload for compute-sanitizer.

``compute-sanitizer --tool memcheck|racecheck python benchmarks/sanitize_ops.py``
(benchmarks/gpu_check.sh runs both); ``--device cpu`` runs the same calls on
the CPU kernels. Small shapes keep it fast under the
tools; they still cover both strategies (Gram: N < D, covariance: N >= D),
float32/bfloat16/float64, non-contiguous inputs, N = 2 and the in-place EMA.
"""

from __future__ import annotations

import argparse
import sys

import torch

import sslext.functional as F
from sslext import ops

SHAPES = [(2, 9), (5, 37), (70, 9), (33, 33)]
DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def views(n: int, d: int, dtype: torch.dtype, seed: int, dev: str):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 0.5
    b = a + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return a.to(dev, dtype), b.to(dev, dtype)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    dev = p.parse_args(argv).device
    if dev == "cuda" and not torch.cuda.is_available():
        print("sanitize_ops: no CUDA device", file=sys.stderr)
        return 2
    calls = 0
    for n, d in SHAPES:
        for dtype in DTYPES:
            for layout in ("contiguous", "transposed"):
                a, b = views(n, d, dtype, seed=n * 100 + d, dev=dev)
                if layout == "transposed":
                    a, b = a.T.contiguous().T, b.T.contiguous().T
                for strategy in ("gram", "covariance"):
                    losses = {
                        "vicreg": lambda x, y: F.vicreg_loss(x, y, strategy=strategy),
                        "barlow_twins": lambda x, y: F.barlow_twins_loss(x, y, strategy=strategy),
                        "tico": lambda x, y: F.tico_loss(x, y, torch.eye(d, device=dev) / d, strategy=strategy),
                        "vicreg_tico": lambda x, y: F.vicreg_tico_loss(
                            x, y, torch.eye(d, device=dev) / d, strategy=strategy
                        ),
                    }
                    for name, fn in losses.items():
                        r = 2 * n if name == "vicreg_tico" else n
                        if strategy == "gram" and r >= d:
                            continue  # outside the Gram regime (it would only warn)
                        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
                        fn(x, y).backward()
                        calls += 1
                x = a.clone().requires_grad_()
                y = b.clone().requires_grad_()
                (ops.batch_covariance(x).sum() + ops.cross_correlation(x, y).pow(2).sum()).backward()
                m = ops.cross_correlation(a, b).detach().requires_grad_()
                ops.off_diagonal_penalty(m, 0.0051, 1.0).backward()
                c = torch.eye(d, device=dev, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
                ops.tico_ema_update_(c, a, 0.9)
                calls += 4
    if dev == "cuda":
        torch.cuda.synchronize()
    print(f"sanitize_ops: {calls} op calls (forward + backward) completed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
